"""Alembic's environment for promptgate.

Online, the connection comes from ``promptgate.store.migrations.runner`` (in
``config.attributes["connection"]``, already in a transaction); offline
(``promptgate migrate --sql``) only the URL's dialect is used and the SQL is
written out. There is no alembic.ini: the runner configures Alembic in code.
"""

from __future__ import annotations

from alembic import context

from promptgate.store.migrations.autogen import CONTEXT_OPTIONS, target_metadata

config = context.config
# SQLite's DDL is transactional too (Alembic assumes not): offline SQL for it
# is then wrapped in BEGIN/COMMIT like PostgreSQL's. (Online, the runner's
# transaction holds the whole upgrade either way.)
TRANSACTIONAL_DDL = True

if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        transactional_ddl=TRANSACTIONAL_DDL,
        target_metadata=target_metadata(),
        **CONTEXT_OPTIONS,
    )
else:
    context.configure(
        connection=config.attributes["connection"],
        transactional_ddl=TRANSACTIONAL_DDL,
        target_metadata=target_metadata(),
        **CONTEXT_OPTIONS,
    )

with context.begin_transaction():
    context.run_migrations()
