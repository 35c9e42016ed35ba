"""record_hpte's view of the simulated table: the entry kinds, the words a
read reports and its side effects (:class:`HptSource`, a
:class:`htabtool.records.TableSource`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from htabtool import records
from htabtool.hpte import HPTE_GR_MODIFIED, HPTE_R_C, HPTE_R_R, HPTE_V_ABSENT, HPTE_V_BOLTED, HPTE_V_VALID, v_low_bytes
from htabtool.sim.bits import (
    ENTRY_BYTES,
    LE_U64,
    RC_BITS,
    SW_ABSENT,
    SW_HVLOCK,
    SW_NOT_MODIFIED,
    SW_RC,
    not_mask,
)
from htabtool.sim.mmu import M64

if TYPE_CHECKING:
    from htabtool.sim.hpt import SimulatedHPT

_U = np.uint64


class HptSource:
    """The engine's table as a :class:`htabtool.records.TableSource`:
    record_hpte's view of every entry, without its side effects."""

    def __init__(self, hpt: SimulatedHPT, bolted_only: bool):
        self.e = hpt
        self.n_entries = hpt.npte
        self.bolted_only = bolted_only
        # what later_rows gathered last: (the table's change count then, the
        # dirty rows, their entries as V16, their guest views); a later
        # pass's words and side effects come from it, not from new gathers
        # (random reads of a large table cost a cache and TLB miss each)
        self._seen: tuple | None = None

    def kinds(self, lo: int, hi: int, first_pass: bool) -> np.ndarray:
        hb = self.e.hpt[lo:hi].view(np.uint8)  # (n, 16): v then r, big-endian
        kinds = self._kinds_of(v_low_bytes(hb))
        if not first_pass:
            kinds *= self._pending(hb, self.e.rev[lo:hi]).view(np.uint8)  # clean -> KIND_CLEAN (0)
        return kinds

    def _kinds_of(self, low: np.ndarray) -> np.ndarray:
        """KIND_VALID or KIND_INVALID from the lowest byte of each entry's v."""
        valid = (low & (HPTE_V_VALID | HPTE_V_ABSENT)) != 0
        if self.bolted_only:
            valid &= (low & HPTE_V_BOLTED) != 0
        # KIND_VALID = 1, KIND_INVALID = 2
        return np.uint8(records.KIND_INVALID) - valid.view(np.uint8)

    def later_rows(self, lo: int, limit: int):
        """A later pass's entries from ``lo`` on, from the suspects alone
        (:class:`Suspects`): (the dirty entries among the next ``limit``
        suspects, their kinds, the end of the stretch they cover); None when
        the suspects are not known (the caller scans :meth:`kinds`)."""
        known = self.e._suspects.array()
        if known is None:
            return None
        a = int(known.searchsorted(lo))
        b = min(len(known), a + limit)
        hi = int(known[b]) if b < len(known) else self.n_entries
        rows = known[a:b]
        w = self.e.hpt.view(ENTRY_BYTES)[:, 0][rows]
        gr = self.e.rev[rows]
        hb = w.view(np.uint8).reshape(-1, 16)
        dirty = self._pending(hb, gr)
        rows = rows[dirty]
        self._seen = (self.e._suspects.changes, rows, w[dirty], gr[dirty])
        return rows, self._kinds_of(v_low_bytes(hb)[dirty]), hi

    def _from_seen(self, rows: np.ndarray):
        """Positions of entries ``rows`` in what later_rows gathered, if it
        holds them all and nothing changed since; else None."""
        seen = self._seen
        if seen is None or seen[0] != self.e._suspects.changes or not len(rows):
            return None
        pos = seen[1].searchsorted(rows)
        if pos[-1] >= len(seen[1]) or not np.array_equal(seen[1][pos], rows):
            return None
        return pos

    def dirty_rows(self, lo: int, hi: int) -> np.ndarray | None:
        """The dirty entries in lo..hi-1 from the suspects alone; None when
        they are not known."""
        known = self.e._suspects.array()
        if known is None:
            return None
        rows = known[int(known.searchsorted(lo)) : int(known.searchsorted(hi))]
        return rows[self._pending(*self._gather(rows))]

    def _gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Entries ``rows`` as (n, 16) bytes and their guest views."""
        return self.e.hpt.view(ENTRY_BYTES)[:, 0][rows].view(np.uint8).reshape(-1, 16), self.e.rev[rows]

    def dirty(self, lo: int, hi: int) -> np.ndarray:
        """hpte_dirty of entries lo..hi-1 (see :meth:`_pending`)."""
        return self._pending(self.e.hpt[lo:hi].view(np.uint8), self.e.rev[lo:hi])

    @staticmethod
    def _pending(hb: np.ndarray, gr: np.ndarray) -> np.ndarray:
        """hpte_dirty: modified, or valid with an R/C bit the guest view lacks.
        ``hb``: the entries as (n, 16) big-endian bytes, ``gr`` their guest
        views.  Byte-wise: R and C are in the low 16 bits of r (bytes 14-15
        of a big-endian entry, bytes 0-1 of the little-endian guest view);
        HPTE_GR_MODIFIED is bit 6 of the guest view's byte 7."""
        gb = gr.view(np.uint8).reshape(-1, 8)
        # HPTE_R_R (0x100): bit 0 of byte 14 of r, bit 0 of the guest view's byte 1;
        # HPTE_R_C (0x80): bit 7 of byte 15, bit 7 of the guest view's byte 0
        pending = hb[:, 14] & ~gb[:, 1] & (HPTE_R_R >> 8)
        pending |= hb[:, 15] & ~gb[:, 0] & HPTE_R_C
        pending *= v_low_bytes(hb) & HPTE_V_VALID  # only valid entries have R/C to harvest
        pending |= gb[:, 7] & (HPTE_GR_MODIFIED >> 56)
        return pending != 0

    def words(self, lo: int, hi: int, rows: np.ndarray | None = None) -> np.ndarray:
        """record_hpte's (v, r) for entries lo + rows (all of lo..hi-1 when
        rows is None): v as read under the lock (HPTE_V_HVLOCK set, an absent
        entry valid), r the guest view with R/C harvested and
        HPTE_GR_MODIFIED clear.  (len(rows), 2) '>u8'.

        Computed on the big-endian doublewords as they lie, read as
        little-endian integers (constants byte-swapped to match): no byte
        swapping of the table, and rows gathered 16 bytes at a time."""
        e = self.e
        every = rows is None  # invalid rows too: R/C only where HPTE_V_VALID
        seen = self._seen
        pos = None if rows is None else self._from_seen(rows + lo)
        if pos is not None and seen is not None:
            return self._words_of(seen[2][pos], seen[3][pos], False)
        if every:
            rows = np.arange(hi - lo, dtype=np.int64)
        return self._words_of(e.hpt[lo:hi].view(ENTRY_BYTES)[:, 0][rows], e.rev[lo:hi][rows], every)

    @staticmethod
    def _words_of(w16: np.ndarray, gr: np.ndarray, every: bool) -> np.ndarray:
        """:meth:`words` of entries given as V16 and their guest views."""
        w = w16.view(LE_U64).reshape(-1, 2)
        v, hr = w[:, 0], w[:, 1]
        out = np.empty((len(w), 2), dtype=LE_U64)
        vo, ro = out[:, 0], out[:, 1]
        np.bitwise_or(v, SW_HVLOCK, out=vo)
        np.bitwise_and(hr, SW_RC, out=ro)  # R and C as the hardware set them ...
        absent = np.bitwise_and(v, SW_ABSENT)
        if absent.any():
            vo ^= absent
            vo |= absent >> _U(5)  # HPTE_V_ABSENT (bit 5 of the last byte) -> HPTE_V_VALID (bit 0)
            every = True
        if every:  # rows of a valid run have HPTE_V_VALID unless absent
            ro *= (v >> _U(56)) & _U(1)  # ... harvested only for entries with HPTE_V_VALID
        ro |= gr.astype(">u8").view(LE_U64)  # the guest view, its bytes big-endian
        ro &= SW_NOT_MODIFIED
        return out.view(">u8")

    def consume(self, res: records.ReadResult, start: int, first_pass: bool) -> None:
        """record_hpte's side effects of a read: on every dirty entry it went
        over, R and C harvested into the guest view (valid entries) and
        HPTE_GR_MODIFIED cleared.  A first pass goes over every entry from
        ``start`` on, each inside one of its records; a later pass skips
        clean entries, so its records hold exactly the dirty ones."""
        end = self.e.npte if res.wrapped else res.next_index
        if first_pass:
            self.harvest(start, end)
            return
        if len(res.index):
            self._clear(records.expand_ranges(res.index, res.end - res.index))
        # the read reported every dirty entry from start to end: all clean now
        self.e._suspects.cleaned(start, end)

    def harvest(self, lo: int, hi: int, step: int = 1 << 16) -> None:
        """The side effects of reads that went over entries lo..hi-1: every
        dirty one harvested and cleared.  Right for a later pass too: the
        entries it skipped are clean, and clearing a clean entry changes
        nothing."""
        e = self.e
        e.generation += 1
        for a in range(lo, hi, step):
            b = min(hi, a + step)
            rows = np.flatnonzero(self.dirty(a, b))
            if 8 * len(rows) > b - a:  # dense: whole slices beat gathers (clean rows come out the same)
                v = e.hpt[a:b, 0].astype(np.uint64)
                gr = e.rev[a:b]
                harvested = e.hpt[a:b, 1].astype(np.uint64) & _U(RC_BITS) & ((v & _U(HPTE_V_VALID)) * _U(M64))
                e.rev[a:b] = (gr | harvested) & not_mask(HPTE_GR_MODIFIED)
            elif len(rows):
                self._clear(rows + a)
        e._suspects.changes += 1
        e._suspects.cleaned(lo, hi)

    def _clear(self, idx: np.ndarray) -> None:
        e = self.e
        e.generation += 1
        pos, seen = self._from_seen(idx), self._seen
        if pos is not None and seen is not None:
            w, gr = seen[2][pos], seen[3][pos]
        else:
            w, gr = e.hpt.view(ENTRY_BYTES)[:, 0][idx], e.rev[idx]
        vr = w.view(">u8").reshape(-1, 2)
        harvested = (vr[:, 1] & _U(RC_BITS)) * ((vr[:, 0] & _U(HPTE_V_VALID)) != 0)
        e.rev[idx] = (gr | harvested) & not_mask(HPTE_GR_MODIFIED)
        e._suspects.changes += 1
        if pos is not None and seen is not None:  # what it gathered holds for the entries not cleared yet
            self._seen = (e._suspects.changes,) + seen[1:]
