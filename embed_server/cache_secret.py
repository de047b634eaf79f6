"""The secret the shared embedding cache's Redis keys are an HMAC with.

With a plain hash, anyone who can read Redis could confirm a guess ("was this contract embedded?")
by hashing it; with an HMAC they also need this secret, which never goes to Redis. Every replica
must hold the same one to share entries, so it comes from the settings (a Docker or Kubernetes
secret). Without one, a key is generated once in the state folder, owner-only: the cache then
serves this replica (across its restarts) and no other. A key file that is a symbolic link, belongs
to another user or that others may read is refused (the shared cache is then off): another user
could have chosen that secret, or read it. That includes its group, even the server's own: a group
cannot be told apart from one that other users share, and on Kubernetes an fsGroup makes every file
on the volume group-readable again at each mount, so a chmod would not last there. Such deployments
take the key from a Secret (EMBED_REDIS_CACHE_KEY), which every replica needs to share entries anyway.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import stat
from pathlib import Path

from config import Settings
from config.settings import MIN_CACHE_KEY_CHARS
from embed_server.state_file import fsync_folder

log = logging.getLogger(__name__)

KEY_FILE = "redis-cache-key"


class CacheSecretError(RuntimeError):
    """The generated cache key cannot be made or read safely. The message names the file, never the key."""


def cache_secret(settings: Settings) -> bytes:
    """The configured secret, else this replica's generated one."""
    if settings.redis_cache_key is not None:
        return settings.redis_cache_key.get_secret_value().strip().encode("utf-8")
    path = settings.state_dir / KEY_FILE
    secret = _generated(path)
    log.warning("the shared embedding cache uses a key only this replica knows: set EMBED_REDIS_CACHE_KEY "
                "(the same on every replica) for replicas to share entries",
                extra={"event": "redis_cache_private_key", "path": str(path)})
    return secret


def _generated(path: Path) -> bytes:
    try:
        if not path.exists():
            _create(path)
        return _read_private(path)
    except OSError as error:
        raise CacheSecretError(f"cache key file {path}: {error.strerror or type(error).__name__}") from None


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(descriptor, secrets.token_hex(32).encode("ascii"))
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    try:
        # link, not rename: it fails when another process sharing the folder made the key first,
        # and both then use that one.
        os.link(temporary, path)
        fsync_folder(path.parent)
    except FileExistsError:
        pass
    finally:
        temporary.unlink(missing_ok=True)


def _read_private(path: Path) -> bytes:
    # Not through a symbolic link: whoever can write the state folder could otherwise make a file of
    # their choice the secret, or learn it. Every check and the read on one descriptor, so the file
    # cannot be swapped between them; O_NONBLOCK so that a FIFO put there cannot hang the start.
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise CacheSecretError(f"cache key file {path} is a symbolic link; "
                                   "replace it with the file itself") from None
        raise
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise CacheSecretError(f"cache key file {path} is not a regular file")
        # Owner-only but another user's: they chose the secret, or can read it.
        if info.st_uid != os.geteuid():
            raise CacheSecretError(f"cache key file {path} is owned by another user (uid {info.st_uid}); "
                                   "delete it to have a new one made")
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CacheSecretError(_shared_file_problem(path, info))
        chunks = []
        while chunk := os.read(descriptor, 4096):
            chunks.append(chunk)
    finally:
        os.close(descriptor)
    secret = b"".join(chunks).strip()
    if len(secret) < MIN_CACHE_KEY_CHARS:
        raise CacheSecretError(f"cache key file {path} holds fewer than {MIN_CACHE_KEY_CHARS} characters; "
                               "delete it to have a new one made")
    return secret


def _shared_file_problem(path: Path, info: os.stat_result) -> str:
    """Why a key file others may open is refused, and the fix that lasts where it came from."""
    mode = stat.S_IMODE(info.st_mode)
    if not info.st_mode & stat.S_IRWXO and info.st_gid in _own_groups():
        # Open to a group the server is in, with others shut out: what a Kubernetes fsGroup leaves (0660,
        # group = fsGroup) on every file of the volume at each mount, so a chmod would be undone.
        return (f"cache key file {path} is open to its group (gid {info.st_gid}, mode {mode:o}), as a "
                "Kubernetes fsGroup leaves every file on a volume at each mount; give every replica the key from "
                "a Secret (EMBED_REDIS_CACHE_KEY, as deploy/k8s/embeddings.yaml does), or chmod 600 it if nothing "
                "sets the group bits again")
    return (f"cache key file {path} is open to other users (mode {mode:o}); chmod 600 it, or set "
            "EMBED_REDIS_CACHE_KEY (the same on every replica)")


def _own_groups() -> set[int]:
    return {os.getegid(), *os.getgroups()}
