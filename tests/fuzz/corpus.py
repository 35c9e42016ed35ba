"""Inputs for the fuzzers and the catalogue of bad inputs: sound files built
with the library, and tools to damage them one structure at a time.

Strategy: every builder is deterministic (same arguments, same bytes, but
for the ``created`` time in a snapshot header) and small, so that a fuzzer
mutates inputs that reach deep into the parsers.  The snapshot layout is
taken from htabtool-snapshot(5) and spelled out here again (not imported
from the container module), so that a damaged file is made from the
specification, not from the reader's own idea of it.  Nothing here imports
pytest: the atheris harnesses beside this file use it too.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from htabtool.container import SnapshotHeader, SnapshotWriter
from htabtool.records import StaticTable, iter_reads, new_table

# -- htabtool-snapshot(5) ------------------------------------------------------

OUR_MAGIC = 0x184D2A5B
SEEK_TABLE_MAGIC = 0x184D2A5E
ZSTD_MAGIC = 0xFD2FB528
ENVELOPE = struct.Struct("<II")
#: HEAD body: signature, version, fixed_size, required, optional, byte order,
#: order, flags, reserved, entries, start_index, chunk_limit, json_size
HEAD = struct.Struct("<8sHHIIBBBBQQII")
HEAD_FIELDS = ("signature", "version", "fixed_size", "required", "optional", "byte_order", "order", "flags",
               "reserved", "entries", "start_index", "chunk_limit", "json_size")
#: CHNK body: chunk, pass, raw_offset, compressed_size, raw_size, frame_crc,
#: records, first_index, end_index, valid, invalid
CHNK = struct.Struct("<IIQIIIIQQQQ")
CHNK_FIELDS = ("chunk", "pass", "raw_offset", "compressed_size", "raw_size", "frame_crc", "records",
               "first_index", "end_index", "valid", "invalid")
PASS = struct.Struct("<IIIQQQQQ")
TRLR = struct.Struct("<HHHHIIQQQQQ")
TRLR_FIELDS = ("fixed_size", "chunk_entry_size", "pass_entry_size", "reserved", "chunks", "passes", "records",
               "raw_size", "valid", "invalid", "offset")


@dataclass(frozen=True)
class Frame:
    """One frame of a snapshot: ``kind`` is the tag ('HEAD', 'CHNK', 'PASS',
    'TRLR', or an optional one), 'data' for a zstd data frame, 'SEEK' for
    the seek table; ``offset`` and ``size`` (the whole frame)."""

    kind: str
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def body(self) -> slice:
        """Where the body of one of our frames is (after magic, size, tag)."""
        return slice(self.offset + 12, self.end - 4)


def frames(data: bytes) -> list[Frame]:
    """The frames of a sound snapshot, in file order."""
    out, pos = [], 0
    while pos < len(data):
        magic, size = ENVELOPE.unpack_from(data, pos)
        if magic == OUR_MAGIC:
            tag = data[pos + 8 : pos + 12].decode("latin-1")
            out.append(Frame(tag, pos, 8 + size))
            pos += 8 + size
            if tag == "CHNK":
                compressed = CHNK.unpack_from(data, pos - size + 4)[3]
                out.append(Frame("data", pos, compressed))
                pos += compressed
        elif magic == SEEK_TABLE_MAGIC:
            out.append(Frame("SEEK", pos, 8 + size))
            pos += 8 + size
        else:
            raise ValueError(f"not a sound snapshot: magic {magic:#x} at {pos:#x}")
    return out


def frame(data: bytes, kind: str, n: int = 0) -> Frame:
    """The ``n``-th frame of ``kind``."""
    return [f for f in frames(data) if f.kind == kind][n]


def reseal(data: bytearray, f: Frame) -> None:
    """Recompute the CRC-32 of one of our frames after its body was changed."""
    struct.pack_into("<I", data, f.end - 4, zlib.crc32(bytes(data[f.offset : f.end - 4])))


def set_fields(data: bytes, kind: str, layout: struct.Struct, names: tuple, n: int = 0, reseal_crc: bool = True,
               **values) -> bytes:
    """A copy of ``data`` with fields of the ``n``-th ``kind`` frame's body
    changed (and its CRC made right again, unless ``reseal_crc`` is false)."""
    out = bytearray(data)
    f = frame(data, kind, n)
    fields = list(layout.unpack_from(out, f.body.start))
    for name, value in values.items():
        fields[names.index(name)] = value
    layout.pack_into(out, f.body.start, *fields)
    if reseal_crc:
        reseal(out, f)
    return bytes(out)


def head(data: bytes, **values) -> bytes:
    return set_fields(data, "HEAD", HEAD, HEAD_FIELDS, **values)


def descriptor(data: bytes, n: int = 0, **values) -> bytes:
    return set_fields(data, "CHNK", CHNK, CHNK_FIELDS, n, **values)


def trailer(data: bytes, **values) -> bytes:
    return set_fields(data, "TRLR", TRLR, TRLR_FIELDS, **values)


def flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


def our_frame(tag: bytes, body: bytes) -> bytes:
    """One of our skippable frames (for inserting foreign ones)."""
    head_ = ENVELOPE.pack(OUR_MAGIC, 4 + len(body) + 4) + tag + body
    return head_ + struct.pack("<I", zlib.crc32(head_))


def patch_json(data: bytes, old: bytes, new: bytes) -> bytes:
    """The header's JSON with ``old`` replaced by ``new`` of the same length
    (so that no offset moves), the header's CRC made right again."""
    if len(old) != len(new):
        raise ValueError("the replacement must keep the length")
    out = bytearray(data)
    f = frame(data, "HEAD")
    at = out.index(old, f.offset, f.end)
    out[at : at + len(old)] = new
    reseal(out, f)
    return bytes(out)


# -- tables and record streams --------------------------------------------------


def table(order: int = 18, fill: float = 0.05, seed: int = 1) -> np.ndarray:
    """A hash table filled as one fills: the low slots of each group of 8
    valid, bolted 64K entries and 4K user entries."""
    n = 1 << (order - 4)
    rng = np.random.default_rng(seed)
    per_group = rng.binomial(8, fill, n // 8)
    valid = np.tile(np.arange(8), n // 8) < np.repeat(per_group, 8)
    v = (rng.integers(1, 1 << 40, n, dtype=np.uint64) << np.uint64(7)) | np.uint64(0x1)
    bolted = rng.random(n) < 0.5
    v[bolted] |= np.uint64((1 << 62) | 0x10 | 0x4)
    r = (rng.integers(0, 1 << 30, n, dtype=np.uint64) << np.uint64(16)) | np.uint64(0x192)
    t = new_table(n)
    t[:, 0] = np.where(valid, v, 0)
    t[:, 1] = np.where(valid, r, 0)
    return t


def record_stream(order: int = 18, byte_order: str = "little", read: int = 4096, fill: float = 0.05,
                  seed: int = 1) -> bytes:
    """A first pass over :func:`table`, as reads of ``read`` bytes return it."""
    return b"".join(r.data for r in iter_reads(StaticTable(table(order, fill, seed)), read, byte_order))


def whole(stream: bytes, limit: int, byte_order: str = "little") -> bytes:
    """The longest run of whole records at the start of ``stream`` that
    fits in ``limit`` bytes."""
    from htabtool.records import decode_batch

    _, used = decode_batch(stream[:limit], byte_order)
    return stream[:used]


def record(index: int, entries=(), n_invalid: int = 0, byte_order: str = "little") -> bytes:
    """One record: ``entries`` are (v, r) pairs, big-endian on every host."""
    p = "<" if byte_order == "little" else ">"
    return struct.pack(p + "IHH", index, len(entries), n_invalid) + b"".join(
        struct.pack(">QQ", v, r) for v, r in entries
    )


def snapshot(pieces=None, *, order: int = 18, byte_order: str = "little", chunk_size: int = 4096,
             source: dict | None = None, created: str = "2026-01-01T00:00:00Z") -> bytes:
    """A snapshot of ``pieces`` ((pass number, whole records) in order;
    default: a first pass of :func:`record_stream` and an empty second pass)."""
    if pieces is None:
        pieces = [(1, record_stream(order, byte_order)), (2, b"")]
    header = SnapshotHeader(byte_order=byte_order, order=order, source=source or {"kind": "raw", "name": "corpus"},
                            created=created, tool_version="corpus")
    out = io.BytesIO()
    with SnapshotWriter(out, header, chunk_size=chunk_size, threads=0) as writer:
        for number, data in pieces:
            writer.write_records(data, number)
    return out.getvalue()


# -- QEMU migration streams (htabtool-qemu(7)) -------------------------------------

RAM_ID, HTAB_ID = 2, 5
RAM_BLOCK = b"ppc_spapr.ram"
RAM_BLOCK_LENGTH = 1 << 20
PAGE_SIZE = 4096


def be32(x: int) -> bytes:
    return struct.pack(">I", x & 0xFFFFFFFF)


def be64(x: int) -> bytes:
    return struct.pack(">Q", x)


def idstr(name: bytes) -> bytes:
    return bytes([len(name)]) + name


def section_start(section_id: int, name: bytes, version: int, kind: int = 0x01) -> bytes:
    return bytes([kind]) + be32(section_id) + idstr(name) + be32(0) + be32(version)


def section_part(section_id: int, kind: int = 0x02) -> bytes:
    return bytes([kind]) + be32(section_id)


def footer(section_id: int) -> bytes:
    return b"\x7e" + be32(section_id)


def ram_item(address: int, flags: int, page: bytes | None = None, block: bytes | None = RAM_BLOCK) -> bytes:
    """A RAM item: with ``block`` the block name follows, else CONTINUE."""
    head_ = be64(address | flags | (0 if block else 0x20)) + (idstr(block) if block else b"")
    if flags & 0x02:
        return head_ + b"\x00"  # a zero page: its fill byte
    if flags & 0x08:
        return head_ + (page if page is not None else bytes([address >> 12 & 0xFF]) * PAGE_SIZE)
    return head_


def htab_payload(*records: bytes) -> bytes:
    """A PART/END payload: be32 0, big-endian records, the end marker."""
    return be32(0) + b"".join(records) + bytes(8)


HTAB_SHIFT = 18
PART1 = (record(8, [(0x4000000000001015, 0x190), (0x4000000000001095, 0x10190)], byte_order="big"),
         record(100, [(0x4000000000001115, 0x20190)], byte_order="big"))
PART2 = (record(9, [], 1, byte_order="big"), record(50, [(0x4000000000001195, 0x30190)], 2, byte_order="big"))
DEVICE_STATE = section_start(0, b"timer", 2, kind=0x04) + bytes(24) + footer(0) + b"\x00"


def qemu_pieces(shift: int = HTAB_SHIFT) -> dict:
    """The pieces of a small migration stream, by name, in order."""
    return {
        "header": be32(0x5145564D) + be32(3),
        "config": b"\x07" + be32(11) + b"pseries-7.2",
        "ram_start": section_start(RAM_ID, b"ram", 4) + be64(RAM_BLOCK_LENGTH | 0x04) + idstr(RAM_BLOCK)
        + be64(RAM_BLOCK_LENGTH) + be64(0x10) + footer(RAM_ID),
        "htab_start": section_start(HTAB_ID, b"spapr/htab", 1) + be32(shift) + footer(HTAB_ID),
        "ram_part": section_part(RAM_ID) + ram_item(0, 0x08) + ram_item(PAGE_SIZE, 0x02, block=None)
        + ram_item(2 * PAGE_SIZE, 0x08, block=None) + be64(0x10) + footer(RAM_ID),
        "htab_part": section_part(HTAB_ID) + htab_payload(*PART1) + footer(HTAB_ID),
        "ram_end": section_part(RAM_ID, 0x03) + be64(0x10) + footer(RAM_ID),
        "htab_end": section_part(HTAB_ID, 0x03) + htab_payload(*PART2) + footer(HTAB_ID),
        "device": DEVICE_STATE,
    }


def qemu_stream(**replace) -> bytes:
    """The small migration stream with named pieces replaced (None: left out)."""
    pieces = dict(qemu_pieces(), **replace)
    return b"".join(v for v in pieces.values() if v is not None)


def qemu_offset(name: str) -> int:
    """Offset of a named piece in the default stream."""
    at = 0
    for key, value in qemu_pieces().items():
        if key == name:
            return at
        at += len(value)
    raise KeyError(name)


def qemu_section(shift: int = HTAB_SHIFT) -> bytes:
    """Bare spapr/htab section payloads: START, then two parts."""
    return be32(shift) + htab_payload(*PART1) + htab_payload(*PART2)


# -- the seed corpus of the fuzzers --------------------------------------------------


def seeds() -> dict[str, dict[str, bytes]]:
    """Seed inputs for each harness (name -> file name -> bytes); the first
    byte of each is the harness's control byte (see the harnesses)."""
    small = whole(record_stream(18, "little", 200, fill=0.01), 3000)
    big = whole(record_stream(18, "big", 200, fill=0.01), 2000, "big")
    return {
        "records": {
            "little-first-pass": b"\x00" + small,
            "big-first-pass": b"\x01" + big,
            "checked-invalid-runs": b"\x02" + record(0, [], 16) + record(16, [(0x4000000000001015, 0x190)], 3),
        },
        "container": {
            "two-passes": b"\x00" + snapshot(chunk_size=1024, pieces=[(1, small), (2, b"")]),
            "big-endian": b"\x05" + snapshot(byte_order="big", chunk_size=512, pieces=[(1, big)]),
            "empty": b"\x02" + snapshot(pieces=[]),
        },
        "qemu": {
            "stream": b"\x00" + qemu_stream(),
            "section": b"\x01" + qemu_section(),
        },
    }


def fuzz_main(module: str, one_input, argv=None) -> None:
    """A harness's entry point: instrument ``module`` and fuzz ``one_input``."""
    import importlib
    import sys

    import atheris

    with atheris.instrument_imports(include=["htabtool"]):
        importlib.import_module(module)
    atheris.Setup(list(sys.argv if argv is None else argv), one_input)
    atheris.Fuzz()
