"""Retrieval quality of served models, with vectors fetched through our HTTP API as Open WebUI stores them.

Documents are embedded with ``input_type: document`` and queries with ``input_type: query``; each
query is then searched by exact cosine over all documents and through a real Chroma server (cosine
HNSW, as Open WebUI's collections are). Prints nDCG@10 and recall@100 per data set and model, with
the vector size and the documents embedded per second. ``--halfvec`` adds the exact figures with every
vector rounded to float16, as pgvector's ``halfvec`` columns store them.

``--split held-out`` judges on the queries no weight was tuned on: ``qrels/eval.tsv`` where the data
set has one (KorQuAD), else ``qrels/test.tsv`` (SciFact); bench/tune_hybrid.py tunes on the others.

    python bench/retrieval.py --data ../shared/eval/scifact --model all-MiniLM-L6-v2 \
        --model all-MiniLM-L6-v2-hybrid [--split held-out] [--halfvec] [--json]

Backends: ``--backend torch --backend onnx-int8`` serves the transformer models of config/models.toml
with each runtime in turn (a server per backend and data set), so their nDCG@10 stand side by side.
Splits: ``--split`` picks the qrels file (SciFact: train, test; KorQuAD: tune, eval, test); tune
on train/tune, report test/eval.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import chroma_server, embed_server  # noqa: E402

from config.settings import DEFAULT_MODELS_FILE, read_models_file  # noqa: E402

REQUEST_TEXTS = 32
CONCURRENT_REQUESTS = 4
# models.toml fields that select each backend for the transformer models.
BACKENDS: dict[str, dict[str, str]] = {"torch": {}, "onnx": {"runtime": "onnx"},
                                       "onnx-int8": {"runtime": "onnx", "quantize": "int8"}}


@dataclass
class DataSet:
    name: str
    doc_ids: list[str]
    docs: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]
    # Real corpora hold blank documents and queries: the API refuses empty input (400), so they are
    # left out and counted. A relevant document left out stays in qrels: no system can find it.
    skipped_documents: int = 0
    skipped_queries: int = 0
    unreachable_relevant: int = 0  # relevance judgements pointing at a skipped document


class EmptyDataSet(ValueError):
    """Nothing left to evaluate once blank documents or queries are skipped."""


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


HELD_OUT = "held-out"


def qrels_file(folder: Path, split: str) -> Path:
    """``qrels/<split>.tsv``; ``held-out``: eval.tsv where a data set has a tuning/eval split, else test.tsv."""
    if split == HELD_OUT:
        split = "eval" if (folder / "qrels" / "eval.tsv").is_file() else "test"
    return folder / "qrels" / f"{split}.tsv"


def load(folder: Path, max_queries: int | None, split: str = "test") -> DataSet:
    corpus = _jsonl(folder / "corpus.jsonl")
    qrels: dict[str, dict[str, int]] = {}
    path = qrels_file(folder, split)
    for line in list(path.open())[1:]:
        query, doc, score = line.rstrip("\n").split("\t")
        if int(score) > 0:
            qrels.setdefault(query, {})[doc] = int(score)
    texts = {c["_id"]: f"{c.get('title') or ''} {c.get('text') or ''}".strip() for c in corpus}
    kept = {doc_id: text for doc_id, text in texts.items() if text}
    judged = [q for q in _jsonl(folder / "queries.jsonl") if q["_id"] in qrels]
    queries = [q for q in judged if (q.get("text") or "").strip()][:max_queries]
    if not kept or not queries:
        raise EmptyDataSet(f"{folder}: {len(kept)} non-blank documents and {len(queries)} non-blank judged queries")
    asked = {q["_id"] for q in queries}
    return DataSet(
        f"{folder.name} ({path.stem})", list(kept), list(kept.values()),
        [q["_id"] for q in queries], [q["text"] for q in queries], qrels,
        skipped_documents=len(texts) - len(kept),
        skipped_queries=len(judged) - len([q for q in judged if (q.get("text") or "").strip()]),
        unreachable_relevant=sum(1 for query, docs in qrels.items() if query in asked
                                 for doc in docs if doc not in kept),
    )


async def embed_all(url: str, model: str, texts: list[str], input_type: str) -> np.ndarray:
    """Vectors for all texts, a few requests in flight, as a client like Open WebUI would fetch them."""
    out: list[np.ndarray | None] = [None] * math.ceil(len(texts) / REQUEST_TEXTS)
    gate = asyncio.Semaphore(CONCURRENT_REQUESTS)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        async def one(index: int) -> None:
            chunk = texts[index * REQUEST_TEXTS:(index + 1) * REQUEST_TEXTS]
            async with gate:
                response = await client.post("/v1/embeddings", json={"model": model, "input": chunk,
                                                                      "input_type": input_type})
            response.raise_for_status()
            out[index] = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)

        await asyncio.gather(*(one(i) for i in range(len(out))))
    return np.vstack(out)  # type: ignore[arg-type]


def metrics(rankings: list[list[int]], data: DataSet) -> tuple[float, float]:
    ndcg, recall = 0.0, 0.0
    for query_id, ranked in zip(data.query_ids, rankings):
        relevant = data.qrels[query_id]
        gains = [relevant.get(data.doc_ids[i], 0) for i in ranked]
        dcg = sum(g / math.log2(k + 2) for k, g in enumerate(gains[:10]))
        ideal = sum(g / math.log2(k + 2) for k, g in enumerate(sorted(relevant.values(), reverse=True)[:10]))
        ndcg += dcg / ideal
        recall += sum(1 for i in ranked[:100] if data.doc_ids[i] in relevant) / len(relevant)
    return ndcg / len(rankings), recall / len(rankings)


def exact_rankings(queries: np.ndarray, docs: np.ndarray, k: int = 100) -> list[list[int]]:
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    d = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    rankings = []
    for start in range(0, len(q), 512):
        scores = q[start:start + 512] @ d.T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        for row, candidates in zip(scores, top):
            rankings.append(candidates[np.argsort(-row[candidates])].tolist())
    return rankings


def chroma_rankings(address: tuple[str, int], name: str, queries: np.ndarray, docs: np.ndarray) -> list[list[int]]:
    import chromadb

    client = chromadb.HttpClient(host=address[0], port=address[1])
    collection = client.create_collection(name, metadata={"hnsw:space": "cosine"})  # as Open WebUI does
    for start in range(0, len(docs), 1000):
        collection.add(ids=[str(i) for i in range(start, min(start + 1000, len(docs)))],
                       embeddings=docs[start:start + 1000])
    rankings = []
    for start in range(0, len(queries), 100):
        found = collection.query(query_embeddings=queries[start:start + 100], n_results=min(100, len(docs)),
                                 include=[])
        rankings += [[int(i) for i in ids] for ids in found["ids"]]
    client.delete_collection(name)
    return rankings


def _toml_value(value: object) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


@contextmanager
def models_file(backend: str) -> Iterator[dict[str, str]]:
    """Settings for a server whose transformer models (config/models.toml) run on ``backend``."""
    if backend == "torch":
        yield {}
        return
    lines = []
    for spec in read_models_file(DEFAULT_MODELS_FILE):
        fields = spec.model_dump(exclude_defaults=True) | (BACKENDS[backend] if spec.kind == "transformer" else {})
        lines += ["[[models]]", *(f"{key} = {_toml_value(value)}" for key, value in fields.items()), ""]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "models.toml"
        path.write_text("\n".join(lines))
        yield {"EMBED_MODELS_FILE": str(path)}


def evaluate(url: str, chroma: tuple[str, int] | None, data: DataSet, model: str, halfvec: bool = False) -> dict:
    started = time.perf_counter()
    docs = asyncio.run(embed_all(url, model, data.docs, "document"))
    docs_per_s = len(data.docs) / (time.perf_counter() - started)
    queries = asyncio.run(embed_all(url, model, data.queries, "query"))
    ndcg, recall = metrics(exact_rankings(queries, docs), data)
    result = {"data": data.name, "model": model, "ndcg@10": round(ndcg, 4), "recall@100": round(recall, 4),
              "dim": int(docs.shape[1]), "docs_per_s": round(docs_per_s, 1), "queries": len(data.queries),
              "documents": len(data.docs), "skipped_documents": data.skipped_documents,
              "skipped_queries": data.skipped_queries, "unreachable_relevant": data.unreachable_relevant}
    if halfvec:
        # pgvector's halfvec keeps float16 for the stored vectors and casts the query the same way.
        h_ndcg, h_recall = metrics(exact_rankings(*(v.astype(np.float16).astype(np.float32) for v in (queries, docs))),
                                   data)
        result |= {"fp16_ndcg@10": round(h_ndcg, 4), "fp16_recall@100": round(h_recall, 4)}
    if chroma is not None:
        c_ndcg, c_recall = metrics(chroma_rankings(chroma, f"bench-{abs(hash(model)) % 10**8}", queries, docs), data)
        result |= {"chroma_ndcg@10": round(c_ndcg, 4), "chroma_recall@100": round(c_recall, 4)}
    return result


def print_table(results: list[dict]) -> None:
    halfvec = any("fp16_ndcg@10" in r for r in results)
    print("| data | split | model | backend | nDCG@10 | recall@100 | nDCG@10 (Chroma) | recall@100 (Chroma) | "
          + ("nDCG@10 (fp16) | recall@100 (fp16) | " if halfvec else "") + "dim | docs/s |")
    print("| --- " * (12 if halfvec else 10) + "|")
    for r in results:
        fp16 = (f"{r.get('fp16_ndcg@10', float('nan')):.3f} | {r.get('fp16_recall@100', float('nan')):.3f} | "
                if halfvec else "")
        print(f"| {r['data']} | {r['split']} | {r['model']} | {r['backend']} | {r['ndcg@10']:.4f} | {r['recall@100']:.3f} | "
              f"{r.get('chroma_ndcg@10', float('nan')):.3f} | {r.get('chroma_recall@100', float('nan')):.3f} | "
              f"{fp16}{r['dim']} | {r['docs_per_s']:.1f} |")
    for data in dict.fromkeys(r["data"] for r in results):
        r = next(r for r in results if r["data"] == data)
        if r["skipped_documents"] or r["skipped_queries"]:
            print(f"\n{data}: skipped {r['skipped_documents']} blank documents and {r['skipped_queries']} blank "
                  f"queries ({r['unreachable_relevant']} relevance judgements point at a skipped document)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, action="append", required=True, help="a BEIR-layout folder")
    parser.add_argument("--model", action="append", required=True, help="a served model id")
    parser.add_argument("--url", help="a running server (default: start one per data set, with fresh state)")
    parser.add_argument("--max-queries", type=int, help="use only the first N judged queries")
    parser.add_argument("--split", default="test", help="the qrels file to judge by: test (default), train, "
                        f"tune, eval, or {HELD_OUT} (eval where a data set has it, else test)")
    parser.add_argument("--halfvec", action="store_true", help="also rank vectors rounded to float16 (pgvector halfvec)")
    parser.add_argument("--keep-cache", action="store_true", help="leave the server's embedding cache on: "
                        "models sharing a dense model embed each text once (documents/s then counts cache hits)")
    parser.add_argument("--backend", action="append", choices=list(BACKENDS),
                        help="serve the transformer models with this runtime (repeatable; default torch)")
    parser.add_argument("--no-chroma", action="store_true", help="exact cosine only")
    parser.add_argument("--json", action="store_true", help="print one JSON line last")
    args = parser.parse_args()

    backends = args.backend or ["torch"]
    if args.url and backends != ["torch"]:
        parser.error("--backend starts servers of its own: leave out --url")
    results = []
    with (nullcontext(None) if args.no_chroma else chroma_server()) as chroma:
        for folder in args.data:
            data = load(folder, args.max_queries, args.split)
            for backend in backends:
                # A fresh server per data set: the hybrid models learn IDF from the documents they embed.
                # No cache by default: documents/s must count real forward passes, not repeats across models.
                cache = {} if args.keep_cache else {"EMBED_CACHE_SIZE": "0"}
                with models_file(backend) as settings, \
                        (nullcontext(args.url) if args.url else embed_server(**cache, **settings)) as url:
                    for model in args.model:
                        label = "--url" if args.url else backend
                        results.append(evaluate(url, chroma, data, model, args.halfvec)
                                       | {"backend": label, "split": args.split})
                        print(f"# {results[-1]}", file=sys.stderr, flush=True)
    print_table(results)
    if args.json:
        print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
