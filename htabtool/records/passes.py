"""Where passes begin: the one home of the pass rule.

A pass is what the kernel's fd means by one: a sweep of the table from
where it starts to its end.  Within a pass the kernel emits records in
ascending, disjoint order, and every pass after the first starts again at
index 0, so **a new pass starts where a record's index falls below the end
of the record before it** (:func:`begins_pass`, the one test of it;
:func:`wrap_starts` and :func:`pass_starts` find such records in arrays
and batches).  Every reader of records whose passes are not marked (raw
streams, QEMU's parts, a snapshot's first pass, verify, the write side's
runs) finds them with this module.
"""

from __future__ import annotations

import numpy as np

from htabtool.records.batch import RecordBatch


def begins_pass(index, previous_end):
    """The pass rule itself: a record whose first ``index`` is below
    ``previous_end``, the end of the record before it, begins a new pass.

    Takes ints or arrays alike (an array of indexes against the ends before
    each); every test of the rule in htabtool comes through here.  A stream
    cannot show every wrap: a later pass whose first record lies at or
    beyond where the pass before it ended reads as that pass's continuation
    (applied in order they give the same table)."""
    return index < previous_end


def wrap_starts(index: np.ndarray, end: np.ndarray, previous_end: int = 0) -> np.ndarray:
    """Positions of the records that begin a new pass, on plain arrays: the
    records' first indexes and ends, ``previous_end`` the end of the record
    before the first (0: none)."""
    if not len(index):
        return np.zeros(0, dtype=np.int64)
    before = np.concatenate(([previous_end], end[:-1]))
    return np.flatnonzero(begins_pass(index, before))


def pass_starts(batch: RecordBatch, previous_end: int) -> np.ndarray:
    """Positions in ``batch`` of the records that begin a new pass
    (:func:`wrap_starts`); ``previous_end`` is the end of the record before
    the batch's first."""
    return wrap_starts(batch.index, batch.end, previous_end)


def pass_bounds(index: np.ndarray, end: np.ndarray, previous_end: int = 0) -> np.ndarray:
    """``[0, where passes begin..., len(index)]``: between two bounds the
    records are one pass's run (ascending, disjoint), so each run can be
    applied at once.  A bound may repeat (0 when the first record already
    begins a pass): that run is empty."""
    return np.concatenate(([0], wrap_starts(index, end, previous_end), [len(index)])).astype(np.int64)


def end_before(batch: RecordBatch, k: int, previous_end: int) -> int:
    """The end the rule compared record ``k`` of ``batch`` with: the end of
    the record before it (``previous_end`` for the first), for messages."""
    return int(batch.end[k - 1]) if k else previous_end


def split_passes(batch: RecordBatch, pass_number: int, previous_end: int) -> tuple[list[tuple[int, bytes]], int, int]:
    """Cut a batch (with its raw bytes) where passes begin.

    Returns ``[(pass number, records bytes), ...]`` and the pass number and
    previous end to carry into the next batch."""
    pieces, pass_number, previous_end = split_passes_stated(batch, pass_number, previous_end)
    return [(number, data) for number, data, _ in pieces], pass_number, previous_end


def split_passes_stated(batch: RecordBatch, pass_number: int, previous_end: int):
    """:func:`split_passes` with each piece's statistics: ``[(pass number,
    records bytes, (records, first index, end index, valid, invalid)), ...]``
    (within a pass records ascend, so the first index is the first
    record's and the end the last one's)."""
    if not len(batch):
        return [], pass_number, previous_end
    raw = batch.raw
    assert raw is not None, "split_passes needs the batch's raw bytes (decode_batch keeps them)"
    bounds = pass_bounds(batch.index, batch.end, previous_end).tolist()
    starts = bounds[1:-1]
    base = int(batch.offset[0])
    offsets = [0] + [int(batch.offset[k]) - base for k in starts] + [len(raw)]
    # the running sums at the bounds only (a batch holds tens of thousands of records)
    valid = np.concatenate(([0], np.cumsum(batch.n_valid)))[bounds].tolist()
    invalid = np.concatenate(([0], np.cumsum(batch.n_invalid)))[bounds].tolist()
    ends = batch.end
    pieces = []
    for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        if b > a:
            stats = (b - a, int(batch.index[a]), int(ends[b - 1]), valid[n + 1] - valid[n], invalid[n + 1] - invalid[n])
            pieces.append((pass_number + n, raw[offsets[n] : offsets[n + 1]], stats))
    return pieces, pass_number + len(starts), int(ends[-1])
