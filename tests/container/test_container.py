"""The snapshot container: round trips, zstd compatibility, corruption and
truncation detection, pipes, limits, forward compatibility.

Record streams come from synthetic tables through the codec's encoder
(records.iter_reads), so every piece is exactly what one read(2) of the htab
fd would return.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import threading
import zlib
from dataclasses import replace

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from htabtool import container as C
from htabtool.atomic import atomic_write
from htabtool.container import (
    END_OF_STREAM,
    NEED_DATA,
    Chunk,
    CompressedChunk,
    ContainerParser,
    Header,
    PassEnd,
    SnapshotHeader,
    SnapshotReader,
    SnapshotWriter,
    Trailer,
)
from htabtool.container.checks import chunk_stats, scan_records
from htabtool.container.format import DESCRIPTOR, HEADER, encode_frame
from htabtool.container.writer import header_frame
from htabtool.errors import (
    ContainerError,
    RecordError,
    StreamError,
    TruncatedContainer,
    UnsupportedFeature,
    UsageError,
)
from htabtool.records import StaticTable, decode_batch, encode_reads, iter_reads
from tests.helpers import synthetic_table

ZSTD = shutil.which("zstd")


# -- helpers -------------------------------------------------------------------


def passes_of(order: int, count: int, byte_order: str = "little", n_passes: int = 2, seed: int = 1):
    """[[read pieces of pass 0], [pieces of pass 1], ...]: a first pass, then
    incremental passes over a few changed entries."""
    table = synthetic_table(order, 0.5, seed)
    src = StaticTable(table, changed=np.zeros(len(table), dtype=bool))
    out = [[r.data for r in iter_reads(src, count, byte_order)]]
    rng = np.random.default_rng(seed + 1)
    for _ in range(1, n_passes):
        hit = rng.choice(len(table), size=max(1, len(table) // 10), replace=False)
        table[hit[::2], 0] = 0
        table[hit[::2], 1] = 0
        src.changed[hit] = True
        pieces = []
        for res in iter_reads(src, count, byte_order, first_pass=False):
            src.mark_read(res)
            pieces.append(res.data)
        out.append(pieces)
    return out


def header(order: int, byte_order: str = "little", **kw) -> SnapshotHeader:
    kw.setdefault("source", {"kind": "vm", "image": "guest.img", "seed": 1})
    kw.setdefault("created", "2026-11-25T12:00:00Z")
    return SnapshotHeader(byte_order=byte_order, order=order, **kw)


def write(passes, order: int, byte_order: str = "little", out=None, **kw) -> bytes:
    out = out if out is not None else io.BytesIO()
    with SnapshotWriter(out, header(order, byte_order), **kw) as w:
        for number, pieces in enumerate(passes, 1):  # htabtool numbers the first pass 1
            if not pieces:
                w.write_records(b"", number)
            for piece in pieces:
                w.write_records(piece, number)
    return out.getvalue() if isinstance(out, io.BytesIO) else b""


def parse_all(data: bytes, step: int | None = None, **kw) -> list:
    """Every event of ``data`` fed whole (or ``step`` bytes at a time)."""
    parser = ContainerParser(**kw)
    events = []
    pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    pieces.append(b"")
    for piece in pieces:
        parser.receive_data(piece)
        while True:
            event = parser.next_event()
            if event is NEED_DATA:
                break
            if event is END_OF_STREAM:
                return events
            events.append(event)
    raise AssertionError("no END_OF_STREAM")


def stats_of(raw: bytes, byte_order: str) -> tuple:
    batch, used = decode_batch(raw, byte_order)
    assert used == len(raw)
    return batch.stats()


@pytest.fixture(scope="module")
def small():
    """A small container (a few hundred bytes to ~1.3 KB): 3 passes (the last
    empty), several chunks, and the raw stream it holds."""
    passes = passes_of(8, 256) + [[]]
    data = write(passes, 8, chunk_size=160, threads=0)
    return data, b"".join(b"".join(p) for p in passes)


@pytest.fixture(scope="module")
def medium():
    passes = passes_of(15, 4096, n_passes=3)
    data = write(passes, 15, chunk_size=4 << 10)
    return data, passes


# -- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("byte_order", ["little", "big"])
@pytest.mark.parametrize("threads", [0, 1, 2])
def test_round_trip(byte_order, threads):
    passes = passes_of(13, 2048, byte_order, n_passes=3)
    data = write(passes, 13, byte_order, chunk_size=8 << 10, threads=threads)
    reader = SnapshotReader(io.BytesIO(data), threads=threads)
    assert reader.header.byte_order == byte_order
    got = {}
    for chunk in reader.chunks():
        assert chunk.data  # never an empty chunk
        assert stats_of(chunk.data, byte_order) == (
            chunk.info.records,
            chunk.info.first_index,
            chunk.info.end_index,
            chunk.info.valid,
            chunk.info.invalid,
        )
        assert len(chunk.data) <= 8 << 10
        got.setdefault(chunk.pass_number, []).append(chunk.data)
    for number, pieces in enumerate(passes, 1):
        assert b"".join(got.get(number, [])) == b"".join(pieces)
    trailer = reader.trailer
    raw = b"".join(b"".join(p) for p in passes)
    assert trailer.raw_size == len(raw)
    assert trailer.file_size == len(data)
    assert [p.pass_number for p in trailer.passes] == [1, 2, 3]
    assert trailer.records == stats_of(raw, byte_order)[0]


def test_events_in_order_and_header_fields(medium):
    data, passes = medium
    events = parse_all(data)
    assert isinstance(events[0], Header) and isinstance(events[-1], Trailer)
    h = events[0].header
    assert (h.format_version, h.byte_order, h.order, h.entries) == (1, "little", 15, 2048)
    assert (h.bolted_only, h.start_index, h.created) == (False, 0, "2026-11-25T12:00:00Z")
    assert h.source == {"kind": "vm", "image": "guest.img", "seed": 1}
    assert h.chunk_limit == C.MAX_RECORD_SIZE  # 4 KiB chunks: room for the largest record
    kinds = [type(e).__name__ for e in events]
    # each pass: its chunks, then its end
    ends = [i for i, k in enumerate(kinds) if k == "PassEnd"]
    assert len(ends) == 3
    for i, e in enumerate(events):
        if isinstance(e, Chunk):
            following = next(events[j] for j in ends if j > i)
            assert following.info.pass_number == e.pass_number
    trailer = events[-1].trailer
    assert list(trailer.chunks) == [e.info for e in events if isinstance(e, Chunk)]
    assert list(trailer.passes) == [e.info for e in events if isinstance(e, PassEnd)]


def test_fed_byte_by_byte_and_in_odd_pieces_gives_the_same_events(small, medium):
    data = small[0]
    whole = parse_all(data)
    assert parse_all(data, step=1) == whole
    assert parse_all(data, step=7) == whole
    data = medium[0]
    assert parse_all(data, step=4093) == parse_all(data)


def test_header_round_trip_with_flags_and_unknown_optional_fields():
    h = SnapshotHeader(
        byte_order="big",
        order=18,
        bolted_only=True,
        start_index=77,
        source={"kind": "kvm", "pid": 1234},
        extra={"comment": "x", "future": {"a": [1, 2]}},
    )
    out = io.BytesIO()
    SnapshotWriter(out, h).close()
    got = SnapshotReader(io.BytesIO(out.getvalue())).header
    assert got == replace(h, chunk_limit=C.DEFAULT_CHUNK_SIZE)
    assert got.extra == {"comment": "x", "future": {"a": [1, 2]}}
    assert got.created.endswith("Z") and got.tool_version


def test_empty_snapshot_and_empty_passes():
    out = io.BytesIO()
    trailer = SnapshotWriter(out, header(8)).close()
    assert (len(trailer.chunks), len(trailer.passes), trailer.raw_size) == (0, 0, 0)
    events = parse_all(out.getvalue())
    assert [type(e) for e in events] == [Header, Trailer]
    data = write([[], [], []], 8)
    events = parse_all(data)
    assert [type(e) for e in events] == [Header, PassEnd, PassEnd, PassEnd, Trailer]
    assert [e.info.chunks for e in events[1:4]] == [0, 0, 0]


def test_a_piece_larger_than_a_chunk_is_cut_at_record_boundaries():
    (pieces,) = passes_of(14, 1 << 30, n_passes=1)  # one unbounded read
    assert len(pieces) == 1 and len(pieces[0]) > 5000
    data = write([pieces], 14, chunk_size=1000)
    chunks = [e for e in parse_all(data) if isinstance(e, Chunk)]
    assert b"".join(c.data for c in chunks) == pieces[0]
    for c in chunks:
        c.batch()  # whole records
        assert len(c.data) <= 1000 or c.info.records == 1


def test_pieces_are_never_split_when_they_fit():
    (pieces,) = passes_of(14, 1000, n_passes=1)
    data = write([pieces], 14, chunk_size=3000)
    sizes = [len(p) for p in pieces]
    chunks = [e for e in parse_all(data) if isinstance(e, Chunk)]
    # every chunk is a run of whole pieces
    bounds = set(np.cumsum([0] + sizes).tolist())
    for c in chunks:
        assert c.info.raw_offset in bounds and c.info.raw_offset + c.info.raw_size in bounds


def test_seekable_trailer_and_random_access(medium):
    data, passes = medium
    streamed = SnapshotReader(io.BytesIO(data)).verify()
    f = io.BytesIO(data)
    reader = SnapshotReader(f)
    assert reader.seekable
    assert reader.read_trailer() == streamed
    assert f.tell() == 0  # the position is kept
    raw = b"".join(b"".join(p) for p in passes)
    for info in streamed.chunks:
        chunk = reader.read_chunk(info.number)
        assert chunk.data == raw[info.raw_offset : info.raw_offset + info.raw_size]
    with pytest.raises(UsageError):
        reader.read_chunk(len(streamed.chunks))


def test_check_records_agrees_and_copy_raw(medium):
    data, passes = medium
    raw = b"".join(b"".join(p) for p in passes)
    for threads in (0, 2):
        out = io.BytesIO()
        read, written = SnapshotReader(io.BytesIO(data), threads=threads, check_records=True).copy_raw(out)
        assert (read, written) == (len(data), len(raw)) and out.getvalue() == raw


def test_decompress_false_hands_out_frames(small):
    data, raw = small
    events = parse_all(data, decompress=False)
    frames = [e for e in events if isinstance(e, CompressedChunk)]
    assert b"".join(e.decompress().data for e in frames) == raw


# -- the file is a zstd stream ----------------------------------------------------


def test_python_zstandard_reads_the_record_stream(medium):
    data, passes = medium
    raw = b"".join(b"".join(p) for p in passes)
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    assert reader.read() == raw


@pytest.mark.skipif(ZSTD is None, reason="no zstd command")
def test_zstd_command_prints_the_record_stream_and_tests_it(medium, tmp_path):
    data, passes = medium
    path = tmp_path / "snap.htab"
    path.write_bytes(data)
    out = subprocess.run([ZSTD, "-dc", str(path)], capture_output=True, check=True)
    assert out.stdout == b"".join(b"".join(p) for p in passes)
    subprocess.run([ZSTD, "-tq", str(path)], check=True)
    bad = bytearray(data)
    first = SnapshotReader(io.BytesIO(data)).read_trailer().chunks[0]
    bad[first.offset + first.compressed_size // 2] ^= 0x40
    path.write_bytes(bytes(bad))
    assert subprocess.run([ZSTD, "-tq", str(path)], capture_output=True).returncode != 0


def test_the_file_ends_with_a_zstd_seek_table(medium):
    """The zstd seekable format: every frame listed, sizes adding up."""
    data, _ = medium
    frames, descriptor, magic = struct.unpack("<IBI", data[-9:])
    assert magic == 0x8F92EAB1 and descriptor == 0
    table_size = 8 + 8 * frames + 9
    magic, size = struct.unpack_from("<II", data, len(data) - table_size)
    assert magic == 0x184D2A5E and size == table_size - 8
    entries = [struct.unpack_from("<II", data, len(data) - table_size + 8 + 8 * i) for i in range(frames)]
    assert sum(c for c, _ in entries) == len(data) - table_size
    pos = 0
    for c, d in entries:
        magic = struct.unpack_from("<I", data, pos)[0]
        if d:
            assert magic == 0xFD2FB528 and zstandard.frame_content_size(data[pos : pos + c]) == d
        else:
            assert magic == 0x184D2A5B
        pos += c


# -- corruption and truncation -------------------------------------------------------


def _assert_detected(data: bytes, what: str) -> ContainerError:
    try:
        parse_all(data)
    except ContainerError as exc:
        assert "offset 0x" in str(exc), str(exc)
        return exc
    raise AssertionError(f"{what}: not detected")


def _seekable_never_misreads(data: bytes, good_trailer) -> None:
    """read_trailer on a damaged file: an error, or the true trailer (the
    damage is in a chunk, which read_trailer does not read)."""
    try:
        got = SnapshotReader(io.BytesIO(data)).read_trailer()
    except ContainerError:
        return
    assert got == good_trailer


def test_every_single_byte_change_is_detected(small):
    """Every offset of a small container, changed nine ways (each single-bit
    flip and the complement): an error naming an offset, never a load."""
    data, _ = small
    assert len(data) < 1400
    buf = bytearray(data)
    for i in range(len(data)):
        for mask in (1, 2, 4, 8, 16, 32, 64, 128, 255):
            buf[i] ^= mask
            _assert_detected(bytes(buf), f"byte {i} xor {mask:#x}")
            buf[i] ^= mask


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("HTABTOOL_EXHAUSTIVE"), reason="set HTABTOOL_EXHAUSTIVE=1 (about a minute)")
def test_every_single_byte_change_is_detected_exhaustively(small):
    """Every offset, every one of the 255 other values (~310,000 parses)."""
    data, _ = small
    buf = bytearray(data)
    for i in range(len(data)):
        original = buf[i]
        for value in range(256):
            if value != original:
                buf[i] = value
                _assert_detected(bytes(buf), f"byte {i} set to {value:#x}")
        buf[i] = original


def test_single_bit_flips_never_misread_the_trailer(small):
    data, _ = small
    good = SnapshotReader(io.BytesIO(data)).read_trailer()
    buf = bytearray(data)
    for i in range(len(data)):
        for bit in range(8):
            buf[i] ^= 1 << bit
            _seekable_never_misreads(bytes(buf), good)
            buf[i] ^= 1 << bit


def test_bit_flips_in_a_larger_container_name_the_chunk(medium):
    data, _ = medium
    trailer = SnapshotReader(io.BytesIO(data)).read_trailer()
    for info in trailer.chunks[:3]:
        for where in (0, 5, info.compressed_size // 2, info.compressed_size - 1):
            buf = bytearray(data)
            buf[info.offset + where] ^= 0x10
            exc = _assert_detected(bytes(buf), "chunk byte")
            assert exc.chunk == info.number
            assert f"chunk {info.number} at offset {info.offset:#x}" in str(exc)


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_chunks_before_a_fault_are_handed_out_then_the_fault_is_raised(medium, threads):
    data, _ = medium
    trailer = SnapshotReader(io.BytesIO(data)).read_trailer()
    assert len(trailer.chunks) >= 5
    for bad in (trailer.chunks[4].offset + 10, trailer.chunks[4].offset - 30):  # frame, descriptor
        buf = bytearray(data)
        buf[bad] ^= 0x01
        got = []
        with pytest.raises(ContainerError, match="offset 0x") as exc:
            for chunk in SnapshotReader(io.BytesIO(bytes(buf)), threads=threads).chunks():
                got.append(chunk.number)
        assert got == [0, 1, 2, 3]
        assert exc.value.chunk == 4


def test_truncation_at_every_offset_is_reported_as_truncated(small):
    data, _ = small
    for cut in range(len(data)):
        with pytest.raises(TruncatedContainer):
            parse_all(data[:cut])
        with pytest.raises(TruncatedContainer):
            SnapshotReader(io.BytesIO(data[:cut])).read_trailer()


def test_truncation_messages(small):
    data, _ = small
    trailer = SnapshotReader(io.BytesIO(data)).read_trailer()
    with pytest.raises(TruncatedContainer, match=r"ends after chunk \d+ without a trailer"):
        parse_all(data[: trailer.offset])
    c = trailer.chunks[1]
    with pytest.raises(TruncatedContainer, match=rf"chunk 1 at offset {c.offset:#x} needs {c.compressed_size} bytes"):
        parse_all(data[: c.offset + 3])
    with pytest.raises(TruncatedContainer, match="needs 8 bytes, the file has 0"):
        parse_all(b"")


def test_trailing_data_and_foreign_input_are_refused(small):
    data, _ = small
    with pytest.raises(ContainerError, match="unexpected data after the end"):
        parse_all(data + b"\0")
    with pytest.raises(ContainerError, match="plain zstd frame"):
        parse_all(zstandard.ZstdCompressor().compress(b"records"))
    with pytest.raises(ContainerError, match="bad magic"):
        parse_all(b"\x7fELF" + bytes(60))


def test_an_error_is_raised_again(small):
    data, _ = small
    parser = ContainerParser()
    parser.receive_data(b"junkjunkjunk")
    with pytest.raises(ContainerError) as first:
        parser.next_event()
    with pytest.raises(ContainerError) as again:
        parser.next_event()
    assert again.value is first.value


# -- limits: nothing is buffered or decompressed on a size the file claims ------------


def _frame(tag: bytes, body: bytes) -> bytes:
    return encode_frame(tag, body)


def test_absurd_frame_sizes_are_refused_before_buffering(small):
    data, _ = small
    # a header frame that claims 4 GiB: refused from its first 12 bytes
    parser = ContainerParser()
    parser.receive_data(struct.pack("<II", C.SKIPPABLE_MAGIC, 0xFFFFFFF0) + b"HEAD")
    with pytest.raises(ContainerError, match="declares 4294967280 bytes, more than"):
        parser.next_event()
    # a descriptor that claims a 2 GiB chunk
    h = parse_all(data)[0].header
    hdr_frame = header_frame(h)
    info = C.ChunkInfo(0, 0, 0, 100, 0, 2 << 30, 1, 0, 1, 0, 1, 0)
    bomb = hdr_frame + _frame(b"CHNK", DESCRIPTOR.pack(*info._fields()))
    with pytest.raises(ContainerError, match="declares 2147483648 raw bytes"):
        parse_all(bomb + bytes(100))


def test_a_frame_declaring_more_content_than_its_descriptor_is_not_decompressed(small):
    """A zstd frame claiming 64 MiB behind a descriptor claiming 1 KiB, with
    matching CRC: refused from the frame header, before decompression."""
    data, _ = small
    h = parse_all(data)[0].header
    raw = struct.pack("<IHH", 0, 0, 1) * 128
    big = zstandard.ZstdCompressor(write_checksum=True).compress(bytes(64 << 20))
    info = C.ChunkInfo(0, 0, 0, len(big), 0, len(raw), 128, 0, 1, 0, 128, zlib.crc32(big))
    crafted = header_frame(h) + _frame(b"CHNK", DESCRIPTOR.pack(*info._fields())) + big
    with pytest.raises(ContainerError, match="declares 67108864 content bytes, descriptor says 1024"):
        parse_all(crafted)


def test_header_limits_and_versions(small):
    data, _ = small
    h = parse_all(data)[0].header

    def with_fixed(**changes) -> bytes:
        fields = dict(
            sig=C.SIGNATURE, version=1, fixed=48, required=0, optional=0, bo=0, order=h.order, flags=0,
            reserved=0, entries=h.entries, start=0, chunk_limit=h.chunk_limit,
        )
        fields.update(changes)
        meta = json.dumps(h.metadata()).encode()
        body = HEADER.pack(*fields.values(), len(meta)) + meta
        return _frame(b"HEAD", body)

    def first_event(frame):
        p = ContainerParser()
        p.receive_data(frame)
        return p.next_event()

    assert isinstance(first_event(with_fixed()), Header)
    with pytest.raises(UnsupportedFeature, match="format version 2"):
        first_event(with_fixed(version=2))
    with pytest.raises(UnsupportedFeature, match="needs features 0x4"):
        first_event(with_fixed(required=4))
    assert first_event(with_fixed(optional=0x80)).header.optional_features == 0x80
    with pytest.raises(UnsupportedFeature, match="unknown read flags 0x2"):
        first_event(with_fixed(flags=2))
    with pytest.raises(ContainerError, match="chunk limit 134217728"):
        first_event(with_fixed(chunk_limit=128 << 20))
    with pytest.raises(ContainerError, match="do not match order"):
        first_event(with_fixed(entries=h.entries + 1))
    with pytest.raises(ContainerError, match="bad signature"):
        first_event(with_fixed(sig=b"HTABSNAQ"))


def test_bad_json_metadata_is_refused():
    def frame(meta: bytes) -> bytes:
        body = HEADER.pack(C.SIGNATURE, 1, 48, 0, 0, 0, 8, 0, 0, 16, 0, 1 << 20, len(meta)) + meta
        return _frame(b"HEAD", body)

    for meta, message in [
        (b"[1]", "not an object"),
        (b'{"source": {"kind": "vm"}, "source": {"kind": "vm"}}', "duplicate key"),
        (b'{"source": {"kind": "vm"}, "created": NaN, "tool_version": "1"}', "bad JSON"),
        (b"\xff", "bad JSON"),
        (b'{"created": "x", "tool_version": "1"}', "lacks a source"),
    ]:
        p = ContainerParser()
        p.receive_data(frame(meta))
        with pytest.raises(ContainerError, match=message):
            p.next_event()


def test_unknown_frames_optional_skipped_required_refused():
    passes = passes_of(10, 512, n_passes=1)
    for tag, ok in [(b"note", True), (b"XTRA", False)]:
        out = io.BytesIO()
        w = SnapshotWriter(out, header(10))
        w._emit(_frame(tag, b"something for a later version"), 0)  # as a later writer would
        for piece in passes[0]:
            w.write_records(piece, 1)
        w.close()
        if ok:
            events = parse_all(out.getvalue())
            assert b"".join(e.data for e in events if isinstance(e, Chunk)) == b"".join(passes[0])
            assert SnapshotReader(io.BytesIO(out.getvalue())).read_trailer() == events[-1].trailer
        else:
            with pytest.raises(UnsupportedFeature, match="'XTRA'"):
                parse_all(out.getvalue())


# -- the writer's rules -------------------------------------------------------------------


def test_writer_refuses_partial_records_and_records_past_the_table():
    (pieces,) = passes_of(10, 512, n_passes=1)
    for threads in (0, 2):
        w = SnapshotWriter(io.BytesIO(), header(10), threads=threads, chunk_size=1024)
        w.write_records(pieces[0][:-3], 1)  # accepted: checked when the chunk is made
        with pytest.raises(StreamError, match="ends inside a record at stream offset"):
            for piece in pieces[1:]:
                w.write_records(piece, 1)
            w.close()
        with pytest.raises(UsageError, match="failed"):
            w.write_records(pieces[0], 1)
    w = SnapshotWriter(io.BytesIO(), header(8), threads=0)
    with pytest.raises(RecordError, match=r"record 0 at offset 0x0: index 16 is past the table of 16"):
        w.write_records(struct.pack("<IHH", 16, 0, 1), 1)
        w.close()


def test_the_writer_checks_structure_not_entry_contents():
    """An entry without HPTE_V_VALID is stored as given (verify judges it),
    whichever path (vectorised or decode_batch) describes the chunk."""
    entry = struct.pack(">QQ", 0x4000000000001240, 0x192)  # no valid bit
    for data in (struct.pack("<IHH", 3, 1, 0) + entry, struct.pack("<IHH", 3, 1, 0) + entry + bytes(3)):
        stats = None
        try:
            stats = chunk_stats(data, "little", 0, 0, 16)
        except StreamError as exc:
            assert "ends inside a record" in str(exc)
        else:
            assert stats == (1, 3, 4, 1, 0)


def test_pass_numbers_only_grow():
    w = SnapshotWriter(io.BytesIO(), header(8))
    w.write_records(b"", 3)
    with pytest.raises(UsageError, match="pass 2 after pass 3"):
        w.write_records(b"", 2)
    w.end_pass()
    with pytest.raises(UsageError, match="pass 3 after pass 3"):
        w.write_records(b"", 3)
    w.write_records(b"", 5)
    t = w.close()
    assert [p.pass_number for p in t.passes] == [3, 5]
    with pytest.raises(UsageError, match="closed"):
        w.write_records(b"", 6)
    assert w.close() is t


@pytest.mark.parametrize("kw", [dict(level=99), dict(threads=-1), dict(chunk_size=0), dict(chunk_size=65 << 20)])
def test_writer_parameters_are_checked(kw):
    with pytest.raises(UsageError):
        SnapshotWriter(io.BytesIO(), header(8), **kw)


@pytest.mark.parametrize(
    "kw",
    [dict(byte_order="middle"), dict(order=3), dict(order=47), dict(entries=5), dict(start_index=16),
     dict(source={"no": "kind"}), dict(extra={"source": 1})],
)
def test_header_fields_are_checked(kw):
    base = dict(byte_order="little", order=8)
    base.update(kw)
    with pytest.raises(UsageError):
        SnapshotHeader(**base)


def test_an_exception_in_the_writer_body_leaves_a_truncated_snapshot():
    (pieces,) = passes_of(12, 1024, n_passes=1)
    out = io.BytesIO()
    with pytest.raises(KeyboardInterrupt):
        with SnapshotWriter(out, header(12), chunk_size=4096) as w:
            for piece in pieces:
                w.write_records(piece, 1)
            raise KeyboardInterrupt
    with pytest.raises(TruncatedContainer, match="without a trailer"):
        SnapshotReader(io.BytesIO(out.getvalue()), check_records=True).verify()


class FailingFile(io.RawIOBase):
    """Accepts ``limit`` bytes, a few at a time, then fails like a full disk."""

    def __init__(self, limit: int):
        self.limit = limit
        self.data = bytearray()

    def writable(self):
        return True

    def write(self, b):
        if len(self.data) >= self.limit:
            raise OSError(28, "No space left on device")
        n = min(len(b), 1000, self.limit - len(self.data))
        self.data += bytes(b[:n])
        return n


def test_short_writes_are_completed_and_write_errors_stop_the_writer():
    (pieces,) = passes_of(12, 1024, n_passes=1)
    f = FailingFile(1 << 30)
    write([pieces], 12, out=f, chunk_size=4096)
    assert b"".join(c.data for c in SnapshotReader(io.BytesIO(bytes(f.data))).chunks()) == b"".join(pieces)
    f = FailingFile(1500)
    with pytest.raises(OSError, match="No space"):
        write([pieces], 12, out=f, chunk_size=4096)


def test_atomic_snapshot_file_keeps_the_old_one_when_a_dump_fails(tmp_path):
    (pieces,) = passes_of(12, 1024, n_passes=1)
    path = tmp_path / "snap.htab"
    with atomic_write(path) as f:
        write([pieces], 12, out=f)
    good = path.read_bytes()
    assert os.stat(path).st_mode & 0o777 == 0o600
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f, SnapshotWriter(f, header(12)) as w:
            w.write_records(pieces[0], 1)
            raise RuntimeError("the VM went away")
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["snap.htab"]


# -- pipes ----------------------------------------------------------------------------------


def test_a_snapshot_written_to_a_pipe_reads_back_from_a_pipe():
    passes = passes_of(14, 4096, n_passes=2)
    rfd, wfd = os.pipe()
    errors = []

    def produce():
        try:
            with open(wfd, "wb") as f:
                write(passes, 14, out=f, chunk_size=8192)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=produce)
    t.start()
    with open(rfd, "rb") as f:
        reader = SnapshotReader(f, read_size=1000)
        assert not reader.seekable
        got = b"".join(c.data for c in reader.chunks())
        trailer = reader.read_trailer()  # already read: no seek needed
    t.join()
    assert not errors
    assert got == b"".join(b"".join(p) for p in passes)
    assert trailer.raw_size == len(got)


@pytest.mark.skipif(ZSTD is None, reason="no zstd command")
def test_a_pipe_from_another_process_reads_back(medium, tmp_path):
    data, passes = medium
    path = tmp_path / "snap.htab"
    path.write_bytes(data)
    proc = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)
    got = b"".join(c.data for c in SnapshotReader(proc.stdout).chunks())
    proc.wait()
    assert got == b"".join(b"".join(p) for p in passes)


# -- the fast record scan agrees with the codec --------------------------------------------


@st.composite
def record_streams(draw):
    n_entries = draw(st.sampled_from([16, 64, 1024]))
    byte_order = draw(st.sampled_from(["little", "big"]))
    hdr = "<IHH" if byte_order == "little" else ">IHH"
    out = b""
    for _ in range(draw(st.integers(1, 12))):
        nv = draw(st.integers(0, 5))
        ni = draw(st.integers(0, 5))
        index = draw(st.integers(0, n_entries + 2))
        words = draw(st.lists(st.integers(0, 2**64 - 1), min_size=2 * nv, max_size=2 * nv))
        out += struct.pack(hdr, index, nv, ni) + b"".join(struct.pack(">Q", w | 1) for w in words)
    cut = draw(st.integers(0, 9))
    if cut:
        out = out[:-cut] if draw(st.booleans()) else out + bytes(cut)
    return out, byte_order, n_entries


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(record_streams())
def test_fast_scan_is_exact_or_defers(case):
    data, byte_order, n_entries = case
    fast = scan_records(data, byte_order, n_entries)
    batch, used = decode_batch(data, byte_order)
    sound = used == len(data) and len(batch) > 0 and bool(
        ((batch.index < n_entries) & (batch.end <= n_entries)).all()
    )
    if fast is not None:
        assert sound
        assert fast == stats_of(data, byte_order)
    if sound:
        assert chunk_stats(data, byte_order, 0, 0, n_entries) == stats_of(data, byte_order)
    else:
        with pytest.raises(StreamError):
            chunk_stats(data, byte_order, 0, 0, n_entries)


def test_fast_scan_takes_real_record_streams():
    """The vectorised path (not the decode_batch fallback) describes kernel reads."""
    for byte_order in ("little", "big"):
        (pieces,) = passes_of(16, 65536, byte_order, n_passes=1)
        for piece in pieces:
            assert scan_records(piece, byte_order, 4096) == stats_of(piece, byte_order)


@settings(max_examples=25, deadline=None)
@given(
    order=st.integers(8, 12),
    count=st.sampled_from([64, 300, 4096]),
    chunk_size=st.integers(24, 5000),
    threads=st.sampled_from([0, 1, 2]),
    byte_order=st.sampled_from(["little", "big"]),
)
def test_round_trip_any_chunk_size(order, count, chunk_size, threads, byte_order):
    passes = passes_of(order, count, byte_order)
    data = write(passes, order, byte_order, chunk_size=chunk_size, threads=threads)
    events = parse_all(data)
    got = b"".join(e.data for e in events if isinstance(e, Chunk))
    assert got == b"".join(b"".join(p) for p in passes)
    for e in events:
        if isinstance(e, Chunk):
            assert stats_of(e.data, byte_order)[0] == e.info.records


@pytest.mark.parametrize("count", [4096, 65536, 3 << 20])
@pytest.mark.parametrize("chunk_size", [1 << 16, 1 << 20])
def test_stated_statistics_make_the_same_snapshot(count, chunk_size):
    """Pieces written with their statistics (as the engine's reads state
    them) give byte for byte the snapshot the writer makes by scanning them
    itself; pieces longer than a chunk are cut and scanned either way."""
    table = synthetic_table(18, 0.5, 3)
    src = StaticTable(table, changed=np.zeros(len(table), dtype=bool))
    reads = []
    for _ in range(2):
        reads.append(list(encode_reads(src, 0, not reads, count, "little")))
        src.changed[::7] = True
    for res in reads[0] + reads[1]:
        if res.stats is not None:
            assert res.stats == chunk_stats(res.data, "little", 0, 0, len(table))
    made = []
    for stated in (False, True):
        out = io.BytesIO()
        with SnapshotWriter(out, header(18), chunk_size=chunk_size, level=1) as w:
            for number, pass_reads in enumerate(reads, 1):
                for res in pass_reads:
                    w.write_records(res.data, number, res.stats if stated else None)
        made.append(out.getvalue())
    assert made[0] == made[1]
    assert len(made[0]) > 100 and parse_all(made[0])


def test_wrong_stated_statistics_make_a_snapshot_readers_refuse():
    """The statistics are trusted as stated; a reader that checks records
    (htabtool verify) compares every chunk with its descriptor, so a wrong
    statement does not pass unnoticed."""
    data = b"".join(passes_of(16, 65536)[0])
    out = io.BytesIO()
    with SnapshotWriter(out, header(16)) as w:
        b, _ = decode_batch(data, "little")
        stats = (len(b), int(b.index[0]), int(b.end[-1]), int(b.n_valid.sum()), int(b.n_invalid.sum()) - 1)
        w.write_records(data, 1, stats)
    with pytest.raises(ContainerError, match="the descriptor says"):
        SnapshotReader(io.BytesIO(out.getvalue()), check_records=True).verify()


def _one_record() -> bytes:
    """One record: entry 0, valid (little-endian header)."""
    return struct.pack("<IHH", 0, 1, 0) + struct.pack(">QQ", 0x4000000000001015, 0x10190)


@pytest.mark.parametrize("stats", [(1, 0, 0, 0, 0), (2, 0, 5, 1, 0), (1, 3, 2, 1, 0), (1, 0, 1 << 20, 1, 0),
                                   (1, 1 << 12, 1 << 12, 1, 0), "bad"])
def test_stated_statistics_that_cannot_fit_are_refused(stats):
    with SnapshotWriter(io.BytesIO(), header(16)) as w:
        with pytest.raises(UsageError, match="stated statistics"):
            w.write_records(b"\x00" * 24, 1, stats)
        w.write_records(_one_record(), 1, (1, 0, 1, 1, 0))  # a true statement is taken


def test_stated_pieces_of_records_without_entries_are_taken():
    """Records with n_valid 0 and n_invalid 0 (the kernel never makes them,
    its write side takes them) cover no entries: first index == end."""
    data = _one_record() + struct.pack("<IHH", 3, 0, 0)
    out = io.BytesIO()
    with SnapshotWriter(out, header(16)) as w:
        w.write_records(data[:24], 1, (1, 0, 1, 1, 0))
        w.write_records(data[24:], 2, (1, 3, 3, 0, 0))
    assert SnapshotReader(io.BytesIO(out.getvalue()), check_records=True).verify().records == 2


def test_closing_a_reader_midway_never_joins_its_threads(tmp_path):
    """An abandoned events() generator may be finalised by the garbage
    collector inside a new thread's start-up, which holds threading's
    shutdown-locks lock: a join there deadlocks (it hung the suite once).
    Closing the generator while that lock is held must return."""
    import subprocess
    import sys
    import threading

    if not hasattr(threading, "_shutdown_locks_lock"):
        pytest.skip("this Python's threading has no such lock")
    snap = tmp_path / "s.htab"
    snap.write_bytes(write(passes_of(18, 65536), 18, chunk_size=1 << 14))
    script = (
        "import threading\n"
        "from htabtool.container import SnapshotReader\n"
        f"f = open({str(snap)!r}, 'rb')\n"
        "gen = SnapshotReader(f, threads=2).events()\n"
        "for _ in range(4): next(gen)\n"
        "with threading._shutdown_locks_lock:\n"
        "    gen.close()\n"
        "print('closed')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0 and done.stdout.strip() == "closed", done.stderr


# -- optional frames (qprt: QEMU's parts) ------------------------------------------------


def _with_optional(frames, records=b""):
    out = io.BytesIO()
    with SnapshotWriter(out, C.SnapshotHeader(byte_order="little", order=18), threads=0) as w:
        if records:
            w.write_records(records, 1)
        for tag, body in frames:
            w.add_optional(tag, body)
    return out.getvalue()


def test_optional_frames_are_written_before_the_trailer_and_read_from_the_end():
    table = np.zeros((1 << 14, 2), dtype=">u8")
    table[::97, 0] = 0x4000000000001015
    records = b"".join(r.data for r in iter_reads(StaticTable(table), 4096, "little"))
    data = _with_optional([(b"qprt", b"one"), (b"xtra", b"skip me"), (b"qprt", b"two")], records)
    reader = SnapshotReader(io.BytesIO(data))
    assert reader.read_optional(b"qprt") == [b"one", b"two"]
    assert reader.read_optional(b"none") == []
    # the streaming reader checks them and skips them; the records are untouched
    trailer = SnapshotReader(io.BytesIO(data)).verify()
    assert trailer.raw_size == len(records)
    assert b"".join(c.data for c in SnapshotReader(io.BytesIO(data)).chunks()) == records
    # right before the trailer, in the order added: "two" (19 bytes) last
    assert data[trailer.offset - 19 + 8 : trailer.offset] == b"qprttwo" + data[trailer.offset - 4 : trailer.offset]
    assert data.index(b"qprtone") < data.index(b"xtraskip me") < data.index(b"qprttwo") < trailer.offset
    if ZSTD:
        got = subprocess.run([ZSTD, "-dc"], input=data, capture_output=True).stdout
        assert got == records


def test_optional_frame_damage_is_found():
    data = bytearray(_with_optional([(b"qprt", b"parts here")]))
    at = data.index(b"parts here")
    data[at] ^= 1
    with pytest.raises(ContainerError, match="'qprt' frame at offset .*checksum mismatch"):
        SnapshotReader(io.BytesIO(bytes(data))).read_optional(b"qprt")
    with pytest.raises(ContainerError, match="checksum mismatch"):
        SnapshotReader(io.BytesIO(bytes(data))).verify()


def test_optional_frame_tags_and_sizes_are_checked():
    w = SnapshotWriter(io.BytesIO(), C.SnapshotHeader(byte_order="little", order=18), threads=0)
    for tag in (b"QPRT", b"qpr", b"1prt", "qprt"):
        with pytest.raises(UsageError, match="tag is four bytes starting with a lower-case letter"):
            w.add_optional(tag, b"")
    with pytest.raises(UsageError, match="body is at most 65528 bytes"):
        w.add_optional(b"qprt", bytes(65529))
    w.add_optional(b"qprt", bytes(65528))
    w.close()
