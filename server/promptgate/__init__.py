"""promptgate: a gRPC service that executes LLM prompts for internal services."""

__version__ = "0.1.0"
