"""Choose the hybrid models' query weights (and the lexical size) on the tuning splits only.

A hybrid query's cosine with a document is ``a * dense cosine + (1 - a) * lexical cosine`` up to a
per-query constant (embed_server/hybrid.py), so rankings for any mix can be computed here from the
two similarity matrices without embedding anything again. The dense vectors come from a real server
(cached under ``--cache``, outside the repository); the lexical vectors and the IDF come from the
server's own code (embed_server/backends/lexical.py), learned from the corpus as the server learns it.

Tuning splits: SciFact ``qrels/train.tsv`` and KorQuAD ``qrels/tune.tsv``. The choice maximises the
mean of their nDCG@10 over a grid of ``query_dense_weight`` (decides Latin-script queries) and
``query_dense_weight_cjk`` (Korean, Chinese, Japanese; a query mixes both by its script share). Among
lexical sizes, the smallest whose tuning score is within ``--tolerance`` of the best is chosen (shorter
vectors index and search faster). Held-out figures (SciFact ``test``, KorQuAD ``eval``) are printed
after the choice, for the models in config/models.toml at their configured weights and for the chosen
ones, in float32 and rounded to float16 (pgvector's halfvec); they never enter the choice.

    python bench/tune_hybrid.py [--dims 4096,3584,3072,2048,1024] [--json]

The lexical side has no other free parameter: term weights are ``1 + log tf`` and the IDF is BM25's.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _servers import EVAL, embed_server  # noqa: E402
from retrieval import DataSet, embed_all, load  # noqa: E402

from config.settings import DEFAULT_MODELS_FILE, read_models_file  # noqa: E402
from embed_server.backends.lexical import DocumentFrequencies, HashedLexicalEncoder, cjk_share  # noqa: E402

# (folder, tuning split, held-out split)
DATA = [("scifact", "train", "test"), ("korquad_v1_dev_retrieval", "tune", "eval")]
DENSE_WEIGHTS = [round(0.05 * i, 2) for i in range(21)]
CJK_WEIGHTS = [0.0, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3]
PGVECTOR_HALFVEC_MAX = 4000


@dataclass
class Split:
    data: DataSet
    dense: np.ndarray      # queries x documents: dense cosine
    cjk: np.ndarray        # per query: share of CJK letters


@dataclass
class Corpus:
    name: str
    tune: DataSet
    held_out: DataSet
    doc_dense: np.ndarray
    query_dense: dict[str, np.ndarray]  # query id -> dense vector


def cache_key(*parts: object) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(repr(part).encode("utf-8") + b"\0")
    return digest.hexdigest()[:20]


def dense_vectors(url: str, model: str, texts: list[str], input_type: str, cache: Path) -> np.ndarray:
    path = cache / f"dense-{cache_key(model, input_type, texts)}.npy"
    if path.is_file():
        return np.load(path)
    vectors = asyncio.run(embed_all(url, model, texts, input_type))
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def load_corpus(folder: Path, tune_split: str, held_split: str, url: str, model: str, cache: Path) -> Corpus:
    tune, held_out = load(folder, None, tune_split), load(folder, None, held_split)
    assert tune.doc_ids == held_out.doc_ids
    ids = list(dict.fromkeys(tune.query_ids + held_out.query_ids))
    text = dict(zip(tune.query_ids + held_out.query_ids, tune.queries + held_out.queries))
    docs = dense_vectors(url, model, tune.docs, "document", cache)
    queries = dense_vectors(url, model, [text[i] for i in ids], "query", cache)
    return Corpus(folder.name, tune, held_out, docs, dict(zip(ids, queries)))


class Lexical:
    """Document and query lexical vectors of one size, built exactly as the server builds them."""

    def __init__(self, corpus: Corpus, dim: int) -> None:
        self.encoder = HashedLexicalEncoder(dim)
        frequencies = DocumentFrequencies(dim, None)
        slots = [self.encoder.slots(text) for text in corpus.tune.docs]
        for text, s in zip(corpus.tune.docs, slots):
            frequencies.add(text, s)
        self.docs = np.stack([self.encoder.vector(s) for s in slots])
        self.idf = frequencies.idf()

    def queries(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.encoder.vector(self.encoder.slots(t), self.idf) for t in texts])


def ndcg10(scores: np.ndarray, data: DataSet) -> float:
    top = np.argpartition(-scores, 10, axis=1)[:, :10]
    total = 0.0
    for query_id, row, candidates in zip(data.query_ids, scores, top):
        relevant = data.qrels[query_id]
        ranked = candidates[np.argsort(-row[candidates], kind="stable")]
        dcg = sum(relevant.get(data.doc_ids[i], 0) / math.log2(k + 2) for k, i in enumerate(ranked))
        ideal = sum(g / math.log2(k + 2) for k, g in enumerate(sorted(relevant.values(), reverse=True)[:10]))
        total += dcg / ideal
    return total / len(data.query_ids)


class Scorer:
    """nDCG@10 of one split for any weights, from precomputed dense and lexical similarities."""

    def __init__(self, corpus: Corpus, data: DataSet, lexical: Lexical) -> None:
        self.corpus, self.data, self.lexical = corpus, data, lexical
        self.q_dense = np.stack([corpus.query_dense[i] for i in data.query_ids])
        self.q_lexical = lexical.queries(data.queries)
        self.dense = self.q_dense @ corpus.doc_dense.T
        self.lex = self.q_lexical @ lexical.docs.T
        self.cjk = np.array([cjk_share(q) for q in data.queries], dtype=np.float32)[:, None]

    def mix(self, weight: float, weight_cjk: float) -> np.ndarray:
        return (1 - self.cjk) * weight + self.cjk * weight_cjk

    def ndcg(self, weight: float, weight_cjk: float) -> float:
        a = self.mix(weight, weight_cjk)
        return ndcg10(a * self.dense + (1 - a) * self.lex, self.data)

    def ndcg_fp16(self, weight: float, weight_cjk: float) -> float:
        """The same ranking from the served vectors themselves, rounded to float16 as halfvec stores them."""
        a = self.mix(weight, weight_cjk)
        queries = np.hstack([a * self.q_dense, (1 - a) * self.q_lexical])
        queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        docs = np.hstack([self.corpus.doc_dense, self.lexical.docs]) / math.sqrt(2)
        q16, d16 = (v.astype(np.float16).astype(np.float32) for v in (queries, docs))
        q16 /= np.maximum(np.linalg.norm(q16, axis=1, keepdims=True), 1e-12)
        d16 /= np.maximum(np.linalg.norm(d16, axis=1, keepdims=True), 1e-12)
        return ndcg10(q16 @ d16.T, self.data)


def tune(scorers: list[Scorer]) -> tuple[float, float, float, list[float]]:
    """Best (weight, weight_cjk) by the mean nDCG@10 over the tuning splits; ties go to the first in grid order."""
    best: tuple[float, float, float, list[float]] | None = None
    cache: dict[tuple[int, float, float], float] = {}
    for weight in DENSE_WEIGHTS:
        for weight_cjk in CJK_WEIGHTS:
            scores = []
            for n, scorer in enumerate(scorers):
                # A split without CJK queries does not depend on weight_cjk: score it once per weight.
                key = (n, weight, weight_cjk if scorer.cjk.any() else -1.0)
                if key not in cache:
                    cache[key] = scorer.ndcg(weight, weight_cjk)
                scores.append(cache[key])
            mean = sum(scores) / len(scores)
            if best is None or mean > best[2] + 1e-12:
                best = (weight, weight_cjk, mean, scores)
    assert best is not None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval-dir", type=Path, default=EVAL, help="the shared evaluation data")
    parser.add_argument("--dense", default="all-MiniLM-L6-v2", help="the served dense model")
    parser.add_argument("--dims", default="4096,3584,3072,2048,1024", help="lexical sizes to tune")
    parser.add_argument("--tolerance", type=float, default=0.002,
                        help="a smaller lexical size wins when its tuning score is this close to the best")
    parser.add_argument("--url", help="a running embeddings server (default: start one)")
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/openwebui-local-backend/tune-hybrid").expanduser(),
                        help="where dense vectors are kept between runs")
    parser.add_argument("--json", action="store_true", help="print one JSON line last")
    args = parser.parse_args()
    dims = [int(d) for d in args.dims.split(",")]

    with (nullcontext(args.url) if args.url else embed_server()) as url:
        corpora = [load_corpus(args.eval_dir / folder, t, h, url, args.dense, args.cache) for folder, t, h in DATA]
    dense_dim = corpora[0].doc_dense.shape[1]
    configured = [s for s in read_models_file(DEFAULT_MODELS_FILE) if s.kind == "hybrid" and s.dense == args.dense]

    rows: list[dict] = []
    chosen: dict[int, tuple[float, float, float, list[float]]] = {}
    print("## Tuning splits (SciFact train, KorQuAD tune): the best weights per lexical size\n")
    print("| lexical_dim | total dim | query_dense_weight | query_dense_weight_cjk | SciFact train | KorQuAD tune | mean |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    lexicals: dict[int, list[Lexical]] = {}
    for dim in sorted(set(dims) | {s.lexical_dim for s in configured}, reverse=True):
        lexicals[dim] = [Lexical(c, dim) for c in corpora]
        scorers = [Scorer(c, c.tune, lex) for c, lex in zip(corpora, lexicals[dim])]
        chosen[dim] = best = tune(scorers)
        print(f"| {dim} | {dim + dense_dim} | {best[0]:.3f} | {best[1]:.3f} | {best[3][0]:.4f} | {best[3][1]:.4f} | "
              f"{best[2]:.4f} |", flush=True)

    fits = [d for d in dims if d + dense_dim <= PGVECTOR_HALFVEC_MAX]
    top = max(chosen[d][2] for d in fits)
    pg_dim = min(d for d in fits if chosen[d][2] >= top - args.tolerance)
    print(f"\nChosen for pgvector (total <= {PGVECTOR_HALFVEC_MAX}): lexical_dim = {pg_dim}, "
          f"query_dense_weight = {chosen[pg_dim][0]}, query_dense_weight_cjk = {chosen[pg_dim][1]}")
    for spec in configured:
        w, wc = chosen[spec.lexical_dim][:2]
        same = (w, wc) == (spec.query_dense_weight, spec.query_dense_weight_cjk)
        print(f"{spec.id} (lexical_dim {spec.lexical_dim}): configured {spec.query_dense_weight}/"
              f"{spec.query_dense_weight_cjk}, tuned {w}/{wc}{' (the same)' if same else ''}")

    candidates = [("dense only", 0, 1.0, 1.0)]
    candidates += [(f"{s.id} (configured)", s.lexical_dim, s.query_dense_weight, s.query_dense_weight_cjk)
                   for s in configured]
    candidates += [(f"tuned, lexical_dim {d}", d, *chosen[d][:2]) for d in sorted(chosen, reverse=True)]
    print("\n## All figures: tuning splits (train/tune) and held-out (test/eval, never used to choose)\n")
    print("| variant | dim | weights | SciFact train | KorQuAD tune | SciFact test | KorQuAD eval | "
          "SciFact test fp16 | KorQuAD eval fp16 |")
    print("| --- " + "| ---: " * 8 + "|")
    for label, dim, w, wc in candidates:
        lex = lexicals[dim or max(lexicals)]
        train = [Scorer(c, c.tune, lx) for c, lx in zip(corpora, lex)]
        held = [Scorer(c, c.held_out, lx) for c, lx in zip(corpora, lex)]
        row = {"variant": label, "dim": dense_dim + dim, "lexical_dim": dim, "query_dense_weight": w,
               "query_dense_weight_cjk": wc,
               "scifact_train": round(train[0].ndcg(w, wc), 4), "korquad_tune": round(train[1].ndcg(w, wc), 4),
               "scifact_test": round(held[0].ndcg(w, wc), 4), "korquad_eval": round(held[1].ndcg(w, wc), 4)}
        if dim:
            row |= {"scifact_test_fp16": round(held[0].ndcg_fp16(w, wc), 4),
                    "korquad_eval_fp16": round(held[1].ndcg_fp16(w, wc), 4)}
        rows.append(row)
        weights = f"{w}/{wc}" if dim else "-"
        print(f"| {label} | {row['dim']} | {weights} | {row['scifact_train']:.4f} | {row['korquad_tune']:.4f} | "
              f"{row['scifact_test']:.4f} | {row['korquad_eval']:.4f} | "
              f"{row.get('scifact_test_fp16', float('nan')):.4f} | {row.get('korquad_eval_fp16', float('nan')):.4f} |",
              flush=True)
    if args.json:
        print(json.dumps({"pgvector": {"lexical_dim": pg_dim, "query_dense_weight": chosen[pg_dim][0],
                                       "query_dense_weight_cjk": chosen[pg_dim][1]},
                          "tuned": {str(d): chosen[d][:2] for d in chosen}, "rows": rows}))


if __name__ == "__main__":
    main()
