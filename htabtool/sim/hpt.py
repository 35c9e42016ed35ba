"""The simulated HPT: a KVM guest's hashed page table, its hypercalls and its htab fd.

Strategy: :class:`SimulatedHPT` holds what KVM-HV holds for an HPT guest,
and nothing more:

- the table itself, ``2**(order-4)`` entries of two big-endian doublewords
  (``hpt``, as the real HPT is in memory), the *hardware* copy: it carries
  KVM's software bits (HPTE_V_ABSENT), a host real address in its second
  doubleword and the R and C bits the hardware sets;
- the reverse map's ``guest_rpte`` of every entry (``rev``): the guest's own
  view of the second doubleword, with HPTE_GR_MODIFIED ("changed since last
  read") in bit 62;
- the few scalars the htab fd looks at: the MMU-ready flag, the vCPUs'
  running state, the VRMA setup, the count of open read fds
  (``hpte_mod_interest``).

On top of them, the PAPR hypercalls as today's kernel implements them
(arch/powerpc/kvm/book3s_hv_rm_mmu.c: kvmppc_do_h_enter, kvmppc_do_h_remove,
kvmppc_h_bulk_remove, kvmppc_h_protect, kvmppc_h_read, kvmppc_h_clear_ref,
kvmppc_h_clear_mod), with PAPR return codes and flags as
arch/powerpc/include/asm/hvcall.h defines them; :meth:`SimulatedHPT.touch`
for the hardware setting R and C; and :meth:`SimulatedHPT.htab_fd`, the
object KVM_PPC_GET_HTAB_FD returns (arch/powerpc/kvm/book3s_64_mmu_hv.c:
hpte_dirty, record_hpte, kvm_htab_read, kvm_htab_write).

Single hypercalls are plain Python.  Everything that touches many entries
is numpy over whole slices: the reads (the record layout is
:func:`htabtool.records.encode_read`; this module supplies the entry kinds,
the reported doublewords and the side effects), the writes (records applied
pass by pass), and the bulk forms the guest model uses
(:meth:`~SimulatedHPT.bulk_enter`, :meth:`~SimulatedHPT.bulk_remove`,
:meth:`~SimulatedHPT.bulk_protect`, :meth:`~SimulatedHPT.touch_many`), each
giving exactly the result of the hypercalls made one by one.

What is simulated, and how (the kernel's own behaviour is the rule; these
are the places where a simulation must choose):

- One memory slot: guest RAM is guest real addresses ``0 .. ram_size``,
  backed by host pages of ``2**backing_page_shift`` bytes (16M by default:
  hugepage-backed, so 4K, 64K and 16M guest pages are accepted; a page
  larger than the backing is H_PARAMETER, as in kvmppc_do_h_enter).  The
  host real address of guest page ``gpa`` is ``HOST_RAM_BASE + gpa`` and
  every host page is resident.  A page outside guest RAM is emulated MMIO:
  the entry becomes HPTE_V_ABSENT with key 31 in the hardware copy.
- The host's reverse map chains keep no R/C bits of their own, so a new
  hardware entry starts with R and C clear (kvmppc_do_h_enter copies only
  the R/C bits the rmap already holds); the hardware sets them on
  :meth:`~SimulatedHPT.touch`.
- The host CPU (``cpu``): on POWER8 (ISA 2.07, the default) the table is
  in the old HPTE format.  POWER9 and POWER10 (ISA 3.0) store the new
  format: kvmppc_do_h_enter keeps only ``v & HPTE_V_COMMON_BITS`` of the
  first doubleword and moves the segment size into the second
  (hpte_old_to_new_v/r), and every access converts back
  (hpte_new_to_old_v/r).  So bits 52..61 of v (the top of the AVPN) are
  lost: a read, H_READ or H_REMOVE reports them clear, and an AVPN
  compared against them no longer matches.  The engine stores the old
  format with those bits dropped, which is what every access sees.  The
  guest view of r is kept as written on both.
- No concurrency: a hypercall, a read or a write runs to its end, so the
  lock bit HPTE_V_HVLOCK is never seen set at rest -- but it is in every
  entry a read reports, since record_hpte reads the doubleword while
  holding it.
- Writes are parsed as kvm_htab_write parses them, quirk included
  (:meth:`HtabFd.write`): only the first record of a write() is read
  right.  :meth:`HtabFd.write_records` is the way to put many records in:
  one write() per record, as QEMU writes them.
- Write-side limit: the kernel checks ``nb + hdr.n_valid * HPTE_SIZE >
  count`` before it counts the record's header (``nb += sizeof(hdr)`` comes
  after it), so a record up to 8 bytes short is applied from bytes past the
  caller's buffer; the engine takes only records whose bytes are all in the
  buffer and leaves such a record unconsumed.
"""

from __future__ import annotations

import errno
import sys
from collections import Counter

import numpy as np

from htabtool import records
from htabtool.errors import UsageError
from htabtool.hpte import (
    AVPN_IGNORED_BITS,
    HPTE_GR_MODIFIED,
    HPTE_GR_RESERVED,
    HPTE_R_C,
    HPTE_R_G,
    HPTE_R_I,
    HPTE_R_KEY_HI,
    HPTE_R_KEY_LO,
    HPTE_R_M,
    HPTE_R_N,
    HPTE_R_PP,
    HPTE_R_PP0,
    HPTE_R_R,
    HPTE_R_RPN,
    HPTE_R_W,
    HPTE_R_WIMG,
    HPTE_V_ABSENT,
    HPTE_V_BOLTED,
    HPTE_V_HVLOCK,
    HPTE_V_LARGE,
    HPTE_V_SSIZE_SHIFT,
    HPTE_V_VALID,
    VRMA_HPTE_V,
    page_shift_pair,
    page_shift_pair_array,
    table_entries,
    v_low_bytes,
)
from htabtool.sim.bits import RC_BITS, not_mask, oserror
from htabtool.sim.bulk import BulkHypercalls
from htabtool.sim.dirty import Suspects, changes_table
from htabtool.sim.htabfd import HtabFd
from htabtool.sim.mmu import (
    CPUS,
    DEFAULT_BACKING_PAGE_SHIFT,
    DEFAULT_CPU,
    HOST_PAGE_SHIFT,
    HOST_RAM_BASE,
    ISA300_V_KEPT,
    M64,
    PP_RWXX,
    VRMA_HASH,
    hpte_is_writable,
    hpte_make_readonly,
    lpcr_with_vrmasd,
    vrma_slb_v,
)
from htabtool.sim.papr import (
    H_ANDCOND,
    H_AVPN,
    H_EXACT,
    H_NOT_FOUND,
    H_PARAMETER,
    H_PTEG_FULL,
    H_READ_4,
    H_SUCCESS,
    KVM_GET_HTAB_BOLTED_ONLY,
    KVM_GET_HTAB_WRITE,
    PPC_MAX_HPT_ORDER,
    PPC_MIN_HPT_ORDER,
)
from htabtool.sim.readview import HptSource

_U = np.uint64


class SimulatedHPT(BulkHypercalls):
    """A KVM-HV guest's hashed page table of ``2**order`` bytes.

    ``ram_size`` is the guest RAM (default ``2**(order+7)``, the inverse of
    QEMU's 1/128 sizing rule); ``backing_page_shift`` the host page size
    backing it; ``map_vrma``: whether the first :meth:`cont` maps the
    virtual real-mode area as KVM does on POWER8/9 (kvmppc_map_vrma);
    ``cpu``: the host, ``"POWER8"`` (old HPTE format), ``"POWER9"`` or
    ``"POWER10"`` (ISA 3.0: v bits 52..61 are not kept).
    ``hpt`` and ``rev`` may be given (arrays in an mmap'd VM image); they
    are used in place, never copied.
    """

    def __init__(
        self,
        order: int,
        *,
        ram_size: int | None = None,
        backing_page_shift: int = DEFAULT_BACKING_PAGE_SHIFT,
        map_vrma: bool = False,
        hpt: np.ndarray | None = None,
        rev: np.ndarray | None = None,
        cpu: str = DEFAULT_CPU,
    ):
        if cpu not in CPUS:
            raise UsageError(f"host CPU must be one of {', '.join(CPUS)}, not {cpu!r}")
        self.cpu = cpu
        self.isa300 = cpu != "POWER8"  # cpu_has_feature(CPU_FTR_ARCH_300)
        self._v_kept = ISA300_V_KEPT if self.isa300 else M64
        if not PPC_MIN_HPT_ORDER <= int(order) <= PPC_MAX_HPT_ORDER:
            raise UsageError(
                f"HPT order must be between {PPC_MIN_HPT_ORDER} and {PPC_MAX_HPT_ORDER}, not {order}"
            )
        self.order = int(order)
        self.npte = table_entries(self.order)
        self.npteg = self.npte >> 3
        self.hash_mask = self.npteg - 1  # kvmppc_hpt_mask
        if ram_size is None:
            ram_size = 1 << (self.order + 7)
        if ram_size <= 0 or ram_size % (1 << HOST_PAGE_SHIFT):
            raise UsageError(f"guest RAM must be a positive multiple of 64 KiB, not {ram_size}")
        self.ram_size = int(ram_size)
        if not 12 <= backing_page_shift <= 34:
            raise UsageError(f"backing page shift must be 12 to 34, not {backing_page_shift}")
        self.backing_page_shift = int(backing_page_shift)
        self.map_vrma = bool(map_vrma)
        if hpt is None:
            hpt = np.zeros((self.npte, 2), dtype=">u8")
        if rev is None:
            rev = np.zeros(self.npte, dtype="<u8")
        if hpt.shape != (self.npte, 2) or hpt.dtype != np.dtype(">u8"):
            raise UsageError(f"hpt must be ({self.npte}, 2) '>u8'")
        if rev.shape != (self.npte,) or rev.dtype != np.dtype("<u8"):
            raise UsageError(f"rev must be ({self.npte},) '<u8'")
        self.hpt = hpt
        self.rev = rev
        self.mmu_ready = False  # kvm->arch.mmu_ready
        self.vcpus_running = False  # kvm->arch.vcpus_running != 0
        self.vrma_slb_v = 0
        self.lpcr = 0  # only the VRMASD field is modelled
        self.hpte_mod_interest = 0
        self.hcalls: Counter = Counter()
        # bumped by everything that changes the table or the guest view (a
        # burst of reads checks it when it resumes: its plan is made ahead)
        self.generation = 0
        # read fds holding side effects a burst deferred: settled before
        # anything else touches the table
        self._unsettled: set = set()
        # which entries may be dirty, so that a later pass costs what changed
        # (see Suspects); not known until reads have cleaned the whole table
        self._suspects = Suspects(self.npte)

    def settle_reads(self) -> None:
        """Apply the side effects that suspended bursts of reads deferred (a
        read's side effects happen before anything after it)."""
        for fd in list(self._unsettled):
            fd._settle()

    def dirty_entries(self) -> np.ndarray:
        """The entries hpte_dirty finds dirty now (what a later pass of a
        read fd reports), sorted; no side effects.  Costs what changed once
        reads have gone over the whole table, else one scan of it."""
        self.settle_reads()
        source = HptSource(self, bolted_only=False)
        rows = source.dirty_rows(0, self.npte)
        if rows is not None:
            return rows
        return np.concatenate([np.flatnonzero(source.dirty(lo, min(self.npte, lo + (1 << 22)))) + lo
                               for lo in range(0, self.npte, 1 << 22)])

    # -- small helpers ------------------------------------------------------

    def _v(self, i: int) -> int:
        return int(self.hpt[i, 0])

    def _r(self, i: int) -> int:
        return int(self.hpt[i, 1])

    def _note_mod(self, i: int) -> None:
        """note_hpte_modification"""
        if self.hpte_mod_interest:
            self.rev[i] = int(self.rev[i]) | HPTE_GR_MODIFIED

    def _mod_bits(self) -> np.uint64:
        return _U(HPTE_GR_MODIFIED if self.hpte_mod_interest else 0)

    def _in_range(self, i) -> bool:
        return 0 <= i < self.npte

    # -- H_ENTER ------------------------------------------------------------

    def _prepare_enter(self, pteh: int, ptel: int) -> tuple[int, int, int, int]:
        """The part of kvmppc_do_h_enter before a slot is chosen:
        (rc, hardware v, hardware r, guest view r)."""
        pteh &= M64
        ptel &= M64
        if (pteh >> HPTE_V_SSIZE_SHIFT) & 0x2:  # B=0b1x is reserved
            return H_PARAMETER, 0, 0, 0
        _, ashift = page_shift_pair(pteh, ptel)
        if not ashift:
            return H_PARAMETER, 0, 0, 0
        psize = 1 << ashift
        pteh &= ~(HPTE_V_HVLOCK | HPTE_V_ABSENT | HPTE_V_VALID) & M64
        ptel &= ~HPTE_GR_RESERVED & M64
        g_ptel = ptel
        gpa = (ptel & HPTE_R_RPN) & ~(psize - 1)
        if gpa >= self.ram_size:
            # emulated MMIO: key 31 in the hardware copy only
            return H_SUCCESS, (pteh | HPTE_V_ABSENT) & self._v_kept, ptel | HPTE_R_KEY_HI | HPTE_R_KEY_LO, g_ptel
        if psize > (1 << HOST_PAGE_SHIFT):  # slot_is_aligned
            mask = (psize >> HOST_PAGE_SHIFT) - 1
            if (self.ram_size >> HOST_PAGE_SHIFT) & mask:
                return H_PARAMETER, 0, 0, 0
        if (1 << self.backing_page_shift) < psize:
            return H_PARAMETER, 0, 0, 0
        pa = HOST_RAM_BASE + gpa
        ptel = (ptel & (HPTE_R_KEY_HI | HPTE_R_KEY_LO | HPTE_R_PP0 | (psize - 1))) | pa
        pteh |= HPTE_V_VALID
        wimg = ptel & HPTE_R_WIMG
        if wimg == (HPTE_R_W | HPTE_R_I | HPTE_R_M):  # SAO
            wimg = HPTE_R_M
        if wimg != HPTE_R_M:  # hpte_cache_flags_ok fails: make it cacheable
            ptel &= ~(HPTE_R_W | HPTE_R_I | HPTE_R_G) & M64
            ptel |= HPTE_R_M
        ptel &= ~RC_BITS & M64  # the rmap holds no R/C bits
        return H_SUCCESS, pteh & self._v_kept, ptel, g_ptel

    def _prepare_enter_array(self, pteh: np.ndarray, ptel: np.ndarray):
        """Vectorised :meth:`_prepare_enter`: (rc, hw_v, hw_r, g) arrays."""
        pteh = np.asarray(pteh, dtype=np.uint64)
        ptel = np.asarray(ptel, dtype=np.uint64)
        n = len(pteh)
        rc = np.zeros(n, dtype=np.int64)
        rc[((pteh >> _U(HPTE_V_SSIZE_SHIFT)) & _U(2)) != 0] = H_PARAMETER
        _, ashift = page_shift_pair_array(pteh, ptel)
        rc[ashift == 0] = H_PARAMETER
        psize = np.left_shift(_U(1), ashift.astype(np.uint64))
        pteh = pteh & not_mask(HPTE_V_HVLOCK | HPTE_V_ABSENT | HPTE_V_VALID)
        ptel = ptel & not_mask(HPTE_GR_RESERVED)
        g = ptel.copy()
        gpa = (ptel & _U(HPTE_R_RPN)) & ~(psize - _U(1))
        mmio = gpa >= _U(self.ram_size)
        big = psize > _U(1 << HOST_PAGE_SHIFT)
        mask = (psize >> _U(HOST_PAGE_SHIFT)) - _U(1)
        misaligned = big & (((_U(self.ram_size >> HOST_PAGE_SHIFT)) & mask) != 0)
        too_big = psize > _U(1 << self.backing_page_shift)
        rc[~mmio & (misaligned | too_big) & (rc == 0)] = H_PARAMETER
        hw_v = np.where(mmio, pteh | _U(HPTE_V_ABSENT), pteh | _U(HPTE_V_VALID)) & _U(self._v_kept)
        keep = _U(HPTE_R_KEY_HI | HPTE_R_KEY_LO | HPTE_R_PP0) | (psize - _U(1))
        ram_r = (ptel & keep) | (_U(HOST_RAM_BASE) + gpa)
        wimg = ram_r & _U(HPTE_R_WIMG)
        wimg = np.where(wimg == _U(HPTE_R_W | HPTE_R_I | HPTE_R_M), _U(HPTE_R_M), wimg)
        bad = wimg != _U(HPTE_R_M)
        ram_r = np.where(bad, (ram_r & not_mask(HPTE_R_W | HPTE_R_I | HPTE_R_G)) | _U(HPTE_R_M), ram_r)
        ram_r &= not_mask(RC_BITS)
        hw_r = np.where(mmio, ptel | _U(HPTE_R_KEY_HI | HPTE_R_KEY_LO), ram_r)
        return rc, hw_v, hw_r, g

    def _store(self, i: int, hw_v: int, hw_r: int, g: int) -> None:
        self._suspects.add(i)
        self.rev[i] = g | (HPTE_GR_MODIFIED if self.hpte_mod_interest else 0)
        self.hpt[i, 1] = hw_r
        self.hpt[i, 0] = hw_v

    @changes_table
    def h_enter(self, flags: int, pte_index: int, pteh: int, ptel: int) -> tuple[int, int]:
        """H_ENTER: (return code, the index of the slot used)."""
        self.hcalls["H_ENTER"] += 1
        rc, hw_v, hw_r, g = self._prepare_enter(pteh, ptel)
        if rc != H_SUCCESS:
            return rc, 0
        if not self._in_range(pte_index):
            return H_PARAMETER, 0
        if not flags & H_EXACT:
            base = pte_index & ~7
            for i in range(base, base + 8):
                if not self._v(i) & (HPTE_V_VALID | HPTE_V_ABSENT | HPTE_V_HVLOCK):
                    pte_index = i
                    break
            else:
                return H_PTEG_FULL, 0
        elif self._v(pte_index) & (HPTE_V_VALID | HPTE_V_ABSENT | HPTE_V_HVLOCK):
            return H_PTEG_FULL, 0
        self._store(pte_index, hw_v, hw_r, g)
        return H_SUCCESS, pte_index

    # -- H_REMOVE -----------------------------------------------------------

    @changes_table
    def h_remove(self, flags: int, pte_index: int, avpn: int = 0) -> tuple[int, int, int]:
        """H_REMOVE: (return code, the entry's v, its guest-view r)."""
        self.hcalls["H_REMOVE"] += 1
        if not self._in_range(pte_index):
            return H_PARAMETER, 0, 0
        pte = self._v(pte_index) | HPTE_V_HVLOCK  # read under the lock
        if (
            not pte & (HPTE_V_ABSENT | HPTE_V_VALID)
            or (flags & H_AVPN and (pte & ~AVPN_IGNORED_BITS) != avpn)
            or (flags & H_ANDCOND and (pte & avpn) != 0)
        ):
            return H_NOT_FOUND, 0, 0
        v = pte & ~HPTE_V_HVLOCK
        self._suspects.add(pte_index)
        if v & HPTE_V_VALID:  # remove_revmap_chain harvests R and C
            self.rev[pte_index] = int(self.rev[pte_index]) | (self._r(pte_index) & RC_BITS)
        r = int(self.rev[pte_index]) & ~HPTE_GR_RESERVED
        self._note_mod(pte_index)
        self.hpt[pte_index, 0] = 0
        if v & HPTE_V_ABSENT:
            v = (v & ~HPTE_V_ABSENT) | HPTE_V_VALID
        return H_SUCCESS, v, r

    @changes_table
    def h_bulk_remove(self, args) -> tuple[int, list[int]]:
        """H_BULK_REMOVE over up to four (translation specifier, AVPN) pairs:
        (return code, the eight argument words as the hypervisor leaves them)."""
        self.hcalls["H_BULK_REMOVE"] += 1
        args = [int(a) & M64 for a in args] + [0] * (8 - len(args))
        ret = H_SUCCESS
        for i in range(4):
            j = 2 * i
            pte_index = args[j]
            flags = pte_index >> 56
            pte_index &= (1 << 56) - 1
            req = flags >> 6
            flags &= 3
            if req == 3:  # no more requests
                break
            if req != 1 or flags == 3 or pte_index >= self.npte:
                args[j] = ((0xA0 | flags) << 56) + pte_index
                ret = H_PARAMETER
                break
            hp0 = self._v(pte_index) | HPTE_V_HVLOCK
            found = False
            if hp0 & (HPTE_V_ABSENT | HPTE_V_VALID):
                if flags == 0:
                    found = True
                elif flags == 1:
                    found = not (hp0 & args[j + 1])
                else:
                    found = (hp0 & ~AVPN_IGNORED_BITS) == args[j + 1]
            if not found:
                args[j] = ((0x90 | flags) << 56) + pte_index
                continue
            args[j] = ((0x80 | flags) << 56) + pte_index
            self._suspects.add(pte_index)
            self._note_mod(pte_index)
            if hp0 & HPTE_V_VALID:
                self.rev[pte_index] = int(self.rev[pte_index]) | (self._r(pte_index) & RC_BITS)
            rcbits = int(self.rev[pte_index]) & RC_BITS
            args[j] |= rcbits << (56 - 5)
            self.hpt[pte_index, 0] = 0
        return ret, args

    # -- H_PROTECT, H_READ, H_CLEAR_REF, H_CLEAR_MOD -----------------------

    @changes_table
    def h_protect(self, flags: int, pte_index: int, avpn: int = 0) -> int:
        """H_PROTECT: set PP0, PP, N and the key from ``flags``."""
        self.hcalls["H_PROTECT"] += 1
        if not self._in_range(pte_index):
            return H_PARAMETER
        v = self._v(pte_index) | HPTE_V_HVLOCK
        if not v & (HPTE_V_ABSENT | HPTE_V_VALID) or (flags & H_AVPN and (v & ~AVPN_IGNORED_BITS) != avpn):
            return H_NOT_FOUND
        pte_r = self._r(pte_index)
        bits = (flags << 55) & HPTE_R_PP0
        bits |= (flags << 48) & HPTE_R_KEY_HI
        bits |= flags & (HPTE_R_PP | HPTE_R_N | HPTE_R_KEY_LO)
        mask = HPTE_R_PP0 | HPTE_R_PP | HPTE_R_N | HPTE_R_KEY_HI | HPTE_R_KEY_LO
        self._suspects.add(pte_index)
        self.rev[pte_index] = (int(self.rev[pte_index]) & ~mask & M64) | bits
        self._note_mod(pte_index)
        if v & HPTE_V_VALID:
            r = (pte_r & ~mask & M64) | bits
            if hpte_is_writable(r) and not hpte_is_writable(pte_r):
                r = hpte_make_readonly(r)
            if r != pte_r:
                self.hpt[pte_index, 1] = r | (pte_r & RC_BITS)
        return H_SUCCESS

    def h_read(self, flags: int, pte_index: int) -> tuple[int, list[int]]:
        """H_READ: (return code, [v, r] or with H_READ_4 [v0, r0, ..., v3, r3])."""
        self.hcalls["H_READ"] += 1
        if not self._in_range(pte_index):
            return H_PARAMETER, []
        n = 1
        if flags & H_READ_4:
            pte_index &= ~3
            n = 4
        out = []
        for i in range(pte_index, pte_index + n):
            v = self._v(i) & ~HPTE_V_HVLOCK
            r = self._r(i)
            if v & HPTE_V_ABSENT:
                v = (v & ~HPTE_V_ABSENT) | HPTE_V_VALID
            if v & HPTE_V_VALID:
                r = (int(self.rev[i]) | (r & RC_BITS)) & ~HPTE_GR_RESERVED
            out += [v, r]
        return H_SUCCESS, out

    @changes_table
    def h_clear_ref(self, flags: int, pte_index: int) -> tuple[int, int]:
        """H_CLEAR_REF: (return code, the guest view r before clearing)."""
        self.hcalls["H_CLEAR_REF"] += 1
        if not self._in_range(pte_index):
            return H_PARAMETER, 0
        v = self._v(pte_index)
        r = self._r(pte_index)
        if not v & (HPTE_V_VALID | HPTE_V_ABSENT):
            return H_NOT_FOUND, 0
        gr = int(self.rev[pte_index])
        self._suspects.add(pte_index)
        if gr & HPTE_R_R:
            self.rev[pte_index] = gr & ~HPTE_R_R
            self._note_mod(pte_index)
        if v & HPTE_V_VALID:
            gr |= r & RC_BITS
            if r & HPTE_R_R:
                self.hpt[pte_index, 1] = r & ~HPTE_R_R
        return H_SUCCESS, gr

    @changes_table
    def h_clear_mod(self, flags: int, pte_index: int) -> tuple[int, int]:
        """H_CLEAR_MOD: (return code, the guest view r before clearing)."""
        self.hcalls["H_CLEAR_MOD"] += 1
        if not self._in_range(pte_index):
            return H_PARAMETER, 0
        v = self._v(pte_index)
        if not v & (HPTE_V_VALID | HPTE_V_ABSENT):
            return H_NOT_FOUND, 0
        gr = int(self.rev[pte_index])
        self._suspects.add(pte_index)
        if gr & HPTE_R_C:
            self.rev[pte_index] = gr & ~HPTE_R_C
            self._note_mod(pte_index)
        if v & HPTE_V_VALID:
            r = self._r(pte_index)
            gr |= r & RC_BITS
            if r & HPTE_R_C:
                self.hpt[pte_index, 1] = r & ~HPTE_R_C
        return H_SUCCESS, gr

    # -- the hardware --------------------------------------------------------

    @changes_table
    def touch(self, pte_index: int, write: bool = False) -> bool:
        """The guest accesses the page of entry ``pte_index``: the hardware
        sets R (and C for a store) in the entry, if it is valid.  An absent
        entry faults to the hypervisor instead and gets neither."""
        if not self._in_range(pte_index) or not self._v(pte_index) & HPTE_V_VALID:
            return False
        r = self._r(pte_index)
        self._suspects.add(pte_index)
        self.hpt[pte_index, 1] = r | HPTE_R_R | (HPTE_R_C if write else 0)
        return True


    # -- running state and the real-mode area -------------------------------

    def stop(self) -> None:
        """Stop the vCPUs (as QEMU's ``stop``): writes to the htab fd work again."""
        self.vcpus_running = False

    def cont(self) -> None:
        """Run the vCPUs.  The first run of an HPT guest whose MMU is not ready
        sets it up (kvmppc_hv_setup_htab_rma): with ``map_vrma`` the VRMA is
        mapped as kvmppc_map_vrma does, then the MMU is ready."""
        if not self.mmu_ready:
            if self.map_vrma:
                self._map_vrma()
            self.mmu_ready = True
        self.vcpus_running = True

    @changes_table
    def _map_vrma(self) -> int:
        """kvmppc_map_vrma: one bolted VRMA entry per page of RAM, in slot 7
        of its group, at most one per group and 1T of RAM; the page size is
        the backing page size (4K, 64K or 16M)."""
        porder = 24 if self.backing_page_shift >= 24 else 16 if self.backing_page_shift >= 16 else 12
        psize = 1 << porder
        npages = min(self.ram_size >> porder, 1 << (40 - porder), self.hash_mask + 1)
        hp0 = VRMA_HPTE_V | HPTE_V_BOLTED | (HPTE_V_LARGE if psize > 0x1000 else 0)
        hp1 = (0x1000 if psize == 0x10000 else 0) | HPTE_R_R | HPTE_R_C | HPTE_R_M | PP_RWXX
        i = np.arange(npages, dtype=np.uint64)
        addr = i << _U(porder)
        h = (i ^ _U(VRMA_HASH)) & _U(self.hash_mask)
        idx = (h.astype(np.int64) << 3) + 7
        v = _U(hp0) | ((addr >> _U(16)) & not_mask(AVPN_IGNORED_BITS))
        r = _U(hp1) | addr
        rc, hw_v, hw_r, g = self._prepare_enter_array(v, r)
        self.hcalls["H_ENTER"] += npages
        free = (self.hpt[idx, 0].astype(np.uint64) & _U(HPTE_V_VALID | HPTE_V_ABSENT)) == 0
        ok = (rc == H_SUCCESS) & free
        bad = np.flatnonzero(~ok)
        stop = int(bad[0]) if len(bad) else npages  # the kernel stops at the first failure
        idx, hw_v, hw_r, g = idx[:stop], hw_v[:stop], hw_r[:stop], g[:stop]
        self._suspects.add(idx)
        self.rev[idx] = g | self._mod_bits()
        self.hpt[idx, 1] = hw_r
        self.hpt[idx, 0] = hw_v
        return stop

    def _setup_vrma_from(self, v: int, pshift: int) -> None:
        self.vrma_slb_v = vrma_slb_v(pshift)
        if not self.isa300:  # ISA 3.0 sets up the partition table instead
            self.lpcr = lpcr_with_vrmasd(self.lpcr, pshift)
        self.mmu_ready = True

    # -- the htab fd ---------------------------------------------------------

    def htab_fd(self, flags: int = 0, start_index: int = 0, *, byte_order: str | None = None) -> HtabFd:
        """KVM_PPC_GET_HTAB_FD: an fd-like object to read the table from or
        write it to.  ``flags``: KVM_GET_HTAB_BOLTED_ONLY, KVM_GET_HTAB_WRITE
        (any other bit: OSError EINVAL).  ``byte_order`` of the record
        headers: the host's (default: this machine's); entries are always
        big-endian."""
        flags = int(flags)
        start_index = int(start_index)
        if not 0 <= flags <= M64 or not 0 <= start_index <= M64:
            raise oserror(errno.EINVAL, "flags and start_index are 64-bit unsigned")
        if flags & ~(KVM_GET_HTAB_BOLTED_ONLY | KVM_GET_HTAB_WRITE):
            raise oserror(errno.EINVAL, f"unknown flags {flags:#x}")
        records.check_byte_order(byte_order or sys.byteorder)
        if not (self.hpt.flags.writeable and self.rev.flags.writeable):
            # reads change the reverse map (R/C harvest, modified marks) too
            raise UsageError("this table is read-only: open the VM image for writing")
        return HtabFd(self, flags, start_index, byte_order or sys.byteorder)

    # -- views for people and tests -------------------------------------------

    def valid_mask(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Entries with HPTE_V_VALID or HPTE_V_ABSENT set (what a read calls valid)."""
        low = v_low_bytes(self.hpt[lo:hi])
        return (low & (HPTE_V_VALID | HPTE_V_ABSENT)) != 0

    def count_valid(self, chunk: int = 1 << 22) -> int:
        total = 0
        for lo in range(0, self.npte, chunk):
            total += int(np.count_nonzero(self.valid_mask(lo, lo + chunk)))
        return total

    def guest_view(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """The table as a read reports it, without side effects: (N, 2) '>u8',
        valid entries as record_hpte reports them (HPTE_V_HVLOCK set, absent
        ones valid, R/C harvested), invalid ones zero."""
        hi = self.npte if hi is None else hi
        out = HptSource(self, bolted_only=False).words(lo, hi)
        out[~self.valid_mask(lo, hi)] = 0
        return np.ascontiguousarray(out)

