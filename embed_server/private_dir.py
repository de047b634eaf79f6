"""Folders whose contents the server runs as code (built model graphs): only this user, or root, may change them.

A graph planted in a cache folder would run as our model, on every text the server embeds. So a folder, and
every folder above it, must belong to this user or root, and must not be writable by group or others unless
it is sticky (like /tmp: others may add entries there, but not rename or remove ours, and every entry we go
through is checked for its owner in turn). Files in it must belong to this user or root and be writable by
no one else. Symbolic links are followed, and the folders they lead to are what is checked.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class UnsafeDirectory(RuntimeError):
    """A folder (or a file in it) that another user could change: nothing is read from it."""

    def __init__(self, path: Path, why: str, fix: str) -> None:
        super().__init__(f"refusing {path}: {why}; {fix}")
        self.path = path


def _trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def check_private_dir(folder: Path) -> None:
    """Raise UnsafeDirectory unless ``folder`` (which must exist) and each folder above it are safe."""
    real = Path(os.path.realpath(folder))
    for directory in [*reversed(real.parents), real]:  # from the root down: the first problem is the cause
        info = os.stat(directory)
        if not _trusted_owner(info.st_uid):
            raise UnsafeDirectory(directory, f"it belongs to another user (uid {info.st_uid})",
                                  "use a folder owned by this user (chown it, or point EMBED_CACHE_DIR elsewhere)")
        shared = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if shared and not info.st_mode & stat.S_ISVTX:
            who = "group and others" if shared == stat.S_IWGRP | stat.S_IWOTH else \
                "its group" if shared == stat.S_IWGRP else "all users"
            raise UnsafeDirectory(directory, f"{who} can write to it (mode {stat.S_IMODE(info.st_mode):o})",
                                  f"run chmod go-w on it, or point EMBED_CACHE_DIR at a folder only this user "
                                  "can write")


def check_private_file(path: Path) -> None:
    """Raise UnsafeDirectory unless the file ``path`` belongs to this user or root and no one else may write it."""
    info = os.stat(path)
    if not _trusted_owner(info.st_uid):
        raise UnsafeDirectory(path, f"it belongs to another user (uid {info.st_uid})",
                              "remove it; the server builds it again")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeDirectory(path, f"other users can write to it (mode {stat.S_IMODE(info.st_mode):o})",
                              "remove it; the server builds it again")


def make_private_dirs(folder: Path) -> None:
    """Create ``folder`` and any missing parents owner-only (a umask of 002 would leave them group-writable,
    which check_private_dir then refuses)."""
    missing = []
    for directory in [folder, *folder.parents]:
        if directory.exists():
            break
        missing.append(directory)
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            pass  # another process made it first; checked like any other
