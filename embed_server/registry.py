"""Model id or alias -> the Embedder that serves it. Loads models off the event loop."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from config import ModelSpec, Settings
from embed_server.backends import EmbeddingBackend, TransformerBackend
from embed_server.backends.cross_encoder import CrossEncoderBackend
from embed_server.backends.device import Placement, place
from embed_server.backends.lexical import DocumentFrequencies
from embed_server.batcher import LengthSortedBatcher
from embed_server.cache import EmbeddingCache
from embed_server.cache_secret import CacheSecretError, cache_secret
from embed_server.embedder import Embedder
from embed_server.errors import InvalidRequest, ModelNotFound, NotReady
from embed_server.hybrid import HybridEmbedder
from embed_server.metrics import Metrics
from embed_server.redis_link import RedisLink
from embed_server.reranker import CrossEncoderReranker, EmbeddingReranker
from embed_server.shared_cache import SharedEmbeddingCache
from embed_server.shared_idf import SharedDocumentFrequencies

log = logging.getLogger(__name__)


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.specs = settings.models
        # One inference thread for all models: they share the same cores, and torch
        # parallelises each forward pass itself (settings.threads).
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._embedders: dict[str, Embedder | HybridEmbedder] = {}
        self._rerankers: dict[str, CrossEncoderReranker | EmbeddingReranker] = {}
        self._batchers: list[LengthSortedBatcher] = []
        self._hybrids: list[DocumentFrequencies] = []
        self.placements: dict[str, Placement] = {}  # model id -> where it runs, known before it loads
        self.load_error: str | None = None
        self.ready = False
        # One cache for every model (its keys name the model), so its byte bound is the server's.
        self.cache = EmbeddingCache(settings.cache_size, settings.cache_bytes)
        # Redis, when configured: what the replicas share (the query IDF, an embedding cache).
        self.redis: RedisLink | None = None
        self.shared_cache: SharedEmbeddingCache | None = None
        if settings.redis_url is not None:
            self.redis = RedisLink(settings.redis_url.get_secret_value(), metrics,
                                   timeout=settings.redis_timeout_seconds, retry_seconds=settings.redis_retry_seconds)
            if settings.redis_cache:
                try:
                    secret = cache_secret(settings)
                except CacheSecretError as error:
                    # Only a speed-up: serve without it rather than not at all.
                    log.error("the shared embedding cache is off", extra={"event": "redis_cache_off",
                                                                          "error": str(error)})
                else:
                    self.shared_cache = SharedEmbeddingCache(self.redis, metrics, settings.redis_prefix,
                                                             settings.redis_cache_ttl_seconds, secret)
        self._shared_idfs: list[SharedDocumentFrequencies] = []
        metrics.cache_bytes.set_function(lambda: self.cache.bytes)
        metrics.cache_entries.set_function(lambda: len(self.cache))

    async def load(self) -> None:
        """Load every model, then start its batcher. Failures are kept for /ready and /health."""
        try:
            loop = asyncio.get_running_loop()
            if self.redis is not None:
                self.redis.start()
            self._place_all()
            for spec in self.specs:
                if spec.kind == "transformer":
                    backend = await loop.run_in_executor(self.executor, self._embedding_backend, spec)
                    self._add(spec, backend)
                elif spec.kind == "cross-encoder":
                    scorer = await loop.run_in_executor(self.executor, CrossEncoderBackend, spec,
                                                        self.settings.threads, self.placements[spec.id])
                    reranker = CrossEncoderReranker(spec, scorer, self._batcher(spec, scorer))
                    self._rerankers |= {name: reranker for name in spec.names}
            for spec in self.specs:
                if spec.kind == "hybrid":
                    await self._add_hybrid(spec)
        except Exception as error:
            self.load_error = f"{type(error).__name__}: {error}"
            log.error("model loading failed", extra={"error": self.load_error})
            return
        self.ready = True
        log.info("models ready", extra={"models": [spec.id for spec in self.specs]})

    def _place_all(self) -> None:
        """Every model's runtime, device and precision; a hybrid model runs where its dense model does."""
        for spec in self.specs:
            if spec.kind != "hybrid":
                self.placements[spec.id] = place(spec, self.settings)
        for spec in self.specs:
            if spec.kind == "hybrid":
                self.placements[spec.id] = self.placements[spec.dense]  # type: ignore[index]
        for model, where in self.placements.items():
            self.metrics.model_info.labels(model, where.runtime, where.device, where.precision).set(1)

    def _embedding_backend(self, spec: ModelSpec) -> EmbeddingBackend:
        placement = self.placements[spec.id]
        if spec.runtime == "onnx":
            # Imported here: onnxruntime is an optional extra, needed only by the models that ask for it.
            from embed_server.backends.onnx import OnnxBackend

            return OnnxBackend(spec, self.settings.threads, self.settings.cache_dir, placement)
        return TransformerBackend(spec, self.settings.threads, placement)

    def _batcher(self, spec: ModelSpec, backend: EmbeddingBackend | CrossEncoderBackend) -> LengthSortedBatcher:
        s = self.settings
        batcher = LengthSortedBatcher(
            backend,
            self.executor,
            max_batch_tokens=self.placements[spec.id].max_batch_tokens,
            max_batch_size=s.max_batch_size,
            max_queued_texts=s.max_queued_texts,
            retry_after_seconds=s.retry_after_seconds,
            on_batch=self.metrics.batch_observer(spec.id),
        )
        batcher.start()
        self._batchers.append(batcher)
        return batcher

    def _add(self, spec: ModelSpec, backend: EmbeddingBackend) -> None:
        s = self.settings
        embedder = Embedder(
            spec, backend, self._batcher(spec, backend), self.cache, self.metrics,
            truncate=s.truncate, token_ids=s.token_ids, shared=self.shared_cache,
        )
        for name in spec.names:
            self._embedders[name] = embedder

    async def _add_hybrid(self, spec: ModelSpec) -> None:
        dense = self._embedders[spec.dense]  # a transformer model: checked by the settings
        frequencies = DocumentFrequencies(
            spec.lexical_dim, self.settings.state_dir / f"document-frequencies-{_file_safe(spec.id)}.npz"
        )
        self._hybrids.append(frequencies)
        shared = None
        if self.redis is not None:
            shared = SharedDocumentFrequencies(
                spec.id, frequencies, self.redis, self.metrics, prefix=self.settings.redis_prefix,
                refresh_seconds=self.settings.idf_refresh_seconds,
                snapshot_path=self.settings.state_dir / f"shared-idf-{_file_safe(spec.id)}.npz")
            await shared.start()  # before serving: a restarted replica answers like the others at once
            self._shared_idfs.append(shared)
        embedder = HybridEmbedder(spec, dense, frequencies, shared)
        for name in spec.names:
            self._embedders[name] = embedder

    def get(self, name: str) -> Embedder | HybridEmbedder:
        """The embedding model served under ``name``."""
        spec = self.find_spec(name)
        if spec.kind == "cross-encoder":
            raise InvalidRequest(f"'{spec.id}' is a reranking model: use POST /v1/rerank.", param="model")
        embedder = self._embedders.get(name)
        if embedder is None:
            raise self._not_ready(spec)
        return embedder

    def _not_ready(self, spec: ModelSpec) -> NotReady:
        if self.load_error:
            return NotReady("The server could not load its models; its log says why.")
        return NotReady(f"The model '{spec.id}' is still loading. Retry shortly.", headers={"Retry-After": "5"})

    def get_reranker(self, name: str) -> CrossEncoderReranker | EmbeddingReranker:
        """A cross-encoder, or any embedding model scoring by cosine."""
        if name not in self._rerankers:
            spec = self.find_spec(name)
            if spec.kind == "cross-encoder":
                raise self._not_ready(spec)
            self._rerankers[name] = EmbeddingReranker(self.get(name))
        return self._rerankers[name]

    def find_spec(self, name: str) -> ModelSpec:
        for spec in self.specs:
            if name in spec.names:
                return spec
        raise ModelNotFound(f"The model '{name}' does not exist. Served models: {', '.join(s.id for s in self.specs)}.", param="model")

    async def close(self) -> None:
        for shared in self._shared_idfs:
            await shared.close()
        if self.redis is not None:
            await self.redis.close()
        for frequencies in self._hybrids:
            frequencies.save_quietly()  # a full or read-only disk must not stop the shutdown
        for batcher in self._batchers:
            await batcher.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
