"""Start real servers as subprocesses for tests."""

from __future__ import annotations

import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from vector_bridge.stack import Service

REPO = Path(__file__).resolve().parents[1]
# The shared evaluation data: beside the checkout unless EVAL_DATA_DIR says where.
EVAL = Path(os.environ.get("EVAL_DATA_DIR") or REPO.parent / "shared" / "eval")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def embed_server(log_dir: Path, name: str = "embed", host: str = "127.0.0.1", **env: str) -> Iterator[str]:
    """An ``embed-server`` process listening on ``host`` with extra ``EMBED_*`` settings; yields its base URL."""
    port = free_port()
    state = log_dir.parent / "state" / f"{name}-{port}"
    environment = {"HF_HUB_OFFLINE": "1", "EMBED_PORT": str(port), "EMBED_STATE_DIR": str(state), **env}
    service = Service(name, [sys.executable, "-m", "embed_server.cli", "--host", host],
                      f"http://127.0.0.1:{port}/ready", log_dir / f"{name}-{port}.log", env=environment)
    try:
        service.spawn()
        service.wait_ready()
        yield f"http://127.0.0.1:{port}"
    finally:
        service.stop()
