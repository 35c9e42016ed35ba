"""``diff``: compare the final tables of two snapshots, decode the first
differences, and write the delta that turns one into the other.

Imports: the final state (:mod:`htabtool.ops.state`), the table
comparison, the record encoder (for the delta), the result types.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from htabtool.errors import UsageError
from htabtool.hpte import HPTE
from htabtool.ops.results import Diff, EntryChange
from htabtool.ops.state import final_state
from htabtool.records import StaticTable, iter_reads
from htabtool.records.table import DEFAULT_WINDOW, TableDiffer, field_changes
from htabtool.sources import Sink, SnapshotFileInput, SnapshotInput, WriteOptions, open_output


def diff(
    a: SnapshotInput,
    b: SnapshotInput,
    *,
    ignore_rc: bool = False,
    ignore_software: bool = True,
    limit: int = 10,
    delta: Sink | None = None,
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
    return Diff(differ.result, first, delta_records, a=a.name, b=b.name)


def _decoded(kind: str, va: int, ra: int, vb: int, rb: int) -> dict:
    """{field: (A's, B's)}: what changed, or the whole entry that came
    (None, B's) or went (A's, None)."""
    if kind in ("changed", "rc"):
        return field_changes(va, ra, vb, rb)
    v, r = (vb, rb) if kind == "added" else (va, ra)
    fields = {k: x for k, x in HPTE(v, r).fields().items() if k not in ("v", "r")}
    return {k: ((None, x) if kind == "added" else (x, None)) for k, x in fields.items()}


def diff_with_delta(a: SnapshotInput, b: SnapshotFileInput, delta_path: str, *,
                    options: WriteOptions | None = None, **kw) -> Diff:
    """diff, and a snapshot at ``delta_path`` (``-``: standard output) of the
    records that turn A's table into B's: loading A then the delta gives B
    (written with ``options``; ``kw``: :func:`diff`'s)."""
    from htabtool import container

    header = container.SnapshotHeader(
        byte_order=b.byte_order,
        order=b.header.order,
        source={"kind": "delta", "from": a.name, "to": b.name},
    )
    with open_output(delta_path) as out:
        with (options or WriteOptions()).writer(out, header) as writer:
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

    def kinds(self, lo: int, hi: int, first_pass: bool):
        return self._inner.kinds(lo - self.lo, hi - self.lo, first_pass)

    def later_rows(self, lo: int, limit: int) -> None:
        return None  # the window's changes are a mask: the encoder scans it

    def words(self, lo: int, hi: int, rows=None):
        return self._inner.words(lo - self.lo, hi - self.lo, rows)

