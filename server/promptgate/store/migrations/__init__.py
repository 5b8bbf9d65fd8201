"""Schema migrations with Alembic.

The revisions live in ``versions/`` (``0001`` is the baseline: the schema of
the last promptgate before Alembic). ``runner`` brings a database to the newest
revision (head), serialised between processes; ``legacy`` adopts a database
that a promptgate before Alembic made; ``autogen`` holds what Alembic compares
and renders, shared by ``env.py``, the tests and ``tools/new_revision.py``.
"""

from promptgate.errors import PromptgateError


class SchemaError(PromptgateError):
    """The database's schema cannot be used by this promptgate."""
