"""The `chatdb` command: thin wrappers that open a transaction, call the store, render.

Tables for people by default, `--json` for scripts. Errors are one line on
stderr: exit status 2 for bad arguments and an unreachable or outdated
database, 1 when the operation itself was refused (not found, conflict).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.status import Status
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from chatdb import devcluster, migrate, store
from chatdb.config import get_settings
from chatdb.db import (
    EMBEDDED_DATABASE,
    check_connection,
    database_url,
    describe_target,
    ensure_database,
    explain_connection_error,
    get_engine,
    make_engine,
    normalize_url,
    stop_embedded_server,
    transaction,
)
from chatdb.errors import (
    ChatdbError,
    Conflict,
    DatabaseUnavailable,
    Forbidden,
    Invalid,
    NotFound,
    SchemaOutdated,
)
from chatdb.store.types import InboxCursor, SearchCursor

app = typer.Typer(
    help="chatdb: a chat storage service on PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
db_app = typer.Typer(help="Where the data lives, and its schema migrations.", no_args_is_help=True)
user_app = typer.Typer(help="Create, show, change and delete users.", no_args_is_help=True)
conversation_app = typer.Typer(help="Group and direct conversations.", no_args_is_help=True)
member_app = typer.Typer(help="Members of a conversation.", no_args_is_help=True)
message_app = typer.Typer(
    help="Send, page, edit, delete and restore messages.", no_args_is_help=True
)
query_app = typer.Typer(help="The module project's four queries.", no_args_is_help=True)
dev_app = typer.Typer(help="Development helpers.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(user_app, name="user")
app.add_typer(conversation_app, name="conversation")
app.add_typer(member_app, name="member")
app.add_typer(message_app, name="message")
app.add_typer(query_app, name="query")
app.add_typer(dev_app, name="dev")

console = Console()
errors = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
UserRef = Annotated[str, typer.Argument(help="A user id or username.")]
ConversationId = Annotated[int, typer.Argument(help="Conversation id.", min=1)]
LimitOpt = Annotated[int, typer.Option(help="How many rows (1-200).", min=1, max=200)]


# --- plumbing ---


def fail(message: str, code: int = 2) -> NoReturn:
    errors.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


def engine_ready(*, need_schema: bool = True) -> Engine:
    """The engine, connected once; the schema checked (and on the embedded
    server, migrated) when the command needs it."""
    engine = get_engine()
    check_connection(engine)
    if need_schema:
        migrate.ensure_current(engine, auto_upgrade=get_settings().embedded)
    return engine


@contextmanager
def unit_of_work() -> Iterator[Session]:
    """One transaction for one command."""
    with transaction(engine_ready()) as session:
        yield session


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):  # a NamedTuple (store.Message)
        return {k: _jsonable(v) for k, v in value._asdict().items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(_jsonable(value), ensure_ascii=False, indent=2) + "\n")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(_fmt(v) for v in row))
    console.print(table)


def render(
    value: Any, as_json: bool, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    if as_json:
        print_json(value)
    else:
        print_table(title, columns, rows)


def resolve_user(session: Session, ref: str) -> int:
    if ref.isdigit():
        return store.get_user(session=session, user_id=int(ref)).id
    return store.get_user_by_username(session=session, username=ref).id


# --- db ---


@db_app.command("url")
def db_url() -> None:
    """Print the database URL in use (password hidden); starts the embedded server if needed."""
    url = database_url()
    where = "embedded" if get_settings().embedded else "CHATDB_DATABASE_URL"
    console.print(url.render_as_string(hide_password=True), highlight=False, soft_wrap=True)
    errors.print(f"({where}: {describe_target(url)})", highlight=False)


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    engine = engine_ready(need_schema=False)
    migrate.upgrade(engine, revision)
    _print_current(engine)


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target, e.g. base or -1.")]) -> None:
    """Undo migrations down to REVISION."""
    engine = engine_ready(need_schema=False)
    migrate.downgrade(engine, revision)
    _print_current(engine)


@db_app.command("partition")
def db_partition(
    partitions: Annotated[
        int, typer.Argument(help="Hash partitions by conversation; 0: one plain table.", min=0)
    ],
    yes: Annotated[
        bool, typer.Option("--yes", help="Do it: it locks messages while it copies.")
    ] = False,
) -> None:
    """Rebuild messages with PARTITIONS hash partitions (the CHATDB_MESSAGE_PARTITIONS
    option, for a database already migrated). Every message is copied once under
    an exclusive lock: sends wait until it commits."""
    if not yes:
        fail("this rewrites every message under an exclusive lock; pass --yes to go ahead")
    engine = engine_ready()
    before = migrate.repartition_messages(engine, partitions)
    console.print(f"messages: {before or 'no'} partitions before, {partitions or 'no'} now")


def _print_current(engine: Engine) -> None:
    with engine.connect() as connection:
        current = migrate.current_revision(connection)
    head = migrate.head_revision()
    state = "up to date" if current == head else f"newest is {head}"
    console.print(f"current: {current or 'none (empty database)'} ({state})", highlight=False)


@db_app.command("current")
def db_current() -> None:
    """Show the database's migration revision."""
    _print_current(engine_ready(need_schema=False))


@db_app.command("history")
def db_history(as_json: JsonFlag = False) -> None:
    """List the migrations, newest first."""
    revisions = migrate.history()
    render(
        revisions,
        as_json,
        "Migrations",
        ["revision", "down", "message", "head"],
        [(r.revision, r.down_revision, r.message, "yes" if r.is_head else "") for r in revisions],
    )


@dev_app.command("cluster")
def dev_cluster(
    replicas: Annotated[int, typer.Option(min=0, max=8, help="Streaming replicas.")] = 1,
    port: Annotated[
        int, typer.Option(min=1024, max=65000, help="The primary's port; replicas take the next.")
    ] = 55432,
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the servers keep their data (kept on exit).")
    ] = Path(".chatdb/cluster"),
) -> None:
    """Run a primary and streaming replicas on loopback until Ctrl+C, with
    chatdb's schema applied on the primary (pg_basebackup, physical replication)."""
    ports = [port + offset for offset in range(replicas + 1)]
    _stop_on_interrupt_or_terminate()
    cluster = devcluster.start_cluster(directory.resolve(), ports)
    try:
        admin_url = normalize_url(cluster.primary.url())
        ensure_database(admin_url, EMBEDDED_DATABASE)
        engine = make_engine(admin_url.set(database=EMBEDDED_DATABASE))
        migrate.upgrade(engine)
        engine.dispose()
        cluster.wait_replayed()
        replica_urls = ",".join(node.url(EMBEDDED_DATABASE) for node in cluster.replicas)
        console.print(f"CHATDB_DATABASE_URL={cluster.primary.url(EMBEDDED_DATABASE)}")
        console.print(f"CHATDB_REPLICA_URLS={replica_urls}", soft_wrap=True)
        errors.print("running; Ctrl+C stops the servers (their data stays)", highlight=False)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()


def _stop_on_interrupt_or_terminate() -> None:
    """Ctrl+C and `kill` both stop the servers cleanly, also when this process
    was started with SIGINT ignored or blocked (as `cmd &` in a script starts it;
    the test suite once passed it on that way)."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, interrupt)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


@db_app.command("stop")
def db_stop() -> None:
    """Stop the embedded PostgreSQL server (its data stays)."""
    settings = get_settings()
    if not settings.embedded:
        fail("CHATDB_DATABASE_URL is set; chatdb does not run that server")
    stopped = stop_embedded_server(settings)
    console.print("stopped" if stopped else "the embedded server was not running")


# --- users ---

_USER_COLUMNS = ["id", "username", "email", "display name", "created"]


def _user_row(u: store.types.User) -> tuple[Any, ...]:
    return (u.id, u.username, u.email, u.display_name, u.created_at)


@user_app.command("create")
def user_create(
    username: str,
    email: str,
    display_name: Annotated[str | None, typer.Option(help="Name shown to others.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a user."""
    with unit_of_work() as session:
        user = store.create_user(
            session=session, username=username, email=email, display_name=display_name
        )
    render(user, as_json, "User created", _USER_COLUMNS, [_user_row(user)])


@user_app.command("show")
def user_show(user: UserRef, as_json: JsonFlag = False) -> None:
    """Show one user."""
    with unit_of_work() as session:
        found = store.get_user(session=session, user_id=resolve_user(session, user))
    render(found, as_json, "User", _USER_COLUMNS, [_user_row(found)])


@user_app.command("list")
def user_list(
    after: Annotated[int, typer.Option(help="Show users with an id above this.", min=0)] = 0,
    limit: LimitOpt = 50,
    as_json: JsonFlag = False,
) -> None:
    """List users in id order (keyset pages: pass the last id as --after)."""
    with unit_of_work() as session:
        users = store.list_users(session=session, after_id=after, limit=limit)
    render(users, as_json, "Users", _USER_COLUMNS, [_user_row(u) for u in users])


@user_app.command("update")
def user_update(
    user: UserRef,
    username: Annotated[str | None, typer.Option()] = None,
    email: Annotated[str | None, typer.Option()] = None,
    display_name: Annotated[str | None, typer.Option(help='"" clears it.')] = None,
    as_json: JsonFlag = False,
) -> None:
    """Change a user's username, email or display name."""
    with unit_of_work() as session:
        updated = store.update_user(
            session=session,
            user_id=resolve_user(session, user),
            username=username,
            email=email,
            display_name=display_name,
        )
    render(updated, as_json, "User updated", _USER_COLUMNS, [_user_row(updated)])


@user_app.command("delete")
def user_delete(user: UserRef) -> None:
    """Delete a user: their memberships go, their messages stay without a sender."""
    with unit_of_work() as session:
        store.delete_user(session=session, user_id=resolve_user(session, user))
    console.print("deleted")


# --- conversations ---

_CONVERSATION_COLUMNS = ["id", "kind", "title", "messages", "last activity", "created"]


def _conversation_row(c: store.types.Conversation) -> tuple[Any, ...]:
    return (c.id, c.kind, c.title, c.last_seq, c.last_activity_at, c.created_at)


@conversation_app.command("create-group")
def conversation_create_group(
    owner: Annotated[str, typer.Option(help="The creating user (id or username).")],
    title: Annotated[str, typer.Option(help="The group's title.")],
    member: Annotated[list[str] | None, typer.Option(help="A member to add; repeatable.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a group conversation; the owner and members join in one transaction."""
    with unit_of_work() as session:
        conversation = store.create_group(
            session=session,
            creator_id=resolve_user(session, owner),
            title=title,
            member_ids=[resolve_user(session, m) for m in member or []],
        )
    render(
        conversation,
        as_json,
        "Group created",
        _CONVERSATION_COLUMNS,
        [_conversation_row(conversation)],
    )


@conversation_app.command("direct")
def conversation_direct(user: UserRef, other: UserRef, as_json: JsonFlag = False) -> None:
    """The direct conversation of two users (created if it does not exist)."""
    with unit_of_work() as session:
        conversation, created = store.get_or_create_direct(
            session=session,
            user_id=resolve_user(session, user),
            other_user_id=resolve_user(session, other),
        )
    title = "Direct conversation created" if created else "Direct conversation (existing)"
    render(conversation, as_json, title, _CONVERSATION_COLUMNS, [_conversation_row(conversation)])


@conversation_app.command("show")
def conversation_show(conversation_id: ConversationId, as_json: JsonFlag = False) -> None:
    """Show one conversation."""
    with unit_of_work() as session:
        conversation = store.get_conversation(session=session, conversation_id=conversation_id)
    render(
        conversation,
        as_json,
        "Conversation",
        _CONVERSATION_COLUMNS,
        [_conversation_row(conversation)],
    )


@conversation_app.command("rename")
def conversation_rename(
    conversation_id: ConversationId, title: str, as_json: JsonFlag = False
) -> None:
    """Change a group's title."""
    with unit_of_work() as session:
        conversation = store.rename_conversation(
            session=session, conversation_id=conversation_id, title=title
        )
    render(
        conversation,
        as_json,
        "Conversation renamed",
        _CONVERSATION_COLUMNS,
        [_conversation_row(conversation)],
    )


@conversation_app.command("delete")
def conversation_delete(conversation_id: ConversationId) -> None:
    """Delete a conversation; `chatdb conversation restore` brings it back within
    the retention window, `chatdb purge` removes it for good after."""
    with unit_of_work() as session:
        store.delete_conversation(session=session, conversation_id=conversation_id)
    days = get_settings().retention_days
    console.print(
        f"deleted; restorable for {days} days (chatdb conversation restore {conversation_id})",
        highlight=False,
    )


@conversation_app.command("restore")
def conversation_restore(conversation_id: ConversationId, as_json: JsonFlag = False) -> None:
    """Bring back a deleted conversation with its members and messages."""
    with unit_of_work() as session:
        conversation = store.restore_conversation(
            session=session,
            conversation_id=conversation_id,
            retention_days=get_settings().retention_days,
        )
    render(
        conversation,
        as_json,
        "Conversation restored",
        _CONVERSATION_COLUMNS,
        [_conversation_row(conversation)],
    )


@conversation_app.command("deleted")
def conversation_deleted(
    after: Annotated[
        int, typer.Option(help="Show conversations with an id above this.", min=0)
    ] = 0,
    limit: LimitOpt = 50,
    as_json: JsonFlag = False,
) -> None:
    """List deleted conversations, and until when each can be restored."""
    with unit_of_work() as session:
        found = store.deleted_conversations(
            session=session,
            retention_days=get_settings().retention_days,
            after_id=after,
            limit=limit,
        )
    render(
        found,
        as_json,
        "Deleted conversations",
        ["id", "kind", "title", "messages", "deleted", "restorable until"],
        [(c.id, c.kind, c.title, c.messages, c.deleted_at, c.purge_after) for c in found],
    )


# --- members ---


class Role(StrEnum):
    owner = "owner"
    member = "member"


_MEMBER_COLUMNS = ["user id", "username", "role", "read up to", "joined"]


def _member_row(m: store.types.Member) -> tuple[Any, ...]:
    return (m.user_id, m.username, m.role, m.last_read_seq, m.joined_at)


@member_app.command("add")
def member_add(
    conversation_id: ConversationId,
    user: UserRef,
    role: Annotated[Role, typer.Option()] = Role.member,
    as_json: JsonFlag = False,
) -> None:
    """Add a user to a group."""
    with unit_of_work() as session:
        member = store.add_member(
            session=session,
            conversation_id=conversation_id,
            user_id=resolve_user(session, user),
            role=role.value,
        )
    render(member, as_json, "Member added", _MEMBER_COLUMNS, [_member_row(member)])


@member_app.command("remove")
def member_remove(conversation_id: ConversationId, user: UserRef) -> None:
    """Remove a member (the longest-standing member becomes owner if the last owner goes)."""
    with unit_of_work() as session:
        store.remove_member(
            session=session, conversation_id=conversation_id, user_id=resolve_user(session, user)
        )
    console.print("removed")


@member_app.command("role")
def member_role(
    conversation_id: ConversationId, user: UserRef, role: Role, as_json: JsonFlag = False
) -> None:
    """Make a member an owner, or an owner a plain member."""
    with unit_of_work() as session:
        member = store.set_member_role(
            session=session,
            conversation_id=conversation_id,
            user_id=resolve_user(session, user),
            role=role.value,
        )
    render(member, as_json, "Role changed", _MEMBER_COLUMNS, [_member_row(member)])


@member_app.command("list")
def member_list(
    conversation_id: ConversationId,
    after: Annotated[int, typer.Option(help="Show members with a user id above this.", min=0)] = 0,
    limit: LimitOpt = 100,
    as_json: JsonFlag = False,
) -> None:
    """List a conversation's members (keyset pages by user id)."""
    with unit_of_work() as session:
        members = store.list_members(
            session=session, conversation_id=conversation_id, after_user_id=after, limit=limit
        )
    render(members, as_json, "Members", _MEMBER_COLUMNS, [_member_row(m) for m in members])


# --- messages ---

_MESSAGE_COLUMNS = [
    "seq",
    "sender",
    "message",
    "sent",
    "edited",
    "deleted",
    "reply to",
    "replies",
    "reactions",
]


def _message_row(m: store.types.Message) -> tuple[Any, ...]:
    body = m.body if m.deleted_at is None else "(deleted)"
    return (
        m.seq,
        m.sender_name,
        body,
        m.created_at,
        m.edited_at,
        m.deleted_at,
        m.reply_to_seq,
        m.reply_count or None,
        " ".join(f"{r.emoji}{r.count}" for r in m.reactions) or None,
    )


def _show_messages(page: store.types.MessagePage, as_json: bool, title: str) -> None:
    if as_json:
        print_json(page)
        return
    print_table(title, _MESSAGE_COLUMNS, [_message_row(m) for m in page.messages])
    hints = []
    if page.has_older and page.messages:
        hints.append(f"older: --before {page.messages[0].seq}")
    if page.has_newer and page.messages:
        hints.append(f"newer: --after {page.messages[-1].seq}")
    if hints:
        errors.print("; ".join(hints), highlight=False)


@message_app.command("send")
def message_send(
    conversation_id: ConversationId,
    body: str,
    sender: Annotated[str, typer.Option(help="The sending user (id or username).")],
    key: Annotated[
        str | None, typer.Option(help="Idempotency key: a retry with it sends nothing twice.")
    ] = None,
    reply_to: Annotated[
        int | None, typer.Option(help="Reply to this earlier message (its seq).", min=1)
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Send a message as a member (@username mentions a member)."""
    with unit_of_work() as session:
        result = store.send_message(
            session=session,
            conversation_id=conversation_id,
            sender_id=resolve_user(session, sender),
            body=body,
            idempotency_key=key,
            reply_to_seq=reply_to,
        )
    title = "Message sent" if result.created else "Already sent (same idempotency key)"
    render(result, as_json, title, _MESSAGE_COLUMNS, [_message_row(result.message)])


@message_app.command("list")
def message_list(
    conversation_id: ConversationId,
    before: Annotated[int | None, typer.Option(help="Messages before this seq.", min=0)] = None,
    after: Annotated[int | None, typer.Option(help="Messages after this seq.", min=0)] = None,
    limit: LimitOpt = 20,
    as_json: JsonFlag = False,
) -> None:
    """Page through a conversation (newest page by default)."""
    with unit_of_work() as session:
        page = store.list_messages(
            session=session,
            conversation_id=conversation_id,
            before=before,
            after=after,
            limit=limit,
        )
    _show_messages(page, as_json, f"Conversation {conversation_id}")


@message_app.command("replies")
def message_replies(
    conversation_id: ConversationId,
    seq: Annotated[int, typer.Argument(min=1)],
    after: Annotated[int, typer.Option(help="Replies after this seq.", min=0)] = 0,
    limit: LimitOpt = 20,
    as_json: JsonFlag = False,
) -> None:
    """A thread: a message and its replies, oldest first."""
    with unit_of_work() as session:
        page = store.list_replies(
            session=session, conversation_id=conversation_id, seq=seq, after=after, limit=limit
        )
    if as_json:
        print_json(page)
        return
    print_table(
        f"Replies to message {seq} of conversation {conversation_id}",
        _MESSAGE_COLUMNS,
        [_message_row(page.parent), *(_message_row(m) for m in page.replies)],
    )
    if page.has_more and page.replies:
        errors.print(f"more: --after {page.replies[-1].seq}", highlight=False)


@message_app.command("react")
def message_react(
    conversation_id: ConversationId,
    seq: Annotated[int, typer.Argument(min=1)],
    emoji: str,
    user: Annotated[str, typer.Option(help="The reacting member (id or username).")],
    remove: Annotated[bool, typer.Option("--remove", help="Take the reaction back.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """React to a message with an emoji (or take it back with --remove)."""
    with unit_of_work() as session:
        action = store.remove_reaction if remove else store.add_reaction
        message = action(
            session=session,
            conversation_id=conversation_id,
            seq=seq,
            user_id=resolve_user(session, user),
            emoji=emoji,
        )
    title = "Reaction removed" if remove else "Reaction added"
    render(message, as_json, title, _MESSAGE_COLUMNS, [_message_row(message)])


def _single_message(
    action: Callable[..., store.types.Message], title: str, as_json: bool, **kwargs: Any
) -> None:
    with unit_of_work() as session:
        message = action(session=session, **kwargs)
    render(message, as_json, title, _MESSAGE_COLUMNS, [_message_row(message)])


@message_app.command("edit")
def message_edit(
    conversation_id: ConversationId, seq: int, body: str, as_json: JsonFlag = False
) -> None:
    """Change a message's text (as an operator)."""
    _single_message(
        store.edit_message,
        "Message edited",
        as_json,
        conversation_id=conversation_id,
        seq=seq,
        body=body,
        actor_id=None,
    )


@message_app.command("delete")
def message_delete(conversation_id: ConversationId, seq: int, as_json: JsonFlag = False) -> None:
    """Soft-delete a message; `chatdb message restore` brings it back."""
    _single_message(
        store.delete_message, "Message deleted", as_json, conversation_id=conversation_id, seq=seq
    )


@message_app.command("restore")
def message_restore(conversation_id: ConversationId, seq: int, as_json: JsonFlag = False) -> None:
    """Restore a soft-deleted message."""
    _single_message(
        store.restore_message,
        "Message restored",
        as_json,
        conversation_id=conversation_id,
        seq=seq,
        retention_days=get_settings().retention_days,
    )


@message_app.command("read")
def message_read(
    conversation_id: ConversationId,
    seq: Annotated[int, typer.Argument(min=0)],
    user: Annotated[str, typer.Option(help="The reading member (id or username).")],
) -> None:
    """Move a member's read marker up to SEQ."""
    with unit_of_work() as session:
        user_id = resolve_user(session, user)
        marker = store.mark_read(
            session=session, conversation_id=conversation_id, user_id=user_id, seq=seq
        )
        unread = store.unread_count(
            session=session, conversation_id=conversation_id, user_id=user_id
        )
    console.print(f"read up to {marker}; {unread} unread")


# --- the four queries ---

DaysOpt = Annotated[int, typer.Option(help="Inactive for this many days.", min=1, max=36500)]
TzOpt = Annotated[str, typer.Option("--tz", help="IANA time zone for day boundaries.")]


def _parse_cursor(raw: str | None) -> InboxCursor | None:
    if raw is None:
        return None
    try:
        stamp, _, conversation = raw.rpartition("/")
        return InboxCursor(datetime.fromisoformat(stamp), int(conversation))
    except ValueError as exc:
        raise Invalid(
            f"not an inbox cursor: {raw!r} (copy the one printed by the last page)"
        ) from exc


def _date_range(start: datetime | None, end: datetime | None) -> tuple[date, date]:
    last = (end or datetime.now(UTC)).date()
    first = start.date() if start else last - timedelta(days=29)
    return first, last


DateOpt = Annotated[datetime | None, typer.Option(formats=["%Y-%m-%d"])]


@query_app.command("last-messages")
def query_last_messages(
    conversation_id: ConversationId, limit: LimitOpt = 20, as_json: JsonFlag = False
) -> None:
    """1. The last N messages of a conversation, with sender names."""
    with unit_of_work() as session:
        page = store.list_messages(session=session, conversation_id=conversation_id, limit=limit)
    _show_messages(page, as_json, f"Last {limit} messages of conversation {conversation_id}")


@query_app.command("inbox")
def query_inbox(
    user: UserRef,
    limit: LimitOpt = 20,
    before: Annotated[str | None, typer.Option(help="Cursor printed by the previous page.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """2. A user's conversations, newest activity first, with the last message."""
    with unit_of_work() as session:
        page = store.inbox(
            session=session,
            user_id=resolve_user(session, user),
            before=_parse_cursor(before),
            limit=limit,
        )
    cursor = (
        f"{page.next_cursor.last_activity_at.isoformat()}/{page.next_cursor.conversation_id}"
        if page.next_cursor
        else None
    )
    if as_json:
        print_json({"entries": page.entries, "next_cursor": cursor})
        return
    print_table(
        f"Inbox of {user}",
        ["id", "conversation", "unread", "mentions", "last message", "from", "at"],
        [
            (
                e.conversation_id,
                e.title or f"({e.kind})",
                e.unread_count,
                e.unread_mention_count,
                "(deleted)" if e.last_message_deleted else _preview(e.last_message_body),
                e.last_message_sender_name,
                e.last_message_at,
            )
            for e in page.entries
        ],
    )
    if cursor:
        errors.print(f"next page: --before '{cursor}'", highlight=False)


def _preview(body: str | None, width: int = 60) -> str | None:
    if body is None:
        return None
    flat = " ".join(body.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@query_app.command("activity")
def query_activity(
    start: Annotated[
        datetime | None, typer.Option("--from", formats=["%Y-%m-%d"], help="First day.")
    ] = None,
    end: Annotated[
        datetime | None,
        typer.Option("--to", formats=["%Y-%m-%d"], help="Last day (today)."),
    ] = None,
    tz: TzOpt = "UTC",
    user: Annotated[str | None, typer.Option(help="Only this user.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """3. Messages per user per day (default: the last 30 days, UTC)."""
    first, last = _date_range(start, end)
    with unit_of_work() as session:
        rows = store.activity(
            session=session,
            start=first,
            end=last,
            tz=tz,
            user_id=resolve_user(session, user) if user else None,
        )
    render(
        rows,
        as_json,
        f"Messages per user per day, {first} to {last} ({tz})",
        ["day", "user id", "username", "messages"],
        [(r.day, r.user_id, r.username or "(deleted user)", r.message_count) for r in rows],
    )


@query_app.command("inactive")
def query_inactive(
    days: DaysOpt = 30,
    after: Annotated[int, typer.Option(help="Show users with an id above this.", min=0)] = 0,
    limit: LimitOpt = 50,
    as_json: JsonFlag = False,
) -> None:
    """4. Users who have not sent a message in N days (never-senders included)."""
    with unit_of_work() as session:
        page = store.inactive_users(session=session, days=days, after_id=after, limit=limit)
    render(
        page,
        as_json,
        f"Users with no message in {days} days",
        ["id", "username", "last message", "joined"],
        [(u.id, u.username, u.last_message_at or "never", u.created_at) for u in page.users],
    )
    if page.next_after_id and not as_json:
        errors.print(f"next page: --after {page.next_after_id}", highlight=False)


# --- search ---

_TIME_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"]


def _search_cursor(raw: str | None) -> SearchCursor | None:
    if raw is None:
        return None
    try:
        rank, stamp, conversation, seq = raw.split("/")
        return SearchCursor(float(rank), datetime.fromisoformat(stamp), int(conversation), int(seq))
    except ValueError as exc:
        raise Invalid(
            f"not a search cursor: {raw!r} (copy the one printed by the last page)"
        ) from exc


def _marked(snippet: list[tuple[str, bool]]) -> str:
    return "".join(f"«{piece}»" if match else piece for piece, match in snippet)


@app.command("search")
def search(
    text: Annotated[str, typer.Argument(help='Words, "a phrase", -word, or.')],
    as_user: Annotated[
        str | None,
        typer.Option("--as", help="Search as this user: their conversations only (default: all)."),
    ] = None,
    conversation: Annotated[int | None, typer.Option(help="Only this conversation.", min=1)] = None,
    from_user: Annotated[str | None, typer.Option("--from", help="Only this sender's.")] = None,
    before: Annotated[
        datetime | None, typer.Option(formats=_TIME_FORMATS, help="Sent before (UTC if no zone).")
    ] = None,
    after: Annotated[
        datetime | None, typer.Option(formats=_TIME_FORMATS, help="Sent after (UTC if no zone).")
    ] = None,
    mentions: Annotated[
        bool, typer.Option("--mentions", help="Only messages that @mention the --as user.")
    ] = False,
    limit: LimitOpt = 20,
    cursor: Annotated[str | None, typer.Option(help="Cursor printed by the previous page.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Full-text search of messages, most relevant first (matches in «»).

    Text that starts with '-' goes after `--`: chatdb search -- -word other.
    """
    if mentions and not as_user:
        raise Invalid("--mentions needs --as: whose mentions?")
    with unit_of_work() as session:
        actor_id = resolve_user(session, as_user) if as_user else None
        page = store.search_messages(
            session=session,
            q=text,
            actor_id=actor_id,
            mentioning=actor_id if mentions else None,
            conversation_id=conversation,
            sender_id=resolve_user(session, from_user) if from_user else None,
            before=before,
            after=after,
            cursor=_search_cursor(cursor),
            limit=limit,
        )
    next_cursor = (
        f"{page.next_cursor.rank!r}/{page.next_cursor.created_at.isoformat()}/"
        f"{page.next_cursor.conversation_id}/{page.next_cursor.seq}"
        if page.next_cursor
        else None
    )
    if as_json:
        print_json({"results": page.hits, "next_cursor": next_cursor})
        return
    print_table(
        f"Messages matching {text!r}",
        ["conversation", "seq", "sender", "message", "sent"],
        [
            (
                h.message.conversation_id,
                h.message.seq,
                h.message.sender_name,
                _marked(h.snippet),
                h.message.created_at,
            )
            for h in page.hits
        ],
    )
    if next_cursor:
        errors.print(f"next page: --cursor '{next_cursor}'", highlight=False)


# --- explain ---


class Query(StrEnum):
    last_messages = "last-messages"
    inbox = "inbox"
    activity = "activity"
    inactive = "inactive"


@app.command("explain")
def explain(
    query: Annotated[Query, typer.Argument(help="Which of the four queries.")],
    conversation: Annotated[int | None, typer.Option(help="For last-messages.", min=1)] = None,
    user: Annotated[str | None, typer.Option(help="For inbox (and activity).")] = None,
    days: DaysOpt = 30,
    tz: TzOpt = "UTC",
    limit: LimitOpt = 20,
) -> None:
    """Run a query under EXPLAIN (ANALYZE, BUFFERS) and print PostgreSQL's plan.

    Without --conversation or --user, the busiest conversation and the user in
    the most conversations are used.
    """
    with unit_of_work() as session:
        busy = store.overview(session=session)
        if query is Query.last_messages:
            target = conversation or busy.busiest_conversation_id
            if target is None:
                raise NotFound("there are no conversations yet; try `chatdb seed`")
            statement = store.page_statement(target, limit=limit)
        elif query is Query.inbox:
            user_id = resolve_user(session, user) if user else busy.most_connected_user_id
            if user_id is None:
                raise NotFound("there are no members yet; try `chatdb seed`")
            statement = store.inbox_statement(user_id, limit=limit)
        elif query is Query.activity:
            today = datetime.now(UTC).date()
            statement = store.activity_statement(
                today - timedelta(days=days - 1),
                today,
                tz,
                resolve_user(session, user) if user else None,
            )
        else:
            statement = store.inactive_statement(days, limit=limit)
        plan = store.explain(session=session, statement=statement)
    for line in plan:
        console.print(line, highlight=False, markup=False, soft_wrap=True)


# --- seed, stats and the demo ----------------------------------------------------------------


@contextmanager
def _progress_bar() -> Iterator[Callable[[str, int, int], None]]:
    tasks: dict[str, TaskID] = {}
    with Progress(
        TextColumn("{task.description:<14}"),
        BarColumn(),
        TextColumn("{task.completed:>12,}/{task.total:<12,}"),
        TimeElapsedColumn(),
        console=errors,
        transient=False,
    ) as progress:

        def report(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=max(total, 1))
            progress.update(tasks[phase], completed=done, total=max(total, 1))

        yield report


@app.command("seed")
def seed_command(
    users: Annotated[int, typer.Option(min=2, max=10_000_000)] = 1_000,
    conversations: Annotated[int, typer.Option(min=1, max=50_000_000)] = 2_000,
    messages: Annotated[int, typer.Option(min=0, max=1_000_000_000)] = 100_000,
    big_groups: Annotated[int, typer.Option(help="Groups with thousands of members.", min=0)] = 2,
    big_group_size: Annotated[int, typer.Option(min=3)] = 2_000,
    days: Annotated[int, typer.Option(help="Spread messages over this many days.", min=1)] = 90,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same data.")] = 42,
    as_json: JsonFlag = False,
) -> None:
    """Load synthetic users, conversations and messages (COPY, one transaction)."""
    from chatdb.seed import SeedPlan
    from chatdb.seed import seed as run_seed

    plan = SeedPlan(
        users=users,
        conversations=conversations,
        messages=messages,
        seed=seed,
        big_groups=big_groups,
        big_group_size=big_group_size,
        days=days,
    )
    engine = engine_ready()
    with _progress_bar() as progress:
        report = run_seed(engine, plan, progress=progress)
    rate = report.messages / report.seconds if report.seconds else 0.0
    render(
        report,
        as_json,
        "Seeded",
        ["users", "conversations", "members", "messages", "seconds", "messages/s"],
        [
            (
                f"{report.users:,}",
                f"{report.conversations:,}",
                f"{report.members:,}",
                f"{report.messages:,}",
                f"{report.seconds:.1f}",
                f"{rate:,.0f}",
            )
        ],
    )


@app.command("stats")
def stats(as_json: JsonFlag = False) -> None:
    """Counts of users, conversations and messages."""
    with unit_of_work() as session:
        counts = store.overview(session=session)
    render(
        counts,
        as_json,
        "chatdb",
        ["users", "conversations", "messages"],
        [(f"{counts.users:,}", f"{counts.conversations:,}", f"{counts.messages:,}")],
    )


@app.command("demo")
def demo() -> None:
    """Seed a demo dataset if the database is empty, then run the four queries."""
    with unit_of_work() as session:
        counts = store.overview(session=session)
    if counts.users == 0:
        console.print("[bold]Empty database: seeding a demo dataset…[/bold]")
        seed_command(
            users=500,
            conversations=1_000,
            messages=50_000,
            big_groups=1,
            big_group_size=200,
            days=60,
            seed=42,
            as_json=False,
        )
        with unit_of_work() as session:
            counts = store.overview(session=session)
    conversation_id = counts.busiest_conversation_id
    user_id = counts.most_connected_user_id
    if conversation_id is None or user_id is None:
        fail("the database has users but no conversations; try `chatdb seed`", 1)
    console.rule("1. The last 10 messages of the busiest conversation, with sender names")
    query_last_messages(conversation_id, limit=10, as_json=False)
    console.rule("2. The inbox of the user in the most conversations")
    query_inbox(str(user_id), limit=10, before=None, as_json=False)
    console.rule("3. Messages per user per day, last 3 days (top rows)")
    today = datetime.now(UTC)
    with unit_of_work() as session:
        rows = store.activity(
            session=session, start=(today - timedelta(days=2)).date(), end=today.date()
        )
    print_table(
        "Messages per user per day (UTC), busiest 15",
        ["day", "user", "messages"],
        [(r.day, r.username or "(deleted user)", r.message_count) for r in rows[:15]],
    )
    console.rule("4. Users with no message in 30 days (first 10)")
    query_inactive(days=30, after=0, limit=10, as_json=False)
    console.print(
        f"\n{counts.users:,} users, {counts.conversations:,} conversations, "
        f"{counts.messages:,} messages. Try `chatdb explain inbox` or `chatdb --help`."
    )


# --- mistakes: purge, backup, restore ---


@app.command("purge")
def purge(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be removed.")
    ] = False,
    batch_size: Annotated[
        int, typer.Option(help="Conversations per transaction (messages: 50x).", min=1, max=1000)
    ] = 20,
    as_json: JsonFlag = False,
) -> None:
    """Remove for good what was deleted more than CHATDB_RETENTION_DAYS ago:
    conversations (with members and messages) and deleted messages' text; and
    live-update changes older than CHATDB_CHANGE_RETENTION_DAYS.

    Works in short transactions of one batch each, so it never holds up writers;
    safe to stop and run again, and to run from cron.
    """
    settings = get_settings()
    days, change_days = settings.retention_days, settings.change_retention_days
    engine = engine_ready()
    if dry_run:
        with transaction(engine) as session:
            due = store.purge_due(
                session=session, retention_days=days, change_retention_days=change_days
            )
        render(
            due,
            as_json,
            f"Would purge (deleted more than {days} days ago; changes older than {change_days})",
            [
                "conversations",
                "their messages",
                "deleted messages' text",
                "sign-in counters",
                "changes",
            ],
            [
                (
                    due.conversations,
                    due.conversation_messages,
                    due.message_texts,
                    due.sign_in_counters,
                    due.changes,
                )
            ],
        )
        return
    conversations = _in_batches(
        engine,
        lambda session: len(
            store.purge_conversations_batch(session=session, retention_days=days, limit=batch_size)
        ),
    )
    messages = _in_batches(
        engine,
        lambda session: store.erase_deleted_messages_batch(
            session=session, retention_days=days, limit=batch_size * 50
        ),
    )
    with transaction(engine) as session:
        counters = store.forget_sign_in_failures(session=session)
    with transaction(engine) as session:
        horizon = store.change_log_horizon(session=session, change_retention_days=change_days)
    changes = _in_batches(
        engine,
        lambda session: store.prune_changes_batch(
            session=session, below_id=horizon, limit=batch_size * 500
        ),
    )
    result = {
        "conversations": conversations,
        "message_texts": messages,
        "sign_in_counters": counters,
        "changes": changes,
    }
    render(
        result,
        as_json,
        f"Purged (deleted more than {days} days ago; changes older than {change_days})",
        ["conversations", "deleted messages' text", "sign-in counters", "changes"],
        [(conversations, messages, counters, changes)],
    )


def _in_batches(engine: Engine, batch: Callable[[Session], int]) -> int:
    """Run `batch` in a transaction of its own until it does nothing; returns
    the total it did."""
    total = 0
    while True:
        with transaction(engine) as session:
            done = batch(session)
        if not done:
            return total
        total += done


@app.command("archive")
def archive(
    older_than_days: Annotated[
        int,
        typer.Option(
            help="Move messages sent more than this many days ago (at least "
            "CHATDB_RETENTION_DAYS, so nothing restorable moves).",
            min=1,
            max=36500,
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be moved.")
    ] = False,
    batch_size: Annotated[
        int, typer.Option(help="Messages per transaction.", min=1, max=100_000)
    ] = 5000,
    as_json: JsonFlag = False,
) -> None:
    """Move old messages out of the hot table into messages_archive.

    Short transactions of one batch each, rows locked by writers skipped (a
    later run takes them): sends and edits are never held up. Safe to stop and
    run again, and to run from cron. The activity report still counts them;
    pages, search and the API no longer show them.
    """
    retention = get_settings().retention_days
    if older_than_days < retention:
        raise Invalid(
            f"--older-than-days must be at least CHATDB_RETENTION_DAYS ({retention}): "
            "a deleted message younger than that can still be restored"
        )
    cutoff = datetime.now(UTC) - timedelta(days=older_than_days)
    engine = engine_ready()
    if dry_run:
        with transaction(engine) as session:
            due = store.archive_due(session=session, cutoff=cutoff)
        render(
            due,
            as_json,
            f"Would archive (sent before {cutoff:%Y-%m-%d %H:%M} UTC)",
            ["messages", "oldest"],
            [(due.messages, due.oldest)],
        )
        return
    moved = batches = 0
    while True:
        with transaction(engine) as session:
            batch = store.archive_messages_batch(session=session, cutoff=cutoff, limit=batch_size)
        if not batch:
            break
        moved += batch
        batches += 1
    render(
        {"messages": moved, "batches": batches, "cutoff": cutoff.isoformat()},
        as_json,
        f"Archived (sent before {cutoff:%Y-%m-%d %H:%M} UTC)",
        ["messages", "batches"],
        [(moved, batches)],
    )


FileArg = Annotated[Path, typer.Argument(help="The backup file.", dir_okay=True)]


@app.command("backup")
def backup_command(
    file: FileArg,
    force: Annotated[bool, typer.Option("--force", help="Replace FILE if it exists.")] = False,
) -> None:
    """Write the whole database to FILE (pg_dump, custom format)."""
    from chatdb import backup

    engine = engine_ready()
    tool = backup.backup(
        engine, database_url(), file, embedded=get_settings().embedded, overwrite=force
    )
    size = file.expanduser().stat().st_size
    console.print(f"backed up to {file} ({size:,} bytes, {tool.path})", highlight=False)


@app.command("restore")
def restore_command(
    file: FileArg,
    yes: Annotated[bool, typer.Option("--yes", help="Replace a database that holds data.")] = False,
) -> None:
    """Replace the database's contents with FILE's (pg_restore, one transaction:
    on any error the database stays as it was). Stop `chatdb serve` first."""
    from chatdb import backup

    backup.check_archive(file)
    engine = engine_ready(need_schema=False)
    if not yes:
        with transaction(engine) as session:
            held = store.database_holds_data(session=session)
        if held:
            fail(f"the database holds {held}; restoring replaces it: pass --yes", 2)
    tool = backup.restore(engine, database_url(), file, embedded=get_settings().embedded)
    engine.dispose()
    console.print(f"restored from {file} ({tool.path})", highlight=False)


# --- the benchmark ---


class BenchSize(StrEnum):
    small = "small"
    medium = "medium"
    large = "large"


def _bench_status(status: Status, size: str, step: str) -> None:
    status.update(f"{size}: {step}")


@app.command("bench")
def bench_command(
    size: Annotated[
        list[BenchSize] | None,
        typer.Option(help="Dataset size; repeat for several (small 100k, medium 1M, large 10M)."),
    ] = None,
    quick: Annotated[
        bool, typer.Option(help="Few samples: checks the command, not speed.")
    ] = False,
    out: Annotated[Path, typer.Option(help="Where the JSON reports and PNG plots go.")] = Path(
        "bench-results"
    ),
    with_http: Annotated[
        bool, typer.Option("--http/--no-http", help="Also measure the API under uvicorn.")
    ] = True,
    reload: Annotated[
        bool, typer.Option(help="Load the dataset again even if an identical one is there.")
    ] = False,
    database: Annotated[
        str | None,
        typer.Option(help="Database name for the dataset (default chatdb_bench_SIZE)."),
    ] = None,
    http_workers: Annotated[
        int, typer.Option(min=1, max=64, help="uvicorn worker processes for the HTTP part.")
    ] = 1,
    as_json: JsonFlag = False,
) -> None:
    """Measure chatdb: p50/p95/p99 and throughput per operation, against the bare-driver floor.

    Each size is loaded once (with `chatdb seed`) into a database of its own on
    the server in use, and reused by later runs.
    """
    from chatdb import bench

    sizes = list(dict.fromkeys(size or [BenchSize.small]))
    if database is not None and len(sizes) > 1:
        fail("--database names one database; give one --size with it")
    source = bench.source_info()  # before a load that may take minutes
    engine_ready(need_schema=False)
    server = database_url()
    reports = []
    for chosen in sizes:
        with _progress_bar() as seed_progress:
            dataset = bench.ensure_dataset(
                server, chosen.value, reload=reload, progress=seed_progress, database=database
            )
        with errors.status(f"benchmark ({chosen.value})") as status:
            result = bench.run(
                dataset,
                quick=quick,
                with_http=with_http,
                http_workers=http_workers,
                progress=partial(_bench_status, status, chosen.value),
                source=source,
            )
        report = result.as_json()
        path = bench.write_json(out, report)
        plots = bench.draw_plots(out, report)
        reports.append(report)
        if not as_json:
            bench.print_tables(console, report)
            written = ", ".join(str(p) for p in (path, *plots))
            console.print(f"Wrote {written}", highlight=False)
            if not plots:
                console.print("No plots: install matplotlib (pip install 'chatdb[bench]').")
    if as_json:
        print_json(reports[0] if len(reports) == 1 else reports)


# --- the HTTP API ---


@app.command("serve")
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes.")] = 1,
    demo_data: Annotated[
        bool, typer.Option("--demo", help="Create demo users and chats if the database is empty.")
    ] = False,
) -> None:
    """Serve the HTTP API (and its docs at /docs)."""
    import uvicorn

    from chatdb.demo import DEMO_PASSWORD, create_demo, demo_needed

    settings = get_settings()
    problem = settings.unsafe_for_serving()
    if problem:
        fail(problem)
    engine = engine_ready()
    if demo_data:
        with transaction(engine) as session:
            names = create_demo(session=session) if demo_needed(session=session) else []
        if names:
            console.print(f"Demo data created. Sign in as {', '.join(names)}.")
        console.print(
            f"Demo users sign in with the password [bold]{DEMO_PASSWORD}[/bold]",
            highlight=False,
        )
        # Workers read their settings from the environment.
        os.environ["CHATDB_DEMO"] = "1"
        get_settings.cache_clear()
    if settings.admin_key_is_default:
        console.print(f"Admin key (development only): {settings.admin_key}", highlight=False)
    console.print(f"chatdb API on http://{host}:{port}  (docs: /docs)", highlight=False)
    uvicorn.run(
        "chatdb.api.main:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        # Event streams never end by themselves; do not wait for them forever.
        timeout_graceful_shutdown=5,
        # No "server: uvicorn" header: what runs here is nobody else's business.
        server_header=False,
    )


# --- entry point ---


# Typer vendors click; its public BadParameter derives from click's UsageError,
# the base of every bad-argument error (missing, unknown, malformed).
_UsageError: type[typer.BadParameter] = next(
    c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError"
)


def main() -> None:
    """Run the CLI; turn every chatdb error into one line and an exit status."""
    try:
        # Not standalone: usage errors come here, to be printed on one line.
        result = app(standalone_mode=False)
        sys.exit(result if isinstance(result, int) else 0)
    except _UsageError as exc:
        context = getattr(exc, "ctx", None)
        command = context.command_path if context else "chatdb"
        if not exc.format_message().strip():
            sys.exit(2)  # no arguments: the help was printed
        fail(f"{exc.format_message()} (see `{command} --help`)", 2)
    except (DatabaseUnavailable, SchemaOutdated, Invalid) as exc:
        fail(str(exc), 2)
    except (NotFound, Conflict, Forbidden, ChatdbError) as exc:
        fail(str(exc), 1)
    except OperationalError as exc:
        if getattr(getattr(exc.orig, "diag", None), "sqlstate", None) == "57014":
            # query_canceled is an OperationalError too, but the server is fine.
            fail(
                "the statement ran past the statement timeout "
                f"({get_settings().statement_timeout_ms} ms, CHATDB_STATEMENT_TIMEOUT_MS); "
                "its transaction was rolled back",
                1,
            )
        # The server went away mid-command, or refused a new connection.
        fail(str(explain_connection_error(database_url(), exc.orig or exc)), 2)
    except DBAPIError as exc:
        fail(f"the database refused the operation: {str(exc.orig).splitlines()[0]}", 1)
