"""The snapshot writer: record data in, a whole snapshot out, streaming.

:class:`SnapshotWriter` cuts the records it is given into chunks at record
boundaries, compresses them on worker threads (zstd releases the GIL) while
the caller produces the next ones, and writes every frame in file order to
a binary file object; it never seeks.  Where that file lives, and how it
replaces another, is the caller's (:mod:`htabtool.atomic`): this module
opens, syncs and renames nothing.  :class:`WriterOptions` holds its knobs.
"""

from __future__ import annotations

import collections
import json
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, overload

import numpy as np
import zstandard

from htabtool.container.checks import chunk_stats, chunk_sums, merged_stats, refuse_empty_records
from htabtool.container.format import (
    BYTE_ORDER_CODES,
    CHUNK_ENTRY,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_LEVEL,
    DEFAULT_THREADS,
    DESCRIPTOR,
    FLAG_BOLTED_ONLY,
    HEADER,
    HEADER_FRAME_LIMIT,
    MAX_CHUNK_LIMIT,
    MAX_RECORD_SIZE,
    PASS_END,
    SEEKABLE_MAX_FRAMES,
    SIGNATURE,
    SMALL_FRAME_LIMIT,
    TAG_CHUNK,
    TAG_HEADER,
    TAG_PASS,
    TAG_TRAILER,
    TRAILER,
    encode_frame,
    encode_seek_table,
)
from htabtool.container.model import ChunkInfo, PassInfo, SnapshotHeader, SnapshotTrailer
from htabtool.errors import StreamError, UsageError
from htabtool.records import HEADER_SIZE, decode_batch

__all__ = ["SnapshotWriter", "WriterOptions", "header_frame"]

_UNSET: Any = object()  # a keyword argument not given (None is refused, as any value out of range)


@dataclass(frozen=True)
class WriterOptions:
    """How a :class:`SnapshotWriter` writes: made once, where the command
    line (or a library caller) decides, and handed down as one value.

    ``level``: the zstd compression level (-131072..22); ``threads``: the
    compression workers (0: on the calling thread; at most 64);
    ``chunk_size``: most raw bytes of records in a chunk (1..64 MiB; a
    longer record gets a chunk of its own)."""

    level: int = DEFAULT_LEVEL
    threads: int = DEFAULT_THREADS
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def __post_init__(self):
        level, threads, chunk_size = self.level, self.threads, self.chunk_size
        if not isinstance(level, int) or not -(1 << 17) <= level <= zstandard.MAX_COMPRESSION_LEVEL:
            raise UsageError(f"compression level {level!r} is outside -131072..{zstandard.MAX_COMPRESSION_LEVEL}")
        if not isinstance(threads, int) or not 0 <= threads <= 64:
            raise UsageError(f"threads {threads!r} is outside 0..64")
        if not isinstance(chunk_size, int) or not 1 <= chunk_size <= MAX_CHUNK_LIMIT:
            raise UsageError(f"chunk size {chunk_size!r} is outside 1..{MAX_CHUNK_LIMIT}")

    @classmethod
    def overridden(cls, options: WriterOptions | None, knobs: dict) -> WriterOptions:
        """``options`` (or the defaults) with the fields in ``knobs`` replaced."""
        if options is None:
            return cls(**knobs)
        if not isinstance(options, cls):
            raise TypeError(f"options must be a WriterOptions, not {type(options).__name__}")
        return replace(options, **knobs) if knobs else options


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

    The knobs (``level``, ``threads``, ``chunk_size``) come as one
    :class:`WriterOptions` (``options=``), or as keyword arguments, which
    override the options' fields.

    ``close()`` ends the open pass and writes the trailer and seek table; it
    does not close ``fileobj``.  Used as a context manager, an exception in
    the body leaves the snapshot without a trailer (readers report it as
    truncated) and stops the workers.
    """

    @overload
    def __init__(self, fileobj: BinaryIO, header: SnapshotHeader, *, options: WriterOptions) -> None: ...

    @overload
    def __init__(
        self, fileobj: BinaryIO, header: SnapshotHeader, *, level: int = ..., threads: int = ..., chunk_size: int = ...
    ) -> None: ...

    def __init__(
        self,
        fileobj: BinaryIO,
        header: SnapshotHeader,
        *,
        options: WriterOptions | None = None,
        level: int = _UNSET,
        threads: int = _UNSET,
        chunk_size: int = _UNSET,
    ):
        knobs = {"level": level, "threads": threads, "chunk_size": chunk_size}
        options = WriterOptions.overridden(options, {k: v for k, v in knobs.items() if v is not _UNSET})
        self.options = options
        self.level = options.level
        self.threads = threads = options.threads
        self.chunk_size = chunk_size = options.chunk_size
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
        head = header_frame(self.header)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="htab-zstd") if threads else None
        try:
            self._emit(head, 0)
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
        self._optional.append(encode_frame(tag, bytes(body)))

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
                *chunk_sums(mine),
            )
            self._emit(encode_frame(TAG_PASS, PASS_END.pack(*info._fields())), 0)
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
        raw, records, valid, invalid = chunk_sums(self._chunks)
        try:
            for frame in self._optional:
                self._emit(frame, 0)
            at = self._offset
            body = TRAILER.pack(
                TRAILER.size,
                CHUNK_ENTRY.size,
                PASS_END.size,
                0,
                len(self._chunks),
                len(self._passes),
                records,
                raw,
                valid,
                invalid,
                at,
            )
            body += b"".join(PASS_END.pack(*p._fields()) for p in self._passes)
            body += b"".join(CHUNK_ENTRY.pack(c.offset, *c._fields()) for c in self._chunks)
            self._emit(encode_frame(TAG_TRAILER, body), 0)
            self._write(encode_seek_table(self._frames))
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

    def __enter__(self) -> SnapshotWriter:
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
            self._pending_stats = merged_stats(self._pending_stats, stats) if self._pending else stats
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
                stats = chunk_stats(data, self.header.byte_order, raw_offset, 0, self.header.entries)
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
            chunk_stats(data, self.header.byte_order, raw_offset, self._records, self.header.entries)
            raise StreamError(f"chunk {number}: records do not decode")  # not reached
        records, first_index, end_index, valid, invalid = stats
        refuse_empty_records(number, records, valid + invalid)
        descriptor_size = 8 + 4 + DESCRIPTOR.size + 4
        info = ChunkInfo(number, pass_number, self._offset + descriptor_size, len(frame), raw_offset, len(data),
                         records, first_index, end_index, valid, invalid, crc, self._records)
        self._emit(encode_frame(TAG_CHUNK, DESCRIPTOR.pack(*info._fields())), 0)
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


def header_frame(header: SnapshotHeader) -> bytes:
    """The HEAD frame of ``header``: its fixed part and its JSON object."""
    try:
        meta = json.dumps(
            _unicode(header.metadata()), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise UsageError(f"header metadata is not JSON: {exc}") from None
    fixed = HEADER.pack(
        SIGNATURE,
        header.format_version,
        HEADER.size,
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
    frame = encode_frame(TAG_HEADER, fixed + meta)
    if len(frame) > HEADER_FRAME_LIMIT:
        raise UsageError(f"header of {len(frame)} bytes is over the limit of {HEADER_FRAME_LIMIT}")
    return frame
