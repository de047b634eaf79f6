"""Bring outside documents into an Open WebUI Knowledge base through Open WebUI's own API.

Files go in exactly as the Knowledge page uploads them: Open WebUI extracts, chunks and embeds them
(through our embeddings server) and lists them in its UI. Files are matched by name among the Knowledge
base's top-level files, and each file's SHA-256 is compared with the one Open WebUI recorded at upload.

Safe at every kill point, because every run starts from what Open WebUI holds, not from what a run meant
to do:

- Files are uploaded with the Knowledge base named in their metadata, so Open WebUI finishes processing
  and linking a file even if this client dies after the upload. A later run finds such an upload still in
  progress (by name, Knowledge base and hash) and waits for it instead of uploading a second copy.
- Work Open WebUI lost (it restarted while processing a file in the background) is taken over with
  ``file/add``, which indexes and links the file in one synchronous call, or else uploaded again.
- Older versions and duplicate copies of a name are removed only at the end of a run, from a fresh listing,
  and only when a complete copy with the local file's hash is linked: a kill leaves at worst an extra copy,
  never none, and the next run removes it.
- Calls that fail with a connection error or a 5xx are retried with exponential backoff; 4xx never are.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import httpx
from tqdm import tqdm

from vector_bridge.openwebui import OpenWebUIClient, OpenWebUIError
from vector_bridge.search import KnowledgeNotFound, knowledge_collection

# What Open WebUI's default extraction reads well; anything else is reported as skipped.
SUPPORTED = {".pdf", ".docx", ".html", ".htm", ".md", ".markdown", ".txt"}

Outcome = Literal["uploaded", "replaced", "unchanged", "failed", "skipped"]
Settled = Literal["completed", "failed", "stalled"]
T = TypeVar("T")

# Open WebUI's reason for refusing text the Knowledge base already holds from another file.
SAME_TEXT_REFUSED = "Duplicate content detected. Please provide unique content to proceed."
# Open WebUI moves an upload from "pending" to "processing" as soon as it has answered the upload, so an
# upload pending for longer was never started: the Open WebUI that took it has stopped.
PENDING_NEVER_STARTED_AFTER = 60.0


class IngestError(RuntimeError):
    pass


class Unreachable(IngestError):
    """Open WebUI kept answering with connection errors or 5xx through every retry."""


class ProcessingFailed(IngestError):
    """Open WebUI took the upload but could not extract or embed it; the message is its reason."""


@dataclass
class FileOutcome:
    path: str
    outcome: Outcome
    detail: str = ""
    file_id: str | None = None


@dataclass
class Report:
    knowledge_id: str
    files: list[FileOutcome] = field(default_factory=list)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for f in self.files if f.outcome == outcome)

    @property
    def ok(self) -> bool:
        return self.count("failed") == 0

    def to_dict(self) -> dict:
        counts = {name: self.count(name) for name in ("uploaded", "replaced", "unchanged", "failed", "skipped")}
        return {"knowledge_id": self.knowledge_id, "counts": counts, "files": [asdict(f) for f in self.files]}


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for connection errors and 5xx: 7 tries, 1, 2, 4, 8, 16 and 32 s apart (about a minute: an Open
    WebUI restart takes 30 s on 2 idle cores, and more than 31 s was measured with the machine busy). A 4xx is
    an answer, not an outage: asking again would change nothing."""

    tries: int = 7
    first_delay: float = 1.0
    factor: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = self.first_delay
        for _ in range(self.tries - 1):
            yield delay
            delay *= self.factor


def transient(error: Exception) -> bool:
    if isinstance(error, httpx.TransportError):  # refused, reset, timed out
        return True
    return isinstance(error, OpenWebUIError) and error.status is not None and error.status >= 500


def describe(error: Exception) -> str:
    return str(error) if isinstance(error, OpenWebUIError) else f"{type(error).__name__}: {error}"


class Calls:
    """Runs Open WebUI calls with retries, and counts refused connections: Open WebUI was down, and the
    files it was processing in the background when it stopped will never finish."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self._lock = threading.Lock()
        self._outages = 0

    @property
    def outages(self) -> int:
        return self._outages

    def __call__(self, what: str, call: Callable[[], T], *, before_retry: Callable[[], T | None] | None = None) -> T:
        """``call()``, retried; ``before_retry`` first checks whether a failed try took effect after all
        (an answer lost on the way back) and returns that instead of doing it twice."""
        started = time.monotonic()
        delays = self.policy.delays()
        retrying = False
        while True:
            try:
                if retrying and before_retry is not None and (done := before_retry()) is not None:
                    return done
                return call()
            except (httpx.TransportError, OpenWebUIError) as error:
                if not transient(error):
                    raise
                if isinstance(error, httpx.ConnectError):
                    with self._lock:
                        self._outages += 1
                delay = next(delays, None)
                if delay is None:
                    raise Unreachable(f"{what}: Open WebUI still failing after {self.policy.tries} tries over "
                                      f"{time.monotonic() - started:.0f} s: {describe(error)}") from error
                time.sleep(delay)
                retrying = True


@dataclass(frozen=True)
class Copy:
    """A file of the Knowledge base, or one uploaded for it, as Open WebUI lists it."""

    id: str
    name: str
    sha256: str | None  # of the uploaded bytes, recorded at upload
    text_hash: str | None  # of the extracted text: removing a file removes every chunk with its text hash
    knowledge_id: str | None  # the Knowledge base it was uploaded for
    status: str | None
    created_at: float
    updated_at: float
    size: int

    @classmethod
    def of(cls, record: dict) -> Copy:
        meta = record.get("meta") or {}
        created = float(record.get("created_at") or 0)
        return cls(record["id"], record.get("filename") or meta.get("name") or "", meta.get("file_hash"),
                   record.get("hash"), (meta.get("data") or {}).get("knowledge_id"),
                   (record.get("data") or {}).get("status"), created, float(record.get("updated_at") or created),
                   int(meta.get("size") or 0))

    def abandoned(self, stall_after: float) -> bool:
        """Left unfinished by an Open WebUI that has stopped since (Open WebUI's timestamps against this
        machine's clock: an hour's skew would matter, seconds do not)."""
        now = time.time()
        if self.status == "pending":
            return now - self.created_at > PENDING_NEVER_STARTED_AFTER
        return self.status == "processing" and now - self.updated_at > stall_after


def find_files(paths: Iterable[Path]) -> tuple[list[Path], list[FileOutcome]]:
    """Supported files under the given files and folders (recursive), and the ones left out with why.

    Hidden folders and files (any name below a given folder that starts with ".": .git, .venv, .DS_Store)
    are passed over silently; a hidden file or folder named on the command line is taken, as asked."""
    found: list[Path] = []
    skipped: list[FileOutcome] = []
    for path in paths:
        if not path.exists():
            skipped.append(FileOutcome(str(path), "failed", "no such file or folder"))
            continue
        for candidate in walk(path) if path.is_dir() else [path]:
            if candidate.suffix.lower() in SUPPORTED:
                found.append(candidate)
            else:
                skipped.append(FileOutcome(str(candidate), "skipped", f"unsupported type {candidate.suffix or '(none)'}"))
    return found, skipped


def walk(folder: Path) -> Iterator[Path]:
    """Files under ``folder`` in name order, not descending into hidden folders (a .git or .venv is large)."""
    for root, folders, names in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        for name in sorted(names):
            candidate = Path(root) / name
            if not name.startswith(".") and candidate.is_file():
                yield candidate


def text_hash(text: str | None) -> str | None:
    """The hash Open WebUI gives a file's extracted text (and every chunk of it); it clears a failed file's,
    so it is computed here from the text the record keeps."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest() if text is not None else None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def knowledge_copies(webui: OpenWebUIClient, knowledge_id: str) -> dict[str, list[Copy]]:
    """The Knowledge base's top-level files by name (ingest puts nothing in folders; same names in folders
    are other files, not copies)."""
    copies: dict[str, list[Copy]] = {}
    for record in webui.knowledge_files(knowledge_id):
        if not record.get("directory_id"):
            copy = Copy.of(record)
            copies.setdefault(copy.name, []).append(copy)
    return copies


def resolve_knowledge(webui: OpenWebUIClient, knowledge: str, create: bool) -> str:
    try:
        return knowledge_collection(webui, knowledge)
    except KnowledgeNotFound:
        if not create:
            raise IngestError(f"no Knowledge base named {knowledge!r}; pass --create to make it") from None
        return webui.create_knowledge(knowledge)["id"]


class Uploader:
    """Gets one complete, linked copy of a local file into the Knowledge base, reusing what an earlier run
    left in flight."""

    def __init__(self, webui: OpenWebUIClient, calls: Calls, knowledge_id: str, stall_after: float | None) -> None:
        self.webui = webui
        self.calls = calls
        self.knowledge_id = knowledge_id
        self.stall_after = stall_after

    def earlier_uploads(self, name: str, digest: str) -> list[Copy]:
        """Uploads of this very file for this Knowledge base, newest first."""
        found = self.calls(f"look for earlier uploads of {name}", lambda: self.webui.search_files(name))
        return [copy for copy in map(Copy.of, found)
                if copy.name == name and copy.knowledge_id == self.knowledge_id and copy.sha256 == digest]

    def obtain(self, path: Path, digest: str) -> tuple[str, str]:
        """The id of a complete copy with this hash, linked to the Knowledge base, and how it got there when
        that was not a plain upload."""
        earlier = self.earlier_uploads(path.name, digest)
        for copy in earlier:
            if copy.status == "completed":
                return copy.id, "an earlier run's upload"  # completed since this run listed the Knowledge base
            if copy.status in ("pending", "processing"):
                bound = self.stall_bound(copy.size)
                state = "stalled" if copy.abandoned(bound) else self.settle(copy.id, bound)
                if state == "completed":
                    return copy.id, "an earlier run's upload"
                if state == "stalled" and self.take_over(copy.id):
                    return copy.id, "an earlier run's upload, lost by Open WebUI, finished with file/add"
                break  # failed, or lost before its text was extracted: upload afresh
        known = {copy.id for copy in earlier}
        notes: list[str] = []
        # One more upload if Open WebUI stops mid-processing before the file's text was extracted.
        for _ in range(2):
            file_id = self.upload(path, digest, known)
            known.add(file_id)
            state = self.settle(file_id, self.stall_bound(path.stat().st_size))
            if state == "completed":
                return file_id, "; ".join(notes)
            if state == "stalled":
                if self.take_over(file_id):
                    notes.append("Open WebUI stopped while processing it; finished with file/add")
                    return file_id, "; ".join(notes)
                notes.append("Open WebUI stopped before extracting it; uploaded again")
                continue
            # The status route leaves the reason out; the file's record has it, and the extracted text.
            data = self.calls(f"read why {path.name} failed", lambda: self.webui.file(file_id)).get("data") or {}
            reason = str(data.get("error") or "processing failed")
            if SAME_TEXT_REFUSED in reason and self.swap_same_text(path.name, file_id, text_hash(data.get("content"))):
                return file_id, "same text as the version it replaces (only the bytes changed)"
            raise ProcessingFailed(f"Open WebUI could not process it: {reason}")
        raise ProcessingFailed("Open WebUI stopped twice while processing it; run ingest again")

    def upload(self, path: Path, digest: str, known: set[str]) -> str:
        metadata = {"knowledge_id": self.knowledge_id, "file_hash": digest}

        def arrived_anyway() -> dict | None:
            # A try whose answer was lost may have been stored: one more upload would be a duplicate.
            new = [copy for copy in self.earlier_uploads(path.name, digest) if copy.id not in known]
            return {"id": new[0].id} if new else None

        record = self.calls(f"upload {path.name}", lambda: self.webui.upload_file(path, metadata),
                            before_retry=arrived_anyway)
        return record["id"]

    def stall_bound(self, size: int) -> float:
        """Seconds one processing step may show no change before the upload counts as lost: 2 minutes plus
        one per MB. Generous, since Open WebUI extracts a long PDF for minutes without a sign of life and
        finishing a live upload in the foreground would index it twice; a restart seen during the run
        (refused connections) needs no wait at all."""
        return self.stall_after if self.stall_after is not None else 120.0 + 60.0 * size / 1e6

    def settle(self, file_id: str, stall_after: float) -> Settled:
        """Wait for Open WebUI's background processing of a file to end; "stalled" when it never will: Open
        WebUI was unreachable meanwhile (a restart ends background work), or nothing moved for ``stall_after``."""
        outages = self.calls.outages
        last, since = "", time.monotonic()
        pause = 0.05  # a short file is done in a few tens of ms; back off to spare the server on long ones
        while True:
            status = self.calls(f"processing status of {file_id}", lambda: self.webui.processing_status(file_id))
            if status in ("completed", "failed"):
                return status
            now = time.monotonic()
            if self.calls.outages > outages:
                return "stalled"
            if status != last:
                last, since = status, now
            elif now - since > stall_after:
                return "stalled"
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def swap_same_text(self, name: str, file_id: str, same_text: str | None) -> bool:
        """Put in a new version whose extracted text equals the old one's (line endings, markup, a PDF's
        metadata changed). Open WebUI refuses text a Knowledge base already holds from another file, so the
        old copy goes first, taking its chunks (the same text) with it; file/add then indexes and links the
        new one. A kill in between leaves the name absent until the next run, which uploads it afresh."""
        held = self.calls("list the Knowledge base", lambda: knowledge_copies(self.webui, self.knowledge_id))
        # Only copies of this name: a file of another name with the same text is another document.
        twins = [copy for copy in held.get(name, []) if same_text and copy.text_hash == same_text]
        if not twins:
            return False
        for copy in twins:
            remove(self.webui, self.calls, self.knowledge_id, copy.id)
        return self.take_over(file_id)

    def take_over(self, file_id: str) -> bool:
        """Finish a lost background job in the foreground: ``file/add`` indexes the file's extracted text into
        the Knowledge base and links it. False when there is no text to index (extraction never ran)."""
        try:
            self.calls(f"add {file_id} to the Knowledge base",
                       lambda: self.webui.add_file_to_knowledge(self.knowledge_id, file_id))
        except OpenWebUIError as error:
            if error.status is not None and 400 <= error.status < 500:
                return False
            raise
        return True


def ingest(webui: OpenWebUIClient, knowledge: str, paths: list[Path], *, create: bool = False,
           concurrency: int = 4, progress: bool = True, retry: RetryPolicy = RetryPolicy(),
           stall_after: float | None = None) -> Report:
    """``stall_after``: seconds an upload may sit in one processing step before it counts as lost (default:
    by its size, see ``Uploader.stall_bound``)."""
    calls = Calls(retry)
    knowledge_id = calls("find the Knowledge base", lambda: resolve_knowledge(webui, knowledge, create))
    report = Report(knowledge_id)

    files, report.files = find_files(paths)
    # A Knowledge base tells files apart by name: two local files with one name would replace each other.
    by_name: dict[str, Path] = {}
    for path in files:
        if path.name in by_name:
            report.files.append(FileOutcome(str(path), "failed", f"same file name as {by_name[path.name]}"))
        else:
            by_name[path.name] = path
    hashes = {name: sha256(path) for name, path in by_name.items()}
    held = calls("list the Knowledge base", lambda: knowledge_copies(webui, knowledge_id)) if by_name else {}
    wanted = sorted(name for name in by_name if not any(c.sha256 == hashes[name] for c in held.get(name, [])))

    uploader = Uploader(webui, calls, knowledge_id, stall_after)

    def send(name: str) -> FileOutcome:
        path = by_name[name]
        try:
            file_id, note = uploader.obtain(path, hashes[name])
            return FileOutcome(str(path), "uploaded", note, file_id)
        except (IngestError, OpenWebUIError, httpx.HTTPError, OSError) as error:
            return FileOutcome(str(path), "failed", describe(error))

    sent: dict[str, FileOutcome] = {}
    with ThreadPoolExecutor(max(1, concurrency)) as pool, \
            tqdm(total=len(wanted), unit="file", desc="ingest", disable=not progress) as bar:
        futures = {pool.submit(send, name): name for name in wanted}
        for done in as_completed(futures):
            sent[futures[done]] = done.result()
            bar.update()

    if by_name:
        report.files += tidy(webui, calls, knowledge_id, by_name, hashes, held, sent)
    return report


def tidy(webui: OpenWebUIClient, calls: Calls, knowledge_id: str, by_name: dict[str, Path], hashes: dict[str, str],
         before: dict[str, list[Copy]], sent: dict[str, FileOutcome]) -> list[FileOutcome]:
    """Each name's final outcome, after removing its other copies (older versions, duplicates an earlier
    killed run left) from a fresh listing; a name with no complete current copy keeps what it has."""
    held: dict[str, list[Copy]] | None = None
    listing_error = ""
    try:
        held = calls("list the Knowledge base", lambda: knowledge_copies(webui, knowledge_id))
    except (IngestError, OpenWebUIError, httpx.HTTPError) as error:
        # The new versions are in; the old ones stay until a run can list the Knowledge base again.
        listing_error = describe(error)
    outcomes: list[FileOutcome] = []
    for name, path in sorted(by_name.items()):
        result = sent.get(name)
        if result is not None and result.outcome == "failed":
            outcomes.append(result)
            continue
        if held is None:
            outcomes.append(FileOutcome(str(path), "failed", f"older copies not checked: {listing_error}",
                                        result.file_id if result else None))
            continue
        had_old = any(copy.sha256 != hashes[name] for copy in before.get(name, []))
        outcomes.append(tidy_name(webui, calls, knowledge_id, path, hashes[name], held.get(name, []), result, had_old))
    return outcomes


def tidy_name(webui: OpenWebUIClient, calls: Calls, knowledge_id: str, path: Path, digest: str, copies: list[Copy],
              result: FileOutcome | None, had_old: bool) -> FileOutcome:
    current = [copy for copy in copies if copy.sha256 == digest]
    if not current:
        return FileOutcome(str(path), "failed", "no complete copy in the Knowledge base after processing")
    keep = next((copy for copy in current if result is not None and copy.id == result.file_id),
                min(current, key=lambda copy: (copy.created_at, copy.id)))
    others = [copy for copy in copies if copy.id != keep.id]
    try:
        for copy in others:
            remove(webui, calls, knowledge_id, copy.id)
        if keep.text_hash and any(copy.text_hash == keep.text_hash for copy in others):
            # Open WebUI removed every chunk with that text hash, the kept copy's too: index it again.
            calls(f"re-index {path.name}", lambda: webui.add_file_to_knowledge(knowledge_id, keep.id))
    except (IngestError, OpenWebUIError, httpx.HTTPError) as error:
        return FileOutcome(str(path), "failed", f"removing another copy: {describe(error)}", keep.id)
    stale = sum(1 for copy in others if copy.sha256 != digest)
    duplicates = len(others) - stale
    notes = [result.detail] if result is not None and result.detail else []
    if duplicates:
        notes.append(f"removed {duplicates} duplicate cop{'y' if duplicates == 1 else 'ies'}")
    detail = "; ".join(notes)
    if result is not None:
        return FileOutcome(str(path), "replaced" if stale or had_old else "uploaded", detail, keep.id)
    if stale:  # an earlier run uploaded the new version and was stopped before removing the old one
        return FileOutcome(str(path), "replaced", detail or "finished an earlier run's replacement", keep.id)
    return FileOutcome(str(path), "unchanged", detail, keep.id)


def remove(webui: OpenWebUIClient, calls: Calls, knowledge_id: str, file_id: str) -> None:
    try:
        calls(f"remove {file_id}", lambda: webui.remove_file_from_knowledge(knowledge_id, file_id))
    except OpenWebUIError as error:
        # A 4xx after a try whose answer was lost: already removed is what was wanted.
        linked = calls("list the Knowledge base", lambda: webui.knowledge_files(knowledge_id))
        if any(record["id"] == file_id for record in linked):
            raise error
