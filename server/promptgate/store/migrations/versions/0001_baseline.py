"""baseline: the schema of the last promptgate before Alembic (schema version 4)

The tables are written out in ``promptgate.store.migrations.baseline``, which
never changes. A database made by a promptgate before Alembic is not created
here: ``promptgate.store.migrations.legacy`` brings it to the same schema and
stamps it at this revision.

Revision ID: 0001
Revises:
Create Date: 2026-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from promptgate.store.migrations.baseline import ALEMBIC_MANAGED_VERSION, TABLES

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for create in TABLES.values():
        create()
    op.execute(
        "INSERT INTO schema_version (id, version, updated_at) "
        f"VALUES (1, {ALEMBIC_MANAGED_VERSION}, CURRENT_TIMESTAMP)"
    )


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)
