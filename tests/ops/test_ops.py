"""The operations behind the commands, on in-memory snapshots."""

import numpy as np

from htabtool import ops
from htabtool.records import StaticTable, apply_batch, decode_batch, encode_pass, iter_reads, new_table
from tests.helpers import synthetic_table


class MemorySnapshot:
    def __init__(self, pieces, entries, byte_order="little"):
        self._pieces = pieces
        self.entries = entries
        self.byte_order = byte_order

    def pieces(self, passes=None):
        for number, data in self._pieces:
            if passes is None or passes(number):
                yield number, data


def snapshot_of(t, order="little", read=4096):
    return MemorySnapshot([(1, r.data) for r in iter_reads(StaticTable(t), read, order)], len(t), order)


def test_stat_counts_the_final_state():
    t = synthetic_table(15, 0.4, 1)
    s = ops.stat(snapshot_of(t), window=256)
    assert s.table.valid == int((t[:, 0].astype(np.uint64) & np.uint64(1)).sum())
    assert s.table.entries == 2048
    assert s.records.records > 0 and list(s.records.passes) == [1]


def test_diff_identical_and_different_and_delta_round_trip():
    a, b = synthetic_table(16, 0.4, 98), synthetic_table(16, 0.4, 98)  # seed 98: entry 4000 is free (added below)
    assert not ops.diff(snapshot_of(a), snapshot_of(b, "big")).different
    live = np.flatnonzero(a[:, 0].astype(np.uint64) & np.uint64(1))
    b[17] = 0
    b[live[5], 1] = 0xABC000
    b[4000] = (0x4001, 0x7000)
    pieces = []
    d = ops.diff(snapshot_of(a), snapshot_of(b), delta=lambda p, data: pieces.append(data), window=1024,
                 delta_read_size=64)
    assert d.different
    assert (d.summary.removed, d.summary.changed) == (int(a[17, 0]) & 1, 1)
    assert [c.index for c in d.first] == sorted(c.index for c in d.first)
    state = new_table(4096)
    for data in [p for _, p in snapshot_of(a).pieces()] + pieces:
        batch, _ = decode_batch(data, "little")
        apply_batch(state, batch)
    assert np.array_equal(state, b)


def test_verify_lists_problems():
    import struct

    good = encode_pass(StaticTable(synthetic_table(10, 0.4, 2)), "little")
    bad = struct.pack("<IHH", 60, 0, 10) + struct.pack("<IHH", 3, 1, 0) + struct.pack(">QQ", 0x80, 0)
    problems = ops.verify_records(MemorySnapshot([(1, good), (2, bad)], 64))
    text = [str(p) for p in problems]
    assert any("run past the table" in t for t in text), text
    assert any("lacks HPTE_V_VALID" in t or "below the end" in t for t in text), text
    assert ops.verify_records(MemorySnapshot([(1, good)], 64)) == []
