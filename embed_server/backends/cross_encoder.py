"""A cross-encoder: scores (query, document) pairs with a sequence-classification transformer."""

from __future__ import annotations

import logging

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as transformers_logging

from config import ModelSpec
from embed_server.backends.device import Placement
from embed_server.backends.transformer import padded_inputs, resolve_source

log = logging.getLogger(__name__)


class CrossEncoderBackend:
    dimension = 1

    def __init__(self, spec: ModelSpec, threads: int, placement: Placement | None = None) -> None:
        folder = resolve_source(spec.source)  # type: ignore[arg-type]
        torch.set_num_threads(threads)
        transformers_logging.disable_progress_bar()
        self.placement = placement or Placement("torch", "cpu", "fp32", 2048)
        self.device = self.placement.torch_device
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = (AutoModelForSequenceClassification.from_pretrained(folder, dtype=self.placement.dtype)
                      .to(self.device).eval())
        model_limit = getattr(self.model.config, "max_position_embeddings", None) or 512
        self.max_tokens = min(spec.max_tokens or model_limit, model_limit)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.uses_segments = "token_type_ids" in self.tokenizer.model_input_names
        log.info("cross-encoder loaded", extra={"source": str(folder), "max_tokens": self.max_tokens,
                                                "labels": self.model.config.num_labels})

    def tokenize_pairs(self, query: str, documents: list[str]) -> list[list[int]]:
        """One id list per pair, the document cut first when the pair is over the limit."""
        return self.tokenizer([query] * len(documents), documents, truncation="longest_first",
                              max_length=self.max_tokens, verbose=False)["input_ids"]

    @torch.inference_mode()
    def encode(self, batch: list[list[int]]) -> np.ndarray:
        inputs = {name: tensor.to(self.device, non_blocking=True)
                  for name, tensor in padded_inputs(batch, self.pad_id).items()}
        if self.uses_segments:
            inputs["token_type_ids"] = self._segments(inputs["input_ids"], inputs["attention_mask"])
        logits = self.model(**inputs).logits.float()
        # One label: a relevance logit, squashed to 0..1 as sentence-transformers does. Several:
        # the probability of the last ("relevant") label.
        scores = torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)[:, -1]
        return scores.float().unsqueeze(1).cpu().numpy()

    def _segments(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # Padding drops the tokenizer's token_type_ids, so rebuild them: the document (segment 1)
        # starts after the first separator.
        is_sep = (input_ids == self.tokenizer.sep_token_id).long()
        after_first_sep = (torch.cumsum(is_sep, dim=1) - is_sep) > 0
        return after_first_sep.long() * mask
