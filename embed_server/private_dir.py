"""Folders whose contents the server runs as code (built model graphs): only this user, or root, may change them.

A graph planted in a cache folder would run as our model, on every text the server embeds. So the folder, and
every folder above it, must belong to this user or root. The folders above it may be writable by group or
others only when they are sticky (like /tmp: others may add entries there, but not rename or remove ours, and
every entry we go through is checked for its owner in turn); the folder itself never, as others could put an
entry of theirs where ours goes. Files in it must be regular files that belong to this user or root and that no
one else may write.

Checking paths and then opening them by name leaves a gap: between the two, a symbolic link planted in a shared
folder on the way could send the open elsewhere. So the path is walked one folder at a time from the root, each
opened relative to the one above it without following links and checked on its descriptor, and files are opened
relative to the checked folder's descriptor. A symbolic link on the way is followed only when it belongs to this
user or root (in a sticky folder, anyone may have made one under a name we use); a link in place of a file is
refused.
"""

from __future__ import annotations

import errno
import os
import stat
from contextlib import suppress
from pathlib import Path, PurePosixPath
from types import TracebackType

# Folders on the way are opened as paths only (O_PATH): that needs the right to search them, as a lookup by name
# does, not to list them (a 0711 folder above the cache is fine). The final folder is opened again, through its
# descriptor, to be read.
_WALK_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO put in place of a file must not hang the start; it is refused once opened.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MAX_LINKS = 40  # the kernel's own limit on links in one lookup
# What open(O_NOFOLLOW) fails with on a link, depending on the system and on O_DIRECTORY.
_LINK_ERRORS = (errno.ELOOP, errno.ENOTDIR, errno.EMLINK)


class UnsafeDirectory(RuntimeError):
    """A folder (or a file in it) that another user could change: nothing is read from it."""

    def __init__(self, path: Path, why: str, fix: str) -> None:
        super().__init__(f"refusing {path}: {why}; {fix}")
        self.path = path


class PrivateDir:
    """An open, checked folder. Everything is opened relative to its descriptor, so what was checked is what
    is read, whatever happens to the path meanwhile."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    def subdir(self, name: str, *, create: bool = False) -> PrivateDir:
        """The folder ``name`` in this one, checked (and made owner-only first, with ``create``, if missing)."""
        return _walk(self.fd, self.path, [name], create)

    def read_file(self, name: str) -> bytes:
        """The bytes of the file ``name`` in this folder, once its descriptor shows a regular file of this user
        or root that no one else may write."""
        path = self.path / name
        try:
            descriptor = os.open(name, _FILE_FLAGS, dir_fd=self.fd)
        except OSError as error:
            if error.errno in _LINK_ERRORS and _is_link(self.fd, name):
                raise UnsafeDirectory(path, "it is a symbolic link", "remove it; the server builds it again") from None
            raise _naming(error, path) from None
        with open(descriptor, "rb", closefd=True) as file:
            _check_file(os.fstat(descriptor), path)
            return file.read()

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> PrivateDir:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


def open_private_dir(folder: Path, *, create: bool = False) -> PrivateDir:
    """``folder`` opened and checked with every folder above it, from the root down (the first problem found is
    the cause). With ``create``, missing folders are made owner-only (0700) whatever the umask: a umask of 002
    would leave them group-writable, which is refused. Raises UnsafeDirectory, or OSError (FileNotFoundError
    when it is missing)."""
    root = _open_root()
    try:
        return _walk(root, Path("/"), list(PurePosixPath(folder.absolute()).parts[1:]), create)
    finally:
        os.close(root)


def _walk(start: int, start_path: Path, parts: list[str], create: bool) -> PrivateDir:
    """Follow ``parts`` from the (checked) folder ``start``, one openat at a time."""
    # Every folder walked through, so that ".." returns to the one we checked rather than asking the kernel.
    stack: list[tuple[int, Path]] = [(os.dup(start), start_path)]
    pending = list(parts)
    links = 0
    try:
        while pending:
            name = pending.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop()[0])
                continue
            parent, where = stack[-1]
            step = _step(parent, where, name, create)
            if isinstance(step, int):
                stack.append((step, where / name))
                _check_dir(step, where / name, final=False)
                continue
            links += 1
            if links > _MAX_LINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(where / name))
            target = PurePosixPath(step)
            if target.is_absolute():
                root = _open_root()
                _close_all(stack)
                stack = [(root, Path("/"))]
            pending[:0] = target.parts[1:] if target.is_absolute() else target.parts
        walked, path = stack[-1]
        final = os.open(".", _DIR_FLAGS, dir_fd=walked)  # the very folder checked on the way, readable now
        try:
            _check_dir(final, path, final=True)
        except BaseException:
            os.close(final)
            raise
        return PrivateDir(final, path)
    finally:
        _close_all(stack)  # the folders above it: only the final one stays open


def _step(parent: int, where: Path, name: str, create: bool) -> int | str:
    """The folder ``name`` in ``parent``, opened, or the target of a symbolic link there that may be followed."""
    try:
        return os.open(name, _WALK_FLAGS, dir_fd=parent)
    except FileNotFoundError as error:
        if not create:
            raise _naming(error, where / name) from None
    except OSError as error:
        if error.errno in _LINK_ERRORS and _is_link(parent, name):
            return _trusted_link(parent, where / name, name)
        raise _naming(error, where / name) from None
    with suppress(FileExistsError):  # another process made it first: checked like any other
        os.mkdir(name, 0o700, dir_fd=parent)
    return _step(parent, where, name, create=False)


def _naming(error: OSError, path: Path) -> OSError:
    """The same error (OSError picks the subclass by errno) naming the whole path, not the name in its folder."""
    return OSError(error.errno, error.strerror, str(path))


def _trusted_link(parent: int, path: Path, name: str) -> str:
    # A link cannot be changed, only replaced, and only by whoever may remove entries from its folder: that
    # folder was checked, so the owner is what is left to check (in a sticky folder, anyone may have made it).
    info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    if not _trusted_owner(info.st_uid):
        raise UnsafeDirectory(path, f"it is a symbolic link another user made (uid {info.st_uid})",
                              "remove it, or point EMBED_CACHE_DIR at the folder it leads to, if that one is safe")
    return os.readlink(name, dir_fd=parent)


def _is_link(parent: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _open_root() -> int:
    root = os.open("/", _WALK_FLAGS)
    try:
        _check_dir(root, Path("/"), final=False)
    except BaseException:
        os.close(root)
        raise
    return root


def _close_all(stack: list[tuple[int, Path]]) -> None:
    for descriptor, _ in stack:
        os.close(descriptor)
    stack.clear()


def _trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def _check_dir(descriptor: int, path: Path, *, final: bool) -> None:
    """Raise UnsafeDirectory unless the open folder belongs to this user or root and no one else may add to it
    (above the final folder, a sticky one may be shared: others cannot move or replace what is ours)."""
    info = os.fstat(descriptor)
    if not _trusted_owner(info.st_uid):
        raise UnsafeDirectory(path, f"it belongs to another user (uid {info.st_uid})",
                              "use a folder owned by this user (chown it, or point EMBED_CACHE_DIR elsewhere)")
    shared = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    sticky = bool(info.st_mode & stat.S_ISVTX)
    if shared and (final or not sticky):
        who = "group and others" if shared == stat.S_IWGRP | stat.S_IWOTH else \
            "its group" if shared == stat.S_IWGRP else "all users"
        why = f"{who} can write to it (mode {stat.S_IMODE(info.st_mode):o})"
        if sticky:  # final: others could have put a folder or file of theirs under a name we use
            why += "; the sticky bit is enough only for the folders above it"
        raise UnsafeDirectory(path, why, "run chmod go-w on it, or point EMBED_CACHE_DIR at a folder only this "
                                         "user can write")


def _check_file(info: os.stat_result, path: Path) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeDirectory(path, "it is not a regular file", "remove it; the server builds it again")
    if not _trusted_owner(info.st_uid):
        raise UnsafeDirectory(path, f"it belongs to another user (uid {info.st_uid})",
                              "remove it; the server builds it again")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeDirectory(path, f"other users can write to it (mode {stat.S_IMODE(info.st_mode):o})",
                              "remove it; the server builds it again")
