"""Bad input, as properties: whatever text arrives, the store either refuses it
with a clear Invalid (a 422 at the API) or stores it and gives it back exactly,
code point for code point and byte for byte.

PostgreSQL text cannot hold NUL, and UTF-8 cannot encode a lone surrogate (a
JSON body can carry one as "\\ud800"); both are refused before any SQL runs.
Text that looks like SQL is data like any other: stored verbatim, and no table
is harmed. (No SQL in src/ is built by string formatting: ruff's S608 is on,
through the S rule set in pyproject.toml.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.orm import Session

from chatdb import models, store
from chatdb.errors import Invalid
from tests.api_support import Api
from tests.factories import make_group, make_user

T = TypeVar("T")

PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Every code point, surrogates and NUL included (hypothesis leaves Cs out by default).
ANY_CHARACTER = st.characters(codec=None, exclude_categories=())
ANY_TEXT = st.text(ANY_CHARACTER, max_size=60) | st.text(
    ANY_CHARACTER, min_size=3990, max_size=4010
)

SQL_LOOKING = [
    "'; DROP TABLE messages; --",
    "Robert'); DROP TABLE users;--",
    "1 OR 1=1",
    "' OR ''='",
    "$$; DELETE FROM conversations; $$",
    "E'\\\\x00'",
    "%s %(body)s {0} :body $1",
    "\\'; SELECT pg_sleep(10); --",
    "/* */ UNION SELECT password_hash FROM users --",
    "COPY users TO PROGRAM 'id'",
]


def _expected_refusal(value: str, max_length: int) -> str | None:
    """What must be refused, and a word the error must contain."""
    if "\x00" in value:
        return "NUL"
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        return "surrogate"
    if len(value) > max_length:
        return str(max_length)
    if not value.strip():
        return "empty"
    return None


def _attempt(call: Callable[[], T]) -> tuple[T | None, Invalid | None]:
    """The result, or the Invalid the call raised (in a savepoint of its own,
    so a refusal leaves the test's transaction usable)."""
    try:
        return call(), None
    except Invalid as exc:
        return None, exc


def _stored_bytes(session: Session, conversation_id: int, seq: int) -> bytes:
    value: bytes = session.execute(
        text(
            "SELECT convert_to(body, 'UTF8') FROM messages WHERE conversation_id = :c AND seq = :s"
        ),
        {"c": conversation_id, "s": seq},
    ).scalar_one()
    return value


@PROPERTY_SETTINGS
@given(body=ANY_TEXT)
@example(body="\x00")
@example(body="a\x00b")
@example(body="\ud800")
@example(body="ok \udfff")
@example(body="😀" * 4000)
@example(body="e\u0301")  # a combining accent: stored as sent, not normalised
@example(body="\u202e\u2066 bidi \ufeff zero-width \u200b")
@example(body=" \t\r\n")
def test_any_message_text_is_refused_clearly_or_stored_exactly(session: Session, body: str) -> None:
    owner = make_user(session)
    group = make_group(session, owner)
    refusal = _expected_refusal(body, models.BODY_MAX)
    with session.begin_nested():
        sent, error = _attempt(
            lambda: store.send_message(
                session=session, conversation_id=group.id, sender_id=owner.id, body=body
            )
        )
    if error is not None:
        assert refusal is not None, f"refused {body!r}: {error}"
        assert refusal in str(error), str(error)
        return
    assert refusal is None, f"stored {body!r}, which should be refused ({refusal})"
    assert sent is not None
    read = store.get_message(session=session, conversation_id=group.id, seq=sent.message.seq)
    assert read.body == body
    assert _stored_bytes(session, group.id, sent.message.seq) == body.encode("utf-8")


@PROPERTY_SETTINGS
@given(title=st.text(ANY_CHARACTER, max_size=210), key=st.text(ANY_CHARACTER, max_size=110))
def test_titles_and_idempotency_keys_are_refused_clearly_or_stored_exactly(
    session: Session, title: str, key: str
) -> None:
    owner = make_user(session)
    # Titles are trimmed (a title of spaces is none), keys are not.
    expected_title = title.strip()
    with session.begin_nested():
        group, error = _attempt(lambda: make_group(session, owner, title=title))
    if error is not None:
        assert _expected_refusal(expected_title, models.TITLE_MAX) is not None, str(error)
        return
    assert _expected_refusal(expected_title, models.TITLE_MAX) is None
    assert group is not None
    stored = store.get_conversation(session=session, conversation_id=group.id).title
    assert stored == expected_title
    with session.begin_nested():
        sent, error = _attempt(
            lambda: store.send_message(
                session=session,
                conversation_id=group.id,
                sender_id=owner.id,
                body="hello",
                idempotency_key=key,
            )
        )
    if error is not None:
        assert _expected_refusal(key, models.IDEMPOTENCY_KEY_MAX) is not None, str(error)
        return
    assert _expected_refusal(key, models.IDEMPOTENCY_KEY_MAX) is None
    assert sent is not None
    # The key finds the message again: stored exactly.
    again = store.send_message(
        session=session,
        conversation_id=group.id,
        sender_id=owner.id,
        body="hello",
        idempotency_key=key,
    )
    assert not again.created
    assert again.message.seq == sent.message.seq


def test_limits_are_enforced_with_clear_errors(session: Session) -> None:
    owner = make_user(session)
    group = make_group(session, owner)
    at_limit = "x" * models.BODY_MAX
    assert (
        store.send_message(
            session=session, conversation_id=group.id, sender_id=owner.id, body=at_limit
        ).message.body
        == at_limit
    )
    cases = [
        (
            lambda: store.send_message(
                session=session, conversation_id=group.id, sender_id=owner.id, body=at_limit + "x"
            ),
            "at most 4000 characters",
        ),
        (
            lambda: store.send_message(
                session=session,
                conversation_id=group.id,
                sender_id=owner.id,
                body="hi",
                idempotency_key="k" * 101,
            ),
            "at most 100 characters",
        ),
        (lambda: make_group(session, owner, title="t" * 201), "at most 200 characters"),
        (
            lambda: store.list_messages(session=session, conversation_id=group.id, limit=201),
            "between 1 and 200",
        ),
        (
            lambda: store.list_messages(session=session, conversation_id=group.id, limit=0),
            "between 1 and 200",
        ),
        (
            lambda: store.get_message(session=session, conversation_id=2**63, seq=1),
            "positive integer",
        ),
    ]
    for call, words in cases:
        with session.begin_nested():
            _, error = _attempt(call)
        assert error is not None, f"not refused; expected {words!r}"
        assert words in str(error), str(error)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    fragment=st.sampled_from(SQL_LOOKING),
    # No control or space characters around it: titles and names are trimmed.
    around=st.text(
        st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp")),
        max_size=10,
    ),
)
def test_text_that_looks_like_sql_is_stored_verbatim(
    session: Session, fragment: str, around: str
) -> None:
    value = f"{around}{fragment}{around}"  # at most 60 characters: within every limit
    owner = make_user(session, display_name=value)
    group = make_group(session, owner, title=value)
    sent = store.send_message(
        session=session, conversation_id=group.id, sender_id=owner.id, body=value
    )
    read = store.get_message(session=session, conversation_id=group.id, seq=sent.message.seq)
    assert read.body == value
    assert store.get_conversation(session=session, conversation_id=group.id).title == value
    assert store.get_user(session=session, user_id=owner.id).display_name == value
    assert store.list_messages(session=session, conversation_id=group.id).messages[0].body == value
    # Every table is still there and still answers.
    for table in ("users", "conversations", "conversation_members", "messages", "changes"):
        session.execute(text(f"SELECT count(*) FROM {table}"))  # noqa: S608  # fixed names


def test_the_api_answers_422_for_nul_and_lone_surrogates(api: Api) -> None:
    """Through HTTP, as JSON escapes: a clear 422 problem, nothing stored."""
    alice, bob = api.account("alice"), api.account("bob")
    group = api.group(alice, bob)
    path = f"/v1/conversations/{group}/messages"
    for raw in ('"a\\u0000b"', '"\\ud800"', '"x \\udfff y"', '"\\udc00\\ud800"'):
        response = api.client.post(
            path,
            content=f'{{"body": {raw}}}'.encode(),
            headers={**alice.auth, "content-type": "application/json"},
        )
        assert response.status_code == 422, (raw, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] in ("invalid", "invalid_request")
        renamed = api.client.patch(
            f"/v1/conversations/{group}",
            content=f'{{"title": {raw}}}'.encode(),
            headers={**alice.auth, "content-type": "application/json"},
        )
        assert renamed.status_code == 422, (raw, renamed.text)
    page = api.client.get(path, headers=alice.auth).json()
    assert page["messages"] == []
    # A pair of surrogates is one character, not an error.
    paired = api.client.post(
        path,
        content=b'{"body": "\\ud83d\\ude00"}',
        headers={**alice.auth, "content-type": "application/json"},
    )
    assert paired.status_code == 201
    assert paired.json()["body"] == "😀"
    assert json.loads(paired.text)["body"].encode("utf-8") == "😀".encode()
