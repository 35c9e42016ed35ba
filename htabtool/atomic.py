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

A symlink under the final name is replaced, not followed.  A destination
that is not a file to replace is written straight through, never replaced:
a FIFO or a character device (``/dev/null``, a terminal), and any name in
``/dev``, ``/dev/fd`` or ``/proc`` (``/dev/stdout`` names whatever standard
output is; a temporary file there, renamed over the name, would replace the
system's own link).  Nothing is atomic about such a write.  A block device
or a socket is refused.

Errors of the file (a full disk: ENOSPC, a file size limit: EFBIG) are
raised as the OSError they are, naming the final path, never the temporary
one.

Writing to standard output (``-``) is the caller's business: there is
nothing to rename, so it cannot be atomic.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
from typing import BinaryIO, Iterator

from htabtool.errors import HtabError

__all__ = ["atomic_write", "temp_name", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".tmp"
_ATTEMPTS = 16
#: directories whose names are never replaced, only written through
_SYSTEM_DIRECTORIES = ("/dev", "/dev/fd")


def temp_name(directory: str, base: str) -> str:
    """An unpredictable hidden name beside ``base`` in ``directory`` (64
    random bits; os.urandom, as the secrets module uses, without its import
    cost on every command)."""
    return os.path.join(directory, f".{base}.{_token()}{TEMP_SUFFIX}")


def _token() -> str:
    return os.urandom(8).hex()


def _open_temp(directory: str, base: str, mode: int, final: str) -> tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    for _ in range(_ATTEMPTS):
        name = temp_name(directory, base)
        try:
            return os.open(name, flags, mode), name
        except FileExistsError:
            continue
        except OSError as exc:  # name the file asked for, not our temporary one
            raise OSError(exc.errno, exc.strerror, final) from None
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


class _File(io.BufferedWriter):
    """A buffered binary file whose write errors name ``name``."""

    def __init__(self, fd: int, name: str):
        super().__init__(io.FileIO(fd, "wb"))
        self._name = name

    def write(self, data):
        try:
            return super().write(data)
        except OSError as exc:
            raise _named(exc, self._name)

    def flush(self):
        try:
            return super().flush()
        except OSError as exc:
            raise _named(exc, self._name)


def _named(exc: OSError, name: str) -> OSError:
    if exc.filename is None:
        exc.filename = name
    return exc


def _written_through(path: str) -> bool:
    """Is ``path`` a destination to write through rather than replace?"""
    directory = os.path.dirname(os.path.abspath(path))
    if directory in _SYSTEM_DIRECTORIES or directory == "/proc" or directory.startswith("/proc/"):
        return True
    try:
        st = os.stat(path)  # what a symlink points at, too
    except OSError:
        return False
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode):
        return True
    if stat.S_ISBLK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        kind = "a block device" if stat.S_ISBLK(st.st_mode) else "a socket"
        raise HtabError(f"{path}: is {kind}; write to a file, a FIFO or standard output (-)")
    return False


@contextlib.contextmanager
def _write_through(path: str) -> Iterator[BinaryIO]:
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)  # no O_CREAT: nothing is made in /dev or /proc
    with _File(fd, path) as fileobj:
        yield fileobj
        fileobj.flush()
        if stat.S_ISREG(os.fstat(fd).st_mode):
            try:
                os.fsync(fd)
            except OSError as exc:
                raise _named(exc, path)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: int = 0o600, *, fsync: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file whose contents replace ``path`` atomically.

    The new file appears under ``path`` only if the ``with`` body finishes
    without an exception; otherwise the temporary file is removed and the
    old ``path`` (if any) is untouched.  ``mode`` is the permission of the
    new file (minus the umask, as for any file creation).  ``fsync=False``
    skips both fsyncs (tests, scratch files); the rename stays atomic.
    A FIFO, a character device or a name in /dev or /proc is written
    through instead (see the module's notes).
    """
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    directory, base = os.path.split(os.path.abspath(path))
    if not base:
        raise IsADirectoryError(errno.EISDIR, "not a file name", path)
    if _written_through(path):
        with _write_through(path) as fileobj:
            yield fileobj
        return
    fd, temp = _open_temp(directory, base, mode, path)
    try:
        with _File(fd, path) as fileobj:
            yield fileobj
            fileobj.flush()
            if fsync:
                try:
                    os.fsync(fileobj.fileno())
                except OSError as exc:
                    raise _named(exc, path)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    if fsync:
        _fsync_directory(directory)
