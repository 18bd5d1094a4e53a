"""GET /v1/search: what the API returns, who finds what, pages and bad input."""

from __future__ import annotations

from tests.api_support import Api


def test_search_finds_members_messages_with_snippets(api: Api) -> None:
    alice, bob, eve = api.account("alice"), api.account("bob"), api.account("eve")
    group = api.group(alice, bob, title="Release crew")
    api.send(alice, group, "the release is <b>tomorrow</b>")
    api.send(bob, group, "lunch?")

    found = api.client.get("/v1/search", params={"q": "releases"}, headers=bob.auth)
    assert found.status_code == 200, found.text
    [hit] = found.json()["results"]
    assert hit["message"]["conversation_id"] == group
    assert hit["message"]["seq"] == 1
    assert hit["message"]["sender_name"] == "alice"
    assert hit["conversation_title"] == "Release crew"
    assert {"text": "release", "match": True} in hit["snippet"]
    assert "".join(p["text"] for p in hit["snippet"]) == "the release is <b>tomorrow</b>"
    assert found.json()["next_cursor"] is None

    # A non-member finds nothing, also when naming the conversation.
    for params in ({"q": "release"}, {"q": "release", "conversation_id": group}):
        response = api.client.get("/v1/search", params=params, headers=eve.auth)
        assert response.status_code == 200
        assert response.json()["results"] == []


def test_filters_and_pages(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    group = api.group(alice, bob)
    other = api.group(bob, alice)
    for i in range(7):
        api.send(alice if i % 2 else bob, group, f"status update {i}")
    api.send(alice, other, "status elsewhere")

    by_alice = api.client.get(
        "/v1/search",
        params={"q": "status", "conversation_id": group, "from_user": alice.id},
        headers=bob.auth,
    ).json()["results"]
    assert sorted(h["message"]["seq"] for h in by_alice) == [2, 4, 6]

    seen: list[tuple[int, int]] = []
    cursor = None
    for _ in range(10):
        params: dict[str, object] = {"q": "status", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = api.client.get("/v1/search", params=params, headers=bob.auth).json()
        seen += [(h["message"]["conversation_id"], h["message"]["seq"]) for h in page["results"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 8 == len(set(seen))

    first = seen[0]
    sent_at = api.client.get(
        f"/v1/conversations/{first[0]}/messages/{first[1]}", headers=bob.auth
    ).json()["created_at"]
    later = api.client.get(
        "/v1/search", params={"q": "status", "after": sent_at}, headers=bob.auth
    ).json()["results"]
    earlier = api.client.get(
        "/v1/search", params={"q": "status", "before": sent_at}, headers=bob.auth
    ).json()["results"]
    assert first not in [(h["message"]["conversation_id"], h["message"]["seq"]) for h in later]
    assert len(later) + len(earlier) == 7


def test_bad_input_is_a_clear_4xx(api: Api) -> None:
    alice = api.account("alice")
    api.group(alice)
    cases = [
        ({}, 422),
        ({"q": ""}, 422),
        ({"q": "-lunch"}, 422),
        ({"q": "!!!"}, 422),
        ({"q": "x" * 501}, 422),
        ({"q": "lunch", "limit": 0}, 422),
        ({"q": "lunch", "conversation_id": 0}, 422),
        ({"q": "lunch", "before": "yesterday"}, 422),
        ({"q": "lunch", "cursor": "garbage"}, 400),
        ({"q": "lunch", "cursor": "eyJ4Ijo1fQ.AAAAAAAAAAAAAAAA"}, 400),
    ]
    for params, status in cases:
        response = api.client.get("/v1/search", params=params, headers=alice.auth)
        assert response.status_code == status, (params, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
    response = api.client.get("/v1/search", params={"q": "\x00"}, headers=alice.auth)
    assert response.status_code == 422


def test_the_mentions_filter(api: Api) -> None:
    alice, bob = api.account("alice"), api.account("bob")
    group = api.group(alice, bob)
    api.send(alice, group, "@bob the build is green")
    api.send(alice, group, "the build is green again")
    mine = api.client.get("/v1/search", params={"q": "build", "mentions": "true"}, headers=bob.auth)
    assert mine.status_code == 200, mine.text
    assert [h["message"]["seq"] for h in mine.json()["results"]] == [1]
    everyone = api.client.get("/v1/search", params={"q": "build"}, headers=bob.auth)
    assert len(everyone.json()["results"]) == 2
    # The admin key has no mentions of its own.
    operator = api.client.get(
        "/v1/search", params={"q": "build", "mentions": "true"}, headers=api.admin
    )
    assert operator.status_code == 403
