from __future__ import annotations

from typing import Protocol

import numpy as np


class EmbeddingBackend(Protocol):
    """What the batcher needs from a model."""

    dimension: int
    max_tokens: int
    identity: dict[str, str]  # runtime, device, precision, weights: what changes vectors beyond the settings

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids with the model's special tokens, not truncated."""

    def wrap_ids(self, ids: list[int]) -> list[int]:
        """Add the model's special tokens around raw token ids."""

    def truncate(self, ids: list[int]) -> list[int]:
        """Cut ids to ``max_tokens``, keeping the closing special token."""

    def encode(self, batch: list[list[int]]) -> np.ndarray:
        """One forward pass: float32 array of shape (len(batch), dimension)."""
