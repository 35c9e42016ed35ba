"""The checks a snapshot's frames must pass, shared by the parser, the reader and the writer.

The statistics of a chunk's records (a vectorised scan, the record decoder
when the scan cannot vouch for them), a chunk's frame against its
descriptor, the HEAD and TRLR bodies decoded and checked, the limits a
descriptor must keep (checked before its frame is read), and the one rule
that refuses chunks of mostly empty records, on both sides.  No I/O.
"""

from __future__ import annotations

import json
import threading
import zlib

import numpy as np
import zstandard

from htabtool.container.format import (
    BYTE_ORDER_NAMES,
    CHUNK_ENTRY,
    ENVELOPE,
    FLAG_BOLTED_ONLY,
    FORMAT_CHUNK_MIN,
    FORMAT_VERSION,
    FRAME_CRC,
    HEADER,
    KNOWN_FLAGS,
    KNOWN_REQUIRED_FEATURES,
    MAX_CHUNK_LIMIT,
    PASS_END,
    SIGNATURE,
    SKIPPABLE_MAGIC,
    TRAILER,
    ZSTD_MAGIC,
    compress_bound,
    tag_name,
)
from htabtool.container.model import JSON_KEYS, ChunkInfo, PassInfo, SnapshotHeader, SnapshotTrailer
from htabtool.errors import ContainerError, StreamError, UnsupportedFeature, UsageError
from htabtool.records import HEADER_SIZE, MAX_RUN, decode_batch, header_dtype, record_stats, scan_headers


def chunk_stats(data, byte_order: str, raw_offset: int, first_record: int, n_entries: int) -> tuple:
    """(records, first_index, end_index, valid, invalid) of whole records;
    StreamError if ``data`` is not whole records, RecordError if a record
    runs past the table.  Entry contents (HPTE_V_VALID) are not looked at:
    that is a question of meaning, for ``htabtool verify``.

    The fast path is :func:`scan_records` (vectorised, no entries copied);
    whenever it cannot vouch for the data, :func:`chunk_batch` decides and
    names the fault."""
    scanned = scan_records(data, byte_order, n_entries)
    if scanned is not None:
        return scanned
    stats = chunk_batch(data, byte_order, raw_offset, first_record, n_entries, scan=False).stats()
    assert stats is not None  # whole records, at least one
    return stats


def chunk_batch(data, byte_order: str, raw_offset: int, first_record: int, n_entries: int,
                scan: bool = True):
    """The whole records of ``data`` decoded (a RecordBatch, entries
    included), with :func:`chunk_stats`'s errors: StreamError if ``data``
    is not whole records, RecordError if a record runs past the table.
    ``scan`` lets the records be found without a loop per record."""
    batch, used = decode_batch(data, byte_order, base_offset=raw_offset, first_record=first_record,
                               scan_bound=n_entries if scan else None)
    if len(batch) and ((batch.index >= n_entries) | (batch.end > n_entries)).any():
        batch.check(n_entries)  # raises RecordError naming the first record past the table
    if used != len(data) or not len(batch):
        raise StreamError(
            f"record data ends inside a record at stream offset {raw_offset + used:#x} "
            f"({len(data) - used} bytes left over): give whole records",
            offset=raw_offset + used,
            record=first_record + len(batch),
        )
    return batch


def scan_records(data, byte_order: str, n_entries: int, rounds: int = 64):
    """The statistics of ``data`` if it is whole records inside the table,
    found without a Python loop per record (htabtool.records' chain scan);
    None when the scan cannot vouch for it (then decode_batch decides)."""
    size = len(data)
    n = size // 8
    if n == 0 or n * 8 != size:
        return None
    words = np.frombuffer(data, dtype=header_dtype(byte_order))
    scanned = scan_headers(words, n, n_entries, rounds)
    if scanned is None or scanned[1] != n:
        return None
    chain = words[scanned[0]]
    stats = record_stats(*(chain[name].astype(np.int64) for name in ("index", "n_valid", "n_invalid")))
    return stats if stats is not None and stats[2] <= n_entries else None


def merged_stats(a: tuple | None, b: tuple | None) -> tuple | None:
    """The statistics of two runs of records, one after the other (None:
    not known)."""
    if a is None or b is None:
        return None
    return a[0] + b[0], min(a[1], b[1]), max(a[2], b[2]), a[3] + b[3], a[4] + b[4]


def check_chunk_records(data: bytes, info: ChunkInfo, byte_order: str, n_entries: int) -> None:
    """The records of a chunk against its descriptor."""
    try:
        stats = chunk_stats(data, byte_order, info.raw_offset, info.first_record, n_entries)
    except StreamError as exc:
        raise _chunk_fault(info, str(exc)) from None
    _check_stated(info, stats)


def decode_chunk_records(data: bytes, info: ChunkInfo, byte_order: str, n_entries: int, check: bool):
    """A chunk's records decoded (RecordBatch): ContainerError, naming the
    chunk, if they are not whole records inside the table or (with
    ``check``) do not add up to what its descriptor states."""
    try:
        batch = chunk_batch(data, byte_order, info.raw_offset, info.first_record, n_entries)
    except StreamError as exc:
        raise _chunk_fault(info, str(exc)) from None
    if check:
        _check_stated(info, batch.stats())
    return batch


def _check_stated(info: ChunkInfo, stats: tuple) -> None:
    stated = (info.records, info.first_index, info.end_index, info.valid, info.invalid)
    if stats != stated:
        raise _chunk_fault(info, f"its records (records, index range, valid, invalid) are {stats}, "
                                 f"the descriptor says {stated}")


def _chunk_fault(info: ChunkInfo, what: str) -> ContainerError:
    return ContainerError(f"chunk {info.number} at offset {info.offset:#x}: {what}",
                          offset=info.offset, chunk=info.number)


_local = threading.local()


def _dctx() -> zstandard.ZstdDecompressor:
    """This thread's decompressor (they are not to be shared between threads)."""
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def decompress_chunk(frame, info: ChunkInfo) -> bytes:
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


def parse_header_body(body: bytes, offset: int) -> SnapshotHeader:
    def fail(what: str, cls=ContainerError) -> ContainerError:
        return cls(f"header at offset {offset:#x}: {what}", offset=offset)

    if len(body) < HEADER.size:
        raise fail(f"{len(body)} bytes, less than the {HEADER.size} of its fixed part")
    (sig, version, fixed_size, required, optional, bo, order, flags, reserved, entries, start_index,
     chunk_limit, json_size) = HEADER.unpack_from(body)
    if sig != SIGNATURE:
        raise fail(f"bad signature {sig!r}: not an htabtool snapshot")
    if version != FORMAT_VERSION:
        raise fail(
            f"format version {version} is not supported (this reader knows {FORMAT_VERSION})", UnsupportedFeature
        )
    unknown = required & ~KNOWN_REQUIRED_FEATURES
    if unknown:
        raise fail(f"needs features {unknown:#x} that this reader lacks", UnsupportedFeature)
    if fixed_size < HEADER.size or fixed_size + json_size != len(body):
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
    extra = {k: v for k, v in meta.items() if k not in JSON_KEYS}
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


def parse_trailer_body(body: bytes, offset: int, header: SnapshotHeader) -> SnapshotTrailer:
    """Decode a trailer and check that it agrees with itself."""

    def fail(what: str, chunk=None) -> ContainerError:
        return ContainerError(f"trailer at offset {offset:#x}: {what}", offset=offset, chunk=chunk)

    if len(body) < TRAILER.size:
        raise fail(f"{len(body)} bytes, less than the {TRAILER.size} of its fixed part")
    (fixed_size, chunk_entry, pass_entry, reserved, n_chunks, n_passes, records, raw_size, valid, invalid,
     stated_offset) = TRAILER.unpack_from(body)
    if fixed_size < TRAILER.size or chunk_entry < CHUNK_ENTRY.size or pass_entry < PASS_END.size or reserved:
        raise fail(f"bad layout (fixed {fixed_size}, chunk entries {chunk_entry}, pass entries {pass_entry})")
    if fixed_size + n_passes * pass_entry + n_chunks * chunk_entry != len(body):
        raise fail(f"{n_passes} passes and {n_chunks} chunks do not fill its {len(body)} bytes")
    if stated_offset != offset:
        raise fail(f"says it is at offset {stated_offset:#x}")
    passes = []
    pos = fixed_size
    for _ in range(n_passes):
        passes.append(PassInfo(*PASS_END.unpack_from(body, pos)))
        pos += pass_entry
    chunks = []
    first_record = 0
    for _ in range(n_chunks):
        frame_offset, *fields_ = CHUNK_ENTRY.unpack_from(body, pos)
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
        check_chunk_fields(c, header, lambda what, n=n: fail(f"index entry {n}: {what}", chunk=n))
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
        if chunk_sums(mine) != (p.raw_size, p.records, p.valid, p.invalid):
            raise fail(f"pass {p.pass_number} totals do not add up")
        first_chunk += p.chunks
        raw += p.raw_size
        last = p.pass_number
    if first_chunk != n_chunks:
        raise fail(f"passes list {first_chunk} chunks, the index {n_chunks}")
    if chunk_sums(chunks) != (raw_size, records, valid, invalid):
        raise fail("file totals do not add up")
    return SnapshotTrailer(tuple(chunks), tuple(passes), records, raw_size, valid, invalid, offset, 0)


def chunk_sums(chunks) -> tuple:
    return (
        sum(c.raw_size for c in chunks),
        sum(c.records for c in chunks),
        sum(c.valid for c in chunks),
        sum(c.invalid for c in chunks),
    )


def check_chunk_fields(c: ChunkInfo, header: SnapshotHeader, fail) -> None:
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


def refuse_empty_records(number: int, records: int, entries: int) -> None:
    """The writer's side of the rule: a chunk a reader would refuse is not written."""
    if _mostly_empty(records, entries):
        raise StreamError(f"chunk {number}: " + _EMPTY_RECORDS.format(records=records, entries=entries))


def check_frame(frame: bytes, at: int, tag: bytes) -> bytes:
    """The body of one of our frames read whole, checked; ContainerError if not."""
    if len(frame) < 16:
        raise ContainerError(f"frame at offset {at:#x} is too short", offset=at)
    magic, size = ENVELOPE.unpack_from(frame)
    if magic != SKIPPABLE_MAGIC or size != len(frame) - 8 or frame[8:12] != tag:
        raise ContainerError(f"offset {at:#x} does not hold the {tag_name(tag)} frame", offset=at)
    stored = FRAME_CRC.unpack_from(frame, len(frame) - 4)[0]
    computed = zlib.crc32(memoryview(frame)[:-4])
    if stored != computed:
        raise ContainerError(
            f"{tag_name(tag)} frame at offset {at:#x}: checksum mismatch "
            f"(CRC-32 {computed:08x}, stored {stored:08x})",
            offset=at,
        )
    return frame[12:-4]
