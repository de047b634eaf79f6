"""Issue 12: Knowledge uploads through real Open WebUI survive SIGKILLs of Chroma and of our server.

Against real Open WebUI, Chroma behind the token proxy and our server, with the stack's supervisor
watching Chroma and the embeddings server. Worker threads upload SciFact abstracts into one Knowledge base
(upload, wait for processing, add: what the UI does); the test hands them files a few at a time so that
each kill lands while uploads are in flight: Chroma is SIGKILLed once all but the last few released files
are done, and once the supervisor has it back, the embeddings server the same way. Failed uploads are
then re-run as a user would, and the Knowledge base must hold every file once, each chunk once, with the
vectors our server gives for its text; nothing of a failed attempt may be left in it.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import ARTIFACTS, MODEL
from tests.servers import EVAL
from tests.stack import Stack, build_stack
from vector_bridge.cli import main as cli_main
from vector_bridge.openwebui import FileProcessingFailed, OpenWebUIClient
from vector_bridge.stack import Service, Supervisor
from vector_bridge.store import connect

pytestmark = [pytest.mark.openwebui, pytest.mark.slow]

FILES = 40
WORKERS = 4  # uploads in flight at once, and so at each kill
CHROMA_KILL_AFTER = 12  # files released before Chroma's kill: a few completed uploads come first
EMBED_KILL_AFTER = 28  # files released (in all) before the server's kill
ADMIN = {"name": "Admin", "email": "admin@example.com", "password": "a-long-test-password"}
OUTAGE_GRACE_S = 2.0
PROCESSING_TIMEOUT = 300  # seconds; a processing that hangs fails the test instead of blocking CI


@dataclass
class Attempt:
    """One upload as a user makes it; ``failed_at`` is the step Open WebUI refused or lost."""

    path: Path
    file_id: str | None = None
    failed_at: str | None = None  # "upload", "processing" or "add"
    error: str = ""
    started: float = field(default_factory=time.monotonic)
    ended: float = 0.0

    @property
    def name(self) -> str:
        return self.path.name


def upload_to_knowledge(webui: OpenWebUIClient, knowledge_id: str, path: Path) -> Attempt:
    """Upload, wait for Open WebUI's processing, add to the Knowledge base; whatever fails is recorded."""
    attempt = Attempt(path)
    step = "upload"
    try:
        attempt.file_id = webui.upload_file(path)["id"]
        step = "processing"
        webui.wait_for_processing(attempt.file_id, timeout=PROCESSING_TIMEOUT)
        step = "add"
        webui.add_file_to_knowledge(knowledge_id, attempt.file_id)
    except FileProcessingFailed:
        attempt.failed_at, attempt.error = "processing", processing_error(webui, attempt.file_id)
    except Exception as error:  # any refusal or lost connection: a user sees an error and retries later
        attempt.failed_at, attempt.error = step, f"{type(error).__name__}: {error}"
    attempt.ended = time.monotonic()
    return attempt


def processing_error(webui: OpenWebUIClient, file_id: str) -> str:
    """Why Open WebUI's processing failed: the status route leaves the reason out, the file record has it."""
    return str((webui.file(file_id).get("data") or {}).get("error") or "processing failed")


class Uploads:
    """Worker threads uploading the files the test releases to them, several at a time.

    Releasing files in steps is what makes the kills land mid-batch whatever the machine's speed: a kill
    waits until all but the last ``workers`` released files are done, so exactly those are in flight.
    """

    def __init__(self, url: str, token: str, knowledge_id: str, paths: list[Path], workers: int) -> None:
        self.url, self.token, self.knowledge_id = url, token, knowledge_id
        self.waiting = list(paths)
        self.todo: queue.Queue[Path | None] = queue.Queue()
        self.done: list[Attempt] = []
        self.changed = threading.Condition()
        self.released = 0
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]
        for thread in self.threads:
            thread.start()

    def _work(self) -> None:
        with OpenWebUIClient(self.url, self.token, timeout=120) as webui:
            while (path := self.todo.get()) is not None:
                attempt = upload_to_knowledge(webui, self.knowledge_id, path)
                with self.changed:
                    self.done.append(attempt)
                    self.changed.notify_all()

    def release(self, up_to: int) -> None:
        while self.released < min(up_to, len(self.waiting)):
            self.todo.put(self.waiting[self.released])
            self.released += 1

    def in_flight(self) -> int:
        with self.changed:
            return self.released - len(self.done)

    def wait_done(self, count: int, timeout: float = 600) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.done) >= count, timeout):
                raise AssertionError(f"only {len(self.done)} of {count} uploads finished in {timeout:.0f} s")

    def finish(self) -> list[Attempt]:
        self.release(len(self.waiting))
        self.wait_done(len(self.waiting))
        for _ in self.threads:
            self.todo.put(None)
        for thread in self.threads:
            thread.join(30)
        return self.done


@contextmanager
def supervised(services: list[Service]) -> Iterator[Supervisor]:
    """The supervisor `vector-bridge up` runs, restarting these services whenever one exits, in a thread.

    A service is spawned with the parent-death signal, which Linux sends when the *thread* that spawned
    it ends (prctl(2)), not the process: the thread outlives the services it restarted, so they are
    stopped first (and before the stack stops the rest, or the supervisor would start them again).
    """
    supervisor = Supervisor(services, poll_seconds=0.2)
    let_go = threading.Event()

    def run() -> None:
        supervisor.supervise()
        let_go.wait()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield supervisor
    finally:
        supervisor.stop()
        let_go.set()
        thread.join(60)


def sigkill(service: Service) -> subprocess.Popen:
    killed = service.process
    assert killed is not None and killed.poll() is None, f"{service.name} is not running"
    killed.send_signal(signal.SIGKILL)
    return killed


def wait_restarted(service: Service, killed: subprocess.Popen, timeout: float = 300) -> None:
    """Until the supervisor has a new process of ``service`` answering its readiness check."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = service.process
        if current is not killed and current is not None and current.poll() is None:
            try:
                if httpx.get(service.ready_url, timeout=2).status_code in service.ready_statuses:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    raise AssertionError(f"the supervisor did not bring {service.name} back within {timeout:.0f} s")


def scifact_files(folder: Path, count: int) -> list[Path]:
    """The first ``count`` SciFact abstracts as text files: real prose, two chunks or so each."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with (EVAL / "scifact" / "corpus.jsonl").open() as corpus:
        for line in corpus:
            doc = json.loads(line)
            path = folder / f"{doc['_id']}.txt"
            path.write_text(f"{doc['title']}\n\n{doc['text']}", encoding="utf-8")
            paths.append(path)
            if len(paths) == count:
                break
    return paths


@dataclass
class Chaos:
    webui: OpenWebUIClient
    knowledge_id: str
    paths: list[Path]
    first: list[Attempt]  # every upload of the batch, in the order they finished
    rerun: list[Attempt] = field(default_factory=list)  # the failed ones, re-run after the kills
    in_flight: dict[str, int] = field(default_factory=dict)  # uploads under way at each kill
    outages: dict[str, tuple[float, float]] = field(default_factory=dict)  # kill, ready again (monotonic)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    half_added: list[str] = field(default_factory=list)  # failed, yet listed in the Knowledge base
    orphans: dict[str, int] = field(default_factory=dict)  # after the batch: chunks of no listed file, by name

    @property
    def failed(self) -> list[Attempt]:
        return [attempt for attempt in self.first if attempt.failed_at]

    def down_s(self, label: str) -> float:
        killed, back = self.outages[label]
        return back - killed

    def outage_of(self, attempt: Attempt) -> str | None:
        """The outage this attempt overlapped. The end is widened by a little: Open WebUI may still be
        answering an upload with an error it met just before the service was ready again."""
        for label, (killed, back) in self.outages.items():
            if attempt.started <= back + OUTAGE_GRACE_S and attempt.ended >= killed:
                return label
        return None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    built = build_stack(tmp_path_factory.mktemp("chaos"), with_openwebui=True)
    with built.running(ARTIFACTS / "logs" / "chaos"), supervised([built.chroma, built.embed]):
        yield built


def kill_and_wait(stack_service: Service, uploads: Uploads, chaos: Chaos, label: str) -> None:
    """SIGKILL once all but the last few released uploads are done (those are in flight), then wait for
    the supervisor to restart the service."""
    uploads.wait_done(uploads.released - WORKERS)
    chaos.in_flight[label] = uploads.in_flight()
    started = time.monotonic()
    killed = sigkill(stack_service)
    # More of the batch arrives while the service is down, as it would from a user's upload dialog.
    uploads.release(uploads.released + WORKERS)
    wait_restarted(stack_service, killed)
    chaos.outages[label] = (started, time.monotonic())
    chaos.exit_codes[label] = killed.returncode


@pytest.fixture(scope="module")
def chaos(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Chaos:
    webui = OpenWebUIClient(stack.settings.openwebui_url)
    token = webui.sign_up(**ADMIN)["token"]
    knowledge_id = webui.create_knowledge("Chaos", "Uploaded while Chroma and the embeddings server are killed")["id"]
    paths = scifact_files(tmp_path_factory.mktemp("abstracts"), FILES)

    uploads = Uploads(stack.settings.openwebui_url, token, knowledge_id, paths, WORKERS)
    result = Chaos(webui, knowledge_id, paths, first=[])
    uploads.release(CHROMA_KILL_AFTER)
    kill_and_wait(stack.chroma, uploads, result, "chroma")
    uploads.release(EMBED_KILL_AFTER)
    kill_and_wait(stack.embed, uploads, result, "embeddings")
    result.first = uploads.finish()

    # What the kills left, before anyone tidies up: failed files Open WebUI lists anyway, and chunks in
    # the Knowledge base's collection of no listed file (neither has shown up so far; see the tests).
    listed = {record["id"]: record["filename"] for record in webui.knowledge_files(knowledge_id)}
    result.orphans = dict(Counter(m["name"] for m in stored(stack, knowledge_id)["metadatas"]
                                  if m["file_id"] not in listed))
    failed_ids = {attempt.file_id for attempt in result.failed}
    result.half_added = [name for file_id, name in listed.items() if file_id in failed_ids]
    # As a user would: a failed file Open WebUI lists anyway is taken out, then every failed one is
    # uploaded again now that everything is back.
    for file_id in listed.keys() & failed_ids:
        webui.remove_file_from_knowledge(knowledge_id, file_id)
    # Chunks Open WebUI stored for a file whose add then failed block its re-upload ("Duplicate content
    # detected"): `vector-bridge repair` removes chunks of files the Knowledge base does not list.
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"EMBED_CHROMA_PORT": str(stack.settings.chroma_port), "OPENWEBUI_URL": webui.url,
                            "EMBED_CHROMA_TOKEN": stack.settings.chroma_token.get_secret_value(),
                            "OPENWEBUI_API_KEY": token}.items():
            patch.setenv(name, value)
        assert cli_main(["repair", "--knowledge", knowledge_id, "--json"]) == 0
    result.rerun = [upload_to_knowledge(webui, knowledge_id, attempt.path) for attempt in result.failed]
    return result


def stored(stack: Stack, collection: str) -> dict:
    return connect(stack.settings).get_collection(collection).get(include=["documents", "metadatas", "embeddings"])


def our_embeddings(stack: Stack, texts: list[str]) -> np.ndarray:
    vectors = []
    for start in range(0, len(texts), 128):
        response = httpx.post(f"{stack.settings.embeddings_url}/embeddings",
                              json={"input": texts[start:start + 128], "model": MODEL}, timeout=300)
        response.raise_for_status()
        vectors += [item["embedding"] for item in response.json()["data"]]
    return np.array(vectors, dtype=np.float32)


def test_each_kill_landed_mid_batch_and_the_supervisor_restarted_it(stack: Stack, chaos: Chaos) -> None:
    assert chaos.exit_codes == {"chroma": -signal.SIGKILL, "embeddings": -signal.SIGKILL}, chaos.exit_codes
    # Exactly WORKERS unless one finished in the instant between the wait and the kill.
    assert min(chaos.in_flight.values()) >= 1, chaos.in_flight
    assert (stack.chroma.restarts, stack.embed.restarts) == (1, 1)
    assert sorted(a.name for a in chaos.first) == sorted(p.name for p in chaos.paths)


def test_uploads_fail_only_while_a_service_is_down(chaos: Chaos) -> None:
    outside = [(a.name, a.failed_at, a.error) for a in chaos.failed if chaos.outage_of(a) is None]
    assert not outside, outside
    by_outage = Counter((chaos.outage_of(a), a.failed_at) for a in chaos.failed)
    print(f"\nchaos: failed uploads by outage and step: {dict(by_outage)}; in flight at the kills: "
          f"{chaos.in_flight}; half-added: {chaos.half_added}; orphan chunks: {chaos.orphans}; "
          f"errors: {sorted({a.error[:120] for a in chaos.failed})}")


def test_failed_uploads_succeed_when_re_run(chaos: Chaos) -> None:
    outcome = [(a.name, a.failed_at, a.error) for a in chaos.rerun if a.failed_at]
    assert not outcome, outcome


def test_open_webui_lists_each_file_once(chaos: Chaos) -> None:
    listed = Counter(record["filename"] for record in chaos.webui.knowledge_files(chaos.knowledge_id))
    assert listed == Counter(path.name for path in chaos.paths), listed


def test_each_files_chunks_are_in_the_knowledge_base_exactly_once(stack: Stack, chaos: Chaos) -> None:
    listed = {record["id"]: record["filename"] for record in chaos.webui.knowledge_files(chaos.knowledge_id)}
    chunks = stored(stack, chaos.knowledge_id)
    by_file: dict[str, list[str]] = defaultdict(list)
    for document, metadata in zip(chunks["documents"], chunks["metadatas"]):
        assert metadata["name"] == listed.get(metadata["file_id"]), ("a chunk of no listed file", metadata)
        by_file[metadata["file_id"]].append(document)
    # Nothing lost: every listed file has chunks; nothing left over from a failed attempt (checked above).
    assert set(by_file) == set(listed)
    texts = {path.name: words(path.read_text(encoding="utf-8")) for path in chaos.paths}
    for file_id, documents in by_file.items():
        pieces = Counter(map(words, documents))
        duplicated = [text[:60] for text, n in pieces.items() if n > 1]
        assert not duplicated, (listed[file_id], duplicated)
        # The chunks Open WebUI made of the file at upload, all of them, each a piece of the file's text.
        assert pieces == Counter(map(words, stored(stack, f"file-{file_id}")["documents"])), listed[file_id]
        assert all(piece in texts[listed[file_id]] for piece in pieces), listed[file_id]


def words(text: str) -> str:
    """Text with its whitespace normalised: Open WebUI splits a file's chunks again when it adds them to a
    Knowledge base, which changes whitespace at line ends ("title  \ntext" becomes "title\ntext")."""
    return " ".join(text.split())


def test_each_stored_vector_is_what_our_server_returns(stack: Stack, chaos: Chaos) -> None:
    chunks = stored(stack, chaos.knowledge_id)
    # Open WebUI embeds chunks with newlines replaced by spaces; Chroma keeps the original text.
    ours = our_embeddings(stack, [document.replace("\n", " ") for document in chunks["documents"]])
    theirs = np.array(chunks["embeddings"], dtype=np.float32)
    cosines = np.sum(ours * theirs, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1))
    assert cosines.min() >= 0.999, sorted(cosines)[:5]
    print(f"\nchaos: {len(chaos.paths)} files, {len(cosines)} chunks, {len(chaos.failed)} uploads failed during "
          f"the kills and were re-run; Chroma down {chaos.down_s('chroma'):.1f} s, "
          f"embeddings server down {chaos.down_s('embeddings'):.1f} s; min cosine {cosines.min():.5f}")


def test_repair_removes_only_chunks_of_files_the_knowledge_base_does_not_list(stack: Stack, chaos: Chaos,
                                                                               monkeypatch: pytest.MonkeyPatch,
                                                                               capsys: pytest.CaptureFixture) -> None:
    collection = connect(stack.settings).get_collection(chaos.knowledge_id)
    before = collection.count()
    collection.add(ids=["left-behind"], documents=["a chunk of a file whose add failed"],
                   embeddings=our_embeddings(stack, ["a chunk of a file whose add failed"]),
                   metadatas=[{"file_id": "no-such-file", "name": "gone.txt"}])
    for name, value in {"EMBED_CHROMA_PORT": str(stack.settings.chroma_port), "OPENWEBUI_URL": chaos.webui.url,
                        "EMBED_CHROMA_TOKEN": stack.settings.chroma_token.get_secret_value(),
                        "OPENWEBUI_API_KEY": chaos.webui.http.headers["Authorization"].split()[1]}.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert cli_main(["repair", "--knowledge", chaos.knowledge_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed_chunks"] == 1
    assert collection.count() == before
