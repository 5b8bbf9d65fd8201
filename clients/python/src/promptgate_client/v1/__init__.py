"""Generated from proto/promptgate/v1 by `make clients`."""
