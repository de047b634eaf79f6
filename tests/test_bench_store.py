"""bench/store.py's own arithmetic: chunks as Open WebUI cuts them, synthetic vectors in the real vectors'
space, the exact top k that recall is measured against, and how a PostgreSQL plan is read."""

from __future__ import annotations

import sys

import numpy as np

from tests.servers import REPO

sys.path.insert(0, str(REPO / "bench"))
import store  # noqa: E402


def test_chunks_are_at_most_1000_characters_overlap_and_cover_the_text() -> None:
    text = " ".join(f"Sentence number {n} says something about cells." for n in range(120))
    pieces = store.chunks_of(text)
    assert len(pieces) > 3
    assert all(len(piece) <= store.CHUNK_CHARS for piece in pieces)
    assert all(piece.endswith(".") for piece in pieces)  # cut after a sentence
    for before, after in zip(pieces, pieces[1:]):
        assert after[:20] in before  # overlapping
    assert pieces[0].startswith("Sentence number 0 ") and pieces[-1].endswith("number 119 says something about cells.")
    assert store.chunks_of("short") == ["short"]


def test_synthetic_vectors_are_unit_length_and_keep_the_real_vectors_mean_direction() -> None:
    rng = np.random.default_rng(0)
    shared = rng.standard_normal(64)
    real = shared + 0.5 * rng.standard_normal((500, 64))  # anisotropic, like sentence embeddings
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    made = store.synthetic(real.astype(np.float32), 2000, seed=1)
    assert made.shape == (2000, 64) and made.dtype == np.float32
    assert np.allclose(np.linalg.norm(made, axis=1), 1, atol=1e-5)
    mean_pair = lambda x: float((x[:200] @ x[200:400].T).mean())  # noqa: E731
    assert abs(mean_pair(made) - mean_pair(real)) < 0.1
    assert not np.any(np.isclose(made @ real.T, 1, atol=1e-4))  # not copies
    assert np.array_equal(made, store.synthetic(real.astype(np.float32), 2000, seed=1))  # reproducible


def test_exact_top_finds_the_k_most_similar() -> None:
    vectors = np.eye(6, dtype=np.float32)
    query = np.array([[0.9, 0.5, 0.1, 0, 0, 0.3]], dtype=np.float32)
    assert set(store.exact_top(vectors, query, 3)[0]) == {0, 1, 5}


def test_plan_kind_names_what_postgresql_chose() -> None:
    assert store.plan_kind("Limit\n  -> Index Scan using idx_document_chunk_vector on document_chunk") == "hnsw"
    assert store.plan_kind("Sort\n  -> Bitmap Index Scan on idx_document_chunk_collection_name") == \
        "exact, collection index"
    assert store.plan_kind("Sort\n  -> Seq Scan on document_chunk") == "exact, table scan"
