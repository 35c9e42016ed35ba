"""The snapshot reader: the parser driven over a binary file object.

:class:`SnapshotReader` reads what the parser wants (a whole frame at a
time, so frames reach it without copies), decompresses chunks ahead on
worker threads, and on a seekable file answers from the seek table and the
trailer alone (``read_trailer``, ``read_chunk``, ``read_optional``).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import BinaryIO

import numpy as np

from htabtool.container.checks import check_frame, parse_trailer_body
from htabtool.container.format import (
    DEFAULT_READ_SIZE,
    DEFAULT_THREADS,
    ENVELOPE,
    HEADER_FRAME_LIMIT,
    SEEK_TABLE_ENTRY,
    SEEK_TABLE_FOOTER,
    SEEK_TABLE_MAGIC,
    SEEKABLE_MAGIC,
    SEEKABLE_MAX_FRAMES,
    SKIPPABLE_MAGIC,
    TAG_TRAILER,
    TRAILER_BASE_LIMIT,
    TRAILER_ENTRY_LIMIT,
    tag_name,
)
from htabtool.container.model import SnapshotHeader, SnapshotTrailer
from htabtool.container.parser import Chunk, CompressedChunk, ContainerParser, Event
from htabtool.errors import ContainerError, TruncatedContainer, UsageError
from htabtool.records import RecordBatch
from htabtool.sansio import END_OF_STREAM, NEED_DATA

__all__ = ["SnapshotReader", "batches_in_pass"]


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
    also checks every chunk's records against its descriptor;
    ``decode_records`` decodes them there too (``Chunk.decoded``: the main
    thread is left the work on the records, not their decoding), and
    ``chunk_work`` calls a function there with them (``Chunk.work``).
    """

    def __init__(
        self,
        fileobj: BinaryIO,
        *,
        read_size: int = DEFAULT_READ_SIZE,
        threads: int = DEFAULT_THREADS,
        check_records: bool = False,
        decode_records: bool = False,
        chunk_work: Callable | None = None,
    ):
        if not isinstance(read_size, int) or read_size < 1:
            raise UsageError(f"read size {read_size!r} must be a positive integer")
        if not isinstance(threads, int) or not 0 <= threads <= 64:
            raise UsageError(f"threads {threads!r} is outside 0..64")
        self.read_size = read_size
        self.threads = threads
        self._f = fileobj
        self._parser = ContainerParser(decompress=threads == 0, check_records=check_records,
                                       decode_records=decode_records, chunk_work=chunk_work)
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
        assert self._header is not None  # else the parser raised (an empty file is truncated)
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
        assert self._trailer is not None  # the stream ended after a sound trailer
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
        """One chunk of a seekable file, found through the trailer's index
        (checked, decoded and worked on as this reader's settings ask, here)."""
        trailer = self.read_trailer()
        if not 0 <= number < len(trailer.chunks):
            raise UsageError(f"chunk {number} does not exist: the snapshot has {len(trailer.chunks)}")
        info = trailer.chunks[number]
        here = self._f.tell()
        try:
            frame = self._read_at(info.offset, info.compressed_size, f"chunk {number}")
        finally:
            self._f.seek(here)
        return self._parser.compressed_chunk(info, frame, self.header).decompress()

    def _read_at(self, offset: int, size: int, what: str) -> bytes:
        assert self._base is not None  # seekable
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
        assert self._base is not None  # seekable
        size = f.seek(0, os.SEEK_END) - self._base
        header = self._header_from_start(size)
        if size < ENVELOPE.size + SEEK_TABLE_FOOTER.size:
            raise TruncatedContainer(f"truncated: {size} bytes cannot end with a seek table", offset=size)
        footer = self._read_at(size - SEEK_TABLE_FOOTER.size, SEEK_TABLE_FOOTER.size, "the footer")
        frames, descriptor, magic = SEEK_TABLE_FOOTER.unpack(footer)
        if magic != SEEKABLE_MAGIC:
            raise TruncatedContainer(
                f"truncated at offset {size:#x}: no seek table at the end of the file (last bytes {magic:#010x})",
                offset=size,
            )
        table_size = ENVELOPE.size + frames * SEEK_TABLE_ENTRY.size + SEEK_TABLE_FOOTER.size
        at = size - table_size
        if descriptor != 0 or frames < 2 or at < 0 or frames > SEEKABLE_MAX_FRAMES:
            footer_at = size - SEEK_TABLE_FOOTER.size
            raise ContainerError(f"seek table footer at offset {footer_at:#x} is not sound", offset=footer_at)
        table = self._read_at(at, table_size, "the seek table")
        magic, frame_size = ENVELOPE.unpack_from(table)
        if magic != SEEK_TABLE_MAGIC or frame_size != table_size - ENVELOPE.size:
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
        body = check_frame(frame, trailer_at, TAG_TRAILER)
        trailer = parse_trailer_body(body, trailer_at, header)
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
                    bodies.append(check_frame(self._read_at(at, size, tag_name(tag)), at, tag))
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


def batches_in_pass(chunks) -> Iterator[tuple[Chunk, RecordBatch]]:
    """Each chunk with its records (decoded ahead, or here), a record's
    number and offset counted in its pass's stream, as a decoder fed the
    pass alone numbers them (the chunks of a pass come in order, its first
    one first)."""
    starts: dict[int, tuple[int, int]] = {}  # pass -> (stream offset, record) of its first chunk
    for chunk in chunks:
        info = chunk.info
        at, first = starts.setdefault(info.pass_number, (info.raw_offset, info.first_record))
        batch = chunk.batch()
        if at or first:
            batch = replace(batch, offset=batch.offset - at, first_record=batch.first_record - first)
        yield chunk, batch
