"""Model backends: turn token ids into vectors. They know nothing of HTTP or queues."""

from embed_server.backends.base import EmbeddingBackend
from embed_server.backends.transformer import TransformerBackend, resolve_source

__all__ = ["EmbeddingBackend", "TransformerBackend", "resolve_source"]
