"""Start the project's servers for benchmarks (real processes on free ports, stopped on exit)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

REPO = Path(__file__).resolve().parents[1]
EVAL = REPO.parent / "shared" / "eval"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with code {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout} s")


@contextmanager
def _process(command: list[str], ready_url: str, env: dict[str, str]) -> Iterator[None]:
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
                                   stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            _wait(ready_url, process)
            yield
        finally:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


@contextmanager
def embed_server(**settings: str) -> Iterator[str]:
    """Our embeddings server with fresh state; yields its base URL (no /v1)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as state:
        env = {"EMBED_PORT": str(port), "EMBED_STATE_DIR": state, "EMBED_LOG_LEVEL": "warning", **settings}
        with _process([sys.executable, "-m", "embed_server.cli"], f"http://127.0.0.1:{port}/ready", env):
            yield f"http://127.0.0.1:{port}"


@contextmanager
def chroma_server() -> Iterator[tuple[str, int]]:
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        chroma = str(Path(sys.executable).parent / "chroma")
        with _process([chroma, "run", "--path", data, "--host", "127.0.0.1", "--port", str(port)],
                      f"http://127.0.0.1:{port}/api/v2/heartbeat", {}):
            yield "127.0.0.1", port
