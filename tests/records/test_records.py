"""The record codec against hand-checked bytes and against the kernel model."""

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from htabtool import records
from htabtool.errors import QemuStreamError, RecordError, StreamError, TruncatedStream, UsageError
from htabtool.records import (
    END_OF_STREAM,
    NEED_DATA,
    Record,
    RecordDecoder,
    RecordHeader,
    StaticTable,
    apply_batch,
    decode_batch,
    encode_pass,
    encode_read,
    iter_reads,
    new_table,
)
from tests.helpers import RECORD_FIXTURES
from tests.helpers.kernel_model import ModelFd, model_apply

FIXTURES = RECORD_FIXTURES


def make_table(entries):
    """entries: {index: (v, r)} -> (N, 2) '>u8' table."""
    n = entries.pop("n")
    t = new_table(n)
    for i, (v, r) in entries.items():
        t[i] = (v, r)
    return t


# -- golden bytes, computed by hand ----------------------------------------
# Each case: a table, the read size, the header byte order, and the bytes
# the kernel's read returns, written out field by field.
V = 0x4000000000012381  # 1T segment (B=01), AVPN 0x247, HPTE_V_VALID
R = 0x0000000012340190  # RPN 0x12340, R (0x100), M (0x10)


def le_hdr(i, nv, ni):
    return struct.pack("<IHH", i, nv, ni)


def be_hdr(i, nv, ni):
    return struct.pack(">IHH", i, nv, ni)


def ent(v, r):
    return struct.pack(">QQ", v, r)


GOLDEN = [
    # name, table, count, byte order, expected
    (
        "three-valid-then-invalid-le",
        {"n": 16, 0: (V, R), 1: (V + 0x80, R), 2: (V + 0x100, R), 8: (V, R)},
        65536,
        "little",
        # record 0: entries 0-2 valid, 3-7 invalid; record 1: entry 8, then 7 invalid
        bytes.fromhex("00000000" "0300" "0500")
        + ent(V, R) + ent(V + 0x80, R) + ent(V + 0x100, R)
        + bytes.fromhex("08000000" "0100" "0700")
        + ent(V, R),
    ),
    (
        "same-big-endian-headers",
        {"n": 16, 0: (V, R), 1: (V + 0x80, R), 2: (V + 0x100, R), 8: (V, R)},
        65536,
        "big",
        bytes.fromhex("00000000" "0003" "0005")
        + ent(V, R) + ent(V + 0x80, R) + ent(V + 0x100, R)
        + bytes.fromhex("00000008" "0001" "0007")
        + ent(V, R),
    ),
    (
        "leading-invalid-run",
        {"n": 8, 5: (V, R)},
        65536,
        "little",
        bytes.fromhex("00000000" "0000" "0500") + bytes.fromhex("05000000" "0100" "0200") + ent(V, R),
    ),
    (
        "budget-cuts-a-valid-run",
        # 8 + 16 + 16 = 40 bytes; the second entry needs nb + 16 < count:
        # 24 + 16 = 40 < 41 holds, a third would need 56 < 41: the record
        # ends with n_invalid 0 and the read returns 40 bytes
        {"n": 8, 0: (V, R), 1: (V, R), 2: (V, R)},
        41,
        "little",
        le_hdr(0, 2, 0) + ent(V, R) + ent(V, R),
    ),
    (
        "strict-fit-leaves-the-last-byte",
        # count 40: the second entry needs 24 + 16 < 40: false, so one entry;
        # then the invalid run cannot start (entry 1 is valid): n_invalid 0
        {"n": 8, 0: (V, R), 1: (V, R), 2: (V, R)},
        40,
        "little",
        le_hdr(0, 1, 0) + ent(V, R),
    ),
    (
        "no-room-for-a-record",
        {"n": 8, 0: (V, R)},
        24,
        "little",
        b"",
    ),
    (
        "empty-table-one-header",
        {"n": 8},
        65536,
        "little",
        le_hdr(0, 0, 8),
    ),
]


@pytest.mark.parametrize("name,spec,count,order,expected", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_encode(name, spec, count, order, expected):
    table = make_table(dict(spec))
    got = encode_read(StaticTable(table), 0, True, count, order).data
    assert got == expected
    assert (FIXTURES / f"{name}.bin").read_bytes() == expected


@pytest.mark.parametrize("name,spec,count,order,expected", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_decode_whole_bytewise_and_trailing(name, spec, count, order, expected):
    table = make_table(dict(spec))
    want = []
    for rec in _decode_all(expected, order, step=len(expected) or 1):
        want.append((rec.index, rec.n_valid, rec.n_invalid, rec.entries))
    assert _decode_all(expected, order, step=1) == _decode_all(expected, order, step=len(expected) or 1)
    # trailing bytes that do not make a record are a truncation, with the offset
    if expected:
        with pytest.raises(TruncatedStream) as exc:
            _decode_all(expected + b"\x01\x02\x03", order, step=1)
        assert exc.value.offset == len(expected)
    # applying the records gives back the valid entries of a whole-table read
    if count == 65536:
        state = new_table(len(table))
        batch, used = decode_batch(expected, order, n_entries=len(table))
        assert used == len(expected)
        apply_batch(state, batch)
        assert np.array_equal(state, table)


def _decode_all(data, order, step):
    dec = RecordDecoder(order)
    out = []
    for k in range(0, len(data), step):
        dec.receive_data(data[k : k + step])
        while True:
            ev = dec.next_event()
            if ev is NEED_DATA:
                break
            out.append(ev)
    dec.receive_data(b"")
    while (ev := dec.next_event()) is not END_OF_STREAM:
        out.append(ev)
    return out


def test_record_header_rejects_what_cannot_be_encoded():
    with pytest.raises(StreamError):
        RecordHeader(0, 0x10000, 0)
    with pytest.raises(StreamError):
        RecordHeader(1 << 32, 0, 0)
    with pytest.raises(StreamError):
        Record(0, 2, 0, b"\0" * 16)


def test_bad_byte_order_is_a_usage_error():
    with pytest.raises(UsageError):
        RecordDecoder("middle")
    with pytest.raises(UsageError):
        encode_pass(StaticTable(new_table(8)), "native")


# -- the kernel model, byte for byte ----------------------------------------

KIND_V, KIND_VB, KIND_I = 0, 1, 2


@st.composite
def tables(draw, max_runs=30, max_run=40):
    runs = draw(st.lists(st.tuples(st.sampled_from([KIND_V, KIND_VB, KIND_I]), st.integers(1, max_run)), min_size=1,
                         max_size=max_runs))
    kinds = [k for k, n in runs for _ in range(n)]
    n = len(kinds)
    t = new_table(n)
    rows = []
    for i, k in enumerate(kinds):
        if k == KIND_I:
            rows.append((0, 0))
        else:
            v = (i << 7) | 0x1 | (0x10 if k == KIND_VB else 0) | (0x4 if i % 3 == 0 else 0)
            rows.append((v, (i << 12) | 0x190))
    for i, row in enumerate(rows):
        t[i] = row
    return t, rows


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tables(),
    st.lists(st.integers(1, 700), min_size=1, max_size=12),
    st.sampled_from(["little", "big"]),
    st.booleans(),
    st.integers(0, 20),
    st.randoms(use_true_random=False),
)
def test_encode_read_matches_kernel_model(tab, counts, order, bolted_only, start_slack, rnd):
    table, rows = tab
    n = len(rows)
    start = rnd.randrange(0, n + start_slack)
    changed = np.array([rnd.random() < 0.3 for _ in range(n)])
    model = ModelFd(rows, changed=changed.tolist(), bolted_only=bolted_only, start_index=start, byte_order=order)
    src = StaticTable(table, changed=changed.copy(), bolted_only=bolted_only)
    index, first_pass = start, True
    for count in counts * 3:  # long enough to cross into incremental passes
        want = model.read(count)
        res = encode_read(src, index, first_pass, count, order)
        assert res.data == want
        src.mark_read(res)
        index = res.next_index
        if res.wrapped:
            first_pass = False
        assert index == model.index
        assert first_pass == model.first_pass


def test_runs_longer_than_0xffff_are_capped_like_the_kernel():
    # 70,000 valid, 140,000 invalid, 3 valid, 70,000 invalid
    n = 70_000 + 140_000 + 3 + 70_000
    rows = [(0, 0)] * n
    t = new_table(n)
    valid_at = list(range(70_000)) + list(range(210_000, 210_003))
    for i in valid_at:
        rows[i] = ((i << 7) | 1, i << 12)
    t[valid_at, 0] = [(i << 7) | 1 for i in valid_at]
    t[valid_at, 1] = [i << 12 for i in valid_at]
    data = encode_pass(StaticTable(t), "little")
    assert data == ModelFd(rows).read(1 << 40)
    batch, _ = decode_batch(data, "little")
    # the valid run: 65535 + 4465; its last piece takes 65535 of the 140,000
    # invalid entries, the rest follow as 65535 + 8930; then 3 valid and
    # 65535 + 4465 invalid
    assert batch.index.tolist() == [0, 65535, 135535, 201070, 210_000, 275538]
    assert batch.n_valid.tolist() == [65535, 4465, 0, 0, 3, 0]
    assert batch.n_invalid.tolist() == [0, 65535, 65535, 8930, 65535, 70_000 - 65535]


@settings(max_examples=100, deadline=None)
@given(tables(), st.sampled_from(["little", "big"]), st.data())
def test_decode_any_cut_points_then_apply_round_trips(tab, order, data):
    table, rows = tab
    stream = encode_pass(StaticTable(table), order)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    pieces = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
    state = new_table(len(table))
    for batch in records.iter_batches(pieces, order, n_entries=len(table)):
        apply_batch(state, batch)
    assert np.array_equal(state, table)
    assert [tuple(map(int, r)) for r in state] == model_apply([(0, 0)] * len(rows), stream, order)


@settings(max_examples=100, deadline=None)
@given(tables(), st.sampled_from(["little", "big"]), st.integers(25, 400))
def test_budgeted_reads_reassemble_the_table(tab, order, count):
    table, _ = tab
    parts = [r.data for r in iter_reads(StaticTable(table), count, order)]
    assert all(len(p) < count for p in parts)
    state = new_table(len(table))
    for batch in records.iter_batches(parts, order, n_entries=len(table)):
        apply_batch(state, batch)
    assert np.array_equal(state, table)


def test_layout_round_trip_through_batch_to_bytes():
    t = make_table({"n": 40, 3: (V, R), 4: (V, R), 30: (V | 0x10, R)})
    for order in ("little", "big"):
        stream = encode_pass(StaticTable(t), order)
        batch, _ = decode_batch(stream, order)
        assert batch.to_bytes(order) == stream


# -- malformed input: typed errors, never IndexError or struct.error --------


def _stream(*recs, order="little"):
    fmt = "<IHH" if order == "little" else ">IHH"
    out = b""
    for index, nv, ni, entries in recs:
        out += struct.pack(fmt, index, nv, ni) + b"".join(ent(v, r) for v, r in entries)
    return out


@pytest.mark.parametrize("cut", [1, 4, 7])
def test_truncated_header(cut):
    stream = _stream((0, 1, 0, [(V, R)]))
    with pytest.raises(TruncatedStream, match=rf"truncated record header at offset 0x18: need 8 bytes, got {cut}"):
        list(records.iter_batches([stream + stream[:cut]], "little"))


def test_truncated_entries():
    stream = _stream((0, 3, 0, [(V, R)] * 3))
    with pytest.raises(TruncatedStream, match=r"truncated record 0 at offset 0x0: need 48 entry bytes, got 40"):
        list(records.iter_batches([stream[:-8]], "little"))


@pytest.mark.parametrize(
    "recs,message",
    [
        (((20, 0, 1, []),), r"record 0 at offset 0x0: index 20 is past the table of 16 entries"),
        (((0, 1, 0, [(V, R)]), (10, 2, 5, [(V, R)] * 2)),
         r"record 1 at offset 0x18: entries 10\.\.16 run past the table of 16 entries"),
        (((2, 2, 0, [(V, R), (V & ~1, R)]),), r"record 0 at offset 0x0: entry 3 of the valid run lacks HPTE_V_VALID"),
    ],
)
def test_records_the_kernel_would_refuse(recs, message):
    stream = _stream(*recs)
    with pytest.raises(RecordError, match=message):
        list(records.iter_batches([stream], "little", n_entries=16))
    state = new_table(16)
    batch, _ = decode_batch(stream, "little")
    with pytest.raises(RecordError):
        apply_batch(state, batch)
    assert not state.any(), "a refused batch changes nothing"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["little", "big"]))
def test_random_bytes_give_records_or_typed_errors(blob, order):
    try:
        for batch in records.iter_batches([blob], order, n_entries=64):
            apply_batch(new_table(64), batch)
    except StreamError:
        pass


def test_later_records_override_earlier_ones_in_stream_order():
    # a pass then an incremental record that invalidates entry 1 and rewrites 0
    stream = _stream((0, 2, 0, [(V, R), (V, R)]), (0, 1, 1, [(V + 0x80, R)]))
    state = new_table(4)
    batch, _ = decode_batch(stream, "little")
    apply_batch(state, batch)
    assert int(state[0, 0]) == V + 0x80 and not state[1].any()


def test_split_passes_where_indexes_go_back():
    from htabtool.records import split_passes

    stream = _stream((0, 1, 3, [(V, R)]), (8, 1, 0, [(V, R)]), (2, 1, 0, [(V, R)]), (1, 0, 1, []), (4, 1, 0, [(V, R)]))
    batch, _ = decode_batch(stream, "little")
    pieces, p, end = split_passes(batch, 1, 0)
    assert [(n, len(b)) for n, b in pieces] == [(1, 48), (2, 24), (3, 32)]
    assert b"".join(b for _, b in pieces) == stream
    assert (p, end) == (3, 5)


@settings(max_examples=200, deadline=None)
@given(tables(), st.sampled_from(["little", "big"]), st.data())
def test_the_vectorised_scan_finds_what_the_walk_finds(tab, order, data):
    table, _ = tab
    stream = encode_pass(StaticTable(table), order) + encode_pass(StaticTable(table, bolted_only=True), order)
    cut = data.draw(st.integers(0, len(stream)))
    noise = data.draw(st.binary(max_size=40))
    for buf in (stream[:cut], stream[:cut] + noise):
        scanned, used_s = (decode_batch(buf, order, n_entries=len(table)) if _sound(buf, order, len(table))
                           else (None, None))
        walked, used_w = decode_batch(buf, order)
        if scanned is not None:
            assert used_s == used_w
            assert scanned.index.tolist() == walked.index.tolist()
            assert np.array_equal(scanned.entries, walked.entries)


def _sound(buf, order, n):
    try:
        decode_batch(buf, order, n_entries=n)
        return True
    except StreamError:
        return False


def test_scan_and_walk_agree_on_a_large_table():
    from htabtool.records import header_dtype, scan_headers

    rng = np.random.default_rng(5)
    n = 1 << 16
    t = new_table(n)
    live = rng.random(n) < 0.5
    t[live, 0] = (rng.integers(0, 1 << 50, int(live.sum()), dtype=np.uint64) << np.uint64(7)) | np.uint64(1)
    t[live, 1] = rng.integers(0, 1 << 20, int(live.sum()), dtype=np.uint64)  # small r: many false candidates
    stream = encode_pass(StaticTable(t), "little")
    for cut in (len(stream), len(stream) - 3, len(stream) // 2 + 5):
        words = np.frombuffer(stream[: cut // 8 * 8], dtype=header_dtype("little"))
        got = scan_headers(words, len(words), n)
        walked, used = decode_batch(stream[:cut], "little")
        assert got is not None  # a sound stream, whole or cut: the scan vouches, no loop per record
        assert got[0].tolist() == (walked.offset // 8).tolist() and got[1] * 8 == used


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=60),
       st.binary(min_size=0, max_size=64), st.integers(0, 2**32 - 1))
def test_the_scan_answers_as_the_walk_or_not_at_all(layout, noise, seed):
    """Words crafted to be candidates everywhere (small indexes, small counts
    in the entries too), with stray bytes spliced in: whatever the scan
    returns is the walk's answer."""
    from htabtool.records import header_dtype, scan_headers
    from htabtool.records.decode import _walk

    rng = np.random.default_rng(seed)
    parts = []
    for index, n_valid, n_invalid in layout:
        parts.append(np.array([(index, n_valid, n_invalid)], dtype=header_dtype("little")).tobytes())
        words = rng.integers(0, 8, size=(2 * n_valid, 4), dtype=np.uint16)  # every word a candidate
        parts.append(words.astype("<u2").tobytes())
    data = b"".join(parts)
    at = seed % (len(data) + 1)
    data = data[:at] + noise + data[at:]
    words = np.frombuffer(data[: len(data) // 8 * 8], dtype=header_dtype("little"))
    got = scan_headers(words, len(words), 64)
    if got is not None:
        positions, end = _walk(words["n_valid"].astype(np.uint16).data, len(words))
        assert got[0].tolist() == positions and got[1] == end


@settings(max_examples=150, deadline=None)
@given(tables(), st.integers(25, 3000), st.sampled_from(["little", "big"]), st.booleans(),
       st.randoms(use_true_random=False))
def test_a_burst_of_reads_equals_reads_one_by_one(tab, count, order, bolted_only, rnd):
    from htabtool.records import encode_reads

    table, rows = tab
    n = len(rows)
    start = rnd.randrange(0, n)
    changed = np.array([rnd.random() < 0.3 for _ in range(n)])
    for first_pass in (True, False):
        one = StaticTable(table, changed=changed.copy(), bolted_only=bolted_only)
        burst = StaticTable(table, changed=changed.copy(), bolted_only=bolted_only)
        singles, index = [], start
        while True:
            res = encode_read(one, index, first_pass, count, order)
            one.mark_read(res)
            singles.append(res)
            if res.wrapped or not res.data:
                break
            index = res.next_index
        together = []
        for res in encode_reads(burst, start, first_pass, count, order, window=64):
            burst.mark_read(res)
            together.append(res)
        assert [r.data for r in together] == [r.data for r in singles]
        for a, b in zip(together, singles):
            assert (a.next_index, a.wrapped, a.reported, a.stats) == (b.next_index, b.wrapped, b.reported, b.stats)
            for name in ("index", "n_valid", "n_invalid", "entries"):
                assert np.array_equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("count", [40_000, 65536, 0x10000 * 16 + 40, 1 << 21])
def test_a_burst_cuts_runs_longer_than_the_cap_as_reads_one_by_one(count):
    """Valid and invalid runs past 0xffff entries: the kernel caps each
    record's counts, and a read that cuts a capped piece makes the next read's
    valid run go on into the following piece."""
    from htabtool.records import encode_reads

    n = 1 << 19
    t = new_table(n)
    live = np.zeros(n, dtype=bool)
    live[10:10 + 0x10000 + 5000] = True  # one valid run longer than the cap
    live[100_000:100_003] = True
    live[140_000:140_000 + 3 * 0x10000 + 7] = True  # three capped pieces and a bit
    # ... and an invalid run of 187,929 entries to the end: three capped invalid pieces
    t[live, 0] = (np.arange(int(live.sum()), dtype=np.uint64) << np.uint64(12)) | np.uint64(1)
    t[live, 1] = np.arange(int(live.sum()), dtype=np.uint64)
    singles, index = [], 0
    src = StaticTable(t)
    while True:
        res = encode_read(src, index, True, count, "little")
        singles.append(res)
        if res.wrapped or not res.data:
            break
        index = res.next_index
    together = list(encode_reads(StaticTable(t), 0, True, count, "little", window=4096))
    assert len(together) == len(singles)
    for a, b in zip(together, singles):
        assert ((a.data, a.next_index, a.wrapped, a.reported, a.stats)
                == (b.data, b.next_index, b.wrapped, b.reported, b.stats))
        assert np.array_equal(a.n_valid, b.n_valid) and np.array_equal(a.index, b.index)
    assert max(int(r.n_valid.max()) for r in singles if len(r.n_valid)) == min(0xFFFF, (count - 24 + 15) // 16)
    assert max(int(r.n_invalid.max()) for r in singles if len(r.n_invalid)) == 0xFFFF


# -- the header's 32-bit index ---------------------------------------------------------


def test_an_index_past_32_bits_is_refused_never_ored_into_n_valid():
    # a table of order 37 has 2**33 entries: index 2**32 + 5 cannot be written
    index = np.array([7, (1 << 32) + 5], dtype=np.int64)
    n_valid = np.array([0, 0], dtype=np.int64)
    for byte_order in ("little", "big"):
        with pytest.raises(StreamError, match=r"record index 4294967301 does not fit the header's 32-bit index"):
            records.layout_records(index, n_valid, n_valid, np.zeros((0, 2), dtype=">u8"), byte_order)
    # the largest index still is one: it round-trips exactly
    top = np.array([0xFFFFFFFF], dtype=np.int64)
    data = records.layout_records(
        top, np.zeros(1, np.int64), np.ones(1, np.int64), np.zeros((0, 2), dtype=">u8"), "little")
    assert struct.unpack("<IHH", data) == (0xFFFFFFFF, 0, 1)


@pytest.mark.parametrize("order", [37, 40, 46])
def test_orders_the_index_cannot_address_are_refused_everywhere(order, tmp_path):
    from htabtool import container, qemu, sources
    from htabtool.sim import vmimage

    assert records.check_indexable_order(36) == 36
    with pytest.raises(UsageError,
                       match=rf"table order {order} \([0-9,]+ entries\) is above 36: the record header's 32-bit index"):
        records.check_indexable_order(order)
    with pytest.raises(UsageError, match="32-bit index"):
        container.SnapshotHeader(byte_order="little", order=order)
    with pytest.raises(UsageError, match=rf"^order {order} .* 32-bit index") as refused:
        sources.order_for(order, None)
    assert refused.value.param == "order"  # the CLI says it as --order (tests/test_cli.py)
    with pytest.raises(UsageError, match="32-bit index"):
        vmimage._sizes(None, order)
    with pytest.raises(UsageError, match=rf"htab_shift {order} .* 32-bit index"):
        qemu.write_section([], order, io.BytesIO())
    with pytest.raises(QemuStreamError,
                       match=rf"htab_shift {order} at offset 0x0: a table of [0-9,]+ entries, more than"):
        qemu.HtabStart(order, 0)


def test_a_snapshot_header_of_order_37_is_refused_on_reading():
    from htabtool import container
    from htabtool.container.writer import header_frame
    from htabtool.errors import ContainerError

    good = header_frame(container.SnapshotHeader(byte_order="little", order=36, chunk_limit=1 << 20))
    body = bytearray(good[12:-4])
    body[21] = 37  # order
    struct.pack_into("<Q", body, 24, 1 << 33)  # entries
    head = good[:12] + bytes(body)
    frame = head + struct.pack("<I", zlib.crc32(head))
    parser = container.ContainerParser()
    parser.receive_data(frame)
    with pytest.raises(ContainerError, match="32-bit index"):
        parser.next_event()
