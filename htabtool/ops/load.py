"""``load``: replay a (checked) snapshot into a target: a simulated VM
image, the real kernel's htab fd, a raw record stream, QEMU section
payloads, or a copy of a QEMU migration stream with its htab replaced.

:func:`load` takes a target description (:class:`VMTarget`,
:class:`KVMTarget`, :class:`RawTarget`, :class:`QemuSectionTarget`,
:class:`QemuSpliceTarget`), checks the whole snapshot first (a damaged one
leaves the target as it was) and returns a
:class:`htabtool.ops.results.LoadReport`.  The VM image is changed all or
nothing (:func:`load_vm`).

Imports: the record layer, the final state, the sources' file edges, the
result types; the VM image, the kernel and QEMU's writer when their target
is asked for.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from htabtool.errors import HtabError, StreamError, VMImageError
from htabtool.ops.results import (
    KVMLoad,
    LoadReport,
    LoadTarget,
    QemuSectionLoad,
    QemuSpliceLoad,
    RawLoad,
    VMLoad,
)
from htabtool.ops.state import batches, final_state
from htabtool.ops.verify import verify as verify_snapshot
from htabtool.records import HEADER_SIZE, HPTE_SIZE, RecordDecoder, RecordHeader
from htabtool.records.table import Overrides, TableDiffer, final_windows
from htabtool.sources import SnapshotFileInput, SnapshotInput, named_errors, open_input, open_output

# -- the targets ----------------------------------------------------------------------


@dataclass(frozen=True)
class VMTarget:
    """A simulated VM image, through its htab write fd; ``create`` makes it
    (of the snapshot's size) when it does not exist, ``stop`` stops a
    running VM first, ``verify`` reads it back and compares."""

    image: str
    create: bool = False
    stop: bool = False
    verify: bool = False
    buffer_size: int = 65536


@dataclass(frozen=True)
class KVMTarget:
    """The real KVM guest of process ``pid`` (``PID`` or ``PID:FD``), or
    this process's VM fd ``fd``."""

    pid: str | None = None
    fd: int | None = None


@dataclass(frozen=True)
class RawTarget:
    """The exact kernel records at ``output`` (``-``: standard output),
    headers turned to ``byte_order`` if given."""

    output: str
    byte_order: str | None = None


@dataclass(frozen=True)
class QemuSectionTarget:
    """QEMU ``spapr/htab`` section payloads at ``output``."""

    output: str


@dataclass(frozen=True)
class QemuSpliceTarget:
    """A copy of the QEMU migration stream ``migration`` at ``output``, its
    htab replaced by the snapshot's (one part per pass)."""

    migration: str
    output: str


Target = VMTarget | KVMTarget | RawTarget | QemuSectionTarget | QemuSpliceTarget


def load(snap: SnapshotFileInput, target: Target, *, progress: Callable[[int], None] | None = None,
         checked: bool = False) -> LoadReport:
    """Check the whole snapshot (:func:`check_sound`; ``checked``: the caller
    has), then replay it into ``target``; nothing is written from a
    snapshot that is not sound.  ``progress`` is called with the bytes of
    each piece written (a VM)."""
    if not checked:
        check_sound(snap)
    result: LoadTarget
    if isinstance(target, KVMTarget):
        result = load_kvm(snap, target.pid, target.fd)
    elif isinstance(target, VMTarget):
        result = load_vm(snap, target.image, create=target.create, stop=target.stop, verify=target.verify,
                         buffer_size=target.buffer_size, progress=progress)
    elif isinstance(target, RawTarget):
        result = load_raw(snap, target.output, target.byte_order)
    elif isinstance(target, QemuSectionTarget):
        result = load_qemu_section(snap, target.output)
    else:
        result = load_qemu_splice(snap, target.migration, target.output)
    return LoadReport(snap.name, result)


def check_sound(snap: SnapshotFileInput) -> None:
    """The whole snapshot checked (:func:`htabtool.ops.verify`) before anything
    is written from it: an HtabError naming its first problem if it is not sound."""
    checked = verify_snapshot(snap)
    if not checked.sound:
        more = len(checked.problems) - 1
        raise HtabError(f"{snap.name} is not sound, nothing was written: {checked.problems[0]}"
                        + (f" (and {more} more; see htabtool verify)" if more else ""))


def load_raw(snap: SnapshotInput, output: str, byte_order: str | None = None) -> RawLoad:
    """The snapshot's records (all passes) at ``output``, headers turned to ``byte_order``."""
    with open_output(output) as out:
        written = records_out(snap, out.write, byte_order=byte_order)
    return RawLoad(output, written)


def load_qemu_section(snap: SnapshotFileInput, output: str) -> QemuSectionLoad:
    """QEMU's ``spapr/htab`` section payloads of the snapshot at ``output``."""
    from htabtool import qemu

    with open_output(output) as out:
        stats = qemu.write_section(snap.pieces(), snap.header.order, out, byte_order=snap.byte_order)
    return QemuSectionLoad(output, stats.parts, stats.records, stats.nbytes)


def load_qemu_splice(snap: SnapshotFileInput, migration: str, output: str) -> QemuSpliceLoad:
    """A copy of the migration stream ``migration`` at ``output`` with the
    snapshot's htab in place of its own, one part per pass."""
    from htabtool import qemu

    with named_errors("<stdin>" if migration == "-" else migration), open_input(migration) as mig, \
            open_output(output) as out:
        stats = qemu.splice(mig, snap.header.order, snap.pieces(), out, byte_order=snap.byte_order,
                            passes=sum(1 for p in snap.trailer().passes if p.chunks > 0))
    return QemuSpliceLoad(migration, output, stats.htab.records, stats.htab.parts, stats.dropped_parts,
                          stats.output_bytes)


# -- records out ----------------------------------------------------------------------


def records_out(snap: SnapshotInput, write: Callable[[bytes], object], byte_order: str | None = None) -> int:
    """Every chunk's records in file order (all passes), headers turned to
    ``byte_order`` if given; returns the bytes written.  The chunks are the
    stream as it was read (the container checked them); they are decoded only
    to turn their headers."""
    total = 0
    pieces: Iterable[tuple[int, bytes]]
    if byte_order is not None and byte_order != snap.byte_order:
        pieces = ((n, b.to_bytes(byte_order)) for n, b in batches(snap))
    else:
        pieces = snap.pieces()
    for _, data in pieces:
        write(data)
        total += len(data)
    return total


# -- through an htab write fd --------------------------------------------------------


def write_records(fd, pieces: Iterable[tuple[int, bytes]], buffer_size: int = 1 << 20) -> tuple[int, int]:
    """Write whole records through an htab write fd, one record per write():
    the kernel parses only the first record of a write() right (see
    :meth:`htabtool.sim.htabfd.HtabFd.write`).  ``fd.write_records(data)``
    makes those writes for the records of ``data`` (at most ``buffer_size``
    bytes of records are handed over at a time; a record longer is handed
    over whole) and returns the bytes consumed; ``fd.write_calls`` counts
    the write() calls.  Returns (bytes, writes)."""
    total = 0
    calls = fd.write_calls
    order = "little" if fd.byte_order == "little" else "big"
    for _, data in pieces:
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            n = fd.write_records(view[pos : pos + buffer_size])
            if n == 0:
                head = RecordHeader.unpack(view, order, pos)
                n = fd.write_records(view[pos : pos + HEADER_SIZE + HPTE_SIZE * head.n_valid])
                if n == 0:
                    raise StreamError(f"a record at stream offset {total + pos:#x} was not consumed")
            pos += n
        total += len(view)
    return total, fd.write_calls - calls


def load_kvm(snap: SnapshotFileInput, pid: str | None = None, fd: int | None = None) -> KVMLoad:
    """Replay every chunk of a (checked) snapshot into a real KVM guest (the
    VM fd of process ``pid``, or this process's ``fd``), one record per
    write() of the kernel's htab fd (:func:`htabtool.kvm.load`).  The guest
    must be stopped; its HPT must be the snapshot's size."""
    from htabtool import kvm

    with kvm.open_vm(pid, fd, guard=False) as vm:
        report = kvm.load(snap, vm)
    return KVMLoad(report["pid"], report["vm_fd"], report["records"], report["bytes"], report["writes"])


def load_vm(snap: SnapshotFileInput, image: str, *, create: bool = False, stop: bool = False, verify: bool = False,
            buffer_size: int = 65536, progress: Callable[[int], None] | None = None) -> VMLoad:
    """Replay every chunk of a (checked) snapshot into a VM image through its
    htab write fd.  All or nothing: an existing image is changed in a copy
    renamed over it at the end (:func:`htabtool.sim.vmimage.transaction`); a new
    one (``create``) is made under a temporary name and linked into place
    when the load is done, so a failed or killed load leaves no image.
    ``progress`` is called with the bytes of each piece written."""
    from htabtool.atomic import dangling_link
    from htabtool.sim.vmimage import transaction

    link = dangling_link(image)
    if link:
        raise VMImageError(f"{link}; not followed (remove it, or point it at a VM image)")
    if os.path.lexists(image):
        def check(vm):
            if vm.hpt.npte != snap.entries:
                raise VMImageError(
                    f"{image}: its table has {vm.hpt.npte:,} entries (order {vm.header['order']}), "
                    f"the snapshot's {snap.entries:,} (order {snap.header.order})"
                )
            if vm.hpt.vcpus_running and not stop:
                raise VMImageError(
                    f"{image}: the VM is running and the kernel refuses htab writes while vCPUs run (EBUSY); "
                    f"stop it first (htabtool vm stop, or load --stop)"
                )

        with transaction(image, check=check) as vm:
            return _load_into(vm, snap, image, stop, verify, buffer_size, created=False, progress=progress)
    if not create:
        raise VMImageError(f"{image}: no such VM image (--create makes one of the snapshot's size)")
    return _create_and_load(snap, image, verify, buffer_size, progress)


def _create_and_load(snap, image, verify, buffer_size, progress=None) -> VMLoad:
    """``load --vm IMAGE --create``: a new image made under a temporary name
    and linked into place only when the whole snapshot is in it (an image
    that appeared meanwhile is not replaced)."""
    from htabtool.atomic import staged, uninterrupted
    from htabtool.errors import VMImageError
    from htabtool.sim.vmimage import VMImage

    try:
        with staged(image, replace=False) as tmp:
            vm = VMImage.create(tmp, order=snap.header.order, profile="empty", final=False)
            try:
                report = _load_into(vm, snap, image, False, verify, buffer_size, created=True, progress=progress)
                vm.close()
            finally:
                with uninterrupted():
                    vm.close(save=False)
    except FileExistsError:
        raise VMImageError(f"{image}: appeared while the snapshot was loaded; nothing was replaced") from None
    return report


def _load_into(vm, snap, image, stop, verify, buffer_size, *, created, progress=None) -> VMLoad:
    from htabtool.sim.papr import KVM_GET_HTAB_WRITE

    if stop:
        vm.hpt.stop()
    with vm.hpt.htab_fd(KVM_GET_HTAB_WRITE, byte_order=snap.byte_order) as fd:
        try:
            nbytes, writes = write_records(fd, _counted(snap.pieces(), progress), buffer_size)
        except OSError as exc:
            raise VMImageError(f"{image}: the htab fd refused a write ({exc.strerror or exc}); "
                               f"the image is left as it was") from None
    report = VMLoad(image, snap.trailer().records, nbytes, writes, buffer_size, created, stop)
    if verify:
        report.differences = _compare_vm(vm, snap)
        report.verified = report.differences == 0
    return report


def _counted(pieces, progress):
    """The pieces, each reported to ``progress`` (its bytes) as it passes."""
    for number, data in pieces:
        yield number, data
        if progress is not None:
            progress(len(data))


def _compare_vm(vm, snap) -> int:
    """Read the VM's table through a read fd (one first pass) and count the
    entries that differ from the snapshot's final table."""
    def vm_batches():
        dec = RecordDecoder(snap.byte_order, n_entries=snap.entries)
        with vm.hpt.htab_fd(0, byte_order=snap.byte_order) as fd:
            while True:
                dec.receive_data(fd.read(1 << 20))
                yield dec.next_batch()
                if fd.last_read.wrapped:
                    break
        dec.close()

    differ = TableDiffer()
    for (lo, want), (_, got) in zip(final_state(snap), final_windows(vm_batches(), Overrides().finish(), snap.entries)):
        differ.add(lo, want, got)
    r = differ.result
    return r.added + r.removed + r.changed + r.rc_only
