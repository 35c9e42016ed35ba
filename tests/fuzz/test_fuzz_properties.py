"""Property tests of the three parsers on damaged and hostile input.

The record decoder, the container reader and the QEMU stream walker each
get sound inputs damaged by hypothesis (bits flipped, bytes and integers
set, pieces cut out, copied or inserted, the end cut off), fed in pieces of
any size.  Only htabtool's own errors may come out; what is accepted must be
what was written; and no reader may allocate in proportion to a size a file
claims before it has checked it (measured with tracemalloc).

A few seconds in the normal suite, the same examples every run; set
HTABTOOL_FUZZ_EXAMPLES=5000 (say) for a longer run with fresh examples.
The coverage-guided fuzzers are beside this file (python -m tests.fuzz.run).
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import tracemalloc
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from htabtool import ops, qemu
from htabtool.container import (
    END_OF_STREAM,
    NEED_DATA,
    Chunk,
    CompressedChunk,
    ContainerParser,
    SnapshotReader,
    Trailer,
)
from htabtool.errors import ContainerError, HtabError, QemuStreamError, StreamError
from htabtool.records import RecordDecoder, StaticTable, apply_batch, decode_batch, encode_pass, new_table
from htabtool.sources import open_snapshot
from tests import helpers as C

EXAMPLES = os.environ.get("HTABTOOL_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(EXAMPLES) if EXAMPLES else 120,
    derandomize=EXAMPLES is None,
    deadline=None,
    database=None if EXAMPLES is None else settings.default.database,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
INTERESTING = (0, 1, 7, 8, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 0x184D2A5B,
               0x184D2A5E, 0xFD2FB528, 0x5145564D)


# -- damage ---------------------------------------------------------------------------------


@st.composite
def damage(draw, data: bytes, most: int = 4) -> bytes:
    """``data`` with 1 to ``most`` random changes."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, most))):
        if not out:
            out += draw(st.binary(min_size=1, max_size=8))
            continue
        at = draw(st.integers(0, len(out) - 1))
        kind = draw(st.sampled_from(["flip", "set", "delete", "insert", "cut", "copy", "int"]))
        if kind == "flip":
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            out[at] = draw(st.integers(0, 255))
        elif kind == "delete":
            del out[at : at + draw(st.sampled_from([1, 3, 8, 16, 100]))]
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=24))
        elif kind == "cut":
            del out[at:]
        elif kind == "copy":
            src = draw(st.integers(0, len(out) - 1))
            n = draw(st.sampled_from([4, 8, 12, 64]))
            out[at : at + n] = out[src : src + n]
        else:
            size, fmt = draw(st.sampled_from([(1, "B"), (2, "H"), (4, "I"), (8, "Q")]))
            value = draw(st.sampled_from(INTERESTING)) & ((1 << 8 * size) - 1)
            at -= at % size
            out[at : at + size] = struct.pack(draw(st.sampled_from("<>")) + fmt, value)
    return bytes(out)


def pieces(data: bytes, size: int):
    return [data[i : i + size] for i in range(0, len(data), size)]


# -- the record decoder --------------------------------------------------------------------------


@cache
def stream(byte_order: str) -> bytes:
    return C.whole(C.record_stream(18, byte_order, 300, fill=0.02), 3000, byte_order)


def decode_in_pieces(data: bytes, byte_order: str, n_entries, size: int):
    dec = RecordDecoder(byte_order, n_entries=n_entries)
    batches = []
    for piece in pieces(data, size):
        dec.receive_data(piece)
        batches.append(dec.next_batch())
    dec.receive_data(b"")
    batches.append(dec.next_batch())
    return batches


def flat(batches) -> tuple:
    return tuple(
        (int(b.offset[k]), int(b.index[k]), int(b.n_valid[k]),
         int(b.n_invalid[k])) for b in batches for k in range(len(b))
    )


@FUZZ
@given(st.data(), st.sampled_from(["little", "big"]), st.sampled_from([None, 16, 1 << 14]), st.integers(1, 600))
def test_the_decoder_raises_only_stream_errors_and_cuts_do_not_matter(data, byte_order, n_entries, size):
    damaged = data.draw(st.one_of(damage(stream(byte_order)), st.binary(max_size=400)))
    try:
        whole = flat(decode_in_pieces(damaged, byte_order, n_entries, max(1, len(damaged))))
    except StreamError as exc:
        whole = type(exc)
    try:
        cut = flat(decode_in_pieces(damaged, byte_order, n_entries, size))
    except StreamError as exc:
        cut = type(exc)
    assert cut == whole


@FUZZ
@given(st.data(), st.sampled_from(["little", "big"]), st.sampled_from([16, 1 << 10, 1 << 14]))
def test_the_fast_scan_agrees_with_the_walk(data, byte_order, n_entries):
    """With the table size known the decoder may take a vectorised path; it
    must find exactly the records (or the fault) of the record-by-record
    walk followed by the table check."""
    damaged = data.draw(damage(stream(byte_order), most=3))
    try:
        fast, used = decode_batch(damaged, byte_order, n_entries=n_entries)
        fast = (flat([fast]), used)
    except StreamError:
        fast = "refused"
    try:
        walked, used = decode_batch(damaged, byte_order)
        walked.check(n_entries)
        walked = (flat([walked]), used)
    except StreamError:
        walked = "refused"
    assert fast == walked


# -- the container --------------------------------------------------------------------------------


@cache
def snapshot() -> bytes:
    little = C.whole(C.record_stream(18, "little", 300, fill=0.02), 2500)
    return C.snapshot(pieces=[(1, little), (2, C.whole(little, 400)), (3, b"")], chunk_size=700)


@cache
def snapshot_records() -> tuple:
    return parse(snapshot(), 1 << 20, True, False)


def parse(data: bytes, size: int, decompress: bool, check_records: bool):
    """(records of each chunk, trailer totals) as the streaming parser sees them."""
    parser = ContainerParser(decompress=decompress, check_records=check_records)
    chunks, trailer = [], None
    feed = iter(pieces(data, size))
    while True:
        event = parser.next_event()
        if event is NEED_DATA:
            parser.receive_data(next(feed, b""))
        elif event is END_OF_STREAM:
            return tuple(chunks), trailer
        else:
            if isinstance(event, CompressedChunk):
                event = event.decompress()
            if isinstance(event, Chunk):
                chunks.append((event.pass_number, event.data))
            elif isinstance(event, Trailer):
                trailer = (event.trailer.records, event.trailer.raw_size, len(event.trailer.passes))


@FUZZ
@given(st.data(), st.integers(1, 5000), st.booleans(), st.booleans())
def test_the_container_parser_refuses_damage_with_its_own_errors(data, size, decompress, check_records):
    damaged = data.draw(damage(snapshot()))
    assume(damaged != snapshot())
    try:
        got = parse(damaged, size, decompress, check_records)
    except ContainerError:
        return
    # accepted: then it is the snapshot that was written, record for record
    assert got == snapshot_records()


@FUZZ
@given(st.data())
def test_random_access_reads_refuse_damage_with_their_own_errors(data):
    damaged = data.draw(damage(snapshot()))
    reader = SnapshotReader(io.BytesIO(damaged), threads=0)
    try:
        trailer = reader.read_trailer()
        contents = [reader.read_chunk(n).data for n in range(len(trailer.chunks))]
    except HtabError:
        return
    assert b"".join(contents) == b"".join(d for _, d in snapshot_records()[0])


# -- the QEMU walker -----------------------------------------------------------------------------


def walk(data: bytes, size: int, section_only: bool) -> list:
    walker = qemu.MigrationWalker(section_only=section_only)
    events = []
    feed = iter(pieces(data, size))
    while True:
        event = walker.next_event()
        if event is qemu.NEED_DATA:
            walker.receive_data(next(feed, b""))
        elif event is qemu.END_OF_STREAM:
            return events
        else:
            events.append(event)


@FUZZ
@given(st.data(), st.integers(1, 3000), st.booleans())
def test_the_qemu_walker_refuses_damage_with_its_own_errors(data, size, section_only):
    seed = C.qemu_section() if section_only else C.qemu_stream()
    damaged = data.draw(damage(seed))
    try:
        walk(damaged, size, section_only)
    except QemuStreamError:
        pass
    try:
        source = qemu.QemuSource(io.BytesIO(damaged), section_only=section_only, read_size=size)
        for _, piece in source.pieces():
            batch, used = decode_batch(piece, "little", n_entries=source.info.entries)
            assert used == len(piece)
    except HtabError:
        pass


# -- stat and diff against the write side -----------------------------------------------------------


@settings(FUZZ, max_examples=int(EXAMPLES) // 10 if EXAMPLES else 15)
@given(st.lists(st.integers(1, 3), min_size=1, max_size=4), st.integers(0, 2**32 - 1))
def test_the_final_table_is_every_pass_applied_in_order(gaps, seed):
    """stat's and diff's final table is what the kernel's write side makes
    of all the records, in file order (pass numbers from 1, with gaps)."""
    rng = np.random.default_rng(seed)
    numbers = list(np.cumsum(gaps))
    passes = []
    for number in numbers:
        t = C.synthetic_table(18, float(rng.uniform(0.01, 0.1)), int(rng.integers(1 << 30)))
        changed = rng.random(len(t)) < 0.3 if passes else None
        passes.append((int(number), encode_pass(StaticTable(t, changed=changed), "little", first_pass=not passes)))
    expected = new_table(1 << 14)
    for _, data in passes:
        apply_batch(expected, decode_batch(data, "little")[0])
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "s.htab")
        with open(path, "wb") as f:
            f.write(C.snapshot(pieces=passes, chunk_size=2048))
        with open_snapshot(path) as snap:
            got = np.concatenate([part for _, part in ops.final_state(snap)])
            valid = ops.stat(snap).table.to_dict()["valid"]
    assert np.array_equal(got, expected)
    assert valid == int(np.count_nonzero(expected[:, 0] & np.uint64(1)))


# -- no allocation in proportion to a size that is claimed ----------------------------------------


def peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    except HtabError:
        pass
    finally:
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return top


def container_claiming(frame_size: int, then: bytes = b"") -> bytes:
    return struct.pack("<II", C.OUR_MAGIC, frame_size) + b"HEAD" + then


def chunk_claiming(valid: int, compressed_size: int) -> bytes:
    """A sound header with a 64 MiB chunk limit, then a sound descriptor of
    one record of ``valid`` entries in ``compressed_size`` bytes, and the
    first bytes of its frame."""
    base = C.head(C.snapshot(pieces=[]), chunk_limit=64 << 20)
    head = C.frame(base, "HEAD")
    body = C.CHNK.pack(0, 1, 0, compressed_size, 8 + 16 * valid, 0, 1, 0, 1, valid, 0)
    return base[: head.end] + C.our_frame(b"CHNK", body) + b"\x28\xb5\x2f\xfd" + bytes(60)


@pytest.mark.parametrize("data, limit", [
    (container_claiming(0xFFFFFFF0), 64 << 10),
    (container_claiming(1 << 20, b"\0" * 100), 64 << 10),
    (chunk_claiming(((64 << 20) - 8) // 16, 64 << 20), 256 << 10),
    (chunk_claiming(0xFFFF, 1 << 20), 256 << 10),
], ids=["header-4-GiB", "header-1-MiB-cut", "chunk-64-MiB-cut", "chunk-1-MiB-cut"])
def test_the_container_allocates_nothing_it_is_only_told_of(data, limit):
    def read():
        parser = ContainerParser()
        parser.receive_data(data)
        parser.receive_data(b"")
        while parser.next_event() is not END_OF_STREAM:
            pass

    assert peak(read) < limit


def test_the_decoder_allocates_nothing_it_is_only_told_of():
    claim = struct.pack("<IHH", 0, 0xFFFF, 0) + bytes(64)  # a million entry bytes announced, 64 given

    def read():
        dec = RecordDecoder("little", n_entries=1 << 14)
        dec.receive_data(claim)
        dec.next_batch()
        dec.receive_data(b"")
        dec.next_batch()

    assert peak(read) < 64 << 10


@pytest.mark.parametrize("data", [
    C.qemu_stream(config=b"\x07" + C.be32(0xFFFFFFFF) + b"pseries"),
    C.qemu_stream(ram_start=C.section_start(C.RAM_ID, b"ram", 4) + C.be64((1 << 62) | 0x04)
                  + C.idstr(C.RAM_BLOCK) + C.be64(1 << 62) + C.be64(0x10) + C.footer(C.RAM_ID)),
    C.qemu_stream()[: C.qemu_offset("ram_part") + 30],
], ids=["configuration-4-GiB", "ram-block-4-EiB", "page-cut"])
def test_the_qemu_walker_allocates_nothing_it_is_only_told_of(data):
    def read():
        for _ in qemu.iter_events(io.BytesIO(data), read_size=1 << 16):
            pass

    assert peak(read) < 256 << 10
