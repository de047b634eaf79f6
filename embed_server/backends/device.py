"""Where and in what precision a model runs: the device and dtype a model's settings ask for.

Kept apart from the backends so the choice is testable without the hardware: availability
comes in as plain functions, torch's by default.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from config import ModelSpec, Settings
from config.settings import DEVICE_PATTERN

# Padded tokens per forward pass when max_batch_tokens is not set. The CPU figure is measured
# (bench/embeddings.py, 2-core CPU, MiniLM: bigger passes ran slower per token); a GPU only
# fills its cores with far larger passes, so its budget is the size of a long-document burst.
DEFAULT_BATCH_TOKENS = {"cpu": 2048, "cuda": 65536, "mps": 16384}

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class DeviceError(ValueError):
    """A device or precision the settings ask for that this machine or runtime cannot give."""


@dataclass(frozen=True)
class Availability:
    """What this machine has, as torch sees it (tests pass their own)."""

    cuda: Callable[[], bool] = torch.cuda.is_available
    cuda_count: Callable[[], int] = torch.cuda.device_count
    mps: Callable[[], bool] = lambda: torch.backends.mps.is_available()


@dataclass(frozen=True)
class Placement:
    """The runtime, device and precision that serve one model, as /v1/models and /metrics report them."""

    runtime: str
    device: str
    precision: str
    max_batch_tokens: int

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES.get(self.precision, torch.float32)


def select_device(requested: str, available: Availability = Availability()) -> str:
    """``auto`` -> cuda, then mps, then cpu; an explicit device must be present."""
    if not re.match(DEVICE_PATTERN, requested):
        raise DeviceError(f"device {requested!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if requested == "auto":
        if available.cuda():
            return "cuda"
        return "mps" if available.mps() else "cpu"
    kind, _, index = requested.partition(":")
    if kind == "cuda":
        if not available.cuda():
            raise DeviceError(f"device {requested!r}: torch sees no CUDA GPU (is this torch's CPU build? "
                              "See the README's install section)")
        if index and int(index) >= available.cuda_count():
            raise DeviceError(f"device {requested!r}: torch sees {available.cuda_count()} CUDA GPU(s)")
    if kind == "mps" and not available.mps():
        raise DeviceError(f"device {requested!r}: this torch has no Apple MPS device")
    return requested


def select_precision(precision: str, device: str) -> str:
    """fp32 anywhere; fp16 and bf16 only on a GPU (on CPUs they measured far slower than fp32)."""
    if precision not in _DTYPES:
        raise DeviceError(f"precision {precision!r} is not one of {', '.join(_DTYPES)}")
    if precision != "fp32" and device == "cpu":
        raise DeviceError(f"precision {precision!r} needs a GPU device; on the CPU use fp32 "
                          "(bf16 ran at 0.15x fp32 there), or runtime = \"onnx\" with quantize = \"int8\"")
    if precision == "bf16" and device == "mps":
        raise DeviceError("precision 'bf16' is not supported on mps; use fp16 or fp32")
    return precision


def place(spec: ModelSpec, settings: Settings, available: Availability = Availability()) -> Placement:
    """The placement for one model: its own device and precision, else the server's."""
    requested = spec.device or settings.device
    precision = spec.precision or settings.precision
    if spec.runtime == "onnx":
        # ONNX Runtime is installed with its CPU provider only: the GPU path is torch.
        if requested not in ("auto", "cpu"):
            raise DeviceError(f"model {spec.id!r}: runtime 'onnx' runs on the CPU; set its device to cpu or auto, "
                              "or use runtime = \"torch\" for a GPU")
        if precision != "fp32":
            raise DeviceError(f"model {spec.id!r}: runtime 'onnx' runs fp32 (or quantize = \"int8\"), "
                              f"not precision {precision!r}")
        device = "cpu"
    else:
        try:
            device = select_device(requested, available)
            precision = select_precision(precision, device)
        except DeviceError as error:
            raise DeviceError(f"model {spec.id!r}: {error}") from None
    budget = settings.max_batch_tokens or DEFAULT_BATCH_TOKENS[device.partition(":")[0]]
    label = "int8" if spec.quantize == "int8" else precision
    return Placement(spec.runtime, device, label, budget)


def check_placements(settings: Settings, available: Availability = Availability()) -> None:
    """Raise DeviceError for the first model whose device or precision cannot be had: before serving."""
    for spec in settings.models:
        if spec.kind != "hybrid":
            place(spec, settings, available)
