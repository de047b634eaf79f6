"""The official openai client and LangChain's OpenAIEmbeddings, unchanged, against the server."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tiktoken_ext

from tests.conftest import MODEL, embed
from tests.reference import cosine

TEXTS = ["The cat sat on the mat.", "Quantum tunnelling in enzymes accelerates proton transfer.", "안녕하세요"]
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def plain_vectors(server: str, texts: list[str]) -> np.ndarray:
    with httpx.Client(base_url=server) as client:
        return np.array([d["embedding"] for d in embed(client, texts).json()["data"]], dtype=np.float32)


@pytest.fixture
def openai_client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


def test_openai_client_default_base64_matches_float(openai_client: openai.OpenAI, server: str) -> None:
    result = openai_client.embeddings.create(model=MODEL, input=TEXTS)
    got = np.array([item.embedding for item in result.data], dtype=np.float32)
    assert np.allclose(got, plain_vectors(server, TEXTS), atol=1e-6)
    assert result.model == MODEL
    assert result.usage.prompt_tokens == result.usage.total_tokens > 0


def test_openai_client_float_and_dimensions(openai_client: openai.OpenAI) -> None:
    result = openai_client.embeddings.create(model=MODEL, input="hello", encoding_format="float", dimensions=128)
    vector = np.array(result.data[0].embedding)
    assert vector.shape == (128,)
    assert abs(np.linalg.norm(vector) - 1) < 1e-5


def test_openai_client_models(openai_client: openai.OpenAI) -> None:
    assert MODEL in [model.id for model in openai_client.models.list()]
    assert openai_client.models.retrieve(MODEL).id == MODEL


def test_openai_client_raises_typed_errors(openai_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        openai_client.embeddings.create(model=MODEL, input="")
    assert bad.value.param == "input"
    with pytest.raises(openai.NotFoundError) as missing:
        openai_client.embeddings.create(model="text-embedding-3-small", input="x")
    assert missing.value.code == "model_not_found"


@pytest.fixture
def tiktoken_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """cl100k_base where tiktoken looks for its download, so LangChain's default path runs offline."""
    source = Path(next(iter(tiktoken_ext.__path__))) / "data" / "cl100k_base.tiktoken"
    shutil.copy(source, tmp_path / hashlib.sha1(CL100K_URL.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    return tmp_path


def test_langchain_default_sends_token_ids_and_gets_text_vectors(server: str, tiktoken_cache: Path) -> None:
    from langchain_openai import OpenAIEmbeddings

    seen: list[dict] = []

    def record(request: httpx.Request) -> None:
        import json

        seen.append(json.loads(request.content))

    embeddings = OpenAIEmbeddings(
        model=MODEL, base_url=f"{server}/v1", api_key="unused", max_retries=0,
        http_client=httpx.Client(event_hooks={"request": [record]}),
    )
    documents = embeddings.embed_documents(TEXTS)
    query = embeddings.embed_query(TEXTS[0])
    # LangChain's default really sends cl100k_base token ids, not text.
    assert all(isinstance(item, list) and isinstance(item[0], int) for item in seen[0]["input"])
    expected = plain_vectors(server, TEXTS)
    for got, want in zip(documents, expected):
        assert cosine(np.array(got), want) >= 0.999
    assert cosine(np.array(query), expected[0]) >= 0.999


def test_langchain_without_context_length_check_sends_text(server: str) -> None:
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(model=MODEL, base_url=f"{server}/v1", api_key="unused",
                                  check_embedding_ctx_length=False, max_retries=0)
    expected = plain_vectors(server, TEXTS)
    for got, want in zip(embeddings.embed_documents(TEXTS), expected):
        assert cosine(np.array(got), want) >= 0.9999
