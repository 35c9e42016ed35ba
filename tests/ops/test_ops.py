"""The operations behind the commands, on in-memory snapshots."""

import numpy as np

from htabtool import ops
from htabtool.records import StaticTable, apply_batch, decode_batch, decode_pieces, encode_pass, iter_reads, new_table
from tests.helpers import synthetic_table


class MemorySnapshot:
    """A SnapshotInput held in memory: no name, no trailer (the records are counted)."""

    name = None

    def __init__(self, pieces, entries, byte_order="little"):
        self._pieces = pieces
        self.entries = entries
        self.byte_order = byte_order

    def trailer(self):
        return None

    def pieces(self, passes=None):
        for number, data in self._pieces:
            if passes is None or passes(number):
                yield number, data

    def batches(self, passes=None):
        return decode_pieces(self.pieces(passes), self.byte_order, self.entries)

    def worked_batches(self, work, passes=None):
        for number, batch in self.batches(passes):
            yield number, batch, None if work is None else work(batch)


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


def test_verify_of_a_file_names_its_problems_as_the_decoder_of_each_pass_does(tmp_path):
    """verify reads the records its reader decoded ahead; the problems it
    lists (a record in pass 2 lacking HPTE_V_VALID, another going back)
    are numbered and placed in their pass exactly as decoding each pass's
    pieces names them (verify_records)."""
    import struct

    from htabtool.container import SnapshotHeader, SnapshotWriter
    from htabtool.sources import open_snapshot

    t = synthetic_table(14, 0.4, 2)
    first = encode_pass(StaticTable(t), "little")
    later = (struct.pack("<IHH", 40, 1, 0) + struct.pack(">QQ", 0x80, 0)  # lacks HPTE_V_VALID
             + struct.pack("<IHH", 50, 1, 0) + struct.pack(">QQ", 0x81, 0)
             + struct.pack("<IHH", 20, 0, 3))  # goes back
    path = tmp_path / "bad.htab"
    with open(path, "wb") as f, SnapshotWriter(f, SnapshotHeader(byte_order="little", order=18)) as w:
        w.write_records(first, 1)
        w.write_records(later, 2)
    with open_snapshot(str(path)) as snap:
        got = [str(p) for p in ops.verify(snap).problems]
        want = [str(p) for p in ops.verify_records(snap)]
    assert got == want and len(got) == 2, got
    assert "pass 2" in got[0] and "record 0 at offset 0x0" in got[0] and "lacks HPTE_V_VALID" in got[0]


# -- the library's own interfaces: targets, options, results, parameter names --------


def _snapshot_file(path, t, read=4096):
    from htabtool.container import SnapshotHeader, SnapshotWriter

    order = len(t).bit_length() - 1 + 4
    with open(path, "wb") as f, SnapshotWriter(f, SnapshotHeader(byte_order="little", order=order)) as w:
        for r in iter_reads(StaticTable(t), read, "little"):
            w.write_records(r.data, 1)
    return path


def test_load_takes_a_target_description_and_returns_its_report(tmp_path):
    from htabtool.sources import open_snapshot

    t = synthetic_table(15, 0.4, 3)
    snap_path = _snapshot_file(tmp_path / "s.htab", t)
    out = tmp_path / "records.bin"
    with open_snapshot(str(snap_path)) as snap:
        report = ops.load(snap, ops.RawTarget(str(out), byte_order="big"))
        want = b"".join(data for _, data in snap.pieces())
    doc = report.to_json()
    assert list(doc)[:3] == ["schema", "snapshot", "target"] and doc["schema"] == "htabtool-load/1"
    assert doc["target"] == "raw" and doc["bytes"] == out.stat().st_size == len(want)
    batch, used = decode_batch(out.read_bytes(), "big")
    state = new_table(2048)
    apply_batch(state, batch)
    assert used == len(want) and np.array_equal(state, t)  # the same records, headers turned big-endian


def test_load_refuses_a_snapshot_that_is_not_sound_before_writing(tmp_path):
    import pytest

    from htabtool.errors import HtabError
    from htabtool.sources import open_snapshot

    t = synthetic_table(15, 0.4, 4)
    snap_path = _snapshot_file(tmp_path / "s.htab", t)
    data = bytearray(snap_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    snap_path.write_bytes(bytes(data))
    out = tmp_path / "records.bin"
    with open_snapshot(str(snap_path)) as snap, pytest.raises(HtabError, match="is not sound, nothing was written"):
        ops.load(snap, ops.RawTarget(str(out)))
    assert not out.exists()


def test_dump_takes_its_write_options_as_one_object(tmp_path):
    import io

    from htabtool.sources import RawStreamSource, WriteOptions, open_snapshot

    t = synthetic_table(18, 0.4, 5)
    raw = b"".join(r.data for r in iter_reads(StaticTable(t), 4096, "little"))
    sizes = []
    for chunk_size in (1 << 12, 1 << 20):
        out = tmp_path / f"c{chunk_size}.htab"
        with open(out, "wb") as f:
            summary = ops.dump(RawStreamSource(io.BytesIO(raw), byte_order="little", order=18), f,
                               WriteOptions(level=3, threads=0, chunk_size=chunk_size), output=str(out))
        sizes.append(summary.chunks)
        assert summary.to_json()["schema"] == "htabtool-dump/1" and summary.records > 0
        with open_snapshot(str(out)) as snap:
            assert b"".join(d for _, d in snap.pieces()) == raw
    assert sizes[0] > sizes[1] == 1  # the chunk size reached the writer


def test_library_errors_name_their_parameter_and_the_cli_names_the_option(tmp_path):
    import pytest

    from htabtool.cli.common import flag_message, flag_name
    from htabtool.errors import UsageError
    from htabtool.sources import order_for

    with pytest.raises(UsageError) as refused:
        order_for(None, 12)
    assert refused.value.param == "entries" and str(refused.value).startswith("entries must be a power of two")
    assert flag_message(refused.value) == "--entries must be a power of two of at least 8, not 12"
    with pytest.raises(UsageError) as refused:
        order_for(None, None)
    assert flag_message(refused.value) == "give the table size as exactly one of --order N or --entries N"
    assert (flag_name("pass_number"), flag_name("start_index"), flag_name("changed_in")) == (
        "--pass", "--start-index", "--changed-in")
    snap = snapshot_of(synthetic_table(15, 0.4, 6))
    with pytest.raises(UsageError) as refused:
        list(ops.show(snap, pass_number=7))
    assert refused.value.param == "pass_number" and str(refused.value).startswith("pass_number 7: the snapshot has no")
    assert flag_message(refused.value).startswith("--pass 7: the snapshot has no pass 7")


def test_the_json_documents_come_from_the_result_types():
    a, b = synthetic_table(15, 0.4, 7), synthetic_table(15, 0.4, 7)
    b[5] = (0x4001, 0x7000)
    d = ops.diff(snapshot_of(a), snapshot_of(b))
    doc = d.to_json()
    assert list(doc)[:3] == ["schema", "a", "b"] and doc["schema"] == "htabtool-diff/1"
    assert {k: v for k, v in doc.items() if k not in ("schema", "a", "b")} == d.to_dict()
    v = ops.verify_records(snapshot_of(a))
    assert v == [] and ops.Verification(v, 1, 2, file="x").to_json()["file"] == "x"
    gone = ops.Unreadable("x.htab", "x.htab: no such file").to_json()
    assert gone["readable"] is False and gone["problems"] == [{"where": "file", "what": "x.htab: no such file"}]
    assert set(ops.SCHEMAS.values()) >= {
        "htabtool-stat/1", "htabtool-map/1", "htabtool-migrate/1", "htabtool-vm-info/1"}
