"""Prometheus instruments, one registry per app so several apps can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from embed_server.batcher import BatchStats

# The *_created series only add noise to every scrape.
disable_created_metrics()

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, shared: bool = False) -> None:
        """``shared``: the server uses Redis (its instruments exist only then, so an absent Redis is
        never reported as a down one)."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("embed_requests", "HTTP requests by route, status and client", ["route", "status", "client"], registry=r)
        self.latency = Histogram("embed_request_duration_seconds", "HTTP request latency", ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.texts = Counter("embed_texts", "Texts embedded (cache hits included)", ["model"], registry=r)
        self.tokens = Counter("embed_tokens", "Prompt tokens embedded (cache hits included)", ["model"], registry=r)
        self.batch_size = Histogram("embed_batch_size", "Texts per forward pass", ["model"], buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.batch_tokens = Histogram("embed_batch_padded_tokens", "Padded tokens per forward pass", ["model"], buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768), registry=r)
        self.batch_seconds = Histogram("embed_batch_duration_seconds", "Forward pass time", ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("embed_queue_depth", "Texts waiting for a forward pass", ["model"], registry=r)
        self.cache_hits = Counter("embed_cache_hits", "Embeddings answered from the cache", ["model"], registry=r)
        self.cache_misses = Counter("embed_cache_misses", "Embeddings not found in the cache", ["model"], registry=r)
        self.cache_bytes = Gauge("embed_cache_bytes", "Memory held by the embedding cache (vectors, texts, overhead)", registry=r)
        self.cache_entries = Gauge("embed_cache_entries", "Embeddings held by the embedding cache", registry=r)
        self.model_info = Gauge("embed_model_info", "1 for each served model, labelled with where it runs",
                                ["model", "runtime", "device", "precision"], registry=r)
        self.queue_rejections = Counter("embed_queue_rejections", "Requests refused because the queue was full", ["model"], registry=r)
        self.cache_lookups = Counter("embed_cache_lookups", "Embedding cache lookups by layer (memory, redis) and "
                                     "result (hit, miss, error)", ["model", "layer", "result"], registry=r)
        if shared:
            self.redis_up = Gauge("embed_redis_up", "1 while the shared Redis answers, 0 while it is left alone after a failure", registry=r)
            self.redis_errors = Counter("embed_redis_errors", "Redis calls that failed or timed out", ["operation"], registry=r)
            self.idf_generation = Gauge("embed_idf_generation", "Generation of the shared IDF snapshot this replica "
                                        "answers queries with (replicas with equal values give equal vectors)", ["model"], registry=r)
            self.idf_pending = Gauge("embed_idf_pending_documents", "Documents counted here but not yet in the "
                                     "shared IDF (Redis was unreachable)", ["model"], registry=r)

    def batch_observer(self, model: str):
        def observe(stats: BatchStats) -> None:
            self.batch_size.labels(model).observe(stats.size)
            self.batch_tokens.labels(model).observe(stats.padded_tokens)
            self.batch_seconds.labels(model).observe(stats.seconds)

        return observe

    def render(self) -> bytes:
        return generate_latest(self.registry)
