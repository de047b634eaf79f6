"""The hybrid models' IDF state: atomic, private, locked, and never a reason not to serve."""

from __future__ import annotations

import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from embed_server.backends.lexical import DocumentFrequencies, HashedLexicalEncoder
from tests.conftest import HYBRID, MODEL
from tests.servers import REPO, embed_server

DIM = 4096
STATE_NAME = f"document-frequencies-{HYBRID}.npz"
ENCODER = HashedLexicalEncoder(DIM)


def learned(path: Path, texts: list[str]) -> DocumentFrequencies:
    frequencies = DocumentFrequencies(DIM, path, save_every=10**9)
    for text in texts:
        frequencies.add(text, ENCODER.slots(text))
    return frequencies


def texts(prefix: str, n: int) -> list[str]:
    return [f"{prefix} document {i} about topic {i % 7} and word{i}" for i in range(n)]


def test_state_round_trips_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / STATE_NAME
    saved = learned(path, texts("a", 50))
    saved.save()
    loaded = DocumentFrequencies(DIM, path)
    assert loaded.documents == 50 and np.array_equal(loaded.counts, saved.counts)
    assert np.array_equal(loaded.idf(), saved.idf())
    for file in path.parent.iterdir():  # the state file and its lock file; no temporary left over
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    assert sorted(f.name for f in path.parent.iterdir()) == [STATE_NAME, STATE_NAME + ".lock"]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "inconsistent", "directory"])
def test_a_damaged_file_is_set_aside_and_learning_starts_again(
        tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / STATE_NAME
    learned(path, texts("a", 50)).save()
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(5000))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "inconsistent":  # a valid archive whose numbers cannot be true
        with path.open("wb") as file:
            np.savez(file, counts=np.full(DIM, 99), documents=3, seen=np.zeros((3, 12), np.uint8), dim=DIM)
    else:
        path.unlink()
        path.mkdir()
    with caplog.at_level(logging.WARNING):
        frequencies = DocumentFrequencies(DIM, path)
    assert frequencies.documents == 0 and np.array_equal(frequencies.idf(), np.ones(DIM, np.float32))
    [aside] = tmp_path.glob(f"{STATE_NAME}.corrupt-*")
    assert not path.exists()
    [record] = [r for r in caplog.records if getattr(r, "event", None) == "state_file_corrupt"]
    assert record.moved_to == str(aside)
    # Learning resumes and saves over the damage.
    frequencies.add("a fresh document", ENCODER.slots("a fresh document"))
    frequencies.save()
    assert DocumentFrequencies(DIM, path).documents == 1


def test_a_failed_save_is_logged_and_retried_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    frequencies = learned(blocker / STATE_NAME, texts("a", 5))
    with caplog.at_level(logging.ERROR):
        assert frequencies.save_quietly() is False
    assert any(getattr(r, "event", None) == "state_save_failed" for r in caplog.records)
    blocker.unlink()
    assert frequencies.save_quietly() is True
    assert DocumentFrequencies(DIM, blocker / STATE_NAME).documents == 5


def test_saves_on_a_background_thread_every_n_documents(tmp_path: Path) -> None:
    path = tmp_path / STATE_NAME
    frequencies = DocumentFrequencies(DIM, path, save_every=10)
    for text in texts("a", 10):
        frequencies.add(text, ENCODER.slots(text))
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert DocumentFrequencies(DIM, path).documents == 10


def test_two_writer_threads_never_leave_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / STATE_NAME
    writers = [learned(path, texts("a", 300)), learned(path, texts("b", 700))]
    for round_ in range(20):
        threads = [threading.Thread(target=lambda w=w: [w.save() for _ in range(5)]) for w in writers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert DocumentFrequencies(DIM, path).documents in (300, 700), round_
    assert not list(tmp_path.glob("*.corrupt-*")) and not list(tmp_path.glob(".*.tmp"))


WRITER = """
import sys
from pathlib import Path
from embed_server.backends.lexical import DocumentFrequencies, HashedLexicalEncoder
encoder, n = HashedLexicalEncoder(4096), int(sys.argv[2])
frequencies = DocumentFrequencies(4096, None, save_every=10**9)
frequencies.path = Path(sys.argv[1])  # not loaded: each writer's content stays recognisable
for i in range(n):
    text = f"process {n} text {i} word{i}"
    frequencies.add(text, encoder.slots(text))
print("ready", flush=True)
while True:
    frequencies.save()
"""


def test_two_writer_processes_killed_mid_write_never_leave_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / STATE_NAME
    for round_ in range(4):
        writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(n)], cwd=REPO,
                                    stdout=subprocess.PIPE, text=True) for n in (400, 900)]
        try:
            for writer in writers:
                assert writer.stdout.readline() == "ready\n"
            time.sleep(0.2 + 0.13 * round_)
            for _ in range(10):  # reads while both write
                assert DocumentFrequencies(DIM, path).documents in (400, 900)
        finally:
            for writer in writers:
                writer.send_signal(signal.SIGKILL)  # at whatever point of a save each one is
                writer.wait()
        assert DocumentFrequencies(DIM, path).documents in (400, 900), round_
    assert not list(tmp_path.glob("*.corrupt-*"))
    # The kills did land inside saves: their half-written temporaries are there (and harmless).
    assert list(tmp_path.glob(f".{STATE_NAME}.*.tmp"))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_the_server_serves_every_model_over_a_damaged_state_folder(
        tmp_path: Path, log_dir: Path, models_file: Path, damage: str) -> None:
    state = tmp_path / "state"
    path = state / STATE_NAME
    learned(path, texts("a", 200)).save()
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        path.write_bytes(os.urandom(20_000))
    (state / "stray-file.bin").write_bytes(os.urandom(100))  # other junk in the folder
    (state / f".{STATE_NAME}.1-dead.tmp").write_bytes(b"half a write")
    with embed_server(log_dir, f"state-{damage}", EMBED_MODELS_FILE=str(models_file),
                      EMBED_STATE_DIR=str(state)) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/ready").status_code == 200
        assert {m["id"] for m in client.get("/v1/models").json()["data"]} >= {MODEL, HYBRID}
        for input_type in ("document", "query"):
            response = client.post("/v1/embeddings", json={"input": texts("served", 3), "model": HYBRID,
                                                           "input_type": input_type})
            assert response.status_code == 200, response.text
            assert len(response.json()["data"][0]["embedding"]) == 384 + DIM
        port = url.rsplit(":", 1)[1]
        log = (log_dir / f"state-{damage}-{port}.log").read_text()
    assert '"event": "state_file_corrupt"' in log
    assert len(list(state.glob(f"{STATE_NAME}.corrupt-*"))) == 1
    # Shut down cleanly: what the server learned is saved over the damage.
    assert DocumentFrequencies(DIM, path).documents == 3
