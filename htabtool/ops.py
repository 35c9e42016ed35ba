"""The operations behind the commands, as library calls.

Strategy: each command of the CLI is one call here (``dump``, ``load_raw``,
``stat``, ``diff``, ``verify``), over the layers below: sources and sinks
give and take ``(pass_number, records)`` pieces, the container stores them,
the codec decodes them, :mod:`htabtool.table` adds them up.  Nothing here
prints; results are plain dataclasses with ``to_dict()`` for ``--json``.

A snapshot is read through :class:`SnapshotInput`: its header and a way to
stream its chunks as many times as needed (a pipe is spooled to a
temporary file first by the caller), so that the passes after the first can
be gathered before the first pass streams past (flat memory).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np

from htabtool.errors import StreamError, UsageError
from htabtool.records import RecordDecoder, StaticTable, iter_reads, pass_starts
from htabtool.sources import named_errors
from htabtool.table import (
    DEFAULT_WINDOW,
    Overrides,
    RecordStats,
    TableDiff,
    TableDiffer,
    TableStats,
    field_changes,
    final_windows,
)


class SnapshotInput(Protocol):
    """A snapshot to read: its header and its chunks, streamable again."""

    @property
    def byte_order(self) -> str: ...

    @property
    def entries(self) -> int: ...

    def pieces(self, passes: Callable[[int], bool] | None = None) -> Iterator[tuple[int, bytes]]:
        """(pass number, whole records) of every chunk whose pass ``passes``
        accepts (all when None), in file order."""


# -- the final state -------------------------------------------------------------


def batches(snap: SnapshotInput, passes=None) -> Iterator[tuple[int, object]]:
    """(pass number, RecordBatch) over the chunks of a snapshot, checked
    against the table as the kernel's write side would; an error names the
    snapshot (its ``name``)."""
    name = getattr(snap, "name", None)
    with named_errors(name) if name else contextlib.nullcontext():
        yield from _batches(snap, passes)


def _batches(snap: SnapshotInput, passes=None) -> Iterator[tuple[int, object]]:
    dec_by_pass: dict[int, RecordDecoder] = {}
    for number, data in snap.pieces(passes):
        dec = dec_by_pass.get(number)
        if dec is None:
            dec = dec_by_pass[number] = RecordDecoder(snap.byte_order, n_entries=snap.entries)
        dec.receive_data(data)
        yield number, dec.next_batch()
    for dec in dec_by_pass.values():
        dec.close()


def final_state(snap: SnapshotInput, window: int = DEFAULT_WINDOW,
                extent: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """The table state all passes add up to, as (lo, slice) windows (of
    entries 0..extent, by default the whole table)."""
    first_number = _first_pass_number(snap)
    ov = Overrides()
    for _, batch in batches(snap, lambda p: p != first_number):
        ov.add(batch)
    ov.finish()
    first = (batch for _, batch in batches(snap, lambda p: p == first_number))
    return final_windows(first, ov, snap.entries if extent is None else extent, window)


def _first_pass_number(snap) -> int:
    """The number of the snapshot's first pass: the lowest (htabtool
    numbers from 1; the format allows any growing numbers, 0 included)."""
    if hasattr(snap, "trailer"):
        passes = snap.trailer().passes
        return min((p.pass_number for p in passes), default=1)
    for number, _ in snap.pieces():
        return number
    return 1


# -- stat ------------------------------------------------------------------------


@dataclass
class Stat:
    table: TableStats
    records: RecordStats

    def to_dict(self) -> dict:
        return {"table": self.table.to_dict(), "records": self.records.to_dict()}


def stat(snap: SnapshotInput, window: int = DEFAULT_WINDOW, progress: Callable[[int], None] | None = None) -> Stat:
    """Statistics of the final table and of the records that built it
    (``progress`` is called with the entries of each window counted)."""
    rs = RecordStats()
    ts = TableStats.empty()
    trailer = snap.trailer() if hasattr(snap, "trailer") else None
    extent = _extent(snap, trailer, window)
    if trailer is not None and len({p.pass_number for p in trailer.passes}) <= 1:
        # one pass: the records and the table in the same single read
        def counted():
            for number, batch in batches(snap):
                rs.add(batch, number)
                yield _within(batch, extent, snap)

        windows = final_windows(counted(), Overrides().finish(), extent, window)
    else:
        for number, batch in batches(snap):
            rs.add(batch, number)
            _within(batch, extent, snap)
        windows = final_state(snap, window, extent)
    for _, part in windows:
        ts.add(part)
        if progress is not None:
            progress(len(part))
    _add_empty(ts, snap.entries - extent)
    if progress is not None:
        progress(snap.entries - extent)
    return Stat(ts, rs)


def _extent(snap, trailer, window: int) -> int:
    """How much of the table the records reach, in whole windows: the rest
    is empty, and counted without being walked (an order-46 table is 2**42
    entries)."""
    if trailer is None:
        return snap.entries
    covered = max((c.end_index for c in trailer.chunks), default=0)
    return min(snap.entries, max(8, -(-covered // window) * window))


def _within(batch, extent: int, snap):
    """A batch whose records end within ``extent`` (the chunk descriptors'
    end indexes said so)."""
    if len(batch) and int(batch.end.max()) > extent:
        from htabtool.errors import ContainerError

        raise ContainerError(f"records reach entry {int(batch.end.max())}, past the end indexes their chunk "
                             f"descriptors state")
    return batch


def _add_empty(ts: TableStats, n: int) -> None:
    """Count ``n`` empty entries (whole empty PTEGs) into ``ts``."""
    ts.entries += n
    ts.pteg_fill[0] += n // 8


# -- diff -------------------------------------------------------------------------


@dataclass
class EntryChange:
    index: int
    kind: str  # added, removed, changed, rc
    a: tuple[int, int]
    b: tuple[int, int]
    fields: dict

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "kind": self.kind,
            "a": {"v": f"0x{self.a[0]:016x}", "r": f"0x{self.a[1]:016x}"},
            "b": {"v": f"0x{self.b[0]:016x}", "r": f"0x{self.b[1]:016x}"},
            "fields": {k: [x, y] for k, (x, y) in self.fields.items()},
        }


@dataclass
class Diff:
    summary: TableDiff
    first: list[EntryChange] = field(default_factory=list)
    delta_records: int = 0
    delta_path: str | None = None

    @property
    def different(self) -> bool:
        return self.summary.different

    @property
    def shown_of(self) -> int:
        """How many differences ``first`` could have shown (its limit cuts)."""
        s = self.summary
        return s.added + s.removed + s.changed + (0 if s.ignore_rc else s.rc_only)

    def to_dict(self) -> dict:
        d = self.summary.to_dict()
        d["first_differences"] = [c.to_dict() for c in self.first]
        d["delta"] = {"path": self.delta_path, "records": self.delta_records} if self.delta_path else None
        return d


def diff(
    a: SnapshotInput,
    b: SnapshotInput,
    *,
    ignore_rc: bool = False,
    ignore_software: bool = True,
    limit: int = 10,
    delta: Callable[[int, bytes], None] | None = None,
    delta_read_size: int = 1 << 16,
    window: int = DEFAULT_WINDOW,
    progress: Callable[[int], None] | None = None,
) -> Diff:
    """Compare the final tables of two snapshots of the same size.

    With ``delta``, it is called with (1, records) pieces that turn A's
    table into B's when written after it: B's entries where they differ,
    invalid runs where B has none (headers in B's byte order).  The first
    differences are decoded: the fields that changed, or all of an added
    (removed) entry's as (None, B's) ((A's, None)).  ``progress`` is
    called with the entries of each window compared."""
    if a.entries != b.entries:
        raise UsageError(f"the snapshots' tables differ in size: {a.entries} and {b.entries} entries")
    differ = TableDiffer(ignore_rc=ignore_rc, ignore_software=ignore_software, limit=limit)
    first: list[EntryChange] = []
    delta_records = 0
    for (lo, pa), (_, pb) in zip(final_state(a, window), final_state(b, window)):
        seen = len(differ.result.first)
        mask = differ.add(lo, pa, pb)
        for index, kind in differ.result.first[seen:]:
            j = index - lo
            (va, ra), (vb, rb) = (tuple(int(x) for x in pa[j]), tuple(int(x) for x in pb[j]))
            first.append(EntryChange(index, kind, (va, ra), (vb, rb), _decoded(kind, va, ra, vb, rb)))
        if delta is not None and mask.any():
            src = _WindowSource(pb, mask, lo, b.entries)
            for res in iter_reads(src, delta_read_size, b.byte_order, start=lo, first_pass=False):
                delta_records += len(res.index)
                delta(1, res.data)
        if progress is not None:
            progress(len(pa))
    return Diff(differ.result, first, delta_records)


def _decoded(kind: str, va: int, ra: int, vb: int, rb: int) -> dict:
    """{field: (A's, B's)}: what changed, or the whole entry that came
    (None, B's) or went (A's, None)."""
    if kind in ("changed", "rc"):
        return field_changes(va, ra, vb, rb)
    from htabtool.hpte import HPTE

    v, r = (vb, rb) if kind == "added" else (va, ra)
    fields = {k: x for k, x in HPTE(v, r).fields().items() if k not in ("v", "r")}
    return {k: ((None, x) if kind == "added" else (x, None)) for k, x in fields.items()}


def diff_with_delta(a, b, delta_path: str, *, level: int | None = None, **kw) -> Diff:
    """diff, and a snapshot at ``delta_path`` (``-``: standard output) of the
    records that turn A's table into B's: loading A then the delta gives B."""
    from htabtool import container
    from htabtool.sources import open_output

    header = container.SnapshotHeader(
        byte_order=b.byte_order,
        order=b.header.order,
        source={"kind": "delta", "from": getattr(a, "name", None), "to": getattr(b, "name", None)},
    )
    opts = {} if level is None else {"level": level}
    with open_output(delta_path) as out:
        with container.SnapshotWriter(out, header, **opts) as writer:
            result = diff(a, b, delta=lambda number, data: writer.write_records(data, number), **kw)
    result.delta_path = delta_path
    return result


class _WindowSource:
    """One window of a table as a TableSource over the whole index space:
    entries outside the window are clean."""

    def __init__(self, part: np.ndarray, changed: np.ndarray, lo: int, n_entries: int):
        self._inner = StaticTable(part, changed=changed)
        self.lo = lo
        self.n_entries = lo + len(part)  # a pass over the window ends at its end

    def kinds(self, lo, hi, first_pass):
        return self._inner.kinds(lo - self.lo, hi - self.lo, first_pass)

    def words(self, lo, hi, rows=None):
        return self._inner.words(lo - self.lo, hi - self.lo, rows)


# -- verify ------------------------------------------------------------------------


@dataclass
class Problem:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"

    def to_dict(self) -> dict:
        return {"where": self.where, "what": self.what}


def verify_records(snap: SnapshotInput) -> list[Problem]:
    """The meaning of a snapshot's records: every record inside the table,
    valid bits on valid runs, each pass ascending; every problem listed."""
    checker = RecordChecker(snap.byte_order, snap.entries)
    for number, data in snap.pieces():
        checker.add(number, data)
    return checker.finish()


class RecordChecker:
    """verify's record checks, fed chunk by chunk."""

    def __init__(self, byte_order: str, entries: int, limit: int = 100):
        self.byte_order = byte_order
        self.entries = entries
        self.limit = limit
        self.problems: list[Problem] = []
        self.records = 0
        self._decoders: dict[int, RecordDecoder] = {}
        self._ends: dict[int, int] = {}

    def _note(self, where: str, what: str) -> None:
        if len(self.problems) < self.limit:
            self.problems.append(Problem(where, what))

    def add(self, number: int, data: bytes) -> None:
        dec = self._decoders.setdefault(number, RecordDecoder(self.byte_order, scan_bound=self.entries))
        dec.receive_data(data)
        try:
            batch = dec.next_batch()
        except StreamError as exc:
            self._note(f"pass {number}", str(exc))
            return
        if not len(batch):
            return
        self.records += len(batch)
        try:
            batch.check(self.entries)
        except StreamError as exc:
            self._note(f"pass {number}", str(exc))
        previous_end = self._ends.get(number, 0)
        for k in pass_starts(batch, previous_end)[:10].tolist():
            self._note(
                f"pass {number}",
                f"record {batch.first_record + k} at offset {int(batch.offset[k]):#x}: index "
                f"{int(batch.index[k])} is below the end {int(batch.end[k - 1]) if k else previous_end} "
                "of the record before it",
            )
        self._ends[number] = int(batch.end[-1])

    def finish(self) -> list[Problem]:
        for number, dec in self._decoders.items():
            try:
                dec.close()
            except StreamError as exc:
                self._note(f"pass {number}", str(exc))
        return self.problems


@dataclass
class Verification:
    problems: list[Problem]
    chunks: int = 0
    records: int = 0

    @property
    def sound(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "schema": "htabtool-verify/1",
            "sound": self.sound,
            "chunks": self.chunks,
            "records": self.records,
            "problems": [p.to_dict() for p in self.problems],
        }


def verify(snap, progress: Callable[[int], None] | None = None) -> Verification:
    """Integrity and meaning of a snapshot file in one streaming read: the
    container's checks (checksums, sizes, numbering, trailer; the first fault
    stops the read) and the records' (inside the table, valid bits, each pass
    ascending; all listed).  ``progress`` is called with each chunk's
    compressed bytes."""
    from htabtool.errors import ContainerError

    checker = RecordChecker(snap.byte_order, snap.entries)
    chunks = 0
    try:
        for chunk in snap.reader(check_records=True).chunks():
            chunks += 1
            checker.add(chunk.pass_number, chunk.data)
            if progress is not None:
                progress(chunk.info.compressed_size)
    except ContainerError as exc:
        checker._note("container", str(exc))
    problems = checker.finish()
    return Verification(problems, chunks, checker.records)


# -- writing records out -------------------------------------------------------------


def records_out(snap: SnapshotInput, write: Callable[[bytes], object], byte_order: str | None = None) -> int:
    """Every chunk's records in file order (all passes), headers turned to
    ``byte_order`` if given; returns the bytes written.  The chunks are the
    stream as it was read (the container checked them); they are decoded only
    to turn their headers."""
    turn = byte_order not in (None, snap.byte_order)
    total = 0
    pieces = ((n, b.to_bytes(byte_order)) for n, b in batches(snap)) if turn else snap.pieces()
    for _, data in pieces:
        write(data)
        total += len(data)
    return total


# -- dump ---------------------------------------------------------------------------


@dataclass
class DumpSummary:
    output: str | None = None
    passes: int = 0
    chunks: int = 0
    records: int = 0
    valid: int = 0
    invalid: int = 0
    raw_bytes: int = 0
    file_bytes: int = 0
    seconds: float = 0.0
    per_pass: list = field(default_factory=list)
    final_valid: int | None = None  # valid entries of the final table (None: not known without a re-read)
    converged: bool | None = None  # --until-dirty: a pass came down to it (None: not asked)

    @property
    def last_pass_changed(self) -> int:
        """Entries the last pass reported (valid + invalid): what changed."""
        last = self.per_pass[-1] if self.per_pass else {}
        return last.get("valid", 0) + last.get("invalid", 0)

    def to_dict(self) -> dict:
        return {
            "schema": "htabtool-dump/1",
            "output": self.output,
            "passes": self.passes,
            "chunks": self.chunks,
            "records": self.records,
            "valid": self.valid,
            "invalid": self.invalid,
            "final_valid": self.final_valid,
            "last_pass_changed": self.last_pass_changed,
            "converged": self.converged,
            "raw_bytes": self.raw_bytes,
            "file_bytes": self.file_bytes,
            "seconds": round(self.seconds, 4),
            "per_pass": self.per_pass,
        }


def dump(source, out, *, level: int | None = None, threads: int | None = None, chunk_size: int | None = None,
         progress: Callable[[int], None] | None = None, output: str | None = None) -> DumpSummary:
    """Write what ``source`` yields into a snapshot on the binary file ``out``.

    ``source``: ``.info`` (a sources.StreamInfo) and ``.pieces()`` yielding
    (pass number, whole records), or ``.stated_pieces()`` yielding (pass
    number, whole records, their statistics or None) when the source knows
    them.  ``progress`` is called with the bytes of records of each piece.
    The summary comes from the trailer written."""
    from htabtool import container

    info = source.info
    header = container.SnapshotHeader(
        byte_order=info.byte_order,
        order=info.order,
        bolted_only=info.bolted_only,
        start_index=info.start_index,
        source=info.source,
    )
    kw = {}
    if level is not None:
        kw["level"] = level
    if threads is not None:
        kw["threads"] = threads
    if chunk_size is not None:
        kw["chunk_size"] = chunk_size
    t0 = time.perf_counter()
    with container.SnapshotWriter(out, header, **kw) as writer:
        stated = getattr(source, "stated_pieces", None)
        pieces = stated() if stated is not None else ((number, data, None) for number, data in source.pieces())
        current = None
        for number, data, stats in pieces:
            writer.write_records(data, number, stats)
            if progress is not None:
                if number != current and hasattr(progress, "label"):  # the bar's pass counter
                    current = number
                    progress.label(f"dump: pass {number}")
                    if number > 1:
                        progress.total(None)  # an incremental pass: its size is not known
                progress(len(data))
        for tag, body in getattr(source, "snapshot_notes", list)():
            writer.add_optional(tag, body)  # what a source keeps apart from the passes (QEMU's parts)
    trailer = writer.trailer
    return DumpSummary(
        output=output,
        passes=len(trailer.passes),
        chunks=len(trailer.chunks),
        records=trailer.records,
        valid=trailer.valid,
        invalid=trailer.invalid,
        raw_bytes=trailer.raw_size,
        file_bytes=trailer.file_size,
        seconds=time.perf_counter() - t0,
        per_pass=[p.to_dict() for p in trailer.passes],
        final_valid=trailer.valid if len(trailer.passes) <= 1 else getattr(source, "final_valid", None),
        converged=getattr(source, "converged", None),
    )


# -- load into a simulated VM ---------------------------------------------------------


def write_records(fd, pieces: Iterable[tuple[int, bytes]], buffer_size: int = 1 << 20) -> tuple[int, int]:
    """Write whole records through an htab write fd, one record per write():
    the kernel parses only the first record of a write() right (see
    :meth:`htabtool.sim.htabfd.HtabFd.write`).  ``fd.write_records(data)``
    makes those writes for the records of ``data`` (at most ``buffer_size``
    bytes of records are handed over at a time; a record longer is handed
    over whole) and returns the bytes consumed; ``fd.write_calls`` counts
    the write() calls.  Returns (bytes, writes)."""
    from htabtool.records import HEADER_SIZE, HPTE_SIZE, RecordHeader

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


def load_kvm(snap, pid=None, fd: int | None = None) -> dict:
    """Replay every chunk of a (checked) snapshot into a real KVM guest (the
    VM fd of process ``pid``, or this process's ``fd``), one record per
    write() of the kernel's htab fd (:func:`htabtool.kvm.load`).  The guest
    must be stopped; its HPT must be the snapshot's size."""
    from htabtool import kvm

    with kvm.open_vm(pid, fd, guard=False) as vm:
        return kvm.load(snap, vm)


def load_vm(snap, image: str, *, create: bool = False, stop: bool = False, verify: bool = False,
            buffer_size: int = 65536, progress: Callable[[int], None] | None = None) -> dict:
    """Replay every chunk of a (checked) snapshot into a VM image through its
    htab write fd.  All or nothing: an existing image is changed in a copy
    renamed over it at the end (:func:`htabtool.sim.vmimage.transaction`); a new
    one (``create``) is made under a temporary name and linked into place
    when the load is done, so a failed or killed load leaves no image.
    ``progress`` is called with the bytes of each piece written."""
    import os

    from htabtool.errors import VMImageError
    from htabtool.sim.vmimage import transaction

    from htabtool.atomic import dangling_link

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


def _create_and_load(snap, image, verify, buffer_size, progress=None) -> dict:
    import os

    from htabtool.atomic import _fsync_directory, committed, temp_name, uninterrupted
    from htabtool.errors import VMImageError
    from htabtool.sim.vmimage import VMImage

    directory, base = os.path.split(os.path.abspath(image))
    tmp = temp_name(directory, base)
    vm = VMImage.create(tmp, order=snap.header.order, profile="empty", final=False)
    try:
        report = _load_into(vm, snap, image, False, verify, buffer_size, created=True, progress=progress)
        vm.close()
        with uninterrupted():
            try:
                os.link(tmp, image)
            except FileExistsError:
                raise VMImageError(f"{image}: appeared while the snapshot was loaded; nothing was replaced") from None
            committed()
        _fsync_directory(directory)
        return report
    finally:
        with uninterrupted():
            vm.close(save=False)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _load_into(vm, snap, image, stop, verify, buffer_size, *, created, progress=None) -> dict:
    from htabtool.sim.papr import KVM_GET_HTAB_WRITE
    from htabtool.errors import VMImageError

    if stop:
        vm.hpt.stop()
    with vm.hpt.htab_fd(KVM_GET_HTAB_WRITE, byte_order=snap.byte_order) as fd:
        try:
            nbytes, writes = write_records(fd, _counted(snap.pieces(), progress), buffer_size)
        except OSError as exc:
            raise VMImageError(f"{image}: the htab fd refused a write ({exc.strerror or exc}); "
                               f"the image is left as it was") from None
    report = {"target": "vm", "image": image, "records": snap.trailer().records, "bytes": nbytes, "writes": writes,
              "buffer_size": buffer_size, "created": created, "stopped": stop, "verified": None}
    if verify:
        differences = _compare_vm(vm, snap)
        report["verified"] = differences == 0
        report["differences"] = differences
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
    from htabtool.records import RecordDecoder

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


# -- whole reports, for the commands ------------------------------------------------


def stat_report(snap, window: int = DEFAULT_WINDOW, progress: Callable[[int], None] | None = None) -> dict:
    """Everything ``htabtool stat`` shows, as one flat dict (the --json schema
    htabtool-stat/1, documented in htabtool-stat(1))."""
    header = snap.header
    trailer = snap.trailer()
    s = stat(snap, window, progress)
    table = s.table.to_dict()
    recs = s.records.to_dict()
    per_pass = []
    for p in trailer.passes:
        chunks = [c for c in trailer.chunks if c.pass_number == p.pass_number]
        per_pass.append(
            {
                "pass": p.pass_number,
                "chunks": p.chunks,
                "records": p.records,
                "valid": p.valid,
                "invalid": p.invalid,
                "raw_bytes": p.raw_size,
                "compressed_bytes": sum(c.compressed_size for c in chunks),
            }
        )
    compressed = trailer.compressed_size
    qemu_parts = _qemu_parts(snap, trailer, per_pass)
    return {
        "schema": "htabtool-stat/1",
        "file": getattr(snap, "name", None),
        "format_version": header.format_version,
        "byte_order": header.byte_order,
        "order": header.order,
        "entries": header.entries,
        "bolted_only": header.bolted_only,
        "start_index": header.start_index,
        "source": header.source,
        "created": header.created,
        "tool_version": header.tool_version,
        **{k: table[k] for k in ("valid", "invalid", "bolted", "secondary", "referenced", "changed", "vrma", "hvlock")},
        "page_sizes": table["page_sizes"],
        "segment_sizes": table["segment_sizes"],
        "pteg_fill": table["pteg_fill"],
        "records": recs["records"],
        "mean_n_valid": recs["mean_n_valid"],
        "mean_n_invalid": recs["mean_n_invalid"],
        "n_valid_distribution": recs["n_valid_distribution"],
        "n_invalid_distribution": recs["n_invalid_distribution"],
        "passes": len(trailer.passes),
        "per_pass": per_pass,
        "qemu_parts": qemu_parts,
        "chunks": len(trailer.chunks),
        "raw_bytes": trailer.raw_size,
        "compressed_bytes": compressed,
        "file_bytes": trailer.file_size,
        "ratio": round(trailer.raw_size / trailer.file_size, 3) if trailer.file_size else None,
    }


def _qemu_parts(snap, trailer, per_pass: list) -> list | None:
    """QEMU's htab parts of a snapshot dumped from a QEMU stream, each with
    the passes its records feed; every per-pass entry gains the parts it
    spans.  None when the snapshot does not list them (not from QEMU)."""
    from htabtool import qemu

    read = getattr(snap, "optional_frames", None)
    bodies = read(qemu.PARTS_TAG) if read is not None else []
    if not bodies:
        return None
    parts = qemu.parts_from_frames(bodies)
    out = [{**p.to_dict(), "passes": p.passes(trailer.passes)} for p in parts]
    for entry in per_pass:
        entry["qemu_parts"] = [p["part"] for p in out if entry["pass"] in p["passes"]]
    return out


# -- migrate (htabtool.migrate: the simulation; re-exported as an operation) ------

from htabtool.migrate import MigrationResult, migrate  # noqa: E402,F401

# -- show and map: htabtool.inspect (imported last: it calls back into this module) --

from htabtool.inspect import Filters, TableMap, show, table_map  # noqa: E402,F401
