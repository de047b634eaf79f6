"""bench/threads.py runs its busy processes at once, each on the threads asked, and reports each layout against
one process on every usable core."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from config.settings import usable_cores
from tests.servers import REPO


def test_layouts_run_at_once_on_the_threads_asked_against_one_process_on_every_core() -> None:
    run = subprocess.run([sys.executable, str(REPO / "bench" / "threads.py"), "--seconds", "2", "--layouts", "2x1",
                          "--json"], capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {(row["processes"], row["threads"]): row for row in json.loads(run.stdout)}
    cores = usable_cores()
    assert set(rows) == {(1, cores), (2, 1)}
    pair, alone = rows[(2, 1)], rows[(1, cores)]
    assert pair["together"] and pair["threads_seen"] == [1] and alone["threads_seen"] == [cores]
    assert alone["texts_per_s"] > 0 and pair["texts_per_s"] > 0
    assert abs(pair["ratio"] - pair["texts_per_s"] / alone["texts_per_s"]) < 0.02
    assert "load average at start" in run.stderr
