"""The same encoder run by ONNX Runtime on the CPU: a fused graph, optionally int8 (see onnx_export)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from config import ModelSpec
from embed_server.backends.cpu_features import has_int8_dot_product, this_cpu_flags
from embed_server.backends.device import Placement
from embed_server.backends.identity import weights_identity
from embed_server.backends.onnx_export import load_graph
from embed_server.backends.transformer import TokenizerSide, resolve_source

log = logging.getLogger(__name__)


class OnnxBackend(TokenizerSide):
    """Encodes token-id batches with ONNX Runtime's CPU provider."""

    def __init__(self, spec: ModelSpec, threads: int, cache_dir: Path, placement: Placement | None = None) -> None:
        import onnxruntime

        folder = resolve_source(spec.source)  # type: ignore[arg-type]
        super().__init__(folder, spec)
        if spec.quantize == "int8":
            warn_without_int8_dot_product(spec.id, this_cpu_flags())
        self.placement = placement or Placement("onnx", "cpu", spec.quantize or "fp32", 2048)
        self.path, graph = load_graph(folder, spec.quantize, cache_dir, spec.id)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle worker threads would spin for the next operator and take the cores the server's event loop and
        # tokenizer need between forward passes (measured in-process under load, passes 2 ms apart: 11% more
        # tokens/s without spinning).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The checked bytes, not the path: a file swapped after the check is never what runs.
        self.session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        del graph
        self._inputs = {item.name for item in self.session.get_inputs()}
        # The graph's folder is named by a digest of the weights, the recipe and the libraries' versions.
        self.identity = {"runtime": "onnx", "version": onnxruntime.__version__, "device": "cpu",
                         "precision": self.placement.precision, "quantize": spec.quantize or "",
                         "weights": weights_identity(folder), "graph": self.path.parent.name}
        log.info("model loaded", extra={"source": str(folder), "graph": str(self.path), "runtime": "onnx",
                                        "quantize": spec.quantize, "pooling": self.pooling,
                                        "max_tokens": self.max_tokens, "dimension": self.dimension})

    def encode(self, batch: list[list[int]]) -> np.ndarray:
        width = max(len(ids) for ids in batch)
        input_ids = np.full((len(batch), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        feed = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        hidden = self.session.run(None, feed)[0]
        vectors = self._pool(hidden, mask)
        if self.normalize:
            vectors /= np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        return vectors.astype(np.float32, copy=False)

    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.pooling == "cls":
            return hidden[:, 0].copy()
        if self.pooling == "last":
            return hidden[np.arange(hidden.shape[0]), mask.sum(axis=1) - 1].copy()
        weights = mask[..., None].astype(hidden.dtype)
        return (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)


def warn_without_int8_dot_product(model: str, flags: frozenset[str] | None) -> bool:
    """Log a warning when int8 is asked for on a CPU where our int8 graph ran slower than fp32; True if warned.
    Unknown flags (not Linux) warn nobody."""
    if has_int8_dot_product(flags) is not False:
        return False
    # The model and the fix are in the message itself: text logs drop the structured fields.
    log.warning(f"model {model!r}: quantize = \"int8\" on a CPU without int8 dot-product instructions "
                "(AVX-512 VNNI, AVX-VNNI or AMX on x86; dot product or i8mm on Arm), where the int8 graph ran "
                "slower than torch fp32; leave quantize unset (runtime = \"onnx\" in fp32 ran faster there)",
                extra={"event": "onnx_int8_slow_cpu", "model": model})
    return True
