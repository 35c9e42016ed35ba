"""Atomic file replacement for every command that writes a file.

Strategy: write into a temporary file in the destination's own directory
(so the final rename cannot cross a file system), created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` under an unpredictable name and the
requested mode (0600 by default: snapshots reveal a guest's memory layout),
then ``fsync`` it, ``os.replace`` it onto the final name and ``fsync`` the
directory so that the rename itself is durable.  On any exception, a
KeyboardInterrupt included, the temporary file is removed and whatever was
under the final name before is left untouched: an interrupted writer never
leaves a partial file under the final name.

A process killed outright (SIGKILL, power loss) can leave a temporary file
behind; its name starts with ``.<final name>.`` and ends with ``.tmp``, so
it is easy to recognise, and it never replaces the final name.

Writing to standard output (``-``) is the caller's business: there is
nothing to rename, so it cannot be atomic.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from typing import BinaryIO, Iterator

__all__ = ["atomic_write", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".tmp"
_ATTEMPTS = 16


def _open_temp(directory: str, base: str, mode: int) -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    for _ in range(_ATTEMPTS):
        name = os.path.join(directory, f".{base}.{secrets.token_hex(8)}{TEMP_SUFFIX}")
        try:
            return os.open(name, flags, mode), name
        except FileExistsError:
            continue
    raise FileExistsError(
        errno.EEXIST, f"could not create a unique temporary file after {_ATTEMPTS} attempts", directory
    )


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # a directory we cannot open cannot be synced; the rename is done
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems refuse fsync on a directory (EINVAL); others lack it.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EROFS):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: int = 0o600, *, fsync: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file whose contents replace ``path`` atomically.

    The new file appears under ``path`` only if the ``with`` body finishes
    without an exception; otherwise the temporary file is removed and the
    old ``path`` (if any) is untouched.  ``mode`` is the permission of the
    new file (minus the umask, as for any file creation).  ``fsync=False``
    skips both fsyncs (tests, scratch files); the rename stays atomic.
    """
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    directory, base = os.path.split(os.path.abspath(path))
    if not base:
        raise IsADirectoryError(errno.EISDIR, "not a file name", path)
    fd, temp = _open_temp(directory, base, mode)
    try:
        with os.fdopen(fd, "wb") as fileobj:
            yield fileobj
            fileobj.flush()
            if fsync:
                os.fsync(fileobj.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    if fsync:
        _fsync_directory(directory)
