"""Busy processes sharing the cores: how many threads each should take.

The stack runs several model processes side by side (embeddings server, chat server, and in the test suite
one set per test worker). Each sizes its torch pool for the whole machine by default (``EMBED_THREADS``).
This runs the raw embedding model (our torch backend, length-sorted batches of 16 SciFact abstracts) in P
busy processes of T threads each, all at once for the same wall time, and prints the texts/s of all of them
together as a ratio to one process using every core, in one run.

    python bench/threads.py                       # layouts 1xC, 2xC, 2x1, 3xC, 3x1 (C = cores), 20 s each
    python bench/threads.py --seconds 10 --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _servers  # noqa: E402, F401 - puts the checkout on the path

from config.settings import usable_cores  # noqa: E402

BATCH = 16
TEXTS = 256


def busy_process(threads: int, seconds: float) -> None:
    """One process: load the model, say it is ready, wait for the common start (a line on stdin), encode
    batches until the time is up, print how many texts it encoded."""
    import torch
    from embeddings import CORPUS, MODEL, SOURCE, load_texts

    from config import ModelSpec
    from embed_server.backends import TransformerBackend

    backend = TransformerBackend(ModelSpec(id=MODEL, source=SOURCE), threads)
    ids = sorted((backend.truncate(row) for row in backend.tokenize(load_texts(CORPUS, TEXTS))), key=len)
    batches = [ids[i:i + BATCH] for i in range(0, len(ids), BATCH)]
    first = random.randrange(len(batches))  # so no process stops only ever in the cheap, short batches
    print("ready", flush=True)
    sys.stdin.readline()
    done, begun, started = 0, time.time(), time.monotonic()
    while time.monotonic() - started < seconds:
        backend.encode(batches[(first + done // BATCH) % len(batches)])
        done += BATCH
    print(json.dumps({"texts": done, "seconds": time.monotonic() - started, "start": begun, "end": time.time(),
                      "threads": torch.get_num_threads()}), flush=True)


def run_layout(processes: int, threads: int, seconds: float) -> dict:
    """``processes`` busy processes of ``threads`` threads each: their texts/s together, whether they all ran
    at once, and the thread counts torch reported in them."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    children = [subprocess.Popen([sys.executable, __file__, "--child", str(threads), str(seconds)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
                for _ in range(processes)]
    for child in children:  # every model loaded before any starts
        if child.stdout.readline().strip() != "ready":
            raise SystemExit(f"a benchmark process failed to load the model (exit {child.wait()})")
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    results = [json.loads(child.communicate()[0].strip().splitlines()[-1]) for child in children]
    return {"texts_per_s": sum(r["texts"] / r["seconds"] for r in results),
            "together": max(r["start"] for r in results) < min(r["end"] for r in results),
            "threads_seen": sorted({r["threads"] for r in results})}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        busy_process(int(sys.argv[2]), float(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="wall time each layout runs")
    parser.add_argument("--layouts", default=None, help="e.g. 1x2,3x1 (default: 1xC,2xC,2x1,3xC,3x1)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cores = usable_cores()
    layouts = [(1, cores), (2, cores), (2, 1), (3, cores), (3, 1)]
    if args.layouts:
        layouts = [tuple(int(n) for n in layout.split("x")) for layout in args.layouts.split(",")]
        if (1, cores) not in layouts:
            layouts.insert(0, (1, cores))  # the baseline of every ratio
    print(f"{cores} cores, load average at start {os.getloadavg()[0]:.2f}", file=sys.stderr)
    runs = {}
    for processes, threads in layouts:
        runs[(processes, threads)] = run_layout(processes, threads, args.seconds)
        print(f"{processes} x {threads}: {runs[(processes, threads)]['texts_per_s']:.1f} texts/s", file=sys.stderr)
    base = runs[(1, cores)]["texts_per_s"]
    rows = [{"processes": p, "threads": t, "texts_per_s": round(run["texts_per_s"], 1),
             "ratio": round(run["texts_per_s"] / base, 2), "together": run["together"],
             "threads_seen": run["threads_seen"]} for (p, t), run in runs.items()]
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'processes x threads':>20} {'texts/s in all':>15} {'vs 1 x ' + str(cores):>9}")
    for row in rows:
        print(f"{row['processes']:>12} x {row['threads']:<6} {row['texts_per_s']:>15} {row['ratio']:>9}")


if __name__ == "__main__":
    main()
