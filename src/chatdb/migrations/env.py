"""Alembic environment. Runs inside the package, so it works from any directory.

chatdb.migrate passes an open connection in config.attributes["connection"].
"""

from alembic import context
from sqlalchemy import text

from chatdb.migrate import MIGRATION_LOCK_ID
from chatdb.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    compare_type=True,
    # One transaction for the whole upgrade: PostgreSQL's DDL is transactional,
    # so a migration that fails halfway leaves the schema as it was.
    transaction_per_migration=False,
)
with context.begin_transaction():
    connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
    context.run_migrations()
