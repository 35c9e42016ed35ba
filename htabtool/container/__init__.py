"""Snapshot files: kernel records in zstd frames, described by skippable frames.

Strategy: a snapshot is a valid zstd stream.  Every chunk of kernel records
(whole records, exactly as read(2) of the htab fd returned them) is one zstd
frame with its content size and content checksum; everything else -- the
header, a descriptor before each chunk, the end of each pass, the trailer
with the chunk index -- sits in zstd *skippable frames*, and the file ends
with a seek table in the zstd seekable format.  So ``zstd -dc`` prints the
exact record stream and ``zstd -t`` checks it.  The byte-level rules are in
htabtool-snapshot(5) (man/htabtool-snapshot.5); this module follows it.

- :class:`ContainerParser` is the reader's core, sans I/O as h11: feed it
  bytes with ``receive_data`` (``b""`` at the end) and take events from
  ``next_event``: :class:`Header`, :class:`Chunk`, :class:`PassEnd`,
  :class:`Trailer`, then END_OF_STREAM, or NEED_DATA when it wants bytes.
  It checks every frame as it comes (checksums, sizes against limits before
  anything is buffered or decompressed, numbering, totals) and raises
  ContainerError / TruncatedContainer / UnsupportedFeature naming the chunk
  and the byte offset.
- :class:`SnapshotWriter` takes record data and pass numbers, cuts chunks at
  record boundaries, compresses them on worker threads (zstd releases the
  GIL) while the caller produces the next ones, and never seeks.
- :class:`SnapshotReader` drives the parser over a file object in bounded
  memory; on a seekable file it can answer from the trailer alone.
"""

from __future__ import annotations

import collections
import json
import os
import struct
import threading
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import BinaryIO, Iterator, Union

import numpy as np
import zstandard

from htabtool.errors import ContainerError, StreamError, TruncatedContainer, UnsupportedFeature, UsageError
from htabtool.records import (
    END_OF_STREAM,
    HEADER_SIZE,
    MAX_RUN,
    NEED_DATA,
    _scan,
    decode_batch,
    check_indexable_order,
    header_dtype,
    record_stats,
)

__all__ = [
    "FORMAT_VERSION",
    "DEFAULT_LEVEL",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_THREADS",
    "DEFAULT_READ_SIZE",
    "SnapshotHeader",
    "ChunkInfo",
    "PassInfo",
    "SnapshotTrailer",
    "Header",
    "Chunk",
    "CompressedChunk",
    "PassEnd",
    "Trailer",
    "ContainerParser",
    "SnapshotWriter",
    "SnapshotReader",
    "NEED_DATA",
    "END_OF_STREAM",
]

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

DEFAULT_LEVEL = 1
DEFAULT_CHUNK_SIZE = 1 << 20
DEFAULT_THREADS = max(1, min(2, os.cpu_count() or 1))
DEFAULT_READ_SIZE = 1 << 21

_ENVELOPE = struct.Struct("<II")  # skippable magic, frame size
_CRC = struct.Struct("<I")
#: signature, version, fixed_size, required, optional, byte order, order,
#: flags, reserved, entries, start_index, chunk_limit, json_size
_HEAD = struct.Struct("<8sHHIIBBBBQQII")
#: number, pass, raw_offset, compressed_size, raw_size, crc32, records,
#: first_index, end_index, valid, invalid
_CHUNK = struct.Struct("<IIQIIIIQQQQ")
_CHUNK_ENTRY = struct.Struct("<Q" + _CHUNK.format[1:])  # file offset + the above
#: pass, first_chunk, chunks, raw_offset, raw_size, records, valid, invalid
_PASS = struct.Struct("<IIIQQQQQ")
#: fixed_size, chunk_entry_size, pass_entry_size, reserved, chunks, passes,
#: records, raw_size, valid, invalid, trailer offset
_TRAILER = struct.Struct("<HHHHIIQQQQQ")
_FOOTER = struct.Struct("<IBI")  # frames, descriptor, seekable magic
_SEEK_ENTRY = struct.Struct("<II")  # compressed size, decompressed size

assert (_HEAD.size, _CHUNK.size, _CHUNK_ENTRY.size, _PASS.size, _TRAILER.size) == (48, 64, 72, 52, 56)


def compress_bound(size: int) -> int:
    """ZSTD_COMPRESSBOUND plus room for a frame header and checksum."""
    extra = ((128 << 10) - size) >> 11 if size < (128 << 10) else 0
    return size + (size >> 8) + extra + 32


def _frame(tag: bytes, body: bytes) -> bytes:
    """One of our skippable frames: envelope, tag, body, CRC-32 of all before it."""
    head = _ENVELOPE.pack(SKIPPABLE_MAGIC, 4 + len(body) + 4) + tag + body
    return head + _CRC.pack(zlib.crc32(head))


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _tool_version() -> str:
    from htabtool import __version__

    return __version__


# -- what a snapshot says ----------------------------------------------------

_JSON_KEYS = ("source", "created", "tool_version")


@dataclass(frozen=True)
class SnapshotHeader:
    """The header: what table the records describe and where they came from.

    ``order`` is log2 of the table's size in bytes (entries = 2**(order-4));
    ``entries`` defaults to that.  ``source`` is a JSON-able dict with at
    least ``kind`` ("vm", "raw", "qemu", "kvm") and any details (image, seed,
    file name, ...).  ``created`` defaults to now (UTC, ISO 8601) and
    ``tool_version`` to htabtool's.  ``extra`` holds optional fields this
    version does not know (kept on reading, written back as top-level JSON
    keys).  ``chunk_limit`` is filled in by the writer (0 = not yet);
    ``required_features`` / ``optional_features`` are the feature bits
    (version 1 defines none)."""

    byte_order: str
    order: int
    entries: int | None = None
    bolted_only: bool = False
    start_index: int = 0
    source: dict = field(default_factory=lambda: {"kind": "raw"})
    created: str | None = None
    tool_version: str | None = None
    extra: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    chunk_limit: int = 0
    required_features: int = 0
    optional_features: int = 0

    def __post_init__(self):
        set_ = object.__setattr__
        if self.byte_order not in BYTE_ORDER_CODES:
            raise UsageError(f"byte order must be 'little' or 'big', not {self.byte_order!r}")
        if not isinstance(self.order, int) or not MIN_ORDER <= self.order <= MAX_ORDER:
            raise UsageError(f"table order {self.order!r} is outside {MIN_ORDER}..{MAX_ORDER}")
        check_indexable_order(self.order)
        derived = 1 << (self.order - 4)
        if self.entries is None:
            set_(self, "entries", derived)
        elif self.entries != derived:
            raise UsageError(f"{self.entries} entries do not match order {self.order} ({derived} entries)")
        if not 0 <= self.start_index < self.entries:
            raise UsageError(f"start index {self.start_index} is outside the table of {self.entries} entries")
        if not isinstance(self.source, dict) or not isinstance(self.source.get("kind"), str):
            raise UsageError("source must be a dict with a string 'kind'")
        if self.created is None:
            set_(self, "created", _now())
        if self.tool_version is None:
            set_(self, "tool_version", _tool_version())
        if not isinstance(self.created, str) or not isinstance(self.tool_version, str):
            raise UsageError("created and tool_version must be strings")
        if not isinstance(self.extra, dict) or any(k in _JSON_KEYS for k in self.extra):
            raise UsageError(f"extra must be a dict without the keys {', '.join(_JSON_KEYS)}")
        if not 0 <= self.chunk_limit <= MAX_CHUNK_LIMIT:
            raise UsageError(f"chunk limit {self.chunk_limit} is outside 0..{MAX_CHUNK_LIMIT}")
        set_(self, "bolted_only", bool(self.bolted_only))

    def metadata(self) -> dict:
        """The JSON object of the header frame."""
        return {**self.extra, "source": self.source, "created": self.created, "tool_version": self.tool_version}

    def to_dict(self) -> dict:
        """Every field, for people and for --json."""
        return {
            "format_version": self.format_version,
            "byte_order": self.byte_order,
            "order": self.order,
            "entries": self.entries,
            "bolted_only": self.bolted_only,
            "start_index": self.start_index,
            "chunk_limit": self.chunk_limit,
            "required_features": self.required_features,
            "optional_features": self.optional_features,
            **self.metadata(),
        }


@dataclass(frozen=True)
class ChunkInfo:
    """One chunk: where its zstd frame is and what its records hold.

    ``offset`` is the file offset of the zstd frame (its descriptor frame is
    just before it); ``raw_offset`` the offset of its content in the record
    stream; ``first_index``..``end_index`` the table slots its records touch
    (lowest index, highest index + n_valid + n_invalid); ``valid`` and
    ``invalid`` the sums of n_valid and n_invalid; ``crc32`` the CRC-32 of
    the compressed frame.  ``first_record`` (the number of the chunk's first
    record in the stream) is derived, not stored."""

    number: int
    pass_number: int
    offset: int
    compressed_size: int
    raw_offset: int
    raw_size: int
    records: int
    first_index: int
    end_index: int
    valid: int
    invalid: int
    crc32: int
    first_record: int = 0

    def _fields(self) -> tuple:
        return (
            self.number,
            self.pass_number,
            self.raw_offset,
            self.compressed_size,
            self.raw_size,
            self.crc32,
            self.records,
            self.first_index,
            self.end_index,
            self.valid,
            self.invalid,
        )

    def to_dict(self) -> dict:
        return {
            "chunk": self.number,
            "pass": self.pass_number,
            "offset": self.offset,
            "compressed_size": self.compressed_size,
            "raw_offset": self.raw_offset,
            "raw_size": self.raw_size,
            "records": self.records,
            "first_index": self.first_index,
            "end_index": self.end_index,
            "valid": self.valid,
            "invalid": self.invalid,
            "crc32": f"{self.crc32:08x}",
        }


@dataclass(frozen=True)
class PassInfo:
    """One pass and its totals (htabtool numbers the first pass 1, then each
    incremental pass 2, 3, ...; the format only asks that numbers grow)."""

    pass_number: int
    first_chunk: int
    chunks: int
    raw_offset: int
    raw_size: int
    records: int
    valid: int
    invalid: int

    def _fields(self) -> tuple:
        return (
            self.pass_number,
            self.first_chunk,
            self.chunks,
            self.raw_offset,
            self.raw_size,
            self.records,
            self.valid,
            self.invalid,
        )

    def to_dict(self) -> dict:
        return {
            "pass": self.pass_number,
            "first_chunk": self.first_chunk,
            "chunks": self.chunks,
            "raw_offset": self.raw_offset,
            "raw_size": self.raw_size,
            "records": self.records,
            "valid": self.valid,
            "invalid": self.invalid,
        }


@dataclass(frozen=True)
class SnapshotTrailer:
    """The trailer: the chunk index, the passes and the file totals."""

    chunks: tuple
    passes: tuple
    records: int
    raw_size: int
    valid: int
    invalid: int
    offset: int  # file offset of the trailer frame
    file_size: int  # the whole container, seek table included

    @property
    def compressed_size(self) -> int:
        """Bytes of the chunks' zstd frames."""
        return sum(c.compressed_size for c in self.chunks)

    def to_dict(self) -> dict:
        return {
            "chunks": len(self.chunks),
            "passes": len(self.passes),
            "records": self.records,
            "raw_size": self.raw_size,
            "compressed_size": self.compressed_size,
            "file_size": self.file_size,
            "valid": self.valid,
            "invalid": self.invalid,
            "per_pass": [p.to_dict() for p in self.passes],
        }


# -- events of the parser -----------------------------------------------------


@dataclass(frozen=True)
class Header:
    header: SnapshotHeader
    size: int  # bytes of the header frame


@dataclass(frozen=True)
class Chunk:
    """A chunk's description and its records (``data``: the raw stream bytes)."""

    info: ChunkInfo
    data: bytes = field(repr=False)
    byte_order: str = "little"

    @property
    def number(self) -> int:
        return self.info.number

    @property
    def pass_number(self) -> int:
        return self.info.pass_number

    def batch(self, n_entries: int | None = None):
        """The chunk's records as a :class:`htabtool.records.RecordBatch`."""
        batch, used = decode_batch(
            self.data,
            self.byte_order,
            base_offset=self.info.raw_offset,
            first_record=self.info.first_record,
            n_entries=n_entries,
        )
        if used != len(self.data):
            raise ContainerError(
                f"chunk {self.info.number} at offset {self.info.offset:#x}: "
                f"content ends inside a record at stream offset {self.info.raw_offset + used:#x}",
                offset=self.info.offset,
                chunk=self.info.number,
            )
        return batch


@dataclass(frozen=True)
class CompressedChunk:
    """A chunk whose frame is not decompressed yet (``ContainerParser(decompress=False)``).

    Only its descriptor has been checked; :meth:`decompress` checks the frame
    (CRC-32, zstd header, content checksum, with ``check_entries`` the
    records against the descriptor) and returns the :class:`Chunk`.  It may
    run on another thread."""

    info: ChunkInfo
    frame: object = field(repr=False)  # bytes-like, read-only
    byte_order: str = "little"
    check_entries: int | None = None  # the table size, to check the records

    def decompress(self) -> Chunk:
        data = _decompress_chunk(self.frame, self.info)
        if self.check_entries is not None:
            _check_chunk_records(data, self.info, self.byte_order, self.check_entries)
        return Chunk(self.info, data, self.byte_order)


@dataclass(frozen=True)
class PassEnd:
    info: PassInfo


@dataclass(frozen=True)
class Trailer:
    trailer: SnapshotTrailer


Event = Union[Header, Chunk, CompressedChunk, PassEnd, Trailer]


# -- shared checks ---------------------------------------------------------------


def _chunk_stats(data, byte_order: str, raw_offset: int, first_record: int, n_entries: int) -> tuple:
    """(records, first_index, end_index, valid, invalid) of whole records;
    StreamError if ``data`` is not whole records, RecordError if a record
    runs past the table.  Entry contents (HPTE_V_VALID) are not looked at:
    that is a question of meaning, for ``htabtool verify``.

    The fast path is :func:`_scan_records` (vectorised); whenever it cannot
    vouch for the data, htabtool.records.decode_batch decides and names the
    fault."""
    scanned = _scan_records(data, byte_order, n_entries)
    if scanned is not None:
        return scanned
    batch, used = decode_batch(data, byte_order, base_offset=raw_offset, first_record=first_record)
    if len(batch) and ((batch.index >= n_entries) | (batch.end > n_entries)).any():
        batch.check(n_entries)  # raises RecordError naming the first record past the table
    if used != len(data) or not len(batch):
        raise StreamError(
            f"record data ends inside a record at stream offset {raw_offset + used:#x} "
            f"({len(data) - used} bytes left over): give whole records",
            offset=raw_offset + used,
            record=first_record + len(batch),
        )
    return batch.stats()


def _scan_records(data, byte_order: str, n_entries: int, rounds: int = 64):
    """The statistics of ``data`` if it is whole records inside the table,
    found without a Python loop per record (htabtool.records' chain scan);
    None when the scan cannot vouch for it (then decode_batch decides)."""
    size = len(data)
    n = size // 8
    if n == 0 or n * 8 != size:
        return None
    words = np.frombuffer(data, dtype=header_dtype(byte_order))
    scanned = _scan(words, n, n_entries, rounds)
    if scanned is None or scanned[1] != n:
        return None
    chain = words[scanned[0]]
    stats = record_stats(*(chain[name].astype(np.int64) for name in ("index", "n_valid", "n_invalid")))
    return stats if stats[2] <= n_entries else None


def _merged(a: tuple | None, b: tuple | None) -> tuple | None:
    """The statistics of two runs of records, one after the other (None:
    not known)."""
    if a is None or b is None:
        return None
    return a[0] + b[0], min(a[1], b[1]), max(a[2], b[2]), a[3] + b[3], a[4] + b[4]


def _check_chunk_records(data: bytes, info: ChunkInfo, byte_order: str, n_entries: int) -> None:
    """The records of a chunk against its descriptor."""
    where = f"chunk {info.number} at offset {info.offset:#x}"
    try:
        stats = _chunk_stats(data, byte_order, info.raw_offset, info.first_record, n_entries)
    except StreamError as exc:
        raise ContainerError(f"{where}: {exc}", offset=info.offset, chunk=info.number) from None
    stated = (info.records, info.first_index, info.end_index, info.valid, info.invalid)
    if stats != stated:
        raise ContainerError(
            f"{where}: its records (records, index range, valid, invalid) are {stats}, "
            f"the descriptor says {stated}",
            offset=info.offset,
            chunk=info.number,
        )


_local = threading.local()


def _dctx() -> zstandard.ZstdDecompressor:
    """This thread's decompressor (they are not to be shared between threads)."""
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def _decompress_chunk(frame, info: ChunkInfo) -> bytes:
    """Check a chunk's zstd frame against its descriptor, then decompress it."""
    where = f"chunk {info.number} at offset {info.offset:#x}"

    def fail(what: str) -> ContainerError:
        return ContainerError(f"{where}: {what}", offset=info.offset, chunk=info.number)

    crc = zlib.crc32(frame)
    if crc != info.crc32:
        raise fail(f"frame checksum mismatch (CRC-32 {crc:08x}, descriptor says {info.crc32:08x})")
    if len(frame) < 4 or int.from_bytes(bytes(frame[:4]), "little") != ZSTD_MAGIC:
        raise fail("not a zstd frame")
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as exc:
        raise fail(f"bad zstd frame header: {exc}") from None
    if not params.has_checksum:
        raise fail("zstd frame without a content checksum")
    if params.dict_id:
        raise fail(f"zstd frame needs dictionary {params.dict_id}")
    if params.content_size != info.raw_size:
        declared = "no" if params.content_size == zstandard.CONTENTSIZE_UNKNOWN else params.content_size
        raise fail(f"zstd frame declares {declared} content bytes, descriptor says {info.raw_size}")
    try:
        data = _dctx().decompress(frame, max_output_size=info.raw_size, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        message = str(exc)
        if "checksum" in message:
            message = "content checksum mismatch"
        raise fail(f"zstd: {message}") from None
    if len(data) != info.raw_size:
        raise fail(f"decompressed {len(data)} bytes, descriptor says {info.raw_size}")
    return data


def _parse_header_body(body: bytes, offset: int) -> SnapshotHeader:
    def fail(what: str, cls=ContainerError) -> ContainerError:
        return cls(f"header at offset {offset:#x}: {what}", offset=offset)

    if len(body) < _HEAD.size:
        raise fail(f"{len(body)} bytes, less than the {_HEAD.size} of its fixed part")
    (sig, version, fixed_size, required, optional, bo, order, flags, reserved, entries, start_index,
     chunk_limit, json_size) = _HEAD.unpack_from(body)
    if sig != SIGNATURE:
        raise fail(f"bad signature {sig!r}: not an htabtool snapshot")
    if version != FORMAT_VERSION:
        raise fail(
            f"format version {version} is not supported (this reader knows {FORMAT_VERSION})", UnsupportedFeature
        )
    unknown = required & ~KNOWN_REQUIRED_FEATURES
    if unknown:
        raise fail(f"needs features {unknown:#x} that this reader lacks", UnsupportedFeature)
    if fixed_size < _HEAD.size or fixed_size + json_size != len(body):
        raise fail(f"fixed part of {fixed_size} bytes and {json_size} JSON bytes do not fill its {len(body)} bytes")
    if bo not in BYTE_ORDER_NAMES:
        raise fail(f"unknown byte order code {bo}")
    if flags & ~KNOWN_FLAGS:
        raise fail(f"unknown read flags {flags & ~KNOWN_FLAGS:#x}", UnsupportedFeature)
    if reserved:
        raise fail(f"reserved byte is {reserved}, not 0")
    if not FORMAT_CHUNK_MIN <= chunk_limit <= MAX_CHUNK_LIMIT:
        raise fail(f"chunk limit {chunk_limit} is outside {FORMAT_CHUNK_MIN}..{MAX_CHUNK_LIMIT}")
    try:
        meta = json.loads(
            body[fixed_size:].decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise fail(f"bad JSON metadata: {exc}") from None
    except RecursionError:
        raise fail("bad JSON metadata: nested too deeply") from None
    try:
        json.dumps(meta, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise fail("bad JSON metadata: a string is not valid Unicode (a lone surrogate)") from None
    if not isinstance(meta, dict):
        raise fail("JSON metadata is not an object")
    source = meta.get("source")
    created = meta.get("created")
    tool_version = meta.get("tool_version")
    if not isinstance(source, dict) or not isinstance(source.get("kind"), str):
        raise fail("JSON metadata lacks a source with a kind")
    if not isinstance(created, str) or not isinstance(tool_version, str):
        raise fail("JSON metadata lacks created or tool_version")
    extra = {k: v for k, v in meta.items() if k not in _JSON_KEYS}
    try:
        return SnapshotHeader(
            byte_order=BYTE_ORDER_NAMES[bo],
            order=order,
            entries=entries,
            bolted_only=bool(flags & FLAG_BOLTED_ONLY),
            start_index=start_index,
            source=source,
            created=created,
            tool_version=tool_version,
            extra=extra,
            format_version=version,
            chunk_limit=chunk_limit,
            required_features=required,
            optional_features=optional,
        )
    except UsageError as exc:
        raise fail(str(exc)) from None


def _no_duplicates(pairs):
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise ValueError(f"duplicate key {k!r}")
        seen[k] = v
    return seen


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def _unicode(obj):
    """The metadata with every string made valid Unicode: a file name that
    is not UTF-8 (its bytes held as lone surrogates by Python) becomes
    its bytes as ``\\xNN`` escapes, readable and never refused."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
            return obj
        except UnicodeEncodeError:
            try:
                return obj.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            except UnicodeEncodeError:
                return obj.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(obj, dict):
        return {_unicode(k): _unicode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_unicode(v) for v in obj]
    return obj


def _header_frame(header: SnapshotHeader) -> bytes:
    try:
        meta = json.dumps(
            _unicode(header.metadata()), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise UsageError(f"header metadata is not JSON: {exc}") from None
    fixed = _HEAD.pack(
        SIGNATURE,
        header.format_version,
        _HEAD.size,
        header.required_features,
        header.optional_features,
        BYTE_ORDER_CODES[header.byte_order],
        header.order,
        FLAG_BOLTED_ONLY if header.bolted_only else 0,
        0,
        header.entries,
        header.start_index,
        header.chunk_limit,
        len(meta),
    )
    frame = _frame(TAG_HEADER, fixed + meta)
    if len(frame) > HEADER_FRAME_LIMIT:
        raise UsageError(f"header of {len(frame)} bytes is over the limit of {HEADER_FRAME_LIMIT}")
    return frame


def _parse_trailer_body(body: bytes, offset: int, header: SnapshotHeader) -> SnapshotTrailer:
    """Decode a trailer and check that it agrees with itself."""

    def fail(what: str, chunk=None) -> ContainerError:
        return ContainerError(f"trailer at offset {offset:#x}: {what}", offset=offset, chunk=chunk)

    if len(body) < _TRAILER.size:
        raise fail(f"{len(body)} bytes, less than the {_TRAILER.size} of its fixed part")
    (fixed_size, chunk_entry, pass_entry, reserved, n_chunks, n_passes, records, raw_size, valid, invalid,
     stated_offset) = _TRAILER.unpack_from(body)
    if fixed_size < _TRAILER.size or chunk_entry < _CHUNK_ENTRY.size or pass_entry < _PASS.size or reserved:
        raise fail(f"bad layout (fixed {fixed_size}, chunk entries {chunk_entry}, pass entries {pass_entry})")
    if fixed_size + n_passes * pass_entry + n_chunks * chunk_entry != len(body):
        raise fail(f"{n_passes} passes and {n_chunks} chunks do not fill its {len(body)} bytes")
    if stated_offset != offset:
        raise fail(f"says it is at offset {stated_offset:#x}")
    passes = []
    pos = fixed_size
    for _ in range(n_passes):
        passes.append(PassInfo(*_PASS.unpack_from(body, pos)))
        pos += pass_entry
    chunks = []
    first_record = 0
    for _ in range(n_chunks):
        frame_offset, *fields_ = _CHUNK_ENTRY.unpack_from(body, pos)
        (number, pass_number, raw_offset, csize, rsize, crc, recs, first_index, end_index, cvalid,
         cinvalid) = fields_
        chunks.append(
            ChunkInfo(number, pass_number, frame_offset, csize, raw_offset, rsize, recs, first_index,
                      end_index, cvalid, cinvalid, crc, first_record)
        )
        first_record += recs
        pos += chunk_entry
    # the index must add up: numbering, offsets, passes, totals
    raw = 0
    previous_end = 0
    for n, c in enumerate(chunks):
        if c.number != n or c.raw_offset != raw or c.offset < previous_end:
            raise fail(f"index entry {n} is out of order", chunk=n)
        _check_chunk_fields(c, header, lambda what, n=n: fail(f"index entry {n}: {what}", chunk=n))
        raw += c.raw_size
        previous_end = c.offset + c.compressed_size
    if previous_end > offset:
        raise fail("the last chunk runs into the trailer")
    first_chunk = 0
    raw = 0
    last = -1
    for p in passes:
        if p.pass_number <= last or p.first_chunk != first_chunk or p.raw_offset != raw:
            raise fail(f"pass entry for pass {p.pass_number} is out of order")
        mine = chunks[first_chunk : first_chunk + p.chunks]
        if len(mine) != p.chunks or any(c.pass_number != p.pass_number for c in mine):
            raise fail(f"pass {p.pass_number} does not match the chunks it lists")
        if _sums(mine) != (p.raw_size, p.records, p.valid, p.invalid):
            raise fail(f"pass {p.pass_number} totals do not add up")
        first_chunk += p.chunks
        raw += p.raw_size
        last = p.pass_number
    if first_chunk != n_chunks:
        raise fail(f"passes list {first_chunk} chunks, the index {n_chunks}")
    if _sums(chunks) != (raw_size, records, valid, invalid):
        raise fail("file totals do not add up")
    return SnapshotTrailer(tuple(chunks), tuple(passes), records, raw_size, valid, invalid, offset, 0)


def _sums(chunks) -> tuple:
    return (
        sum(c.raw_size for c in chunks),
        sum(c.records for c in chunks),
        sum(c.valid for c in chunks),
        sum(c.invalid for c in chunks),
    )


def _check_chunk_fields(c: ChunkInfo, header: SnapshotHeader, fail) -> None:
    """Limits on a chunk's description, checked before its frame is read."""
    if not 0 < c.raw_size <= header.chunk_limit:
        raise fail(f"declares {c.raw_size} raw bytes, outside 1..{header.chunk_limit} (the header's chunk limit)")
    if not 0 < c.compressed_size <= compress_bound(header.chunk_limit):
        raise fail(f"declares a frame of {c.compressed_size} bytes, outside 1..{compress_bound(header.chunk_limit)}")
    if not 0 < c.records <= c.raw_size // HEADER_SIZE:
        raise fail(f"declares {c.records} records in {c.raw_size} bytes")
    if HEADER_SIZE * c.records + 16 * c.valid != c.raw_size:
        raise fail(f"{c.records} records with {c.valid} valid entries cannot take {c.raw_size} bytes")
    if not c.first_index < header.entries or not c.first_index <= c.end_index <= header.entries:
        raise fail(f"index range {c.first_index}..{c.end_index} does not fit the table of {header.entries} entries")
    if c.invalid > c.records * MAX_RUN:
        raise fail(f"{c.invalid} invalid entries in {c.records} records")
    if _mostly_empty(c.records, c.valid + c.invalid):
        raise fail(_EMPTY_RECORDS.format(records=c.records, entries=c.valid + c.invalid))


#: a record of no entries (n_valid 0, n_invalid 0) is never written by the
#: kernel's read loop (its write side takes one); a chunk of mostly such
#: records costs the decoder 40 bytes of arrays for every 8 bytes of
#: records, from a few KB of file (millions of identical headers compress to
#: nothing): a chunk may hold at most twice as many records as entries, plus
#: one, checked from the descriptor before the frame is read
_EMPTY_RECORDS = ("{records} records hold only {entries} entries: mostly empty records (n_valid 0 and "
                  "n_invalid 0), which the kernel never writes")


def _mostly_empty(records: int, entries: int) -> bool:
    return records > 2 * entries + 1


def _refuse_empty_records(number: int, records: int, entries: int) -> None:
    """The writer's side of the rule: a chunk a reader would refuse is not written."""
    if _mostly_empty(records, entries):
        raise StreamError(f"chunk {number}: " + _EMPTY_RECORDS.format(records=records, entries=entries))


# -- the parser --------------------------------------------------------------------


class _State:
    HEADER = "HEADER"
    FRAME = "FRAME"
    DATA = "DATA"
    SEEK_TABLE = "SEEK_TABLE"
    DONE = "DONE"
    ERROR = "ERROR"


class ContainerParser:
    """The reader's core: bytes in, events out, no I/O.

    >>> p = ContainerParser()
    >>> p.receive_data(first_bytes)
    >>> p.next_event()      # Header(...), Chunk(...), ..., or NEED_DATA
    >>> p.receive_data(b"") # the end of the input
    >>> p.next_event()      # ..., Trailer(...), END_OF_STREAM

    Every size the input states is checked against a limit before bytes are
    buffered for it or decompressed; a frame is handed out only whole and
    checked.  With ``check_records`` every chunk's records are decoded and
    compared with its descriptor (slower; the content checksums already
    guard the bytes).  After an error the parser raises it again."""

    def __init__(self, *, decompress: bool = True, check_records: bool = False):
        self.decompress = decompress
        self.check_records = check_records
        self.header: SnapshotHeader | None = None
        self.trailer: SnapshotTrailer | None = None
        self._parts: collections.deque = collections.deque()  # received bytes objects
        self._pos = 0  # next unread byte in _parts[0]
        self._size = 0  # unread bytes in all parts
        self._offset = 0  # file offset of the next unread byte
        self._wanted = 8
        self._eof = False
        self._state = _State.HEADER
        self._error: ContainerError | None = None
        self._frames: list[tuple[int, int]] = []  # (compressed, decompressed) for the seek table
        self._chunks: list[ChunkInfo] = []
        self._passes: list[PassInfo] = []
        self._open_pass: int | None = None
        self._pass_first_chunk = 0
        self._last_pass = -1
        self._descriptor: ChunkInfo | None = None
        self._raw = 0
        self._records = 0
        self._pending_trailer: SnapshotTrailer | None = None

    # -- feeding ---------------------------------------------------------
    @property
    def offset(self) -> int:
        """File offset of the next byte the parser will look at."""
        return self._offset

    @property
    def chunks(self) -> tuple:
        """The chunks read so far."""
        return tuple(self._chunks)

    @property
    def wanted(self) -> int:
        """How many more bytes the parser needs before it can go on (at least
        1): a reader that reads exactly this much hands whole frames over
        without copying them."""
        return max(1, self._wanted - self._size)

    def receive_data(self, data) -> None:
        """Feed bytes; ``b""`` means the input ended.  ``bytes`` are kept as
        they are; other buffers are copied."""
        if self._eof:
            raise UsageError("receive_data after the end of the input")
        if data:
            if type(data) is not bytes:
                data = bytes(data)
            self._parts.append(data)
            self._size += len(data)
        else:
            self._eof = True

    def next_event(self):
        """The next :data:`Event`, NEED_DATA, or END_OF_STREAM."""
        if self._error is not None:
            raise self._error
        try:
            event = self._step()
        except ContainerError as exc:
            self._state = _State.ERROR
            self._error = exc
            raise
        return event

    # -- buffer helpers -------------------------------------------------------
    def _available(self) -> int:
        return self._size

    def _peek(self, n: int):
        """The next ``n`` bytes as a read-only view, or None (wanting ``n``).
        Views are of immutable bytes objects: they stay valid."""
        if self._size < n:
            self._wanted = n
            return None
        first = self._parts[0]
        if len(first) - self._pos < n:  # join the parts it spans (a copy)
            pieces = [memoryview(first)[self._pos :]]
            got = len(first) - self._pos
            self._parts.popleft()
            while got < n:
                part = self._parts.popleft()
                pieces.append(part)
                got += len(part)
            first = b"".join(pieces)
            self._parts.appendleft(first)
            self._pos = 0
        return memoryview(first)[self._pos : self._pos + n]

    def _consume(self, n: int) -> None:
        self._pos += n
        self._size -= n
        self._offset += n
        while self._parts and self._pos >= len(self._parts[0]):
            self._pos -= len(self._parts.popleft())
        self._wanted = 8

    def _truncated(self, what: str, need: int):
        have = self._available()
        chunk = self._descriptor.number if self._descriptor else None
        raise TruncatedContainer(
            f"truncated at offset {self._offset + have:#x}: {what} at offset {self._offset:#x} "
            f"needs {need} bytes, the file has {have}",
            offset=self._offset,
            chunk=chunk,
        )

    def _need(self, n: int, what: str):
        """``n`` bytes at the current offset, None (NEED_DATA), or Truncated at EOF."""
        view = self._peek(n)
        if view is None and self._eof:
            self._truncated(what, n)
        return view

    # -- the state machine -------------------------------------------------------
    def _step(self):
        while True:
            state = self._state
            if state == _State.HEADER:
                event = self._read_header()
            elif state == _State.FRAME:
                event = self._read_frame()
            elif state == _State.DATA:
                event = self._read_data()
            elif state == _State.SEEK_TABLE:
                event = self._read_seek_table()
            else:  # DONE
                if self._available():
                    raise ContainerError(
                        f"unexpected data after the end of the snapshot at offset {self._offset:#x}",
                        offset=self._offset,
                    )
                return END_OF_STREAM if self._eof else NEED_DATA
            if event is None:
                return NEED_DATA
            if event is not _CONTINUE:
                return event

    def _our_frame(self, limit: int, what: str):
        """The next of our skippable frames, checked: (tag, body, offset, size)
        or None for NEED_DATA.  The size is checked against ``limit`` (a
        callable of the tag) before anything is buffered for it."""
        head = self._need(12, what)
        if head is None:
            return None
        magic, size = _ENVELOPE.unpack_from(head)
        tag = bytes(head[8:12])
        at = self._offset
        if size < 8:
            raise ContainerError(
                f"{what} at offset {at:#x} declares {size} bytes, less than a tag and a checksum", offset=at
            )
        cap = limit(tag)
        if size > cap:
            raise ContainerError(
                f"{what} at offset {at:#x} declares {size} bytes, more than the {cap} allowed for {_tag_name(tag)}",
                offset=at,
            )
        frame = self._need(8 + size, f"{_tag_name(tag)} frame")
        if frame is None:
            return None
        stored = _CRC.unpack_from(frame, 8 + size - 4)[0]
        computed = zlib.crc32(frame[: 8 + size - 4])
        if stored != computed:
            chunk = len(self._chunks) if tag == TAG_CHUNK and self.header is not None else None
            name = f"chunk {chunk} descriptor" if chunk is not None else f"{_tag_name(tag)} frame"
            raise ContainerError(
                f"{name} at offset {at:#x}: checksum mismatch (CRC-32 {computed:08x}, stored {stored:08x})",
                offset=at,
                chunk=chunk,
            )
        body = bytes(frame[12 : 8 + size - 4])
        self._consume(8 + size)
        self._frames.append((8 + size, 0))
        return tag, body, at, 8 + size

    def _read_header(self):
        head = self._need(8, "the header frame")
        if head is None:
            return None
        magic = int.from_bytes(head[:4], "little")
        if magic != SKIPPABLE_MAGIC:
            if magic == ZSTD_MAGIC:
                raise ContainerError(
                    "not an htabtool snapshot: offset 0x0 holds a plain zstd frame, not a snapshot header", offset=0
                )
            raise ContainerError(f"not an htabtool snapshot: bad magic {magic:#010x} at offset 0x0", offset=0)
        got = self._our_frame(lambda tag: HEADER_FRAME_LIMIT, "the header frame")
        if got is None:
            return None
        tag, body, at, size = got
        if tag != TAG_HEADER:
            raise ContainerError(
                f"not an htabtool snapshot: first frame is {_tag_name(tag)}, not a header", offset=at
            )
        self.header = _parse_header_body(body, at)
        self._state = _State.FRAME
        return Header(self.header, size)

    def _frame_limit(self, tag: bytes) -> int:
        if tag == TAG_TRAILER:
            return TRAILER_BASE_LIMIT + TRAILER_ENTRY_LIMIT * (len(self._chunks) + len(self._passes) + 1)
        return SMALL_FRAME_LIMIT

    def _read_frame(self):
        head = self._peek(4)
        if head is None:
            self._wanted = 12
            if self._eof:
                if self._available() == 0:
                    where = f"after chunk {len(self._chunks) - 1}" if self._chunks else "after the header"
                    raise TruncatedContainer(
                        f"truncated at offset {self._offset:#x}: the snapshot ends {where} without a trailer",
                        offset=self._offset,
                    )
                self._truncated("a frame", 4)
            return None
        magic = int.from_bytes(head[:4], "little")
        at = self._offset
        if magic != SKIPPABLE_MAGIC:
            if magic == ZSTD_MAGIC:
                raise ContainerError(
                    f"chunk {len(self._chunks)} at offset {at:#x}: zstd frame without a chunk descriptor",
                    offset=at,
                    chunk=len(self._chunks),
                )
            if magic == SEEK_TABLE_MAGIC:
                raise TruncatedContainer(
                    f"seek table at offset {at:#x} without a trailer before it", offset=at
                )
            if magic in SKIPPABLE_RANGE:
                raise ContainerError(f"unexpected skippable frame {magic:#010x} at offset {at:#x}", offset=at)
            raise ContainerError(f"no frame at offset {at:#x}: bad magic {magic:#010x}", offset=at)
        got = self._our_frame(self._frame_limit, "a frame")
        if got is None:
            return None
        tag, body, at, size = got
        if tag == TAG_CHUNK:
            return self._on_descriptor(body, at, size)
        if tag == TAG_PASS:
            return self._on_pass(body, at)
        if tag == TAG_TRAILER:
            return self._on_trailer(body, at, size)
        if tag == TAG_HEADER:
            raise ContainerError(f"a second header at offset {at:#x}", offset=at)
        if tag[:1].isupper() or not tag[:1].isalpha():
            raise UnsupportedFeature(
                f"frame {_tag_name(tag)} at offset {at:#x} is required but unknown to this reader", offset=at
            )
        return _CONTINUE  # an optional frame of a later version: skipped

    def _on_descriptor(self, body: bytes, at: int, size: int):
        number = len(self._chunks)

        def fail(what: str) -> ContainerError:
            return ContainerError(f"chunk {number} descriptor at offset {at:#x}: {what}", offset=at, chunk=number)

        if len(body) < _CHUNK.size:
            raise fail(f"{len(body)} bytes, less than {_CHUNK.size}")
        (n, pass_number, raw_offset, csize, rsize, crc, recs, first_index, end_index, valid,
         invalid) = _CHUNK.unpack_from(body)
        info = ChunkInfo(n, pass_number, at + size, csize, raw_offset, rsize, recs, first_index, end_index,
                         valid, invalid, crc, self._records)
        if n != number:
            raise fail(f"numbered {n}")
        if raw_offset != self._raw:
            raise fail(f"says stream offset {raw_offset:#x}, the chunks before it end at {self._raw:#x}")
        if self._open_pass is None:
            if pass_number <= self._last_pass:
                raise fail(f"belongs to pass {pass_number}, which is not after pass {self._last_pass}")
            self._open_pass = pass_number
            self._pass_first_chunk = number
        elif pass_number != self._open_pass:
            raise fail(f"belongs to pass {pass_number} but pass {self._open_pass} has not ended")
        _check_chunk_fields(info, self.header, fail)
        self._descriptor = info
        self._state = _State.DATA
        return _CONTINUE

    def _read_data(self):
        info = self._descriptor
        frame = self._need(info.compressed_size, f"chunk {info.number}")
        if frame is None:
            return None
        check = self.header.entries if self.check_records else None
        event = CompressedChunk(info, frame, self.header.byte_order, check)
        if self.decompress:
            event = event.decompress()
        self._consume(info.compressed_size)
        self._frames.append((info.compressed_size, info.raw_size))
        self._chunks.append(info)
        self._raw += info.raw_size
        self._records += info.records
        self._descriptor = None
        self._state = _State.FRAME
        return event

    def _on_pass(self, body: bytes, at: int):
        def fail(what: str) -> ContainerError:
            return ContainerError(f"pass end at offset {at:#x}: {what}", offset=at)

        if len(body) < _PASS.size:
            raise fail(f"{len(body)} bytes, less than {_PASS.size}")
        info = PassInfo(*_PASS.unpack_from(body))
        if self._open_pass is None:  # a pass without chunks
            if info.pass_number <= self._last_pass:
                raise fail(f"pass {info.pass_number} is not after pass {self._last_pass}")
            first = len(self._chunks)
        else:
            if info.pass_number != self._open_pass:
                raise fail(f"ends pass {info.pass_number}, but pass {self._open_pass} is open")
            first = self._pass_first_chunk
        mine = self._chunks[first:]
        expected = PassInfo(info.pass_number, first, len(mine), mine[0].raw_offset if mine else self._raw,
                            *_sums(mine))
        if info != expected:
            raise fail(f"says {info._fields()}, the chunks read say {expected._fields()}")
        self._passes.append(info)
        self._last_pass = info.pass_number
        self._open_pass = None
        return PassEnd(info)

    def _on_trailer(self, body: bytes, at: int, size: int):
        if self._open_pass is not None:
            raise ContainerError(
                f"trailer at offset {at:#x} while pass {self._open_pass} has not ended", offset=at
            )
        trailer = _parse_trailer_body(body, at, self.header)
        if trailer.chunks != tuple(self._chunks):
            n = next(
                (i for i, (a, b) in enumerate(zip(trailer.chunks, self._chunks)) if a != b),
                min(len(trailer.chunks), len(self._chunks)),
            )
            raise ContainerError(
                f"trailer at offset {at:#x}: its index differs from the chunks read, from chunk {n} on",
                offset=at,
                chunk=n,
            )
        if trailer.passes != tuple(self._passes):
            raise ContainerError(f"trailer at offset {at:#x}: its passes differ from the pass ends read", offset=at)
        self._pending_trailer = trailer
        self._state = _State.SEEK_TABLE
        return _CONTINUE

    def _read_seek_table(self):
        n = len(self._frames)
        expected_size = n * _SEEK_ENTRY.size + _FOOTER.size
        head = self._need(8, "the seek table")
        if head is None:
            return None
        magic, size = _ENVELOPE.unpack_from(head)
        at = self._offset
        if magic != SEEK_TABLE_MAGIC:
            raise ContainerError(f"seek table at offset {at:#x}: bad magic {magic:#010x}", offset=at)
        if size != expected_size:
            raise ContainerError(
                f"seek table at offset {at:#x}: declares {size} bytes, {n} frames need {expected_size}", offset=at
            )
        table = self._need(8 + size, "the seek table")
        if table is None:
            return None
        expected = _seek_table(self._frames)
        table = bytes(table)
        if table != expected:
            k = next(i for i in range(len(expected)) if table[i] != expected[i])
            raise ContainerError(
                f"seek table at offset {at:#x}: differs from the frames read at byte {k}", offset=at + k
            )
        self._consume(8 + size)
        self._state = _State.DONE
        self.trailer = replace(self._pending_trailer, file_size=self._offset)
        return Trailer(self.trailer)


_CONTINUE = object()  # internal: a frame was consumed without an event


def _tag_name(tag: bytes) -> str:
    return repr(tag.decode("latin-1"))


def _seek_table(frames) -> bytes:
    """The seek table frame (zstd seekable format, no checksums) for ``frames``."""
    body = b"".join(_SEEK_ENTRY.pack(c, d) for c, d in frames)
    body += _FOOTER.pack(len(frames), 0, SEEKABLE_MAGIC)
    return _ENVELOPE.pack(SEEK_TABLE_MAGIC, len(body)) + body


# -- writing ------------------------------------------------------------------------


class SnapshotWriter:
    """Write a snapshot to a binary file object, streaming; never seeks.

    >>> with SnapshotWriter(f, SnapshotHeader(byte_order="little", order=24)) as w:
    ...     for piece in reads_of_the_first_pass:
    ...         w.write_records(piece, 1)
    ...     w.write_records(next_read, 2)     # pass 2 (ends pass 1)
    >>> w.trailer                              # the SnapshotTrailer written

    ``write_records(data, pass_number[, stats])``: ``data`` is whole records
    as read(2) of the htab fd returned them (bytes-like; kept as it is when
    ``bytes``, else copied); it is gathered into chunks of up to
    ``chunk_size`` raw bytes, cut only at record boundaries (a record longer
    than ``chunk_size`` gets a chunk of its own).  Pass numbers only grow; a
    new number ends the previous pass; an empty ``data`` opens (and records)
    a pass with no changes.  Each full chunk is compressed, checked (whole
    records inside the table) and described on one of ``threads`` workers
    while the caller goes on; a chunk made only of pieces whose ``stats``
    were stated is described from them (their sizes and bounds checked, the
    records not scanned again); at most ``threads``
    + 1 chunks wait (``threads=0``: all on the calling thread).  A fault in
    the records is raised by a later call (``write_records``, ``end_pass``
    or ``close``), with its stream offset and record number.

    ``close()`` ends the open pass and writes the trailer and seek table; it
    does not close ``fileobj``.  Used as a context manager, an exception in
    the body leaves the snapshot without a trailer (readers report it as
    truncated) and stops the workers.
    """

    def __init__(
        self,
        fileobj: BinaryIO,
        header: SnapshotHeader,
        *,
        level: int = DEFAULT_LEVEL,
        threads: int = DEFAULT_THREADS,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ):
        if not isinstance(level, int) or not -(1 << 17) <= level <= zstandard.MAX_COMPRESSION_LEVEL:
            raise UsageError(f"compression level {level!r} is outside -131072..{zstandard.MAX_COMPRESSION_LEVEL}")
        if not isinstance(threads, int) or not 0 <= threads <= 64:
            raise UsageError(f"threads {threads!r} is outside 0..64")
        if not isinstance(chunk_size, int) or not 1 <= chunk_size <= MAX_CHUNK_LIMIT:
            raise UsageError(f"chunk size {chunk_size!r} is outside 1..{MAX_CHUNK_LIMIT}")
        self.level = level
        self.threads = threads
        self.chunk_size = chunk_size
        self.header = replace(header, chunk_limit=max(chunk_size, MAX_RECORD_SIZE))
        self.trailer: SnapshotTrailer | None = None
        self._out = fileobj
        self._offset = 0
        self._frames: list[tuple[int, int]] = []
        self._chunks: list[ChunkInfo] = []
        self._passes: list[PassInfo] = []
        self._pending: list[bytes] = []  # the pieces of the next chunk
        self._pending_size = 0
        self._pending_stats: tuple | None = None  # of the pending chunk, when every piece's is known
        self._open_pass: int | None = None
        self._pass_first_chunk = 0
        self._last_pass = -1
        self._raw = 0  # raw bytes handed to chunks so far
        self._records = 0
        self._inflight: collections.deque = collections.deque()
        self._tls = threading.local()
        self._failed = False
        self._closed = False
        self._optional: list[bytes] = []  # optional frames written with the trailer
        header_frame = _header_frame(self.header)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="htab-zstd") if threads else None
        try:
            self._emit(header_frame, 0)
        except BaseException:
            self._fail()
            raise

    # -- the public calls ----------------------------------------------------------
    def write_records(self, data, pass_number: int, stats: tuple | None = None) -> int:
        """Add whole records of pass ``pass_number``; returns len(data).

        ``stats``: (records, first_index, end_index, valid, invalid) of
        ``data``, from a caller that made the records and so knows them (the
        engine's reads, a source that decoded them already).  A chunk made
        only of such pieces is described from them, not scanned again."""
        self._check_open()
        if not isinstance(pass_number, int) or not 0 <= pass_number <= 0xFFFFFFFF:
            raise UsageError(f"pass number {pass_number!r} is outside 0..{0xFFFFFFFF}")
        if pass_number != self._open_pass:
            if self._open_pass is not None and pass_number < self._open_pass or pass_number <= self._last_pass:
                current = self._open_pass if self._open_pass is not None else self._last_pass
                raise UsageError(f"pass {pass_number} after pass {current}: pass numbers only grow")
            if self._open_pass is not None:
                self.end_pass()
            self._open_pass = pass_number
            self._pass_first_chunk = len(self._chunks) + len(self._inflight)
        view = memoryview(data).cast("B")
        size = len(view)
        if not size:
            return 0
        if stats is not None:
            self._check_stated(stats, size)
        try:
            self._add(data, view, stats)
        except BaseException:
            self._fail()
            raise
        return size

    def _check_stated(self, stats, size: int) -> None:
        """Stated statistics must fit the data: its size, the table."""
        try:
            records, first, end, valid, invalid = (int(x) for x in stats)
        except (TypeError, ValueError):
            raise UsageError(f"stated statistics {stats!r} are not (records, first, end, valid, invalid)") from None
        if not (records >= 1 and valid >= 0 and invalid >= 0 and HEADER_SIZE * records + 16 * valid == size
                and 0 <= first <= end <= self.header.entries and first < self.header.entries
                and valid + invalid <= end - first):
            raise UsageError(f"stated statistics {tuple(stats)} do not fit {size} bytes of records "
                             f"in a table of {self.header.entries} entries")

    def add_optional(self, tag: bytes, body: bytes) -> None:
        """An optional frame (a four-letter tag starting with a lower-case
        letter: readers that do not know it skip it) to write after the last
        pass end, right before the trailer, in the order added."""
        self._check_open()
        if not (isinstance(tag, bytes) and len(tag) == 4 and tag[:1].isalpha() and tag[:1].islower()):
            raise UsageError(f"an optional frame's tag is four bytes starting with a lower-case letter, not {tag!r}")
        if 8 + len(body) > SMALL_FRAME_LIMIT:
            raise UsageError(f"an optional frame's body is at most {SMALL_FRAME_LIMIT - 8} bytes, not {len(body)}")
        self._optional.append(_frame(tag, bytes(body)))

    def end_pass(self) -> PassInfo | None:
        """End the open pass (if any): flush its last chunk, write its pass end."""
        self._check_open()
        if self._open_pass is None:
            return None
        try:
            self._flush()
            self._drain(0)
            mine = self._chunks[self._pass_first_chunk :]
            info = PassInfo(
                self._open_pass,
                self._pass_first_chunk,
                len(mine),
                mine[0].raw_offset if mine else self._raw,
                *_sums(mine),
            )
            self._emit(_frame(TAG_PASS, _PASS.pack(*info._fields())), 0)
        except BaseException:
            self._fail()
            raise
        self._passes.append(info)
        self._last_pass = self._open_pass
        self._open_pass = None
        return info

    def close(self) -> SnapshotTrailer:
        """End the open pass, write the trailer and the seek table, flush."""
        if self._closed:
            if self.trailer is None:
                raise UsageError("the writer failed; the snapshot has no trailer")
            return self.trailer
        self.end_pass()
        raw, records, valid, invalid = _sums(self._chunks)
        try:
            for frame in self._optional:
                self._emit(frame, 0)
            at = self._offset
            body = _TRAILER.pack(
                _TRAILER.size,
                _CHUNK_ENTRY.size,
                _PASS.size,
                0,
                len(self._chunks),
                len(self._passes),
                records,
                raw,
                valid,
                invalid,
                at,
            )
            body += b"".join(_PASS.pack(*p._fields()) for p in self._passes)
            body += b"".join(_CHUNK_ENTRY.pack(c.offset, *c._fields()) for c in self._chunks)
            self._emit(_frame(TAG_TRAILER, body), 0)
            self._write(_seek_table(self._frames))
            flush = getattr(self._out, "flush", None)
            if flush is not None:
                flush()
        except BaseException:
            self._fail()
            raise
        self.trailer = SnapshotTrailer(
            tuple(self._chunks), tuple(self._passes), records, raw, valid, invalid, at, self._offset
        )
        self._closed = True
        self._shutdown()
        return self.trailer

    def abort(self) -> None:
        """Stop without a trailer (the snapshot reads as truncated)."""
        self._fail()

    def __enter__(self) -> "SnapshotWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._fail()

    # -- inside ------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._failed:
            raise UsageError("the writer failed earlier; the snapshot has no trailer")
        if self._closed:
            raise UsageError("the writer is closed")

    def _fail(self) -> None:
        self._failed = True
        self._closed = True
        for _, fut in self._inflight:
            fut.cancel()
        self._inflight.clear()
        self._shutdown()

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _add(self, data, view: memoryview, stats: tuple | None) -> None:
        limit = self.chunk_size
        if self._pending_size + len(view) <= limit:
            self._pending_stats = _merged(self._pending_stats, stats) if self._pending else stats
            self._hold(data, view)
            return
        if len(view) <= limit:  # no record needs cutting: start a new chunk with it
            self._flush()
            self._hold(data, view)
            self._pending_stats = stats
            return
        self._pending_stats = None  # cut here: the workers describe the pieces
        # a piece longer than a chunk: cut it at record boundaries
        at = self._raw + self._pending_size
        batch, used = decode_batch(view, self.header.byte_order, base_offset=at, n_entries=self.header.entries)
        if used != len(view):
            raise StreamError(
                f"record data ends inside a record at stream offset {at + used:#x} "
                f"({len(view) - used} bytes left over): give whole records",
                offset=at + used,
            )
        bounds = np.append(batch.offset - batch.offset[0], used)
        pos = 0
        while pos < used:
            room = limit - self._pending_size
            k = int(np.searchsorted(bounds, pos + room, side="right")) - 1
            cut = int(bounds[k])
            if cut <= pos:
                if self._pending:
                    self._flush()
                    continue
                cut = int(bounds[np.searchsorted(bounds, pos, side="right")])  # one oversized record
            self._hold(None, view[pos:cut])
            pos = cut
            if self._pending_size >= limit or pos < used:
                self._flush()

    def _hold(self, data, view: memoryview) -> None:
        """Keep a piece for the pending chunk: bytes as they are (they cannot
        change), anything else copied."""
        self._pending.append(data if type(data) is bytes else bytes(view))
        self._pending_size += len(view)

    def _flush(self) -> None:
        """Hand the pending chunk to a worker (or encode it here)."""
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        stats = self._pending_stats
        self._pending = []
        self._pending_size = 0
        self._pending_stats = None
        job = (len(self._chunks) + len(self._inflight), self._open_pass, self._raw, data)
        self._raw += len(data)
        if self._pool is None:
            self._write_chunk(job, self._encode(data, job[2], stats))
            return
        self._drain(self.threads)
        self._inflight.append((job, self._pool.submit(self._encode, data, job[2], stats)))

    def _encode(self, data, raw_offset: int, stats: tuple | None = None) -> tuple:
        """A worker's part: check and describe the records (decode_batch)
        unless their statistics are known, compress.

        The compression releases the GIL, so with two workers one decodes
        while the other compresses.  Record numbers are not known here (they
        depend on the chunks before); a fault is reported again, numbered, by
        :meth:`_write_chunk`."""
        cctx = getattr(self._tls, "cctx", None)
        if cctx is None:
            cctx = zstandard.ZstdCompressor(level=self.level, write_checksum=True, write_content_size=True)
            self._tls.cctx = cctx
        frame = cctx.compress(data)
        if stats is None:
            try:
                stats = _chunk_stats(data, self.header.byte_order, raw_offset, 0, self.header.entries)
            except StreamError:
                stats = None
        return frame, zlib.crc32(frame), stats

    def _drain(self, keep: int) -> None:
        """Write finished chunks in order until at most ``keep`` are in flight."""
        while len(self._inflight) > keep:
            job, fut = self._inflight[0]
            encoded = fut.result()
            self._inflight.popleft()
            self._write_chunk(job, encoded)

    def _write_chunk(self, job, encoded) -> None:
        number, pass_number, raw_offset, data = job
        frame, crc, stats = encoded
        if stats is None:  # decode again, here, for a message with record numbers
            _chunk_stats(data, self.header.byte_order, raw_offset, self._records, self.header.entries)
            raise StreamError(f"chunk {number}: records do not decode")  # not reached
        records, first_index, end_index, valid, invalid = stats
        _refuse_empty_records(number, records, valid + invalid)
        descriptor_size = 8 + 4 + _CHUNK.size + 4
        info = ChunkInfo(number, pass_number, self._offset + descriptor_size, len(frame), raw_offset, len(data),
                         records, first_index, end_index, valid, invalid, crc, self._records)
        self._emit(_frame(TAG_CHUNK, _CHUNK.pack(*info._fields())), 0)
        self._emit(frame, len(data))
        self._chunks.append(info)
        self._records += records

    def _emit(self, frame: bytes, decompressed: int) -> None:
        if len(self._frames) >= SEEKABLE_MAX_FRAMES - 2:
            raise UsageError(f"a snapshot holds at most {SEEKABLE_MAX_FRAMES - 2} frames: use larger chunks")
        self._write(frame)
        self._frames.append((len(frame), decompressed))

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self._out.write(view)
            if n is None:  # a non-blocking raw file that would block
                raise OSError("the output would block")
            if n >= len(view):
                self._offset += len(view)
                break
            self._offset += n
            view = view[n:]


# -- reading ---------------------------------------------------------------------------


class SnapshotReader:
    """Read a snapshot from a binary file object (a pipe too), in bounded memory.

    >>> r = SnapshotReader(f)
    >>> r.header                      # SnapshotHeader (reads only the header)
    >>> for chunk in r.chunks():      # Chunk: .info, .data (records), .batch()
    ...     ...
    >>> r.trailer                     # after the last chunk: checked against all read

    ``events()`` yields every event (Header, Chunk, PassEnd, Trailer);
    ``chunks()`` only the chunks; both check the whole file as they go and
    raise at the first fault, in file order, so the last chunk comes only
    from a file that ends with a sound trailer.  On a seekable file
    ``read_trailer()`` reads the header and the trailer alone (for ``stat``)
    and ``read_chunk(n)`` one chunk through the index.

    Reads ask for what the parser wants (a whole frame), in pieces of at
    most ``read_size``.  With ``threads`` > 0 up to ``threads`` + 1 chunks
    are decompressed ahead on worker threads (zstd releases the GIL).
    Memory: about (threads + 2) chunks, frames and contents (a chunk is at
    most the header's chunk limit, itself at most 64 MiB).  ``check_records``
    also checks every chunk's records against its descriptor.
    """

    def __init__(
        self,
        fileobj: BinaryIO,
        *,
        read_size: int = DEFAULT_READ_SIZE,
        threads: int = DEFAULT_THREADS,
        check_records: bool = False,
    ):
        if not isinstance(read_size, int) or read_size < 1:
            raise UsageError(f"read size {read_size!r} must be a positive integer")
        if not isinstance(threads, int) or not 0 <= threads <= 64:
            raise UsageError(f"threads {threads!r} is outside 0..64")
        self.read_size = read_size
        self.threads = threads
        self._f = fileobj
        self._parser = ContainerParser(decompress=threads == 0, check_records=check_records)
        self._queued: collections.deque = collections.deque()
        self._started = False
        self._trailer: SnapshotTrailer | None = None
        self._header: SnapshotHeader | None = None
        try:
            self._base = fileobj.tell() if fileobj.seekable() else None
        except (AttributeError, OSError):
            self._base = None

    @property
    def seekable(self) -> bool:
        return self._base is not None

    @property
    def header(self) -> SnapshotHeader:
        if self._header is None:
            if self._parser.header is None:
                event = self._next()
                if event is not END_OF_STREAM:
                    self._queued.append(event)
            self._header = self._parser.header
        return self._header

    @property
    def trailer(self) -> SnapshotTrailer | None:
        """The trailer, once read (by events()/chunks() or read_trailer())."""
        return self._trailer or self._parser.trailer

    def events(self) -> Iterator[Event]:
        if self._started:
            raise UsageError("a SnapshotReader streams once: make a new one to read again")
        self._started = True
        if self.threads == 0:
            while True:
                event = self._queued.popleft() if self._queued else self._next()
                if event is END_OF_STREAM:
                    self._trailer = self._parser.trailer
                    return
                yield event
        # decompress ahead: events wait in order behind the chunks before them
        ahead: collections.deque = collections.deque()  # events and futures, in file order
        in_flight = 0
        done = False
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="htab-unzstd")
        work = CompressedChunk.decompress

        try:
            while True:
                while not done and in_flight <= self.threads:
                    try:
                        event = self._queued.popleft() if self._queued else self._next()
                    except ContainerError as exc:  # raised when its turn comes, in file order
                        ahead.append(exc)
                        done = True
                        break
                    if event is END_OF_STREAM:
                        done = True
                    elif isinstance(event, CompressedChunk):
                        ahead.append(pool.submit(work, event))
                        in_flight += 1
                    else:
                        ahead.append(event)
                if not ahead:
                    self._trailer = self._parser.trailer
                    return
                item = ahead.popleft()
                if isinstance(item, ContainerError):
                    raise item
                if not isinstance(item, Future):
                    yield item
                    continue
                in_flight -= 1
                yield item.result()
        finally:
            for item in ahead:
                if isinstance(item, Future):
                    item.cancel()
            # never join the workers here: an abandoned generator is closed
            # by the garbage collector on whatever thread it runs, even in a
            # thread's start-up, which holds the lock a join needs (deadlock)
            pool.shutdown(wait=False, cancel_futures=True)

    def chunks(self) -> Iterator[Chunk]:
        for event in self.events():
            if isinstance(event, Chunk):
                yield event

    def copy_raw(self, out: BinaryIO) -> tuple[int, int]:
        """Write the record stream (what ``zstd -dc`` prints) to ``out``;
        returns (bytes read, bytes written), as python-zstandard's copy_stream."""
        written = 0
        for chunk in self.chunks():
            out.write(chunk.data)
            written += len(chunk.data)
        return self._parser.offset, written

    def verify(self) -> SnapshotTrailer:
        """Read and check the whole snapshot; returns its trailer."""
        for _ in self.events():
            pass
        return self._trailer

    def _next(self):
        parser = self._parser
        while True:
            event = parser.next_event()
            if event is not NEED_DATA:
                return event
            data = self._f.read(min(parser.wanted, self.read_size))
            parser.receive_data(data or b"")

    # -- random access on a seekable file ---------------------------------------------
    def read_trailer(self) -> SnapshotTrailer:
        """The trailer; on a seekable file from its end without reading the
        chunks (the seek table, the trailer and the header are checked, the
        chunks are not), else by reading the whole stream."""
        if self.trailer is not None:
            return self.trailer
        if not self.seekable:
            return self.verify()
        here = self._f.tell()
        try:
            self._trailer = self._trailer_from_end()
        finally:
            self._f.seek(here)
        return self._trailer

    def read_chunk(self, number: int) -> Chunk:
        """One chunk of a seekable file, found through the trailer's index."""
        trailer = self.read_trailer()
        if not 0 <= number < len(trailer.chunks):
            raise UsageError(f"chunk {number} does not exist: the snapshot has {len(trailer.chunks)}")
        info = trailer.chunks[number]
        here = self._f.tell()
        try:
            frame = self._read_at(info.offset, info.compressed_size, f"chunk {number}")
        finally:
            self._f.seek(here)
        data = _decompress_chunk(frame, info)
        return Chunk(info, data, self.header.byte_order)

    def _read_at(self, offset: int, size: int, what: str) -> bytes:
        self._f.seek(self._base + offset)
        data = self._f.read(size)
        if len(data) != size:
            raise TruncatedContainer(
                f"truncated: {what} at offset {offset:#x} needs {size} bytes, the file has {len(data)}",
                offset=offset,
            )
        return data

    def _trailer_from_end(self) -> SnapshotTrailer:
        f = self._f
        size = f.seek(0, os.SEEK_END) - self._base
        header = self._header_from_start(size)
        if size < _ENVELOPE.size + _FOOTER.size:
            raise TruncatedContainer(f"truncated: {size} bytes cannot end with a seek table", offset=size)
        frames, descriptor, magic = _FOOTER.unpack(self._read_at(size - _FOOTER.size, _FOOTER.size, "the footer"))
        if magic != SEEKABLE_MAGIC:
            raise TruncatedContainer(
                f"truncated at offset {size:#x}: no seek table at the end of the file (last bytes {magic:#010x})",
                offset=size,
            )
        table_size = _ENVELOPE.size + frames * _SEEK_ENTRY.size + _FOOTER.size
        at = size - table_size
        if descriptor != 0 or frames < 2 or at < 0 or frames > SEEKABLE_MAX_FRAMES:
            footer_at = size - _FOOTER.size
            raise ContainerError(f"seek table footer at offset {footer_at:#x} is not sound", offset=footer_at)
        table = self._read_at(at, table_size, "the seek table")
        magic, frame_size = _ENVELOPE.unpack_from(table)
        if magic != SEEK_TABLE_MAGIC or frame_size != table_size - _ENVELOPE.size:
            raise ContainerError(f"seek table at offset {at:#x}: bad frame header", offset=at)
        # the entries as arrays (8 bytes a frame, never a Python object each:
        # a file can state millions of frames)
        entries = np.frombuffer(table, dtype="<u4", count=2 * frames, offset=8).reshape(frames, 2).astype(np.int64)
        starts = np.concatenate(([0], np.cumsum(entries[:, 0])))
        if int(starts[-1]) != at:
            raise ContainerError(
                f"seek table at offset {at:#x}: its frames add up to {int(starts[-1])} bytes", offset=at
            )
        trailer_size = int(entries[-1, 0])
        trailer_at = int(starts[-2])
        limit = TRAILER_BASE_LIMIT + TRAILER_ENTRY_LIMIT * frames
        if not 12 <= trailer_size <= limit or entries[-1, 1]:
            raise ContainerError(f"seek table at offset {at:#x}: bad trailer size {trailer_size}", offset=at)
        frame = self._read_at(trailer_at, trailer_size, "the trailer")
        body = _check_our_frame(frame, trailer_at, TAG_TRAILER)
        trailer = _parse_trailer_body(body, trailer_at, header)
        # every chunk where the seek table says a frame of its sizes starts
        offsets = starts[:-1]
        for c in trailer.chunks:
            k = int(np.searchsorted(offsets, c.offset))
            if k >= frames or int(offsets[k]) != c.offset or tuple(int(x) for x in entries[k]) != (
                    c.compressed_size, c.raw_size):
                raise ContainerError(
                    f"chunk {c.number} at offset {c.offset:#x}: the seek table does not list its frame",
                    offset=c.offset,
                    chunk=c.number,
                )
        if frames < 2 + 2 * len(trailer.chunks) + len(trailer.passes):  # more: optional frames
            raise ContainerError(f"seek table at offset {at:#x}: lists {frames} frames", offset=at)
        self._seek_index = (starts, entries)
        return replace(trailer, file_size=size)

    def read_optional(self, tag: bytes) -> list[bytes]:
        """The bodies of the optional frames with ``tag``, in file order, on
        a seekable file (found through the seek table, each checked); the
        chunks are not read."""
        if not self.seekable:
            raise UsageError("optional frames are read from a seekable file")
        here = self._f.tell()
        try:
            trailer = self._trailer_from_end()
            starts, entries = self._seek_index
            data = {c.offset for c in trailer.chunks}
            bodies = []
            for i in range(1, len(entries) - 1):  # not HEAD, not TRLR
                at, size = int(starts[i]), entries[i][0]
                if entries[i][1] or at in data or int(starts[i + 1]) in data:
                    continue  # a data frame or its descriptor
                if self._read_at(at, 12, "a frame")[8:12] == tag:
                    bodies.append(_check_our_frame(self._read_at(at, size, _tag_name(tag)), at, tag))
        finally:
            self._f.seek(here)
        return bodies

    def _header_from_start(self, size: int) -> SnapshotHeader:
        if self._parser.header is not None:
            return self._parser.header
        if self._header is not None:
            return self._header
        head = self._read_at(0, min(size, 8), "the header frame")
        parser = ContainerParser()
        if len(head) == 8 and int.from_bytes(head[:4], "little") == SKIPPABLE_MAGIC:
            frame_size = int.from_bytes(head[4:8], "little")
            if frame_size <= HEADER_FRAME_LIMIT:
                head = self._read_at(0, min(size, 8 + frame_size), "the header frame")
        if head:
            parser.receive_data(head)
        parser.receive_data(b"")
        event = parser.next_event()
        self._header = event.header
        return self._header


def _check_our_frame(frame: bytes, at: int, tag: bytes) -> bytes:
    """The body of one of our frames read whole, checked; ContainerError if not."""
    if len(frame) < 16:
        raise ContainerError(f"frame at offset {at:#x} is too short", offset=at)
    magic, size = _ENVELOPE.unpack_from(frame)
    if magic != SKIPPABLE_MAGIC or size != len(frame) - 8 or frame[8:12] != tag:
        raise ContainerError(f"offset {at:#x} does not hold the {_tag_name(tag)} frame", offset=at)
    stored = _CRC.unpack_from(frame, len(frame) - 4)[0]
    computed = zlib.crc32(memoryview(frame)[:-4])
    if stored != computed:
        raise ContainerError(
            f"{_tag_name(tag)} frame at offset {at:#x}: checksum mismatch "
            f"(CRC-32 {computed:08x}, stored {stored:08x})",
            offset=at,
        )
    return frame[12:-4]
