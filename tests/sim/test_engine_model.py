"""The engine against a plain, slow, independent model of the kernel.

The model below is a literal transcription, over Python lists and one
entry at a time, of today's upstream kernel: kvmppc_do_h_enter,
kvmppc_do_h_remove, kvmppc_h_bulk_remove, kvmppc_h_protect, kvmppc_h_read,
kvmppc_h_clear_ref, kvmppc_h_clear_mod (arch/powerpc/kvm/book3s_hv_rm_mmu.c),
hpte_dirty, record_hpte, kvm_htab_read and kvm_htab_write
(arch/powerpc/kvm/book3s_64_mmu_hv.c).  It calls neither the engine nor the
codec; locks are taken and dropped on the list as the kernel does on the
table, so the lock bit shows where the kernel's shows.  One deliberate
change, the one the engine makes too, below.

Hypothesis drives both with the same random hypercall sequences, reads of 1
byte to 64 KiB, start indexes (past the end too), bolted-only fds and
writes, and demands the same return codes, the same bytes and the same
table, reverse map and all.

The write side is the kernel's literally, its pointer quirk included: the
input pointer moves past each header but not past its entries, so only the
first record of a write() is read right.  One deliberate change, the one the
engine makes too: the kernel checks that a record's entries fit before it
counts the record's header, and so may read up to 8 bytes past the caller's
buffer; here (and in the engine) such a record ends the write instead.
"""

from __future__ import annotations

import errno
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from htabtool.sim import SimulatedHPT

# -- constants, from the kernel headers -------------------------------------
VALID, SECONDARY, LARGE, BOLTED = 0x1, 0x2, 0x4, 0x10
ABSENT, HVLOCK = 0x20, 0x40
GR_MODIFIED = 1 << 62
R_R, R_C, R_M, R_I, R_W, R_G, R_N = 0x100, 0x80, 0x10, 0x20, 0x40, 0x8, 0x4
R_PP, R_PP0 = 0x3, 1 << 63
R_KEY_HI, R_KEY_LO = 0x3000000000000000, 0xE00
R_RPN = 0x0FFFFFFFFFFFF000
R_WIMG = 0x78
ONE_T = 0x4000000000000000
VRMA_VSID_ = 0x1FFFFFF
H_SUCCESS, H_PARAMETER, H_PTEG_FULL, H_NOT_FOUND = 0, -4, -6, -7
H_EXACT, H_READ_4, H_AVPN, H_ANDCOND = 1 << 39, 1 << 37, 1 << 31, 1 << 30
BOLTED_ONLY, WRITE = 1, 2
PAGE_SHIFT = 16  # the host's
HOST_BASE = 1 << 40
U64 = (1 << 64) - 1


def lp_shifts(h, low):
    """kvmppc_hpte_page_shifts"""
    if not h & LARGE:
        return 12
    lphi = (low >> 16) & 0xF
    lp = (low >> 12) & 0xF
    if lp == 0:
        return 24 if not lphi else 0
    if lp == 1:
        return 16
    if lp == 3:
        return 34 if not lphi else 0
    if lp == 7:
        return (16 << 8) + 12
    if lp == 8:
        if not lphi:
            return (24 << 8) + 16
        if lphi == 3:
            return (24 << 8) + 12
    return 0


def actual_pgsz(v, r):
    t = lp_shifts(v, r)
    if t >= 0x100:
        t >>= 8
    return 1 << t if t else 0


class Kvm:
    """kvm->arch of an HPT guest, over lists."""

    def __init__(self, order, ram_size, backing_shift=24):
        self.npte = 1 << (order - 4)
        self.v = [0] * self.npte
        self.r = [0] * self.npte
        self.rev = [0] * self.npte
        self.ram_npages = ram_size >> PAGE_SHIFT
        self.backing = 1 << backing_shift
        self.mod_interest = 0
        self.mmu_ready = 0
        self.vcpus_running = 0
        self.vrma_slb_v = 0
        self.lpcr = 0

    # locks
    def try_lock(self, i, bits):
        if self.v[i] & bits:
            return False
        self.v[i] |= HVLOCK
        return True

    def lock(self, i):
        assert self.try_lock(i, HVLOCK)

    def unlock(self, i, hpte_v):
        self.v[i] = hpte_v & ~HVLOCK

    def note_mod(self, i):
        if self.mod_interest:
            self.rev[i] |= GR_MODIFIED

    # kvmppc_do_h_enter
    def h_enter(self, flags, pte_index, pteh, ptel):
        if (pteh >> 62) & 0x2:
            return H_PARAMETER, 0
        psize = actual_pgsz(pteh, ptel)
        if not psize:
            return H_PARAMETER, 0
        pteh &= ~(HVLOCK | ABSENT | VALID)
        ptel &= ~GR_MODIFIED
        g_ptel = ptel
        gpa = (ptel & R_RPN) & ~(psize - 1)
        gfn = gpa >> PAGE_SHIFT
        if not gfn < self.ram_npages:
            pteh |= ABSENT
            ptel |= R_KEY_HI | R_KEY_LO
        else:
            if psize > (1 << PAGE_SHIFT) and self.ram_npages & ((psize >> PAGE_SHIFT) - 1):
                return H_PARAMETER, 0
            if self.backing < psize:
                return H_PARAMETER, 0
            pa = HOST_BASE + (gfn << PAGE_SHIFT)
            pa |= gpa & ((1 << PAGE_SHIFT) - 1)
            ptel &= R_KEY_HI | R_KEY_LO | R_PP0 | (psize - 1)
            ptel |= pa
            pteh |= VALID
            wimg = ptel & R_WIMG
            if wimg == (R_W | R_I | R_M):
                wimg = R_M
            if wimg != R_M:
                ptel &= ~(R_W | R_I | R_G)
                ptel |= R_M
        if pte_index >= self.npte or pte_index < 0:
            return H_PARAMETER, 0
        if not flags & H_EXACT:
            pte_index &= ~7
            for i in range(8):
                if (self.v[pte_index + i] & VALID) == 0 and self.try_lock(pte_index + i, HVLOCK | VALID | ABSENT):
                    break
            else:
                return H_PTEG_FULL, 0
            pte_index += i
        else:
            if not self.try_lock(pte_index, HVLOCK | VALID | ABSENT):
                return H_PTEG_FULL, 0
        self.rev[pte_index] = g_ptel
        self.note_mod(pte_index)
        if pteh & VALID:
            ptel &= ~(R_R | R_C)  # the rmap has no R/C bits
        self.r[pte_index] = ptel & U64
        self.unlock(pte_index, pteh)
        return H_SUCCESS, pte_index

    # kvmppc_do_h_remove
    def h_remove(self, flags, pte_index, avpn):
        if pte_index >= self.npte or pte_index < 0:
            return H_PARAMETER, 0, 0
        self.lock(pte_index)
        pte = orig = self.v[pte_index]
        if (
            (pte & (ABSENT | VALID)) == 0
            or ((flags & H_AVPN) and (pte & ~0x7F) != avpn)
            or ((flags & H_ANDCOND) and (pte & avpn) != 0)
        ):
            self.unlock(pte_index, orig)
            return H_NOT_FOUND, 0, 0
        v = pte & ~HVLOCK
        if v & VALID:
            self.v[pte_index] &= ~VALID
            self.rev[pte_index] |= self.r[pte_index] & (R_R | R_C)  # remove_revmap_chain
        r = self.rev[pte_index] & ~GR_MODIFIED
        self.note_mod(pte_index)
        self.unlock(pte_index, 0)
        if v & ABSENT:
            v = (v & ~ABSENT) | VALID
        return H_SUCCESS, v, r

    # kvmppc_h_bulk_remove
    def h_bulk_remove(self, args):
        args = list(args)
        ret = H_SUCCESS
        i = 0
        while i < 4 and ret == H_SUCCESS:
            n = 0
            batch = []
            while i < 4:
                j = i * 2
                pte_index = args[j]
                flags = pte_index >> 56
                pte_index &= (1 << 56) - 1
                req = flags >> 6
                flags &= 3
                if req == 3:
                    i = 4
                    break
                if req != 1 or flags == 3 or pte_index >= self.npte:
                    args[j] = ((0xA0 | flags) << 56) + pte_index
                    ret = H_PARAMETER
                    break
                if not self.try_lock(pte_index, HVLOCK):
                    if n:
                        break
                    raise AssertionError("deadlock")
                found = 0
                hp0 = self.v[pte_index]
                if hp0 & (ABSENT | VALID):
                    if flags == 0:
                        found = 1
                    elif flags == 1:
                        found = not (hp0 & args[j + 1])
                    elif flags == 2:
                        found = (hp0 & ~0x7F) == args[j + 1]
                if not found:
                    self.v[pte_index] &= ~HVLOCK
                    args[j] = ((0x90 | flags) << 56) + pte_index
                    i += 1
                    continue
                args[j] = ((0x80 | flags) << 56) + pte_index
                self.note_mod(pte_index)
                if not hp0 & VALID:
                    args[j] |= (self.rev[pte_index] & (R_R | R_C)) << (56 - 5)
                    self.v[pte_index] = 0
                    i += 1
                    continue
                self.v[pte_index] &= ~VALID  # left locked
                batch.append((j, pte_index))
                n += 1
                i += 1
            if not n:
                break
            for j, pte_index in batch:
                self.rev[pte_index] |= self.r[pte_index] & (R_R | R_C)
                args[j] |= (self.rev[pte_index] & (R_R | R_C)) << (56 - 5)
                self.unlock(pte_index, 0)
        return ret, args

    # kvmppc_h_protect
    def h_protect(self, flags, pte_index, avpn):
        if pte_index >= self.npte or pte_index < 0:
            return H_PARAMETER
        self.lock(pte_index)
        v = pte_v = self.v[pte_index]
        if (v & (ABSENT | VALID)) == 0 or ((flags & H_AVPN) and (v & ~0x7F) != avpn):
            self.unlock(pte_index, pte_v)
            return H_NOT_FOUND
        pte_r = self.r[pte_index]
        bits = (flags << 55) & R_PP0
        bits |= (flags << 48) & R_KEY_HI
        bits |= flags & (R_PP | R_N | R_KEY_LO)
        mask = R_PP0 | R_PP | R_N | R_KEY_HI | R_KEY_LO
        self.rev[pte_index] = (self.rev[pte_index] & ~mask) | bits
        self.note_mod(pte_index)
        if v & VALID:
            r = (pte_r & ~mask) | bits

            def writable(x):
                pp = x & (R_PP0 | R_PP)
                return pp != 3 and pp != (R_PP0 | 2)

            if writable(r) and not writable(pte_r):
                if (r & R_PP0) or (r & R_PP) == 0:
                    r = (r & ~R_PP) | (R_PP0 | 2)
                else:
                    r |= 3
            if r != pte_r:
                self.v[pte_index] = (pte_v & ~VALID) | ABSENT
                r |= self.r[pte_index] & (R_R | R_C)
                self.r[pte_index] = r
        self.unlock(pte_index, pte_v & ~HVLOCK)
        return H_SUCCESS

    # kvmppc_h_read
    def h_read(self, flags, pte_index):
        if pte_index >= self.npte or pte_index < 0:
            return H_PARAMETER, []
        n = 1
        if flags & H_READ_4:
            pte_index &= ~3
            n = 4
        out = []
        for i in range(n):
            v = self.v[pte_index + i] & ~HVLOCK
            r = self.r[pte_index + i]
            if v & ABSENT:
                v &= ~ABSENT
                v |= VALID
            if v & VALID:
                r = self.rev[pte_index + i] | (r & (R_R | R_C))
                r &= ~GR_MODIFIED
            out += [v, r]
        return H_SUCCESS, out

    # kvmppc_h_clear_ref
    def h_clear_ref(self, flags, pte_index):
        if pte_index >= self.npte or pte_index < 0:
            return H_PARAMETER, 0
        self.lock(pte_index)
        v = self.v[pte_index]
        r = self.r[pte_index]
        if not v & (VALID | ABSENT):
            self.unlock(pte_index, v & ~HVLOCK)
            return H_NOT_FOUND, 0
        gr = self.rev[pte_index]
        if self.rev[pte_index] & R_R:
            self.rev[pte_index] &= ~R_R
            self.note_mod(pte_index)
        if v & VALID:
            gr |= r & (R_R | R_C)
            if r & R_R:
                self.r[pte_index] = r & ~R_R
        self.unlock(pte_index, v & ~HVLOCK)
        return H_SUCCESS, gr

    # kvmppc_h_clear_mod
    def h_clear_mod(self, flags, pte_index):
        if pte_index >= self.npte or pte_index < 0:
            return H_PARAMETER, 0
        self.lock(pte_index)
        v = self.v[pte_index]
        if not v & (VALID | ABSENT):
            self.unlock(pte_index, v & ~HVLOCK)
            return H_NOT_FOUND, 0
        gr = self.rev[pte_index]
        if gr & R_C:
            self.rev[pte_index] &= ~R_C
            self.note_mod(pte_index)
        if v & VALID:
            self.v[pte_index] |= ABSENT
            self.v[pte_index] &= ~VALID
            r = self.r[pte_index]
            gr |= r & (R_R | R_C)
            if r & R_C:
                self.r[pte_index] = r & ~R_C
        self.unlock(pte_index, v & ~HVLOCK)
        return H_SUCCESS, gr

    def touch(self, i, write):
        if self.v[i] & VALID:
            self.r[i] |= R_R | (R_C if write else 0)

    # hpte_dirty
    def hpte_dirty(self, i):
        if self.rev[i] & GR_MODIFIED:
            return 1
        rcbits_unset = ~self.rev[i] & (R_R | R_C)
        if (self.v[i] & VALID) and (self.r[i] & rcbits_unset):
            return 1
        return 0


class ModelFd:
    """kvm_htab_ctx with kvm_htab_read and kvm_htab_write."""

    def __init__(self, kvm, flags, start_index, byte_order):
        self.kvm = kvm
        self.flags = flags
        self.index = start_index
        self.first_pass = 1
        self.hdr = ("<" if byte_order == "little" else ">") + "IHH"
        if not flags & WRITE:
            kvm.mod_interest += 1

    def close(self):
        if not self.flags & WRITE:
            self.kvm.mod_interest -= 1

    def record_hpte(self, i, want_valid, first_pass):
        k, flags = self.kvm, self.flags
        dirty = k.hpte_dirty(i)
        if not first_pass and not dirty:
            return 0, (0, 0)
        valid = 0
        if k.v[i] & (VALID | ABSENT):
            valid = 1
            if (flags & BOLTED_ONLY) and not (k.v[i] & BOLTED):
                valid = 0
        if valid != want_valid:
            return 0, (0, 0)
        v = r = 0
        ok = 1
        if valid or dirty:
            k.lock(i)
            v = k.v[i]
            hr = k.r[i]
            valid = 1 if v & VALID else 0
            dirty = 1 if k.rev[i] & GR_MODIFIED else 0
            rcbits_unset = ~k.rev[i] & (R_R | R_C)
            if valid and (rcbits_unset & hr):
                k.rev[i] |= (hr & (R_R | R_C)) | GR_MODIFIED
                dirty = 1
            if v & ABSENT:
                v &= ~ABSENT
                v |= VALID
                valid = 1
            if (flags & BOLTED_ONLY) and not (v & BOLTED):
                valid = 0
            r = k.rev[i]
            if valid == want_valid and dirty:
                r &= ~GR_MODIFIED
                k.rev[i] = r
            k.unlock(i, k.v[i])
            if not (valid == want_valid and (first_pass or dirty)):
                ok = 0
        return ok, (v, r)

    def read(self, count):
        k = self.kvm
        first_pass = self.first_pass
        i = self.index
        out = bytearray()
        nb = 0
        while nb + 8 + 16 < count:
            hptr = len(out)
            n_valid = n_invalid = 0
            nw = nb
            nb += 8
            out += bytes(8)
            if not first_pass:
                while i < k.npte and not k.hpte_dirty(i):
                    i += 1
            index = i
            while i < k.npte and n_valid < 0xFFFF and nb + 16 < count:
                ok, hpte = self.record_hpte(i, 1, first_pass)
                if not ok:
                    break
                n_valid += 1
                out += struct.pack(">QQ", *hpte)
                nb += 16
                i += 1
            while i < k.npte and n_invalid < 0xFFFF:
                ok, _ = self.record_hpte(i, 0, first_pass)
                if not ok:
                    break
                n_invalid += 1
                i += 1
            if n_valid or n_invalid:
                out[hptr : hptr + 8] = struct.pack(self.hdr, index & 0xFFFFFFFF, n_valid, n_invalid)
            else:
                nb = nw
                del out[hptr:]
            if i >= k.npte:
                i = 0
                self.first_pass = 0
                break
        self.index = i
        assert len(out) == nb
        return bytes(out)

    def write(self, buf):
        """Returns bytes consumed, or -errno."""
        k = self.kvm
        count = len(buf)
        mmu_ready = k.mmu_ready
        if mmu_ready:
            k.mmu_ready = 0
            if k.vcpus_running:
                k.mmu_ready = 1
                return -errno.EBUSY
        err = 0
        nb = 0
        pos = 0  # buf: moved past each header, never past its entries
        while nb + 8 <= count:
            index, n_valid, n_invalid = struct.unpack_from(self.hdr, buf, pos)
            err = 0
            if nb + n_valid * 16 > count:
                break
            if pos + 8 + n_valid * 16 > count:  # entries past the caller's buffer: not read here
                break
            nb += 8
            pos += 8
            err = -errno.EINVAL
            i = index
            if i >= k.npte or i + n_valid + n_invalid > k.npte:
                break
            failed = False
            lbuf = pos
            for _ in range(n_valid):
                v, r = struct.unpack_from(">QQ", buf, lbuf)
                err = -errno.EINVAL
                if not v & VALID:
                    failed = True
                    break
                if (lp_shifts(v, r) & 0xFF) <= 0:
                    failed = True
                    break
                lbuf += 16
                nb += 16
                if k.v[i] & (VALID | ABSENT):
                    k.h_remove(0, i, 0)
                err = -errno.EIO
                ret, _ = k.h_enter(H_EXACT, i, v, r)
                if ret != H_SUCCESS:
                    failed = True
                    break
                if not mmu_ready and (v & ~0xFFFFFF) == (ONE_T | (VRMA_VSID_ << 24)):
                    pshift = lp_shifts(v, r) & 0xFF
                    psize = 1 << pshift
                    senc = 0
                    if psize > 0x1000:
                        senc = 0x100
                        if psize == 0x10000:
                            senc |= 0x10
                    k.vrma_slb_v = senc | ONE_T | (VRMA_VSID_ << 24)
                    k.lpcr = (k.lpcr & ~(0x1F << 47)) | (senc << (47 - 4))
                    mmu_ready = 1
                i += 1
            if failed:
                break
            for _ in range(n_invalid):
                if k.v[i] & (VALID | ABSENT):
                    k.h_remove(0, i, 0)
                i += 1
            err = 0
        k.mmu_ready = mmu_ready
        return err if err else nb


# -- comparing engine and model ---------------------------------------------


def state_of(e: SimulatedHPT):
    return (
        [int(x) for x in e.hpt[:, 0]],
        [int(x) for x in e.hpt[:, 1]],
        [int(x) for x in e.rev],
    )


def assert_same_state(e: SimulatedHPT, k: Kvm):
    v, r, rev = state_of(e)
    if v != k.v:
        i = next(i for i in range(len(v)) if v[i] != k.v[i])
        raise AssertionError(f"v differs at {i}: engine {v[i]:#x} model {k.v[i]:#x}")
    if r != k.r:
        i = next(i for i in range(len(r)) if r[i] != k.r[i])
        raise AssertionError(f"r differs at {i}: engine {r[i]:#x} model {k.r[i]:#x}")
    if rev != k.rev:
        i = next(i for i in range(len(rev)) if rev[i] != k.rev[i])
        raise AssertionError(f"rev differs at {i}: engine {rev[i]:#x} model {k.rev[i]:#x}")
    assert e.mmu_ready == bool(k.mmu_ready)
    assert e.vrma_slb_v == k.vrma_slb_v and e.lpcr == k.lpcr


ORDER = 18
NPTE = 1 << (ORDER - 4)
RAM = 64 << 20  # 1024 64K pages: plenty of entries fall outside (emulated MMIO)

# indexes cluster in a few places so that groups fill, runs form, and the
# ends of the table are exercised
indexes = st.one_of(
    st.integers(0, 63),
    st.integers(NPTE // 2 - 16, NPTE // 2 + 15),
    st.integers(NPTE - 64, NPTE - 1),
    st.integers(0, NPTE - 1),
)
LP_CHOICES = [0x0000, 0x1000, 0x3000, 0x7000, 0x8000, 0x38000, 0x5000, 0x13000]


@st.composite
def hptes(draw):
    b = draw(st.sampled_from([0, 0, 1, 1, 1, 2, 3]))
    avpn = draw(st.integers(0, (1 << 55) - 1)) << 7
    flags = draw(st.integers(0, 0x7F))
    v = (b << 62) | (avpn & 0x3FFFFFFFFFFFFF80) | flags
    if draw(st.integers(0, 9)) == 0:
        v = (ONE_T | (VRMA_VSID_ << 24) | (draw(st.integers(0, 0xFFFF)) << 7)) | flags | LARGE
    page = draw(st.one_of(st.integers(0, (RAM >> 12) - 1), st.integers(0, (1 << 36) - 1)))
    lp = draw(st.sampled_from(LP_CHOICES))
    low = draw(st.integers(0, 0xFFF))
    top = draw(st.sampled_from([0, R_PP0, 1 << 62, R_KEY_HI, R_PP0 | (1 << 62)]))
    r = top | (page << 12) | lp | low
    return v & U64, r & U64


def bulk_args(draw):
    args = []
    for _ in range(4):
        kind = draw(st.sampled_from([1, 1, 1, 1, 0, 2, 3]))
        fl = draw(st.sampled_from([0, 1, 2, 3]))
        idx = draw(indexes)
        args += [((kind << 6 | fl) << 56) | idx, draw(st.sampled_from([0, BOLTED, 0x7F, 1 << 40]))]
    return args


@st.composite
def hcall_ops(draw):
    kind = draw(st.sampled_from(["enter", "enter", "enter", "enter", "remove", "protect", "read", "clear_ref",
                                 "clear_mod", "bulk", "touch", "touch"]))
    if kind == "enter":
        v, r = draw(hptes())
        return ("enter", draw(st.sampled_from([0, H_EXACT])), draw(indexes), v, r)
    if kind == "remove":
        return ("remove", draw(st.sampled_from([0, H_AVPN, H_ANDCOND])), draw(indexes),
                draw(st.sampled_from([0, BOLTED, HVLOCK, 0x3F])))
    if kind == "protect":
        return ("protect", draw(st.integers(0, 0x1FFF) | st.just(0x100 | H_AVPN)), draw(indexes), 0)
    if kind == "read":
        return ("read", draw(st.sampled_from([0, H_READ_4])), draw(indexes))
    if kind in ("clear_ref", "clear_mod"):
        return (kind, 0, draw(indexes))
    if kind == "bulk":
        return ("bulk", bulk_args(draw))
    return ("touch", draw(indexes), draw(st.booleans()))


def do_op(e: SimulatedHPT, k: Kvm, op):
    kind = op[0]
    if kind == "enter":
        got, want = e.h_enter(*op[1:]), k.h_enter(*op[1:])
    elif kind == "remove":
        got, want = e.h_remove(*op[1:]), k.h_remove(*op[1:])
    elif kind == "protect":
        got, want = e.h_protect(*op[1:]), k.h_protect(*op[1:])
    elif kind == "read":
        got, want = e.h_read(*op[1:]), k.h_read(*op[1:])
    elif kind == "clear_ref":
        got, want = e.h_clear_ref(*op[1:]), k.h_clear_ref(*op[1:])
    elif kind == "clear_mod":
        got, want = e.h_clear_mod(*op[1:]), k.h_clear_mod(*op[1:])
    elif kind == "bulk":
        got, want = e.h_bulk_remove(op[1]), k.h_bulk_remove(op[1])
    else:
        e.touch(op[1], op[2])
        k.touch(op[1], op[2])
        return
    assert got == want, (op, got, want)


def seeded_pair(seed: int, n_entries: int = 300):
    """An engine and a model with the same few hundred entries."""
    rng = np.random.default_rng(seed)
    e = SimulatedHPT(ORDER, ram_size=RAM)
    k = Kvm(ORDER, RAM)
    for _ in range(n_entries):
        i = int(rng.choice([rng.integers(0, 64), rng.integers(0, NPTE), rng.integers(NPTE - 64, NPTE)]))
        v = (int(rng.integers(0, 1 << 55)) << 7) | int(rng.integers(0, 0x80)) | (int(rng.integers(0, 2)) << 62)
        r = (int(rng.integers(0, RAM >> 16)) << 16) | 0x1000 | int(rng.integers(0, 0x1000))
        v |= LARGE
        assert e.h_enter(0, i, v, r) == k.h_enter(0, i, v, r)
    return e, k


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    ops=st.lists(st.one_of(hcall_ops(), st.tuples(st.just("fdread"), st.integers(1, 65536))), max_size=60),
    start=st.one_of(st.just(0), st.integers(0, NPTE - 1), st.integers(NPTE, NPTE + 100)),
    bolted_only=st.booleans(),
    byte_order=st.sampled_from(["little", "big"]),
)
def test_reads_match_model_over_hypercalls(seed, ops, start, bolted_only, byte_order):
    e, k = seeded_pair(seed)
    flags = BOLTED_ONLY if bolted_only else 0
    fd = e.htab_fd(flags, start, byte_order=byte_order)
    mfd = ModelFd(k, flags, start, byte_order)
    for op in ops + [("fdread", 65536)] * 3:
        if op[0] == "fdread":
            got, want = fd.read(op[1]), mfd.read(op[1])
            assert got == want, (op, len(got), len(want))
            assert fd.index == mfd.index
        else:
            do_op(e, k, op)
    assert_same_state(e, k)
    fd.close()
    mfd.close()
    assert e.hpte_mod_interest == k.mod_interest == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    ops=st.lists(hcall_ops(), max_size=40),
    sizes=st.lists(st.integers(1, 65536), min_size=1, max_size=12),
    interest=st.booleans(),
)
def test_hypercalls_match_model_with_and_without_interest(seed, ops, sizes, interest):
    """Modification marks are set only while a read fd is open; with none
    open, a later fd's incremental passes see only R/C changes."""
    e, k = seeded_pair(seed)
    held = (e.htab_fd(), ModelFd(k, 0, 0, "little")) if interest else None
    for op in ops:
        do_op(e, k, op)
    assert_same_state(e, k)
    if held:
        held[0].close()
        held[1].close()
    fd, mfd = e.htab_fd(), ModelFd(k, 0, 0, "little")
    for size in sizes:
        assert fd.read(size) == mfd.read(size)
    assert_same_state(e, k)


def test_small_reads_one_byte_at_a_time_agree():
    e, k = seeded_pair(7, 400)
    fd, mfd = e.htab_fd(), ModelFd(k, 0, 0, "little")
    for size in list(range(0, 60)) + [1] * 20 + [24, 25, 40, 41, 56, 57]:
        assert fd.read(size) == mfd.read(size)
        assert fd.index == mfd.index and fd.first_pass == bool(mfd.first_pass)
    while True:
        got = fd.read(4096)
        assert got == mfd.read(4096)
        if not got and not fd.first_pass:
            break
    assert_same_state(e, k)


# -- writes ---------------------------------------------------------------


@st.composite
def write_streams(draw, byte_order):
    """Records of random shapes (mostly good, some bad, some overlapping),
    possibly cut at the end."""
    p = "<" if byte_order == "little" else ">"
    out = bytearray()
    for _ in range(draw(st.integers(0, 8))):
        index = draw(st.one_of(indexes, st.integers(NPTE - 8, NPTE + 8)))
        n_valid = draw(st.integers(0, 5))
        n_invalid = draw(st.one_of(st.integers(0, 10), st.just(NPTE)))
        out += struct.pack(p + "IHH", index & 0xFFFFFFFF, n_valid, min(n_invalid, 0xFFFF))
        for _ in range(n_valid):
            v, r = draw(hptes())
            if draw(st.integers(0, 7)):
                v |= VALID
            out += struct.pack(">QQ", v, r)
    cut = draw(st.integers(0, 20))
    return bytes(out[: len(out) - cut] if cut <= len(out) else out)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
    byte_order=st.sampled_from(["little", "big"]),
    reader=st.booleans(),
    mmu_ready=st.booleans(),
)
def test_writes_match_model(seed, data, byte_order, reader, mmu_ready):
    e, k = seeded_pair(seed, 200)
    e.mmu_ready = k.mmu_ready = mmu_ready
    held = (e.htab_fd(), ModelFd(k, 0, 0, "little")) if reader else None
    fd = e.htab_fd(WRITE, byte_order=byte_order)
    mfd = ModelFd(k, WRITE, 0, byte_order)
    for _ in range(3):
        stream = data.draw(write_streams(byte_order))
        want = mfd.write(stream)
        try:
            got = fd.write(stream)
        except OSError as exc:
            got = -exc.errno
        assert got == want
        assert_same_state(e, k)
    if held:
        assert held[0].read(1 << 20) == held[1].read(1 << 20)


def test_write_ebusy_matches_model():
    e, k = seeded_pair(1, 10)
    e.cont()
    k.mmu_ready = k.vcpus_running = 1
    stream = struct.pack("<IHH", 0, 0, 8)
    assert ModelFd(k, WRITE, 0, "little").write(stream) == -errno.EBUSY
    try:
        e.htab_fd(WRITE, byte_order="little").write(stream)
    except OSError as exc:
        assert exc.errno == errno.EBUSY
    else:
        raise AssertionError("no EBUSY")
    assert_same_state(e, k)


# -- later passes from the suspects (the entries that may be dirty) ----------


def model_dirty(k: Kvm) -> list[int]:
    return [i for i in range(len(k.v)) if k.hpte_dirty(i)]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    ops=st.lists(
        st.one_of(
            hcall_ops(),
            st.tuples(st.just("fdread"), st.integers(1, 65536)),
            st.tuples(st.just("burst"), st.integers(25, 4096)),
            st.tuples(st.just("other"), st.integers(25, 65536)),
            st.tuples(st.just("touch_valid"), st.integers(0, 1 << 30), st.booleans()),
        ),
        max_size=60,
    ),
    first=st.integers(25, 65536),
    bolted_only=st.booleans(),
    byte_order=st.sampled_from(["little", "big"]),
)
def test_later_passes_from_suspects_match_model(seed, ops, first, bolted_only, byte_order):
    """Once a first pass from 0 has gone over the whole table, later passes
    plan from the entries changed since (not a scan): the same bytes as the
    kernel's scan, read by read and burst by burst, with other fds reading
    meanwhile; and dirty_entries() is the model's hpte_dirty."""
    e, k = seeded_pair(seed)
    flags = BOLTED_ONLY if bolted_only else 0
    fd, mfd = e.htab_fd(flags, 0, byte_order=byte_order), ModelFd(k, flags, 0, byte_order)
    for data in fd.reads(first):
        assert data == mfd.read(first)
    assert e._suspects.array() is not None  # the shortcut is what the rest tests
    others = []
    for op in ops + [("burst", 65536)] * 2:
        if op[0] == "fdread":
            assert fd.read(op[1]) == mfd.read(op[1])
        elif op[0] == "burst":
            for data in fd.reads(op[1]):
                assert data == mfd.read(op[1])
        elif op[0] == "other":  # another fd's first pass, from the middle
            pair = (e.htab_fd(0, NPTE // 2, byte_order="little"), ModelFd(k, 0, NPTE // 2, "little"))
            others.append(pair)
            assert pair[0].read(op[1]) == pair[1].read(op[1])
        elif op[0] == "touch_valid":  # the hardware sets R/C of a valid entry
            valid = np.flatnonzero(e.valid_mask())
            do_op(e, k, ("touch", int(valid[op[1] % len(valid)]), op[2]))
        else:
            do_op(e, k, op)
        assert fd.index == mfd.index
    dirty = model_dirty(k)
    assert e.dirty_entries().tolist() == dirty
    assert fd.pending().reported == len(dirty)  # every dirty entry, in some record; no side effects:
    assert_same_state(e, k)
    for a, b in others:
        a.close()
        b.close()
    fd.close()
    mfd.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), data=st.data(), size=st.integers(25, 65536))
def test_later_passes_after_writes_match_model(seed, data, size):
    """A write fd changes entries while a read fd is in its later passes:
    they are suspects too."""
    e, k = seeded_pair(seed, 200)
    fd, mfd = e.htab_fd(), ModelFd(k, 0, 0, "little")
    for got in fd.reads(size):
        assert got == mfd.read(size)
    for _ in range(3):
        stream = data.draw(write_streams("little"))
        want = ModelFd(k, WRITE, 0, "little").write(stream)
        try:
            got = e.htab_fd(WRITE, byte_order="little").write(stream)
        except OSError as exc:
            got = -exc.errno
        assert got == want
        for got in fd.reads(size):
            assert got == mfd.read(size)
        assert e.dirty_entries().tolist() == model_dirty(k)
    assert_same_state(e, k)


def test_bulk_forms_are_suspects_too():
    """The bulk forms the guest model uses, and more changes than the
    suspects hold (a scan again until the next sweep): a later pass reads
    what a scan of a twin without the shortcut reads."""
    rng = np.random.default_rng(5)
    twins = [SimulatedHPT(ORDER, ram_size=RAM) for _ in range(2)]
    fds = [t.htab_fd() for t in twins]
    for round_ in range(6):
        n = [40, 4000, 40, 40, 3000, 40][round_]  # 4000 and 3000: past an eighth of the table
        group = rng.integers(0, NPTE // 8, size=n)
        v = (rng.integers(0, 1 << 50, size=n, dtype=np.uint64) << np.uint64(7)) | np.uint64(0x5)
        r = (rng.integers(0, RAM >> 16, size=n, dtype=np.uint64) << np.uint64(16)) | np.uint64(0x1192)
        slots = rng.integers(0, NPTE, size=n)
        writes = rng.integers(0, 2, size=n).astype(bool)
        for t in twins:
            t.bulk_enter(group, v, r)
            t.bulk_protect(slots[: n // 2], 0x3)
            t.bulk_remove(slots[n // 2 :])
            if t is twins[0]:  # valid entries: the hardware sets their R/C
                touched = rng.choice(np.flatnonzero(t.valid_mask()), size=n)
            t.touch_many(touched, writes)
        twins[1]._suspects.forget()  # the twin always scans
        if round_ in (3, 5):  # a sweep since the last overflow: the shortcut is back
            assert twins[0]._suspects.array() is not None
        got = [b"".join(fd.reads(4096)) for fd in fds]
        assert got[0] == got[1]
        assert np.array_equal(twins[0].rev, twins[1].rev) and np.array_equal(twins[0].hpt, twins[1].hpt)
