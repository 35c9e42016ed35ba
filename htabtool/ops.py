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

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np

from htabtool.errors import HtabError, StreamError, UsageError
from htabtool.records import RecordDecoder, StaticTable, iter_batches, iter_reads
from htabtool.table import (
    DEFAULT_WINDOW,
    Overrides,
    RecordStats,
    TableDiff,
    TableDiffer,
    TableStats,
    field_changes,
    final_windows,
    native,
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
    against the table as the kernel's write side would."""
    dec_by_pass: dict[int, RecordDecoder] = {}
    for number, data in snap.pieces(passes):
        dec = dec_by_pass.get(number)
        if dec is None:
            dec = dec_by_pass[number] = RecordDecoder(snap.byte_order, n_entries=snap.entries)
        dec.receive_data(data)
        yield number, dec.next_batch()
    for dec in dec_by_pass.values():
        dec.close()


def final_state(snap: SnapshotInput, window: int = DEFAULT_WINDOW) -> Iterator[tuple[int, np.ndarray]]:
    """The table state all passes add up to, as (lo, slice) windows."""
    ov = Overrides()
    for _, batch in batches(snap, lambda p: p > 1):
        ov.add(batch)
    ov.finish()
    first = (batch for _, batch in batches(snap, lambda p: p == 1))
    return final_windows(first, ov, snap.entries, window)


# -- stat ------------------------------------------------------------------------


@dataclass
class Stat:
    table: TableStats
    records: RecordStats

    def to_dict(self) -> dict:
        return {"table": self.table.to_dict(), "records": self.records.to_dict()}


def stat(snap: SnapshotInput, window: int = DEFAULT_WINDOW) -> Stat:
    """Statistics of the final table and of the records that built it."""
    rs = RecordStats()
    for number, batch in batches(snap):
        rs.add(batch, number)
    ts = TableStats.empty()
    for _, part in final_state(snap, window):
        ts.add(part)
    return Stat(ts, rs)


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

    @property
    def different(self) -> bool:
        return self.summary.different

    def to_dict(self) -> dict:
        d = self.summary.to_dict()
        d["first_differences"] = [c.to_dict() for c in self.first]
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
) -> Diff:
    """Compare the final tables of two snapshots of the same size.

    With ``delta``, it is called with (1, records) pieces that turn A's
    table into B's when written after it: B's entries where they differ,
    invalid runs where B has none (headers in B's byte order)."""
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
            first.append(EntryChange(index, kind, (va, ra), (vb, rb), field_changes(va, ra, vb, rb)))
        if delta is not None and mask.any():
            src = _WindowSource(pb, mask, lo, b.entries)
            for res in iter_reads(src, delta_read_size, b.byte_order, start=lo, first_pass=False):
                delta_records += len(res.index)
                delta(1, res.data)
    return Diff(differ.result, first, delta_records)


class _WindowSource:
    """One window of a table as a TableSource over the whole index space:
    entries outside the window are clean."""

    def __init__(self, part: np.ndarray, changed: np.ndarray, lo: int, n_entries: int):
        self._inner = StaticTable(part, changed=changed)
        self.lo = lo
        self.n_entries = lo + len(part)  # a pass over the window ends at its end

    def kinds(self, lo, hi, first_pass):
        return self._inner.kinds(lo - self.lo, hi - self.lo, first_pass)

    def words(self, lo, hi):
        return self._inner.words(lo - self.lo, hi - self.lo)


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
    problems: list[Problem] = []
    decoders: dict[int, RecordDecoder] = {}
    ends: dict[int, int] = {}
    offsets: dict[int, int] = {}
    for number, data in snap.pieces():
        dec = decoders.setdefault(number, RecordDecoder(snap.byte_order))
        dec.receive_data(data)
        try:
            batch = dec.next_batch()
        except StreamError as exc:
            problems.append(Problem(f"pass {number}", str(exc)))
            continue
        if not len(batch):
            continue
        try:
            batch.check(snap.entries)
        except StreamError as exc:
            problems.append(Problem(f"pass {number}", str(exc)))
        before = np.concatenate(([ends.get(number, 0)], batch.end[:-1]))
        back = np.flatnonzero(batch.index < before)
        for k in back[:10]:
            problems.append(
                Problem(
                    f"pass {number}",
                    f"record {batch.first_record + int(k)} at offset {int(batch.offset[k]):#x}: index "
                    f"{int(batch.index[k])} is below the end {int(before[k])} of the record before it",
                )
            )
        ends[number] = int(batch.end[-1])
    for number, dec in decoders.items():
        try:
            dec.close()
        except StreamError as exc:
            problems.append(Problem(f"pass {number}", str(exc)))
    return problems


# -- writing records out -------------------------------------------------------------


def records_out(snap: SnapshotInput, write: Callable[[bytes], object], byte_order: str | None = None) -> int:
    """Every chunk's records in file order (all passes), headers turned to
    ``byte_order`` if given; returns the bytes written."""
    total = 0
    for number, batch in batches(snap):
        data = batch.raw if byte_order in (None, snap.byte_order) else batch.to_bytes(byte_order)
        write(data)
        total += len(data)
    return total


# -- dump ---------------------------------------------------------------------------


@dataclass
class DumpSummary:
    passes: int = 0
    records: int = 0
    valid: int = 0
    invalid: int = 0
    raw_bytes: int = 0
    file_bytes: int = 0
    seconds: float = 0.0
    per_pass: dict = field(default_factory=dict)  # pass -> {"records", "valid", "invalid", "bytes"}

    def to_dict(self) -> dict:
        return {
            "passes": self.passes,
            "records": self.records,
            "valid": self.valid,
            "invalid": self.invalid,
            "raw_bytes": self.raw_bytes,
            "file_bytes": self.file_bytes,
            "seconds": round(self.seconds, 4),
            "per_pass": [dict(pass_=k, **v) for k, v in sorted(self.per_pass.items())],
        }


def count_pieces(pieces: Iterable[tuple[int, bytes]], byte_order: str, summary: DumpSummary) -> Iterator[tuple[int, bytes]]:
    """Pass pieces through, counting records and entries into ``summary``
    (the headers are decoded; the entries are not touched)."""
    from htabtool.records import decode_batch

    t0 = time.perf_counter()
    for number, data in pieces:
        batch, used = decode_batch(data, byte_order)
        if used != len(data):
            raise StreamError(f"a source gave {len(data) - used} bytes that are not whole records")
        p = summary.per_pass.setdefault(number, {"records": 0, "valid": 0, "invalid": 0, "bytes": 0})
        nv, ni = int(batch.n_valid.sum()), int(batch.n_invalid.sum())
        p["records"] += len(batch)
        p["valid"] += nv
        p["invalid"] += ni
        p["bytes"] += len(data)
        summary.records += len(batch)
        summary.valid += nv
        summary.invalid += ni
        summary.raw_bytes += len(data)
        summary.passes = max(summary.passes, number)
        yield number, data
    summary.seconds += time.perf_counter() - t0


__all__ = [
    "SnapshotInput",
    "Stat",
    "Diff",
    "EntryChange",
    "Problem",
    "DumpSummary",
    "batches",
    "final_state",
    "stat",
    "diff",
    "verify_records",
    "records_out",
    "count_pieces",
    "HtabError",
    "native",
]
