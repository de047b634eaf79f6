"""`vector-bridge backup` / `restore` against a real Chroma server: the store comes back as it was."""

from __future__ import annotations

import gzip
import json
import os
import signal
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from chromadb.api.models.Collection import Collection

from config import Settings, load_settings
from tests.servers import REPO, free_port
from vector_bridge.cli import main
from vector_bridge.stack import Service, chroma_service
from vector_bridge.store import connect

pytestmark = pytest.mark.slow
CONFIG = "{'engine': 'openai', 'model': 'all-MiniLM-L6-v2'}"


@pytest.fixture
def chroma(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Settings, Service]]:
    port = free_port()
    settings = load_settings(chroma_port=port, chroma_path=tmp_path / "chroma", log_dir=tmp_path / "logs")
    monkeypatch.setenv("EMBED_CHROMA_PORT", str(port))  # what the CLI reads
    service = chroma_service(settings)
    service.spawn()
    service.wait_ready()
    try:
        yield settings, service
    finally:
        service.stop()


def fill_like_open_webui(settings: Settings) -> None:
    """Two collections shaped as Open WebUI writes them; one spans more than a page of 1,000 chunks."""
    client = connect(settings)
    rng = np.random.default_rng(7)
    for name, count in ((str(uuid.uuid4()), 1500), (f"file-{uuid.uuid4()}", 3)):
        collection = client.create_collection(name, metadata={"hnsw:space": "cosine"})
        vectors = rng.standard_normal((count, 384)).astype(np.float32)
        metadatas = [{"embedding_config": CONFIG, "name": "리포트.pdf", "source": "리포트.pdf", "page": i % 7,
                      "start_index": i * 900, "score": 0.5 + i, "private": bool(i % 2)} for i in range(count)]
        for start in range(0, count, 500):
            end = min(start + 500, count)
            collection.add(ids=[str(uuid.uuid4()) for _ in range(start, end)], embeddings=vectors[start:end],
                           documents=[f"청크 {i}: text with\nnewlines" for i in range(start, end)],
                           metadatas=metadatas[start:end])


def snapshot(settings: Settings) -> dict:
    client = connect(settings)
    out = {}
    for collection in client.list_collections():
        got = collection.get(include=["documents", "metadatas", "embeddings"])
        order = np.argsort(got["ids"])
        out[collection.name] = {
            "metadata": collection.metadata,
            "ids": [got["ids"][i] for i in order],
            "documents": [got["documents"][i] for i in order],
            "metadatas": [got["metadatas"][i] for i in order],
            "embeddings": np.asarray(got["embeddings"], dtype=np.float32)[order],
        }
    return out


def assert_identical(before: dict, after: dict) -> None:
    assert sorted(before) == sorted(after)
    for name in before:
        a, b = before[name], after[name]
        assert (a["metadata"], a["ids"], a["documents"], a["metadatas"]) == \
               (b["metadata"], b["ids"], b["documents"], b["metadatas"])
        # Chroma rounds every vector it stores in a cosine collection by about one unit in the last place
        # (also when Open WebUI writes): a restore can match to that, not to the bit.
        np.testing.assert_allclose(b["embeddings"], a["embeddings"], rtol=1e-6, atol=1e-7)


def test_backup_wipe_restore_gives_the_same_store(chroma, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    settings, _ = chroma
    fill_like_open_webui(settings)
    before = snapshot(settings)
    file = tmp_path / "store.vbak"

    assert main(["backup", str(file), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["collections"], report["chunks"]) == (2, 1503)

    client = connect(settings)
    for collection in client.list_collections():
        client.delete_collection(collection.name)
    assert main(["restore", str(file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["chunks"] == 1503
    assert_identical(before, snapshot(settings))

    # Restored collections still search as cosine collections.
    name = next(n for n in before if not n.startswith("file-"))
    collection = connect(settings).get_collection(name)
    found = collection.query(query_embeddings=before[name]["embeddings"][:1], n_results=1, include=["distances"])
    assert found["ids"][0] == before[name]["ids"][:1] and found["distances"][0][0] == pytest.approx(0, abs=1e-5)


def test_restore_never_overwrites_data_unless_asked(chroma, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    settings, _ = chroma
    fill_like_open_webui(settings)
    file = tmp_path / "store.vbak"
    assert main(["backup", str(file)]) == 0
    before = snapshot(settings)

    assert main(["restore", str(file)]) == 1
    assert "exist and hold data" in capsys.readouterr().err
    assert main(["restore", str(file), "--replace"]) == 0
    assert_identical(before, snapshot(settings))


def test_a_cut_or_failed_backup_never_passes_for_a_good_one(chroma, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    settings, service = chroma
    fill_like_open_webui(settings)
    good = tmp_path / "store.vbak"
    assert main(["backup", str(good)]) == 0
    content = good.read_bytes()

    # A truncated copy (a backup killed mid-write, then copied by hand) is refused before anything is written.
    lines = gzip.decompress(content).splitlines(keepends=True)
    cut = tmp_path / "cut.vbak"
    cut.write_bytes(gzip.compress(b"".join(lines[: len(lines) // 2])))
    assert main(["restore", str(cut), "--replace"]) == 1
    assert "truncated" in capsys.readouterr().err

    # A backup that fails (Chroma gone) leaves the previous file as it was, and no partial file.
    service.stop()
    assert main(["backup", str(good)]) == 1
    assert "cannot reach Chroma" in capsys.readouterr().err
    assert good.read_bytes() == content and not list(tmp_path.glob("*.partial"))


def test_backup_files_are_private_from_the_first_byte(chroma, tmp_path: Path) -> None:
    settings, _ = chroma
    fill_like_open_webui(settings)
    file = tmp_path / "store.vbak"
    stale = tmp_path / "store.vbak.partial"  # a killed run's leftover, readable by all
    stale.write_bytes(b"old")
    stale.chmod(0o644)
    assert main(["backup", str(file)]) == 0
    assert stat.S_IMODE(file.stat().st_mode) == 0o600 and not stale.exists()


def test_chunks_deleted_during_a_backup_fail_it_loudly(chroma, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    settings, _ = chroma
    fill_like_open_webui(settings)
    original_get = Collection.get

    def get_then_delete(self: Collection, *args, **kwargs):  # Open WebUI removes a file right after the id list
        page = original_get(self, *args, **kwargs)
        if kwargs.get("include") == [] and kwargs.get("ids") is None and len(page["ids"]) > 1000:
            self.delete(ids=page["ids"][-5:])
        return page

    monkeypatch.setattr(Collection, "get", get_then_delete)
    file = tmp_path / "store.vbak"
    assert main(["backup", str(file)]) == 1
    assert "5 chunks were deleted while it was being backed up" in capsys.readouterr().err
    assert not file.exists() and not list(tmp_path.glob("*.partial"))


def test_chunks_added_during_a_backup_wait_for_the_next_one(chroma, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    settings, _ = chroma
    fill_like_open_webui(settings)
    before = snapshot(settings)
    original_get = Collection.get

    def get_then_add(self: Collection, *args, **kwargs):
        page = original_get(self, *args, **kwargs)
        if kwargs.get("include") == [] and kwargs.get("ids") is None:
            self.add(ids=["added-meanwhile"], embeddings=[[0.1] * 384], documents=["new"], metadatas=[{"a": 1}])
        return page

    monkeypatch.setattr(Collection, "get", get_then_add)
    file = tmp_path / "store.vbak"
    assert main(["backup", str(file)]) == 0
    monkeypatch.setattr(Collection, "get", original_get)
    wipe(settings)
    assert main(["restore", str(file)]) == 0
    assert_identical(before, snapshot(settings))


# Restore in a subprocess that SIGKILLs itself at the N-th call of a Chroma operation.
KILLER = """
import os, signal, sys
from chromadb.api.client import Client
from chromadb.api.models.Collection import Collection
from vector_bridge.cli import main

operation, when, nth, file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
owner = Client if operation == "delete_collection" else Collection
original, calls = getattr(owner, operation), [0]

def wrapped(*args, **kwargs):
    calls[0] += 1
    if calls[0] == nth and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    result = original(*args, **kwargs)
    if calls[0] == nth and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return result

setattr(owner, operation, wrapped)
sys.exit(main(["restore", file, "--replace"]))
"""
KILL_POINTS = [
    ("add", "after", 1),                # the first collection half built
    ("modify", "before", 1),            # built and verified, not swapped
    ("modify", "after", 1),             # between the two renames
    ("modify", "after", 2),             # swapped, old data not dropped yet
    ("delete_collection", "after", 1),  # first collection done, the second not started
    ("add", "before", 3),               # the second collection (absent before) being built
]


def wipe(settings: Settings) -> None:
    client = connect(settings)
    for collection in client.list_collections():
        client.delete_collection(collection.name)


def contents(state: dict, name: str) -> tuple | None:
    return (state[name]["ids"], state[name]["documents"], state[name]["metadatas"]) if name in state else None


def change_store(settings: Settings) -> None:
    """What Open WebUI does after a backup: chunks deleted, added and edited, a file removed, a new one."""
    client = connect(settings)
    collections = sorted(client.list_collections(), key=lambda c: -c.count())
    big, small = collections[0], collections[1]
    ids = sorted(big.get(include=[])["ids"])
    big.delete(ids=ids[:100])
    big.update(ids=ids[100:110], documents=[f"edited {i}" for i in range(10)], embeddings=np.ones((10, 384), np.float32))
    big.add(ids=[f"new-{i}" for i in range(50)], embeddings=np.ones((50, 384), np.float32),
            documents=["new"] * 50, metadatas=[{"embedding_config": CONFIG}] * 50)
    client.delete_collection(small.name)
    client.create_collection("file-not-in-the-backup").add(ids=["x"], embeddings=[[1.0] * 384], documents=["x"])


@pytest.mark.parametrize("operation,when,nth", KILL_POINTS)
def test_restore_replace_killed_anywhere_loses_nothing_and_a_rerun_finishes(
        chroma, tmp_path: Path, operation: str, when: str, nth: int) -> None:
    settings, _ = chroma
    fill_like_open_webui(settings)
    new = snapshot(settings)
    backup_file = tmp_path / "store.vbak"
    assert main(["backup", str(backup_file)]) == 0
    change_store(settings)
    old = snapshot(settings)
    assert {n: contents(old, n) for n in new} != {n: contents(new, n) for n in new}

    killed = subprocess.run([sys.executable, "-c", KILLER, operation, when, str(nth), str(backup_file)],
                            cwd=REPO, env={**os.environ, "EMBED_CHROMA_PORT": str(settings.chroma_port)},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    after = snapshot(settings)
    for name in new:
        if name in after:  # the original name holds all the old data or all the new, never a mix
            assert contents(after, name) in (contents(old, name), contents(new, name)), name
        elif contents(old, name) is not None:  # killed between the two renames: both kept, named
            assert contents(after, name + ".replaced") == contents(old, name)
            assert contents(after, name + ".restoring") == contents(new, name)
    assert contents(after, "file-not-in-the-backup") == contents(old, "file-not-in-the-backup")
    if (operation, when, nth) == ("modify", "after", 1):  # the window this test is about did happen
        assert any(name + ".replaced" in after for name in new)

    assert main(["restore", str(backup_file), "--replace"]) == 0
    final = snapshot(settings)
    assert sorted(final) == sorted([*new, "file-not-in-the-backup"])  # no temporary collection left
    assert_identical(new, {name: final[name] for name in new})


def test_a_name_open_webui_recreates_between_the_renames_is_settled_then_replaced(chroma, tmp_path: Path) -> None:
    """Open WebUI creates a collection when it writes to a name that does not exist: a restore killed between
    its two renames can find the name taken by a new collection holding a user's fresh chunk."""
    settings, _ = chroma
    fill_like_open_webui(settings)
    new = snapshot(settings)
    backup_file = tmp_path / "store.vbak"
    assert main(["backup", str(backup_file)]) == 0
    change_store(settings)
    killed = subprocess.run([sys.executable, "-c", KILLER, "modify", "after", "1", str(backup_file)], cwd=REPO,
                            env={**os.environ, "EMBED_CHROMA_PORT": str(settings.chroma_port)},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    client = connect(settings)
    names = {c.name for c in client.list_collections()}
    [cut] = [n for n in new if n not in names and n + ".replaced" in names]
    client.create_collection(cut, metadata={"hnsw:space": "cosine"}).add(
        ids=["written-in-the-gap"], documents=["a user's new chunk"], embeddings=np.ones((1, 384), np.float32),
        metadatas=[{"embedding_config": CONFIG}])

    assert main(["restore", str(backup_file), "--replace"]) == 0
    final = snapshot(settings)
    assert sorted(final) == sorted([*new, "file-not-in-the-backup"])  # no temporary collection left
    # The name is settled first with the newcomer's chunk kept, then --replace makes it the backup, as asked.
    assert_identical(new, {name: final[name] for name in new})
