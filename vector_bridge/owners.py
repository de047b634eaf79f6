"""Which Open WebUI object each collection belongs to, read from its name, and whether that object
still exists.

Open WebUI 0.12.4 names its Chroma collections (backend/open_webui/routers/*.py):

- ``knowledge-bases``: one vector per Knowledge base (its name and description);
- ``<knowledge id>`` (a UUID): the chunks of a Knowledge base; dropped when it is deleted;
- ``file-<file id>``: the chunks of one uploaded file. Deleting the file does not drop it with Chroma:
  Open WebUI's delete call names neither ids nor a filter, which its Chroma adapter ignores, so these
  are the usual left-overs;
- ``user-memory-<user id>``: a user's memories;
- ``web-search-<user id>-<sha256 of the queries>`` cut to 63 characters (``web-search-<sha256>``
  before 0.11): the pages of one web search, which chats cite later;
- ``<sha256 of a URL>`` cut to 63 hex digits, or the 64 of a pasted text: a page, video or text
  added to a chat.

Only the first four have an owner Open WebUI lists; chats are not listed, so whether a chat still
uses a web search or a page is unknown. A collection is called left over only when Open WebUI,
asked by id with an admin token, says its owner does not exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Protocol

import httpx

from vector_bridge.openwebui import OpenWebUIError

Kind = Literal["knowledge-bases", "knowledge", "file", "user-memory", "web-search", "chat-content", "other"]
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_KINDS: list[tuple[Kind, re.Pattern[str]]] = [
    ("knowledge-bases", re.compile(r"knowledge-bases")),
    ("file", re.compile(r"file-(?P<owner>.+)")),
    ("user-memory", re.compile(r"user-memory-(?P<owner>.+)")),
    ("web-search", re.compile(rf"web-search-(?:(?P<owner>{_UUID})-)?[0-9a-f]*")),
    ("chat-content", re.compile(r"[0-9a-f]{63,64}")),
    ("knowledge", re.compile(rf"(?P<owner>{_UUID})")),
]


def openwebui_kind(name: str) -> tuple[Kind, str | None]:
    """What Open WebUI keeps in a collection of this name, and the id of its owner when the name holds one."""
    for kind, pattern in _KINDS:
        found = pattern.fullmatch(name)
        if found:
            return kind, found.groupdict().get("owner")
    return "other", None


class OpenWebUIDirectory(Protocol):
    """The lookups owners needs (OpenWebUIClient has them)."""

    def list_knowledge(self) -> list[dict]: ...
    def files(self) -> list[dict]: ...
    def knowledge(self, knowledge_id: str) -> dict: ...
    def file(self, file_id: str) -> dict: ...
    def all_users(self) -> list[dict]: ...


@dataclass
class Owners:
    """What an admin's token showed of Open WebUI's files, Knowledge bases and users."""

    alive: set[str]  # collection names whose file or Knowledge base Open WebUI lists
    gone: set[str]  # collection names whose file or Knowledge base Open WebUI, asked by id, says is not there
    users: set[str] | None  # every user id; None when they could not be read

    def is_left_over(self, name: str) -> bool | None:
        """True: its owner is certainly gone. False: it has one. None: unknown (or not an owned kind)."""
        kind, owner = openwebui_kind(name)
        if kind in ("file", "knowledge"):
            return True if name in self.gone else False if name in self.alive else None
        if kind == "user-memory" and self.users is not None:
            return owner not in self.users
        return None


def read_owners(webui: OpenWebUIDirectory, names: list[str]) -> Owners:
    """List files and Knowledge bases, then ask by id about every file or Knowledge collection the
    lists miss: an admin's lists can be filtered (BYPASS_ADMIN_ACCESS_CONTROL=false), a lookup by id is not."""
    alive = {base["id"] for base in webui.list_knowledge()} | {f"file-{f['id']}" for f in webui.files()}
    gone: set[str] = set()
    for name in names:
        kind, owner = openwebui_kind(name)
        if name in alive or owner is None or kind not in ("file", "knowledge"):
            continue
        try:
            webui.file(owner) if kind == "file" else webui.knowledge(owner)
        except OpenWebUIError as error:
            if error.status == 404:
                gone.add(name)
            continue  # another answer (401, 500): unknown, so never called left over
        except httpx.HTTPError:
            continue
        alive.add(name)
    try:
        users: set[str] | None = {user["id"] for user in webui.all_users()}
    except (OpenWebUIError, httpx.HTTPError):
        users = None
    return Owners(alive, gone, users)
