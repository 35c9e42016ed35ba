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

Before a command writes, :func:`check_destination` says whether it may:
a name that exists is refused unless the caller forces it (``-f``), and a
name that is one of the command's inputs (the same device and inode,
through symlinks and hard links; ``-`` excepted) is refused even then.  An
empty name and a name ending in ``/`` are refused too (they would make
:func:`atomic_write` name a directory or its parent).  While a file is
replaced, the file under the name is locked as VM images are (an exclusive
``flock``, refused at once when another htabtool process holds it), so an
output never replaces an image a ``vm run`` is changing.

Signals (one scheme for every command; :mod:`htabtool.cli` installs
:func:`on_signal` for SIGTERM, SIGHUP and SIGINT): a signal raises
:class:`Interrupted` (a BaseException, like KeyboardInterrupt) in the main
thread, so every ``except BaseException`` / ``finally`` cleanup runs:
temporary files and working copies are removed and the destinations are
left as before.  The CLI then prints ``htabtool: interrupted`` and dies by
the same signal (exit status 128 + its number).  Cleanups run inside
:func:`uninterrupted`, which holds a signal back until the block ends.  A
command's commit point (the rename that makes its change) is marked with
:func:`committed`, inside :func:`uninterrupted`; from there on a signal is
held until the command ends, and the command reports what it did (success):
its change was made.  Only the first signal interrupts; those after it,
during the cleanup, are held.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

from htabtool.errors import HtabError

__all__ = ["atomic_write", "temp_name", "TEMP_SUFFIX", "check_destination", "same_file", "OutputRefused",
           "Interrupted", "on_signal", "uninterrupted", "committed", "lock_file", "InUse", "dangling_link",
           "TempFile", "staged", "install", "discard", "fsync_directory", "fsync_file"]

TEMP_SUFFIX = ".tmp"
_ATTEMPTS = 16
#: directories whose names are never replaced, only written through
_SYSTEM_DIRECTORIES = ("/dev", "/dev/fd")


class OutputRefused(HtabError):
    """An output a command will not write (it exists, it is an input, ...)."""


class InUse(HtabError):
    """A file another htabtool process holds locked."""


# -- signals -------------------------------------------------------------------


class Interrupted(BaseException):
    """A signal (SIGTERM, SIGHUP, SIGINT) handled by :func:`on_signal`:
    raised in the main thread so that every cleanup runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _Signals:
    """What the handler knows: how deep in :func:`uninterrupted` blocks the
    main thread is, whether the command committed, the signal held."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.depth = 0
        self.committed = False
        self.pending: int | None = None
        self.raised = False


SIGNALS = _Signals()


def on_signal(signum: int, frame=None) -> None:
    """The handler the CLI installs: raise :class:`Interrupted`, unless a
    cleanup or a commit is under way (then the signal is held), the
    command has committed, or a signal was raised already."""
    if SIGNALS.pending is None:
        SIGNALS.pending = signum
    if SIGNALS.depth or SIGNALS.committed or SIGNALS.raised:
        return
    SIGNALS.raised = True
    raise Interrupted(signum)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """A block a signal does not cut: one that arrives inside is held and
    raised when the block ends (unless the command committed meanwhile)."""
    SIGNALS.depth += 1
    try:
        yield
    finally:
        SIGNALS.depth -= 1
    if not SIGNALS.depth and SIGNALS.pending is not None and not (SIGNALS.committed or SIGNALS.raised):
        SIGNALS.raised = True
        raise Interrupted(SIGNALS.pending)


def committed() -> None:
    """Mark the command's commit point (call it inside
    :func:`uninterrupted`, right after the rename that makes the change): a
    signal from now on no longer interrupts, and the command ends as it
    would have without it."""
    SIGNALS.committed = True


# -- where a command may write -----------------------------------------------------


def same_file(a: str, b: str) -> bool:
    """Do two paths name one file (device and inode, through symlinks)?"""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except (OSError, ValueError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def check_destination(path: str, inputs=(), *, force: bool = False) -> None:
    """Refuse (:class:`OutputRefused`) to write ``path`` when it is an
    empty name or ends in ``/``; is the same file as one of ``inputs``
    (``-`` and None skipped; even with ``force``); or exists and ``force``
    is false.  A FIFO, a character device and a name in /dev or /proc are
    written through, not replaced: they may exist.  ``-`` (standard output)
    is the caller's to check (a terminal, see htabtool.cli.common)."""
    if path == "-":
        return
    if not path:
        raise OutputRefused("an empty output file name")
    if path.endswith(os.sep) or path.endswith(os.sep + "."):
        if os.path.isdir(path):
            raise OutputRefused(f"{path}: is a directory")
        raise OutputRefused(f"{path}: not a file name (it ends in {path[-1]!r})")
    for other in inputs:
        if other is not None and other != "-" and same_file(path, other):
            which = "" if os.path.abspath(other) == os.path.abspath(path) else f" ({other})"
            raise OutputRefused(f"{path}: is an input of this command{which}; not overwritten, even with -f")
    if os.path.isdir(path):
        raise OutputRefused(f"{path}: is a directory")
    if force or not os.path.lexists(path) or _written_through(path):
        return
    link = dangling_link(path)
    if link:
        raise OutputRefused(f"{link}; not overwritten (use -f to replace the link)")
    raise OutputRefused(f"{path}: already exists; not overwritten (use -f to replace it)")


def dangling_link(path: str) -> str | None:
    """``PATH: is a symbolic link to a missing file (TARGET)`` when it is
    one (every command says so in the same words), else None."""
    if not os.path.islink(path) or os.path.exists(path):
        return None
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return f"{path}: is a symbolic link to a missing file ({target})"


def lock_file(path: str, what: str = "the file") -> int | None:
    """Lock the regular file ``path`` names, exclusively, as VM images are
    locked (flock, not waiting): its fd, or None when there is no regular
    file to lock; :class:`InUse` when another process holds it."""
    import fcntl

    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise InUse(f"{path}: {what} is in use by another htabtool process; "
                        f"try again when it has finished") from None
        raise
    return fd


def temp_name(directory: str, base: str) -> str:
    """An unpredictable hidden name beside ``base`` in ``directory`` (64
    random bits; os.urandom, as the secrets module uses, without its import
    cost on every command)."""
    return os.path.join(directory, f".{base}.{_token()}{TEMP_SUFFIX}")


def _token() -> str:
    return os.urandom(8).hex()


def _open_temp(directory: str, base: str, mode: int, final: str, readable: bool = False) -> tuple[int, str]:
    flags = (os.O_RDWR if readable else os.O_WRONLY) | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
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


#: errors of fsync on a directory that mean "not supported here", not "lost"
_DIRECTORY_FSYNC_UNSUPPORTED = (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EROFS)


def fsync_directory(directory: str) -> None:
    """Make the renames and links in ``directory`` durable.  A directory we
    cannot open, or a file system that refuses fsync on directories (EINVAL,
    ENOTSUP, EBADF, EROFS), is skipped: the rename is done either way."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # a directory we cannot open cannot be synced; the rename is done
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIRECTORY_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def fsync_file(fd: int, name: str) -> None:
    """fsync the file open on ``fd``; an error names ``name`` (the final
    path, not a temporary one)."""
    try:
        os.fsync(fd)
    except OSError as exc:
        raise _named(exc, name) from None


def install(temp: str, path: str, *, replace: bool = True, final: bool = True, fsync: bool = True) -> None:
    """Put the file named ``temp`` into place under ``path``: renamed over
    whatever is there (``replace``), or linked under ``path`` and its
    temporary name removed (``replace=False``: FileExistsError if ``path``
    exists, nothing replaced).  A signal cannot cut it; ``final`` marks it
    the command's commit point (:func:`committed`).  Then (``fsync``) the
    directory is fsynced so that the change is durable."""
    with uninterrupted():
        if replace:
            os.replace(temp, path)
        else:
            os.link(temp, path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        if final:
            committed()
    if fsync:
        fsync_directory(os.path.dirname(os.path.abspath(path)))


def discard(temp: str | None) -> None:
    """Remove a temporary file that was not put into place (a signal held
    meanwhile); nothing if it is gone already or ``temp`` is None."""
    if temp is None:
        return
    with uninterrupted(), contextlib.suppress(FileNotFoundError):
        os.unlink(temp)


def _split_destination(path: str | os.PathLike) -> tuple[str, str, str]:
    """(path as a str, its directory, its base name); a name that is a
    directory's (nothing after the last ``/``) is IsADirectoryError."""
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    directory, base = os.path.split(os.path.abspath(path))
    if not base:
        raise IsADirectoryError(errno.EISDIR, "not a file name", path)
    return path, directory, base


class TempFile:
    """A new file beside ``path`` under the documented leftover name
    (``.BASE.<16 hex>.tmp``), created ``O_EXCL | O_NOFOLLOW`` with ``mode``
    (``readable``: open for reading too, as a mapped VM image is).
    :meth:`install` puts it into place, :meth:`discard` removes it unless
    it was installed; :meth:`close` closes the fd (a caller may keep it
    open past :meth:`install`).  Errors of the file name ``path``."""

    def __init__(self, path: str | os.PathLike, *, mode: int = 0o600, readable: bool = False):
        self.path, self.directory, base = _split_destination(path)
        self.fd, self.name = _open_temp(self.directory, base, mode, self.path, readable)
        self.temp: str | None = self.name  # None once installed or discarded
        self._owned = True  # close() closes fd

    def release(self) -> int:
        """Hand the fd over to the caller: :meth:`close` no longer closes it."""
        self._owned = False
        return self.fd

    def sync(self) -> None:
        fsync_file(self.fd, self.path)

    def install(self, *, replace: bool = True, final: bool = True, fsync: bool = True) -> None:
        """fsync the file (``fsync``), then :func:`install` it under ``path``."""
        if fsync:
            self.sync()
        install(self.name, self.path, replace=replace, final=final, fsync=fsync)
        self.temp = None

    def discard(self) -> None:
        """Remove the file unless it was installed."""
        discard(self.temp)
        self.temp = None

    def close(self) -> None:
        if self._owned:
            self._owned = False
            os.close(self.fd)


@contextlib.contextmanager
def staged(path: str | os.PathLike, *, replace: bool = True, final: bool = True,
           fsync: bool = True) -> Iterator[str]:
    """A temporary name beside ``path`` (the documented leftover naming) for
    the block to make a file under (by whatever means: a VM image, a
    snapshot); when the block ends without an exception that file is put
    into place (:func:`install`), else it is removed.  A block that made
    no file under the name is an error (FileNotFoundError)."""
    path, directory, base = _split_destination(path)
    temp = temp_name(directory, base)
    try:
        yield temp
        install(temp, path, replace=replace, final=final, fsync=fsync)
    except BaseException:
        discard(temp)
        raise


class _File(io.BufferedWriter):
    """A buffered binary file whose write errors name ``name``."""

    def __init__(self, fd: int, name: str):
        super().__init__(io.FileIO(fd, "wb"))
        self._name = name

    def write(self, data):
        try:
            return super().write(data)
        except OSError as exc:
            raise _named(exc, self._name) from None

    def flush(self):
        try:
            return super().flush()
        except OSError as exc:
            raise _named(exc, self._name) from None


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
                raise _named(exc, path) from None


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
    path, _, _ = _split_destination(path)
    if _written_through(path):
        with _write_through(path) as fileobj:
            yield fileobj
        return
    held = lock_file(path)
    try:
        temp = TempFile(path, mode=mode)
        try:
            with _File(temp.release(), path) as fileobj:  # the file object closes it
                yield fileobj
                fileobj.flush()
                if fsync:
                    temp.sync()
            install(temp.name, path, fsync=fsync)
            temp.temp = None
        except BaseException:
            temp.discard()
            raise
    finally:
        if held is not None:
            os.close(held)
