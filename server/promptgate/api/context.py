"""Per-call facts the servicers need: the caller's key, workspace and deadline."""

from __future__ import annotations

from typing import Any

import grpc

from promptgate.api.auth import CURRENT_KEY
from promptgate.auth.model import ApiKey
from promptgate.errors import Unauthenticated


class CallContext:
    """Reads the authenticated key, its workspace and the remaining deadline of a call."""

    @staticmethod
    def key(context: grpc.aio.ServicerContext[Any, Any]) -> ApiKey:
        """The calling key (set by the auth interceptor)."""
        key = CURRENT_KEY.get()
        if key is None:  # only reachable if the interceptor is not installed
            raise Unauthenticated("no API key", reason="MISSING_AUTHORIZATION")
        return key

    def workspace(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """The workspace the call acts in: the key's."""
        return self.key(context).workspace_id

    def api_key_id(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        """The calling key's id."""
        return self.key(context).id

    @staticmethod
    def deadline(context: grpc.aio.ServicerContext[Any, Any]) -> float | None:
        """Seconds left before the caller's deadline, or None without one."""
        remaining = context.time_remaining()
        return None if remaining is None else max(float(remaining), 0.0)
