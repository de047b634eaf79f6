"""Whether this CPU has int8 dot-product instructions, which decide if int8 beats fp32 here.

ONNX Runtime's int8 kernels multiply 8-bit blocks with one instruction per four products on CPUs
that have them (x86: AVX-512 VNNI, AVX-VNNI, AMX; Arm: the dot-product and i8mm extensions). Without
them the same graph ran slower than torch fp32 (README, "Devices and runtimes": 0.89-0.93x on an
AVX2-only Zen 3, against 1.6x and more on an AVX-512 VNNI Zen 4), so the server warns.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from pathlib import Path

# /proc/cpuinfo's names for the instructions: "flags" on x86, "Features" on Arm.
INT8_DOT_PRODUCT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The first CPU's feature flags, or None where the system does not list them (not Linux)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def has_int8_dot_product(flags: Iterable[str] | None) -> bool | None:
    """True or False for known flags; None when they are unknown (then nobody is warned)."""
    if flags is None:
        # Apple silicon has the Arm dot-product instructions and no /proc/cpuinfo.
        return True if platform.system() == "Darwin" and platform.machine() == "arm64" else None
    return not INT8_DOT_PRODUCT_FLAGS.isdisjoint(flags)


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name for benchmark reports ("" when unknown)."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("model name", "Model name"):
                return value.strip()
    except OSError:
        pass
    return platform.processor()
