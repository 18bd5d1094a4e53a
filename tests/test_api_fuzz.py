"""Schemathesis against the app's own OpenAPI document: generated requests,
valid and invalid, to every operation. No response may be a 5xx, and every
response must match the document (status code, content type, headers, body).

Each operation starts from the same data: a database cloned from a seeded
template, with a few users, group and direct conversations with messages, so
generated ids often name rows that exist. Requests are made as a signed-in
user (the owner of every conversation), or with the admin key for the admin
routes.
"""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from chatdb import store
from chatdb.api.app import create_app
from chatdb.db import make_engine, session_factory
from tests.api_support import ADMIN_KEY, PASSWORD, api_settings
from tests.conftest import TEST_SETTINGS, create_database, drop_database

# Generated examples per operation (about 30 operations), on top of the
# boundary cases schemathesis derives from the schema (its "coverage" phase).
# The long run (README, Reliability) raises it: CHATDB_FUZZ_EXAMPLES=150.
MAX_EXAMPLES = int(os.environ.get("CHATDB_FUZZ_EXAMPLES", "40"))

# An endless stream; tested through a real server in tests/test_events.py.
EXCLUDED = {("GET", "/v1/events")}
# Run with the admin key: the admin-only operations, and changing users (a
# user may change only themself, and generated ids rarely hit the fuzzing
# user's). Everything else runs as the user.
ADMIN_OPERATIONS = {
    ("GET", "/v1/reports/activity"),
    ("GET", "/v1/reports/inactive"),
    ("POST", "/v1/users"),
    ("PATCH", "/v1/users/{user_id}"),
    ("DELETE", "/v1/users/{user_id}"),
}
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
]


class _App:
    """The app under test, for schemathesis to call.

    Pytest collects one test per operation from the schema, so the schema is
    read at import, from an app that never connects; each test then binds the
    app on its own database. The lifespan (the live-update reader) is not run:
    only /v1/events needs it, and that is excluded."""

    target: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert self.target is not None, "the fuzz fixture binds the app"
        await self.target(scope, receive, send)


APP = _App()
_unconnected = create_app(create_engine(URL.create("postgresql+psycopg")), api_settings())
schema = schemathesis.openapi.from_dict(_unconnected.openapi())
schema.app = APP
schema = schema.exclude(
    func=lambda ctx: (ctx.operation.method.upper(), ctx.operation.path) in EXCLUDED
)


@dataclass
class Seeded:
    database: str
    user_id: int
    username: str
    token: str


def _seed(url: URL) -> tuple[int, str]:
    """Users, conversations and messages for generated ids to find. The
    fuzzing user's id is far from the others, so a generated DELETE
    /v1/users/{id} does not remove the account the requests are made with."""
    engine = make_engine(url, TEST_SETTINGS)
    try:
        with session_factory(engine).begin() as session:
            friends = [
                store.create_user(session=session, username=f"friend{i}", email=f"f{i}@example.org")
                for i in range(4)
            ]
            session.execute(text("ALTER TABLE users ALTER COLUMN id RESTART WITH 1000000000"))
            me = store.create_user(session=session, username="fuzzer", email="fuzzer@example.org")
            store.set_password(session=session, user_id=me.id, password=PASSWORD)
            conversations = [
                (
                    store.create_group(
                        session=session,
                        creator_id=me.id,
                        title=f"group {i}",
                        member_ids=[f.id for f in friends],
                    ),
                    friends[i],
                )
                for i in range(3)
            ] + [
                (
                    store.get_or_create_direct(session=session, user_id=me.id, other_user_id=f.id)[
                        0
                    ],
                    f,
                )
                for f in friends[:3]
            ]
            for conversation, other in conversations:
                for i in range(6):
                    store.send_message(
                        session=session,
                        conversation_id=conversation.id,
                        sender_id=me.id if i % 2 else other.id,
                        body=f"message {i}",
                    )
            store.delete_message(session=session, conversation_id=conversations[0][0].id, seq=2)
            signed_in = store.sign_in(
                session=session, username="fuzzer", password=PASSWORD, lifetime=timedelta(days=1)
            )
        assert signed_in is not None
        return me.id, signed_in[0]
    finally:
        engine.dispose()


# Responses by status class over the whole run, reported at its end.
RESPONSES: Counter[str] = Counter()


@pytest.fixture(scope="module")
def seeded(server_url: URL, template_name: str, pytestconfig: pytest.Config) -> Iterator[Seeded]:
    name = f"chatdb_fs_{uuid.uuid4().hex[:10]}"
    user_id, token = _seed(create_database(server_url, name, template=template_name))
    try:
        yield Seeded(name, user_id, "fuzzer", token)
    finally:
        asgi.shutdown_lifespans()
        drop_database(server_url, name)
        reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and RESPONSES:
            reporter.write_line(
                f"schemathesis: {sum(RESPONSES.values())} generated requests "
                f"({MAX_EXAMPLES} examples per operation), responses by class "
                f"{dict(sorted(RESPONSES.items()))}, 5xx {RESPONSES['5xx']}"
            )


@dataclass
class Fuzz:
    url: URL
    seeded: Seeded

    def headers_for(self, method: str, path: str) -> dict[str, str]:
        if (method, path) == ("DELETE", "/v1/sessions/current"):
            # Revoke a token of its own, not the one the other requests use.
            token = self.fresh_token()
        elif (method, path) in ADMIN_OPERATIONS:
            token = ADMIN_KEY
        else:
            token = self.seeded.token
        return {"Authorization": f"Bearer {token}"}

    def fresh_token(self) -> str:
        engine = make_engine(self.url, TEST_SETTINGS)
        try:
            with session_factory(engine).begin() as session:
                signed_in = store.sign_in(
                    session=session,
                    username=self.seeded.username,
                    password=PASSWORD,
                    lifetime=timedelta(days=1),
                )
        finally:
            engine.dispose()
        assert signed_in is not None
        return signed_in[0]


@pytest.fixture
def fuzz(server_url: URL, seeded: Seeded) -> Iterator[Fuzz]:
    """The app on a copy of the seeded database, for one operation."""
    name = f"chatdb_f_{uuid.uuid4().hex[:12]}"
    url = create_database(server_url, name, template=seeded.database)
    engine = make_engine(url, TEST_SETTINGS)
    APP.target = create_app(engine, api_settings())
    try:
        yield Fuzz(url, seeded)
    finally:
        APP.target = None
        engine.dispose()
        drop_database(server_url, name)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
    derandomize=True,
)
def test_the_api_answers_every_generated_request_as_documented(
    case: schemathesis.Case, fuzz: Fuzz
) -> None:
    headers = fuzz.headers_for(case.method.upper(), case.path)
    response = case.call(headers=headers)
    RESPONSES[f"{response.status_code // 100}xx"] += 1
    case.validate_response(response, checks=CHECKS)
