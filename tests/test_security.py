"""The embeddings server is private by default: no open port by accident, cheap refusals, bounded memory,
and nothing internal in what it tells strangers."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.conftest import MODEL
from tests.servers import embed_server, free_port
from tests.test_errors import assert_openai_error

KEY = "a-key-of-the-strict-kind"


@pytest.fixture(scope="module")
def guarded(log_dir: Path) -> Iterator[str]:
    """Keys, 5 failed checks a minute per address, and a cache of at most 64 KB."""
    with embed_server(log_dir, "guarded", EMBED_API_KEYS=KEY, EMBED_AUTH_FAILURE_LIMIT="5/minute",
                      EMBED_CACHE_BYTES="65536") as url:
        yield url


def raw_request(url: str, head: str, timeout: float = 5) -> tuple[str, float]:
    """Sends only ``head`` (request line and headers, no body) and reads the answer: (text, seconds)."""
    address = httpx.URL(url)
    started = time.perf_counter()
    with socket.create_connection((address.host, address.port), timeout=timeout) as sock:
        sock.sendall(head.encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("latin-1"), time.perf_counter() - started


def test_a_bad_key_is_refused_before_the_body_is_read(guarded: str) -> None:
    # 30 MB announced, not a byte sent: a server that read the body first would wait for it.
    for authorization in ("", "Authorization: Bearer wrong-key\r\n"):
        answer, seconds = raw_request(guarded, "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n"
                                      f"{authorization}Content-Type: application/json\r\n"
                                      "Content-Length: 30000000\r\n\r\n")
        assert answer.startswith("HTTP/1.1 401"), answer[:200]
        assert '"code":"invalid_api_key"' in answer and seconds < 3
    # The same request with the right key does wait for its body (the read times out here).
    with pytest.raises(socket.timeout):
        raw_request(guarded, "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n"
                             f"Authorization: Bearer {KEY}\r\nContent-Length: 30\r\n\r\n", timeout=2)


def test_too_many_failed_keys_from_one_address_get_429_valid_keys_still_pass(guarded: str) -> None:
    port = httpx.URL(guarded).port
    attacker = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=30)
    body = {"input": "x", "model": MODEL}
    url = f"http://127.0.0.1:{port}/v1/embeddings"
    statuses = [attacker.post(url, json=body, headers={"Authorization": f"Bearer guess-{i}"}).status_code
                for i in range(7)]
    assert statuses == [401] * 5 + [429] * 2
    blocked = attacker.post(url, json=body, headers={"Authorization": "Bearer one-more-guess"})
    error = assert_openai_error(blocked, 429, code="rate_limit_exceeded")
    assert "failed authentication" in error["message"] and int(blocked.headers["Retry-After"]) >= 1
    assert attacker.post(f"http://127.0.0.1:{port}/v1/search", json={"knowledge": "k", "query": "q"}).status_code == 429
    # A valid key is never locked out, even from that address (Open WebUI may share it with a guesser).
    assert attacker.post(url, json=body, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert attacker.get(f"http://127.0.0.1:{port}/health").status_code == 200


def test_token_id_inputs_have_a_length_cap(guarded: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    for ids in ([1] * 8193, [[1] * 8193], [[1, 2], [1] * 9000]):
        response = httpx.post(f"{guarded}/v1/embeddings", json={"input": ids, "model": MODEL}, headers=headers)
        assert "at most 8192" in assert_openai_error(response, 400, param="input")["message"]
    fits = httpx.post(f"{guarded}/v1/embeddings", json={"input": [1000] * 3000, "model": MODEL}, headers=headers,
                      timeout=60)
    assert fits.status_code == 200, fits.text  # a long single input of token ids is one input, not 3,000


def test_the_cache_stays_within_its_byte_bound_and_metrics_show_it(guarded: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    texts = [f"text number {i} " + "word " * (i % 50) for i in range(200)]
    for start in range(0, len(texts), 50):
        response = httpx.post(f"{guarded}/v1/embeddings", json={"input": texts[start:start + 50], "model": MODEL},
                              headers=headers, timeout=60)
        assert response.status_code == 200
    metrics = httpx.get(f"{guarded}/metrics").text
    held = float(re.search(r"^embed_cache_bytes (\S+)$", metrics, re.MULTILINE).group(1))
    entries = float(re.search(r"^embed_cache_entries (\S+)$", metrics, re.MULTILINE).group(1))
    # 200 vectors of 384 floats (1.5 KB each) would need ~350 KB; the bound is 64 KB.
    assert 0 < held <= 65536 and 0 < entries < 200


def test_health_and_ready_say_failed_and_the_log_says_why(log_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model-folder"
    models = tmp_path / "models.toml"
    models.write_text(f'[[models]]\nid = "broken"\nsource = "{missing}"\n')
    port = free_port()
    log = tmp_path / "broken.log"
    with log.open("wb") as output:
        server = subprocess.Popen([sys.executable, "-m", "embed_server.cli", "--port", str(port),
                                   "--models-file", str(models)], stdout=output, stderr=subprocess.STDOUT,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1", "EMBED_STATE_DIR": str(tmp_path)})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"{base}/health")
                if health.status_code == 503:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        assert health.status_code == 503 and health.json() == {"status": "failed"}
        ready = httpx.get(f"{base}/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        refused = httpx.post(f"{base}/v1/embeddings", json={"input": "x", "model": "broken"})
        for answer in (health, ready, refused):
            assert str(missing) not in answer.text and "no-such-model-folder" not in answer.text
        assert assert_openai_error(refused, 503)["message"].endswith("its log says why.")
    finally:
        server.terminate()
        server.wait(10)
    assert "no-such-model-folder" in log.read_text()  # the detail is in the log, for the operator


def test_no_open_port_by_accident(log_dir: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("EMBED_API_KEYS", None)
    refused = subprocess.run([sys.executable, "-m", "embed_server.cli", "--host", "0.0.0.0", "--port", str(free_port())],
                             env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "refusing to listen on 0.0.0.0 with no API keys" in refused.stderr
    assert "EMBED_API_KEYS" in refused.stderr and "EMBED_ALLOW_UNAUTHENTICATED" in refused.stderr
    # With a key, or with the explicit opt-in, it serves.
    for extra in ({"EMBED_API_KEYS": KEY}, {"EMBED_ALLOW_UNAUTHENTICATED": "true"}):
        with embed_server(log_dir, "exposed", host="0.0.0.0", **extra) as url:
            headers = {"Authorization": f"Bearer {KEY}"}
            response = httpx.post(f"{url}/v1/embeddings", json={"input": "x", "model": MODEL}, headers=headers)
            assert response.status_code == 200


def test_a_root_path_does_not_open_a_way_around_the_key_check() -> None:
    from fastapi.testclient import TestClient

    from config import load_settings
    from embed_server.app import create_app

    # Not started (no models load): the key check answers before any route would.
    app = create_app(load_settings(api_keys=KEY))
    for root in ("", "/api"):
        client = TestClient(app, root_path=root)
        for path in ("/v1/embeddings", "/v1/rerank", "/v1/search"):
            answer = client.post(f"{root}{path}", json={"input": "x", "model": MODEL})
            assert answer.status_code == 401, (root, path, answer.text)
