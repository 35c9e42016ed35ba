"""The final state of a snapshot: its chunks decoded pass by pass, and the
table all its passes add up to, in windows (what stat, diff, show, map and
load's --verify read).

Imports: the record layer and the table states; the snapshot comes through
:class:`htabtool.sources.SnapshotInput`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np

from htabtool.records import RecordBatch
from htabtool.records.table import DEFAULT_WINDOW, Overrides, final_windows
from htabtool.sources import SnapshotInput, named_errors


def batches(snap: SnapshotInput, passes: Callable[[int], bool] | None = None) -> Iterator[tuple[int, RecordBatch]]:
    """(pass number, RecordBatch) over the chunks of a snapshot, checked
    against the table as the kernel's write side would; an error names the
    snapshot (its ``name``)."""
    with named_errors(snap.name) if snap.name else contextlib.nullcontext():
        yield from snap.batches(passes)


def final_state(snap: SnapshotInput, window: int = DEFAULT_WINDOW,
                extent: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """The table state all passes add up to, as (lo, slice) windows (of
    entries 0..extent, by default the whole table)."""
    first_number = first_pass_number(snap)
    ov = Overrides()
    for _, batch in batches(snap, lambda p: p != first_number):
        ov.add(batch)
    ov.finish()
    first = (batch for _, batch in batches(snap, lambda p: p == first_number))
    return final_windows(first, ov, snap.entries if extent is None else extent, window)


def pass_numbers(snap: SnapshotInput) -> list[int]:
    """The snapshot's pass numbers, ascending (htabtool numbers from 1; the
    format allows any growing numbers, 0 included): the trailer's when it is
    known, else the chunks'."""
    trailer = snap.trailer()
    if trailer is not None:
        return sorted({p.pass_number for p in trailer.passes})
    return sorted({number for number, _ in snap.pieces()})


def first_pass_number(snap: SnapshotInput) -> int:
    """The number of the snapshot's first pass: the lowest (1 when there
    is none); without a trailer, the first chunk's."""
    trailer = snap.trailer()
    if trailer is not None:
        return min((p.pass_number for p in trailer.passes), default=1)
    for number, _ in snap.pieces():
        return number
    return 1
