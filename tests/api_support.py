"""Fixtures and helpers for tests of the HTTP API: the real app on a real database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from chatdb.api.app import create_app
from chatdb.config import Settings
from chatdb.db import make_engine

ADMIN_KEY = "test-admin-key-0123456789"
PASSWORD = "correct horse battery"


def api_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": None,
        "admin_key": ADMIN_KEY,
        "sse_poll_seconds": 0.2,
        "sse_keepalive_seconds": 1.0,
        **overrides,
    }
    return Settings(**values)


@dataclass
class Account:
    id: int
    username: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Api:
    """A TestClient with shortcuts for making accounts."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.admin = {"Authorization": f"Bearer {ADMIN_KEY}"}

    def account(self, username: str) -> Account:
        created = self.client.post(
            "/v1/users",
            json={"username": username, "email": f"{username}@example.org", "password": PASSWORD},
            headers=self.admin,
        )
        assert created.status_code == 201, created.text
        signed_in = self.client.post(
            "/v1/sessions", json={"username": username, "password": PASSWORD}
        )
        assert signed_in.status_code == 201, signed_in.text
        return Account(created.json()["id"], username, signed_in.json()["token"])

    def group(self, owner: Account, *members: Account, title: str = "group") -> int:
        response = self.client.post(
            "/v1/conversations",
            json={"kind": "group", "title": title, "member_ids": [m.id for m in members]},
            headers=owner.auth,
        )
        assert response.status_code == 201, response.text
        conversation_id: int = response.json()["id"]
        return conversation_id

    def send(self, who: Account, conversation_id: int, body: str, **headers: str) -> Any:
        response = self.client.post(
            f"/v1/conversations/{conversation_id}/messages",
            json={"body": body},
            headers={**who.auth, **headers},
        )
        assert response.status_code in (200, 201), response.text
        return response.json()


@pytest.fixture
def api(fresh_engine: Engine) -> Iterator[Api]:
    """The app on a fresh database, its lifespan (change reader) running."""
    app = create_app(fresh_engine, api_settings())
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client)


@contextmanager
def api_on_new_database(server_url: URL, template_name: str) -> Iterator[Api]:
    """The app (lifespan running) on a database of its own, for a module of
    tests that share it: each test must leave it usable for the others."""
    from tests.conftest import TEST_SETTINGS, create_database, drop_database

    name = f"chatdb_m_{uuid.uuid4().hex[:12]}"
    engine = make_engine(create_database(server_url, name, template=template_name), TEST_SETTINGS)
    try:
        with TestClient(
            create_app(engine, api_settings()), raise_server_exceptions=False
        ) as client:
            yield Api(client)
    finally:
        engine.dispose()
        drop_database(server_url, name)
