"""Doctor's rules on given facts (the services are exercised in test_bridge.py): what migrate and restore
leave behind is reported as such, Open WebUI's own kinds of collection are known by their names, and
"delete" is advised only when Open WebUI says the owner is gone."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from vector_bridge.doctor import Expected, Facts, Finding, diagnose
from vector_bridge.openwebui import OpenWebUIError
from vector_bridge.owners import Owners, openwebui_kind, read_owners
from vector_bridge.store import CollectionInfo

URL = "http://127.0.0.1:8080/v1"
HYBRID = "all-MiniLM-L6-v2-hybrid"
MINILM = "all-MiniLM-L6-v2"
USER, GONE_USER = str(uuid.uuid4()), str(uuid.uuid4())
KB, GONE_KB, FILE, GONE_FILE, UNSURE_FILE = (str(uuid.uuid4()) for _ in range(5))
SHA = hashlib.sha256(b"https://example.org/page").hexdigest()


def chunks(name: str, count: int = 4) -> CollectionInfo:
    return CollectionInfo(name, count, 384, {MINILM: count})


def diagnosed(collections: list[CollectionInfo], owners: Owners | None) -> list[Finding]:
    expected = Expected("open-webui", "openai", MINILM, URL, dimension=384)
    return diagnose(Facts(collections, expected, URL, owners))


def by_collection(findings: list[Finding]) -> dict[str | None, list[tuple[str, str]]]:
    found: dict[str | None, list[tuple[str, str]]] = {}
    for finding in findings:
        found.setdefault(finding.collection, []).append((finding.severity, finding.message))
    return found


def test_migrated_collection_its_kept_old_vectors_and_an_unfinished_shadow() -> None:
    hybrid = Expected("open-webui", "openai", HYBRID, URL, dimension=4480)
    found = by_collection(diagnose(Facts([
        CollectionInfo("kb-1", 10, 4480, {HYBRID: 10}),
        CollectionInfo(f"kb-1.pre.{HYBRID}", 10, 384, {MINILM: 10}),
        CollectionInfo("kb-2", 5, 384, {MINILM: 5}),
        CollectionInfo(f"kb-2.to.{HYBRID}", 3, 4480, {HYBRID: 3}),
    ], hybrid, URL, Owners(alive={"kb-1"}, gone=set(), users=set()))))
    assert "kb-1" not in found
    [(severity, message)] = found[f"kb-1.pre.{HYBRID}"]
    assert severity == "info" and "old vectors of kb-1" in message
    [(severity, message)] = found[f"kb-2.to.{HYBRID}"]
    assert severity == "warning" and "has not finished" in message
    # kb-2 itself is still on MiniLM and no name Open WebUI makes: wrong model, wrong size, not Open WebUI's.
    assert sorted(severity for severity, _ in found["kb-2"]) == ["error", "error", "warning"]
    assert None not in found  # no stack-wide problem


def test_open_webui_collection_names_are_recognised() -> None:
    assert openwebui_kind("knowledge-bases") == ("knowledge-bases", None)
    assert openwebui_kind(KB) == ("knowledge", KB)
    assert openwebui_kind(f"file-{FILE}") == ("file", FILE)
    assert openwebui_kind(f"user-memory-{USER}") == ("user-memory", USER)
    # Open WebUI cuts web search names to 63 characters: the user id survives, most of the hash does not.
    assert openwebui_kind(f"web-search-{USER}-{SHA}"[:63]) == ("web-search", USER)
    assert openwebui_kind(f"web-search-{SHA}"[:63]) == ("web-search", None)  # before Open WebUI 0.11
    assert openwebui_kind(SHA[:63]) == ("chat-content", None)  # a URL or YouTube video added to a chat
    assert openwebui_kind(SHA) == ("chat-content", None)  # a pasted text
    assert openwebui_kind("lab-notes") == ("other", None)


def test_delete_is_advised_only_when_open_webui_says_the_owner_is_gone() -> None:
    owners = Owners(alive={KB, f"file-{FILE}"}, gone={GONE_KB, f"file-{GONE_FILE}"}, users={USER})
    names = ["knowledge-bases", KB, GONE_KB, f"file-{FILE}", f"file-{GONE_FILE}", f"file-{UNSURE_FILE}",
             f"user-memory-{USER}", f"user-memory-{GONE_USER}", f"web-search-{USER}-{SHA}"[:63],
             f"web-search-{GONE_USER}-{SHA}"[:63], SHA[:63], SHA, "lab-notes"]
    findings = diagnosed([chunks(name) for name in names], owners)
    found = by_collection(findings)

    for name in ("knowledge-bases", KB, f"file-{FILE}", f"user-memory-{USER}"):
        assert name not in found, name
    for name, owner in ((GONE_KB, "Knowledge base"), (f"file-{GONE_FILE}", "file"),
                        (f"user-memory-{GONE_USER}", "user")):
        [(severity, message)] = found[name]
        assert severity == "warning" and f"no Open WebUI {owner} has id" in message
    [(severity, message)] = found[f"file-{UNSURE_FILE}"]
    assert severity == "info" and "unknown" in message
    [(severity, message)] = found["lab-notes"]
    assert severity == "warning" and "makes no collection of this name" in message
    # Web searches and chat pages: one line each, never one per collection, never "delete".
    assert sorted(message.split(" collections of ")[0] for _, message in found[None]) == ["2", "2"]
    certain = {GONE_KB, f"file-{GONE_FILE}", f"user-memory-{GONE_USER}"}
    assert {f.collection for f in findings if "delete" in f.fix} == certain


def test_without_an_admin_token_nothing_is_called_left_over() -> None:
    names = [GONE_KB, f"file-{GONE_FILE}", f"user-memory-{GONE_USER}", "lab-notes", f"web-search-{SHA}"[:63]]
    findings = diagnosed([chunks(name) for name in names], None)
    assert [(f.severity, f.collection) for f in findings] == [("info", None)]  # the web search summary
    # Without the user list, memories are not judged either.
    assert not diagnosed([chunks(f"user-memory-{GONE_USER}")], Owners(set(), set(), users=None))


def test_interrupted_restores_are_reported_as_such() -> None:
    found = by_collection(diagnosed([chunks(f"file-{FILE}.restoring"), chunks(f"{KB}.replaced")],
                                    Owners({f"file-{FILE}", KB}, set(), {USER})))
    for name in (f"file-{FILE}.restoring", f"{KB}.replaced"):
        [(severity, message)] = found[name]
        assert severity == "warning" and "restore that did not finish" in message


class Directory:
    """Open WebUI as an admin with BYPASS_ADMIN_ACCESS_CONTROL=false sees it: lists miss other users' things."""

    def __init__(self, files: set[str], knowledge: set[str], listed: set[str], failing: set[str]) -> None:
        self._files, self._knowledge, self._listed, self._failing = files, knowledge, listed, failing

    def _lookup(self, existing: set[str], id_: str) -> dict:
        if id_ in self._failing:
            raise OpenWebUIError("500 Internal Server Error", 500)
        if id_ not in existing:
            raise OpenWebUIError("404 Not Found", 404)
        return {"id": id_}

    def list_knowledge(self) -> list[dict]:
        return [{"id": i} for i in self._knowledge & self._listed]

    def files(self) -> list[dict]:
        return [{"id": i} for i in self._files & self._listed]

    def knowledge(self, knowledge_id: str) -> dict:
        return self._lookup(self._knowledge, knowledge_id)

    def file(self, file_id: str) -> dict:
        return self._lookup(self._files, file_id)

    def all_users(self) -> list[dict]:
        return [{"id": USER}]


@pytest.mark.parametrize("listed", [True, False])
def test_owners_are_confirmed_by_id_not_by_possibly_filtered_lists(listed: bool) -> None:
    existing_files, existing_kbs = {FILE, UNSURE_FILE}, {KB}
    directory = Directory(existing_files, existing_kbs, listed=(existing_files | existing_kbs) if listed else set(),
                          failing={UNSURE_FILE} if not listed else set())
    names = [KB, GONE_KB, f"file-{FILE}", f"file-{GONE_FILE}", f"file-{UNSURE_FILE}", f"user-memory-{USER}", "x-y"]
    owners = read_owners(directory, names)
    assert owners.gone == {GONE_KB, f"file-{GONE_FILE}"}
    assert {KB, f"file-{FILE}"} <= owners.alive and owners.users == {USER}
    assert owners.is_left_over(f"file-{UNSURE_FILE}") is (False if listed else None)  # a 500 is not a "gone"
    assert owners.is_left_over(f"user-memory-{GONE_USER}") is True
