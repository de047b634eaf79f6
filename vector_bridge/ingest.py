"""Bring outside documents into an Open WebUI Knowledge base through Open WebUI's own API.

Files go in exactly as the Knowledge page uploads them: Open WebUI extracts, chunks and embeds them
(through our embeddings server) and lists them in its UI. Idempotence and resumption come from Open
WebUI's own bookkeeping, so they hold from any machine: each file's SHA-256 is compared with what the
Knowledge base holds (``/sync/diff``), and files are uploaded with the Knowledge base named in their
metadata, so Open WebUI finishes processing and linking a file even if this client is killed after the
upload; such a file counts as present on the next run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import httpx
from tqdm import tqdm

from vector_bridge.openwebui import OpenWebUIClient, OpenWebUIError
from vector_bridge.search import KnowledgeNotFound, knowledge_collection

# What Open WebUI's default extraction reads well; anything else is reported as skipped.
SUPPORTED = {".pdf", ".docx", ".html", ".htm", ".md", ".markdown", ".txt"}

Outcome = Literal["uploaded", "replaced", "unchanged", "failed", "skipped"]


class IngestError(RuntimeError):
    pass


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


def find_files(paths: Iterable[Path]) -> tuple[list[Path], list[FileOutcome]]:
    """Supported files under the given files and folders (recursive), and the ones left out with why."""
    found: list[Path] = []
    skipped: list[FileOutcome] = []
    for path in paths:
        if not path.exists():
            skipped.append(FileOutcome(str(path), "failed", "no such file or folder"))
            continue
        for candidate in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if not candidate.is_file() or candidate.name.startswith("."):
                continue
            if candidate.suffix.lower() in SUPPORTED:
                found.append(candidate)
            else:
                skipped.append(FileOutcome(str(candidate), "skipped", f"unsupported type {candidate.suffix or '(none)'}"))
    return found, skipped


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ingest(webui: OpenWebUIClient, knowledge: str, paths: list[Path], *, create: bool = False,
           concurrency: int = 4, progress: bool = True) -> Report:
    try:
        knowledge_id = knowledge_collection(webui, knowledge)
    except KnowledgeNotFound:
        if not create:
            raise IngestError(f"no Knowledge base named {knowledge!r}; pass --create to make it") from None
        knowledge_id = webui.create_knowledge(knowledge)["id"]
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
    manifest = [{"filename": name, "path": "", "checksum": hashes[name], "size": path.stat().st_size}
                for name, path in by_name.items()]
    diff = webui.knowledge_sync_diff(knowledge_id, manifest) if manifest else {"added": [], "modified": []}
    stale = {entry["filename"]: entry["stale_file_id"] for entry in diff["modified"]}
    wanted = {entry["filename"] for entry in diff["added"]} | set(stale)
    report.files += [FileOutcome(str(path), "unchanged") for name, path in by_name.items() if name not in wanted]

    def send(name: str) -> FileOutcome:
        path = by_name[name]
        try:
            uploaded = webui.upload_file(path, {"knowledge_id": knowledge_id, "file_hash": hashes[name]})
            webui.wait_for_processing(uploaded["id"])
            if name in stale:  # the new version is in; only now drop the old one
                webui.remove_file_from_knowledge(knowledge_id, stale[name])
                return FileOutcome(str(path), "replaced", file_id=uploaded["id"])
            return FileOutcome(str(path), "uploaded", file_id=uploaded["id"])
        except (OpenWebUIError, httpx.HTTPError, OSError) as error:
            return FileOutcome(str(path), "failed", str(error))

    with ThreadPoolExecutor(max(1, concurrency)) as pool, \
            tqdm(total=len(wanted), unit="file", desc="ingest", disable=not progress) as bar:
        for done in as_completed([pool.submit(send, name) for name in sorted(wanted)]):
            report.files.append(done.result())
            bar.update()
    return report
