"""Per-call facts the servicers need from gRPC: the caller's workspace and deadline."""

from __future__ import annotations

from typing import Any

import grpc


class CallContext:
    """Reads the workspace and remaining deadline of a call."""

    def __init__(self, default_workspace: str) -> None:
        self._default_workspace = default_workspace

    def workspace(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """The workspace the call acts in (one workspace until API keys scope calls)."""
        return self._default_workspace

    @staticmethod
    def deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
        """Seconds left before the caller's deadline, or None without one."""
        remaining = context.time_remaining()
        return None if remaining is None else max(float(remaining), 0.0)
