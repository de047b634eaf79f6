"""Start real servers as subprocesses for tests."""

from __future__ import annotations

import itertools
import os
import random
import shutil
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
# workers asking the kernel for a free one could both be given it meanwhile. Each worker starts at a random
# place in its range, so two test runs on one machine seldom pick the same ports in the same order.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
FIRST_PORT = 10000


def ephemeral_ports_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def worker_ports() -> range | None:
    """This xdist worker's share of the ports below the ephemeral range; None outside xdist."""
    if not WORKER.removeprefix("gw").isdigit():
        return None
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    share = (ephemeral_ports_start() - FIRST_PORT) // workers
    if share < 100:
        raise RuntimeError(f"too few ports below the kernel's ephemeral range for {workers} test workers")
    # xdist names a worker that replaces a crashed one gw<N>, gw<N+1>, ...: it takes the crashed one's range.
    first = FIRST_PORT + int(WORKER.removeprefix("gw")) % workers * share
    return range(first, first + share)


PORTS = worker_ports()
_next_port = itertools.count(random.randrange(len(PORTS)) if PORTS else 0)


def free_port() -> int:
    if PORTS is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    for _ in range(len(PORTS)):
        port = PORTS[next(_next_port) % len(PORTS)]
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


@contextmanager
def embed_server(log_dir: Path, name: str = "embed", host: str = "127.0.0.1", **env: str) -> Iterator[str]:
    """An ``embed-server`` process listening on ``host`` with extra ``EMBED_*`` settings; yields its base URL."""
    port = free_port()
    state, log = log_dir.parent / "state" / f"{name}-{port}", log_dir / f"{name}-{port}.log"
    # An earlier run's server may have had this name and port: start with none of its state or log lines.
    shutil.rmtree(state, ignore_errors=True)
    log.unlink(missing_ok=True)
    environment = {"HF_HUB_OFFLINE": "1", "EMBED_PORT": str(port), "EMBED_STATE_DIR": str(state), **env}
    service = Service(name, [sys.executable, "-m", "embed_server.cli", "--host", host],
                      f"http://127.0.0.1:{port}/ready", log, env=environment)
    try:
        service.spawn()
        service.wait_ready()
        yield f"http://127.0.0.1:{port}"
    finally:
        service.stop()
        shutil.rmtree(state, ignore_errors=True)  # a test that keeps state passes EMBED_STATE_DIR
