"""Small state files that survive crashes: atomic writes under a lock, damaged files set aside.

A server killed mid-write, two replicas on one volume, or a disk that fills up must never leave a
file that stops the next start: readers see the old file or the new one, never a mix, and a file
that does not parse is moved aside (kept for inspection) so the caller can start afresh.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

log = logging.getLogger(__name__)

_PRIVATE = 0o600  # state may reveal which texts were embedded: owner only, from the first byte


class StateFileError(RuntimeError):
    """A state file could not be written (the server keeps serving; the state stays in memory)."""


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s companion lock file.

    flock is per open file description, so threads of one process exclude each other as well as
    other processes, and the kernel drops the lock if the holder dies.
    """
    descriptor = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, _PRIVATE)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a unique temporary file in the same folder, fsync, rename,
    fsync the folder. Raises StateFileError on any OS error, leaving the old file in place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with locked(path):
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _PRIVATE)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(descriptor, view):]
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            os.replace(temporary, path)
            fsync_folder(path.parent)  # the rename itself must reach the disk too
    except OSError as error:
        with suppress(OSError):  # the folder itself may be what failed
            temporary.unlink(missing_ok=True)
        raise StateFileError(f"could not write {path.name}: {error}") from error


def read_locked(path: Path) -> bytes | None:
    """The file's bytes, or None when it does not exist. Raises OSError when it cannot be read."""
    if not path.parent.is_dir():
        return None
    try:
        with locked(path):
            return _read_if_present(path)
    except PermissionError:
        # A read-only state folder: writers replace the file whole, so an unlocked read still
        # sees a complete file.
        return _read_if_present(path)


def _read_if_present(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def set_aside(path: Path, reason: str, *, what: str = "state file", event: str = "state_file_corrupt",
              then: str = "starting afresh") -> Path | None:
    """Rename a damaged file (or folder) to ``<name>.corrupt-<UTC time>`` and log it; None if even that fails."""
    target = corrupt_name(path)
    try:
        with locked(path):
            os.replace(path, target)
    except OSError as error:
        log.error(f"{what} is damaged and could not be moved aside; {then}",
                  extra={"event": event, "path": str(path), "reason": reason, "error": str(error)})
        return None
    log.warning(f"{what} is damaged; moved aside, {then}",
                extra={"event": event, "path": str(path), "reason": reason, "moved_to": str(target)})
    return target


def corrupt_name(path: Path) -> Path:
    """Where ``set_aside`` moves ``path``: beside it, named by the time, never a name anything else uses."""
    return path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(2)}")


def remove_stale_temporaries(path: Path, older_than_seconds: float = 3600) -> None:
    """Delete temporary files a killed writer left behind (never a live writer's: those are young)."""
    now = time.time()
    try:
        for leftover in path.parent.glob(f".{path.name}.*.tmp"):
            if now - leftover.stat().st_mtime > older_than_seconds:
                leftover.unlink(missing_ok=True)
    except OSError:
        pass  # only tidying: never a reason to fail a start


def fsync_file(path: Path) -> None:
    """Push a file written by someone else's code (a library that takes a path) to the disk before it is
    renamed into place: a rename that reaches the disk before the data leaves an empty file under the name."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable: the folder entry must reach the disk too."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
