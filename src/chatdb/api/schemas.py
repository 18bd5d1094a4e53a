"""Request and response bodies of the HTTP API."""

from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from chatdb import models

BIGINT_MAX = 2**63 - 1

Id = Annotated[int, Field(ge=1, le=BIGINT_MAX)]
Seq = Annotated[int, Field(ge=0, le=BIGINT_MAX)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- sessions and users ---------------------------------------------------------------


class SessionCreate(Strict):
    username: Annotated[str, Field(min_length=1, max_length=models.USERNAME_MAX)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class SessionOut(BaseModel):
    token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (a scheme name, not a secret)
    user_id: int
    expires_at: datetime


class UserCreate(Strict):
    username: Annotated[str, Field(min_length=1, max_length=models.USERNAME_MAX)]
    email: Annotated[str, Field(min_length=3, max_length=models.EMAIL_MAX)]
    display_name: Annotated[str | None, Field(max_length=models.DISPLAY_NAME_MAX)] = None
    password: Annotated[str | None, Field(min_length=8, max_length=1024)] = None


class UserPatch(Strict):
    username: Annotated[str | None, Field(min_length=1, max_length=models.USERNAME_MAX)] = None
    email: Annotated[str | None, Field(min_length=3, max_length=models.EMAIL_MAX)] = None
    display_name: Annotated[str | None, Field(max_length=models.DISPLAY_NAME_MAX)] = None
    password: Annotated[str | None, Field(min_length=8, max_length=1024)] = None


class UserOut(BaseModel):
    id: int
    username: str
    display_name: str | None
    # Only shown to the user themself and to the operator.
    email: str | None = None
    created_at: datetime


# --- conversations and members ------------------------------------------------------------


class ConversationCreate(Strict):
    kind: Literal["group", "direct"] = "group"
    title: Annotated[str | None, Field(max_length=models.TITLE_MAX)] = None
    # group: the other members; direct: exactly one, the other user.
    member_ids: Annotated[list[Id], Field(max_length=1000)] = []


class ConversationPatch(Strict):
    title: Annotated[str | None, Field(max_length=models.TITLE_MAX)]


class ConversationOut(BaseModel):
    id: int
    kind: str
    title: str | None
    last_seq: int
    last_change_seq: int
    last_activity_at: datetime
    created_at: datetime
    direct_user_ids: list[int] | None


class InboxEntryOut(BaseModel):
    conversation_id: int
    kind: str
    title: str | None
    role: str
    last_seq: int
    last_read_seq: int
    unread_count: int
    # Unread messages that mention the caller (kept on send and read, not counted).
    unread_mention_count: int
    last_activity_at: datetime
    last_message_seq: int | None
    last_message_body: str | None
    last_message_sender_id: int | None
    last_message_sender_name: str | None
    last_message_at: datetime | None
    last_message_deleted: bool


class InboxPageOut(BaseModel):
    entries: list[InboxEntryOut]
    next_cursor: str | None


class MemberCreate(Strict):
    user_id: Id
    role: Literal["owner", "member"] = "member"


class MemberPatch(Strict):
    role: Literal["owner", "member"]


class MemberOut(BaseModel):
    conversation_id: int
    user_id: int
    username: str
    display_name: str | None
    role: str
    last_read_seq: int
    joined_at: datetime


# --- messages ----------------------------------------------------------------------------------


class MessageCreate(Strict):
    body: Annotated[str, Field(min_length=1, max_length=models.BODY_MAX)]
    client_msg_id: Annotated[
        str | None, Field(min_length=1, max_length=models.IDEMPOTENCY_KEY_MAX)
    ] = None
    # Makes the message a reply to this earlier message of the conversation.
    reply_to_seq: Id | None = None


class MessagePatch(Strict):
    body: Annotated[str, Field(min_length=1, max_length=models.BODY_MAX)]


class QuoteOut(BaseModel):
    """The message a reply answers."""

    seq: int
    sender_id: int | None
    sender_name: str
    # The start of its text; null once it is deleted (shown as "deleted message").
    body: str | None
    deleted: bool


class ReactionOut(BaseModel):
    emoji: str
    count: int
    # Whether the caller reacted with it (always false in live updates and the
    # change feed, which every member shares: a reaction change names its user).
    me: bool


class MessageOut(BaseModel):
    conversation_id: int
    seq: int
    sender_id: int | None
    sender_name: str
    # null while the message is deleted
    body: str | None
    created_at: datetime
    edited_at: datetime | None
    deleted_at: datetime | None
    reply_to_seq: int | None = None
    reply_to: QuoteOut | None = None
    reply_count: int = 0
    reactions: list[ReactionOut] = []


class ThreadPageOut(BaseModel):
    """A message and a page of its replies, oldest first."""

    parent: MessageOut
    replies: list[MessageOut]
    # More replies: ask again with after=<the last reply's seq>.
    has_more: bool


class MessagePageOut(BaseModel):
    messages: list[MessageOut]
    has_older: bool
    has_newer: bool


class ReadIn(Strict):
    seq: Seq


class ReadOut(BaseModel):
    last_read_seq: int
    unread_count: int


# --- search ----------------------------------------------------------------------------------


class SnippetPiece(BaseModel):
    text: str
    # True for a word that matched the search.
    match: bool


class SearchHitOut(BaseModel):
    message: MessageOut
    conversation_title: str | None
    # The matching part of the message; show each piece as text, matches highlighted.
    snippet: list[SnippetPiece]
    rank: float


class SearchPageOut(BaseModel):
    results: list[SearchHitOut]
    next_cursor: str | None


# --- changes and reports ---------------------------------------------------------------


class ChangeOut(BaseModel):
    id: int
    conversation_id: int
    change_seq: int
    kind: str
    message_seq: int | None
    user_id: int | None
    actor_id: int | None
    # The emoji of a reaction change (user_id reacted).
    emoji: str | None = None
    created_at: datetime
    message: MessageOut | None


class ChangePageOut(BaseModel):
    changes: list[ChangeOut]
    has_more: bool


class ActivityRowOut(BaseModel):
    user_id: int | None
    username: str | None
    day: date
    message_count: int


class InactiveUserOut(BaseModel):
    id: int
    username: str
    created_at: datetime
    last_message_at: datetime | None


class InactivePageOut(BaseModel):
    users: list[InactiveUserOut]
    next_cursor: str | None


class Problem(BaseModel):
    """An error, as RFC 9457 application/problem+json."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str


class Health(BaseModel):
    status: str
    schema_revision: str | None = None
