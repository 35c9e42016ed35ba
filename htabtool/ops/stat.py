"""``stat``: statistics of a snapshot's final table and of the records that
built it, and the whole report the command shows (htabtool-stat/1).

Imports: the final state (:mod:`htabtool.ops.state`), the table
statistics, the result types (:mod:`htabtool.ops.results`); QEMU's part
list when a snapshot has one.
"""

from __future__ import annotations

from collections.abc import Callable

from htabtool.errors import ContainerError
from htabtool.ops.results import Stat, StatReport
from htabtool.ops.state import batches, final_state
from htabtool.records import RecordBatch
from htabtool.records.table import DEFAULT_WINDOW, PassPart, RecordStats, TableStats
from htabtool.sources import SnapshotFileInput, SnapshotInput


def stat(snap: SnapshotInput, window: int = DEFAULT_WINDOW, progress: Callable[[int], None] | None = None) -> Stat:
    """Statistics of the final table and of the records that built it
    (``progress`` is called with the entries of each window counted)."""
    rs = RecordStats()
    ts = TableStats.empty()
    trailer = snap.trailer()
    extent = _extent(snap, trailer, window)
    if trailer is not None and len({p.pass_number for p in trailer.passes}) <= 1:
        # one pass: the records and the table in the same single read, the
        # table counted from the records' entries (no table built)
        def counted():  # each batch with its part of the table, counted on the reader's threads
            for number, batch, part in snap.worked_batches(PassPart.of):
                rs.add(batch, number)
                yield _within(batch, extent), part

        return Stat(TableStats.of_first_pass(counted(), snap.entries, progress), rs)
    for number, batch in batches(snap):
        rs.add(batch, number)
        _within(batch, extent)
    for _, part in final_state(snap, window, extent):
        ts.add(part)
        if progress is not None:
            progress(len(part))
    _add_empty(ts, snap.entries - extent)
    if progress is not None:
        progress(snap.entries - extent)
    return Stat(ts, rs)


def _extent(snap: SnapshotInput, trailer, window: int) -> int:
    """How much of the table the records reach, in whole windows: the rest
    is empty, and counted without being walked (an order-46 table is 2**42
    entries)."""
    if trailer is None:
        return snap.entries
    covered = max((c.end_index for c in trailer.chunks), default=0)
    return min(snap.entries, max(8, -(-covered // window) * window))


def _within(batch: RecordBatch, extent: int) -> RecordBatch:
    """A batch whose records end within ``extent`` (the chunk descriptors'
    end indexes said so)."""
    if len(batch) and int(batch.end.max()) > extent:
        raise ContainerError(f"records reach entry {int(batch.end.max())}, past the end indexes their chunk "
                             f"descriptors state")
    return batch


def _add_empty(ts: TableStats, n: int) -> None:
    """Count ``n`` empty entries (whole empty PTEGs) into ``ts``."""
    ts.entries += n
    ts.pteg_fill[0] += n // 8


def stat_result(snap: SnapshotFileInput, window: int = DEFAULT_WINDOW,
                progress: Callable[[int], None] | None = None) -> StatReport:
    """Everything ``htabtool stat`` shows (:class:`htabtool.ops.results.StatReport`)."""
    trailer = snap.trailer()
    s = stat(snap, window, progress)
    return StatReport(snap.name, snap.header, trailer, s, qemu_parts(snap))


def stat_report(snap: SnapshotFileInput, window: int = DEFAULT_WINDOW,
                progress: Callable[[int], None] | None = None) -> dict:
    """Everything ``htabtool stat`` shows, as one flat dict (the --json schema
    htabtool-stat/1, documented in htabtool-stat(1))."""
    return stat_result(snap, window, progress).to_dict()


def qemu_parts(snap: SnapshotFileInput) -> list | None:
    """QEMU's htab parts of a snapshot dumped from a QEMU stream, each with
    the passes its records feed.  None when the snapshot does not list them
    (not from QEMU)."""
    from htabtool import qemu

    bodies = snap.optional_frames(qemu.PARTS_TAG)
    if not bodies:
        return None
    passes = snap.trailer().passes
    return [{**p.to_dict(), "passes": p.passes(passes)} for p in qemu.parts_from_frames(bodies)]
