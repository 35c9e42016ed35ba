"""The write side on a plain table: records placed as kvm_htab_write does.

A table state is an (N, 2) array of big-endian doublewords
(:func:`new_table`); :func:`apply_batch` writes a batch's valid runs and
zeroes its invalid ones, a pass's run of ascending records at once.
"""

from __future__ import annotations

import numpy as np

from htabtool.records.batch import RecordBatch, expand_ranges
from htabtool.records.format import ENTRY_DTYPE
from htabtool.records.passes import pass_bounds


def new_table(n_entries: int) -> np.ndarray:
    """An empty table state: (n_entries, 2) big-endian doublewords, all zero."""
    return np.zeros((n_entries, 2), dtype=ENTRY_DTYPE)


def apply_batch(table: np.ndarray, batch: RecordBatch) -> None:
    """Apply records to a table state as the kernel's write side places them:
    n_valid entries from the header index, then n_invalid slots invalidated
    (zeroed here).  Every record of the batch is checked first (RecordError),
    so a bad batch changes nothing.  Records apply in stream order; runs of
    ascending, disjoint records (a pass) are applied at once."""
    n = len(table)
    batch.check(n)
    if not len(batch):
        return
    # split where the records wrap round (a new pass): each run ascends
    bounds = pass_bounds(batch.index, batch.end)
    entry_bounds = np.concatenate(([0], np.cumsum(batch.n_valid)))
    for a, b in zip(bounds[:-1], bounds[1:]):
        idx = batch.index[a:b]
        nv = batch.n_valid[a:b]
        ni = batch.n_invalid[a:b]
        ents = batch.entries[entry_bounds[a] : entry_bounds[b]]
        table[expand_ranges(idx, nv)] = ents
        has_inv = ni > 0
        if has_inv.any():
            s = (idx + nv)[has_inv]
            e = s + ni[has_inv]
            lo, hi = int(s[0]), int(e[-1])
            marks = np.bincount(s - lo, minlength=hi - lo + 1) - np.bincount(e - lo, minlength=hi - lo + 1)
            table[lo:hi][np.cumsum(marks[: hi - lo]) > 0] = 0
