"""The audit log: who changed what in a workspace, and when.

Every administrative write (prompts, versions, release tags, archive and
unarchive, API keys, workspaces) adds one entry per change with ``record``,
in the same session as the change itself: the entry commits with the change
or not at all, so an acknowledged change always has its entry and a refused
or failed one has none::

    from promptgate import audit

    async with self._sessions.write() as session:
        ...  # the change
        audit.record(
            session,
            workspace=workspace,
            action="partial.create",                 # "<kind>.<verb>"
            resource=f"partials/{name}",             # AIP-style resource name
            before=None,                             # what changed, before ...
            after={"description": description},      # ... and after (small, no secrets)
        )
        await session.commit()

The actor is not a parameter: the API layer names the calling API key with
``set_actor`` once it has authenticated a call, the CLI names itself
(``CLI``), and anything else the server does on its own is ``SYSTEM``.
``AuditLog`` lists the entries (AdminService/ListAuditEvents).
"""

from promptgate.audit.actor import CLI, SYSTEM, current_actor, set_actor
from promptgate.audit.entries import MAX_CHANGE_CHARS, bounded, record
from promptgate.audit.log import MAX_AUDIT_PAGE_SIZE, AuditLog
from promptgate.audit.model import AuditEvent, AuditQuery

__all__ = [
    "CLI",
    "MAX_AUDIT_PAGE_SIZE",
    "MAX_CHANGE_CHARS",
    "SYSTEM",
    "AuditEvent",
    "AuditLog",
    "AuditQuery",
    "bounded",
    "current_actor",
    "record",
    "set_actor",
]
