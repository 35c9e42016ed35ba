"""Persistent VM images: one file holding a simulated guest between commands.

Strategy: a real VM lives on between ``savevm`` and ``loadvm``; a simulated
one lives in a file, so that ``htabtool vm create``, ``vm run``, ``dump``
and ``load`` -- separate processes -- all see one guest.  The file holds
the hashed page table, the reverse map, the guest's own record of the
table and the guest model's state.  The three arrays are mapped with mmap
(numpy memmaps) and used in place: a 1 GiB table is never copied into
Python objects, and an image is written only where the guest or a load
changed it (the file is sparse until then).  The small state is JSON (no
pickle, nothing evaluated).  While an image is open it is locked (flock):
one writer, or any number of readers; a second writer is refused at once
(``IMAGE: the VM image is in use by another htabtool process``), it does not
wait.  A lock is taken on the inode a path names; since changes replace the
file (below), an open checks after locking that the path still names the
inode locked, and opens again if not.

The on-disk layout (format version 1) is :mod:`htabtool.sim.vmformat`'s.

A reader refuses an image whose magic, version, header checksum, sizes or
JSON do not hold, and anything that is not a regular file (a FIFO, a
device), with a one-line :class:`~htabtool.errors.VMImageError`.

Changes all or nothing: :func:`transaction` (``vm run``, ``vm stop``,
``vm cont``) locks the image, copies it beside itself (holes kept, an
unpredictable name, mode 0600, never through a symlink), changes the copy,
saves and fsyncs it and renames it over the image, so that a process killed
at any point leaves the image as it was before or as it is after, never in
between (a leftover copy is named ``.IMAGE.<random>.tmp``).  The copy needs
the image's space again while it lasts: a change (and ``vm create``) is
refused when the file system has less free space than the image's full
size, since a write through mmap into a sparse file on a full file system
is SIGBUS, not an error.  An image changed in place
(:func:`open_vm`) has no such guarantee: a crash in the middle can leave the
arrays and the state out of step.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat as stat_module
from collections.abc import Iterator
from typing import TYPE_CHECKING

from htabtool import __version__
from htabtool.atomic import OutputRefused, TempFile, check_destination, fsync_directory, fsync_file, uninterrupted
from htabtool.errors import HtabError, UsageError, VMImageError
from htabtool.hpte import table_entries
from htabtool.sim.mmu import DEFAULT_BACKING_PAGE_SHIFT, DEFAULT_CPU, GUEST_PAGE_SHIFT, ram_order
from htabtool.sim.papr import PPC_MAX_HPT_ORDER, PPC_MIN_HPT_ORDER
from htabtool.sim.profiles import get_profile
from htabtool.sim.vmformat import (
    CPU_CODES,
    FLAG_MAP_VRMA,
    FLAG_MMU_READY,
    FLAG_RUNNING,
    FORMAT_VERSION,
    MAGIC,
    MAX_U64,
    SECTION_ALIGN,
    add_counts,
    check_state,
    describe,
    describe_file,
    entry_counts,
    format_size,
    layout,
    parse_size,
    read_header,
    read_state,
    write_header,
)

if TYPE_CHECKING:  # numpy, the engine and the guest are imported when an image is mapped, not for vm info
    import numpy as np

    from htabtool.sim.hpt import SimulatedHPT


class VMImage:
    """An open VM image: ``hpt`` (:class:`SimulatedHPT` over the mapped
    table) and ``guest`` (:class:`Guest`).  Changes are in the file as they
    happen; :meth:`close` (or leaving the ``with`` block) saves the rest."""

    def __init__(self, path: str, fd: int, header: dict, state: dict, writable: bool, file: str | None = None):
        self.path = path
        self._fd = fd
        self.header = header
        self.writable = writable
        file = path if file is None else file
        try:  # the file locked on fd, whatever the name names by now
            maps = _map_sections(file, fd, writable, header)
        except (OSError, ValueError) as exc:
            raise VMImageError(f"{path}: cannot map the image: {_map_error(exc)}") from None
        import numpy as np

        from htabtool.sim.guest import Guest
        from htabtool.sim.hpt import SimulatedHPT

        flags = header["flags"]
        self._maps = maps  # flushed on save
        # plain ndarray views of the maps: numpy's memmap subclass costs a
        # Python call on every slice, and the engine slices per read
        hpt_array, rev_array, gmap_array = (m.view(np.ndarray) for m in self._maps)
        self.hpt = SimulatedHPT(
            header["order"],
            ram_size=header["ram"],
            backing_page_shift=header["backing_page_shift"],
            map_vrma=bool(flags & FLAG_MAP_VRMA),
            hpt=hpt_array,
            rev=rev_array,
            cpu=header["cpu"],
        )
        self.hpt.vcpus_running = bool(flags & FLAG_RUNNING)
        self.hpt.mmu_ready = bool(flags & FLAG_MMU_READY)
        self.hpt.vrma_slb_v = header["vrma_slb_v"]
        self.hpt.lpcr = header["lpcr"]
        if writable and header["generation"] >= MAX_U64:
            raise VMImageError(f"{path}: the VM image's generation is at its maximum ({header['generation']}); "
                               f"it cannot be changed again")
        check_state(state, path)
        self.hpt.hcalls.update(state.get("engine", {}).get("hcalls", {}))
        try:
            self.guest = Guest(self.hpt, gmap_array, state["guest"])
        except (KeyError, TypeError, ValueError, HtabError) as exc:
            raise VMImageError(f"{path}: the guest state does not hold: {exc}") from None
        self.state = state

    # -- opening ---------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike, writable: bool = True) -> VMImage:
        path = os.fspath(path)
        fd = _open_locked(path, writable)
        try:
            return cls._from_fd(path, fd, writable)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def _from_fd(cls, path: str, fd: int, writable: bool, file: str | None = None) -> VMImage:
        """The image open (and locked) on ``fd``: ``file`` is its name in the
        file system (default ``path``), ``path`` its name in messages."""
        header = read_header(fd, path)
        state = read_state(fd, path, header)
        return cls(path, fd, header, state, writable, file)

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        *,
        ram: int | None = None,
        order: int | None = None,
        profile: str = "idle",
        seed: int = 0,
        backing_page_shift: int = DEFAULT_BACKING_PAGE_SHIFT,
        vrma: bool = False,
        force: bool = False,
        final: bool = True,
        cpu: str = DEFAULT_CPU,
    ) -> VMImage:
        """Make a new image and boot its guest.  The table size is ``order``,
        else QEMU's default for ``ram``; RAM defaults to 128 times the table
        (the inverse rule).  The file appears whole or not at all; an
        existing one is kept unless ``force``.  ``final=False``: the image is
        a step of a larger change (load --create), so its appearance is not
        the command's commit point (htabtool.atomic.committed)."""
        path = os.fspath(path)
        get_profile(profile)
        if cpu not in CPU_CODES:
            raise UsageError(f"host CPU must be one of {', '.join(CPU_CODES)}, not {cpu!r}")
        ram, order = _sizes(ram, order)
        try:
            check_destination(path, force=force)
        except OutputRefused as exc:
            raise VMImageError(str(exc)) from None
        directory = os.path.dirname(os.path.abspath(path))
        npte = table_entries(order)
        lay = layout(npte)
        header = {
            "version": FORMAT_VERSION,
            "order": order,
            "flags": FLAG_MAP_VRMA if vrma else 0,
            "entries": npte,
            "ram": ram,
            "backing_page_shift": int(backing_page_shift),
            "cpu": cpu,
            "table_offset": lay["table"],
            "table_length": npte * 16,
            "rev_offset": lay["rev"],
            "rev_length": npte * 8,
            "gmap_offset": lay["gmap"],
            "gmap_length": npte * 8,
            "state_offset": lay["state"],
            "state_length": 0,
            "vrma_slb_v": 0,
            "lpcr": 0,
            "generation": 0,
        }
        _check_space(directory, lay["state"] + SECTION_ALIGN, path)
        # --force: not under a process that has the old image open (its work
        # would be lost); its lock is held until the new image replaces it
        held = _lock_existing(path) if force else None
        try:
            return cls._create(path, directory, header, lay, npte, ram, order, profile, seed, backing_page_shift,
                               vrma, force, final)
        finally:
            if held is not None:
                os.close(held)

    @classmethod
    def _create(cls, path, directory, header, lay, npte, ram, order, profile, seed, backing_page_shift, vrma,
                force, final=True) -> VMImage:
        import numpy as np

        from htabtool.sim.guest import Guest
        from htabtool.sim.hpt import SimulatedHPT

        try:
            new = TempFile(path, readable=True)
        except OSError as exc:
            where = os.path.join(directory, os.path.basename(path))
            raise VMImageError(f"{where}: cannot create: {_short(exc)}") from None
        fd, tmp = new.fd, new.name
        image = None
        try:
            _lock(fd, path, True)
            os.ftruncate(fd, lay["state"])
            write_header(fd, header)
            state = {"guest": None}
            # boot on the mapped arrays, then write the state
            vm = cls.__new__(cls)
            vm.path, vm._fd, vm.header, vm.writable = tmp, fd, header, True
            try:
                vm._maps = _map_sections(tmp, fd, True, header)
            except (OSError, ValueError) as exc:
                raise VMImageError(f"{path}: cannot map a table of {npte} entries: {_map_error(exc)}") from None
            hpt_array, rev_array, gmap_array = (m.view(np.ndarray) for m in vm._maps)
            hpt = SimulatedHPT(order, ram_size=ram, backing_page_shift=backing_page_shift, map_vrma=vrma, hpt=hpt_array,
                               rev=rev_array, cpu=header["cpu"])
            vm.hpt = hpt
            vm.guest = Guest.boot(hpt, profile, seed, gmap=gmap_array)
            vm.state = state
            image = vm
            vm.save()
            try:
                new.install(replace=force, final=final)  # fsyncs the file, then the directory
            except FileExistsError:
                raise VMImageError(f"{path}: already exists; not overwritten (use -f to replace it)") from None
            vm.path = path
            return vm
        except BaseException as exc:
            with uninterrupted():
                if image is not None:
                    image._drop()
                new.close()
                new.discard()
            if isinstance(exc, OSError):  # a full disk, a file size limit: named, as any error of a file
                raise VMImageError(f"{path}: cannot create the VM image ({_short(exc)}); nothing was created") from None
            raise

    # -- saving and closing ------------------------------------------------------

    def save(self) -> None:
        """Write the state and the header; flush the mapped arrays."""
        if not self.writable:
            raise VMImageError(f"{self.path}: opened read-only")
        for arr in self._maps:
            arr.flush()
        state = dict(self.state)
        state.update(
            {
                "format": FORMAT_VERSION,
                "tool": f"htabtool {__version__}",
                "guest": self.guest.state,
                "engine": {"hcalls": dict(sorted(self.hpt.hcalls.items()))},
            }
        )
        blob = json.dumps(state, sort_keys=True, separators=(",", ":")).encode()
        h = self.header
        flags = h["flags"] & FLAG_MAP_VRMA
        flags |= FLAG_RUNNING if self.hpt.vcpus_running else 0
        flags |= FLAG_MMU_READY if self.hpt.mmu_ready else 0
        h.update(
            flags=flags,
            state_length=len(blob),
            vrma_slb_v=self.hpt.vrma_slb_v,
            lpcr=self.hpt.lpcr,
            generation=h["generation"] + 1,
        )
        os.pwrite(self._fd, blob, h["state_offset"])
        os.ftruncate(self._fd, h["state_offset"] + len(blob))
        write_header(self._fd, h)

    def close(self, save: bool = True) -> None:
        """Save (unless ``save`` is false: nothing was changed) and let go."""
        if self._fd is None:
            return
        try:
            if self.writable and save:
                self.save()
                fsync_file(self._fd, self.path)
        finally:
            self._drop()
            os.close(self._fd)
            self._fd = None  # type: ignore[assignment]  # closed: close() again does nothing

    def flush(self) -> None:
        """Write the mapped arrays back (the table, the reverse map, the
        guest map), leaving the header and the state as they are."""
        for arr in getattr(self, "_maps", ()):
            arr.flush()

    def _drop(self) -> None:
        """Let go of the mapped arrays."""
        self.hpt = None  # type: ignore[assignment]  # dropped: the maps can be let go
        self.guest = None  # type: ignore[assignment]

    def __enter__(self) -> VMImage:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    # -- for people -----------------------------------------------------------------

    def info(self) -> dict:
        """``vm info``'s dictionary (:func:`htabtool.sim.vmformat.describe`) of the image as it is now."""
        hpt = self.hpt
        return describe(self.path, self.header, table_counts(hpt), self.guest.state, hpt.hcalls, os.fstat(self._fd),
                        running=hpt.vcpus_running, mmu_ready=hpt.mmu_ready, map_vrma=hpt.map_vrma,
                        vrma_slb_v=hpt.vrma_slb_v)


def table_counts(hpt: SimulatedHPT, chunk: int = 1 << 22) -> dict:
    """Valid (valid or absent), bolted, absent and secondary entries, by chunks
    (:func:`htabtool.sim.vmformat.entry_counts`)."""
    from htabtool.hpte import v_low_bytes

    total: dict = {}
    for lo in range(0, hpt.npte, chunk):
        add_counts(total, entry_counts(v_low_bytes(hpt.hpt[lo : lo + chunk]).tobytes()))
    return total


# -- the header and the state ---------------------------------------------------


_OPEN_ATTEMPTS = 16


def _open_locked(path: str, writable: bool, exclusive: bool | None = None) -> int:
    """Open the image ``path`` names and lock it; returns the fd.

    A lock belongs to an inode, not to a name, and a change renames a new
    file over the image (:func:`transaction`, ``load --vm``).  A process
    that opened the old inode before such a rename and locks it after the
    writer let go would work on an unlinked file and its work would be
    lost.  So once the lock is held, the path must still name the inode
    locked; if it does not, the open starts again on what it names now.

    Not a regular file (a FIFO, a device, a directory): refused, without
    blocking (O_NONBLOCK: opening a FIFO would wait for a writer).  Locked by
    another process: refused at once (LOCK_NB); an operator's script wants
    an answer, not a wait of unknown length."""
    flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
    for _ in range(_OPEN_ATTEMPTS):
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise VMImageError(f"{path}: no such VM image") from None
        except IsADirectoryError:
            raise VMImageError(f"{path}: is a directory, not a VM image") from None
        except PermissionError:
            raise VMImageError(f"{path}: permission denied") from None
        except OSError as exc:
            raise VMImageError(f"{path}: cannot open the VM image: {exc.strerror or exc}") from None
        try:
            st = os.fstat(fd)
            if stat_module.S_ISDIR(st.st_mode):
                raise VMImageError(f"{path}: is a directory, not a VM image")
            if not stat_module.S_ISREG(st.st_mode):
                raise VMImageError(f"{path}: not a regular file (a FIFO, a socket or a device), not a VM image")
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            _lock(fd, path, writable if exclusive is None else exclusive)
            if _names(path, st):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # replaced while we locked it: open what the path names now
    raise VMImageError(f"{path}: the VM image keeps being replaced by other processes; try again")


def _names(path: str, st: os.stat_result) -> bool:
    """Does ``path`` still name the file of ``st``?"""
    try:
        return _same_file(os.stat(path), st)
    except OSError:
        return False


def _lock(fd: int, path: str, exclusive: bool) -> None:
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise VMImageError(
                f"{path}: the VM image is in use by another htabtool process; try again when it has finished"
            ) from None
        raise


def _lock_existing(path: str) -> int | None:
    """Lock the regular file ``path`` names (before replacing it): its fd,
    None if there is none; VMImageError if another process holds it."""
    if not os.path.isfile(path):
        return None
    try:
        return _open_locked(path, writable=False, exclusive=True)
    except VMImageError:
        if not os.path.isfile(path):
            return None  # it went away meanwhile: nothing to wait for
        raise


def _map_sections(name: str, fd: int, writable: bool, h: dict) -> tuple[np.memmap, np.memmap, np.memmap]:
    """The table, the reverse map and the guest map of the image on ``fd`` (see :func:`_map`)."""
    npte = h["entries"]
    return (_map(name, fd, writable, ">u8", h["table_offset"], (npte, 2)),
            _map(name, fd, writable, "<u8", h["rev_offset"], (npte,)),
            _map(name, fd, writable, "<u8", h["gmap_offset"], (npte,)))


def _map_error(exc: OSError | ValueError) -> str:
    return _short(exc) if isinstance(exc, OSError) else str(exc)


def _map(name: str, fd: int, writable: bool, dtype: str, offset: int, shape: tuple) -> np.memmap:
    """A numpy memmap of the file open (and locked) on ``fd``, through a new
    open of ``name`` checked to be that same file.  (Not through a duplicate
    of ``fd``: mmap keeps the descriptor it is given, and with it the
    lock, for as long as the array lives.)"""
    with open(name, "r+b" if writable else "rb", buffering=0) as f:
        if not _same_file(os.fstat(f.fileno()), os.fstat(fd)):
            raise OSError(errno.ESTALE, "the image was replaced while it was being opened", name)
        import numpy as np

        return np.memmap(f, dtype=dtype, mode="r+" if writable else "r", offset=offset, shape=shape)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _sizes(ram: int | None, order: int | None) -> tuple[int, int]:
    if ram is None and order is None:
        raise UsageError("give the guest's RAM (--ram) or the table's order (--order)")
    if order is not None and not PPC_MIN_HPT_ORDER <= order <= PPC_MAX_HPT_ORDER:
        raise UsageError(f"order must be between {PPC_MIN_HPT_ORDER} and {PPC_MAX_HPT_ORDER}, not {order}",
                         param="order")
    if ram is not None:
        if ram < (16 << 20) or ram % (1 << 16):
            raise UsageError(f"ram must be a multiple of 64 KiB and at least 16 MiB, not {ram}", param="ram")
    if order is None:
        assert ram is not None  # one of the two is given
        order = ram_order(ram)
    if ram is None:
        ram = 1 << (order + 7)
    from htabtool.records import check_indexable_order

    check_indexable_order(order)
    entries = table_entries(order)
    if ram >> GUEST_PAGE_SHIFT > entries:
        raise UsageError(
            f"--ram {format_size(ram)} needs {ram >> GUEST_PAGE_SHIFT:,} bolted entries for the kernel's linear "
            f"map, more than the {entries:,} entries of an order {order} table (give a larger --order, or leave it "
            f"out: QEMU's default is 1/128 of RAM)"
        )
    return int(ram), int(order)


# -- the library calls behind ``htabtool vm`` --------------------------------------


@contextlib.contextmanager
def open_vm(path, writable: bool = True) -> Iterator[VMImage]:
    """``with open_vm(path) as vm:`` -- vm.hpt, vm.guest; saved on leaving."""
    vm = VMImage.open(path, writable)
    try:
        yield vm
    finally:
        vm.close()


@contextlib.contextmanager
def transaction(path, check=None) -> Iterator[VMImage]:
    """``with transaction(path) as vm:`` -- change an image all or nothing.

    The image is opened and locked (one writer); ``check(vm)``, if given,
    may refuse on the image itself before anything is copied.  Then a copy
    is made beside the file the path resolves to (a symlink keeps pointing
    at the image), opened and locked, and handed out; when the block ends
    without an exception the copy is saved, fsynced and renamed over the
    image, and the directory fsynced.  On an exception (or a kill) the copy
    is dropped, and the image is as it was."""
    path = os.fspath(path)
    original = VMImage.open(path)
    try:
        if check is not None:
            check(original)
        real = os.path.realpath(path)
        directory, base = os.path.split(real)
        st = os.fstat(original._fd)
        _check_replaceable(path, st)
        _check_space(directory, st.st_size, path)
        try:
            work = TempFile(real, readable=True)
        except OSError as exc:
            raise VMImageError(f"{os.path.join(directory, base)}: cannot make a working copy beside it: "
                               f"{_short(exc)}") from None
        fd = work.fd
        copy = None
        try:
            try:
                _keep_owner_and_mode(fd, st)
                _copy_sparse(original._fd, fd)
                fsync_file(fd, path)
            except OSError as exc:
                raise VMImageError(
                    f"{path}: cannot make the working copy of the image ({_short(exc)}); "
                    f"the image is left as it was"
                ) from None
            _lock(fd, path, True)
            copy = VMImage._from_fd(path, fd, True, file=work.name)
            yield copy
            try:
                copy.save()
                work.sync()
            except OSError as exc:
                raise VMImageError(f"{path}: cannot save the changed image ({_short(exc)}); "
                                   f"the image is left as it was") from None
            work.install(fsync=False)  # synced above
            fsync_directory(directory)
        finally:
            with uninterrupted():
                if copy is not None:
                    copy._drop()
                work.close()
                work.discard()
    finally:
        original.close(save=False)


def _check_replaceable(path: str, st: os.stat_result) -> None:
    """A change renames a copy over the image: refuse beforehand what that
    would lose.  Hard links would keep the old file under their names; an
    owner other than us (when we cannot give the copy to it) would become
    us."""
    if st.st_nlink > 1:
        raise VMImageError(
            f"{path}: the VM image has {st.st_nlink} hard links; a change replaces the file and would leave "
            f"the others on the old one (copy the image to a file of its own first)"
        )
    if os.geteuid() not in (0, st.st_uid):
        raise VMImageError(
            f"{path}: the VM image belongs to user {st.st_uid}; a change replaces the file and would give it to "
            f"you (run as its owner)"
        )


def _keep_owner_and_mode(fd: int, st: os.stat_result) -> None:
    """The working copy gets the image's owner, group and mode."""
    if (os.fstat(fd).st_uid, os.fstat(fd).st_gid) != (st.st_uid, st.st_gid):
        try:
            os.fchown(fd, st.st_uid, st.st_gid)
        except PermissionError:
            os.fchown(fd, st.st_uid, -1)  # a group we are not in: the owner at least
    os.fchmod(fd, stat_module.S_IMODE(st.st_mode))


def _check_space(directory: str, size: int, path: str) -> None:
    """Refuse to make an image that can grow to ``size`` bytes where there
    is less free space than that.  The arrays are written through mmap into
    a sparse file: on a full file system a write (on tmpfs even a read) of
    a hole is SIGBUS, which kills the process without a word.  This check
    is made before the work starts; a file system that fills up while it
    runs can still end it so (the image is as it was, a copy is left)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if free < size:
        raise VMImageError(
            f"{path}: not enough free space: the image can grow to {size:,} bytes, "
            f"its file system has {free:,} free"
        )


def _short(exc: OSError) -> str:
    """What an OSError says, without the (temporary) file it names."""
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return "too many open files (see ulimit -n)"
    if exc.errno == errno.ENOMEM:
        return "out of memory (see ulimit -v)"
    return exc.strerror or str(exc)


def _copy_sparse(src: int, dst: int, block: int = 1 << 20) -> None:
    """Copy the file on fd ``src`` to fd ``dst``, holes kept: the data
    extents (SEEK_DATA / SEEK_HOLE, where the file system tells them), and
    in them only the blocks that are not all zero."""
    size = os.fstat(src).st_size
    zero = bytes(block)
    pos = 0
    while pos < size:
        try:
            start = os.lseek(src, pos, os.SEEK_DATA)
            end = min(size, os.lseek(src, start, os.SEEK_HOLE))
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                break
            start, end = pos, size  # no extent information: read it all
        except AttributeError:
            start, end = pos, size
        at = start
        while at < end:
            data = os.pread(src, min(block, end - at), at)
            if not data:
                break
            if data != zero[: len(data)]:
                view, to = memoryview(data), at
                while view:
                    n = os.pwrite(dst, view, to)
                    view, to = view[n:], to + n
            at += len(data)
        if end <= pos:  # no progress (the file changed under us): stop
            break
        pos = end
    os.ftruncate(dst, size)


def create_image(path, *, ram=None, order=None, profile="idle", seed=0,
                 backing_page_shift=DEFAULT_BACKING_PAGE_SHIFT, vrma=False, force=False, cpu=DEFAULT_CPU) -> dict:
    vm = VMImage.create(
        path, ram=ram, order=order, profile=profile, seed=seed, backing_page_shift=backing_page_shift, vrma=vrma,
        force=force, cpu=cpu,
    )
    try:
        return vm.info()
    finally:
        vm.close()


def run_image(path, *, ops: int | None = None, seconds: float | None = None) -> dict:
    """Churn the guest of an image: ``ops`` events or ``seconds`` of guest time."""
    def running(vm):
        if not vm.hpt.vcpus_running:
            raise VMImageError(f"{vm.path}: the VM is stopped (htabtool vm cont {vm.path} first)")

    with transaction(path, check=running) as vm:
        before = vm.hpt.count_valid()
        stats = vm.guest.run(ops=ops, seconds=seconds).as_dict()
        stats["valid_before"] = before
        stats["valid_after"] = vm.hpt.count_valid()
        stats["clock_seconds"] = round(vm.guest.state["clock"], 6)
        return stats


def image_info(path) -> dict:
    """``vm info``: what the image at ``path`` holds, read from its header,
    state and table without mapping it (no numpy, no guest model)."""
    path = os.fspath(path)
    fd = _open_locked(path, writable=False)
    try:
        return describe_file(path, fd)
    finally:
        os.close(fd)


def set_running(path, running: bool) -> dict:
    """``vm stop`` / ``vm cont``: the vCPUs' running state, persisted."""
    with transaction(path) as vm:
        if running:
            vm.hpt.cont()
        else:
            vm.hpt.stop()
        return {"path": vm.path, "vcpus": "running" if running else "stopped", "mmu_ready": vm.hpt.mmu_ready}


__all__ = [
    "VMImage",
    "open_vm",
    "transaction",
    "create_image",
    "run_image",
    "image_info",
    "set_running",
    "parse_size",
    "format_size",
    "table_counts",
    "MAGIC",
    "FORMAT_VERSION",
]
