"""The numbers and byte layouts of a snapshot file, as htabtool-snapshot(5) names them.

Every integer of the container is unsigned little-endian (as in zstd); the
records inside data frames keep the byte order the header states.  Each
layout is a :class:`struct.Struct` named for the frame (or the part of a
frame) the man page describes, with a ``*_FIELDS`` tuple giving the man
page's names of its fields in order:

- ``ENVELOPE``: magic, frame_size, the first 8 bytes of every frame;
  ``FRAME_CRC``: the CRC-32 that ends each of htabtool's frames;
- ``HEADER``: the fixed part of the HEAD body (the JSON object follows);
- ``DESCRIPTOR``: a CHNK body, one chunk's description;
- ``PASS_END``: a PASS body (also the trailer's pass entries);
- ``TRAILER``: the fixed part of the TRLR body; ``CHUNK_ENTRY``: a trailer
  chunk entry (the data frame's file offset, then the CHNK body);
- ``SEEK_TABLE_ENTRY``: one frame's sizes in the seek table;
  ``SEEK_TABLE_FOOTER``: the last 9 bytes of the file.

This module imports only the record layer's sizes (:mod:`htabtool.records`).
"""

from __future__ import annotations

import os
import struct
import zlib

from htabtool.records import HEADER_SIZE, MAX_RUN

# -- the numbers of the format (htabtool-snapshot(5)) -------------------------

FORMAT_VERSION = 1
SIGNATURE = b"HTABSNAP"
SKIPPABLE_MAGIC = 0x184D2A5B  # our frames
SEEK_TABLE_MAGIC = 0x184D2A5E  # the zstd seekable format's seek table frame
SEEKABLE_MAGIC = 0x8F92EAB1  # the last 4 bytes of a seekable file
ZSTD_MAGIC = 0xFD2FB528
SKIPPABLE_RANGE = range(0x184D2A50, 0x184D2A60)

TAG_HEADER = b"HEAD"
TAG_CHUNK = b"CHNK"
TAG_PASS = b"PASS"
TAG_TRAILER = b"TRLR"

BYTE_ORDER_CODES = {"little": 0, "big": 1}
BYTE_ORDER_NAMES = {0: "little", 1: "big"}
FLAG_BOLTED_ONLY = 0x1  # KVM_GET_HTAB_BOLTED_ONLY
KNOWN_FLAGS = FLAG_BOLTED_ONLY
KNOWN_REQUIRED_FEATURES = 0  # version 1 defines none
MIN_ORDER, MAX_ORDER = 4, 46  # KVM itself uses 18..46 (PPC_MIN/MAX_HPT_ORDER)

MAX_RECORD_SIZE = HEADER_SIZE + 16 * MAX_RUN  # 1048568: the largest record
MAX_CHUNK_LIMIT = 64 << 20  # no chunk may hold more raw bytes than this
FORMAT_CHUNK_MIN = 1
HEADER_FRAME_LIMIT = 1 << 20  # the header frame, JSON included
SMALL_FRAME_LIMIT = 64 << 10  # descriptors, pass ends, unknown optional frames
TRAILER_BASE_LIMIT = 64 << 10  # plus TRAILER_ENTRY_LIMIT per chunk and pass
TRAILER_ENTRY_LIMIT = 1 << 10
SEEKABLE_MAX_FRAMES = 0x8000000  # ZSTD_SEEKABLE_MAXFRAMES

# -- htabtool's choices (not rules of the format) -----------------------------

DEFAULT_LEVEL = 1
DEFAULT_CHUNK_SIZE = 1 << 20
DEFAULT_THREADS = max(1, min(2, os.cpu_count() or 1))
DEFAULT_READ_SIZE = 1 << 21

# -- the layouts ------------------------------------------------------------------

ENVELOPE = struct.Struct("<II")
ENVELOPE_FIELDS = ("magic", "frame_size")
FRAME_CRC = struct.Struct("<I")
HEADER = struct.Struct("<8sHHIIBBBBQQII")
HEADER_FIELDS = ("signature", "format_version", "fixed_size", "required_features", "optional_features",
                 "byte_order", "order", "flags", "reserved", "entries", "start_index", "chunk_limit", "json_size")
DESCRIPTOR = struct.Struct("<IIQIIIIQQQQ")
DESCRIPTOR_FIELDS = ("chunk", "pass", "raw_offset", "compressed_size", "raw_size", "frame_crc", "records",
                     "first_index", "end_index", "valid", "invalid")
CHUNK_ENTRY = struct.Struct("<Q" + DESCRIPTOR.format[1:])
CHUNK_ENTRY_FIELDS = ("offset", *DESCRIPTOR_FIELDS)
PASS_END = struct.Struct("<IIIQQQQQ")
PASS_END_FIELDS = ("pass", "first_chunk", "chunks", "raw_offset", "raw_size", "records", "valid", "invalid")
TRAILER = struct.Struct("<HHHHIIQQQQQ")
TRAILER_FIELDS = ("fixed_size", "chunk_entry_size", "pass_entry_size", "reserved", "chunks", "passes", "records",
                  "raw_size", "valid", "invalid", "offset")
SEEK_TABLE_ENTRY = struct.Struct("<II")
SEEK_TABLE_ENTRY_FIELDS = ("compressed_size", "decompressed_size")
SEEK_TABLE_FOOTER = struct.Struct("<IBI")
SEEK_TABLE_FOOTER_FIELDS = ("frames", "descriptor", "seekable_magic")

assert (HEADER.size, DESCRIPTOR.size, CHUNK_ENTRY.size, PASS_END.size, TRAILER.size) == (48, 64, 72, 52, 56)
assert all(
    len(fields) == len(layout.unpack(bytes(layout.size)))
    for layout, fields in (
        (ENVELOPE, ENVELOPE_FIELDS),
        (HEADER, HEADER_FIELDS),
        (DESCRIPTOR, DESCRIPTOR_FIELDS),
        (CHUNK_ENTRY, CHUNK_ENTRY_FIELDS),
        (PASS_END, PASS_END_FIELDS),
        (TRAILER, TRAILER_FIELDS),
        (SEEK_TABLE_ENTRY, SEEK_TABLE_ENTRY_FIELDS),
        (SEEK_TABLE_FOOTER, SEEK_TABLE_FOOTER_FIELDS),
    )
)


def compress_bound(size: int) -> int:
    """ZSTD_COMPRESSBOUND plus room for a frame header and checksum."""
    extra = ((128 << 10) - size) >> 11 if size < (128 << 10) else 0
    return size + (size >> 8) + extra + 32


def encode_frame(tag: bytes, body: bytes) -> bytes:
    """One of our skippable frames: envelope, tag, body, CRC-32 of all before it."""
    head = ENVELOPE.pack(SKIPPABLE_MAGIC, 4 + len(body) + 4) + tag + body
    return head + FRAME_CRC.pack(zlib.crc32(head))


def encode_seek_table(frames) -> bytes:
    """The seek table frame (zstd seekable format, no checksums) for
    ``frames``, (compressed, decompressed) sizes of every frame before it."""
    body = b"".join(SEEK_TABLE_ENTRY.pack(c, d) for c, d in frames)
    body += SEEK_TABLE_FOOTER.pack(len(frames), 0, SEEKABLE_MAGIC)
    return ENVELOPE.pack(SEEK_TABLE_MAGIC, len(body)) + body


def tag_name(tag: bytes) -> str:
    """A frame's tag as messages quote it: ``'CHNK'``."""
    return repr(tag.decode("latin-1"))
