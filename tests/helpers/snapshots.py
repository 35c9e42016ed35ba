"""Snapshot files for the tests, the fuzzers and the catalogue of bad
inputs: sound ones built with the library, and tools to damage them one
structure at a time.

Every builder is deterministic (same arguments, same bytes, but for the
``created`` time in a snapshot header) and small, so that a fuzzer mutates
inputs that reach deep into the parsers.  The snapshot layout is taken from
htabtool-snapshot(5) and spelled out here again (not imported from the
container module), so that a damaged file is made from the specification,
not from the reader's own idea of it.  Nothing here imports pytest: the
atheris harnesses use it too.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

from htabtool.container import SnapshotHeader, SnapshotWriter
from htabtool.records import StaticTable, iter_reads
from tests.helpers.tables import record_stream

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


# -- sound snapshots ---------------------------------------------------------------


def snapshot(pieces=None, *, order: int = 18, byte_order: str = "little", chunk_size: int = 4096,
             source: dict | None = None, created: str = "2026-01-01T00:00:00Z") -> bytes:
    """A snapshot of ``pieces`` ((pass number, whole records) in order;
    default: a first pass of :func:`~tests.helpers.tables.record_stream` and an empty second pass)."""
    if pieces is None:
        pieces = [(1, record_stream(order, byte_order)), (2, b"")]
    header = SnapshotHeader(byte_order=byte_order, order=order, source=source or {"kind": "raw", "name": "corpus"},
                            created=created, tool_version="corpus")
    out = io.BytesIO()
    with SnapshotWriter(out, header, chunk_size=chunk_size, threads=0) as writer:
        for number, data in pieces:
            writer.write_records(data, number)
    return out.getvalue()


def write_snapshot(path, passes, *, order: int, byte_order: str = "little", read: int = 4096):
    """A snapshot file at ``path`` of ``passes``: [(table, changed mask, or
    None for a first pass)], each read as reads of ``read`` bytes return it."""
    with open(path, "wb") as f, SnapshotWriter(f, SnapshotHeader(byte_order=byte_order, order=order)) as w:
        for number, (table, changed) in enumerate(passes, 1):
            src = StaticTable(table, changed=None if changed is None else changed.copy())
            for res in iter_reads(src, read, byte_order, first_pass=changed is None):
                w.write_records(res.data, number)
    return path


def deep_json(data: bytes | None = None) -> bytes:
    """``data`` (default: :func:`snapshot`) with the header's JSON replaced
    by 100,000 nested arrays (within the 1 MiB limit of the header frame)."""
    data = snapshot() if data is None else data
    meta = b"[" * 100_000 + b"]" * 100_000
    f = frame(data, "HEAD")
    fields = list(HEAD.unpack_from(data[f.body]))
    fields[HEAD_FIELDS.index("json_size")] = len(meta)
    return our_frame(b"HEAD", HEAD.pack(*fields) + meta) + data[f.end :]
