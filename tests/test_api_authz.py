"""The authorization matrix: every route of the app, for every kind of caller.

Callers: anonymous (no token), an outsider (a signed-in user who is not a
member of the conversation), a plain member, the owner, and the admin key.

Every case runs on objects of its own: a new group (the owner, the member)
with one message by the owner, and where a route needs one, a new user to add
or delete, or a new sign-in to revoke. So destructive cases (deleting the
conversation, the user, the session) cannot disturb the others, which share
one database to keep the matrix fast.

What the path parameters point at:
- {conversation_id}: the case's group; {seq}: the owner's message in it
  (deleted first for .../restore, and the conversation deleted first for
  the conversation's restore);
- /v1/users/{user_id}: the owner's account (so the owner acts on themself),
  except DELETE, which targets a new user made for the case;
- .../members/{user_id}: the plain member (so for the member, DELETE is leaving);
- .../reactions/{emoji}: 👍.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy.engine import URL

from tests.api_support import PASSWORD, Account, Api, api_on_new_database

ANON, OUTSIDER, MEMBER, OWNER, ADMIN = "anonymous", "outsider", "member", "owner", "admin"
PRINCIPALS = (ANON, OUTSIDER, MEMBER, OWNER, ADMIN)

C = "/v1/conversations/{conversation_id}"

# route -> caller -> expected status. Adding a route to the app fails
# test_every_route_is_in_the_matrix until it has a row here.
MATRIX: dict[str, dict[str, int]] = {
    # sessions: signing in needs no credentials (any sent are ignored)
    "POST /v1/sessions": {ANON: 201, OUTSIDER: 201, MEMBER: 201, OWNER: 201, ADMIN: 201},
    "DELETE /v1/sessions/current": {ANON: 401, OUTSIDER: 204, MEMBER: 204, OWNER: 204, ADMIN: 403},
    # users
    "GET /v1/me": {ANON: 401, OUTSIDER: 200, MEMBER: 200, OWNER: 200, ADMIN: 403},
    "GET /v1/users": {ANON: 401, OUTSIDER: 200, MEMBER: 200, OWNER: 200, ADMIN: 200},
    "POST /v1/users": {ANON: 401, OUTSIDER: 403, MEMBER: 403, OWNER: 403, ADMIN: 201},
    "GET /v1/users/{user_id}": {ANON: 401, OUTSIDER: 200, MEMBER: 200, OWNER: 200, ADMIN: 200},
    "PATCH /v1/users/{user_id}": {ANON: 401, OUTSIDER: 403, MEMBER: 403, OWNER: 200, ADMIN: 200},
    "DELETE /v1/users/{user_id}": {ANON: 401, OUTSIDER: 403, MEMBER: 403, OWNER: 403, ADMIN: 204},
    # conversations: non-members get 404, as if the conversation did not exist
    "POST /v1/conversations": {ANON: 401, OUTSIDER: 201, MEMBER: 201, OWNER: 201, ADMIN: 403},
    "GET /v1/conversations": {ANON: 401, OUTSIDER: 200, MEMBER: 200, OWNER: 200, ADMIN: 403},
    f"GET {C}": {ANON: 401, OUTSIDER: 404, MEMBER: 200, OWNER: 200, ADMIN: 200},
    f"PATCH {C}": {ANON: 401, OUTSIDER: 404, MEMBER: 403, OWNER: 200, ADMIN: 200},
    f"DELETE {C}": {ANON: 401, OUTSIDER: 404, MEMBER: 403, OWNER: 204, ADMIN: 204},
    # restoring a deleted conversation: its owners (a non-member still learns nothing)
    f"POST {C}/restore": {ANON: 401, OUTSIDER: 404, MEMBER: 403, OWNER: 200, ADMIN: 200},
    f"GET {C}/changes": {ANON: 401, OUTSIDER: 404, MEMBER: 200, OWNER: 200, ADMIN: 200},
    # members: owners manage them; leaving is deleting yourself
    f"GET {C}/members": {ANON: 401, OUTSIDER: 404, MEMBER: 200, OWNER: 200, ADMIN: 200},
    f"POST {C}/members": {ANON: 401, OUTSIDER: 404, MEMBER: 403, OWNER: 201, ADMIN: 201},
    f"PATCH {C}/members/{{user_id}}": {
        ANON: 401,
        OUTSIDER: 404,
        MEMBER: 403,
        OWNER: 200,
        ADMIN: 200,
    },
    f"DELETE {C}/members/{{user_id}}": {
        ANON: 401,
        OUTSIDER: 404,
        MEMBER: 204,
        OWNER: 204,
        ADMIN: 204,
    },
    # messages: members read and send; only the author edits; the author or an
    # owner deletes and restores; the admin key reads and moderates but is no sender
    f"GET {C}/messages": {ANON: 401, OUTSIDER: 404, MEMBER: 200, OWNER: 200, ADMIN: 200},
    f"POST {C}/messages": {ANON: 401, OUTSIDER: 404, MEMBER: 201, OWNER: 201, ADMIN: 403},
    f"GET {C}/messages/{{seq}}": {ANON: 401, OUTSIDER: 404, MEMBER: 200, OWNER: 200, ADMIN: 200},
    f"PATCH {C}/messages/{{seq}}": {
        ANON: 401,
        OUTSIDER: 404,
        MEMBER: 403,
        OWNER: 200,
        ADMIN: 403,
    },
    f"DELETE {C}/messages/{{seq}}": {
        ANON: 401,
        OUTSIDER: 404,
        MEMBER: 403,
        OWNER: 200,
        ADMIN: 200,
    },
    f"POST {C}/messages/{{seq}}/restore": {
        ANON: 401,
        OUTSIDER: 404,
        MEMBER: 403,
        OWNER: 200,
        ADMIN: 200,
    },
    f"POST {C}/read": {ANON: 401, OUTSIDER: 404, MEMBER: 200, OWNER: 200, ADMIN: 403},
    # search: anyone signed in finds what they may read (an outsider: nothing)
    "GET /v1/search": {ANON: 401, OUTSIDER: 200, MEMBER: 200, OWNER: 200, ADMIN: 200},
    # threads: read like messages; reactions: any member, as themself (not the admin key)
    f"GET {C}/messages/{{seq}}/replies": {
        ANON: 401,
        OUTSIDER: 404,
        MEMBER: 200,
        OWNER: 200,
        ADMIN: 200,
    },
    f"PUT {C}/messages/{{seq}}/reactions/{{emoji}}": {
        ANON: 401,
        OUTSIDER: 404,
        MEMBER: 200,
        OWNER: 200,
        ADMIN: 403,
    },
    f"DELETE {C}/messages/{{seq}}/reactions/{{emoji}}": {
        ANON: 401,
        OUTSIDER: 404,
        MEMBER: 200,
        OWNER: 200,
        ADMIN: 403,
    },
    # reports: the admin key only
    "GET /v1/reports/activity": {ANON: 401, OUTSIDER: 403, MEMBER: 403, OWNER: 403, ADMIN: 200},
    "GET /v1/reports/inactive": {ANON: 401, OUTSIDER: 403, MEMBER: 403, OWNER: 403, ADMIN: 200},
    # live updates: a signed-in user's own stream
    "GET /v1/events": {ANON: 401, OUTSIDER: 200, MEMBER: 200, OWNER: 200, ADMIN: 403},
    # public
    "GET /healthz": {ANON: 200, OUTSIDER: 200, MEMBER: 200, OWNER: 200, ADMIN: 200},
    "GET /readyz": {ANON: 200, OUTSIDER: 200, MEMBER: 200, OWNER: 200, ADMIN: 200},
    # operations: Prometheus scrapes with the admin key
    "GET /metrics": {ANON: 401, OUTSIDER: 403, MEMBER: 403, OWNER: 403, ADMIN: 200},
    # the web client: its page, and its sign-in hint (404 unless serving demo data)
    "GET /": {ANON: 200, OUTSIDER: 200, MEMBER: 200, OWNER: 200, ADMIN: 200},
    "GET /v1/demo": {ANON: 404, OUTSIDER: 404, MEMBER: 404, OWNER: 404, ADMIN: 404},
}


def app_routes(app: FastAPI, *, documented_only: bool = False) -> set[str]:
    """Every "METHOD /path" the app serves through a FastAPI route."""
    found: set[str] = set()
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and (route.include_in_schema or not documented_only):
            found |= {f"{method} {context.path}" for method in route.methods}
    return found


@dataclass
class World:
    api: Api
    owner: Account
    member: Account
    outsider: Account

    def account(self, principal: str) -> Account | None:
        return {OUTSIDER: self.outsider, MEMBER: self.member, OWNER: self.owner}.get(principal)


@pytest.fixture(scope="module")
def world(server_url: URL, template_name: str) -> Iterator[World]:
    with api_on_new_database(server_url, template_name) as api:
        yield World(api, api.account("owner"), api.account("member"), api.account("outsider"))


def new_user(api: Api) -> int:
    name = f"u{uuid.uuid4().hex[:12]}"
    response = api.client.post(
        "/v1/users", json={"username": name, "email": f"{name}@example.org"}, headers=api.admin
    )
    assert response.status_code == 201, response.text
    user_id: int = response.json()["id"]
    return user_id


@dataclass
class Request:
    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None


def prepare(world: World, route: str) -> Request:
    """Fresh objects for one case, and the request that exercises `route`."""
    api, owner, member = world.api, world.owner, world.member
    method, template = route.split(" ", 1)
    conversation = api.group(owner, member, title="matrix")
    seq = api.send(owner, conversation, "by the owner")["seq"]
    user_id = owner.id
    body: Any = None
    params: dict[str, Any] | None = None

    if template.startswith(C):
        if "/members/" in template:
            user_id = member.id
        if route == f"POST {C}/restore":
            deleted = api.client.delete(f"/v1/conversations/{conversation}", headers=owner.auth)
            assert deleted.status_code == 204, deleted.text
        elif route.endswith("/restore"):
            deleted = api.client.delete(
                f"/v1/conversations/{conversation}/messages/{seq}", headers=owner.auth
            )
            assert deleted.status_code == 200, deleted.text
        body = {
            f"PATCH {C}": {"title": "renamed"},
            f"POST {C}/members": {"user_id": new_user(api)},
            f"PATCH {C}/members/{{user_id}}": {"role": "owner"},
            f"POST {C}/messages": {"body": "hello"},
            f"PATCH {C}/messages/{{seq}}": {"body": "edited"},
            f"POST {C}/read": {"seq": seq},
        }.get(route)
    elif route == "DELETE /v1/users/{user_id}":
        user_id = new_user(api)
    elif route == "PATCH /v1/users/{user_id}":
        body = {"display_name": "changed"}
    elif route == "POST /v1/users":
        name = f"n{uuid.uuid4().hex[:12]}"
        body = {"username": name, "email": f"{name}@example.org"}
    elif route == "POST /v1/sessions":
        body = {"username": owner.username, "password": PASSWORD}
    elif route == "POST /v1/conversations":
        body = {"title": "new", "member_ids": [member.id]}
    elif route == "GET /v1/users":
        params = {"username": owner.username}
    elif route == "GET /v1/search":
        params = {"q": "owner"}
    elif route == "GET /v1/reports/activity":
        params = {"tz": "UTC"}

    path = template.format(conversation_id=conversation, user_id=user_id, seq=seq, emoji="👍")
    return Request(method, path, body, params)


def credentials(world: World, route: str, principal: str) -> dict[str, str]:
    if principal == ANON:
        return {}
    if principal == ADMIN:
        return world.api.admin
    account = world.account(principal)
    assert account is not None
    if route == "DELETE /v1/sessions/current":
        # A sign-in of its own, so revoking it leaves the shared token alone.
        signed_in = world.api.client.post(
            "/v1/sessions", json={"username": account.username, "password": PASSWORD}
        )
        return {"Authorization": f"Bearer {signed_in.json()['token']}"}
    return account.auth


def call(world: World, request: Request, headers: dict[str, str]) -> httpx2.Response:
    client = world.api.client
    if request.path == "/v1/events":
        # An endless stream: take the status and hang up.
        with client.stream("GET", request.path, headers=headers) as response:
            return response
    return client.request(
        request.method, request.path, json=request.json, params=request.params, headers=headers
    )


CASES = [(route, principal) for route in MATRIX for principal in PRINCIPALS]


@pytest.mark.parametrize(("route", "principal"), CASES, ids=[f"{r} as {p}" for r, p in CASES])
def test_authorization(world: World, route: str, principal: str) -> None:
    request = prepare(world, route)
    response = call(world, request, credentials(world, route, principal))
    expected = MATRIX[route][principal]
    assert response.status_code == expected, (request, response.text if expected != 200 else "")
    if expected >= 400:
        assert response.headers["content-type"] == "application/problem+json"
    if expected == 401:
        assert response.headers["www-authenticate"] == "Bearer"


def test_every_route_is_in_the_matrix(world: World) -> None:
    app = world.api.client.app
    assert isinstance(app, FastAPI)
    routes = app_routes(app)
    assert len(routes) >= 30
    missing = sorted(routes - MATRIX.keys())
    assert not missing, f"routes without a row in MATRIX: {missing}"
    stale = sorted(MATRIX.keys() - routes)
    assert not stale, f"rows in MATRIX for routes the app does not have: {stale}"
    for route, row in MATRIX.items():
        assert set(row) == set(PRINCIPALS), route
    # The OpenAPI document lists the same operations (but for the web page).
    document = world.api.client.get("/openapi.json").json()
    documented = {
        f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item
    }
    assert documented == app_routes(app, documented_only=True)


CONVERSATION_ROUTES = [route for route in MATRIX if route.split(" ", 1)[1].startswith(C)]


@pytest.mark.parametrize("route", CONVERSATION_ROUTES)
def test_an_outsider_cannot_tell_a_conversation_exists(world: World, route: str) -> None:
    """For a non-member, a conversation that exists answers exactly like one
    that does not: same status, same code, same message (but for the id)."""
    request = prepare(world, route)
    method = route.split(" ", 1)[0]
    conversation = int(request.path.split("/")[3])
    missing = 2**62
    headers = world.outsider.auth
    existing = call(world, request, headers)
    absent = call(
        world,
        Request(
            method,
            request.path.replace(f"/{conversation}", f"/{missing}", 1),
            request.json,
            request.params,
        ),
        headers,
    )
    assert existing.status_code == absent.status_code == 404
    seen, unseen = existing.json(), absent.json()
    assert seen["code"] == unseen["code"] == "not_found"
    assert seen["detail"].replace(str(conversation), "N") == unseen["detail"].replace(
        str(missing), "N"
    )
