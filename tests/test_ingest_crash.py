"""`vector-bridge ingest` is safe at every kill point, survives an Open WebUI restart, skips hidden files.

Against real Open WebUI, Chroma behind nginx and our server. A replace has four moments a kill can fall
between; each test leaves a Knowledge base in the state such a kill leaves (driving the same Open WebUI
calls ingest makes, up to that point, or killing a real ingest process), runs ingest again, and checks
the outcome in Open WebUI's listing and in the Chroma collection Open WebUI searches: one file per name,
with the local file's hash, every chunk belonging to a listed file, none of the old version left.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.conftest import ARTIFACTS
from tests.servers import EVAL
from tests.stack import Stack, build_stack
from vector_bridge.ingest import (Calls, IngestError, Report, RetryPolicy, Unreachable, find_files, ingest,
                                  sha256)
from vector_bridge.openwebui import FileProcessingFailed, OpenWebUIClient, OpenWebUIError
from vector_bridge.store import connect

EMBED_KEY = secrets.token_hex(24)
ADMIN_PASSWORD = "a-long-test-password"
FAST_RETRY = RetryPolicy(tries=3, first_delay=0.01)


def abstracts(count: int, skip: int = 0) -> list[str]:
    """SciFact abstracts as plain text: real prose, so each chunk has distinct text."""
    texts: list[str] = []
    with (EVAL / "scifact" / "corpus.jsonl").open() as corpus:
        for index, line in enumerate(corpus):
            if index >= skip:
                doc = json.loads(line)
                texts.append(f"{doc['title']}\n\n{doc['text']}")
            if len(texts) == count:
                return texts
    return texts


# ---------------------------------------------------------------- without a stack


def test_hidden_folders_and_files_are_passed_over(tmp_path: Path) -> None:
    for name in ("a.md", "sub/b.txt", ".git/HEAD", ".git/notes.md", ".venv/lib/readme.md", ".DS_Store",
                 "sub/.hidden.md", "sub/.cache/page.html", "sub/notes.xyz"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("text")
    explicit = tmp_path / "sub" / ".explicit.md"
    explicit.write_text("named on the command line")

    found, skipped = find_files([tmp_path, explicit])
    assert found == [tmp_path / "a.md", tmp_path / "sub" / "b.txt", explicit]
    # Hidden files are not even reported: a .git folder would drown the report.
    assert [(item.path, item.outcome) for item in skipped] == [(str(tmp_path / "sub" / "notes.xyz"), "skipped")]


def test_retries_connection_errors_and_5xx_with_backoff_never_4xx() -> None:
    calls = Calls(RetryPolicy(tries=4, first_delay=0.05))
    attempts: list[float] = []

    def flaky() -> str:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise httpx.ConnectError("refused")
        if len(attempts) == 2:
            raise OpenWebUIError("POST /api/v1/files/: 502 Bad Gateway", 502)
        return "done"

    assert calls("upload", flaky) == "done" and len(attempts) == 3 and calls.outages == 1
    assert attempts[2] - attempts[1] >= 2 * (attempts[1] - attempts[0]) * 0.8  # the pause doubles

    refused: list[int] = []

    def bad_request() -> None:
        refused.append(1)
        raise OpenWebUIError("POST /api/v1/files/: 400 File type xyz is not allowed", 400)

    with pytest.raises(OpenWebUIError):
        calls("upload", bad_request)
    assert refused == [1]

    with pytest.raises(Unreachable, match=r"upload: Open WebUI still failing after 4 tries over \d+ s: ConnectError"):
        calls("upload", lambda: (_ for _ in ()).throw(httpx.ConnectError("refused")))

    # A lost answer: before asking again, the check finds the first try took effect and returns that.
    tries: list[int] = []

    def lost_answer() -> dict:
        tries.append(1)
        raise httpx.ReadError("connection reset")

    assert calls("upload", lost_answer, before_retry=lambda: {"id": "stored"}) == {"id": "stored"}
    assert tries == [1]


# ---------------------------------------------------------------- against real Open WebUI

@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    built = build_stack(tmp_path_factory.mktemp("ingest-crash"), with_openwebui=True, api_keys=[EMBED_KEY])
    with built.running(ARTIFACTS / "logs" / "ingest-crash"):
        yield built


@pytest.fixture(scope="module")
def environment(stack: Stack) -> dict[str, str]:
    """What a user gives the CLI: the store (through the proxy), our server, Open WebUI and an admin token."""
    token = OpenWebUIClient(stack.settings.openwebui_url).sign_up("Admin", "admin@example.com", ADMIN_PASSWORD)["token"]
    return {"EMBED_PORT": str(stack.settings.port), "EMBED_CHROMA_PORT": str(stack.settings.chroma_port),
            "EMBED_CHROMA_TOKEN": stack.settings.chroma_token.get_secret_value(),
            "OPENWEBUI_URL": stack.settings.openwebui_url, "OPENWEBUI_API_KEY": token, "EMBED_API_KEYS": EMBED_KEY}


@pytest.fixture
def webui(environment: dict[str, str]) -> Iterator[OpenWebUIClient]:
    with OpenWebUIClient(environment["OPENWEBUI_URL"], environment["OPENWEBUI_API_KEY"]) as client:
        yield client


def make_folder(folder: Path, texts: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def assert_one_current_copy_each(stack: Stack, webui: OpenWebUIClient, knowledge_id: str, folder: Path) -> None:
    """Exactly one file per local name, holding the local file's bytes (its SHA-256); in the collection
    Open WebUI searches, every listed file has chunks and every chunk belongs to a listed file."""
    listed = webui.knowledge_files(knowledge_id)
    names = Counter(record["filename"] for record in listed)
    local = sorted(path.name for path in folder.iterdir())
    assert names == Counter(local), names
    assert {r["filename"]: r["meta"]["file_hash"] for r in listed} == {name: sha256(folder / name) for name in local}
    store = connect(stack.settings)
    chunks = Counter(m["file_id"] for m in store.get_collection(knowledge_id).get(include=["metadatas"])["metadatas"])
    assert set(chunks) == {record["id"] for record in listed}, (chunks, listed)
    # Each file's chunks are in the Knowledge base once: as many as Open WebUI made of the file.
    assert chunks == {r["id"]: store.get_collection(f"file-{r['id']}").count() for r in listed}


def upload_as_a_run_does(webui: OpenWebUIClient, knowledge_id: str, path: Path) -> str:
    """The upload ingest makes: Open WebUI processes and links it in the background, client or no client."""
    return webui.upload_file(path, {"knowledge_id": knowledge_id, "file_hash": sha256(path)})["id"]


def outcomes(report: Report) -> dict[str, str]:
    return {Path(item.path).name: item.outcome for item in report.files}


KILL_POINTS = ["before-upload", "uploaded-not-processed", "added-not-removed", "after-removal"]


@pytest.mark.openwebui
@pytest.mark.slow
@pytest.mark.parametrize("kill_point", KILL_POINTS)
def test_replace_resumed_from_each_kill_point(kill_point: str, stack: Stack, webui: OpenWebUIClient,
                                              tmp_path: Path) -> None:
    texts = abstracts(3, skip=10 * KILL_POINTS.index(kill_point))
    folder = make_folder(tmp_path / "docs", {"changing.txt": texts[0], "steady.txt": texts[1], "notes.md": texts[2]})
    knowledge_id = ingest(webui, f"kill {kill_point}", [folder], create=True, progress=False).knowledge_id
    [old] = [r["id"] for r in webui.knowledge_files(knowledge_id) if r["filename"] == "changing.txt"]

    # The new version is long enough (about 50 chunks) that Open WebUI is still embedding it when the
    # next run starts: the "uploaded, not processed" state lasts seconds, not milliseconds.
    changed = folder / "changing.txt"
    changed.write_text("\n\n".join(abstracts(30, skip=400 + 100 * KILL_POINTS.index(kill_point))), encoding="utf-8")
    if kill_point != "before-upload":
        new = upload_as_a_run_does(webui, knowledge_id, changed)
        if kill_point == "uploaded-not-processed":
            assert webui.processing_status(new) in ("pending", "processing")
        else:
            webui.wait_for_processing(new)
            if kill_point == "after-removal":
                webui.remove_file_from_knowledge(knowledge_id, old)

    started = time.monotonic()
    report = ingest(webui, knowledge_id, [folder], progress=False)
    took = time.monotonic() - started
    expected = {"before-upload": "replaced", "uploaded-not-processed": "replaced", "added-not-removed": "replaced",
                "after-removal": "unchanged"}[kill_point]
    assert outcomes(report) == {"changing.txt": expected, "steady.txt": "unchanged", "notes.md": "unchanged"}, report
    assert_one_current_copy_each(stack, webui, knowledge_id, folder)
    if kill_point != "before-upload":  # the run took the earlier upload instead of sending a second copy
        [item] = [f for f in report.files if Path(f.path).name == "changing.txt"]
        assert item.file_id == new, item
        if kill_point == "uploaded-not-processed":
            assert item.detail == "an earlier run's upload"
    print(f"{kill_point}: resumed in {took:.1f} s")

    # And a further run has nothing left to do.
    again = ingest(webui, knowledge_id, [folder], progress=False)
    assert set(outcomes(again).values()) == {"unchanged"}


@pytest.mark.openwebui
@pytest.mark.slow
def test_sigkilled_right_after_the_upload_then_resumed(stack: Stack, environment: dict[str, str],
                                                       webui: OpenWebUIClient, tmp_path: Path) -> None:
    texts = abstracts(2, skip=60)
    folder = make_folder(tmp_path / "docs", {"changing.txt": texts[0], "steady.txt": texts[1]})
    knowledge_id = ingest(webui, "sigkilled", [folder], create=True, progress=False).knowledge_id
    changed = folder / "changing.txt"
    changed.write_text("\n\n".join(abstracts(30, skip=900)), encoding="utf-8")
    digest = sha256(changed)

    worker = subprocess.Popen([sys.executable, "-m", "vector_bridge.cli", "ingest", str(folder),
                               "--knowledge", knowledge_id, "--json"],
                              env={**os.environ, **environment}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Killed the moment Open WebUI holds the new version: it is processing, the old one still listed.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and worker.poll() is None:
        if any((r["meta"] or {}).get("file_hash") == digest for r in webui.search_files("changing.txt")):
            break
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert worker.returncode == -signal.SIGKILL
    assert Counter(r["filename"] for r in webui.knowledge_files(knowledge_id))["changing.txt"] == 1

    report = ingest(webui, knowledge_id, [folder], progress=False)
    assert outcomes(report) == {"changing.txt": "replaced", "steady.txt": "unchanged"}, report
    assert_one_current_copy_each(stack, webui, knowledge_id, folder)
    # Nothing stranded: every upload of the new version is the one in the Knowledge base.
    copies = [r for r in webui.search_files("changing.txt") if (r["meta"] or {}).get("file_hash") == digest]
    assert len(copies) == 1, copies


@pytest.mark.openwebui
@pytest.mark.slow
def test_new_version_with_the_same_text_replaces_the_old(stack: Stack, webui: OpenWebUIClient, tmp_path: Path) -> None:
    """New bytes, same extracted text (here Windows line endings): Open WebUI refuses the new copy's text as
    a duplicate of the old one's, so the swap goes old-out-then-new-in; a kill between leaves the name
    absent, and the next run puts it back."""
    texts = abstracts(2, skip=120)
    folder = make_folder(tmp_path / "docs", {"page.txt": texts[0], "other.txt": texts[1]})
    knowledge_id = ingest(webui, "same text", [folder], create=True, progress=False).knowledge_id
    page = folder / "page.txt"
    page.write_bytes(texts[0].replace("\n", "\r\n").encode())
    report = ingest(webui, knowledge_id, [folder], progress=False)
    assert outcomes(report) == {"page.txt": "replaced", "other.txt": "unchanged"}, report
    assert_one_current_copy_each(stack, webui, knowledge_id, folder)

    # Killed inside that swap: the new upload refused, the old copy removed, the new one not yet added.
    page.write_text(texts[0], encoding="utf-8")
    refused = upload_as_a_run_does(webui, knowledge_id, page)
    with pytest.raises(FileProcessingFailed):
        webui.wait_for_processing(refused)
    assert "Duplicate content" in webui.file(refused)["data"]["error"]
    [old] = [r["id"] for r in webui.knowledge_files(knowledge_id) if r["filename"] == "page.txt"]
    webui.remove_file_from_knowledge(knowledge_id, old)
    report = ingest(webui, knowledge_id, [folder], progress=False)
    assert outcomes(report) == {"page.txt": "uploaded", "other.txt": "unchanged"}, report
    assert_one_current_copy_each(stack, webui, knowledge_id, folder)


@pytest.mark.openwebui
@pytest.mark.slow
def test_hidden_folders_are_not_uploaded(stack: Stack, webui: OpenWebUIClient, tmp_path: Path) -> None:
    texts = abstracts(4, skip=80)
    folder = make_folder(tmp_path / "repo", {"readme.md": texts[0], "paper.txt": texts[1]})
    for name, text in ((".git/description.txt", texts[2]), (".venv/lib/license.md", texts[3]),
                       (".DS_Store", "binary"), ("drafts/.draft.md", texts[2])):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    report = ingest(webui, "hidden", [folder], create=True, progress=False)
    assert outcomes(report) == {"readme.md": "uploaded", "paper.txt": "uploaded"}, report
    listed = sorted(r["filename"] for r in webui.knowledge_files(report.knowledge_id))
    assert listed == ["paper.txt", "readme.md"]


@pytest.mark.openwebui
@pytest.mark.slow
def test_open_webui_restarted_mid_run(stack: Stack, environment: dict[str, str], webui: OpenWebUIClient,
                                     tmp_path: Path) -> None:
    texts = abstracts(40, skip=1500)
    folder = make_folder(tmp_path / "docs", {f"doc-{i:02d}.txt": text for i, text in enumerate(texts)})
    knowledge_id = webui.create_knowledge("restarted")["id"]
    result: dict[str, Report | BaseException] = {}

    def run() -> None:
        try:
            with OpenWebUIClient(environment["OPENWEBUI_URL"], environment["OPENWEBUI_API_KEY"]) as client:
                result["report"] = ingest(client, knowledge_id, [folder], concurrency=2, progress=False)
        except BaseException as error:  # handed to the test thread
            result["report"] = error

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 120
    while len(webui.knowledge_files(knowledge_id)) < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker.is_alive()  # the restart falls inside the run
    started = time.monotonic()
    stack.restart(stack.openwebui)  # stop (its background processing dies with it), start, wait until healthy
    restart_s = time.monotonic() - started
    worker.join(600)
    first = result["report"]
    if isinstance(first, BaseException):
        raise first
    failed = [item for item in first.files if item.outcome == "failed"]
    # Retries ride the restart out; whatever they could not is reported with Open WebUI's reason.
    assert all(item.detail for item in failed), failed
    print(f"Open WebUI restart {restart_s:.0f} s; first run: {first.to_dict()['counts']}; "
          f"notes: {[item.detail for item in first.files if item.detail][:5]}")

    second = ingest(webui, knowledge_id, [folder], progress=False)
    assert second.ok, second
    assert_one_current_copy_each(stack, webui, knowledge_id, folder)
    if not failed:
        assert second.count("unchanged") == 40


@pytest.mark.openwebui
@pytest.mark.slow
def test_open_webui_killed_while_processing_a_file(stack: Stack, environment: dict[str, str],
                                                   webui: OpenWebUIClient, tmp_path: Path) -> None:
    """A crash, not a clean stop: the file Open WebUI was embedding in the background is never finished by
    it. The run rides out the outage on retries, then finishes that file itself."""
    folder = make_folder(tmp_path / "docs", {"long.txt": "\n\n".join(abstracts(40, skip=2000))})
    knowledge_id = webui.create_knowledge("crashed")["id"]
    result: dict[str, Report | BaseException] = {}

    def run() -> None:
        try:
            with OpenWebUIClient(environment["OPENWEBUI_URL"], environment["OPENWEBUI_API_KEY"]) as client:
                result["report"] = ingest(client, knowledge_id, [folder], progress=False)
        except BaseException as error:  # handed to the test thread
            result["report"] = error

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
            (r.get("data") or {}).get("status") == "processing" for r in webui.search_files("long.txt")):
        time.sleep(0.05)
    time.sleep(2)  # into the embedding
    assert worker.is_alive()
    stack.openwebui.process.send_signal(signal.SIGKILL)
    stack.openwebui.process.wait()
    stack.openwebui.spawn()
    stack.openwebui.wait_ready()
    worker.join(600)
    report = result["report"]
    if isinstance(report, BaseException):
        raise report
    [item] = report.files
    assert item.outcome == "uploaded" and "Open WebUI stopped" in item.detail, item
    print(f"killed mid-processing: {item.detail}")
    assert_one_current_copy_each(stack, webui, knowledge_id, folder)


@pytest.mark.openwebui
@pytest.mark.slow
def test_upload_orphaned_by_a_crash_between_runs_is_finished(stack: Stack, webui: OpenWebUIClient,
                                                              tmp_path: Path) -> None:
    """ingest killed, then Open WebUI crashed while processing the file: the upload sits in "processing"
    for good. The next run sees it make no progress for ``stall_after`` and finishes it, once."""
    folder = make_folder(tmp_path / "docs", {"orphan.txt": "\n\n".join(abstracts(30, skip=2600))})
    knowledge_id = webui.create_knowledge("orphaned")["id"]
    orphan = upload_as_a_run_does(webui, knowledge_id, folder / "orphan.txt")
    deadline = time.monotonic() + 60
    while webui.processing_status(orphan) == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)
    stack.openwebui.process.send_signal(signal.SIGKILL)
    stack.openwebui.process.wait()
    stack.openwebui.spawn()
    stack.openwebui.wait_ready()
    assert webui.processing_status(orphan) == "processing"  # never to move again

    report = ingest(webui, knowledge_id, [folder], progress=False, stall_after=5)
    [item] = report.files
    assert item.outcome == "uploaded", item
    print(f"orphan: {item.detail or 'uploaded again'}")
    assert_one_current_copy_each(stack, webui, knowledge_id, folder)


@pytest.mark.openwebui
def test_missing_knowledge_base_is_an_error_not_a_retry(stack: Stack, webui: OpenWebUIClient, tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="pass --create"):
        ingest(webui, "no such base", [tmp_path], progress=False, retry=FAST_RETRY)
