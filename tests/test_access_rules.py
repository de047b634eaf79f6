"""Which Knowledge a user named by Open WebUI may read (the Pipelines server's check), against Open WebUI's
own rule: the owner; a read grant to everyone, to the user, or to a group the user is in directly or
through a parent group. A write grant alone, another user's grant, or an unrelated group give nothing; a
failure to read users or groups gives nothing either. Open WebUI's admin API is played by a small ASGI-free
transport that answers as Open WebUI 0.12.4 does (paged Knowledge listing, user's direct groups, groups
with parents)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from vector_bridge.access import KnowledgeAccess, NotPermitted

ADMIN_KEY = "sk-admin"


def grant(kind: str, principal: str, permission: str = "read") -> dict:
    return {"principal_type": kind, "principal_id": principal, "permission": permission}


BASES = [
    {"id": "own", "name": "Own", "user_id": "alice", "access_grants": []},
    {"id": "public", "name": "Public", "user_id": "bob", "access_grants": [grant("user", "*")]},
    {"id": "to-alice", "name": "To Alice", "user_id": "bob", "access_grants": [grant("user", "alice")]},
    {"id": "write-only", "name": "Write", "user_id": "bob", "access_grants": [grant("user", "alice", "write")]},
    {"id": "to-carol", "name": "To Carol", "user_id": "bob", "access_grants": [grant("user", "carol")]},
    {"id": "team", "name": "Team", "user_id": "bob", "access_grants": [grant("group", "team")]},
    {"id": "parent", "name": "Parent", "user_id": "bob", "access_grants": [grant("group", "org")]},
    {"id": "other-group", "name": "Other", "user_id": "bob", "access_grants": [grant("group", "sales")]},
    {"id": "bobs", "name": "Bob's", "user_id": "bob", "access_grants": []},
]
GROUPS = [{"id": "team", "parent_group_id": "org"}, {"id": "org", "parent_group_id": None},
          {"id": "sales", "parent_group_id": None}]
MEMBERS = {"alice": ["team"], "bob": [], "carol": []}


def open_webui(calls: list[str], *, groups_status: int = 200, page_size: int = 4) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.headers.get("authorization") != f"Bearer {ADMIN_KEY}":
            return httpx.Response(401, json={"detail": "no"})
        path = request.url.path
        if path == "/api/v1/knowledge/":
            page = int(request.url.params.get("page", 1))
            items = BASES[(page - 1) * page_size: page * page_size]
            return httpx.Response(200, json={"items": items, "total": len(BASES)})
        if path.startswith("/api/v1/users/"):
            user = path.rsplit("/", 1)[1]
            if user not in MEMBERS:
                return httpx.Response(400, json={"detail": "User not found"})
            return httpx.Response(200, json={"id": user, "groups": [{"id": g} for g in MEMBERS[user]]})
        if path == "/api/v1/groups/":
            return httpx.Response(groups_status, content=json.dumps(GROUPS))
        return httpx.Response(404)
    return httpx.MockTransport(answer)


def readable(user: str, transport: httpx.MockTransport) -> set[str]:
    async def run() -> set[str]:
        access = KnowledgeAccess("http://open-webui", ttl_seconds=5, transport=transport)
        try:
            return {base.id for base in await access.readable_by(user, ADMIN_KEY)}
        finally:
            await access.aclose()
    return asyncio.run(run())


def test_the_rule_follows_open_webui() -> None:
    calls: list[str] = []
    assert readable("alice", open_webui(calls)) == {"own", "public", "to-alice", "team", "parent"}
    assert readable("bob", open_webui(calls)) == {"public", "to-alice", "write-only", "to-carol", "team", "parent",
                                                   "other-group", "bobs"}  # Bob owns those
    assert readable("carol", open_webui(calls)) == {"public", "to-carol"}
    assert readable("nobody", open_webui(calls)) == {"public"}


def test_groups_that_cannot_be_read_give_nothing() -> None:
    with pytest.raises(NotPermitted):
        readable("alice", open_webui([], groups_status=403))


def test_a_burst_asks_open_webui_once() -> None:
    calls: list[str] = []

    async def burst() -> None:
        access = KnowledgeAccess("http://open-webui", ttl_seconds=5, transport=open_webui(calls))
        try:
            answers = await asyncio.gather(*(access.readable_by("alice", ADMIN_KEY) for _ in range(20)))
        finally:
            await access.aclose()
        assert all(answer == answers[0] for answer in answers)

    asyncio.run(burst())
    assert calls.count("/api/v1/groups/") == 1 and calls.count("/api/v1/knowledge/") == 3  # 9 bases, pages of 4
