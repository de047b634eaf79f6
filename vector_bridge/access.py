"""Which Knowledge bases a caller may read, as Open WebUI answers when asked with the caller's own credential.

Open WebUI owns its users, groups and sharing rules, so it is the only judge of who reads what. A route
that returns stored text asks it with the caller's own API key or token, never with a key of the server's:
a Knowledge base the caller cannot read is then simply absent, indistinguishable from one that does not
exist. Answers are reused for a few seconds per credential (keyed by its hash), so a burst of searches
costs one round trip to Open WebUI, and a revoked share takes effect within that time.

One caller has no credential of the user to pass on: Open WebUI's Pipelines protocol names the user in the
request, vouched for by the connection's key. For it, ``readable_by`` reads the sharing rules with an admin
key and applies Open WebUI's own rule (owner; a read grant to everyone, to the user, or to a group the user
belongs to directly or through a parent group), failing closed: what it cannot tell is not readable.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx


class AccessError(RuntimeError):
    pass


class CredentialRefused(AccessError):
    """Open WebUI did not accept the caller's key or token."""


class NotPermitted(AccessError):
    """Open WebUI knows the credential but does not let it list Knowledge (e.g. API keys limited to some
    endpoints): a 403, not a guess, so it does not count against the caller's address."""


class OpenWebUIUnavailable(AccessError):
    """Open WebUI could not be asked, or answered with an error of its own."""


@dataclass(frozen=True)
class KnowledgeBase:
    id: str
    name: str


_MAX_CACHED_CALLERS = 4096
_MAX_PAGES = 1000


class KnowledgeAccess:
    def __init__(self, openwebui_url: str, *, ttl_seconds: float, timeout: float = 15,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._http = httpx.AsyncClient(base_url=openwebui_url.rstrip("/"), timeout=timeout, transport=transport)
        self._ttl = ttl_seconds
        self._answers: dict[tuple[str, str], tuple[float, Any]] = {}
        self._pending: dict[tuple[str, str], asyncio.Future[Any]] = {}

    async def aclose(self) -> None:
        await self._http.aclose()

    def knows(self, token: str) -> bool:
        """Whether Open WebUI's answer for ``token`` is at hand (it accepted the credential a moment ago)."""
        cached = self._answers.get(("knowledge", hashlib.sha256(token.encode()).hexdigest()))
        return cached is not None and cached[0] > time.monotonic()

    async def readable(self, token: str) -> list[KnowledgeBase]:
        """Every Knowledge base the holder of ``token`` may read in Open WebUI."""
        return await self._cached("knowledge", token, self._knowledge)

    async def session_user(self, token: str) -> str | None:
        """The id of the user whose session ``token`` is; None for a credential that is not a person's session
        (an API key: Open WebUI tells who holds a key only to that person's browser session)."""
        return await self._cached("user", token, self._session_user)

    def forget(self, token: str) -> None:
        """Drop the answers kept for ``token``: its holder has just changed what they may read."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        self._answers = {key: value for key, value in self._answers.items() if key[1] != digest}

    async def _cached(self, what: str, token: str, ask: Callable[[str], Awaitable[Any]]) -> Any:
        key = (what, hashlib.sha256(token.encode()).hexdigest())
        now = time.monotonic()
        cached = self._answers.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        # One question in flight per key: a burst of chats when the answer expires asks Open WebUI once.
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = asyncio.ensure_future(ask(token))
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        answer = await asyncio.shield(pending)
        if len(self._answers) >= _MAX_CACHED_CALLERS:
            self._answers = {k: value for k, value in self._answers.items() if value[0] > now}
        if self._ttl > 0 and len(self._answers) < _MAX_CACHED_CALLERS:
            self._answers[key] = (now + self._ttl, answer)
        return answer

    async def _get(self, path: str, token: str, **params: object) -> httpx.Response:
        if not token.isascii() or not token.isprintable():
            raise CredentialRefused("Open WebUI did not accept this API key or token.")
        try:
            response = await self._http.get(path, params=params, headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as error:
            raise OpenWebUIUnavailable(f"Open WebUI could not be reached ({type(error).__name__})") from None
        if response.status_code == 401:
            raise CredentialRefused("Open WebUI did not accept this API key or token.")
        if response.status_code >= 500:
            raise OpenWebUIUnavailable(f"Open WebUI answered {response.status_code}")
        return response

    async def _session_user(self, token: str) -> str | None:
        response = await self._get("/api/v1/auths/", token)
        return str(response.json().get("id") or "") or None if response.status_code == 200 else None

    async def _knowledge(self, token: str) -> list[KnowledgeBase]:
        return [KnowledgeBase(item["id"], item.get("name") or "") for item in await self._knowledge_items(token)]

    async def _knowledge_items(self, token: str) -> list[dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}  # by id: a page boundary that moves may repeat one
        for page in range(1, _MAX_PAGES + 1):
            response = await self._get("/api/v1/knowledge/", token, page=page)
            if response.status_code == 403:
                raise NotPermitted("Open WebUI does not let this credential list Knowledge bases.")
            if response.status_code >= 400:
                raise OpenWebUIUnavailable(f"Open WebUI answered {response.status_code} to a Knowledge listing")
            answer = response.json()
            found.update((item["id"], item) for item in answer["items"])
            if not answer["items"] or len(found) >= answer["total"]:
                break
        return list(found.values())

    async def readable_by(self, user_id: str, admin_key: str) -> list[KnowledgeBase]:
        """Every Knowledge base the Open WebUI user ``user_id`` may read, judged from the sharing rules that
        ``admin_key`` (an admin's key) reads. Admins are judged like everyone: by what they own or are granted."""
        items = await self._cached("all-knowledge", admin_key, self._knowledge_items)
        groups = await self._cached(f"groups:{user_id}", admin_key, lambda key: self._groups_of(user_id, key))
        return [KnowledgeBase(item["id"], item.get("name") or "") for item in items
                if item.get("user_id") == user_id or _grants_read(item.get("access_grants") or [], user_id, groups)]

    async def _groups_of(self, user_id: str, admin_key: str) -> frozenset[str]:
        """The user's groups, with every parent of each: a member of a group inherits its parents' grants."""
        response = await self._get(f"/api/v1/users/{user_id}", admin_key)
        if response.status_code in (400, 404):
            return frozenset()  # no such user: no groups, so only public Knowledge
        if response.status_code >= 400:
            raise NotPermitted("Open WebUI does not let the server's key read users: it must be an admin's key.")
        direct = {group["id"] for group in response.json().get("groups") or []}
        if not direct:
            return frozenset()
        listing = await self._get("/api/v1/groups/", admin_key)
        if listing.status_code >= 400:
            raise NotPermitted("Open WebUI does not let the server's key read groups: it must be an admin's key.")
        parent = {group["id"]: group.get("parent_group_id") for group in listing.json()}
        effective, todo = set(), list(direct)
        while todo:
            group = todo.pop()
            if group and group not in effective:
                effective.add(group)
                todo.append(parent.get(group))
        return frozenset(effective)


def _grants_read(grants: list[dict[str, Any]], user_id: str, groups: frozenset[str]) -> bool:
    for grant in grants:
        if not isinstance(grant, dict) or grant.get("permission") != "read":
            continue
        kind, principal = grant.get("principal_type"), grant.get("principal_id")
        if kind == "user" and principal in ("*", user_id):
            return True
        if kind == "group" and principal in groups:
            return True
    return False
