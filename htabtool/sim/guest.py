"""A seeded, Linux-like guest that fills and churns a simulated HPT.

Strategy: the guest does what a ppc64le Linux guest on the hash MMU does
to its HPT, through the hypercalls a pseries guest uses, and only through
them (:class:`htabtool.sim.hpt.SimulatedHPT`'s bulk forms, each exactly a
sequence of H_ENTER, H_REMOVE or H_PROTECT).  Every entry is placed by the
architecture's hash of (VSID, page) (mmu-hash.h: hpt_vpn, hpt_hash,
hpte_encode_avpn) into the first free slot of its primary group, else of
its secondary group; both full, the guest evicts a random non-bolted entry
with H_REMOVE(H_ANDCOND, HPTE_V_BOLTED) and tries again, as
__hash_page_64K and pSeries_lpar_hpte_remove do.

What the guest maps (64K base pages, as CONFIG_PPC_64K_PAGES):

- the kernel's linear mapping: one bolted 64K entry per 64K of RAM at
  0xc000000000000000 in 1T segments, R|C|M, no-execute outside the kernel
  text, the kernel image made read-only with H_PROTECT (mark_rodata_ro);
- the vmemmap (bolted, 64 bytes of struct page per 64K page), some
  vmalloc pages and I/O mappings (cache-inhibited, guarded, outside guest
  RAM, so KVM makes them HPTE_V_ABSENT);
- user processes in 256M segments below 1T and 1T segments above, each
  with its own context and so its own VSIDs (get_vsid, vsid_scramble):
  text read-only, data/heap/stack read-write, read-only until first written
  (a write fault upgrades the entry with H_PROTECT, and the hardware sets C).

Churn is a sequence of events -- fork (copy-on-write: the parent's
writable entries are flushed), exec (a new context, the old entries
flushed), exit, mmap, munmap, page faults, first writes, accesses, vmalloc
and vfree -- drawn at a profile's rate and mix.  The guest's own
bookkeeping (Linux keeps it in its page tables) is one 64-bit word per HPT
slot, ``gmap``: which context and page the guest believes is there; it
removes and re-protects with H_AVPN, so entries replaced behind its back
(by a load through the htab fd) are found missing, not corrupted.

Everything is seeded (numpy PCG64) and the generator state is part of
:meth:`Guest.state`, so the same seed and the same calls give the same
table, in one process or across many.

Calibration.  The ``idle`` profile is set on a real capture (QEMU 7.2,
pseries, POWER8 CPU, Linux 6.1, 4G RAM: htab_shift 25, about 65,700 valid
entries, almost all bolted 64K linear-map entries in 1T segments, first-pass
records of one entry).  A 4G idle guest here (seeds 1-3) boots with
65,665-65,671 valid entries in an order-25 table: 65,536 linear-map and 64
vmemmap entries (bolted), 4 I/O, about 25 vmalloc and 40 user entries; run
for a few minutes of guest time it stays at 65,680-65,790.  99.96 % of its
first-pass records hold one valid entry (the rest two).  An 8G guest gives
about 131,290 (the capture: about 131,000, htab_shift 26).  Not modelled:
the host side's own churn (KSM, page migration, host swapping make KVM
mark entries absent), transparent huge pages, and 4K or 16M guest pages.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from htabtool.errors import UsageError
from htabtool.hpte import (
    HPTE_R_C,
    HPTE_R_G,
    HPTE_R_I,
    HPTE_R_M,
    HPTE_R_N,
    HPTE_R_R,
    HPTE_V_BOLTED,
    HPTE_V_LARGE,
    HPTE_V_SECONDARY,
    HPTE_V_VALID,
)
from htabtool.sim.hpt import SimulatedHPT
from htabtool.sim.mmu import GUEST_PAGE_SHIFT, ram_order
from htabtool.sim.papr import H_ANDCOND, H_AVPN, H_SUCCESS
from htabtool.sim.profiles import PROFILES, Profile, get_profile, profile_names
from htabtool.sim.vmformat import guest_summary

STATE_VERSION = 1

# -- the Linux hash MMU's address space (mmu-hash.h, 64K pages) -------------
SID_SHIFT = 28
SID_SHIFT_1T = 40
VA_BITS = 68
CONTEXT_BITS = 19
ESID_BITS = VA_BITS - (SID_SHIFT + CONTEXT_BITS)
ESID_BITS_1T = VA_BITS - (SID_SHIFT_1T + CONTEXT_BITS)
VSID_MULTIPLIER = 12538073  # a 24-bit prime, for both segment sizes
PAGE_SHIFT = GUEST_PAGE_SHIFT  # the guest's base page size: 64K
LP_64K = 0x1000  # the LP encoding of a 64K page in the second doubleword

LINEAR_BASE = 0xC000000000000000
VMALLOC_BASE = 0xC008000000000000
IO_BASE = 0xC00A000000000000
VMEMMAP_BASE = 0xC00C000000000000
CTX_LINEAR, CTX_VMALLOC, CTX_IO, CTX_VMEMMAP = 1, 5, 6, 7
FIRST_USER_CONTEXT = 8
KERNEL_BASES = {CTX_LINEAR: LINEAR_BASE, CTX_VMALLOC: VMALLOC_BASE, CTX_IO: IO_BASE, CTX_VMEMMAP: VMEMMAP_BASE}
CONTEXT_EA_BITS = 49  # each context maps 512T

KERNEL_TEXT = 24 << 20  # the linear map's executable part (the kernel image)
KERNEL_RODATA_END = 32 << 20  # made read-only at boot
IO_PHYS_BASE = 0x200080000000  # a PCI memory window of a pseries PHB, outside RAM
USER_TEXT = 0x100000000  # ELF_ET_DYN_BASE: PIE executables, 256M segments
USER_MMAP_TOP = 0x7FFFF0000000  # just below 128T (TASK_SIZE): 1T segments

PP_KERNEL_RW = 0x0  # PP=0b000: kernel read/write
PP_USER_RW = 0x2  # PP=0b010
PP_USER_RO = 0x3  # PP=0b011 (also writable but clean pages)

# gmap: the guest's record of each HPT slot
G_PRESENT = 1 << 63
G_CLEAN = 1 << 62  # writable page mapped read-only until written
CTX_SHIFT = 40
CTX_MASK = (1 << CONTEXT_BITS) - 1
PAGE_MASK = (1 << 33) - 1  # page number (64K) within a context's 512T

_U = np.uint64


def vsid_scramble(protovsid: int, vsid_bits: int) -> int:
    return (protovsid * VSID_MULTIPLIER) % ((1 << vsid_bits) - 1)


def get_vsid(context: int, ea: int, ssize: int) -> int:
    """Linux's get_vsid: the VSID of ``ea`` in ``context`` (ssize 0: 256M, 1: 1T)."""
    if ssize == 0:
        proto = (context << ESID_BITS) | ((ea >> SID_SHIFT) & ((1 << ESID_BITS) - 1))
        return vsid_scramble(proto, VA_BITS - SID_SHIFT)
    proto = (context << ESID_BITS_1T) | ((ea >> SID_SHIFT_1T) & ((1 << ESID_BITS_1T) - 1))
    return vsid_scramble(proto, VA_BITS - SID_SHIFT_1T)


def segment_size(context: int, ea: int) -> int:
    """The kernel uses 1T segments; user space 1T segments above 1T only."""
    if context < FIRST_USER_CONTEXT:
        return 1
    return 1 if ea >= (1 << SID_SHIFT_1T) else 0


class _Vsids:
    """VSIDs per (context, segment), computed once each."""

    def __init__(self):
        self.cache: dict[tuple[int, int, int], int] = {}

    def for_pages(self, ctx: np.ndarray, ea: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(vsid, ssize) arrays for context/EA arrays."""
        ctx = np.asarray(ctx, dtype=np.int64)
        ea = np.asarray(ea, dtype=np.uint64)
        user = ctx >= FIRST_USER_CONTEXT
        ssize = np.where(user & (ea < _U(1 << SID_SHIFT_1T)), 0, 1).astype(np.int64)
        esid = np.where(ssize == 1, ea >> _U(SID_SHIFT_1T), ea >> _U(SID_SHIFT)).astype(np.int64)
        keys = np.stack([ctx, esid, ssize], axis=1)
        uniq, inv = np.unique(keys, axis=0, return_inverse=True)
        vals = np.empty(len(uniq), dtype=np.uint64)
        for k, (c, s, z) in enumerate(uniq.tolist()):
            key = (c, s, z)
            if key not in self.cache:
                shift = SID_SHIFT_1T if z else SID_SHIFT
                self.cache[key] = get_vsid(c, s << shift, z)
            vals[k] = self.cache[key]
        return vals[inv.reshape(-1)], ssize


def hash_pages(vsid: np.ndarray, ssize: np.ndarray, ea: np.ndarray):
    """hpt_vpn and hpt_hash for 64K pages: (vpn, hash) uint64 arrays."""
    ea = np.asarray(ea, dtype=np.uint64)
    one_t = ssize == 1
    s_shift = np.where(one_t, _U(SID_SHIFT_1T - 12), _U(SID_SHIFT - 12))
    mask = (_U(1) << s_shift) - _U(1)
    vpn = (vsid << s_shift) | ((ea >> _U(12)) & mask)
    page = (vpn & mask) >> _U(PAGE_SHIFT - 12)
    h256 = (vpn >> _U(SID_SHIFT - 12)) ^ page
    h1t = vsid ^ (vsid << _U(25)) ^ page
    h = np.where(one_t, h1t, h256) & _U(0x7FFFFFFFFF)
    return vpn, h


def encode_v(vpn: np.ndarray, ssize: np.ndarray, vflags) -> np.ndarray:
    """hpte_encode_v for a 64K page (no AVPN bits masked), HPTE_V_VALID set."""
    avpn = ((vpn >> _U(23 - 12)) << _U(7)) | (ssize.astype(np.uint64) << _U(62))
    return avpn | _U(HPTE_V_LARGE | HPTE_V_VALID) | np.asarray(vflags, dtype=np.uint64)


def encode_avpn(vpn: np.ndarray, ssize: np.ndarray) -> np.ndarray:
    return ((vpn >> _U(23 - 12)) << _U(7)) | (ssize.astype(np.uint64) << _U(62))


# -- the guest ----------------------------------------------------------------


@dataclass
class RunStats:
    """What a :meth:`Guest.run` did."""

    events: Counter = field(default_factory=Counter)
    entered: int = 0
    removed: int = 0
    protected: int = 0
    touched: int = 0
    evicted: int = 0
    lost: int = 0  # entries the guest found replaced behind its back
    failed: int = 0  # pages that found no slot even after evictions
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "events": dict(sorted(self.events.items())),
            "entered": self.entered,
            "removed": self.removed,
            "protected": self.protected,
            "touched": self.touched,
            "evicted": self.evicted,
            "lost": self.lost,
            "failed": self.failed,
            "seconds": round(self.seconds, 6),
        }


class Guest:
    """The guest side of a :class:`SimulatedHPT`: a Linux-like kernel and its
    processes.  ``gmap`` is the guest's record of the table (one uint64 per
    slot); ``state`` the rest, JSON-able.  Use :meth:`boot` to make one."""

    def __init__(self, hpt: SimulatedHPT, gmap: np.ndarray, state: dict):
        if gmap.shape != (hpt.npte,):
            raise UsageError("gmap must have one word per HPT entry")
        self.hpt = hpt
        self.gmap = gmap
        self.state = state
        self.profile = get_profile(state["profile"])
        self.rng = np.random.Generator(np.random.PCG64())
        self.rng.bit_generator.state = state["rng"]
        self._vsids = _Vsids()
        self._index: dict[int, np.ndarray] | None = None
        self.stats = RunStats()

    # -- creation -------------------------------------------------------------

    @classmethod
    def boot(cls, hpt: SimulatedHPT, profile: str, seed: int, gmap: np.ndarray | None = None) -> Guest:
        """A new guest on an empty table: the kernel's mappings, then the
        profile's boot programs.  The vCPUs are left running (profile
        ``empty``: stopped, the MMU not ready, nothing mapped)."""
        prof = get_profile(profile)
        rng = np.random.Generator(np.random.PCG64(seed))
        state = {
            "version": STATE_VERSION,
            "profile": prof.name,
            "seed": int(seed),
            "rng": rng.bit_generator.state,
            "clock": 0.0,
            "events": 0,
            "next_pid": 1,
            "next_context": FIRST_USER_CONTEXT,
            "processes": [],
            "vmalloc_next": 0,
            "shm": None,
            "totals": {},
        }
        if gmap is None:
            gmap = np.zeros(hpt.npte, dtype="<u8")
        guest = cls(hpt, gmap, state)
        if prof.name == "empty":
            return guest
        hpt.cont()
        guest._boot_kernel()
        for name in prof.boot:
            guest._spawn(name, parent=0)
        if prof.shm_fraction:
            guest._boot_database()
        guest._save_rng()
        guest._add_totals()
        return guest

    def _boot_kernel(self) -> None:
        ram = self.hpt.ram_size
        # the linear mapping: every 64K of RAM, bolted
        pa = np.arange(0, ram, 1 << PAGE_SHIFT, dtype=np.uint64)
        text = pa < _U(KERNEL_TEXT)
        rflags = np.where(text, _U(0), _U(HPTE_R_N)) | _U(HPTE_R_R | HPTE_R_C | HPTE_R_M | PP_KERNEL_RW)
        slots = self._map(CTX_LINEAR, pa, pa, rflags, bolted=True)
        # mark_rodata_ro: the kernel image read-only (PP_RXXX) by H_PROTECT
        ro = slots[(pa < _U(KERNEL_RODATA_END)) & (slots >= 0)]
        self.hpt.bulk_protect(ro, 0x100 | 0x2)
        self.stats.protected += len(ro)
        # the vmemmap: 64 bytes of struct page per 64K page, at the top of RAM
        npages = max(1, math.ceil((ram >> PAGE_SHIFT) * 64 / (1 << PAGE_SHIFT)))
        ea = np.arange(npages, dtype=np.uint64) << _U(PAGE_SHIFT)
        top = _U(ram) - (_U(npages) << _U(PAGE_SHIFT))
        self._map(CTX_VMEMMAP, ea, top + ea, _U(HPTE_R_N | HPTE_R_R | HPTE_R_C | HPTE_R_M), bolted=True)
        # vmalloc (modules, stacks, buffers): faulted in, not bolted
        n = max(1, round(self.profile.vmalloc_pages * ram / (4 << 30))) if self.profile.vmalloc_pages else 0
        self._vmalloc(n)
        # I/O mappings: outside RAM, cache-inhibited and guarded
        if self.profile.io_pages:
            k = np.arange(self.profile.io_pages, dtype=np.uint64)
            ea = k << _U(PAGE_SHIFT)
            flags = _U(HPTE_R_N | HPTE_R_R | HPTE_R_C | HPTE_R_I | HPTE_R_G)
            self._map(CTX_IO, ea, _U(IO_PHYS_BASE) + ea, flags, bolted=False)

    def _boot_database(self) -> None:
        """A shared buffer pool in the first database process, and backends
        forked from it with part of the pool resident."""
        prof = self.profile
        owner = next(p for p in self.state["processes"] if p["comm"] == "postgres")
        npages = int(self.hpt.ram_size * prof.shm_fraction) >> PAGE_SHIFT
        pa_base = int(self._random_pages(1)[0])
        pa_base = min(pa_base, max(0, (self.hpt.ram_size >> PAGE_SHIFT) - npages)) << PAGE_SHIFT
        self.state["shm"] = {"pages": npages, "pa": pa_base}
        vma = self._add_vma(owner, npages, "rw-", "shm", shared_pa=pa_base)
        self._fault_vma(owner, vma, npages, write_fraction=0.7)
        for _ in range(prof.shm_backends):
            child = self._fork(owner)
            vma = next(v for v in child["vmas"] if v[3] == "shm")
            self._fault_vma(child, vma, max(1, int(npages * self.rng.uniform(0.05, 0.25))), write_fraction=0.5)

    # -- mapping pages ----------------------------------------------------------

    def _ea_of(self, ctx: int, page: np.ndarray) -> np.ndarray:
        base = KERNEL_BASES.get(ctx, 0)
        return _U(base) + (np.asarray(page, dtype=np.uint64) << _U(PAGE_SHIFT))

    def _map(self, ctx: int, ea, pa, rflags, *, bolted: bool, clean=None) -> np.ndarray:
        """Insert 64K pages of one context (EA offsets within the context's
        region for the kernel, full EAs for users): H_ENTER in the primary
        group, else the secondary, else evict and retry.  Returns the slots
        (-1 where even that failed)."""
        ea = np.asarray(ea, dtype=np.uint64)
        n = len(ea)
        if not n:
            return np.zeros(0, dtype=np.int64)
        full_ea = ea if ctx >= FIRST_USER_CONTEXT else _U(KERNEL_BASES[ctx]) + ea
        vsid, ssize = self._vsids.for_pages(np.full(n, ctx), full_ea)
        vpn, h = hash_pages(vsid, ssize, full_ea)
        v = encode_v(vpn, ssize, _U(HPTE_V_BOLTED if bolted else 0))
        r = (np.asarray(pa, dtype=np.uint64) & _U(~0xFFFF & ((1 << 64) - 1))) | _U(LP_64K)
        r = r | np.broadcast_to(np.asarray(rflags, dtype=np.uint64), r.shape)
        group = (h & _U(self.hpt.hash_mask)).astype(np.int64)
        rc, slots = self.hpt.bulk_enter(group, v, r)
        for k in np.flatnonzero(rc != H_SUCCESS):
            slots[k] = self._insert_evicting(int(group[k]), int(v[k]), int(r[k]))
        ok = slots >= 0
        self.stats.entered += int(ok.sum())
        self.stats.failed += int((~ok).sum())
        page = ((full_ea & _U((1 << CONTEXT_EA_BITS) - 1)) >> _U(PAGE_SHIFT)).astype(np.uint64)
        words = _U(G_PRESENT) | (_U(ctx) << _U(CTX_SHIFT)) | page
        if clean is not None:
            words = np.where(np.asarray(clean, dtype=bool), words | _U(G_CLEAN), words)
        s = slots[ok]
        self._forget_slots(s)  # evictions may have reused slots
        self.gmap[s] = words[ok]
        self._index_add(ctx, s)
        return slots

    def _insert_evicting(self, group: int, v: int, r: int) -> int:
        """__hash_page_64K's repeat loop for one page whose groups are full:
        evict a non-bolted entry (pSeries_lpar_hpte_remove) and insert."""
        hpt = self.hpt
        for _ in range(4):
            target = group if self.rng.integers(0, 2) else (~group) & hpt.hash_mask
            start = int(self.rng.integers(0, 8))
            for i in range(8):
                slot = target * 8 + ((start + i) & 7)
                rc, _, _ = hpt.h_remove(H_ANDCOND, slot, HPTE_V_BOLTED)
                if rc == H_SUCCESS:
                    self.stats.evicted += 1
                    self._forget_slots(np.array([slot]))
                    break
            rc, slot = hpt.h_enter(0, group * 8, v, r)
            if rc != H_SUCCESS:
                sg = (~group) & hpt.hash_mask
                rc, slot = hpt.h_enter(0, sg * 8, v | HPTE_V_SECONDARY, r)
            if rc == H_SUCCESS:
                return slot
        return -1

    def _unmap_slots(self, slots: np.ndarray) -> int:
        """Flush the guest's entries at ``slots`` (H_REMOVE with H_AVPN, as
        flush_hash_range / H_BULK_REMOVE do)."""
        slots = np.asarray(slots, dtype=np.int64)
        if not len(slots):
            return 0
        words = self.gmap[slots].astype(np.uint64)
        avpn = self._avpn_of(words)
        rc, _, _ = self.hpt.bulk_remove(slots, H_AVPN, avpn)
        done = int((rc == H_SUCCESS).sum())
        self.stats.removed += done
        self.stats.lost += len(slots) - done
        self._forget_slots(slots)
        return done

    def _avpn_of(self, words: np.ndarray) -> np.ndarray:
        """The AVPN (and B field) the guest expects at slots holding ``words``."""
        ctx = ((words >> _U(CTX_SHIFT)) & _U(CTX_MASK)).astype(np.int64)
        page = words & _U(PAGE_MASK)
        ea = page << _U(PAGE_SHIFT)
        for c, base in KERNEL_BASES.items():
            ea = np.where(ctx == c, ea + _U(base), ea)
        vsid, ssize = self._vsids.for_pages(ctx, ea)
        vpn, _ = hash_pages(vsid, ssize, ea)
        return encode_avpn(vpn, ssize)

    # -- the slot index ------------------------------------------------------------

    def _ensure_index(self) -> dict[int, np.ndarray]:
        if self._index is None:
            present = np.flatnonzero((self.gmap >> _U(63)) != 0)
            ctx = ((self.gmap[present] >> _U(CTX_SHIFT)) & _U(CTX_MASK)).astype(np.int64)
            order = np.argsort(ctx, kind="stable")
            ctx, present = ctx[order], present[order]
            cuts = np.flatnonzero(np.diff(ctx)) + 1
            self._index = {
                int(c[0]): p for c, p in zip(np.split(ctx, cuts), np.split(present, cuts)) if len(c)
            }
        return self._index

    def _index_add(self, ctx: int, slots: np.ndarray) -> None:
        """Each context's slots stay sorted, so that choices among them do
        not depend on the order of past events (a reopened image builds its
        index afresh, sorted)."""
        if self._index is None or not len(slots):
            return
        old = self._index.get(ctx)
        self._index[ctx] = np.sort(slots) if old is None else np.union1d(old, slots)

    def _forget_slots(self, slots: np.ndarray) -> None:
        """The guest no longer has an entry at ``slots``."""
        slots = np.asarray(slots, dtype=np.int64)
        words = self.gmap[slots].astype(np.uint64)
        present = (words >> _U(63)) != 0
        if not present.any():
            return
        slots, words = slots[present], words[present]
        self.gmap[slots] = 0
        if self._index is None:
            return
        ctxs = ((words >> _U(CTX_SHIFT)) & _U(CTX_MASK)).astype(np.int64)
        for c in np.unique(ctxs).tolist():
            cur = self._index.get(c)
            if cur is not None:
                keep = ~np.isin(cur, slots[ctxs == c])
                self._index[c] = cur[keep]

    def slots_of(self, ctx: int) -> np.ndarray:
        return self._ensure_index().get(ctx, np.zeros(0, dtype=np.int64))

    # -- processes -----------------------------------------------------------------

    def _random_pages(self, n: int) -> np.ndarray:
        """Random 64K pages of RAM above the kernel image (page numbers)."""
        lo = KERNEL_RODATA_END >> PAGE_SHIFT
        hi = self.hpt.ram_size >> PAGE_SHIFT
        if hi <= lo:
            lo = 0
        return self.rng.integers(lo, hi, size=n).astype(np.uint64)

    def _new_context(self) -> int:
        ctx = self.state["next_context"]
        contexts = (1 << CONTEXT_BITS) - 2 - FIRST_USER_CONTEXT
        self.state["next_context"] = FIRST_USER_CONTEXT + ((ctx + 1 - FIRST_USER_CONTEXT) % contexts)
        return ctx

    def _add_vma(self, proc: dict, npages: int, prot: str, kind: str, shared_pa: int | None = None,
                 start: int | None = None) -> list:
        if start is None:
            if kind in ("text", "data", "heap"):
                start = proc.setdefault("brk", USER_TEXT)
                proc["brk"] = start + (npages << PAGE_SHIFT)
            else:
                top = proc.setdefault("mmap_top", USER_MMAP_TOP)
                start = top - (npages << PAGE_SHIFT)
                proc["mmap_top"] = start - (1 << PAGE_SHIFT)  # a guard page
        vma = [int(start), int(npages), prot, kind, shared_pa]
        proc["vmas"].append(vma)
        return vma

    def _exec_image(self, proc: dict, name: str) -> None:
        img = self.profile.programs[name]
        proc["comm"] = name
        proc["vmas"] = []
        proc.pop("brk", None)
        proc.pop("mmap_top", None)
        proc["ctx"] = self._new_context()
        plan = [
            (img.text, "r-x", "text"),
            (img.data, "rw-", "data"),
            (img.heap, "rw-", "heap"),
            (img.libs, "r-x", "libs"),
            (img.stack, "rw-", "stack"),
        ]
        for npages, prot, kind in plan:
            if npages:
                vma = self._add_vma(proc, npages, prot, kind)
                want = int(round(npages * img.resident * self.rng.uniform(0.7, 1.0)))
                self._fault_vma(proc, vma, max(1, want), write_fraction=0.6)

    def _spawn(self, name: str, parent: int) -> dict:
        proc = {"pid": self.state["next_pid"], "ppid": parent, "comm": name, "ctx": 0, "vmas": []}
        self.state["next_pid"] += 1
        self.state["processes"].append(proc)
        self._exec_image(proc, name)
        return proc

    def _resident_pages(self, proc: dict) -> tuple[np.ndarray, np.ndarray]:
        """(slots, EA) of a process's entries."""
        slots = self.slots_of(proc["ctx"])
        page = self.gmap[slots].astype(np.uint64) & _U(PAGE_MASK)
        return slots, page << _U(PAGE_SHIFT)

    def _fault_vma(self, proc: dict, vma: list, n: int, write_fraction: float) -> int:
        """Fault in up to ``n`` not yet resident pages of ``vma``."""
        start, npages, prot, kind, shared_pa = vma
        n = min(n, npages)
        if n <= 0:
            return 0
        cand = self.rng.choice(npages, size=n, replace=False).astype(np.uint64)
        ea = _U(start) + (cand << _U(PAGE_SHIFT))
        _, resident = self._resident_pages(proc)
        new = ~np.isin(ea, resident)
        ea, cand = ea[new], cand[new]
        if not len(ea):
            return 0
        if shared_pa is not None:
            pa = _U(shared_pa) + (cand << _U(PAGE_SHIFT))
        else:
            pa = self._random_pages(len(ea)) << _U(PAGE_SHIFT)
        writable = "w" in prot
        write = self.rng.random(len(ea)) < write_fraction if writable else np.zeros(len(ea), dtype=bool)
        n_bit = _U(0) if "x" in prot else _U(HPTE_R_N)
        rflags = np.where(write, _U(PP_USER_RW | HPTE_R_C), _U(PP_USER_RO)) | _U(HPTE_R_R | HPTE_R_M) | n_bit
        clean = (~write) & writable
        slots = self._map(proc["ctx"], ea, pa, rflags, bolted=False, clean=clean)
        return int((slots >= 0).sum())

    def _fork(self, parent: dict) -> dict:
        """fork: the child gets a new context and the parent's mappings;
        the parent's private writable pages become copy-on-write, which on
        the hash MMU flushes their entries."""
        child = {
            "pid": self.state["next_pid"],
            "ppid": parent["pid"],
            "comm": parent["comm"],
            "ctx": self._new_context(),
            "vmas": [list(v) for v in parent["vmas"]],
        }
        for key in ("brk", "mmap_top"):
            if key in parent:
                child[key] = parent[key]
        self.state["next_pid"] += 1
        self.state["processes"].append(child)
        slots, ea = self._resident_pages(parent)
        cow = np.zeros(len(ea), dtype=bool)
        for start, npages, prot, _kind, shared_pa in parent["vmas"]:
            if "w" in prot and shared_pa is None:
                cow |= (ea >= _U(start)) & (ea < _U(start + (npages << PAGE_SHIFT)))
        self._unmap_slots(slots[cow])
        # the child runs a little before it execs or works: its stack and some text
        for vma in child["vmas"]:
            if vma[3] in ("stack", "text") and vma[4] is None:
                self._fault_vma(child, vma, max(1, vma[1] // 8), write_fraction=0.5)
        return child

    def _exit(self, proc: dict) -> None:
        slots, _ = self._resident_pages(proc)
        self._unmap_slots(slots)
        if self._index is not None:
            self._index.pop(proc["ctx"], None)
        self.state["processes"].remove(proc)

    def _exec(self, proc: dict, name: str) -> None:
        slots, _ = self._resident_pages(proc)
        self._unmap_slots(slots)
        if self._index is not None:
            self._index.pop(proc["ctx"], None)
        self._exec_image(proc, name)

    def _vmalloc(self, n: int) -> None:
        if n <= 0:
            return
        first = self.state["vmalloc_next"]
        self.state["vmalloc_next"] = first + n + 1
        page = np.arange(first, first + n, dtype=np.uint64)
        pa = self._random_pages(n) << _U(PAGE_SHIFT)
        flags = _U(HPTE_R_N | HPTE_R_R | HPTE_R_C | HPTE_R_M | PP_KERNEL_RW)
        self._map(CTX_VMALLOC, page << _U(PAGE_SHIFT), pa, flags, bolted=False)

    # -- events ----------------------------------------------------------------------

    def _pick(self, exclude_init: bool = True) -> dict | None:
        procs = self.state["processes"]
        cand = [p for p in procs if not (exclude_init and p["pid"] == 1)]
        if not cand:
            return None
        return cand[int(self.rng.integers(0, len(cand)))]

    def _event(self, name: str) -> None:
        """One event of the churn: its handler (:data:`EVENTS`) runs; a
        handler may turn into another event (a fork with the process table
        full is an exit), which is then counted instead."""
        self.stats.events[EVENTS[name](self) or name] += 1

    def _on_fork(self) -> str | None:
        prof, procs = self.profile, self.state["processes"]
        if len(procs) >= prof.max_procs:
            self._on_exit()
            return "exit"
        # clients are started by the shell, not by the servers
        cand = [p for p in procs if p["comm"] not in prof.persistent] or procs
        if cand:
            self._fork(cand[int(self.rng.integers(0, len(cand)))])
        return None

    def _on_exec(self) -> None:
        prof, procs, rng = self.profile, self.state["processes"], self.rng
        boot = len(prof.boot)
        cand = [p for p in procs if p["pid"] > boot and p["comm"] not in prof.persistent]
        if not cand and len(procs) < prof.max_procs and procs:
            cand = [self._fork(procs[-1])]
        proc = cand[int(rng.integers(0, len(cand)))] if cand else None
        if proc is not None:
            names = list(prof.exec_mix)
            w = np.array([prof.exec_mix[k] for k in names], dtype=float)
            self._exec(proc, names[int(rng.choice(len(names), p=w / w.sum()))])

    def _on_exit(self) -> None:
        prof, procs = self.profile, self.state["processes"]
        # never the boot programs
        cand = [p for p in procs if p["pid"] > len(prof.boot) and p["comm"] not in prof.persistent]
        if cand:
            self._exit(cand[int(self.rng.integers(0, len(cand)))])

    def _on_fault(self) -> None:
        proc = self._pick(exclude_init=False)
        if proc is not None and proc["vmas"]:
            vma = proc["vmas"][int(self.rng.integers(0, len(proc["vmas"])))]
            n = int(self.rng.geometric(1 / max(1, self.profile.fault_pages)))
            self._fault_vma(proc, vma, n, write_fraction=0.5)

    def _on_write(self) -> None:
        proc = self._pick(exclude_init=False)
        if proc is not None:
            self._first_writes(proc, int(self.rng.integers(1, 17)))

    def _on_touch(self) -> None:
        self._touch(64)

    def _on_mmap(self) -> None:
        proc = self._pick()
        if proc is not None:
            npages = int(self.rng.integers(1, 64))
            vma = self._add_vma(proc, npages, "rw-" if self.rng.random() < 0.7 else "r--", "mmap")
            self._fault_vma(proc, vma, max(1, npages // 2), write_fraction=0.5)

    def _on_munmap(self) -> None:
        proc = self._pick()
        if proc is None:
            return
        cand = [v for v in proc["vmas"] if v[3] == "mmap"]
        if cand:
            vma = cand[int(self.rng.integers(0, len(cand)))]
            slots, ea = self._resident_pages(proc)
            inside = (ea >= _U(vma[0])) & (ea < _U(vma[0] + (vma[1] << PAGE_SHIFT)))
            self._unmap_slots(slots[inside])
            proc["vmas"].remove(vma)

    def _on_vmalloc(self) -> None:
        self._vmalloc(int(self.rng.integers(1, 9)))

    def _on_vfree(self) -> None:
        slots = self.slots_of(CTX_VMALLOC)
        if len(slots) > 8:
            k = int(self.rng.integers(1, 9))
            self._unmap_slots(slots[self.rng.choice(len(slots), size=min(k, len(slots)), replace=False)])

    def _first_writes(self, proc: dict, n: int) -> None:
        """Writes to writable pages mapped read-only while clean: the guest
        upgrades each entry with H_PROTECT (PP=0b010; C is not set by the
        hypercall) and the store makes the hardware set C."""
        slots = self.slots_of(proc["ctx"])
        if not len(slots):
            return
        words = self.gmap[slots].astype(np.uint64)
        clean = slots[(words & _U(G_CLEAN)) != 0]
        if not len(clean):
            return
        pick = clean[self.rng.choice(len(clean), size=min(n, len(clean)), replace=False)]
        words = self.gmap[pick].astype(np.uint64)
        # keep N as the page had it: read it from the guest's own view
        n_bits = self.hpt.rev[pick].astype(np.uint64) & _U(HPTE_R_N)
        rc = self.hpt.bulk_protect(pick, _U(PP_USER_RW) | n_bits | _U(H_AVPN), self._avpn_of(words))
        ok = rc == H_SUCCESS
        self.stats.protected += int(ok.sum())
        self.stats.lost += int((~ok).sum())
        self.gmap[pick[ok]] = words[ok] & _U(~G_CLEAN & ((1 << 64) - 1))
        self._forget_slots(pick[~ok])
        self.stats.touched += self.hpt.touch_many(pick[ok], True)

    def _touch(self, n: int) -> None:
        """Accesses to random mapped pages: the hardware sets R."""
        idx = self._ensure_index()
        if not idx:
            return
        allslots = np.concatenate([idx[c] for c in sorted(idx)])
        if not len(allslots):
            return
        pick = allslots[self.rng.integers(0, len(allslots), size=n)]
        self.stats.touched += self.hpt.touch_many(pick, False)

    def run(self, ops: int | None = None, seconds: float | None = None) -> RunStats:
        """Churn: ``ops`` events, or as many as the profile's rate makes in
        ``seconds`` of guest time (a Poisson count).  The vCPUs must run."""
        if (ops is None) == (seconds is None):
            raise UsageError("give exactly one of ops or seconds")
        if not self.hpt.vcpus_running:
            raise UsageError("the guest's vCPUs are stopped: cont it first")
        prof = self.profile
        self.stats = RunStats()
        if seconds is not None:
            if seconds < 0:
                raise UsageError("seconds must not be negative")
            ops = int(self.rng.poisson(prof.rate * seconds)) if prof.rate else 0
            elapsed = float(seconds)
        else:
            assert ops is not None  # exactly one of the two is given
            if ops < 0:
                raise UsageError("ops must not be negative")
            elapsed = ops / prof.rate if prof.rate else 0.0
        names = list(prof.weights)
        if names and ops:
            w = np.array([prof.weights[k] for k in names], dtype=float)
            cum = np.cumsum(w / w.sum())
            for _ in range(ops):
                k = int(np.searchsorted(cum, self.rng.random(), side="right"))
                self._event(names[min(k, len(names) - 1)])
        self.stats.seconds = elapsed
        self.state["clock"] += elapsed
        self.state["events"] += ops or 0
        self._save_rng()
        self._add_totals()
        return self.stats

    def _save_rng(self) -> None:
        self.state["rng"] = self.rng.bit_generator.state

    def _add_totals(self) -> None:
        totals = self.state.setdefault("totals", {})
        for k, v in self.stats.as_dict().items():
            if isinstance(v, int):
                totals[k] = totals.get(k, 0) + v

    # -- for people ---------------------------------------------------------------

    def summary(self) -> dict:
        return guest_summary(self.state)


#: the churn's events: a profile's ``weights`` name them, each is a method of :class:`Guest`
EVENTS = {
    "fork": Guest._on_fork,
    "exec": Guest._on_exec,
    "exit": Guest._on_exit,
    "fault": Guest._on_fault,
    "write": Guest._on_write,
    "touch": Guest._on_touch,
    "mmap": Guest._on_mmap,
    "munmap": Guest._on_munmap,
    "vmalloc": Guest._on_vmalloc,
    "vfree": Guest._on_vfree,
}


__all__ = ["Guest", "Profile", "PROFILES", "RunStats", "EVENTS", "get_profile", "profile_names", "ram_order",
           "get_vsid",
           "hash_pages"]
