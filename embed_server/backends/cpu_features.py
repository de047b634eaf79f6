"""Whether this CPU has int8 dot-product instructions, which decide if our int8 recipe beats fp32 here.

The int8 graph (MatMulNBits, 8 bits, int8 arithmetic) multiplies 8-bit blocks with one instruction per
four products on CPUs that have them (x86: AVX-512 VNNI, AVX-VNNI, AMX; Arm: the dot-product and i8mm
extensions). Without them it ran slower than torch fp32 (README, "Devices and runtimes": 0.88-0.93x on
an AVX2-only Zen 3, against 1.6x and more on an AVX-512 VNNI Zen 4), so the server warns.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterable
from pathlib import Path

# /proc/cpuinfo's names for the instructions: "flags" on x86, "Features" on Arm.
INT8_DOT_PRODUCT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})
CPUINFO = Path("/proc/cpuinfo")


def _first_cpu(cpuinfo: Path) -> dict[str, str]:
    """The fields of the first CPU listed (its block ends at the first blank line)."""
    fields: dict[str, str] = {}
    try:
        with cpuinfo.open(encoding="utf-8", errors="replace") as file:
            for line in file:
                if not line.strip():
                    if fields:
                        break
                    continue
                name, _, value = line.partition(":")
                fields.setdefault(name.strip(), value.strip())
    except OSError:
        pass  # not Linux, or no /proc in this sandbox
    return fields


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str] | None:
    """The first CPU's feature flags, or None where the system does not list them."""
    fields = _first_cpu(cpuinfo)
    value = fields.get("flags", fields.get("Features"))
    if not value:  # absent, or an empty line: unknown, not "none of them"
        return None
    return frozenset(value.split())


@functools.cache
def this_cpu_flags() -> frozenset[str] | None:
    return cpu_flags()


def has_int8_dot_product(flags: Iterable[str] | None) -> bool | None:
    """True or False for known flags; None when they are unknown (then nobody is warned)."""
    if flags is None:
        # Apple silicon has the Arm dot-product instructions and no /proc/cpuinfo.
        return True if platform.system() == "Darwin" and platform.machine() == "arm64" else None
    return not INT8_DOT_PRODUCT_FLAGS.isdisjoint(flags)


def cpu_name(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name for benchmark reports ("" when unknown, as on Arm, which lists none)."""
    return _first_cpu(cpuinfo).get("model name", "") or platform.processor()
