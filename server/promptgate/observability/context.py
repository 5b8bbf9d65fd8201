"""What a log line knows about the call it belongs to.

Every gRPC call runs in a task of its own; the call interceptor
(``call_interceptor.py``) puts a ``CallInfo`` into that task's context when
the call starts, and code further in adds what it learns: the auth
interceptor the workspace, the executor the execution id. The log formatters
(``logging.py``) read it for every line, so each line of a call carries its
request id, trace id, method, workspace and execution id without anyone
passing them around. Background work started from a call (tasks copy the
context) keeps the call's ``CallInfo``; a batch item gets one of its own.

Plain contextvars, no gRPC: domain modules may call ``bind``.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

__all__ = ["CallInfo", "begin", "bind", "current"]


@dataclass(slots=True)
class CallInfo:
    """The log context of one call (or one batch item). Empty strings: not known."""

    request_id: str = ""
    method: str = ""
    trace_id: str = ""
    workspace: str = ""
    execution_id: str = ""


_CURRENT: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar(
    "promptgate_call", default=None
)


def begin(info: CallInfo) -> CallInfo:
    """Make ``info`` the log context of the running task (and of tasks it starts).

    Set, never reset: gRPC runs each call in a task of its own, so the value
    dies with the call.
    """
    _CURRENT.set(info)
    return info


def current() -> CallInfo | None:
    """The log context of the running call, if any."""
    return _CURRENT.get()


def bind(*, workspace: str | None = None, execution_id: str | None = None) -> None:
    """Add what the caller learnt to the running call's log context (if there is one)."""
    info = _CURRENT.get()
    if info is None:
        return
    if workspace is not None:
        info.workspace = workspace
    if execution_id is not None:
        info.execution_id = execution_id
