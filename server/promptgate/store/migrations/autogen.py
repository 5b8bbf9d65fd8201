"""What Alembic compares and how it renders, for ``env.py``, the guard test and new revisions."""

from __future__ import annotations

from typing import Any

from sqlalchemy import MetaData
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

from promptgate.store import tables  # noqa: F401  (registers the tables)

# Tables in the database that no model describes: ``schema_version`` is kept
# only so that a promptgate from before Alembic refuses the database (see legacy.py).
UNMODELLED_TABLES = frozenset({"schema_version"})


def target_metadata() -> MetaData:
    """The tables as the code describes them (every SQLModel table)."""
    return SQLModel.metadata


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Compare everything except the tables no model describes."""
    return not (type_ == "table" and name in UNMODELLED_TABLES)


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Render SQLModel's string type as a plain ``sa.String``, so revisions need no sqlmodel."""
    if type_ == "type" and isinstance(obj, AutoString):
        return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    return False


# Options for Alembic's context (env.py) and for a MigrationContext that compares.
CONTEXT_OPTIONS: dict[str, Any] = {
    "include_object": include_object,
    "render_item": render_item,
    # SQLite changes most of a table by copying it: autogenerate writes such
    # changes as batch operations, which other databases run as plain ALTERs.
    "render_as_batch": True,
    "compare_type": True,
}
