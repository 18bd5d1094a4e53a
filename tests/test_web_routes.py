"""The routes the web client adds: the demo sign-in hint and finding a user by
username. (The client itself is tested in a browser: tests/test_web.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

import chatdb
from chatdb.api.app import create_app
from chatdb.demo import DEMO_PASSWORD, DEMO_USERS
from tests.api_support import Api, api_settings


@pytest.fixture
def api(fresh_engine: Engine) -> Api:
    """The app without its lifespan: these routes need no live-update reader,
    and an app stopped right after it started can leave a pooled connection
    checked out (the change reader's read in flight), which fails the run."""
    return Api(TestClient(create_app(fresh_engine, api_settings()), raise_server_exceptions=False))


def test_demo_users_are_listed_only_when_serving_demo_data(fresh_engine: Engine) -> None:
    # Not entered: these routes need no lifespan (no live-update reader).
    plain = TestClient(create_app(fresh_engine, api_settings()))
    response = plain.get("/v1/demo")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "not_found"

    demo = TestClient(create_app(fresh_engine, api_settings(demo=True)))
    response = demo.get("/v1/demo")
    assert response.status_code == 200
    assert response.json() == {
        "users": [{"username": u, "display_name": d} for u, d in DEMO_USERS],
        "password": DEMO_PASSWORD,
    }


def test_find_a_user_by_username(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")

    found = api.client.get("/v1/users", params={"username": "BOB"}, headers=alice.auth)
    assert found.status_code == 200
    assert [(u["id"], u["username"], u["email"]) for u in found.json()] == [
        (bob.id, "bob", None)  # someone else's email stays private
    ]
    mine = api.client.get("/v1/users", params={"username": "alice"}, headers=alice.auth)
    assert mine.json()[0]["email"] == "alice@example.org"

    missing = api.client.get("/v1/users", params={"username": "nobody"}, headers=alice.auth)
    assert (missing.status_code, missing.json()) == (200, [])


@pytest.mark.parametrize(
    "query",
    ["a%20b", "x%00y", "%3Cimg%3E", "%C3%A9", "alice%0A", "%ED%A0%80", "%FF"],
)
def test_a_username_no_account_can_have_finds_no_one(api: Api, query: str) -> None:
    alice = api.account("alice")
    response = api.client.get(f"/v1/users?username={query}", headers=alice.auth)
    assert (response.status_code, response.json()) == (200, [])


@pytest.mark.parametrize("username", ["", "a" * 51])
def test_an_empty_or_too_long_username_is_422(api: Api, username: str) -> None:
    alice = api.account("alice")
    response = api.client.get("/v1/users", params={"username": username}, headers=alice.auth)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"


def test_finding_users_needs_a_signed_in_caller(api: Api) -> None:
    response = api.client.get("/v1/users", params={"username": "alice"})
    assert response.status_code == 401


@pytest.fixture
def client(fresh_engine: Engine) -> TestClient:
    # Not entered: serving files needs no lifespan (no live-update reader).
    return TestClient(create_app(fresh_engine, api_settings()))


def test_the_web_client_is_served_and_the_api_keeps_its_errors(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/web/app.js">' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for asset, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        response = client.get(f"/web/{asset}")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(kind)
        assert response.headers["cache-control"] == "no-cache"  # revalidated: upgrades show
        assert response.headers["x-content-type-options"] == "nosniff"
    # The API answers as before: its own 404s and 405s (the files are not at /).
    unknown = client.get("/v1/no-such-route")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    wrong_method = client.put("/v1/conversations/1")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["code"] == "method_not_allowed"
    assert client.get("/v1/sessions").status_code == 405  # POST only
    assert client.get("/web/no-such-file.js").status_code == 404


def test_the_client_never_parses_text_as_html() -> None:
    """Text from the server becomes Text nodes only (the browser tests check the
    result; this keeps the ways around it out of the source)."""
    sinks = ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "DOMParser", "eval(")
    web = Path(chatdb.__file__).parent / "web"
    scripts = sorted(web.glob("*.js"))
    assert scripts
    for script in scripts:
        code = "\n".join(
            line for line in script.read_text().splitlines() if not line.lstrip().startswith("//")
        )
        for sink in sinks:
            assert sink not in code, f"{script.name} uses {sink}"
