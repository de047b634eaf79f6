"""Every bad input gets an OpenAI-shaped error and leaves the server healthy."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.conftest import MODEL, embed
from tests.servers import embed_server


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


def assert_healthy(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert embed(client, "still working").status_code == 200


BAD_BODIES = [
    ({"input": "", "model": MODEL}, "input"),
    ({"input": [], "model": MODEL}, "input"),
    ({"input": [""], "model": MODEL}, "input"),
    ({"input": ["ok", ""], "model": MODEL}, "input"),
    ({"input": [[]], "model": MODEL}, "input"),
    ({"input": 42, "model": MODEL}, "input"),
    ({"input": None, "model": MODEL}, "input"),
    ({"input": {"text": "x"}, "model": MODEL}, "input"),
    ({"input": ["a", 1], "model": MODEL}, "input"),
    ({"input": [1, "a"], "model": MODEL}, "input"),
    ({"input": [True], "model": MODEL}, "input"),
    ({"input": [-1], "model": MODEL}, "input"),
    ({"input": [[1, 2], 3], "model": MODEL}, "input"),
    ({"input": [1.5], "model": MODEL}, "input"),
    ({"input": ["x"] * 2049, "model": MODEL}, "input"),
    ({"input": "x"}, "model"),
    ({"input": "x", "model": ""}, "model"),
    ({"input": "x", "model": 7}, "model"),
    ({"model": MODEL}, "input"),
    ({"input": "x", "model": MODEL, "encoding_format": "int8"}, "encoding_format"),
    ({"input": "x", "model": MODEL, "dimensions": 0}, "dimensions"),
    ({"input": "x", "model": MODEL, "dimensions": -3}, "dimensions"),
    ({"input": "x", "model": MODEL, "dimensions": "64"}, "dimensions"),
    ({"input": "x", "model": MODEL, "dimensions": 385}, "dimensions"),
    ({"input": "x", "model": MODEL, "input_type": "passage"}, "input_type"),
    ({"input": [[100256]], "model": MODEL}, "input"),  # not a cl100k_base token
]


@pytest.mark.parametrize(("body", "param"), BAD_BODIES, ids=[str(i) for i in range(len(BAD_BODIES))])
def test_bad_input_is_a_400_in_openai_shape(client: httpx.Client, body: dict, param: str) -> None:
    assert_openai_error(client.post("/v1/embeddings", json=body), 400, param=param)
    assert_healthy(client)


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'"text"', "{\"input\": \"\udcff\"}".encode("utf-8", "surrogatepass")])
def test_unparseable_body_is_a_400(client: httpx.Client, raw: bytes) -> None:
    response = client.post("/v1/embeddings", content=raw, headers={"content-type": "application/json"})
    assert_openai_error(response, 400)
    assert_healthy(client)


def test_2048_inputs_are_allowed(client: httpx.Client) -> None:
    response = embed(client, [f"item {i}" for i in range(2048)])
    assert response.status_code == 200
    assert len(response.json()["data"]) == 2048


def test_unknown_model_is_a_404(client: httpx.Client) -> None:
    error = assert_openai_error(embed(client, "x", model="text-embedding-3-large"), 404, param="model", code="model_not_found")
    assert MODEL in error["message"]
    assert_openai_error(client.get("/v1/models/nope"), 404, code="model_not_found")
    assert_healthy(client)


def test_unknown_route_and_method_are_openai_shaped(client: httpx.Client) -> None:
    assert_openai_error(client.get("/v1/nothing-here"), 404)
    assert_openai_error(client.get("/v1/embeddings"), 405)


def test_oversized_body_is_a_413(client: httpx.Client) -> None:
    big = ["x" * 1000] * 1100  # 1.1 MB, over the test server's 1 MB limit
    assert_openai_error(embed(client, big), 413, code="request_too_large")
    assert_healthy(client)


def test_oversized_chunked_body_is_a_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "all-MiniLM-L6-v2", "input": ["'
        for _ in range(1200):
            yield b"x" * 1000
        yield b'"]}'

    response = client.post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    assert_openai_error(response, 413)
    assert_healthy(client)


# Servers with other settings --------------------------------------------------------------------

KEYS = ("key-one", "key-two")


@pytest.fixture(scope="module")
def strict_server(log_dir: Path) -> Iterator[str]:
    """API keys, a per-key rate limit, and 400 instead of truncation."""
    with embed_server(log_dir, "strict", EMBED_API_KEYS=",".join(KEYS), EMBED_TRUNCATE="false",
                      EMBED_RATE_LIMIT="20/minute") as url:
        yield url


def test_missing_or_wrong_key_is_a_401(strict_server: str) -> None:
    with httpx.Client(base_url=strict_server) as client:
        assert_openai_error(embed(client, "x"), 401, code="invalid_api_key")
        for header in ("Bearer nope", "Bearer key-one-and-more", "Basic key-one", "key-one", "bearer"):
            assert_openai_error(client.post("/v1/embeddings", json={"input": "x", "model": MODEL},
                                            headers={"Authorization": header}), 401)
        assert_openai_error(client.get("/v1/models"), 401)
        # Health and metrics stay open for probes and scrapers.
        assert client.get("/health").status_code == 200
        assert client.get("/metrics").status_code == 200


def test_every_configured_key_works(strict_server: str) -> None:
    for key in KEYS:
        response = httpx.post(f"{strict_server}/v1/embeddings", json={"input": "x", "model": MODEL},
                              headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text


def test_over_long_input_is_a_400_when_truncation_is_off(strict_server: str) -> None:
    long_text = " ".join(f"token{i}" for i in range(400))
    response = httpx.post(f"{strict_server}/v1/embeddings", json={"input": ["short", long_text], "model": MODEL},
                          headers={"Authorization": "Bearer key-one"})
    error = assert_openai_error(response, 400, param="input", code="context_length_exceeded")
    assert "input[1]" in error["message"] and "256" in error["message"]


def test_rate_limit_is_per_key_and_openai_shaped(strict_server: str) -> None:
    with httpx.Client(base_url=strict_server, headers={"Authorization": "Bearer key-two"}) as client:
        statuses = [client.get("/v1/models").status_code for _ in range(25)]
        assert statuses.count(429) >= 1 and statuses[0] == 200
        limited = client.get("/v1/models")
        assert_openai_error(limited, 429, code="rate_limit_exceeded")
        assert int(limited.headers["Retry-After"]) >= 1
    # The other key has its own budget.
    assert httpx.get(f"{strict_server}/v1/models", headers={"Authorization": "Bearer key-one"}).status_code == 200


@pytest.fixture(scope="module")
def small_queue_server(log_dir: Path) -> Iterator[str]:
    with embed_server(log_dir, "small-queue", EMBED_MAX_QUEUED_TEXTS="8", EMBED_CACHE_SIZE="0",
                      EMBED_RETRY_AFTER_SECONDS="3") as url:
        yield url


def test_full_queue_is_a_429_with_retry_after(small_queue_server: str) -> None:
    texts = [" ".join(["queue"] * 200 + [str(i)]) for i in range(4)]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=small_queue_server, timeout=120) as client:
            return await asyncio.gather(*(embed_async(client, texts) for _ in range(24)))

    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}
    assert statuses.count(429) >= 1 and statuses.count(200) >= 2
    limited = next(r for r in responses if r.status_code == 429)
    assert_openai_error(limited, 429, code="queue_full")
    assert limited.headers["Retry-After"] == "3"
    with httpx.Client(base_url=small_queue_server) as client:
        assert_healthy(client)
        metrics = client.get("/metrics").text
    rejected = next(l for l in metrics.splitlines() if l.startswith("embed_queue_rejections_total{"))
    assert float(rejected.split()[-1]) == statuses.count(429)


def test_a_request_larger_than_the_queue_is_refused(small_queue_server: str) -> None:
    response = httpx.post(f"{small_queue_server}/v1/embeddings", json={"input": [f"x{i}" for i in range(9)], "model": MODEL})
    assert_openai_error(response, 413, code="request_too_large")


async def embed_async(client: httpx.AsyncClient, texts: list[str]) -> httpx.Response:
    return await client.post("/v1/embeddings", json={"input": texts, "model": MODEL})
