"""The simulated HPT: hypercalls, the htab fd's reads and writes, errno cases.

The byte-for-byte comparison with an independent model of the kernel is in
test_engine_model.py; here each rule is pinned down by a small case.
"""

from __future__ import annotations

import errno
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from htabtool import engine
from htabtool.errors import UsageError
from htabtool.hpte import is_vrma_hpte
from htabtool.records import decode_batch
from htabtool.sim import (
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
    SimulatedHPT,
    htabfd,
)
from tests.helpers import record

VALID, SECONDARY, LARGE, BOLTED, ABSENT, HVLOCK = 0x1, 0x2, 0x4, 0x10, 0x20, 0x40
R, C, M, N = 0x100, 0x80, 0x10, 0x4
MOD = 1 << 62
ONE_T = 1 << 62
LP64K = 0x1000


def v64k(avpn: int, flags: int = 0) -> int:
    """A first doubleword of a 64K page in a 1T segment."""
    return ONE_T | (avpn << 7) | LARGE | VALID | flags


def r64k(pa: int, flags: int = R | C | M) -> int:
    return (pa & ~0xFFFF) | LP64K | flags


def entries_of(data: bytes, byte_order: str = "little"):
    batch, used = decode_batch(data, byte_order)
    assert used == len(data)
    idx = batch.entry_index()
    return {int(i): (int(v), int(r)) for i, (v, r) in zip(idx, batch.entries.astype(np.uint64))}, batch


def full_pass(fd, size=1 << 20) -> bytes:
    out = b""
    while True:
        d = fd.read(size)
        out += d
        if fd.last_read.wrapped or not d:
            return out


@pytest.fixture
def e():
    return SimulatedHPT(18, ram_size=64 << 20)


# -- constants ------------------------------------------------------------------


def test_papr_and_kvm_constants():
    assert (H_EXACT, engine.H_R_XLATE, H_READ_4, H_AVPN, H_ANDCOND) == (
        1 << 39,
        1 << 38,
        1 << 37,
        1 << 31,
        1 << 30,
    )
    assert (H_SUCCESS, H_PARAMETER, H_PTEG_FULL, H_NOT_FOUND) == (0, -4, -6, -7)
    assert (KVM_GET_HTAB_BOLTED_ONLY, KVM_GET_HTAB_WRITE) == (1, 2)


@pytest.mark.parametrize("order", [17, 47])
def test_order_outside_kernel_range(order):
    with pytest.raises(UsageError):
        SimulatedHPT(order)


def test_default_ram_is_128_times_the_table():
    assert SimulatedHPT(20).ram_size == 128 << 20


# -- H_ENTER ---------------------------------------------------------------------


def test_h_enter_fills_a_group_then_pteg_full(e):
    slots = [e.h_enter(0, 8 * 5 + 3, v64k(k), r64k(k << 16)) for k in range(8)]
    assert slots == [(H_SUCCESS, 40 + k) for k in range(8)]
    assert e.h_enter(0, 40, v64k(99), r64k(0)) == (H_PTEG_FULL, 0)
    assert e.h_remove(0, 43, 0)[0] == H_SUCCESS
    assert e.h_enter(0, 47, v64k(100), r64k(0)) == (H_SUCCESS, 43)


def test_h_enter_exact(e):
    assert e.h_enter(H_EXACT, 77, v64k(1), r64k(0)) == (H_SUCCESS, 77)
    assert e.h_enter(H_EXACT, 77, v64k(2), r64k(0)) == (H_PTEG_FULL, 0)
    assert e.h_enter(H_EXACT, 76, v64k(2), r64k(0)) == (H_SUCCESS, 76)


def test_h_enter_strips_software_bits(e):
    rc, i = e.h_enter(0, 0, v64k(5) | HVLOCK | ABSENT, r64k(0x10000) | MOD)
    assert rc == H_SUCCESS
    v = int(e.hpt[i, 0])
    assert not v & (HVLOCK | ABSENT) and v & VALID
    assert int(e.rev[i]) == r64k(0x10000)  # the guest view, bit 62 gone
    # the hardware copy: a host address, R and C clear (the rmap had none)
    hr = int(e.hpt[i, 1])
    assert hr & 0x0FFFFFFFFFFFF000 == engine.HOST_RAM_BASE + 0x10000 | LP64K
    assert not hr & (R | C)


@pytest.mark.parametrize(
    "v, r",
    [
        ((2 << 62) | (5 << 7) | VALID, 0x10000 | R),  # B = 0b10
        ((3 << 62) | (5 << 7) | VALID, 0x10000 | R),  # B = 0b11
        (v64k(5), 0x10000 | 0x5000),  # LP 5 does not decode
        (v64k(5), 0x10000 | 0x13000),  # 16G with LP high bits set
    ],
)
def test_h_enter_parameter_errors(e, v, r):
    assert e.h_enter(0, 0, v, r)[0] == H_PARAMETER


def test_h_enter_index_past_the_table(e):
    assert e.h_enter(0, e.npte, v64k(1), r64k(0))[0] == H_PARAMETER
    assert e.h_enter(H_EXACT, -1, v64k(1), r64k(0))[0] == H_PARAMETER


def test_h_enter_page_bigger_than_backing_or_slot():
    e = SimulatedHPT(18, ram_size=64 << 20, backing_page_shift=16)
    v16m = ONE_T | (5 << 7) | LARGE | VALID
    assert e.h_enter(0, 0, v16m, 0x1000000 | R)[0] == H_PARAMETER  # 16M page on 64K backing
    assert e.h_enter(0, 0, v64k(5), r64k(0x10000))[0] == H_SUCCESS
    e2 = SimulatedHPT(18, ram_size=72 << 20)  # not a multiple of 16M
    assert e2.h_enter(0, 0, v16m, 0x1000000 | R)[0] == H_PARAMETER
    e3 = SimulatedHPT(18, ram_size=64 << 20)
    assert e3.h_enter(0, 0, v16m, 0x1000000 | R)[0] == H_SUCCESS


def test_mmio_entries_are_absent_and_read_as_valid(e):
    pa = 1 << 45  # far outside guest RAM
    rc, i = e.h_enter(0, 8, v64k(9), r64k(pa, R | C | 0x28 | N))
    assert rc == H_SUCCESS
    v = int(e.hpt[i, 0])
    assert v & ABSENT and not v & VALID
    assert int(e.hpt[i, 1]) & 0x3000000000000E00 == 0x3000000000000E00  # key 31
    assert int(e.rev[i]) == r64k(pa, R | C | 0x28 | N)
    rc, words = e.h_read(0, i)
    assert words[0] == v64k(9)
    with e.htab_fd() as fd:
        ents, _ = entries_of(full_pass(fd))
    assert ents[i] == (v64k(9) | HVLOCK, r64k(pa, R | C | 0x28 | N))
    assert not e.touch(i, True)  # absent: the hardware faults instead


def test_cache_inhibited_ram_becomes_cacheable_in_hardware_only(e):
    rc, i = e.h_enter(0, 0, v64k(1), r64k(0x20000, R | 0x28))  # I|G on RAM
    hr = int(e.hpt[i, 1])
    assert hr & 0x78 == M
    assert int(e.rev[i]) & 0x78 == 0x28


# -- H_REMOVE, H_BULK_REMOVE ----------------------------------------------------------


def test_h_remove(e):
    assert e.h_remove(0, 3, 0) == (H_NOT_FOUND, 0, 0)
    e.h_enter(H_EXACT, 3, v64k(7, BOLTED), r64k(0x30000, R | M))
    assert e.h_remove(H_AVPN, 3, v64k(8) & ~0x7F)[0] == H_NOT_FOUND
    assert e.h_remove(H_ANDCOND, 3, BOLTED)[0] == H_NOT_FOUND
    # HVLOCK is held while the kernel compares: an ANDCOND on it never matches
    assert e.h_remove(H_ANDCOND, 3, HVLOCK)[0] == H_NOT_FOUND
    e.touch(3, write=True)
    rc, v, r = e.h_remove(H_AVPN, 3, v64k(7) & ~0x7F)
    assert rc == H_SUCCESS and v == v64k(7, BOLTED)
    assert r == r64k(0x30000, R | M | C)  # C harvested from the hardware
    assert int(e.hpt[3, 0]) == 0
    # the hardware r is left behind, and H_READ shows it for the invalid slot
    assert e.h_read(0, 3)[1][1] == int(e.hpt[3, 1]) != 0


def test_h_bulk_remove(e):
    e.h_enter(H_EXACT, 10, v64k(1), r64k(0x10000, R | M))
    e.h_enter(H_EXACT, 11, v64k(2, BOLTED), r64k(0x20000, R | C | M))
    e.h_enter(H_EXACT, 12, v64k(3), r64k(0x30000, M))
    e.touch(12, write=False)
    req = 1 << 62
    args = [
        req | 10, 0,  # absolute
        req | (1 << 56) | 11, BOLTED,  # andcond: refused, bolted
        req | (2 << 56) | 12, v64k(3) & ~0x7F,  # AVPN
        3 << 62, 0,  # end
    ]
    rc, out = e.h_bulk_remove(args)
    assert rc == H_SUCCESS
    # response code in the top byte, the entry's R and C in H_BULK_REMOVE_RC
    assert out[0] & ~engine.H_BULK_REMOVE_RC & ((1 << 64) - 1) == (0x80 << 56) | 10
    assert out[0] & engine.H_BULK_REMOVE_RC == R << 51
    assert out[2] == (0x91 << 56) | 11
    assert out[4] & ~engine.H_BULK_REMOVE_RC & ((1 << 64) - 1) == (0x82 << 56) | 12
    assert out[4] & engine.H_BULK_REMOVE_RC == R << 51  # harvested from the hardware
    assert out[6] == 3 << 62
    assert e.count_valid() == 1
    rc, out = e.h_bulk_remove([req | e.npte, 0])
    assert rc == H_PARAMETER and out[0] >> 56 == 0xA0


# -- H_PROTECT, H_READ, H_CLEAR_REF, H_CLEAR_MOD -------------------------------------


def test_h_protect(e):
    e.h_enter(H_EXACT, 20, v64k(4), r64k(0x40000, R | M | 0x3))  # user read-only
    assert e.h_protect(H_AVPN | 0x2, 20, v64k(5) & ~0x7F) == H_NOT_FOUND
    assert e.h_protect(0x2 | N | (1 << 8), 20, 0) == H_SUCCESS  # PP0, PP=2, N
    g = int(e.rev[20])
    assert g & 0x8000000000000007 == (1 << 63) | 0x2 | N
    assert e.h_protect(0x2, 21, 0) == H_NOT_FOUND
    assert e.h_protect(0x2, e.npte, 0) == H_PARAMETER
    # read-only to writable: the hardware copy stays read-only
    e.h_enter(H_EXACT, 22, v64k(6), r64k(0x50000, R | M | 0x3))
    assert e.h_protect(0x2, 22, 0) == H_SUCCESS
    assert int(e.rev[22]) & 0x3 == 0x2
    assert int(e.hpt[22, 1]) & 0x3 == 0x3


def test_h_read(e):
    e.h_enter(H_EXACT, 33, v64k(1), r64k(0x10000, R | M))
    e.touch(33, write=True)
    rc, words = e.h_read(H_READ_4, 34)
    assert rc == H_SUCCESS and len(words) == 8
    assert words[2:4] == [v64k(1), r64k(0x10000, R | C | M)]
    assert e.h_read(0, e.npte) == (H_PARAMETER, [])


def test_h_clear_ref_and_mod(e):
    e.h_enter(H_EXACT, 40, v64k(1), r64k(0x10000, R | M))
    e.touch(40, write=True)
    rc, gr = e.h_clear_mod(0, 40)
    assert rc == H_SUCCESS and gr & C
    assert not int(e.hpt[40, 1]) & C
    rc, gr = e.h_clear_ref(0, 40)
    assert rc == H_SUCCESS and gr & R
    assert not int(e.rev[40]) & R and not int(e.hpt[40, 1]) & R
    assert e.h_clear_ref(0, 41)[0] == H_NOT_FOUND
    assert e.h_clear_mod(0, 41)[0] == H_NOT_FOUND


# -- the bulk forms equal the hypercalls one by one ------------------------------------


def _pair():
    a = SimulatedHPT(18, ram_size=64 << 20)
    b = SimulatedHPT(18, ram_size=64 << 20)
    return a, b


def _same(a, b):
    assert np.array_equal(a.hpt, b.hpt) and np.array_equal(a.rev, b.rev)


@settings(max_examples=40, deadline=None)
@given(
    groups=st.lists(st.integers(0, 15), min_size=1, max_size=300),
    bad=st.sets(st.integers(0, 299), max_size=5),
    interest=st.booleans(),
)
def test_bulk_enter_is_h_enter_one_by_one(groups, bad, interest):
    a, b = _pair()
    if interest:
        a.hpte_mod_interest = b.hpte_mod_interest = 1
    # a few groups near the end of the table too, whose secondary is group 0..15
    groups = [g if g % 3 else a.hash_mask - g for g in groups]
    v = [v64k(k) | (2 << 62 if k in bad else 0) for k in range(len(groups))]
    r = [r64k((k % 512) << 16) for k in range(len(groups))]
    rc, slots = a.bulk_enter(groups, v, r)
    for k, g in enumerate(groups):
        want, slot = b.h_enter(0, g * 8, v[k], r[k])
        if want == H_PTEG_FULL:
            want, slot = b.h_enter(0, ((~g) & b.hash_mask) * 8, v[k] | SECONDARY, r[k])
        assert rc[k] == want
        assert slots[k] == (slot if want == H_SUCCESS else -1)
    _same(a, b)


@settings(max_examples=40, deadline=None)
@given(
    slots=st.lists(st.integers(0, 70), max_size=60),
    flags=st.sampled_from([0, H_AVPN, H_ANDCOND]),
    prot=st.integers(0, 0x1FF),
)
def test_bulk_remove_and_protect_are_hypercalls_one_by_one(slots, flags, prot):
    a, b = _pair()
    for k in range(64):
        for x in (a, b):
            x.h_enter(H_EXACT, k, v64k(k % 7, BOLTED if k % 5 == 0 else 0), r64k(k << 16))
    avpn = [v64k(s % 7) & ~0x7F if flags == H_AVPN else BOLTED for s in slots]
    rc, rv, rr = a.bulk_remove(slots[: len(slots) // 2], flags, avpn[: len(slots) // 2])
    for k, s in enumerate(slots[: len(slots) // 2]):
        want = b.h_remove(flags, s, avpn[k])
        assert (rc[k], rv[k], rr[k]) == want
    rest = slots[len(slots) // 2 :]
    pf = prot | (H_AVPN if flags == H_AVPN else 0)
    rc = a.bulk_protect(rest, pf, avpn[len(slots) // 2 :])
    for k, s in enumerate(rest):
        assert rc[k] == b.h_protect(pf, s, avpn[len(slots) // 2 + k])
    a.touch_many(rest, [k % 2 == 0 for k in range(len(rest))])
    for k, s in enumerate(rest):
        if 0 <= s < b.npte:
            b.touch(s, k % 2 == 0)
    _same(a, b)


# -- the htab fd: opening and closing -------------------------------------------------


def test_htab_fd_flags_and_modes(e):
    with pytest.raises(OSError) as exc:
        e.htab_fd(4)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(UsageError):
        e.htab_fd(byte_order="middle")
    rfd = e.htab_fd()
    wfd = e.htab_fd(KVM_GET_HTAB_WRITE)
    with pytest.raises(OSError) as exc:
        rfd.write(b"")
    assert exc.value.errno == errno.EBADF
    with pytest.raises(OSError) as exc:
        wfd.read(100)
    assert exc.value.errno == errno.EBADF
    assert e.hpte_mod_interest == 1  # read fds only
    rfd.close()
    rfd.close()
    assert e.hpte_mod_interest == 0
    with pytest.raises(OSError) as exc:
        rfd.read(100)
    assert exc.value.errno == errno.EBADF
    with e.htab_fd(KVM_GET_HTAB_BOLTED_ONLY):
        assert e.hpte_mod_interest == 1
    assert e.hpte_mod_interest == 0


# -- reads -------------------------------------------------------------------------------


def _populate(e, n=40, seed=0):
    rng = np.random.default_rng(seed)
    for k in range(n):
        i = int(rng.integers(0, e.npte))
        e.h_enter(0, i, v64k(k, BOLTED if k % 3 == 0 else 0), r64k(int(rng.integers(0, 1024)) << 16))


def test_first_pass_then_nothing_then_changes(e):
    _populate(e)
    fd = e.htab_fd()
    data = full_pass(fd)
    ents, batch = entries_of(data)
    assert len(ents) == e.count_valid() == int(batch.n_valid.sum())
    assert all(v & HVLOCK for v, _ in ents.values())  # read under the lock
    assert all(not r & MOD for _, r in ents.values())
    assert fd.read(1 << 16) == b""
    i = next(iter(ents))
    e.h_protect(0x3, i, 0)
    d = fd.read(1 << 16)
    ents2, batch2 = entries_of(d)
    assert list(ents2) == [i] and list(batch2.index) == [i]
    assert fd.read(1 << 16) == b""


def test_rc_set_by_hardware_is_a_change_and_is_harvested(e):
    e.h_enter(H_EXACT, 100, v64k(1), r64k(0x10000, R | M))  # clean: no C
    fd = e.htab_fd()
    full_pass(fd)
    e.touch(100, write=False)  # R: the guest view has it already
    assert fd.read(1 << 16) == b""
    e.touch(100, write=True)
    ents, _ = entries_of(fd.read(1 << 16))
    assert ents == {100: (v64k(1) | HVLOCK, r64k(0x10000, R | C | M))}
    assert int(e.rev[100]) == r64k(0x10000, R | C | M)  # harvested, not modified
    assert fd.read(1 << 16) == b""


def test_modifications_are_marked_only_while_a_read_fd_is_open(e):
    _populate(e)
    fd = e.htab_fd()
    full_pass(fd)
    fd.close()
    e.h_enter(H_EXACT, 5, v64k(77), r64k(0x70000))  # nobody is interested
    fd = e.htab_fd()
    fd.read(1 << 30)  # first pass
    assert fd.read(1 << 16) == b""
    e.h_remove(0, 5, 0)  # now someone is
    _, batch = entries_of(fd.read(1 << 16))
    assert (list(batch.index), list(batch.n_valid), list(batch.n_invalid)) == ([5], [0], [1])


def test_bolted_only(e):
    _populate(e, 60)
    with e.htab_fd(KVM_GET_HTAB_BOLTED_ONLY) as fd:
        ents, _ = entries_of(full_pass(fd))
    assert ents and all(v & BOLTED for v, _ in ents.values())
    bolted = int(np.count_nonzero((e.hpt[:, 0].astype(np.uint64) & np.uint64(BOLTED | VALID)) == BOLTED | VALID))
    assert len(ents) == bolted


@pytest.mark.parametrize("start", [0, 1000, 16383, 16384, 20000])
def test_start_index(e, start):
    _populate(e)
    fd = e.htab_fd(0, start)
    data = fd.read(1 << 20)
    ents, _ = entries_of(data)
    assert all(i >= start for i in ents)
    assert fd.first_pass is False and fd.index == 0  # the first pass ends at the end
    if start >= e.npte:
        assert data == b""


def test_reads_never_split_a_record_and_use_the_strict_rule(e):
    e.h_enter(H_EXACT, 0, v64k(1), r64k(0x10000))
    fd = e.htab_fd()
    assert fd.read(24) == b""  # 8 + 16 < 24 is false
    d = fd.read(25)
    assert len(d) == 24 and struct.unpack("<IHH", d[:8])[:2] == (0, 1)
    for size in (1, 7, 8, 23):
        assert fd.read(size) == b""


def test_header_byte_order(e):
    e.h_enter(H_EXACT, 0x123, v64k(1), r64k(0x10000))
    with e.htab_fd(0, 0x120, byte_order="big") as fd:
        d = fd.read(1 << 16)
    assert struct.unpack(">IHH", d[:8]) == (0x120, 0, 3)
    assert struct.unpack(">QQ", d[16:32])[0] == v64k(1) | HVLOCK


# -- writes -------------------------------------------------------------------------------


@pytest.mark.parametrize("byte_order", ["little", "big"])
def test_dump_and_load_round_trip(byte_order):
    src = SimulatedHPT(18, ram_size=64 << 20)
    _populate(src, 200)
    src.h_enter(0, 9, v64k(3), r64k(1 << 45))  # an absent (MMIO) entry
    with src.htab_fd(byte_order=byte_order) as fd:
        data = full_pass(fd)
    dst = SimulatedHPT(18, ram_size=64 << 20)
    with dst.htab_fd(KVM_GET_HTAB_WRITE, byte_order=byte_order) as fd:
        assert fd.write_records(data) == len(data)
    with dst.htab_fd(byte_order=byte_order) as fd:
        assert full_pass(fd) == data
    assert np.array_equal(dst.guest_view(), src.guest_view())


def test_write_ebusy_while_running_then_fine_when_stopped(e):
    e.cont()
    fd = e.htab_fd(KVM_GET_HTAB_WRITE)
    with pytest.raises(OSError) as exc:
        fd.write(record(0, n_invalid=8))
    assert exc.value.errno == errno.EBUSY
    e.stop()
    assert fd.write(record(0, n_invalid=8)) == 8


@pytest.mark.parametrize(
    "record, code",
    [
        (record(1 << 14, n_invalid=1), errno.EINVAL),  # index past the table
        (record((1 << 14) - 2, [(v64k(1), r64k(0))], 2), errno.EINVAL),  # runs past it
        (record(0, [(v64k(1) & ~VALID, r64k(0))]), errno.EINVAL),  # no valid bit
        (record(0, [(v64k(1), 0x5000)]), errno.EINVAL),  # LP does not decode
        (record(0, [((2 << 62) | (1 << 7) | VALID, 0x10000)]), errno.EIO),  # B = 0b10
        (record(0, [(ONE_T | (1 << 7) | LARGE | VALID, 0x3000 | R)]), errno.EIO),  # a 16G page in RAM
    ],
)
def test_write_errors(e, record, code):
    fd = e.htab_fd(KVM_GET_HTAB_WRITE)
    with pytest.raises(OSError) as exc:
        fd.write(record)
    assert exc.value.errno == code


def test_records_before_the_failing_one_stay_applied(e):
    e.h_enter(H_EXACT, 52, v64k(9), r64k(0x90000))
    e.h_enter(H_EXACT, 53, v64k(8), r64k(0x80000))
    good = record(50, [(v64k(1), r64k(0x10000)), (v64k(2), r64k(0x20000))])
    bad = record(52, [(v64k(3), r64k(0x30000)), ((3 << 62) | VALID, 0)])  # second: EIO
    fd = e.htab_fd(KVM_GET_HTAB_WRITE)
    with pytest.raises(OSError) as exc:
        fd.write_records(good + bad)
    assert exc.value.errno == errno.EIO
    assert e.h_read(0, 50)[1][0] == v64k(1)
    assert e.h_read(0, 51)[1][0] == v64k(2)
    assert e.h_read(0, 52)[1][0] == v64k(3)  # the failing record's first entry
    assert e.h_read(0, 53)[1][0] == 0  # the old entry was removed before H_ENTER failed


def test_a_partial_trailing_record_is_left_for_the_next_write(e):
    one = record(8, [(v64k(1), r64k(0x10000))])
    two = record(16, [(v64k(2), r64k(0x20000)), (v64k(3), r64k(0x30000))])
    fd = e.htab_fd(KVM_GET_HTAB_WRITE)
    # the kernel's own check forgets the header: two[:-8] would pass it
    assert fd.write_records(one + two[:-8]) == len(one)
    assert fd.write_records(two[:7]) == 0
    assert fd.write_records(two) == len(two)
    assert e.count_valid() == 3
    assert fd.write_calls == 2


def test_n_invalid_invalidates(e):
    _populate(e, 100)
    assert e.count_valid()
    fd = e.htab_fd(KVM_GET_HTAB_WRITE)
    assert fd.write(record(0, n_invalid=e.npte)) == 8
    assert e.count_valid() == 0


def test_written_vrma_entry_sets_up_the_real_mode_area(e):
    vrma_v = ONE_T | (0x1FFFFFF << 24) | LARGE | BOLTED | VALID
    fd = e.htab_fd(KVM_GET_HTAB_WRITE)
    fd.write(record(7, [(vrma_v, 0x1000 | R | C | M)]))
    assert e.mmu_ready
    assert e.vrma_slb_v == 0x110 | (1 << 62) | (0x1FFFFFF << 24)  # L | LP=01 (64K), 1T
    assert e.lpcr == 0x110 << 43


def test_cont_maps_the_vrma_when_asked():
    e = SimulatedHPT(18, ram_size=64 << 20, map_vrma=True, backing_page_shift=16)
    e.cont()
    assert e.mmu_ready and e.vcpus_running
    v = e.hpt[:, 0].astype(np.uint64)
    vrma = np.flatnonzero(v & np.uint64(VALID))
    assert len(vrma) == min(64 << 20 >> 16, e.npteg)  # one per 64K page, one per group
    assert all(i % 8 == 7 for i in vrma)
    assert all(is_vrma_hpte(int(x)) for x in v[vrma])
    e.stop()
    e.cont()  # the MMU is ready: nothing more
    assert int(np.count_nonzero(e.valid_mask())) == len(vrma)


def _twins(seed: int):
    """Two identical simulated tables with R/C set by 'hardware' on some entries."""
    tables = []
    for _ in range(2):
        t = SimulatedHPT(18, ram_size=64 << 20)
        _populate(t, 3000, seed)
        rng = np.random.default_rng(seed)
        valid = np.flatnonzero(t.valid_mask())
        t.touch_many(rng.choice(valid, size=len(valid) // 3, replace=False), write=True)
        tables.append(t)
    return tables


@pytest.mark.parametrize("size", [25, 100, 1000, 4096, 65536])
@pytest.mark.parametrize("start", [0, 777])
@pytest.mark.parametrize("batch", [engine.HARVEST_BATCH, 300])
def test_a_burst_of_reads_is_reads_one_by_one_with_their_side_effects(size, start, batch, monkeypatch):
    """HtabFd.reads (a burst cut from laid-out windows, side effects applied
    in batches) returns what read() returns call by call, and leaves the
    table, the guest view and the fd where read() calls leave them: on a
    first pass, on an incremental one after changes, and when the burst is
    abandoned half-way."""
    monkeypatch.setattr(htabfd, "HARVEST_BATCH", batch)
    one, burst = _twins(size + start)
    fd1, fd2 = one.htab_fd(start_index=start), burst.htab_fd(start_index=start)
    rng = np.random.default_rng(size)
    for round_ in range(3):
        if round_:  # the guest changes entries and hardware sets R/C between passes
            for t in (one, burst):
                valid = np.flatnonzero(t.valid_mask())
                r = np.random.default_rng(round_)
                t.bulk_protect(r.choice(valid, size=len(valid) // 10, replace=False), 0x100 | 0x2)
                t.touch_many(r.choice(valid, size=len(valid) // 10, replace=False), write=True)
        singles = []
        while True:
            singles.append(fd1.read(size))
            if fd1.last_read.wrapped or not singles[-1]:
                break
        together = list(fd2.reads(size))
        assert together == singles
        assert (fd1.index, fd1.first_pass) == (fd2.index, fd2.first_pass)
        assert np.array_equal(one.rev, burst.rev) and np.array_equal(one.hpt, burst.hpt)
    # abandoned after a few reads: the side effects of those reads, no more
    for t in (one, burst):
        t.bulk_protect(np.flatnonzero(t.valid_mask()), 0x100 | 0x2)
    stop = int(rng.integers(1, 4))
    singles = [fd1.read(size) for _ in range(stop)]
    gen = fd2.reads(size)
    together = [next(gen) for _ in range(stop)]
    gen.close()
    assert together == singles and fd1.index == fd2.index
    assert np.array_equal(one.rev, burst.rev)


def _marked_twins(seed: int):
    """Twin tables whose entries were entered and touched while a read fd
    was open on each (so they carry modification marks and pending R/C),
    with those fds, still on their first pass."""
    out = []
    for _ in range(2):
        t = SimulatedHPT(18, ram_size=64 << 20)
        fd = t.htab_fd()
        _populate(t, 3000, seed)
        valid = np.flatnonzero(t.valid_mask())
        t.touch_many(np.random.default_rng(seed).choice(valid, size=len(valid) // 3, replace=False), write=True)
        out += [t, fd]
    return out


@pytest.mark.parametrize("reads", [1, 3])
def test_an_abandoned_first_pass_burst_has_the_side_effects_of_its_reads_only(reads):
    one, fd1, burst, fd2 = _marked_twins(reads)
    singles = [fd1.read(300) for _ in range(reads)]
    it = fd2.reads(300)
    assert [next(it) for _ in range(reads)] == singles
    it.close()
    assert int(np.count_nonzero(one.rev & np.uint64(MOD))) > 0  # entries beyond the reads keep their marks
    assert np.array_equal(one.rev, burst.rev)
    fd1.close()
    fd2.close()


def test_a_read_while_a_burst_is_suspended_sees_its_side_effects_and_ends_it():
    """The kernel applies each read's side effects before it returns; a
    burst defers them, so anything else done with the fd first settles them
    (the reads made so far, no more), and the suspended burst then stops."""
    one, fd1, burst, fd2 = _marked_twins(7)
    a = fd1.read(200)
    it = fd2.reads(200)
    assert next(it) == a
    # the rest of the pass by read(), then a later pass: nothing is reported twice
    rest1, rest2 = [], []
    for fd, rest in ((fd1, rest1), (fd2, rest2)):
        while not rest or not (fd.last_read.wrapped or not rest[-1]):
            rest.append(fd.read(1 << 16))
    assert rest1 == rest2
    assert fd1.read(1 << 16) == fd2.read(1 << 16) == b""
    assert np.array_equal(one.rev, burst.rev)
    with pytest.raises(UsageError, match="suspended"):
        next(it)


def test_a_burst_finished_late_does_not_clear_later_changes():
    """A suspended burst's deferred side effects cover exactly the entries
    its reads went over: settled late, they leave a change made since (and
    its modification mark) alone."""
    one, burst = _twins(8)
    for t in (one, burst):
        fd = t.htab_fd()
        it = fd.reads(200)
        next(it)
        while True:  # on by read(): the rest of the first pass
            fd.read(1 << 16)
            if fd.last_read.wrapped:
                break
        t.h_remove(0, int(np.flatnonzero(t.valid_mask())[0]), 0)  # a change after the burst's reads
        if t is burst:
            it.close()  # the burst is finalised only now
        got = fd.read(1 << 16)
        assert got, "the change is reported by the next pass"
        if t is one:
            want = got
    assert got == want and np.array_equal(one.rev, burst.rev)


@pytest.mark.parametrize("change", ["h_protect", "h_remove", "touch", "other fd", "write fd"])
@pytest.mark.parametrize("first_pass", [True, False])
def test_a_change_while_a_burst_is_suspended_is_reported_as_one_by_one(change, first_pass):
    """Whatever changes the table while a burst waits (a hypercall, hardware
    R/C, another fd's reads, a write fd) comes after the side effects of the
    reads the burst made, as after read() calls; the burst then stops, since
    its plan was made before the change."""
    one, fd1, burst, fd2 = _marked_twins(11)
    if not first_pass:
        for t, fd in ((one, fd1), (burst, fd2)):
            while not fd.read(1 << 20) or not fd.last_read.wrapped:
                pass
            t.bulk_protect(np.flatnonzero(t.valid_mask()), 0x100 | 0x2)  # everything dirty again
    first = fd1.read(2000)
    it = fd2.reads(2000)
    assert next(it) == first
    passed = int(np.flatnonzero(one.valid_mask())[0])  # an entry both reads went over
    ahead = int(np.flatnonzero(one.valid_mask())[-1])  # one they did not reach
    for t in (one, burst):
        if change == "h_protect":
            t.h_protect(0x102, passed, 0)
            t.h_protect(0x102, ahead, 0)
        elif change == "h_remove":
            t.h_remove(0, passed, 0)
            t.h_remove(0, ahead, 0)
        elif change == "touch":
            t.touch(passed, write=True)
        elif change == "other fd":
            with t.htab_fd() as other:
                other.read(5000)
        else:
            t.vcpus_running = False
            with t.htab_fd(KVM_GET_HTAB_WRITE) as w:
                w.write(struct.pack("<IHH", passed, 0, 1))
    with pytest.raises(UsageError, match="changed while a burst"):
        next(it)
    rest1, rest2 = [], []
    for fd, rest in ((fd1, rest1), (fd2, rest2)):
        for _ in range(2):  # to the end of this pass, and the next one
            while True:
                rest.append(fd.read(1 << 16))
                if fd.last_read.wrapped or not rest[-1]:
                    break
    assert rest1 == rest2
    assert np.array_equal(one.rev, burst.rev) and np.array_equal(one.hpt, burst.hpt)
