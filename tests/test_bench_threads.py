"""bench/threads.py runs its busy processes together and reports each layout against one process on every core."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.servers import REPO


def test_layouts_run_together_and_the_baseline_is_one_process_on_every_core() -> None:
    run = subprocess.run([sys.executable, str(REPO / "bench" / "threads.py"), "--seconds", "1", "--layouts", "2x1",
                          "--json"], capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {(row["processes"], row["threads"]): row for row in json.loads(run.stdout)}
    cores = os.cpu_count() or 1
    assert set(rows) == {(1, cores), (2, 1)}
    assert rows[(1, cores)]["ratio"] == 1.0
    assert all(row["texts_per_s"] > 0 for row in rows.values())
    assert "load average at start" in run.stderr
