"""Two embeddings replicas behind a round-robin nginx, sharing a real Redis: they answer as one.

Same vectors from either replica (documents and queries, hybrid included), also after a restart;
a text one replica embedded is answered by the other from the shared cache (seen in its /metrics);
Redis killed mid-run costs no request, shows in /metrics and the log, and is used again once back.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import HYBRID, MODEL, PREFIXED
from tests.redis_server import RedisServer
from tests.servers import free_port
from vector_bridge.stack import Service

pytestmark = pytest.mark.slow

DOCUMENTS = [
    "Mitochondria produce ATP through oxidative phosphorylation in eukaryotic cells.",
    "The cat sat on the mat while the dog slept by the fire.",
    "임종석은 1989년 여의도 농민 폭력 시위를 주도한 혐의로 지명수배되었다.",
    "Ribosomes translate messenger RNA into proteins in the cytoplasm.",
    "서울은 대한민국의 수도이며 한강이 도시를 가로지른다.",
    "Photosynthesis converts light energy into chemical energy in chloroplasts.",
]
QUERIES = ["How do cells produce ATP?", "Where did the cat sleep?", "임종석이 주도한 시위는?", "한강이 흐르는 도시"]


@dataclass
class Replica:
    name: str
    service: Service

    @property
    def url(self) -> str:
        return self.service.ready_url.removesuffix("/ready")

    @property
    def log(self) -> Path:
        return self.service.log_path

    def restart(self) -> None:
        self.service.stop()
        self.service.spawn()
        self.service.wait_ready()

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text

    def metric(self, name: str, **labels: str) -> float:
        """A sample's value, 0 when it does not exist yet."""
        for line in self.metrics().splitlines():
            match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
            if match and match.group(1) == name and dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or "")) == labels:
                return float(match.group(3))
        return 0.0

    def events(self, event: str) -> list[dict]:
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("event") == event]


@dataclass
class Pool:
    redis: RedisServer
    a: Replica
    b: Replica
    proxy: str  # nginx, round robin over a and b
    prefix: str

    @property
    def replicas(self) -> list[Replica]:
        return [self.a, self.b]


def replica(name: str, root: Path, redis: RedisServer, models_file: Path, prefix: str) -> Replica:
    port = free_port()
    env = {"HF_HUB_OFFLINE": "1", "EMBED_PORT": str(port), "EMBED_STATE_DIR": str(root / "state" / name),
           "EMBED_MODELS_FILE": str(models_file), "EMBED_THREADS": "1", "EMBED_REDIS_URL": redis.url,
           "EMBED_REDIS_PREFIX": prefix, "EMBED_IDF_REFRESH_SECONDS": "0.2", "EMBED_REDIS_RETRY_SECONDS": "1",
           "EMBED_REDIS_CACHE_KEY": "replicas-share-this-cache-key"}
    service = Service(name, [sys.executable, "-m", "embed_server.cli"], f"http://127.0.0.1:{port}/ready",
                      root / "logs" / f"{name}.log", env=env)
    return Replica(name, service)


def round_robin_nginx(root: Path, upstreams: list[str]) -> tuple[Service, str]:
    prefix = root / "nginx"
    for folder in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / folder).mkdir(parents=True, exist_ok=True)
    port = free_port()
    servers = "\n".join(f"    server {address};" for address in upstreams)
    # non_idempotent: an embeddings POST may go to the other replica when one is down (it changes
    # nothing twice: the shared counts take each document once).
    (prefix / "nginx.conf").write_text(f"""
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/client_body; proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
  upstream embeddings {{
{servers}
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://embeddings;
      proxy_next_upstream error timeout non_idempotent;
    }}
  }}
}}
""")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    service = Service("nginx", [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
                      f"http://127.0.0.1:{port}/health", root / "logs" / "nginx.log")
    return service, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def pool(redis_server: RedisServer, models_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    root = tmp_path_factory.mktemp("replicas")
    prefix = f"replicas-{secrets.token_hex(3)}:"
    a = replica("replica-a", root, redis_server, models_file, prefix)
    b = replica("replica-b", root, redis_server, models_file, prefix)
    for one in (a, b):
        one.service.spawn()
    services = [a.service, b.service]
    try:
        for one in (a, b):
            one.service.wait_ready()
        nginx, proxy = round_robin_nginx(root, [a.url.removeprefix("http://"), b.url.removeprefix("http://")])
        services.append(nginx)
        nginx.spawn()
        nginx.wait_ready()
        yield Pool(redis_server, a, b, proxy, prefix)
    finally:
        for service in reversed(services):
            service.stop()
        keep = Path(__file__).resolve().parents[1] / "artifacts" / "logs"
        keep.mkdir(parents=True, exist_ok=True)
        for log in (root / "logs").glob("*.log"):
            shutil.copy(log, keep / f"replicas-{log.name}")


def embed(url: str, texts: list[str], model: str, input_type: str | None = None) -> np.ndarray:
    body = {"input": texts, "model": model, **({"input_type": input_type} if input_type else {})}
    response = httpx.post(f"{url}/v1/embeddings", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return np.array([item["embedding"] for item in response.json()["data"]], dtype=np.float32)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def shared_generation(pool: Pool) -> int:
    with pool.redis.client() as client:
        return int(client.hget(f"{pool.prefix}{{idf:{HYBRID}:4096}}:meta", "generation") or -1)


def wait_until_agreed(pool: Pool) -> None:
    """Both replicas hold the shared counts' current generation."""
    wait_for(lambda: all(r.metric("embed_idf_generation", model=HYBRID) == shared_generation(pool)
                         for r in pool.replicas), "both replicas refreshed to the shared IDF")


def requests_served(replica: Replica) -> float:
    return replica.metric("embed_texts_total", model=MODEL)


def test_replicas_behind_round_robin_return_the_same_vectors(pool: Pool) -> None:
    before_queries = embed(pool.a.url, QUERIES, HYBRID, "query")
    served = [requests_served(r) for r in pool.replicas]
    for text in DOCUMENTS:  # one chunk a request, as Open WebUI sends them: they alternate replicas
        embed(pool.proxy, [text], HYBRID, "document")
    assert all(requests_served(r) > count for r, count in zip(pool.replicas, served)), "round robin used both"
    wait_until_agreed(pool)

    for model, input_type in [(HYBRID, "query"), (HYBRID, "document"), (HYBRID, None), (MODEL, None),
                              (PREFIXED, "query"), (PREFIXED, "document")]:
        texts = QUERIES + DOCUMENTS[:2]
        through_proxy = [embed(pool.proxy, texts, model, input_type) for _ in range(4)]
        direct = [embed(r.url, texts, model, input_type) for r in pool.replicas]
        for vectors in through_proxy[1:] + direct:
            assert np.array_equal(vectors, through_proxy[0]), (model, input_type)
    # The documents changed the query side (IDF) for both replicas alike: the check above could fail.
    after_queries = embed(pool.b.url, QUERIES, HYBRID, "query")
    assert not np.allclose(after_queries, before_queries, atol=1e-4)


def test_a_document_one_replica_saw_changes_the_other_replicas_queries(pool: Pool) -> None:
    wait_until_agreed(pool)
    query = ["zygomorphic orchid pollination by the cat"]  # terms whose IDF changes unequally
    before = embed(pool.b.url, query, HYBRID, "query")
    embed(pool.a.url, ["Zygomorphic orchid flowers guide bees during pollination."], HYBRID, "document")
    wait_until_agreed(pool)
    after_b, after_a = embed(pool.b.url, query, HYBRID, "query"), embed(pool.a.url, query, HYBRID, "query")
    assert np.array_equal(after_a, after_b)
    assert not np.allclose(after_b, before, atol=1e-4)  # b learned from a document only a embedded


def test_a_restarted_replica_answers_like_the_other_at_once(pool: Pool) -> None:
    wait_until_agreed(pool)
    expected = {kind: embed(pool.a.url, QUERIES + DOCUMENTS, HYBRID, kind) for kind in ("query", "document")}
    pool.b.restart()
    # No waiting: the replica refreshes the shared IDF before it reports ready.
    for kind, vectors in expected.items():
        assert np.array_equal(embed(pool.b.url, QUERIES + DOCUMENTS, HYBRID, kind), vectors), kind
        assert np.array_equal(embed(pool.proxy, QUERIES + DOCUMENTS, HYBRID, kind), vectors), kind


def test_the_second_replica_answers_from_the_shared_cache(pool: Pool) -> None:
    text = [f"A text only replica a has embedded, number {secrets.token_hex(6)}."]
    first = embed(pool.a.url, text, MODEL)
    hits = pool.b.metric("embed_cache_lookups_total", model=MODEL, layer="redis", result="hit")
    passes = pool.b.metric("embed_batch_size_count", model=MODEL)
    second = embed(pool.b.url, text, MODEL)
    assert np.array_equal(first, second)
    assert pool.b.metric("embed_cache_lookups_total", model=MODEL, layer="redis", result="hit") == hits + 1
    assert pool.b.metric("embed_batch_size_count", model=MODEL) == passes  # no forward pass on b
    # Keys are hashes: the text itself is nowhere in Redis.
    with pool.redis.client() as client:
        assert not [key for key in client.scan_iter(f"{pool.prefix}*") if b"replica a" in key]


def test_redis_killed_mid_run_costs_no_request_and_is_used_again_when_back(pool: Pool) -> None:
    downs = {r.name: len(r.events("redis_down")) for r in pool.replicas}
    pool.redis.kill()
    try:
        for i in range(6):  # through the proxy: both replicas, documents, queries, plain vectors
            embed(pool.proxy, [f"Written while Redis was down, chunk {i}: glaciers carve fjords."], HYBRID, "document")
            embed(pool.proxy, QUERIES, HYBRID, "query")
            embed(pool.proxy, [f"plain text {i} {secrets.token_hex(4)}"], MODEL)
        for r in pool.replicas:
            wait_for(lambda: r.metric("embed_redis_up") == 0, f"{r.name} shows Redis down")
            assert r.metric("embed_redis_errors_total", operation="cache_get") > 0 or \
                r.metric("embed_redis_errors_total", operation="idf_version") > 0
            # Logged once per change of state, not once per request.
            assert len(r.events("redis_down")) == downs[r.name] + 1
        assert sum(r.metric("embed_idf_pending_documents", model=HYBRID) for r in pool.replicas) == 6
    finally:
        pool.redis.start()

    for r in pool.replicas:
        wait_for(lambda: r.metric("embed_redis_up") == 1, f"{r.name} sees Redis again")
        wait_for(lambda: r.metric("embed_idf_pending_documents", model=HYBRID) == 0, f"{r.name} sent its documents")
        assert r.events("redis_up")
    wait_until_agreed(pool)
    assert np.array_equal(embed(pool.a.url, QUERIES, HYBRID, "query"), embed(pool.b.url, QUERIES, HYBRID, "query"))
    # The cache is used again: a text a embeds now, b finds.
    text = [f"After Redis came back, {secrets.token_hex(6)}."]
    embed(pool.a.url, text, MODEL)
    hits = pool.b.metric("embed_cache_lookups_total", model=MODEL, layer="redis", result="hit")
    embed(pool.b.url, text, MODEL)
    assert pool.b.metric("embed_cache_lookups_total", model=MODEL, layer="redis", result="hit") == hits + 1


def test_a_replica_restarted_while_redis_is_down_still_agrees(pool: Pool) -> None:
    wait_until_agreed(pool)
    expected = embed(pool.a.url, QUERIES, HYBRID, "query")
    pool.redis.kill()
    try:
        pool.b.restart()  # serves from its saved snapshot of the shared counts
        # Its dense part is computed again (no cache to share): equal up to float noise; another
        # IDF would move the vector by far more.
        assert np.allclose(embed(pool.b.url, QUERIES, HYBRID, "query"), expected, rtol=0, atol=1e-6)
    finally:
        pool.redis.start()


def test_no_secret_in_logs_or_metrics(pool: Pool) -> None:
    password = pool.redis.password
    for r in pool.replicas:
        assert password not in r.log.read_text() and password not in r.metrics()
        assert any("***@127.0.0.1" in event.get("redis", "") for event in r.events("redis_down"))
