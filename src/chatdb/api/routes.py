"""The /v1 resources. Each handler parses, authorizes, opens one transaction
(a GET: its reads, see Database.reads), calls the store and renders; no SQL here."""

from datetime import UTC, date, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from sqlalchemy.orm import Session

from chatdb import store
from chatdb.api import schemas
from chatdb.api.deps import AppSettings, Caller, Cursors, Db, Principal, reads_in_one_transaction
from chatdb.api.errors import ApiError
from chatdb.errors import Invalid
from chatdb.store.types import Conversation, Member, Message, SendResult, User

router = APIRouter(prefix="/v1")

ConversationId = Annotated[int, schemas.Field(ge=1, le=schemas.BIGINT_MAX)]
UserId = Annotated[int, schemas.Field(ge=1, le=schemas.BIGINT_MAX)]
MessageSeq = Annotated[int, schemas.Field(ge=1, le=schemas.BIGINT_MAX)]
# Checked by the store (one emoji, at most models.EMOJI_MAX characters); this
# bound only keeps absurd paths out.
Emoji = Annotated[str, Path(min_length=1, max_length=64, description="One emoji, URL-encoded")]
Limit = Annotated[int, Query(ge=1, le=200)]

_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": schemas.Problem, "description": text}
    for code, text in {
        400: "Bad cursor",
        401: "Not signed in",
        403: "Not allowed",
        404: "Not found (or not visible to the caller)",
        409: "Conflict",
        413: "Body too large",
        422: "Invalid input",
        503: "Database unavailable or busy; retry",
    }.items()
}


# --- rendering ---


def user_out(user: User, caller: Principal) -> schemas.UserOut:
    private = caller.is_admin or caller.user_id == user.id
    return schemas.UserOut(
        id=user.id,
        username=user.username,
        display_name=user.display_name,
        email=user.email if private else None,
        created_at=user.created_at,
    )


def conversation_out(c: Conversation) -> schemas.ConversationOut:
    return schemas.ConversationOut(
        id=c.id,
        kind=c.kind,
        title=c.title,
        last_seq=c.last_seq,
        last_change_seq=c.last_change_seq,
        last_activity_at=c.last_activity_at,
        created_at=c.created_at,
        direct_user_ids=list(c.direct_user_ids) if c.direct_user_ids else None,
    )


def member_out(m: Member) -> schemas.MemberOut:
    return schemas.MemberOut(
        conversation_id=m.conversation_id,
        user_id=m.user_id,
        username=m.username,
        display_name=m.display_name,
        role=m.role,
        last_read_seq=m.last_read_seq,
        joined_at=m.joined_at,
    )


def message_out(m: Message) -> schemas.MessageOut:
    return schemas.MessageOut(
        conversation_id=m.conversation_id,
        seq=m.seq,
        sender_id=m.sender_id,
        sender_name=m.sender_name,
        body=m.body,
        created_at=m.created_at,
        edited_at=m.edited_at,
        deleted_at=m.deleted_at,
        reply_to_seq=m.reply_to_seq,
        reply_to=schemas.QuoteOut(
            seq=m.reply_to.seq,
            sender_id=m.reply_to.sender_id,
            sender_name=m.reply_to.sender_name,
            body=m.reply_to.body,
            deleted=m.reply_to.deleted,
        )
        if m.reply_to
        else None,
        reply_count=m.reply_count,
        reactions=[schemas.ReactionOut(emoji=r.emoji, count=r.count, me=r.me) for r in m.reactions],
    )


def change_out(c: store.changes.Change) -> schemas.ChangeOut:
    return schemas.ChangeOut(
        id=c.id,
        conversation_id=c.conversation_id,
        change_seq=c.change_seq,
        kind=c.kind,
        message_seq=c.message_seq,
        user_id=c.user_id,
        actor_id=c.actor_id,
        emoji=c.emoji,
        created_at=c.created_at,
        message=message_out(c.message) if c.message else None,
    )


# --- sessions ---


@router.post(
    "/sessions",
    status_code=201,
    responses={
        **_ERRORS,
        429: {
            "model": schemas.Problem,
            "description": "Too many failed sign-ins for this account or from this address",
            "headers": {"Retry-After": {"description": "Seconds", "schema": {"type": "integer"}}},
        },
    },
    tags=["sessions"],
)
def sign_in(
    body: schemas.SessionCreate, request: Request, db: Db, settings: AppSettings
) -> schemas.SessionOut:
    """Sign in with a username and password; returns a bearer token. Repeated
    failures for an account or from an address are answered 429 for a while."""
    limits = store.SignInLimits(
        account_failures=settings.sign_in_account_failures,
        address_failures=settings.sign_in_address_failures,
        first_block=timedelta(seconds=settings.sign_in_first_block_seconds),
    )
    # The failure counted by a refused sign-in is committed with this transaction.
    with db.transaction() as session:
        result = store.sign_in(
            session=session,
            username=body.username,
            password=body.password,
            lifetime=timedelta(hours=settings.token_lifetime_hours),
            address=request.client.host if request.client else None,
            limits=limits,
        )
    if result is None:
        raise ApiError(401, "bad_credentials", "wrong username or password")
    token, user_id, expires_at = result
    return schemas.SessionOut(token=token, user_id=user_id, expires_at=expires_at)


@router.delete("/sessions/current", status_code=204, responses=_ERRORS, tags=["sessions"])
def sign_out(caller: Caller, db: Db) -> Response:
    """Revoke the token this request was made with."""
    caller.require_user()
    with db.transaction() as session:
        store.revoke_token(session=session, token=caller.token)
    return Response(status_code=204)


# --- users ---


@router.get("/me", responses=_ERRORS, tags=["users"])
def me(caller: Caller, db: Db) -> schemas.UserOut:
    user_id = caller.require_user()
    with db.reads() as session:
        return user_out(store.get_user(session=session, user_id=user_id), caller)


@router.post("/users", status_code=201, responses=_ERRORS, tags=["users"])
def create_user(body: schemas.UserCreate, caller: Caller, db: Db) -> schemas.UserOut:
    """Create a user (admin key). With a password, the user can sign in."""
    caller.require_admin()
    with db.transaction() as session:
        user = store.create_user(
            session=session,
            username=body.username,
            email=body.email,
            display_name=body.display_name,
        )
        if body.password is not None:
            store.set_password(session=session, user_id=user.id, password=body.password)
    return user_out(user, caller)


@router.get("/users/{user_id}", responses=_ERRORS, tags=["users"])
def get_user(user_id: UserId, caller: Caller, db: Db) -> schemas.UserOut:
    with db.reads() as session:
        return user_out(store.get_user(session=session, user_id=user_id), caller)


@router.patch("/users/{user_id}", responses=_ERRORS, tags=["users"])
def update_user(
    user_id: UserId, body: schemas.UserPatch, caller: Caller, db: Db
) -> schemas.UserOut:
    """Change a user (the user themself, or the admin key)."""
    if not caller.is_admin and caller.user_id != user_id:
        raise ApiError(403, "forbidden", "you can only change your own account")
    with db.transaction() as session:
        fields = body.model_dump(exclude_unset=True, exclude={"password"})
        if fields:
            user = store.update_user(session=session, user_id=user_id, **fields)
        else:
            user = store.get_user(session=session, user_id=user_id)
        if body.password is not None:
            store.set_password(session=session, user_id=user_id, password=body.password)
        elif not fields:
            raise Invalid("nothing to change")
    return user_out(user, caller)


@router.delete("/users/{user_id}", status_code=204, responses=_ERRORS, tags=["users"])
def delete_user(user_id: UserId, caller: Caller, db: Db) -> Response:
    """Delete a user (admin key): memberships go, messages stay without a sender."""
    caller.require_admin()
    with db.transaction() as session:
        store.delete_user(session=session, user_id=user_id)
    return Response(status_code=204)


# --- conversations ---


@router.post(
    "/conversations",
    status_code=201,
    responses={
        **_ERRORS,
        200: {
            "model": schemas.ConversationOut,
            "description": "The direct conversation of these two users, which existed already",
        },
    },
    tags=["conversations"],
)
def create_conversation(
    body: schemas.ConversationCreate, caller: Caller, db: Db, response: Response
) -> schemas.ConversationOut:
    """A group with members, or the direct conversation with one other user
    (the existing one is returned, with 200, if it exists)."""
    user_id = caller.require_user()
    with db.transaction() as session:
        if body.kind == "direct":
            if len(body.member_ids) != 1 or body.title is not None:
                raise Invalid("a direct conversation names exactly one other user and no title")
            conversation, created = store.get_or_create_direct(
                session=session, user_id=user_id, other_user_id=body.member_ids[0]
            )
            if not created:
                response.status_code = status.HTTP_200_OK
        else:
            for member_id in body.member_ids:
                store.get_user(session=session, user_id=member_id)
            conversation = store.create_group(
                session=session, creator_id=user_id, title=body.title, member_ids=body.member_ids
            )
    return conversation_out(conversation)


@router.get("/conversations", responses=_ERRORS, tags=["conversations"])
def inbox(
    caller: Caller,
    db: Db,
    cursors: Cursors,
    limit: Limit = 20,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> schemas.InboxPageOut:
    """The caller's inbox: newest activity first, last message, unread count."""
    user_id = caller.require_user()
    before = cursors.parse_inbox(cursor)
    with db.replica_reads() as session:
        page = store.inbox(session=session, user_id=user_id, before=before, limit=limit)
    return schemas.InboxPageOut(
        entries=[
            schemas.InboxEntryOut.model_validate(e, from_attributes=True) for e in page.entries
        ],
        next_cursor=cursors.inbox(page.next_cursor),
    )


@router.get("/conversations/{conversation_id}", responses=_ERRORS, tags=["conversations"])
def get_conversation(
    conversation_id: ConversationId, caller: Caller, db: Db
) -> schemas.ConversationOut:
    with db.reads() as session:
        return conversation_out(
            store.get_conversation(
                session=session, conversation_id=conversation_id, actor_id=caller.actor_id
            )
        )


@router.patch("/conversations/{conversation_id}", responses=_ERRORS, tags=["conversations"])
def rename_conversation(
    conversation_id: ConversationId, body: schemas.ConversationPatch, caller: Caller, db: Db
) -> schemas.ConversationOut:
    """Rename a group (owners)."""
    with db.transaction() as session:
        return conversation_out(
            store.rename_conversation(
                session=session,
                conversation_id=conversation_id,
                title=body.title,
                actor_id=caller.actor_id,
            )
        )


@router.delete(
    "/conversations/{conversation_id}", status_code=204, responses=_ERRORS, tags=["conversations"]
)
def delete_conversation(conversation_id: ConversationId, caller: Caller, db: Db) -> Response:
    """Delete a conversation (owners). It disappears for its members at once and
    can be restored within the retention window (CHATDB_RETENTION_DAYS)."""
    with db.transaction() as session:
        store.delete_conversation(
            session=session, conversation_id=conversation_id, actor_id=caller.actor_id
        )
    return Response(status_code=204)


@router.post("/conversations/{conversation_id}/restore", responses=_ERRORS, tags=["conversations"])
def restore_conversation(
    conversation_id: ConversationId, caller: Caller, db: Db, settings: AppSettings
) -> schemas.ConversationOut:
    """Bring back a deleted conversation with its members and messages (owners),
    within the retention window; 409 after it."""
    with db.transaction() as session:
        return conversation_out(
            store.restore_conversation(
                session=session,
                conversation_id=conversation_id,
                retention_days=settings.retention_days,
                actor_id=caller.actor_id,
            )
        )


# --- members ---


@router.get("/conversations/{conversation_id}/members", responses=_ERRORS, tags=["members"])
def list_members(
    conversation_id: ConversationId,
    caller: Caller,
    db: Db,
    limit: Limit = 100,
    after: Annotated[int, Query(ge=0, le=schemas.BIGINT_MAX)] = 0,
) -> list[schemas.MemberOut]:
    """Members in user id order; the next page is `after=<last user_id>`."""
    with db.reads() as session:
        members = store.list_members(
            session=session,
            conversation_id=conversation_id,
            after_user_id=after,
            limit=limit,
            actor_id=caller.actor_id,
        )
    return [member_out(m) for m in members]


@router.post(
    "/conversations/{conversation_id}/members",
    status_code=201,
    responses=_ERRORS,
    tags=["members"],
)
def add_member(
    conversation_id: ConversationId, body: schemas.MemberCreate, caller: Caller, db: Db
) -> schemas.MemberOut:
    """Add a user to a group (owners)."""
    with db.transaction() as session:
        return member_out(
            store.add_member(
                session=session,
                conversation_id=conversation_id,
                user_id=body.user_id,
                role=body.role,
                actor_id=caller.actor_id,
            )
        )


@router.patch(
    "/conversations/{conversation_id}/members/{user_id}", responses=_ERRORS, tags=["members"]
)
def change_member_role(
    conversation_id: ConversationId,
    user_id: UserId,
    body: schemas.MemberPatch,
    caller: Caller,
    db: Db,
) -> schemas.MemberOut:
    """Make a member an owner or a plain member (owners)."""
    with db.transaction() as session:
        return member_out(
            store.set_member_role(
                session=session,
                conversation_id=conversation_id,
                user_id=user_id,
                role=body.role,
                actor_id=caller.actor_id,
            )
        )


@router.delete(
    "/conversations/{conversation_id}/members/{user_id}",
    status_code=204,
    responses=_ERRORS,
    tags=["members"],
)
def remove_member(
    conversation_id: ConversationId, user_id: UserId, caller: Caller, db: Db
) -> Response:
    """Remove a member (owners), or leave (your own user id)."""
    with db.transaction() as session:
        store.remove_member(
            session=session,
            conversation_id=conversation_id,
            user_id=user_id,
            actor_id=caller.actor_id,
        )
    return Response(status_code=204)


# --- messages ---


@router.get("/conversations/{conversation_id}/messages", responses=_ERRORS, tags=["messages"])
def list_messages(
    conversation_id: ConversationId,
    caller: Caller,
    db: Db,
    before: Annotated[int | None, Query(ge=0, le=schemas.BIGINT_MAX)] = None,
    after: Annotated[int | None, Query(ge=0, le=schemas.BIGINT_MAX)] = None,
    limit: Limit = 50,
) -> schemas.MessagePageOut:
    """A page of messages in seq order: the newest by default, or `before`/`after` a seq."""
    with db.replica_reads() as session:
        page = store.list_messages(
            session=session,
            conversation_id=conversation_id,
            before=before,
            after=after,
            limit=limit,
            actor_id=caller.actor_id,
        )
    return schemas.MessagePageOut(
        messages=[message_out(m) for m in page.messages],
        has_older=page.has_older,
        has_newer=page.has_newer,
    )


_LOCATION = {"description": "The message's URL", "schema": {"type": "string"}}


@router.post(
    "/conversations/{conversation_id}/messages",
    status_code=201,
    responses={
        **_ERRORS,
        201: {"description": "The message, sent", "headers": {"Location": _LOCATION}},
        200: {
            "model": schemas.MessageOut,
            "description": "A retry: the message an earlier send with this key created",
            "headers": {
                "Location": _LOCATION,
                "Idempotent-Replayed": {
                    "description": "Always `true`",
                    "schema": {"type": "string", "enum": ["true"]},
                },
            },
        },
    },
    tags=["messages"],
)
def send_message(
    conversation_id: ConversationId,
    body: schemas.MessageCreate,
    caller: Caller,
    db: Db,
    response: Response,
    idempotency_key: Annotated[
        str | None, Header(min_length=1, max_length=100, description="Makes retries safe.")
    ] = None,
) -> schemas.MessageOut:
    """Send a message. With an Idempotency-Key header (or client_msg_id), a retry
    returns the original message with 200 and `Idempotent-Replayed: true`."""
    user_id = caller.require_user()
    if idempotency_key and body.client_msg_id and idempotency_key != body.client_msg_id:
        raise Invalid("the Idempotency-Key header and client_msg_id differ")
    key = idempotency_key or body.client_msg_id

    def send(session: Session) -> SendResult:
        return store.send_message(
            session=session,
            conversation_id=conversation_id,
            sender_id=user_id,
            body=body.body,
            idempotency_key=key,
            reply_to_seq=body.reply_to_seq,
        )

    if key is None:
        # Without a key a repeat could send twice: a lost connection is a 503,
        # and the client decides.
        with db.transaction() as session:
            result = send(session)
    else:
        # With one, a send whose connection was lost mid-way is run again: if
        # its commit had gone through, the key finds the message (a replay).
        result = db.transaction_retried(send)
    if not result.created:
        response.status_code = status.HTTP_200_OK
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = (
        f"/v1/conversations/{conversation_id}/messages/{result.message.seq}"
    )
    return message_out(result.message)


@router.get("/conversations/{conversation_id}/messages/{seq}", responses=_ERRORS, tags=["messages"])
def get_message(
    conversation_id: ConversationId, seq: MessageSeq, caller: Caller, db: Db
) -> schemas.MessageOut:
    with db.replica_reads() as session:
        return message_out(
            store.get_message(
                session=session,
                conversation_id=conversation_id,
                seq=seq,
                actor_id=caller.actor_id,
            )
        )


@router.patch(
    "/conversations/{conversation_id}/messages/{seq}", responses=_ERRORS, tags=["messages"]
)
def edit_message(
    conversation_id: ConversationId,
    seq: MessageSeq,
    body: schemas.MessagePatch,
    caller: Caller,
    db: Db,
) -> schemas.MessageOut:
    """Edit your own message."""
    user_id = caller.require_user()
    with db.transaction() as session:
        return message_out(
            store.edit_message(
                session=session,
                conversation_id=conversation_id,
                seq=seq,
                body=body.body,
                actor_id=user_id,
            )
        )


@router.delete(
    "/conversations/{conversation_id}/messages/{seq}", responses=_ERRORS, tags=["messages"]
)
def delete_message(
    conversation_id: ConversationId, seq: MessageSeq, caller: Caller, db: Db
) -> schemas.MessageOut:
    """Soft-delete a message (its author or an owner); it can be restored."""
    with db.transaction() as session:
        return message_out(
            store.delete_message(
                session=session,
                conversation_id=conversation_id,
                seq=seq,
                actor_id=caller.actor_id,
            )
        )


@router.post(
    "/conversations/{conversation_id}/messages/{seq}/restore",
    responses=_ERRORS,
    tags=["messages"],
)
def restore_message(
    conversation_id: ConversationId, seq: MessageSeq, caller: Caller, db: Db, settings: AppSettings
) -> schemas.MessageOut:
    """Bring back a deleted message (its author or an owner), within the
    retention window; 409 after it."""
    with db.transaction() as session:
        return message_out(
            store.restore_message(
                session=session,
                conversation_id=conversation_id,
                seq=seq,
                actor_id=caller.actor_id,
                retention_days=settings.retention_days,
            )
        )


@router.get(
    "/conversations/{conversation_id}/messages/{seq}/replies",
    responses=_ERRORS,
    tags=["messages"],
)
def list_replies(
    conversation_id: ConversationId,
    seq: MessageSeq,
    caller: Caller,
    db: Db,
    after: Annotated[int, Query(ge=0, le=schemas.BIGINT_MAX)] = 0,
    limit: Limit = 50,
) -> schemas.ThreadPageOut:
    """A thread: the message and its replies, oldest first; the next page is
    `after=<the last reply's seq>`."""
    with db.replica_reads() as session:
        page = store.list_replies(
            session=session,
            conversation_id=conversation_id,
            seq=seq,
            after=after,
            limit=limit,
            actor_id=caller.actor_id,
        )
    return schemas.ThreadPageOut(
        parent=message_out(page.parent),
        replies=[message_out(m) for m in page.replies],
        has_more=page.has_more,
    )


@router.put(
    "/conversations/{conversation_id}/messages/{seq}/reactions/{emoji}",
    responses=_ERRORS,
    tags=["messages"],
)
def add_reaction(
    conversation_id: ConversationId, seq: MessageSeq, emoji: Emoji, caller: Caller, db: Db
) -> schemas.MessageOut:
    """React with an emoji (one per member, emoji and message: a repeat changes
    nothing). Returns the message with its reactions."""
    user_id = caller.require_user()
    with db.transaction() as session:
        return message_out(
            store.add_reaction(
                session=session,
                conversation_id=conversation_id,
                seq=seq,
                user_id=user_id,
                emoji=emoji,
            )
        )


@router.delete(
    "/conversations/{conversation_id}/messages/{seq}/reactions/{emoji}",
    responses=_ERRORS,
    tags=["messages"],
)
def remove_reaction(
    conversation_id: ConversationId, seq: MessageSeq, emoji: Emoji, caller: Caller, db: Db
) -> schemas.MessageOut:
    """Take back your reaction (removing one that is not there changes nothing).
    Returns the message with its reactions."""
    user_id = caller.require_user()
    with db.transaction() as session:
        return message_out(
            store.remove_reaction(
                session=session,
                conversation_id=conversation_id,
                seq=seq,
                user_id=user_id,
                emoji=emoji,
            )
        )


@router.post("/conversations/{conversation_id}/read", responses=_ERRORS, tags=["messages"])
def mark_read(
    conversation_id: ConversationId, body: schemas.ReadIn, caller: Caller, db: Db
) -> schemas.ReadOut:
    """Move your read marker up to `seq` (it never moves back)."""
    user_id = caller.require_user()
    with db.transaction() as session:
        marker = store.mark_read(
            session=session, conversation_id=conversation_id, user_id=user_id, seq=body.seq
        )
        unread = store.unread_count(
            session=session, conversation_id=conversation_id, user_id=user_id
        )
    return schemas.ReadOut(last_read_seq=marker, unread_count=unread)


@router.get(
    "/conversations/{conversation_id}/changes",
    responses={
        **_ERRORS,
        410: {
            "model": schemas.Problem,
            "description": "Changes after `since` are no longer kept: load the conversation again",
        },
    },
    tags=["live updates"],
)
def list_changes(
    conversation_id: ConversationId,
    caller: Caller,
    db: Db,
    since: Annotated[int, Query(ge=0, le=schemas.BIGINT_MAX)] = 0,
    limit: Limit = 100,
) -> schemas.ChangePageOut:
    """Catch up over plain HTTP: the conversation's changes after change_seq `since`.
    The log keeps CHATDB_CHANGE_RETENTION_DAYS; past that, 410 Gone."""
    with db.replica_reads() as session:
        page = store.changes_since(
            session=session,
            conversation_id=conversation_id,
            since=since,
            limit=limit,
            actor_id=caller.actor_id,
        )
    return schemas.ChangePageOut(
        changes=[change_out(c) for c in page.changes], has_more=page.has_more
    )


# --- search ---


@router.get("/search", responses=_ERRORS, tags=["search"])
@reads_in_one_transaction
def search(
    caller: Caller,
    db: Db,
    cursors: Cursors,
    q: Annotated[
        str, Query(min_length=1, max_length=500, description='Words, "a phrase", -word, or')
    ],
    conversation_id: Annotated[int | None, Query(ge=1, le=schemas.BIGINT_MAX)] = None,
    from_user: Annotated[int | None, Query(ge=1, le=schemas.BIGINT_MAX)] = None,
    before: Annotated[datetime | None, Query(description="Sent before this time")] = None,
    after: Annotated[datetime | None, Query(description="Sent after this time")] = None,
    mentions: Annotated[bool, Query(description="Only messages that @mention you")] = False,
    limit: Limit = 20,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> schemas.SearchPageOut:
    """Messages of your conversations that match `q`, most relevant first (newest
    first among equals), with the matching words marked in `snippet`."""
    after_hit = cursors.parse_search(cursor)
    mentioned = caller.require_user() if mentions else None
    with db.replica_transaction() as session:
        page = store.search_messages(
            session=session,
            q=q,
            actor_id=caller.actor_id,
            conversation_id=conversation_id,
            sender_id=from_user,
            before=before,
            after=after,
            cursor=after_hit,
            limit=limit,
            mentioning=mentioned,
        )
    return schemas.SearchPageOut(
        results=[
            schemas.SearchHitOut(
                message=message_out(hit.message),
                conversation_title=hit.conversation_title,
                snippet=[schemas.SnippetPiece(text=t, match=m) for t, m in hit.snippet],
                rank=hit.rank,
            )
            for hit in page.hits
        ],
        next_cursor=cursors.search(page.next_cursor),
    )


# --- reports (admin) ---


@router.get("/reports/activity", responses=_ERRORS, tags=["reports"])
def activity_report(
    caller: Caller,
    db: Db,
    start: Annotated[date | None, Query(alias="from")] = None,
    end: Annotated[date | None, Query(alias="to")] = None,
    tz: Annotated[str, Query(max_length=64)] = "UTC",
    user_id: Annotated[int | None, Query(ge=1, le=schemas.BIGINT_MAX)] = None,
) -> list[schemas.ActivityRowOut]:
    """Messages per user per day (admin key); default: the last 30 days."""
    caller.require_admin()
    last = end or datetime.now(UTC).date()
    first = start or last - timedelta(days=29)
    with db.replica_reads() as session:
        rows = store.activity(session=session, start=first, end=last, tz=tz, user_id=user_id)
    return [schemas.ActivityRowOut.model_validate(r, from_attributes=True) for r in rows]


@router.get("/reports/inactive", responses=_ERRORS, tags=["reports"])
def inactive_report(
    caller: Caller,
    db: Db,
    cursors: Cursors,
    days: Annotated[int, Query(ge=1, le=36500)] = 30,
    limit: Limit = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> schemas.InactivePageOut:
    """Users with no message in `days` days, never-senders included (admin key)."""
    caller.require_admin()
    after_id = int(cursors.decode("inactive", cursor)) if cursor is not None else 0
    with db.replica_reads() as session:
        page = store.inactive_users(session=session, days=days, after_id=after_id, limit=limit)
    return schemas.InactivePageOut(
        users=[schemas.InactiveUserOut.model_validate(u, from_attributes=True) for u in page.users],
        next_cursor=cursors.encode("inactive", page.next_after_id) if page.next_after_id else None,
    )
