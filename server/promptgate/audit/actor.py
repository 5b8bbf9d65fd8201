"""Who is making changes in the current task: an API key id, ``cli`` or ``system``.

A ContextVar, so that domain methods need no actor parameter: the auth
interceptor sets it in each call's task after authenticating the key (gRPC
runs every call in a task of its own, so the value dies with the call), and
the CLI sets it at its start. Tasks inherit it when they are created.
"""

from __future__ import annotations

import contextvars

SYSTEM = "system"
"""The server acting on its own (start-up seeding, background work)."""
CLI = "cli"
"""The ``promptgate`` command working on the database directly."""

_ACTOR: contextvars.ContextVar[str] = contextvars.ContextVar(
    "promptgate_audit_actor", default=SYSTEM
)


def set_actor(actor: str) -> None:
    """Name the actor of the changes made from now on in this task (and tasks it starts)."""
    _ACTOR.set(actor)


def current_actor() -> str:
    """The actor of changes made now: the one ``set_actor`` named, else ``SYSTEM``."""
    return _ACTOR.get()
