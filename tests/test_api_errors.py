"""Errors of the HTTP API: every one is RFC 9457 application/problem+json with a
stable `code`, and no input, however hostile, produces a 500.

The tests share one database (module scope) to stay fast; each leaves alone
what the others rely on (alice's group and its first message), and makes its
own conversation where it needs a known state."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from sqlalchemy.engine import URL

from tests.api_support import Account, Api, api_on_new_database

PROBLEM = "application/problem+json"
JSON = {"content-type": "application/json"}


def assert_problem(response: httpx2.Response, status: int, code: str | None = None) -> None:
    """The response is a problem document with this status (and code)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert {"type", "title", "status", "detail", "code"} <= body.keys(), body
    assert body["status"] == status
    assert body["type"] == "about:blank"
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert isinstance(body["code"], str)
    assert body["code"]
    if code is not None:
        assert body["code"] == code, body


@dataclass
class World:
    """Alice owns a group with one message; bob is not in it."""

    api: Api
    alice: Account
    bob: Account
    conversation: int

    @property
    def messages(self) -> str:
        return f"/v1/conversations/{self.conversation}/messages"

    def url(self, template: str) -> str:
        return template.format(
            c=self.conversation, alice=self.alice.id, bob=self.bob.id, messages=self.messages
        )


@pytest.fixture(scope="module")
def world(server_url: URL, template_name: str) -> Iterator[World]:
    with api_on_new_database(server_url, template_name) as api:
        alice, bob = api.account("alice"), api.account("bob")
        conversation = api.group(alice)
        api.send(alice, conversation, "hello")
        yield World(api, alice, bob, conversation)


def last_seq(world: World, conversation: int) -> int:
    response = world.api.client.get(f"/v1/conversations/{conversation}", headers=world.alice.auth)
    seq: int = response.json()["last_seq"]
    return seq


# --- the shape of every error --------------------------------------------------------------------


def test_every_kind_of_error_is_a_problem_document(world: World) -> None:
    api, alice, bob = world.api, world.alice, world.bob
    client = api.client
    cases: list[tuple[str, httpx2.Response, int, str]] = [
        (
            "bad cursor",
            client.get("/v1/conversations?cursor=x.y", headers=alice.auth),
            400,
            "bad_cursor",
        ),
        ("no token", client.get("/v1/me"), 401, "unauthenticated"),
        (
            "not admin",
            client.get("/v1/reports/inactive", headers=alice.auth),
            403,
            "admin_required",
        ),
        ("not a user", client.get("/v1/me", headers=api.admin), 403, "user_required"),
        (
            "not a member",
            client.patch(f"{world.messages}/1", json={"body": "x"}, headers=bob.auth),
            404,
            "not_found",
        ),
        ("no route", client.get("/v1/nothing-here", headers=alice.auth), 404, "not_found"),
        ("no such user", client.get("/v1/users/424242", headers=alice.auth), 404, "not_found"),
        ("wrong method", client.put("/v1/me", headers=alice.auth), 405, "method_not_allowed"),
        (
            "taken",
            client.post(
                "/v1/users",
                json={"username": "ALICE", "email": "a2@example.org"},
                headers=api.admin,
            ),
            409,
            "conflict",
        ),
        (
            "too large",
            client.post(world.messages, content=b"x" * 70_000, headers={**alice.auth, **JSON}),
            413,
            "too_large",
        ),
        (
            "invalid input",
            client.get("/v1/conversations?limit=0", headers=alice.auth),
            422,
            "invalid_request",
        ),
        (
            "refused by a rule",
            client.post(world.messages, json={"body": "   "}, headers=alice.auth),
            422,
            "invalid",
        ),
    ]
    for label, response, status, code in cases:
        try:
            assert_problem(response, status, code)
        except AssertionError as exc:
            raise AssertionError(f"{label}: {exc}") from exc
    assert client.get("/v1/me").headers["www-authenticate"] == "Bearer"
    wrong_method = client.put("/v1/me", headers=alice.auth)
    assert "GET" in wrong_method.headers["allow"]


# --- NUL bytes, lone surrogates, invalid text ----------------------------------------------------


# (method, path template, raw JSON body, status, code). The JSON escapes reach
# the app as NUL characters and lone surrogates, which PostgreSQL cannot store.
HOSTILE_TEXT = [
    ("POST", "{messages}", rb'{"body": "a\u0000b"}', 422, "invalid"),
    ("POST", "{messages}", rb'{"body": "\ud800"}', 422, "invalid_request"),
    ("POST", "{messages}", rb'{"body": "x\udfff\ud800y"}', 422, "invalid_request"),
    ("POST", "{messages}", rb'{"body": "ok", "client_msg_id": "k\u0000"}', 422, "invalid"),
    ("POST", "{messages}", rb'{"body": "ok", "client_msg_id": "\udc00"}', 422, "invalid_request"),
    ("PATCH", "{messages}/1", rb'{"body": "\u0000"}', 422, "invalid"),
    ("PATCH", "/v1/conversations/{c}", rb'{"title": "t\u0000"}', 422, "invalid"),
    ("PATCH", "/v1/conversations/{c}", rb'{"title": "\ud83d"}', 422, "invalid_request"),
    ("POST", "/v1/conversations", rb'{"title": "\u0000"}', 422, "invalid"),
    ("PATCH", "/v1/users/{alice}", rb'{"display_name": "\u0000"}', 422, "invalid"),
    ("PATCH", "/v1/users/{alice}", rb'{"display_name": "\ud800"}', 422, "invalid_request"),
    ("PATCH", "/v1/users/{alice}", rb'{"password": "long enough\u0000"}', 422, "invalid"),
    ("PATCH", "/v1/users/{alice}", rb'{"email": "a\u0000@example.org"}', 422, "invalid"),
    # Signing in with a username no one can have is a wrong username, not an error.
    (
        "POST",
        "/v1/sessions",
        rb'{"username": "alice\u0000", "password": "whatever1"}',
        401,
        "bad_credentials",
    ),
    (
        "POST",
        "/v1/sessions",
        rb'{"username": "alice", "password": "pass\u0000word"}',
        401,
        "bad_credentials",
    ),
    (
        "POST",
        "/v1/sessions",
        rb'{"username": "\ud800", "password": "whatever1"}',
        422,
        "invalid_request",
    ),
    (
        "POST",
        "/v1/sessions",
        rb'{"username": "alice", "password": "\udfff"}',
        422,
        "invalid_request",
    ),
    # Bytes that are not UTF-8 are not JSON text at all.
    ("POST", "{messages}", b'{"body": "\xff\xfe"}', 400, "http_error"),
    ("POST", "/v1/sessions", b'{"username": "\xc3", "password": "x"}', 400, "http_error"),
]


@pytest.mark.parametrize(
    ("method", "template", "body", "status", "code"),
    HOSTILE_TEXT,
    ids=[f"{m} {t} {b[:40]!r}" for m, t, b, *_ in HOSTILE_TEXT],
)
def test_text_postgresql_cannot_store_is_refused_without_a_500(
    world: World, method: str, template: str, body: bytes, status: int, code: str
) -> None:
    headers = {**world.alice.auth, **JSON}
    response = world.api.client.request(method, world.url(template), content=body, headers=headers)
    assert_problem(response, status, code)


def test_hostile_text_in_the_admin_routes_is_refused(world: World) -> None:
    client, admin = world.api.client, world.api.admin
    created = client.post(
        "/v1/users",
        content=rb'{"username": "eve\u0000", "email": "eve@example.org"}',
        headers={**admin, **JSON},
    )
    assert_problem(created, 422, "invalid")
    password = client.post(
        "/v1/users",
        content=rb'{"username": "eve", "email": "eve@example.org", "password": "\u0000secret!"}',
        headers={**admin, **JSON},
    )
    assert_problem(password, 422, "invalid")
    # Nothing was half-created by the refused request.
    assert client.get("/v1/users?username=eve", headers=world.alice.auth).json() == []
    for tz in ("a%00b", "%ED%B3%BF", "%FF", "..%2F..%2Fetc%2Fpasswd", "Mars/Base"):
        response = client.get(f"/v1/reports/activity?tz={tz}", headers=admin)
        assert_problem(response, 422, "invalid")


# --- bodies too large ----------------------------------------------------------------------------


def test_a_10_mb_body_is_413(world: World) -> None:
    response = world.api.client.post(
        world.messages,
        content=b'{"body": "' + b"x" * 10_000_000 + b'"}',
        headers={**world.alice.auth, **JSON},
    )
    assert_problem(response, 413, "too_large")
    before = last_seq(world, world.conversation)
    assert world.api.send(world.alice, world.conversation, "still fine")["seq"] == before + 1


def _streamed(total: int, chunk: int = 8192) -> Iterator[bytes]:
    yield b'{"body": "'
    sent = 0
    while sent < total:
        yield b"x" * chunk
        sent += chunk
    yield b'"}'


def test_a_streamed_body_without_content_length_is_counted(world: World) -> None:
    """Transfer-Encoding: chunked, no Content-Length: the limit is enforced on
    the bytes as they arrive, not on what the client declares."""
    headers = {**world.alice.auth, **JSON}
    over = world.api.client.post(world.messages, content=_streamed(200_000), headers=headers)
    assert "content-length" not in over.request.headers
    assert over.request.headers["transfer-encoding"] == "chunked"
    assert_problem(over, 413, "too_large")

    # Under the limit a streamed body is accepted (4000 characters is the message limit).
    small = world.api.client.post(world.messages, content=_streamed(3000, 1000), headers=headers)
    assert "content-length" not in small.request.headers
    assert small.status_code == 201, small.text
    assert len(small.json()["body"]) == 3000


# --- numbers out of range, in paths, queries and bodies ------------------------------------------


OUT_OF_RANGE = [
    ("GET", "/v1/conversations/-1", None),
    ("GET", "/v1/conversations/0", None),
    ("GET", "/v1/conversations/99999999999999999999999", None),
    ("GET", "/v1/conversations/9223372036854775808", None),  # bigint max + 1
    ("GET", "/v1/conversations/1.5", None),
    ("GET", "/v1/conversations/1e3", None),
    ("GET", "/v1/conversations/%00", None),
    ("GET", "/v1/conversations/NaN", None),
    ("GET", "/v1/users/-1", None),
    ("DELETE", "/v1/users/99999999999999999999999", None),
    ("GET", "{messages}/-1", None),
    ("GET", "{messages}/18446744073709551616", None),
    ("GET", "{messages}?limit=-5", None),
    ("GET", "{messages}?limit=201", None),
    ("GET", "{messages}?limit=99999999999999999999", None),
    ("GET", "{messages}?before=1e400", None),
    ("GET", "{messages}?before=-1", None),
    ("GET", "{messages}?after=9223372036854775808", None),
    ("GET", "/v1/conversations/{c}/members?after=-1", None),
    ("GET", "/v1/conversations/{c}/changes?since=-1", None),
    ("GET", "/v1/conversations?limit=1e2", None),
    ("GET", "/v1/reports/inactive?days=0", None),
    ("GET", "/v1/reports/inactive?days=36501", None),
    ("GET", "/v1/reports/activity?user_id=0", None),
    ("POST", "/v1/conversations/{c}/read", {"seq": -1}),
    ("POST", "/v1/conversations/{c}/read", {"seq": 2**63}),
    ("POST", "/v1/conversations/{c}/read", {"seq": 1.5}),
    ("POST", "/v1/conversations/{c}/members", {"user_id": 0}),
    ("POST", "/v1/conversations/{c}/members", {"user_id": 2**64}),
    ("POST", "/v1/conversations", {"member_ids": [-3]}),
    ("POST", "/v1/conversations", {"kind": "direct", "member_ids": [2**63]}),
]


@pytest.mark.parametrize(
    ("method", "template", "body"), OUT_OF_RANGE, ids=[f"{m} {t} {b}" for m, t, b in OUT_OF_RANGE]
)
def test_numbers_out_of_range_are_422(world: World, method: str, template: str, body: Any) -> None:
    headers = world.api.admin if "/reports/" in template else world.alice.auth
    response = world.api.client.request(method, world.url(template), json=body, headers=headers)
    assert_problem(response, 422, "invalid_request")


def test_numbers_at_the_edges_of_their_range(world: World) -> None:
    client, auth = world.api.client, world.alice.auth
    conversation = world.api.group(world.alice, world.bob)
    world.api.send(world.alice, conversation, "one")
    messages = f"/v1/conversations/{conversation}/messages"
    biggest = 2**63 - 1
    # The largest id is valid and absent; the largest seq is valid.
    assert_problem(client.get(f"/v1/conversations/{biggest}", headers=auth), 404, "not_found")
    assert_problem(client.get(f"{messages}/{biggest}", headers=auth), 404, "not_found")
    page = client.get(messages, params={"before": biggest}, headers=auth)
    assert (page.status_code, len(page.json()["messages"])) == (200, 1)
    read = client.post(
        f"/v1/conversations/{conversation}/read", json={"seq": biggest}, headers=world.bob.auth
    )
    assert read.json() == {"last_read_seq": 1, "unread_count": 0}
    # JSON numbers PostgreSQL or Python cannot take: infinity, and a 5000-digit integer.
    for raw in (b'{"seq": 1e400}', b'{"seq": NaN}', b'{"seq": ' + b"9" * 5000 + b"}"):
        response = client.post(
            f"/v1/conversations/{world.conversation}/read", content=raw, headers={**auth, **JSON}
        )
        assert response.status_code in (400, 422), response.text
        assert_problem(response, response.status_code)
    # Dates past the calendar's ends.
    for params in (
        {"from": "9999-12-31", "to": "9999-12-31"},
        {"from": "0001-01-01", "to": "0001-01-01", "tz": "Asia/Tokyo"},
    ):
        response = client.get("/v1/reports/activity", params=params, headers=world.api.admin)
        assert_problem(response, 422, "invalid")
    for params in ({"from": "2024-02-30"}, {"to": "20240-01-01"}, {"from": "yesterday"}):
        response = client.get("/v1/reports/activity", params=params, headers=world.api.admin)
        assert_problem(response, 422, "invalid_request")


# --- malformed bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b'{"body": ', b"", b"null", b"[]", b'"hello"', b"42", b'{"body": "x",}', b"{'body': 'x'}"],
)
def test_broken_or_wrong_json_is_422(world: World, raw: bytes) -> None:
    response = world.api.client.post(
        world.messages, content=raw, headers={**world.alice.auth, **JSON}
    )
    assert_problem(response, 422, "invalid_request")


def test_deeply_nested_json_is_refused(world: World) -> None:
    raw = b'{"seq": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    response = world.api.client.post(
        f"/v1/conversations/{world.conversation}/read",
        content=raw,
        headers={**world.alice.auth, **JSON},
    )
    assert_problem(response, 400)


@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        ("text/plain", b'{"body": "x"}'),
        ("application/x-www-form-urlencoded", b"body=x"),
        (
            "multipart/form-data; boundary=zz",
            b'--zz\r\nContent-Disposition: form-data; name="body"\r\n\r\nx\r\n--zz--\r\n',
        ),
        ("application/xml", b"<body>x</body>"),
        (None, b'{"body": "x"}'),
    ],
)
def test_a_body_that_is_not_json_is_415(world: World, content_type: str | None, raw: bytes) -> None:
    headers = dict(world.alice.auth)
    if content_type is not None:
        headers["content-type"] = content_type
    before = last_seq(world, world.conversation)
    response = world.api.client.post(world.messages, content=raw, headers=headers)
    assert_problem(response, 415, "unsupported_media_type")
    assert last_seq(world, world.conversation) == before


def test_json_with_parameters_or_a_json_suffix_is_json(world: World) -> None:
    conversation = world.api.group(world.alice)
    for n, content_type in enumerate(
        ("application/json; charset=utf-8", "Application/JSON", "application/vnd.chat+json")
    ):
        response = world.api.client.post(
            f"/v1/conversations/{conversation}/messages",
            content=f'{{"body": "typed {n}"}}'.encode(),
            headers={**world.alice.auth, "content-type": content_type},
        )
        assert response.status_code == 201, (content_type, response.text)
    assert last_seq(world, conversation) == 3


def test_a_wrong_method_lists_every_method_of_the_path(world: World) -> None:
    """405's Allow names what the path serves (Starlette names the first
    route's methods only: GET here, without POST)."""
    client, auth = world.api.client, world.alice.auth
    cases = {
        world.messages: {"GET", "POST"},
        f"{world.messages}/1": {"GET", "PATCH", "DELETE"},
        "/v1/me": {"GET"},
    }
    for path, methods in cases.items():
        response = client.put(path, headers=auth)
        assert_problem(response, 405, "method_not_allowed")
        assert set(response.headers["allow"].split(", ")) == methods, path


UNKNOWN_FIELDS = [
    ("POST", "/v1/sessions", {"username": "alice", "password": "x" * 10, "remember": True}),
    ("POST", "/v1/users", {"username": "eve", "email": "eve@example.org", "is_admin": True}),
    ("PATCH", "/v1/users/{alice}", {"display_name": "A", "id": 99}),
    ("POST", "/v1/conversations", {"title": "t", "owner_id": 1}),
    ("PATCH", "/v1/conversations/{c}", {"title": "t", "kind": "direct"}),
    ("POST", "/v1/conversations/{c}/members", {"user_id": 2, "admin": True}),
    ("PATCH", "/v1/conversations/{c}/members/{alice}", {"role": "owner", "x": 1}),
    ("POST", "{messages}", {"body": "hi", "sender_id": 2}),
    ("POST", "{messages}", {"body": "hi", "seq": 7}),
    ("PATCH", "{messages}/1", {"body": "hi", "deleted_at": None}),
    ("POST", "/v1/conversations/{c}/read", {"seq": 1, "user_id": 2}),
]


@pytest.mark.parametrize(
    ("method", "template", "body"),
    UNKNOWN_FIELDS,
    ids=[f"{m} {t} {sorted(b)}" for m, t, b in UNKNOWN_FIELDS],
)
def test_unknown_fields_are_422(world: World, method: str, template: str, body: Any) -> None:
    headers = world.api.admin if template == "/v1/users" else world.alice.auth
    response = world.api.client.request(method, world.url(template), json=body, headers=headers)
    assert_problem(response, 422, "invalid_request")
    [extra] = [e for e in response.json()["errors"] if e["msg"] == "Extra inputs are not permitted"]
    assert extra["loc"][0] == "body"


def test_wrong_enum_values_and_types_are_422(world: World) -> None:
    client, auth = world.api.client, world.alice.auth
    for method, template, body in (
        ("POST", "/v1/conversations", {"kind": "channel"}),
        ("POST", "/v1/conversations/{c}/members", {"user_id": world.bob.id, "role": "admin"}),
        ("PATCH", "/v1/conversations/{c}/members/{alice}", {"role": None}),
        ("POST", "{messages}", {"body": ["a"]}),
        ("POST", "{messages}", {"body": "x" * 4001}),
        ("POST", "{messages}", {"body": ""}),
        ("PATCH", "/v1/conversations/{c}", {}),
    ):
        response = client.request(method, world.url(template), json=body, headers=auth)
        assert_problem(response, 422, "invalid_request")


# --- authentication ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        b"",
        b"Bearer",
        b"Bearer ",
        b"Basic YWxpY2U6cGFzcw==",
        b"Bearer garbage",
        b"Bearer " + b"A" * 43,
        b"Bearer " + b"a" * 513,
        b"Bearer " + b"a" * 8000,
        b"Bearer \xe9\xff\x80",
        b"bearer nonsense",
    ],
    ids=lambda a: "none" if a is None else repr(a[:20]) + f"[{len(a)}]",
)
def test_missing_or_bad_credentials_are_401_with_a_challenge(
    world: World, authorization: bytes | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, template in (("GET", "/v1/me"), ("POST", "{messages}")):
        response = world.api.client.request(
            method, world.url(template), json={"body": "x"}, headers=headers
        )
        assert_problem(response, 401, "unauthenticated")
        assert response.headers["www-authenticate"] == "Bearer"


def test_a_token_is_not_accepted_in_other_places(world: World) -> None:
    client, token = world.api.client, world.alice.token
    assert_problem(client.get(f"/v1/me?access_token={token}"), 401, "unauthenticated")
    assert_problem(
        client.get("/v1/me", headers={"Cookie": f"token={token}"}), 401, "unauthenticated"
    )
    assert_problem(client.get("/v1/me", headers={"X-Token": token}), 401, "unauthenticated")
    assert client.get("/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_bad_idempotency_keys_are_422(world: World) -> None:
    client, auth = world.api.client, world.alice.auth
    for key in ("", "k" * 101):
        response = client.post(
            world.messages, json={"body": "x"}, headers={**auth, "Idempotency-Key": key}
        )
        assert_problem(response, 422, "invalid_request")
    # A header is latin-1 on the wire; any such key is just text.
    odd = client.post(
        world.messages, json={"body": "x"}, headers={**auth, "Idempotency-Key": b"\xe9\xff"}
    )
    assert odd.status_code == 201, odd.text


def test_an_over_long_cursor_or_time_zone_is_422(world: World) -> None:
    client = world.api.client
    cursor = client.get("/v1/conversations", params={"cursor": "c" * 501}, headers=world.alice.auth)
    assert_problem(cursor, 422, "invalid_request")
    tz = client.get("/v1/reports/activity", params={"tz": "Z" * 65}, headers=world.api.admin)
    assert_problem(tz, 422, "invalid_request")
