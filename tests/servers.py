"""Start real servers as subprocesses for tests."""

from __future__ import annotations

import itertools
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


# Under pytest-xdist each worker hands out ports from a range of its own, below the kernel's ephemeral
# ports: a port picked here is often bound only seconds later (Open WebUI takes ~30 s to start), and two
# workers asking the kernel for a free one could both be given it meanwhile.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
PORTS_PER_WORKER = 2000
_next_port = itertools.count()


def free_port() -> int:
    if not WORKER.removeprefix("gw").isdigit():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    first = 10000 + int(WORKER.removeprefix("gw")) * PORTS_PER_WORKER
    for _ in range(PORTS_PER_WORKER):
        port = first + next(_next_port) % PORTS_PER_WORKER
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}-{first + PORTS_PER_WORKER - 1}")


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
