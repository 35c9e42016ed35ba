"""The guest model: reproducible, placed by the architecture's hash, Linux-like."""

from __future__ import annotations

import numpy as np
import pytest

from htabtool.errors import UsageError
from htabtool.records import decode_batch
from htabtool.sim import KVM_GET_HTAB_WRITE, SimulatedHPT
from htabtool.sim.guest import Guest, get_profile, ram_order

MIB = 1 << 20
VALID, SECONDARY, BOLTED, ABSENT = 0x1, 0x2, 0x10, 0x20


def boot(profile="idle", ram=256 * MIB, seed=1):
    e = SimulatedHPT(ram_order(ram), ram_size=ram)
    return e, Guest.boot(e, profile, seed)


def same(a: Guest, b: Guest):
    return (
        np.array_equal(a.hpt.hpt, b.hpt.hpt)
        and np.array_equal(a.hpt.rev, b.hpt.rev)
        and np.array_equal(a.gmap, b.gmap)
    )


# -- an independent reading of Linux's hash (mmu-hash.h) -----------------------------

BASES = {1: 0xC000000000000000, 5: 0xC008000000000000, 6: 0xC00A000000000000, 7: 0xC00C000000000000}


def scramble(proto, bits):
    """vsid_scramble's division-free form."""
    mod = (1 << bits) - 1
    x = proto * 12538073
    x = (x >> bits) + (x & mod)
    return (x + ((x + 1) >> bits)) & mod


def expected_place(word: int, mask: int):
    """(primary group, secondary group, first doubleword & ~0x7f) of a gmap word."""
    ctx = (word >> 40) & 0x7FFFF
    ea = BASES.get(ctx, 0) + ((word & ((1 << 33) - 1)) << 16)
    one_t = ctx < 8 or ea >= 1 << 40
    if one_t:
        vsid = scramble((ctx << 9) | ((ea >> 40) & 0x1FF), 28)
        vpn = (vsid << 28) | ((ea >> 12) & ((1 << 28) - 1))
        h = vsid ^ (vsid << 25) ^ ((vpn & ((1 << 28) - 1)) >> 4)
    else:
        vsid = scramble((ctx << 21) | ((ea >> 28) & ((1 << 21) - 1)), 40)
        vpn = (vsid << 16) | ((ea >> 12) & 0xFFFF)
        h = (vpn >> 16) ^ ((vpn & 0xFFFF) >> 4)
    h &= 0x7FFFFFFFFF
    return h & mask, (~h) & mask, ((vpn >> 11) << 7) | (int(one_t) << 62)


def check_placement(g: Guest, stale_ok: bool = False):
    """Every entry the guest believes it has is at its hashed place (with
    ``stale_ok``, beliefs about entries removed behind its back are skipped)."""
    e = g.hpt
    present = np.flatnonzero(g.gmap >> np.uint64(63))
    assert len(present)
    for s in present.tolist():
        prim, sec, avpn = expected_place(int(g.gmap[s]), e.hash_mask)
        v = int(e.hpt[s, 0])
        if stale_ok and not v & (VALID | ABSENT):
            continue
        assert v & (VALID | ABSENT)
        assert v & ~0x7F == avpn, hex(s)
        assert s // 8 == (sec if v & SECONDARY else prim)


def test_entries_are_where_the_hash_puts_them():
    e, g = boot("kernel-build", seed=3)
    g.run(ops=150)
    check_placement(g)


def test_same_seed_same_guest_other_seed_other_guest():
    _, a = boot(seed=5)
    _, b = boot(seed=5)
    _, c = boot(seed=6)
    assert same(a, b)
    a.run(ops=40)
    b.run(ops=40)
    c.run(ops=40)
    assert same(a, b) and a.state == b.state
    assert not same(a, c)


def test_runs_compose():
    _, a = boot("kernel-build", seed=9)
    _, b = boot("kernel-build", seed=9)
    a.run(ops=30)
    a.run(ops=45)
    b.run(ops=75)
    assert same(a, b)
    assert a.state["processes"] == b.state["processes"]
    assert a.state["rng"] == b.state["rng"]
    assert a.state["events"] == b.state["events"] == 75


def test_idle_4g_is_calibrated_on_the_real_capture():
    """A real capture (QEMU 7.2, Linux 6.1): a 4G guest, htab_shift 25, about 65,700 valid entries,
    almost all bolted 64K linear-map entries, first-pass records of one entry."""
    e, g = boot("idle", ram=4 << 30, seed=1)
    assert e.order == 25
    valid = e.count_valid()
    assert 65_600 <= valid <= 65_800
    low = e.hpt.view(np.uint8)[:, 7]
    bolted = int(np.count_nonzero((low & (VALID | BOLTED)) == (VALID | BOLTED)))
    assert bolted >= 65_536
    with e.htab_fd() as fd:
        data = fd.read(1 << 30)
    batch, _ = decode_batch(data, "little")
    nv = batch.n_valid[batch.n_valid > 0]
    assert (nv == 1).mean() > 0.99
    g.run(seconds=60)
    assert abs(e.count_valid() - 65_700) < 200


def test_linear_map():
    e, g = boot("idle", ram=256 * MIB)
    words = g.gmap.astype(np.uint64)
    linear = np.flatnonzero((words >> np.uint64(63)) & (((words >> np.uint64(40)) & np.uint64(0x7FFFF)) == 1))
    assert len(linear) == 256 * MIB >> 16  # one entry per 64K of RAM
    v = e.hpt[linear, 0].astype(np.uint64)
    g_r = e.rev[linear].astype(np.uint64)
    assert np.all(v & np.uint64(BOLTED | 0x4 | VALID) == np.uint64(BOLTED | 0x4 | VALID))
    assert np.all(v >> np.uint64(62) == 1)  # 1T segments
    pa = (words[linear] & np.uint64((1 << 33) - 1)) << np.uint64(16)
    assert np.array_equal(g_r & np.uint64(0x0FFFFFFFFFFF0000), pa)
    assert np.all(g_r & np.uint64(0xF000) == np.uint64(0x1000))  # LP: 64K
    text = pa < np.uint64(32 * MIB)
    pp = g_r & np.uint64((1 << 63) | 3)
    assert np.all(pp[text] == np.uint64((1 << 63) | 2))  # made read-only: PP_RXXX
    assert np.all(pp[~text] == 0)
    nx = (g_r & np.uint64(0x4)) != 0
    assert not nx[pa < np.uint64(24 * MIB)].any() and nx[pa >= np.uint64(32 * MIB)].all()


def test_io_mappings_are_absent():
    e, g = boot("database", ram=256 * MIB)
    low = e.hpt.view(np.uint8)[:, 7]
    assert int(np.count_nonzero(low & ABSENT)) == get_profile("database").io_pages


def test_kernel_build_churns_fork_exec_exit():
    e, g = boot("kernel-build", seed=2)
    stats = g.run(ops=300)
    assert stats.events["fork"] and stats.events["exec"] and stats.events["exit"]
    assert stats.entered > 5000 and stats.removed > 5000 and stats.protected
    assert stats.failed == 0
    check_placement(g)


def test_database_has_a_large_resident_set_and_few_changes():
    e, g = boot("database", ram=1 << 30, seed=4)
    linear = (1 << 30) >> 16
    valid = e.count_valid()
    assert valid > 1.5 * linear
    stats = g.run(ops=300)
    assert stats.removed < 0.05 * valid
    assert stats.touched > stats.entered


def test_run_needs_running_vcpus():
    e, g = boot()
    e.stop()
    with pytest.raises(UsageError):
        g.run(ops=1)
    e.cont()
    g.run(ops=1)
    with pytest.raises(UsageError):
        g.run()


def test_run_seconds_advances_the_clock():
    _, g = boot()
    g.run(seconds=10)
    g.run(seconds=2.5)
    assert g.state["clock"] == pytest.approx(12.5)


def test_empty_profile_is_an_incoming_vm():
    e, g = boot("empty")
    assert e.count_valid() == 0 and not e.vcpus_running and not e.mmu_ready
    with pytest.raises(UsageError):
        g.run(ops=1)


def test_guest_survives_its_table_being_replaced():
    e, g = boot("kernel-build", seed=7)
    e.stop()
    with e.htab_fd(KVM_GET_HTAB_WRITE) as fd:
        fd.write(_invalidate_all(e))
    assert e.count_valid() == 0
    e.cont()
    stats = g.run(ops=100)
    assert stats.lost > 0  # removals found nothing, as H_AVPN says
    assert stats.entered > 0
    check_placement(g, stale_ok=True)


def _invalidate_all(e):
    import struct

    out = b""
    for i in range(0, e.npte, 0xFFFF):
        out += struct.pack("<IHH", i, 0, min(0xFFFF, e.npte - i))
    return out


def test_an_incremental_pass_reports_what_the_guest_changed():
    e, g = boot("idle", seed=11)
    fd = e.htab_fd()
    while fd.first_pass:
        fd.read(1 << 20)
    before = e.guest_view()
    g.run(ops=40)
    after = e.guest_view()
    changed = set(np.flatnonzero(np.any(before != after, axis=1)).tolist())
    data = fd.read(1 << 30)
    batch, _ = decode_batch(data, "little")
    reported = set()
    for i, nv, ni in zip(batch.index, batch.n_valid, batch.n_invalid):
        reported.update(range(int(i), int(i + nv + ni)))
    assert changed <= reported
    assert fd.read(1 << 30) == b""
    fd.close()


@pytest.mark.parametrize("ram, order", [(2 << 30, 24), (4 << 30, 25), (8 << 30, 26), (16 * MIB, 18), (1 << 40, 33)])
def test_ram_order_is_qemus_rule(ram, order):
    assert ram_order(ram) == order
