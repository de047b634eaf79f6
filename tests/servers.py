"""Start real servers as subprocesses for tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(url: str, process: subprocess.Popen, timeout: float = 120, path: str = "/ready") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before it was ready")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url}{path} not ready after {timeout} s")


@contextmanager
def embed_server(log_dir: Path, name: str = "embed", **env: str) -> Iterator[str]:
    """An ``embed-server`` process with extra ``EMBED_*`` settings; yields its base URL."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    state = log_dir.parent / "state" / f"{name}-{port}"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "EMBED_PORT": str(port), "EMBED_STATE_DIR": str(state), **env}
    log_path = log_dir / f"{name}-{port}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "embed_server.cli", "--host", "127.0.0.1"],
            env=environment, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
