"""What a model's weights are, cheaply and the same on every machine.

The shared embedding cache must tell models apart whose settings look alike but whose weights
differ (a folder updated in place, another hub revision). Each file's name, size and a digest of
samples of its bytes are enough for that and cost a few MB of reading at start, not the whole
model. Not modification times: replicas that copied the same weights at different times must still
share entries. A change that leaves every sampled block alike goes unnoticed: give such a model a
new id.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_WHOLE = 4 << 20  # files up to this size are read whole
_EDGE = 1 << 20  # head and tail read from larger files (safetensors keep their header at the start)
_BLOCK = 64 << 10
_BLOCKS = 16  # spread over the middle of larger files


def weights_identity(folder: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not _hidden(p.relative_to(folder))):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        with path.open("rb") as file:
            if size <= _WHOLE:
                digest.update(file.read())
                continue
            offsets = [0, size - _EDGE] + [_EDGE + (size - 2 * _EDGE) * i // _BLOCKS for i in range(_BLOCKS)]
            for offset in offsets:
                file.seek(offset)
                digest.update(file.read(_EDGE if offset in (0, size - _EDGE) else _BLOCK))
    return digest.hexdigest()


def _hidden(relative: Path) -> bool:
    # .git, .cache and such: not the weights, and they change without the model changing.
    return any(part.startswith(".") for part in relative.parts)


def device_kind(device: str) -> str:
    """cuda:1 and cuda compute alike: replicas on different GPU indices share entries."""
    return device.partition(":")[0]


