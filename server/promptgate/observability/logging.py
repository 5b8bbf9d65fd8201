"""Log set-up: one line per record on stderr, UTC timestamps."""

from __future__ import annotations

import logging
import sys
import time


def configure_logging(level: str) -> None:
    """Send promptgate's logs to stderr at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter(
        "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
    )
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Alembic's INFO is set-up chatter; promptgate logs what migrates, from where to where.
    logging.getLogger("alembic").setLevel(logging.WARNING)
