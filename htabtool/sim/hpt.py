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
import functools
import os
import sys
from collections import Counter

import numpy as np

from htabtool import records
from htabtool.errors import UsageError
from htabtool.hpte import (
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
    HPTE_V_1TB_SEG,
    HPTE_V_ABSENT,
    HPTE_V_BOLTED,
    HPTE_V_COMMON_BITS,
    HPTE_V_HVLOCK,
    HPTE_V_LARGE,
    HPTE_V_SECONDARY,
    HPTE_V_SSIZE_MASK,
    HPTE_V_SSIZE_SHIFT,
    HPTE_V_VALID,
    VRMA_VSID,
)

# -- PAPR, arch/powerpc/include/asm/hvcall.h --------------------------------
H_SUCCESS = 0
H_HARDWARE = -1
H_FUNCTION = -2
H_PRIVILEGE = -3
H_PARAMETER = -4
H_BAD_MODE = -5
H_PTEG_FULL = -6
H_NOT_FOUND = -7

H_EXACT = 1 << (63 - 24)  # use the exact slot or return H_PTEG_FULL
H_R_XLATE = 1 << (63 - 25)
H_READ_4 = 1 << (63 - 26)  # return 4 entries
H_AVPN = 1 << (63 - 32)  # an AVPN is given as a sanity test
H_ANDCOND = 1 << (63 - 33)

# H_BULK_REMOVE translation-specifier high bytes (kvmppc_h_bulk_remove)
H_BULK_REMOVE_TYPE = 0xC000000000000000
H_BULK_REMOVE_REQUEST = 0x4000000000000000
H_BULK_REMOVE_RESPONSE = 0x8000000000000000
H_BULK_REMOVE_END = 0xC000000000000000
H_BULK_REMOVE_CODE = 0x3000000000000000
H_BULK_REMOVE_SUCCESS = 0x0000000000000000
H_BULK_REMOVE_NOT_FOUND = 0x1000000000000000
H_BULK_REMOVE_PARM = 0x2000000000000000
H_BULK_REMOVE_RC = 0x0C00000000000000
H_BULK_REMOVE_FLAGS = 0x0300000000000000
H_BULK_REMOVE_ABSOLUTE = 0x0000000000000000
H_BULK_REMOVE_ANDCOND = 0x0100000000000000
H_BULK_REMOVE_AVPN = 0x0200000000000000
H_BULK_REMOVE_PTEX = 0x00FFFFFFFFFFFFFF

HCALL_NAMES = {
    H_SUCCESS: "H_SUCCESS",
    H_HARDWARE: "H_HARDWARE",
    H_FUNCTION: "H_FUNCTION",
    H_PRIVILEGE: "H_PRIVILEGE",
    H_PARAMETER: "H_PARAMETER",
    H_BAD_MODE: "H_BAD_MODE",
    H_PTEG_FULL: "H_PTEG_FULL",
    H_NOT_FOUND: "H_NOT_FOUND",
}

# -- KVM, include/uapi/linux/kvm.h and arch/powerpc/include/asm/kvm_book3s_64.h
KVM_GET_HTAB_BOLTED_ONLY = 0x1
KVM_GET_HTAB_WRITE = 0x2
PPC_MIN_HPT_ORDER = 18
PPC_MAX_HPT_ORDER = 46

#: host CPUs: POWER8 stores the old HPTE format, POWER9 and POWER10 the
#: ISA 3.0 one (CPU_FTR_ARCH_300)
CPUS = ("POWER8", "POWER9", "POWER10")
DEFAULT_CPU = "POWER8"
#: what an ISA 3.0 host keeps of a written v: hpte_new_to_old_v(hpte_old_to_new_v(v))
ISA300_V_KEPT = HPTE_V_COMMON_BITS | HPTE_V_SSIZE_MASK

# -- SLB and LPCR bits used by the VRMA setup (mmu-hash.h, reg.h) ----------
SLB_VSID_B_1T = 0x4000000000000000
SLB_VSID_SHIFT_1T = 24
SLB_VSID_L = 0x100
SLB_VSID_LP_01 = 0x10
LPCR_VRMASD_SH = 63 - 16
LPCR_VRMASD = 0x1F << LPCR_VRMASD_SH

PP_RWXX = 0
PP_RXRX = 3
PP_RXXX = HPTE_R_PP0 | 2

#: where the simulated host keeps guest RAM (host real address of gpa 0)
HOST_RAM_BASE = 1 << 40
#: the host kernel's base page size (ppc64le: 64K); memslot alignment unit
HOST_PAGE_SHIFT = 16
DEFAULT_BACKING_PAGE_SHIFT = 24

M64 = (1 << 64) - 1
_RC = HPTE_R_R | HPTE_R_C
_U = np.uint64


def _changes_table(method):
    """Mark a SimulatedHPT method as one that changes the table (its
    generation is bumped)."""

    @functools.wraps(method)
    def changing(self, *args, **kwargs):
        self.settle_reads()
        self.generation += 1
        return method(self, *args, **kwargs)

    return changing


def _nm(x: int) -> np.uint64:
    """~x as a uint64 mask."""
    return _U(~x & M64)


def _swapped(x: int) -> np.uint64:
    """The constant x as it reads when a big-endian doubleword holding it is
    read as a little-endian one."""
    return _U(int.from_bytes((x & M64).to_bytes(8, "big"), "little"))


_ROW = np.dtype("V16")  # one entry, as bytes
_LE = np.dtype("<u8")
_SW_ABSENT = _swapped(HPTE_V_ABSENT)
_SW_HVLOCK = _swapped(HPTE_V_HVLOCK)
_SW_RC = _swapped(_RC)
_SW_NOT_MODIFIED = _swapped(~HPTE_GR_MODIFIED)


# -- page sizes: kvmppc_hpte_page_shifts ------------------------------------


def _page_shifts(v: int, r: int) -> tuple[int, int]:
    """(base, actual) page shift of an entry; (0, 0) when it does not decode."""
    if not v & HPTE_V_LARGE:
        return 12, 12
    lphi = (r >> 16) & 0xF
    lp = (r >> 12) & 0xF
    if lp == 0:
        return (24, 24) if not lphi else (0, 0)
    if lp == 1:
        return 16, 16
    if lp == 3:
        return (34, 34) if not lphi else (0, 0)
    if lp == 7:
        return 12, 16
    if lp == 8:
        if not lphi:
            return 16, 24
        if lphi == 3:
            return 12, 24
    return 0, 0


def page_shifts_array(v: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(base, actual) page shifts of native uint64 arrays; 0 where they do not decode."""
    v = np.asarray(v, dtype=np.uint64)
    r = np.asarray(r, dtype=np.uint64)
    large = (v & _U(HPTE_V_LARGE)) != 0
    lp = ((r >> _U(12)) & _U(0xF)).astype(np.uint8)
    lphi = ((r >> _U(16)) & _U(0xF)).astype(np.uint8)
    base = np.zeros(v.shape, dtype=np.uint8)
    actual = np.zeros(v.shape, dtype=np.uint8)
    for cond, b, a in (
        ((lp == 0) & (lphi == 0), 24, 24),
        (lp == 1, 16, 16),
        ((lp == 3) & (lphi == 0), 34, 34),
        (lp == 7, 12, 16),
        ((lp == 8) & (lphi == 0), 16, 24),
        ((lp == 8) & (lphi == 3), 12, 24),
    ):
        base[cond] = b
        actual[cond] = a
    base[~large] = 12
    actual[~large] = 12
    return base, actual


def _hpte_is_writable(r: int) -> bool:
    pp = r & (HPTE_R_PP0 | HPTE_R_PP)
    return pp != PP_RXRX and pp != PP_RXXX


def _hpte_make_readonly(r: int) -> int:
    if (r & HPTE_R_PP0) or (r & HPTE_R_PP) == PP_RWXX:
        return (r & ~HPTE_R_PP & M64) | PP_RXXX
    return r | PP_RXRX


def _slb_pgsize_encoding(psize: int) -> int:
    senc = 0
    if psize > 0x1000:
        senc = SLB_VSID_L
        if psize == 0x10000:
            senc |= SLB_VSID_LP_01
    return senc


def _oserror(code: int, detail: str = "") -> OSError:
    text = os.strerror(code)
    return OSError(code, f"{text}: {detail}" if detail else text)


class SimulatedHPT:
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
        self.npte = 1 << (self.order - 4)
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
        # (see _Suspects); not known until reads have cleaned the whole table
        self._suspects = _Suspects(self.npte)

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
        source = _HptSource(self, bolted_only=False)
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
        _, ashift = _page_shifts(pteh, ptel)
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
        ptel &= ~_RC & M64  # the rmap holds no R/C bits
        return H_SUCCESS, pteh & self._v_kept, ptel, g_ptel

    def _prepare_enter_array(self, pteh: np.ndarray, ptel: np.ndarray):
        """Vectorised :meth:`_prepare_enter`: (rc, hw_v, hw_r, g) arrays."""
        pteh = np.asarray(pteh, dtype=np.uint64)
        ptel = np.asarray(ptel, dtype=np.uint64)
        n = len(pteh)
        rc = np.zeros(n, dtype=np.int64)
        rc[((pteh >> _U(HPTE_V_SSIZE_SHIFT)) & _U(2)) != 0] = H_PARAMETER
        _, ashift = page_shifts_array(pteh, ptel)
        rc[ashift == 0] = H_PARAMETER
        psize = np.left_shift(_U(1), ashift.astype(np.uint64))
        pteh = pteh & _nm(HPTE_V_HVLOCK | HPTE_V_ABSENT | HPTE_V_VALID)
        ptel = ptel & _nm(HPTE_GR_RESERVED)
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
        ram_r = np.where(bad, (ram_r & _nm(HPTE_R_W | HPTE_R_I | HPTE_R_G)) | _U(HPTE_R_M), ram_r)
        ram_r &= _nm(_RC)
        hw_r = np.where(mmio, ptel | _U(HPTE_R_KEY_HI | HPTE_R_KEY_LO), ram_r)
        return rc, hw_v, hw_r, g

    def _store(self, i: int, hw_v: int, hw_r: int, g: int) -> None:
        self._suspects.add(i)
        self.rev[i] = g | (HPTE_GR_MODIFIED if self.hpte_mod_interest else 0)
        self.hpt[i, 1] = hw_r
        self.hpt[i, 0] = hw_v

    @_changes_table
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

    @_changes_table
    def h_remove(self, flags: int, pte_index: int, avpn: int = 0) -> tuple[int, int, int]:
        """H_REMOVE: (return code, the entry's v, its guest-view r)."""
        self.hcalls["H_REMOVE"] += 1
        if not self._in_range(pte_index):
            return H_PARAMETER, 0, 0
        pte = self._v(pte_index) | HPTE_V_HVLOCK  # read under the lock
        if (
            not pte & (HPTE_V_ABSENT | HPTE_V_VALID)
            or (flags & H_AVPN and (pte & ~0x7F) != avpn)
            or (flags & H_ANDCOND and (pte & avpn) != 0)
        ):
            return H_NOT_FOUND, 0, 0
        v = pte & ~HPTE_V_HVLOCK
        self._suspects.add(pte_index)
        if v & HPTE_V_VALID:  # remove_revmap_chain harvests R and C
            self.rev[pte_index] = int(self.rev[pte_index]) | (self._r(pte_index) & _RC)
        r = int(self.rev[pte_index]) & ~HPTE_GR_RESERVED
        self._note_mod(pte_index)
        self.hpt[pte_index, 0] = 0
        if v & HPTE_V_ABSENT:
            v = (v & ~HPTE_V_ABSENT) | HPTE_V_VALID
        return H_SUCCESS, v, r

    @_changes_table
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
                    found = (hp0 & ~0x7F) == args[j + 1]
            if not found:
                args[j] = ((0x90 | flags) << 56) + pte_index
                continue
            args[j] = ((0x80 | flags) << 56) + pte_index
            self._suspects.add(pte_index)
            self._note_mod(pte_index)
            if hp0 & HPTE_V_VALID:
                self.rev[pte_index] = int(self.rev[pte_index]) | (self._r(pte_index) & _RC)
            rcbits = int(self.rev[pte_index]) & _RC
            args[j] |= rcbits << (56 - 5)
            self.hpt[pte_index, 0] = 0
        return ret, args

    # -- H_PROTECT, H_READ, H_CLEAR_REF, H_CLEAR_MOD -----------------------

    @_changes_table
    def h_protect(self, flags: int, pte_index: int, avpn: int = 0) -> int:
        """H_PROTECT: set PP0, PP, N and the key from ``flags``."""
        self.hcalls["H_PROTECT"] += 1
        if not self._in_range(pte_index):
            return H_PARAMETER
        v = self._v(pte_index) | HPTE_V_HVLOCK
        if not v & (HPTE_V_ABSENT | HPTE_V_VALID) or (flags & H_AVPN and (v & ~0x7F) != avpn):
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
            if _hpte_is_writable(r) and not _hpte_is_writable(pte_r):
                r = _hpte_make_readonly(r)
            if r != pte_r:
                self.hpt[pte_index, 1] = r | (pte_r & _RC)
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
                r = (int(self.rev[i]) | (r & _RC)) & ~HPTE_GR_RESERVED
            out += [v, r]
        return H_SUCCESS, out

    @_changes_table
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
            gr |= r & _RC
            if r & HPTE_R_R:
                self.hpt[pte_index, 1] = r & ~HPTE_R_R
        return H_SUCCESS, gr

    @_changes_table
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
            gr |= r & _RC
            if r & HPTE_R_C:
                self.hpt[pte_index, 1] = r & ~HPTE_R_C
        return H_SUCCESS, gr

    # -- the hardware --------------------------------------------------------

    @_changes_table
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

    @_changes_table
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
        bits = np.where(write[ok], _U(_RC), _U(HPTE_R_R))
        # a store and a load to one page: both bits (OR over duplicates)
        order = np.argsort(s, kind="stable")
        s, bits = s[order], bits[order]
        uniq, first = np.unique(s, return_index=True)
        bits = np.bitwise_or.reduceat(bits, first) if len(first) else bits
        self._suspects.add(uniq)
        self.hpt[uniq, 1] = self.hpt[uniq, 1].astype(np.uint64) | bits
        return int(ok.sum())

    # -- the bulk forms -------------------------------------------------------

    @_changes_table
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
        lowbyte = self.hpt.view(np.uint8).reshape(self.npte, 16)[:, 7]
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
                e = int(win[p])  # its primary group is full now
                if secondary:
                    sg = (~int(group[e])) & self.hash_mask
                    for s in range(sg * 8, sg * 8 + 8):
                        if not self._v(s) & (HPTE_V_VALID | HPTE_V_ABSENT | HPTE_V_HVLOCK):
                            self._store(s, int(hw_v[e]) | HPTE_V_SECONDARY, int(hw_r[e]), int(g[e]))
                            slot[e] = s
                            break
                    else:
                        rc[e] = H_PTEG_FULL
                else:
                    rc[e] = H_PTEG_FULL
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

    @_changes_table
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
                found &= (pte & _nm(0x7F)) == avpn[pos]
            if flags & H_ANDCOND:
                found &= (pte & avpn[pos]) == 0
            rc[pos] = np.where(found, H_SUCCESS, H_NOT_FOUND)
            pos, s, v = pos[found], s[found], pte[found] & _nm(HPTE_V_HVLOCK)
            gr = self.rev[s].astype(np.uint64)
            valid = (v & _U(HPTE_V_VALID)) != 0
            gr = np.where(valid, gr | (self.hpt[s, 1].astype(np.uint64) & _U(_RC)), gr)
            out_r[pos] = gr & _nm(HPTE_GR_RESERVED)
            self._suspects.add(s)
            self.rev[s] = gr | mod
            self.hpt[s, 0] = 0
            absent = (v & _U(HPTE_V_ABSENT)) != 0
            out_v[pos] = np.where(absent, (v & _nm(HPTE_V_ABSENT)) | _U(HPTE_V_VALID), v)
        return rc, out_v, out_r

    @_changes_table
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
            found &= ((f & _U(H_AVPN)) == 0) | ((v & _nm(0x7F)) == avpn[pos])
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
                (r & _nm(HPTE_R_PP)) | _U(PP_RXXX),
                r | _U(PP_RXRX),
            )
            r = np.where(demote, ro, r)
            changed = r != pte_r
            self.hpt[s[changed], 1] = r[changed] | (pte_r[changed] & _U(_RC))
        return rc

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

    @_changes_table
    def _map_vrma(self) -> int:
        """kvmppc_map_vrma: one bolted VRMA entry per page of RAM, in slot 7
        of its group, at most one per group and 1T of RAM; the page size is
        the backing page size (4K, 64K or 16M)."""
        porder = 24 if self.backing_page_shift >= 24 else 16 if self.backing_page_shift >= 16 else 12
        psize = 1 << porder
        npages = min(self.ram_size >> porder, 1 << (40 - porder), self.hash_mask + 1)
        hp0 = HPTE_V_1TB_SEG | (VRMA_VSID << (40 - 16)) | HPTE_V_BOLTED | (HPTE_V_LARGE if psize > 0x1000 else 0)
        hp1 = (0x1000 if psize == 0x10000 else 0) | HPTE_R_R | HPTE_R_C | HPTE_R_M | PP_RWXX
        i = np.arange(npages, dtype=np.uint64)
        addr = i << _U(porder)
        h = (i ^ _U((VRMA_VSID ^ (VRMA_VSID << 25)) & M64)) & _U(self.hash_mask)
        idx = (h.astype(np.int64) << 3) + 7
        v = _U(hp0) | ((addr >> _U(16)) & _nm(0x7F))
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
        senc = _slb_pgsize_encoding(1 << pshift)
        self.vrma_slb_v = senc | SLB_VSID_B_1T | (VRMA_VSID << SLB_VSID_SHIFT_1T)
        if not self.isa300:  # ISA 3.0 sets up the partition table instead
            self.lpcr = (self.lpcr & ~LPCR_VRMASD) | (senc << (LPCR_VRMASD_SH - 4))
        self.mmu_ready = True

    # -- the htab fd ---------------------------------------------------------

    def htab_fd(self, flags: int = 0, start_index: int = 0, *, byte_order: str | None = None) -> "HtabFd":
        """KVM_PPC_GET_HTAB_FD: an fd-like object to read the table from or
        write it to.  ``flags``: KVM_GET_HTAB_BOLTED_ONLY, KVM_GET_HTAB_WRITE
        (any other bit: OSError EINVAL).  ``byte_order`` of the record
        headers: the host's (default: this machine's); entries are always
        big-endian."""
        flags = int(flags)
        start_index = int(start_index)
        if not 0 <= flags <= M64 or not 0 <= start_index <= M64:
            raise _oserror(errno.EINVAL, "flags and start_index are 64-bit unsigned")
        if flags & ~(KVM_GET_HTAB_BOLTED_ONLY | KVM_GET_HTAB_WRITE):
            raise _oserror(errno.EINVAL, f"unknown flags {flags:#x}")
        records.check_byte_order(byte_order or sys.byteorder)
        if not (self.hpt.flags.writeable and self.rev.flags.writeable):
            # reads change the reverse map (R/C harvest, modified marks) too
            raise UsageError("this table is read-only: open the VM image for writing")
        return HtabFd(self, flags, start_index, byte_order or sys.byteorder)

    # -- views for people and tests -------------------------------------------

    def valid_mask(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Entries with HPTE_V_VALID or HPTE_V_ABSENT set (what a read calls valid)."""
        low = self.hpt[lo:hi].view(np.uint8)[:, 7]
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
        out = _HptSource(self, bolted_only=False).words(lo, hi)
        out[~self.valid_mask(lo, hi)] = 0
        return np.ascontiguousarray(out)


class _HptSource:
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
        self._seen = None

    def kinds(self, lo: int, hi: int, first_pass: bool) -> np.ndarray:
        hb = self.e.hpt[lo:hi].view(np.uint8)  # (n, 16): v then r, big-endian
        kinds = self._kinds_of(hb[:, 7])
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
        (:class:`_Suspects`): (the dirty entries among the next ``limit``
        suspects, their kinds, the end of the stretch they cover); None when
        the suspects are not known (the caller scans :meth:`kinds`)."""
        known = self.e._suspects.array()
        if known is None:
            return None
        a = int(known.searchsorted(lo))
        b = min(len(known), a + limit)
        hi = int(known[b]) if b < len(known) else self.n_entries
        rows = known[a:b]
        w = self.e.hpt.view(_ROW)[:, 0][rows]
        gr = self.e.rev[rows]
        hb = w.view(np.uint8).reshape(-1, 16)
        dirty = self._pending(hb, gr)
        rows = rows[dirty]
        self._seen = (self.e._suspects.changes, rows, w[dirty], gr[dirty])
        return rows, self._kinds_of(hb[dirty, 7]), hi

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
        return self.e.hpt.view(_ROW)[:, 0][rows].view(np.uint8).reshape(-1, 16), self.e.rev[rows]

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
        pending *= hb[:, 7] & HPTE_V_VALID  # only valid entries have R/C to harvest
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
        pos = None if every else self._from_seen(rows + lo)
        if pos is not None:
            return self._words_of(self._seen[2][pos], self._seen[3][pos], False)
        if every:
            rows = np.arange(hi - lo, dtype=np.int64)
        return self._words_of(e.hpt[lo:hi].view(_ROW)[:, 0][rows], e.rev[lo:hi][rows], every)

    @staticmethod
    def _words_of(w16: np.ndarray, gr: np.ndarray, every: bool) -> np.ndarray:
        """:meth:`words` of entries given as V16 and their guest views."""
        w = w16.view(_LE).reshape(-1, 2)
        v, hr = w[:, 0], w[:, 1]
        out = np.empty((len(w), 2), dtype=_LE)
        vo, ro = out[:, 0], out[:, 1]
        np.bitwise_or(v, _SW_HVLOCK, out=vo)
        np.bitwise_and(hr, _SW_RC, out=ro)  # R and C as the hardware set them ...
        absent = np.bitwise_and(v, _SW_ABSENT)
        if absent.any():
            vo ^= absent
            vo |= absent >> _U(5)  # HPTE_V_ABSENT (bit 5 of the last byte) -> HPTE_V_VALID (bit 0)
            every = True
        if every:  # rows of a valid run have HPTE_V_VALID unless absent
            ro *= (v >> _U(56)) & _U(1)  # ... harvested only for entries with HPTE_V_VALID
        ro |= gr.astype(">u8").view(_LE)  # the guest view, its bytes big-endian
        ro &= _SW_NOT_MODIFIED
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
            self._clear(records._expand_ranges(res.index, res.end - res.index))
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
                harvested = e.hpt[a:b, 1].astype(np.uint64) & _U(_RC) & ((v & _U(HPTE_V_VALID)) * _U(M64))
                e.rev[a:b] = (gr | harvested) & _nm(HPTE_GR_MODIFIED)
            elif len(rows):
                self._clear(rows + a)
        e._suspects.changes += 1
        e._suspects.cleaned(lo, hi)

    def _clear(self, idx: np.ndarray) -> None:
        e = self.e
        e.generation += 1
        pos = self._from_seen(idx)
        if pos is not None:
            w, gr = self._seen[2][pos], self._seen[3][pos]
        else:
            w, gr = e.hpt.view(_ROW)[:, 0][idx], e.rev[idx]
        vr = w.view(">u8").reshape(-1, 2)
        harvested = (vr[:, 1] & _U(_RC)) * ((vr[:, 0] & _U(HPTE_V_VALID)) != 0)
        e.rev[idx] = (gr | harvested) & _nm(HPTE_GR_MODIFIED)
        e._suspects.changes += 1
        if pos is not None:  # what it gathered holds for the entries not cleared yet
            self._seen = (e._suspects.changes,) + self._seen[1:]


class _Suspects:
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
        self.add(records._expand_ranges(index, np.minimum(np.asarray(lengths)[inside], self.npte - index)))

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
        parts = [self.known, *self._arrays]
        if self._ints:
            parts.append(np.array(self._ints, dtype=np.int64))
        if len(parts) > 1:
            # sort and drop repeats (np.unique hashes first: several times slower here)
            merged = np.sort(np.concatenate(parts))
            keep = np.ones(len(merged), dtype=bool)
            np.not_equal(merged[1:], merged[:-1], out=keep[1:])
            self.known = merged[keep]
        self._arrays, self._ints = [], []
        self._count = len(self.known)


#: a burst of reads applies its side effects this many entries at a time
HARVEST_BATCH = 1 << 20


class HtabFd:
    """What KVM_PPC_GET_HTAB_FD returns: ``read(size)`` or ``write(data)``
    as kvm_htab_read and kvm_htab_write behave; ``close()`` (also as a
    context manager).  Errors are OSError with the kernel's errno."""

    def __init__(self, hpt: SimulatedHPT, flags: int, start_index: int, byte_order: str):
        self.hpt = hpt
        self.flags = flags
        self.byte_order = byte_order
        self.index = start_index  # ctx->index
        self.first_pass = True  # ctx->first_pass
        self.closed = False
        self._source = _HptSource(hpt, bool(flags & KVM_GET_HTAB_BOLTED_ONLY))
        self.last_read: records.ReadResult | None = None
        self.write_calls = 0  # write() calls made (write_records: one per record)
        self._unsettled: tuple[int, int] | None = None  # a burst's first-pass side effects not yet applied
        if not self.writable():
            hpt.hpte_mod_interest += 1

    def readable(self) -> bool:
        return not self.flags & KVM_GET_HTAB_WRITE

    def writable(self) -> bool:
        return bool(self.flags & KVM_GET_HTAB_WRITE)

    def close(self) -> None:
        """kvm_htab_release: a read fd no longer asks for modification marks."""
        if not self.closed:
            self._settle()
            self.closed = True
            if self.readable():
                self.hpt.hpte_mod_interest -= 1

    def __enter__(self) -> "HtabFd":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _check(self, want_read: bool) -> None:
        if self.closed or self.readable() != want_read:
            raise _oserror(errno.EBADF)

    # -- read ----------------------------------------------------------------

    def read(self, size: int) -> bytes:
        """One read(2) of ``size`` bytes: whole records, never split; b"" when
        nothing changed since the last read (on an incremental pass)."""
        self._check(want_read=True)
        size = int(size)
        if size < 0:
            raise _oserror(errno.EINVAL, "negative size")
        self.hpt.settle_reads()
        start = self.index
        res = records.encode_read(self._source, start, self.first_pass, size, self.byte_order)
        self.hpt.generation += 1  # the fd moved on: a suspended burst of it must not go on
        self._source.consume(res, start, self.first_pass)
        if res.wrapped:
            self.first_pass = False
        self.index = res.next_index
        self.last_read = res
        return res.data

    def pending(self) -> records.ReadResult:
        """What one unbounded read of a later pass from entry 0 would return
        now (every dirty entry, in its records), without a read's side
        effects: the fd stays where it is and the table as it is.  Costs
        what is dirty once reads have gone over the whole table."""
        self._check(want_read=True)
        self.hpt.settle_reads()
        return records.encode_read(self._source, 0, False, records._UNLIMITED, self.byte_order)

    def reads(self, size: int):
        """``read(size)`` again and again until a read reaches the end of the
        table (or returns nothing), yielding each read's bytes: exactly what
        that many read() calls return, with the table planned once for the
        whole burst.  Nothing may change the table until it ends (its plan
        is made ahead): a read() or close() of the fd while it is suspended
        first applies the side effects of the reads it made, and the burst
        then stops (UsageError if it is resumed), as it does when anything
        else changed the table meanwhile (a hypercall, hardware R/C, a write
        fd, another fd's reads)."""
        self._check(want_read=True)
        size = int(size)
        if size < 0:
            raise _oserror(errno.EINVAL, "negative size")
        self.hpt.settle_reads()
        source = self._source
        first_pass = self.first_pass  # a burst ends where a pass ends
        done = self.index  # a first pass's side effects are applied up to here
        try:
            for res in records.encode_reads(source, self.index, first_pass, size, self.byte_order):
                if first_pass:
                    # a read's side effects touch only entries before the
                    # next read's start: they are applied a million entries
                    # at a time, every entry gone over
                    end = self.hpt.npte if res.wrapped else res.next_index
                    self._unsettled = (done, end)
                    self.hpt._unsettled.add(self)
                    if res.wrapped or end - done >= HARVEST_BATCH:
                        self._settle()
                        done = end
                else:
                    # a later pass: only the entries of its records (the
                    # dirty ones), not a scan of all it skipped
                    source.consume(res, self.index, False)
                if res.wrapped:
                    self.first_pass = False
                self.index = res.next_index
                self.last_read = res
                generation = self.hpt.generation
                yield res.data
                if self.closed or self.hpt.generation != generation:
                    # the rest of the burst was planned before the change (or
                    # the fd moved on): stop, a read() now sees what the plan does not
                    raise UsageError("the table or its fd changed while a burst of reads was suspended: read it again")
        finally:
            self._settle()  # the exact range its reads went over, whoever settles it

    def _settle(self) -> None:
        """Apply the side effects a burst's first-pass reads deferred."""
        self.hpt._unsettled.discard(self)
        if self._unsettled is not None:
            lo, hi = self._unsettled
            self._unsettled = None
            self._source.harvest(lo, hi)

    # -- write ---------------------------------------------------------------

    def write(self, data) -> int:
        """One write(2), parsed exactly as kvm_htab_write parses it.

        Quirk included, on purpose: the kernel moves its input pointer past
        each header (``buf += sizeof(hdr)``) but never past the header's
        entries (they are read through a copy, ``lbuf``), while its byte
        count ``nb`` does count them.  So only the first record of a write()
        is read right: the second "header" is read from the 8 bytes after
        the first header (the first record's first entry), the third from
        the 8 after that, and so on, each with its "entries" right after
        it, until ``nb`` runs past the count.  Records with n_valid = 0
        happen to chain correctly.  A simulator kinder than the kernel
        would let a client that writes many records per write() pass its
        tests and then corrupt a real guest's table; use
        :meth:`write_records` (one record per write(), as QEMU writes) to
        put many records in.

        The return value is the kernel's ``nb``; a trailing record whose
        entries do not fit is left (0 when none fits).  EBUSY while the
        vCPUs run; EINVAL for a record past the table, a valid-run entry
        without HPTE_V_VALID or with a page size that does not decode; EIO
        when H_ENTER refuses an entry.  What was applied before the error
        stays applied, as in the kernel."""
        self._check(want_read=False)
        self.write_calls += 1
        return self._write(_kernel_parse(memoryview(data).cast("B"), self.byte_order))

    def write_records(self, data) -> int:
        """write() of each record of ``data`` in turn, one record per call
        (the way to write several records into the kernel), vectorised: the
        result that many write() calls give.  Returns the bytes of the whole
        records consumed (a trailing partial record is left); the first
        error is raised, the records before it stay applied."""
        self._check(want_read=False)
        batch, used = records.decode_batch(memoryview(data).cast("B"), self.byte_order, scan_bound=self.hpt.npte)
        self.write_calls += len(batch)
        return self._write((batch, used))

    def _write(self, parsed) -> int:
        self._check(want_read=False)
        e = self.hpt
        if e.mmu_ready and e.vcpus_running:
            raise _oserror(errno.EBUSY, "the VM's vCPUs are running")
        e.settle_reads()
        batch, used = parsed
        if not len(batch):
            return used
        e._suspects.add_ranges(batch.index, batch.n_valid + batch.n_invalid)
        err = _apply_records(e, batch)
        if err is not None:
            raise err
        return used


def _kernel_parse(mv: memoryview, byte_order: str) -> tuple[records.RecordBatch, int]:
    """The records kvm_htab_write reads from one write() of ``mv`` and its
    ``nb`` (see :meth:`HtabFd.write`), without a loop per record: the k-th
    header it reads lies at byte 8*k, its entries right after it, and the
    loop goes on while ``nb + 8 <= count`` and ``nb + 16*n_valid <= count``
    (``nb`` summing 8 + 16*n_valid over the records before).  The one
    departure: a record whose entries would be read from past the buffer
    (the kernel's check forgets the header: by up to 8 bytes) ends the
    loop here."""
    count = len(mv)
    n_hdr = count // 8
    if not n_hdr:
        return records.RecordBatch.empty(), 0
    heads = np.frombuffer(mv, dtype=records.header_dtype(byte_order), count=n_hdr)
    nv = heads["n_valid"].astype(np.int64)
    nb = np.concatenate(([0], np.cumsum(8 + 16 * nv)))  # nb before each record, and after the last
    at = 8 * np.arange(n_hdr, dtype=np.int64)
    go = (nb[:-1] + 8 <= count) & (nb[:-1] + 16 * nv <= count) & (at + 8 + 16 * nv <= count)
    k = int(np.argmin(go)) if not go.all() else n_hdr
    nv = nv[:k]
    words = np.frombuffer(mv, dtype=records.ENTRY_DTYPE, count=n_hdr)
    first = np.repeat(np.arange(1, k + 1, dtype=np.int64), nv)  # word of each record's first entry
    within = np.arange(len(first), dtype=np.int64) - np.repeat(np.cumsum(nv) - nv, nv)
    v_word = first + 2 * within
    entries = np.stack((words[v_word], words[v_word + 1]), axis=1) if len(v_word) else np.zeros((0, 2), ">u8")
    batch = records.RecordBatch(
        offset=at[:k],
        index=heads["index"][:k].astype(np.int64),
        n_valid=nv,
        n_invalid=heads["n_invalid"][:k].astype(np.int64),
        entries=np.ascontiguousarray(entries, dtype=records.ENTRY_DTYPE),
    )
    return batch, int(nb[k])


def _apply_records(e: SimulatedHPT, batch: records.RecordBatch) -> OSError | None:
    """kvm_htab_write's loop over whole records, vectorised: find where it
    would fail, apply everything before that point (pass by pass), and
    return the error (or None)."""
    e.generation += 1
    idx, nv, ni = batch.index.copy(), batch.n_valid.copy(), batch.n_invalid.copy()
    nrec = len(idx)
    bad_rec = (idx >= e.npte) | (idx + nv + ni > e.npte)
    first_bad = int(np.argmax(bad_rec)) if bad_rec.any() else nrec
    v = batch.entries[:, 0].astype(np.uint64)
    r = batch.entries[:, 1].astype(np.uint64)
    ent_rec = batch.entry_record()
    base, _ = page_shifts_array(v, r)
    einval = ((v & _U(HPTE_V_VALID)) == 0) | (base == 0)
    rc, hw_v, hw_r, g = e._prepare_enter_array(v, r)
    eio = rc != H_SUCCESS
    failing = np.flatnonzero((einval | eio) & (ent_rec < first_bad))
    err = None
    extra = None
    cut = np.cumsum(nv) - nv  # first entry of each record
    if len(failing):
        f = int(failing[0])
        k = int(ent_rec[f])
        j = f - int(cut[k])
        where = f"record {batch.first_record + k} (index {int(idx[k])}), entry {int(idx[k]) + j}"
        if einval[f]:
            why = "lacks HPTE_V_VALID" if not int(v[f]) & HPTE_V_VALID else "has a page size that does not decode"
            err = _oserror(errno.EINVAL, f"{where} {why}")
        else:
            err = _oserror(errno.EIO, f"{where}: H_ENTER returned {HCALL_NAMES.get(int(rc[f]), int(rc[f]))}")
            extra = int(idx[k]) + j  # the kernel removed the old entry before H_ENTER failed
        nrec_ok = k + 1
        nv[k] = j
        ni[k] = 0
        n_ent = f
    else:
        if first_bad < nrec:
            k = first_bad
            what = "starts past" if idx[k] >= e.npte else "runs past"
            err = _oserror(
                errno.EINVAL,
                f"record {batch.first_record + k} (index {int(idx[k])}, {int(nv[k])} valid, "
                f"{int(ni[k])} invalid) {what} the table of {e.npte} entries",
            )
        nrec_ok = first_bad
        n_ent = int(nv[:first_bad].sum())
    idx, nv, ni = idx[:nrec_ok], nv[:nrec_ok], ni[:nrec_ok]
    if extra is not None:
        idx = np.append(idx, extra)
        nv = np.append(nv, 0)
        ni = np.append(ni, 1)
    ents = slice(0, n_ent)
    _apply_passes(e, idx, nv, ni, v[ents], hw_v[ents], hw_r[ents], g[ents])
    return err


def _apply_passes(e, idx, nv, ni, v, hw_v, hw_r, g) -> None:
    """Apply records in order; runs of ascending, disjoint records (a pass)
    touch every slot at most once, so each run is applied at once."""
    if not len(idx):
        return
    ends = idx + nv + ni
    breaks = records.wrap_starts(idx, ends)  # the one pass rule of the record layer
    bounds = np.concatenate(([0], breaks, [len(idx)]))
    ebounds = np.concatenate(([0], np.cumsum(nv)))
    mod = e._mod_bits()
    for a, b in zip(bounds[:-1], bounds[1:]):
        ea, eb = int(ebounds[a]), int(ebounds[b])
        # valid runs: remove what is there (its side effects are overwritten) and enter
        slots = records._expand_ranges(idx[a:b], nv[a:b])
        if len(slots):
            e.rev[slots] = g[ea:eb] | mod
            e.hpt[slots, 1] = hw_r[ea:eb]
            e.hpt[slots, 0] = hw_v[ea:eb]
            if not e.mmu_ready:
                vr = np.flatnonzero(
                    (v[ea:eb] & _U(~0xFFFFFF & M64)) == _U(HPTE_V_1TB_SEG | (VRMA_VSID << (40 - 16)))
                )
                if len(vr):
                    k = int(vr[0]) + ea
                    vv = int(v[k])
                    base, _ = _page_shifts(vv, int(g[k]))
                    e._setup_vrma_from(vv, base)
        # invalid runs: remove valid or absent entries
        has = ni[a:b] > 0
        if has.any():
            inv = records._expand_ranges((idx[a:b] + nv[a:b])[has], ni[a:b][has])
            hv = e.hpt[inv, 0].astype(np.uint64)
            occ = (hv & _U(HPTE_V_VALID | HPTE_V_ABSENT)) != 0
            if occ.any():
                s = inv[occ]
                gr = e.rev[s].astype(np.uint64)
                valid = (hv[occ] & _U(HPTE_V_VALID)) != 0
                gr = np.where(valid, gr | (e.hpt[s, 1].astype(np.uint64) & _U(_RC)), gr)
                e.rev[s] = gr | mod
                e.hpt[s, 0] = 0
    e.hcalls["H_ENTER"] += int(nv.sum())


__all__ = [
    "SimulatedHPT",
    "HtabFd",
    "H_SUCCESS",
    "H_PARAMETER",
    "H_PTEG_FULL",
    "H_NOT_FOUND",
    "H_EXACT",
    "H_R_XLATE",
    "H_READ_4",
    "H_AVPN",
    "H_ANDCOND",
    "KVM_GET_HTAB_BOLTED_ONLY",
    "KVM_GET_HTAB_WRITE",
    "page_shifts_array",
]
