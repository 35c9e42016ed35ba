"""The bulk forms of the hypercalls, as :class:`BulkHypercalls`, a part of
:class:`htabtool.sim.hpt.SimulatedHPT`: numpy over many entries at once,
each giving exactly the result of the hypercalls made one by one, in order
(bulk_enter, bulk_remove, bulk_protect, and touch_many for the hardware
setting R and C).  The guest model makes its changes through them.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from htabtool.errors import UsageError
from htabtool.hpte import (
    AVPN_IGNORED_BITS,
    HPTE_GR_RESERVED,
    HPTE_R_KEY_HI,
    HPTE_R_KEY_LO,
    HPTE_R_N,
    HPTE_R_PP,
    HPTE_R_PP0,
    HPTE_R_R,
    HPTE_V_ABSENT,
    HPTE_V_HVLOCK,
    HPTE_V_SECONDARY,
    HPTE_V_VALID,
    v_low_bytes,
)
from htabtool.sim.bits import RC_BITS, not_mask
from htabtool.sim.dirty import Suspects, changes_table
from htabtool.sim.mmu import PP_RWXX, PP_RXRX, PP_RXXX
from htabtool.sim.papr import H_ANDCOND, H_AVPN, H_NOT_FOUND, H_PARAMETER, H_PTEG_FULL, H_SUCCESS

_U = np.uint64


class BulkHypercalls:
    """The bulk forms of :class:`~htabtool.sim.hpt.SimulatedHPT` (a mixin: it
    works on the table's ``hpt``, ``rev``, ``hcalls`` and ``_suspects``)."""

    if TYPE_CHECKING:  # what SimulatedHPT provides
        npte: int
        hash_mask: int
        hpt: np.ndarray
        rev: np.ndarray
        hcalls: Counter
        _suspects: Suspects

        def settle_reads(self) -> None: ...
        def _prepare_enter_array(self, pteh: np.ndarray, ptel: np.ndarray) -> tuple[np.ndarray, ...]: ...
        def _mod_bits(self) -> np.uint64: ...
        def _v(self, i: int) -> int: ...
        def _store(self, i: int, hw_v: int, hw_r: int, g: int) -> None: ...

    @changes_table
    def touch_many(self, slots, write=False) -> int:
        """:meth:`touch` for many entries (``write``: a bool or a bool array)."""
        slots = np.asarray(slots, dtype=np.int64)
        if not len(slots):
            return 0
        write = np.broadcast_to(np.asarray(write, dtype=bool), slots.shape)
        inside = (slots >= 0) & (slots < self.npte)
        slots, write = slots[inside], write[inside]
        ok = (self.hpt[slots, 0].astype(np.uint64) & _U(HPTE_V_VALID)) != 0
        s = slots[ok]
        bits = np.where(write[ok], _U(RC_BITS), _U(HPTE_R_R))
        # a store and a load to one page: both bits (OR over duplicates)
        order = np.argsort(s, kind="stable")
        s, bits = s[order], bits[order]
        uniq, first = np.unique(s, return_index=True)
        bits = np.bitwise_or.reduceat(bits, first) if len(first) else bits
        self._suspects.add(uniq)
        self.hpt[uniq, 1] = self.hpt[uniq, 1].astype(np.uint64) | bits
        return int(ok.sum())

    # -- the bulk forms -------------------------------------------------------

    @changes_table
    def bulk_enter(self, group, pteh, ptel, *, secondary: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Many H_ENTERs without H_EXACT, as a Linux guest inserts entries:
        entry k goes to the first free slot of primary group ``group[k]``,
        else (``secondary``) of the secondary group ``~group[k] & mask`` with
        HPTE_V_SECONDARY set, else fails with H_PTEG_FULL.  The result is
        exactly that of the hypercalls made one by one, in order:
        (return codes, slots; -1 where none was used)."""
        group = np.asarray(group, dtype=np.int64)
        pteh = np.asarray(pteh, dtype=np.uint64)
        ptel = np.asarray(ptel, dtype=np.uint64)
        n = len(group)
        if np.any((group < 0) | (group > self.hash_mask)):
            raise UsageError("bulk_enter: a group number is outside the table")
        self.hcalls["H_ENTER"] += n
        rc, hw_v, hw_r, g = self._prepare_enter_array(pteh, ptel)
        slot = np.full(n, -1, dtype=np.int64)
        todo = np.flatnonzero(rc == H_SUCCESS)
        mod = self._mod_bits()
        lowbyte = v_low_bytes(self.hpt)
        busy = _U(HPTE_V_VALID | HPTE_V_ABSENT | HPTE_V_HVLOCK)
        pos, width, eight = 0, 4096, np.arange(8, dtype=np.int64)
        while pos < len(todo):
            win = todo[pos : pos + width]
            w = len(win)
            base = group[win] * 8
            occ = (lowbyte[base[:, None] + eight] & np.uint8(busy)) != 0
            nfree = 8 - occ.sum(axis=1)
            # rank of each entry among the window's earlier entries of its group
            order = np.argsort(base, kind="stable")
            sb = base[order]
            first = np.ones(w, dtype=bool)
            first[1:] = sb[1:] != sb[:-1]
            starts = np.maximum.accumulate(np.where(first, np.arange(w), 0))
            rank = np.empty(w, dtype=np.int64)
            rank[order] = np.arange(w) - starts
            fits = rank < nfree
            p = w if fits.all() else int(np.argmin(fits))
            if p:
                free = ~occ[:p]
                k = np.argmax(free & (np.cumsum(free, axis=1) == (rank[:p, None] + 1)), axis=1)
                s = base[:p] + k
                e = win[:p]
                self._suspects.add(s)
                self.rev[s] = g[e] | mod
                self.hpt[s, 1] = hw_r[e]
                self.hpt[s, 0] = hw_v[e]
                slot[e] = s
            if p < w:
                full = int(win[p])  # its primary group is full now
                if secondary:
                    sg = (~int(group[full])) & self.hash_mask
                    for s in range(sg * 8, sg * 8 + 8):
                        if not self._v(s) & (HPTE_V_VALID | HPTE_V_ABSENT | HPTE_V_HVLOCK):
                            self._store(s, int(hw_v[full]) | HPTE_V_SECONDARY, int(hw_r[full]), int(g[full]))
                            slot[full] = s
                            break
                    else:
                        rc[full] = H_PTEG_FULL
                else:
                    rc[full] = H_PTEG_FULL
                pos += p + 1
                width = min(65536, max(64, 2 * (p + 1)))
            else:
                pos += w
                width = min(65536, width * 2)
        return rc, slot

    def _unique_rounds(self, slots: np.ndarray):
        """Positions of ``slots`` split into rounds without repeated slots,
        each position in a round after every earlier position of its slot."""
        remaining = np.arange(len(slots))
        while len(remaining):
            _, first = np.unique(slots[remaining], return_index=True)
            first.sort()
            take = remaining[first]
            yield take
            mask = np.ones(len(remaining), dtype=bool)
            mask[first] = False
            remaining = remaining[mask]

    @changes_table
    def bulk_remove(self, slots, flags: int = 0, avpn=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Many H_REMOVE(flags, slot, avpn) in order: (return codes, v, r)."""
        slots = np.asarray(slots, dtype=np.int64)
        n = len(slots)
        self.hcalls["H_REMOVE"] += n
        rc = np.full(n, H_PARAMETER, dtype=np.int64)
        out_v = np.zeros(n, dtype=np.uint64)
        out_r = np.zeros(n, dtype=np.uint64)
        avpn = np.broadcast_to(np.asarray(0 if avpn is None else avpn, dtype=np.uint64), slots.shape)
        inside = np.flatnonzero((slots >= 0) & (slots < self.npte))
        mod = self._mod_bits()
        for take in self._unique_rounds(slots[inside]):
            pos = inside[take]
            s = slots[pos]
            pte = self.hpt[s, 0].astype(np.uint64) | _U(HPTE_V_HVLOCK)
            found = (pte & _U(HPTE_V_ABSENT | HPTE_V_VALID)) != 0
            if flags & H_AVPN:
                found &= (pte & not_mask(AVPN_IGNORED_BITS)) == avpn[pos]
            if flags & H_ANDCOND:
                found &= (pte & avpn[pos]) == 0
            rc[pos] = np.where(found, H_SUCCESS, H_NOT_FOUND)
            v = pte[found] & not_mask(HPTE_V_HVLOCK)
            pos, s = pos[found], s[found]
            gr = self.rev[s].astype(np.uint64)
            valid = (v & _U(HPTE_V_VALID)) != 0
            gr = np.where(valid, gr | (self.hpt[s, 1].astype(np.uint64) & _U(RC_BITS)), gr)
            out_r[pos] = gr & not_mask(HPTE_GR_RESERVED)
            self._suspects.add(s)
            self.rev[s] = gr | mod
            self.hpt[s, 0] = 0
            absent = (v & _U(HPTE_V_ABSENT)) != 0
            out_v[pos] = np.where(absent, (v & not_mask(HPTE_V_ABSENT)) | _U(HPTE_V_VALID), v)
        return rc, out_v, out_r

    @changes_table
    def bulk_protect(self, slots, flags, avpn=None) -> np.ndarray:
        """Many H_PROTECT(flags, slot, avpn) in order: the return codes.
        ``flags`` is one value or one per slot."""
        slots = np.asarray(slots, dtype=np.int64)
        n = len(slots)
        self.hcalls["H_PROTECT"] += n
        rc = np.full(n, H_PARAMETER, dtype=np.int64)
        flags = np.broadcast_to(np.asarray(flags, dtype=np.uint64), slots.shape)
        avpn = np.broadcast_to(np.asarray(0 if avpn is None else avpn, dtype=np.uint64), slots.shape)
        inside = np.flatnonzero((slots >= 0) & (slots < self.npte))
        mask = _U(HPTE_R_PP0 | HPTE_R_PP | HPTE_R_N | HPTE_R_KEY_HI | HPTE_R_KEY_LO)
        mod = self._mod_bits()
        for take in self._unique_rounds(slots[inside]):
            pos = inside[take]
            s = slots[pos]
            f = flags[pos]
            v = self.hpt[s, 0].astype(np.uint64) | _U(HPTE_V_HVLOCK)
            found = (v & _U(HPTE_V_ABSENT | HPTE_V_VALID)) != 0
            found &= ((f & _U(H_AVPN)) == 0) | ((v & not_mask(AVPN_IGNORED_BITS)) == avpn[pos])
            rc[pos] = np.where(found, H_SUCCESS, H_NOT_FOUND)
            s, f, v = s[found], f[found], v[found]
            bits = ((f << _U(55)) & _U(HPTE_R_PP0)) | ((f << _U(48)) & _U(HPTE_R_KEY_HI))
            bits |= f & _U(HPTE_R_PP | HPTE_R_N | HPTE_R_KEY_LO)
            self._suspects.add(s)
            self.rev[s] = (self.rev[s].astype(np.uint64) & ~mask) | bits | mod
            valid = (v & _U(HPTE_V_VALID)) != 0
            s, bits = s[valid], bits[valid]
            pte_r = self.hpt[s, 1].astype(np.uint64)
            r = (pte_r & ~mask) | bits
            pp_new = r & _U(HPTE_R_PP0 | HPTE_R_PP)
            pp_old = pte_r & _U(HPTE_R_PP0 | HPTE_R_PP)
            w_new = (pp_new != _U(PP_RXRX)) & (pp_new != _U(PP_RXXX))
            w_old = (pp_old != _U(PP_RXRX)) & (pp_old != _U(PP_RXXX))
            demote = w_new & ~w_old
            ro = np.where(
                ((r & _U(HPTE_R_PP0)) != 0) | ((r & _U(HPTE_R_PP)) == _U(PP_RWXX)),
                (r & not_mask(HPTE_R_PP)) | _U(PP_RXXX),
                r | _U(PP_RXRX),
            )
            r = np.where(demote, ro, r)
            changed = r != pte_r
            self.hpt[s[changed], 1] = r[changed] | (pte_r[changed] & _U(RC_BITS))
        return rc

