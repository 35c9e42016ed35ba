"""Change tracking of the simulated table: which entries may be dirty
(:class:`Suspects`, so that a later pass costs what changed) and the
decorator that marks a hypercall as one that changes the table.
"""

from __future__ import annotations

import functools

import numpy as np

from htabtool import records


def changes_table(method):
    """Mark a SimulatedHPT method as one that changes the table (its
    generation is bumped)."""

    @functools.wraps(method)
    def changing(self, *args, **kwargs):
        self.settle_reads()
        self.generation += 1
        return method(self, *args, **kwargs)

    return changing


class Suspects:
    """Which entries of a table may be dirty (hpte_dirty), so that a later
    pass looks at those alone: every entry outside the set is clean.  The
    kernel's later passes scan the whole table; this is the simulation's
    shortcut to the same records (the entries it skips are the ones that
    scan finds clean), so that a pass costs what changed.

    Not known at first (an image holds entries modified before it was
    opened).  Known once reads have left every entry clean in one sweep
    from entry 0 to the end (a first pass from index 0, or a later pass
    that scanned), every change made meanwhile added; from then on every
    change adds the entries it touches (:meth:`add`, called by each
    hypercall, hardware R/C, write and the bulk forms).  Clean entries may
    stay in it (those reads leave clean are dropped).  Past an eighth of
    the table it gives up (a scan costs no more) until the next sweep."""

    def __init__(self, npte: int):
        self.npte = npte
        self.known: np.ndarray | None = None  # sorted, unique
        self.swept: int | None = None  # while not known: a sweep has left 0..swept-1 clean
        self._arrays: list[np.ndarray] = []  # added since the last merge
        self._ints: list[int] = []
        self._count = 0
        self.changes = 0  # counts what changed the table (hypercalls, writes, reads' side effects)

    def add(self, idx) -> None:
        """Entries ``idx`` (an int or an array) may have changed."""
        self.changes += 1
        if self.known is None and self.swept is None:
            return
        if isinstance(idx, (int, np.integer)):
            self._ints.append(int(idx))
            self._count += 1
        else:
            idx = np.asarray(idx, dtype=np.int64).ravel()
            self._arrays.append(idx)
            self._count += len(idx)
        if self._count > self.npte >> 3:
            self.forget()

    def add_ranges(self, index: np.ndarray, lengths: np.ndarray) -> None:
        """Entries index[k] .. index[k] + lengths[k] - 1 (clipped to the table)."""
        self.changes += 1
        if self.known is None and self.swept is None:
            return
        index = np.asarray(index, dtype=np.int64)
        inside = index < self.npte
        index = index[inside]
        self.add(records.expand_ranges(index, np.minimum(np.asarray(lengths)[inside], self.npte - index)))

    def forget(self) -> None:
        self.known = self.swept = None
        self._arrays, self._ints, self._count = [], [], 0

    def cleaned(self, lo: int, hi: int) -> None:
        """Reads have left entries lo..hi-1 clean."""
        if self.known is not None:  # they are suspects no more (a later pass: a view, no copy)
            known = self.known
            a, b = int(known.searchsorted(lo)), int(known.searchsorted(hi))
            if a < b:
                self.known = known[b:] if a == 0 else np.concatenate((known[:a], known[b:]))
                self._count -= b - a
            return
        if self.swept is None:
            if lo:
                return
            self.swept = 0
        if lo <= self.swept:
            self.swept = max(self.swept, hi)
        if self.swept >= self.npte:
            self.known, self.swept = np.zeros(0, dtype=np.int64), None
            self._merge()

    def array(self) -> np.ndarray | None:
        """The suspects, sorted (None: not known)."""
        if self.known is not None and (self._arrays or self._ints):
            self._merge()
        return self.known

    def _merge(self) -> None:
        assert self.known is not None  # merged only once known
        parts = [self.known, *self._arrays]
        if self._ints:
            parts.append(np.array(self._ints, dtype=np.int64))
        if len(parts) > 1:
            # sort and drop repeats (np.unique hashes first: several times slower here)
            merged: np.ndarray = np.sort(np.concatenate(parts))
            keep = np.ones(len(merged), dtype=bool)
            np.not_equal(merged[1:], merged[:-1], out=keep[1:])
            self.known = merged[keep]
        self._arrays, self._ints = [], []
        self._count = len(self.known)

