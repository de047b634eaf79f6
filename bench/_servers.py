"""Start the project's servers for benchmarks: real processes on free ports, stopped on exit."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
# The shared evaluation data: beside the checkout unless EVAL_DATA_DIR says where.
EVAL = Path(os.environ.get("EVAL_DATA_DIR") or REPO.parent / "shared" / "eval")
sys.path.insert(0, str(REPO))

from vector_bridge.stack import Service  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running(service: Service) -> Iterator[None]:
    try:
        service.spawn()
        service.wait_ready()
        yield
    finally:
        service.stop()


@contextmanager
def embed_server(**settings: str) -> Iterator[str]:
    """Our embeddings server with fresh state and ``EMBED_*`` settings; yields its base URL (no /v1)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as state:
        env = {"HF_HUB_OFFLINE": "1", "EMBED_PORT": str(port), "EMBED_STATE_DIR": state, "EMBED_LOG_LEVEL": "warning",
               **settings}
        service = Service("embeddings", [sys.executable, "-m", "embed_server.cli"],
                          f"http://127.0.0.1:{port}/ready", Path(state) / "embed-server.log", env=env)
        with running(service):
            yield f"http://127.0.0.1:{port}"


@contextmanager
def chroma_server() -> Iterator[tuple[str, int]]:
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        service = Service("chroma", [str(Path(sys.executable).parent / "chroma"), "run", "--path", data,
                                     "--host", "127.0.0.1", "--port", str(port)],
                          f"http://127.0.0.1:{port}/api/v2/heartbeat", Path(data) / "chroma.log")
        with running(service):
            yield "127.0.0.1", port
