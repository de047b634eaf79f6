"""The chat server's retrieval, measured on a real stack (Chroma, our embeddings server, Open WebUI 0.12.4):

  recall@k   for SciFact test-split claims, the share of each claim's relevant abstracts among the sources
             that reach the generator's prompt (k = 1, 3 and the server's top_k, 5), against a bare dense search
             of the same collection with the same model (k = 1, 3, 5, 10) in the same run
  overhead   the time from a request reaching the chat server (POST /v1/chat/completions, the caller's own
             Open WebUI session token, a model per Knowledge base) to its generator's call, p50 / p95,
             against the bare calls it cannot avoid, timed in the same run: POST /v1/embeddings for the claim
             + one Chroma query. Goal: overhead p50 <= 30 ms.

The abstracts go into one Knowledge base through Open WebUI's own API (`vector-bridge ingest`), so the
collection is exactly what Open WebUI writes (its chunking, its metadata). The corpus is every abstract
relevant to the chosen claims plus the first others of the corpus up to --docs, so recall is over that
subset, not all 5,183 abstracts; chat and bare search see the same collection. The generator is a stand-in
(bench/_standin_chat.py) that answers at once with the prompt it received and when it was called: the real
server, routes, access check and retrieval, with the generator as the measured boundary. The access check
is real: Open WebUI is asked which Knowledge the caller may read, the answer reused for
EMBED_ACCESS_CACHE_SECONDS (5 s) as in production, so a request now and then includes that round trip.
Chat and bare calls run back to back claim by claim (which goes first alternates), so both meet the same
noise, and the embeddings server's cache is off while they run (both embed the same claim: the second would
get a cached vector). Besides the p50/p95 of each, the per-claim difference (overhead - bare) is printed: on
a shared machine it is the steadier figure.

    python bench/chat.py --quick          # 50 claims over 200 abstracts, each asked 3 times: a few minutes
    python bench/chat.py --json           # all 300 test claims over 1,000 abstracts
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import EVAL, free_port, running  # noqa: E402

from config import Settings, load_settings  # noqa: E402
from vector_bridge.embeddings import EmbeddingsClient  # noqa: E402
from vector_bridge.ingest import ingest  # noqa: E402
from vector_bridge.openwebui import OpenWebUIClient  # noqa: E402
from vector_bridge.stack import Service, bridge_environment, chroma_service, embed_service, openwebui_service  # noqa: E402
from vector_bridge.store import connect  # noqa: E402

TOP_K = 5  # the chat server's default EMBED_CHAT_TOP_K: what reaches the prompt
CHAT_KS = (1, 3, TOP_K)
BARE_KS = (1, 3, TOP_K, 10)
WARM_UP = 5  # requests before timing: first calls load the query path, connections and caches
GOAL_P50_MS = 30.0
# The prompt lists sources as "[n] name" then the chunk's text, blank lines between them (chat_server/prompt.py).
SOURCE_LINE = re.compile(r"(?:^|\n\n)\[(\d+)\] ([^\n]*)\n")


@dataclass
class SciFact:
    claims: dict[str, str]  # test claim id -> text
    relevant: dict[str, set[str]]  # claim id -> relevant abstract ids
    abstracts: dict[str, dict]  # abstract id -> {"_id", "title", "text"}
    warm_up: list[str] = field(default_factory=list)  # train claims, only to warm the path up


def load_scifact(claims: int, docs: int) -> SciFact:
    folder = EVAL / "scifact"
    relevant: dict[str, set[str]] = {}
    for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        query, doc, score = line.split("\t")
        if int(score) > 0:
            relevant.setdefault(query, set()).add(doc)
    queries = [json.loads(line) for line in (folder / "queries.jsonl").open() if line.strip()]
    chosen = {q["_id"]: q["text"] for q in queries if q["_id"] in relevant and q["text"].strip()}
    chosen = dict(list(chosen.items())[:claims])
    corpus = [json.loads(line) for line in (folder / "corpus.jsonl").open() if line.strip()]
    wanted = set().union(*(relevant[q] for q in chosen))
    picked = [doc for doc in corpus if doc["_id"] in wanted]
    picked += [doc for doc in corpus if doc["_id"] not in wanted][:max(0, docs - len(picked))]
    warm_up = [q["text"] for q in queries if q["_id"] not in relevant][:WARM_UP]
    return SciFact(chosen, {q: relevant[q] for q in chosen}, {doc["_id"]: doc for doc in picked}, warm_up)


def write_abstracts(folder: Path, abstracts: dict[str, dict]) -> list[Path]:
    """One .txt file per abstract, named by its id: the file name is how a source says which abstract it is."""
    paths = []
    for doc_id, doc in abstracts.items():
        path = folder / f"{doc_id}.txt"
        path.write_text(f"{doc['title']}\n\n{doc['text']}", encoding="utf-8")
        paths.append(path)
    return paths


def abstract_id(name: str) -> str:
    return name.removesuffix(".txt")


def prompt_sources(prompt: str) -> list[str]:
    """The abstract ids of the numbered sources in the prompt the generator received, in order."""
    found = SOURCE_LINE.findall(prompt)
    if [int(number) for number, _ in found] != list(range(1, len(found) + 1)):
        raise ValueError(f"the prompt's sources are not numbered 1..n: {[n for n, _ in found]}")
    return [abstract_id(name) for _, name in found]


def recall(ranked: list[str], relevant: set[str], k: int) -> float:
    """Share of the relevant abstracts among the first k chunks' abstracts (several chunks may be one abstract)."""
    return len(relevant & set(ranked[:k])) / len(relevant)


def standin_chat_service(settings: Settings, port: int) -> Service:
    env = bridge_environment(settings) | {"EMBED_PORT": str(settings.port), "HF_HUB_OFFLINE": "1",
                                          "EMBED_CHAT_TOP_K": str(TOP_K),
                                          "EMBED_CHAT_RATE_LIMIT": ""}  # one caller asks hundreds of times a minute
    return Service("chat (stand-in generator)", [sys.executable, str(Path(__file__).with_name("_standin_chat.py")),
                                                 str(port)],
                   f"http://127.0.0.1:{port}/ready", settings.log_dir / "chat-server.log", env=env)


def without_cache(embed: Service) -> None:
    """Restart the embeddings server (same port) with its cache off: the chat path and the bare calls embed the
    same claim, so whichever came second would get a cached vector; users' questions rarely repeat."""
    embed.stop()
    embed.env["EMBED_CACHE_SIZE"] = "0"
    embed.spawn()
    embed.wait_ready()


@dataclass
class Timings:
    overhead_ms: list[float] = field(default_factory=list)  # request reaching the app -> generator call
    from_send_ms: list[float] = field(default_factory=list)  # the bench's send -> generator call
    embed_ms: list[float] = field(default_factory=list)
    query_ms: list[float] = field(default_factory=list)
    bare_ms: list[float] = field(default_factory=list)  # embed + query
    # Per claim, overhead - bare: the two were timed back to back, so this difference is steadier under load
    extra_ms: list[float] = field(default_factory=list)


class Runner:
    def __init__(self, chat_url: str, token: str, knowledge_id: str, settings: Settings) -> None:
        self.chat = httpx.Client(base_url=chat_url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        self.model = f"knowledge-{knowledge_id}"
        self.embeddings = EmbeddingsClient(settings, timeout=60)
        self.collection = connect(settings).get_collection(knowledge_id)
        self.embedding_model = settings.models[0].id  # what Open WebUI embedded the Knowledge base with

    def ask_chat(self, claim: str) -> tuple[list[str], float, float]:
        """The prompt's abstract ids, the server's overhead and the time from the bench's send (ms)."""
        sent = time.perf_counter()
        response = self.chat.post("/chat/completions", json={"model": self.model, "stream": False,
                                                             "messages": [{"role": "user", "content": claim}]})
        response.raise_for_status()
        answer = response.json()
        record = json.loads(answer["choices"][0]["message"]["content"])
        in_prompt = prompt_sources(record["prompt"])
        listed = [abstract_id(source["name"]) for source in answer["sources"]]
        if listed != in_prompt:
            raise AssertionError(f"the response's sources {listed} are not the prompt's {in_prompt}")
        return in_prompt, record["waited_ms"], (record["called"] - sent) * 1000

    def ask_bare(self, claim: str, k: int) -> tuple[list[str], float, float]:
        """The top k chunks' abstract ids from the bare calls, and each call's time (ms)."""
        started = time.perf_counter()
        [vector] = self.embeddings.embed(self.embedding_model, [claim], "query")
        embedded = time.perf_counter()
        found = self.collection.query(query_embeddings=[vector], n_results=k, include=["metadatas"])
        done = time.perf_counter()
        ranked = [abstract_id(str(metadata.get("name") or "")) for metadata in found["metadatas"][0]]
        return ranked, (embedded - started) * 1000, (done - embedded) * 1000


def measure(runner: Runner, data: SciFact, passes: int) -> tuple[dict, Timings]:
    """Recall from the first pass over the claims (retrieval is deterministic); times from every pass."""
    for claim in data.warm_up:
        runner.ask_chat(claim)
        runner.ask_bare(claim, max(BARE_KS))
    sums = {f"chat@{k}": 0.0 for k in CHAT_KS} | {f"bare@{k}": 0.0 for k in BARE_KS}
    timings = Timings()
    asked = [(n, i, claim_id, claim) for n in range(passes) for i, (claim_id, claim) in enumerate(data.claims.items())]
    for n, i, claim_id, claim in asked:
        # Alternate which goes first, and flip it for a claim at each pass: neither always meets a warmer path.
        if (i + n) % 2:
            bare = runner.ask_bare(claim, max(BARE_KS))
            chat = runner.ask_chat(claim)
        else:
            chat = runner.ask_chat(claim)
            bare = runner.ask_bare(claim, max(BARE_KS))
        timings.overhead_ms.append(chat[1])
        timings.from_send_ms.append(chat[2])
        timings.embed_ms.append(bare[1])
        timings.query_ms.append(bare[2])
        timings.bare_ms.append(bare[1] + bare[2])
        timings.extra_ms.append(chat[1] - bare[1] - bare[2])
        if n:
            continue
        relevant = data.relevant[claim_id]
        for k in CHAT_KS:
            sums[f"chat@{k}"] += recall(chat[0], relevant, k)
        for k in BARE_KS:
            sums[f"bare@{k}"] += recall(bare[0], relevant, k)
    return {name: round(total / len(data.claims), 4) for name, total in sums.items()}, timings


def percentiles(values: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(values, 50)), 2), "p95": round(float(np.percentile(values, 95)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--claims", type=int, default=300, help="SciFact test claims to ask (300: all)")
    parser.add_argument("--docs", type=int, default=1000, help="abstracts in the Knowledge base (the claims' "
                        "relevant ones, then others)")
    parser.add_argument("--passes", type=int, default=1, help="times each claim is asked (more timed requests)")
    parser.add_argument("--quick", action="store_true", help="50 claims over 200 abstracts, asked 3 times")
    parser.add_argument("--json", action="store_true", help="print one JSON line last")
    args = parser.parse_args()
    claims, docs, passes = (50, 200, 3) if args.quick else (args.claims, args.docs, args.passes)
    data = load_scifact(claims, docs)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "abstracts").mkdir()
        files = write_abstracts(root / "abstracts", data.abstracts)
        settings = load_settings(port=free_port(), chroma_port=free_port(), chroma_path=root / "chroma",
                                 log_dir=root / "logs", openwebui_data=root / "open-webui", state_dir=root / "state",
                                 openwebui_url=f"http://127.0.0.1:{free_port()}")
        chat_port = free_port()
        embed = embed_service(settings, None)
        with ExitStack() as services:
            for service in (chroma_service(settings), embed, openwebui_service(settings)):
                services.enter_context(running(service))
            webui = OpenWebUIClient(settings.openwebui_url)
            token = webui.sign_up("Bench", "bench@example.com", secrets.token_urlsafe(16))["token"]
            started = time.perf_counter()
            report = ingest(webui, "SciFact", files, create=True, concurrency=4, progress=False)
            ingest_s = time.perf_counter() - started
            if not report.ok:
                raise SystemExit(f"ingest failed for {report.count('failed')} files; see {settings.log_dir}")
            chunks = connect(settings).get_collection(report.knowledge_id).count()
            print(f"# ingested {len(files)} abstracts ({chunks} chunks) in {ingest_s:.0f} s", file=sys.stderr)
            without_cache(embed)
            services.enter_context(running(standin_chat_service(settings, chat_port)))
            runner = Runner(f"http://127.0.0.1:{chat_port}/v1", token, report.knowledge_id, settings)
            load_before = os.getloadavg()[0]
            recalls, timings = measure(runner, data, passes)
            load = (round(load_before, 1), round(os.getloadavg()[0], 1))

    times = {"overhead_ms": percentiles(timings.overhead_ms), "from_send_ms": percentiles(timings.from_send_ms),
             "bare_ms": percentiles(timings.bare_ms), "bare_embed_ms": percentiles(timings.embed_ms),
             "bare_query_ms": percentiles(timings.query_ms), "paired_extra_ms": percentiles(timings.extra_ms)}
    line = {"split": "test", "claims": len(data.claims), "abstracts": len(data.abstracts), "chunks": chunks,
            "top_k": TOP_K, "timed_requests": len(timings.overhead_ms), "load_average": load, "recall": recalls,
            **times,
            "overhead_minus_bare_p50_ms": round(times["overhead_ms"]["p50"] - times["bare_ms"]["p50"], 2),
            "goal_met": times["overhead_ms"]["p50"] <= GOAL_P50_MS}

    print(f"SciFact test: {len(data.claims)} claims over {len(data.abstracts)} abstracts ({chunks} chunks)\n")
    print("| recall@k | 1 | 3 | 5 | 10 |\n| --- | ---: | ---: | ---: | ---: |")
    print("| chat: sources in the prompt | " + " | ".join(
        f"{recalls[f'chat@{k}']:.3f}" if f"chat@{k}" in recalls else "" for k in BARE_KS) + " |")
    print("| bare dense search | " + " | ".join(f"{recalls[f'bare@{k}']:.3f}" for k in BARE_KS) + " |\n")
    # Other work on the machine moves every time here (the embeddings forward pass most): say how busy it was.
    print(f"| time ({len(timings.overhead_ms)} requests; 1-min load average {load[0]} before, {load[1]} after) "
          "| p50 ms | p95 ms |\n| --- | ---: | ---: |")
    for name, label in (("overhead_ms", "chat: request at the server -> generator call"),
                        ("from_send_ms", "chat: bench's send -> generator call"),
                        ("bare_ms", "bare: embed + Chroma query"), ("bare_embed_ms", "bare: embed"),
                        ("bare_query_ms", "bare: Chroma query"),
                        ("paired_extra_ms", "per claim: overhead - bare (same claim, back to back)")):
        print(f"| {label} | {times[name]['p50']:.1f} | {times[name]['p95']:.1f} |")
    print(f"\noverhead p50 {times['overhead_ms']['p50']:.1f} ms (goal <= {GOAL_P50_MS:.0f} ms: "
          f"{'met' if line['goal_met'] else 'not met'}); over the bare calls: "
          f"{line['overhead_minus_bare_p50_ms']:+.1f} ms at p50, "
          f"{times['overhead_ms']['p95'] - times['bare_ms']['p95']:+.1f} ms at p95")
    if args.json:
        print(json.dumps(line))


if __name__ == "__main__":
    main()
