"""A Hugging Face transformers encoder with sentence-transformers pooling, run by torch on a CPU or GPU."""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.utils import logging as transformers_logging

from config import ModelSpec
from embed_server.backends.device import Placement
from embed_server.backends.identity import device_kind, weights_identity

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"


class ModelLoadError(RuntimeError):
    pass


def resolve_source(source: str) -> Path:
    """A local folder for a model source: a path, ``package:<pkg>/<folder>`` or a hub id."""
    if source.startswith(PACKAGE_PREFIX):
        package, _, folder = source[len(PACKAGE_PREFIX) :].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(f"model package {package!r} is not installed (pip install {package.replace('_', '-')})")
        path = Path(next(iter(spec.submodule_search_locations))) / folder
    else:
        path = Path(source).expanduser()
        if not path.exists():
            path = _download_from_hub(source)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"no model config.json in {path}")
    return path


def _download_from_hub(repo_id: str) -> Path:
    # Imported late: most deployments serve local folders and never touch the hub.
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.model", "*.safetensors", "1_Pooling/*"]))
    except Exception as error:  # the hub client raises many unrelated types
        raise ModelLoadError(f"cannot load model {repo_id!r}: not a local folder and not downloadable ({error})") from error


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def sentence_transformers_facts(folder: Path) -> dict:
    """Pooling, normalisation and length limit from a sentence-transformers model folder."""
    facts: dict = {}
    modules = _read_json(folder / "modules.json") if (folder / "modules.json").is_file() else []
    if modules:
        facts["normalize"] = any(m.get("type", "").endswith(".Normalize") for m in modules)
        pooling_dir = next((m["path"] for m in modules if m.get("type", "").endswith(".Pooling")), None)
        pooling = _read_json(folder / pooling_dir / "config.json") if pooling_dir else {}
        if pooling.get("pooling_mode_cls_token"):
            facts["pooling"] = "cls"
        elif pooling.get("pooling_mode_lasttoken"):
            facts["pooling"] = "last"
        elif pooling.get("pooling_mode_mean_tokens"):
            facts["pooling"] = "mean"
    max_length = _read_json(folder / "sentence_bert_config.json").get("max_seq_length")
    if max_length:
        facts["max_tokens"] = int(max_length)
    return facts


def padded_inputs(batch: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` for token-id lists of different lengths."""
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


class TokenizerSide:
    """What every runtime of an encoder shares: its tokenizer, special tokens, limit and pooling."""

    def __init__(self, folder: Path, spec: ModelSpec) -> None:
        facts = sentence_transformers_facts(folder)
        transformers_logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self._fast = self._rust_tokenizer()
        self.config = AutoConfig.from_pretrained(folder)
        self.pooling = spec.pooling or facts.get("pooling", "mean")
        self.normalize = spec.normalize if spec.normalize is not None else facts.get("normalize", True)
        model_limit = getattr(self.config, "max_position_embeddings", None) or 512
        self.max_tokens = min(spec.max_tokens or facts.get("max_tokens") or model_limit, model_limit)
        self.dimension = int(self.config.hidden_size)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.uses_segments = "token_type_ids" in self.tokenizer.model_input_names
        self._head, self._tail = self._special_tokens()

    def _rust_tokenizer(self) -> Tokenizer | None:
        """The Rust tokenizer under a fast tokenizer, without the Python wrapper's per-call overhead."""
        if not getattr(self.tokenizer, "is_fast", False):
            return None
        rust = copy.deepcopy(self.tokenizer.backend_tokenizer)
        # tokenizer.json may carry truncation or padding; the server truncates (or refuses) itself.
        rust.no_truncation()
        rust.no_padding()
        return rust

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        if self._fast is not None:
            # encode_batch_fast skips character offsets, which the server never reads (tokenizers >= 0.21).
            encode = getattr(self._fast, "encode_batch_fast", self._fast.encode_batch)
            return [encoding.ids for encoding in encode(texts, add_special_tokens=True)]
        return self.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]

    def _special_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a text (e.g. [CLS] and [SEP])."""
        sample = "hello world"
        plain = self.tokenizer(sample, add_special_tokens=False)["input_ids"]
        wrapped = self.tokenizer(sample, add_special_tokens=True)["input_ids"]
        for start in range(len(wrapped) - len(plain) + 1):
            if wrapped[start : start + len(plain)] == plain:
                return wrapped[:start], wrapped[start + len(plain) :]
        return [], []

    def wrap_ids(self, ids: list[int]) -> list[int]:
        return [*self._head, *ids, *self._tail]

    def truncate(self, ids: list[int]) -> list[int]:
        if len(ids) <= self.max_tokens:
            return ids
        # Keep the closing special token: models are trained to see it.
        tail = len(self._tail)
        return ids[: self.max_tokens - tail] + (ids[-tail:] if tail else [])


class TransformerBackend(TokenizerSide):
    """Encodes token-id batches with one transformer model, run by torch on its placement's device."""

    def __init__(self, spec: ModelSpec, threads: int, placement: Placement | None = None) -> None:
        folder = resolve_source(spec.source)
        super().__init__(folder, spec)
        torch.set_num_threads(threads)
        self.placement = placement or Placement("torch", "cpu", "fp32", 2048)
        self.device = self.placement.torch_device
        self.model = AutoModel.from_pretrained(folder, dtype=self.placement.dtype).to(self.device).eval()
        # Everything that changes the vectors besides the model's settings (the shared cache keys on it).
        self.identity = {"runtime": "torch", "version": torch.__version__,
                         "device": device_kind(self.placement.device), "precision": self.placement.precision,
                         "weights": weights_identity(folder)}
        log.info(
            "model loaded",
            extra={"source": str(folder), "pooling": self.pooling, "normalize": self.normalize,
                   "max_tokens": self.max_tokens, "dimension": self.dimension, "device": self.placement.device,
                   "precision": self.placement.precision},
        )

    @torch.inference_mode()
    def encode(self, batch: list[list[int]]) -> np.ndarray:
        inputs = {name: tensor.to(self.device, non_blocking=True)
                  for name, tensor in padded_inputs(batch, self.pad_id).items()}
        if self.uses_segments:
            inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        mask = inputs["attention_mask"]
        # Pool and normalise in fp32: summing hundreds of fp16 values loses digits the vectors keep.
        hidden = self.model(**inputs).last_hidden_state.float()
        vectors = self._pool(hidden, mask)
        if self.normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        return vectors.cpu().numpy()

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "last":
            last = mask.sum(dim=1) - 1
            return hidden[torch.arange(hidden.shape[0]), last]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
