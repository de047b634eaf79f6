"""The hybrid model sized for pgvector: served from the shipped config/models.toml, short enough for a
halfvec HNSW index, and still retrieving in English and Korean once its vectors are rounded to float16."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest

from config import load_settings
from tests.conftest import HYBRID, MODEL
from tests.servers import EVAL, embed_server
from vector_bridge.openwebui_env import HALFVEC_MAX_INDEXED, model_dimension, pgvector_environment

HYBRID_PG = "all-MiniLM-L6-v2-hybrid-pg"
DENSE_DIM = 384


@pytest.fixture(scope="module")
def shipped(log_dir: Path) -> Iterator[httpx.Client]:
    """A server on the repository's own models file, as `vector-bridge up` runs it."""
    with embed_server(log_dir, "hybrid-pg") as url, httpx.Client(base_url=url, timeout=300) as http:
        yield http


def vectors(client: httpx.Client, texts: list[str], model: str, input_type: str) -> np.ndarray:
    response = client.post("/v1/embeddings", json={"model": model, "input": texts, "input_type": input_type})
    assert response.status_code == 200, response.text
    return np.array([item["embedding"] for item in response.json()["data"]], dtype=np.float32)


def test_vectors_fit_a_halfvec_index_and_openwebui_env_sizes_the_table_for_them(shipped: httpx.Client) -> None:
    settings = load_settings(pgvector_url="postgresql://owui@db.example/owui")  # a URL of one's own: no password file
    spec = next(s for s in settings.models if s.id == HYBRID_PG)
    docs = vectors(shipped, ["Mitochondria produce ATP.", "임종석은 시위를 주도했다."], HYBRID_PG, "document")
    query = vectors(shipped, ["What produces ATP?"], HYBRID_PG, "query")
    assert docs.shape[1] == query.shape[1] == DENSE_DIM + spec.lexical_dim <= HALFVEC_MAX_INDEXED
    assert np.allclose(np.linalg.norm(docs, axis=1), 1, atol=1e-5)
    # The dense half is the dense model's own vector, as in the full-size hybrid.
    assert np.allclose(docs[:, :DENSE_DIM] * math.sqrt(2), vectors(shipped, ["Mitochondria produce ATP.",
                       "임종석은 시위를 주도했다."], MODEL, "document"), atol=1e-5)
    env = pgvector_environment(settings, model_dimension(settings, HYBRID_PG))
    assert env["PGVECTOR_INITIALIZE_MAX_VECTOR_LENGTH"] == str(docs.shape[1])
    assert (env["PGVECTOR_USE_HALFVEC"], env["PGVECTOR_INDEX_METHOD"]) == ("true", "hnsw")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def sample(folder: str, split: str, queries: int, distractors: int) -> tuple[list[str], list[str], list[set[int]]]:
    """The first judged queries of a held-out split, their relevant documents and the corpus's first others."""
    qrels: dict[str, set[str]] = {}
    for line in list((EVAL / folder / "qrels" / f"{split}.tsv").open())[1:]:
        query, doc, score = line.rstrip("\n").split("\t")
        if int(score) > 0:
            qrels.setdefault(query, set()).add(doc)
    asked = [q for q in _jsonl(EVAL / folder / "queries.jsonl") if q["_id"] in qrels][:queries]
    wanted = {doc for q in asked for doc in qrels[q["_id"]]}
    corpus = _jsonl(EVAL / folder / "corpus.jsonl")
    kept = [c for n, c in enumerate(corpus) if c["_id"] in wanted or n < distractors]
    index = {c["_id"]: n for n, c in enumerate(kept)}
    docs = [f"{c.get('title') or ''} {c.get('text') or ''}".strip() for c in kept]
    return docs, [q["text"] for q in asked], [{index[d] for d in qrels[q["_id"]]} for q in asked]


def reciprocal_rank(queries: np.ndarray, docs: np.ndarray, relevant: list[set[int]]) -> float:
    scores = queries @ docs.T
    ranks = [next(k for k, i in enumerate(np.argsort(-row, kind="stable")) if i in rel) for row, rel in zip(scores, relevant)]
    return float(np.mean([1 / (rank + 1) for rank in ranks]))


def halfvec(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16).astype(np.float32)


# A few hundred documents make SciFact easy for the dense model alone (MRR about 0.9): there the hybrid
# must not lose to it, which a broken lexical half (55% of a Latin query's weight) would. Korean is
# where the lexical half does the work.
@pytest.mark.parametrize("folder, split, floor, over_dense", [
    ("scifact", "test", 0.8, -0.05),
    ("korquad_v1_dev_retrieval", "eval", 0.8, 0.4),
])
def test_it_retrieves_as_well_as_the_full_size_hybrid_also_in_float16(
        shipped: httpx.Client, folder: str, split: str, floor: float, over_dense: float) -> None:
    docs, queries, relevant = sample(folder, split, queries=40, distractors=300)
    mrr = {}
    for model in (MODEL, HYBRID, HYBRID_PG):
        d, q = vectors(shipped, docs, model, "document"), vectors(shipped, queries, model, "query")
        mrr[model] = reciprocal_rank(q, d, relevant)
        if model == HYBRID_PG:
            mrr["fp16"] = reciprocal_rank(halfvec(q), halfvec(d), relevant)
    assert mrr[HYBRID_PG] >= floor, mrr
    assert mrr[HYBRID_PG] >= mrr[MODEL] + over_dense, mrr
    assert mrr[HYBRID_PG] >= mrr[HYBRID] - 0.06, mrr  # fewer hashed slots: more collisions, a little lower
    assert abs(mrr["fp16"] - mrr[HYBRID_PG]) <= 0.01, mrr
