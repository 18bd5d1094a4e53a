"""hash-partition messages by conversation (only when CHATDB_MESSAGE_PARTITIONS > 0)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 22:20:00

With CHATDB_MESSAGE_PARTITIONS=N (N > 0) when this migration runs, messages
becomes a table PARTITION BY HASH (conversation_id) with N partitions,
messages_p00 … messages_pNN. Every key of messages starts with conversation_id,
so a conversation's page, send, edit or read touches one partition; vacuum,
index builds and the table's size limits apply per partition. Unset or 0, the
migration changes nothing; downgrading turns a partitioned table back into one
plain table.

The rebuild (chatdb.partitioning) is generic, read from the catalog: it
carries whatever the migrations before and after this one define. To change
the partitioning of a database already past this migration, use
`chatdb db partition N` (0: back to one plain table).
"""

from collections.abc import Sequence

from alembic import op

from chatdb.config import Settings
from chatdb.partitioning import partition_count, rebuild

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Read now, not from chatdb's cached settings: the option is the environment's
    # when this migration runs.
    partitions = Settings().message_partitions
    if partitions > 0 and partition_count(op.get_bind()) == 0:
        rebuild(op.get_bind(), partitions)


def downgrade() -> None:
    if partition_count(op.get_bind()) > 0:
        rebuild(op.get_bind(), 0)
