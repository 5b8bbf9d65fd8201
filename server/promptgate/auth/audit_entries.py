"""The audit entries of KeyStore's changes: one call per change.

Resource names: ``workspaces/{id}`` and ``apiKeys/{id}``. A key's entry
holds its name, scopes, plan, limit overrides and expiry: never the key, its
secret or the secret's hash.
"""

from __future__ import annotations

from sqlmodel.ext.asyncio.session import AsyncSession

from promptgate.audit import record
from promptgate.store.tables import ApiKeyRow, WorkspaceRow


def workspace_created(session: AsyncSession, row: WorkspaceRow) -> None:
    """A new workspace (its first entry)."""
    record(
        session,
        workspace=row.id,
        action="workspace.create",
        resource=f"workspaces/{row.id}",
        after={"name": row.name},
    )


def key_created(session: AsyncSession, row: ApiKeyRow) -> None:
    """CreateApiKey (or ``promptgate keys create``)."""
    record(
        session,
        workspace=row.workspace_id,
        action="api_key.create",
        resource=f"apiKeys/{row.id}",
        after={
            "name": row.name,
            "scopes": row.scopes,
            "plan": row.plan,
            "limit_overrides": row.limit_overrides,
            "expire_time": row.expires_at,
        },
    )


def key_revoked(session: AsyncSession, row: ApiKeyRow) -> None:
    """RevokeApiKey of a live key (revoking it again changes nothing and records nothing)."""
    record(
        session,
        workspace=row.workspace_id,
        action="api_key.revoke",
        resource=f"apiKeys/{row.id}",
        before={"revoked": False},
        after={"revoked": True},
    )
