"""The sans-I/O snapshot parser and its events.

:class:`ContainerParser` is the reader's core, as h11 builds a connection:
feed it bytes with ``receive_data`` (``b""`` at the end) and take events
from ``next_event``: :class:`Header`, :class:`Chunk` (or
:class:`CompressedChunk`), :class:`PassEnd`, :class:`Trailer`, then
END_OF_STREAM, or NEED_DATA when it wants bytes.  Its input waits in an
:class:`htabtool.sansio.ReceiveBuffer`; it touches no file.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from htabtool.container.checks import (
    check_chunk_fields,
    check_chunk_records,
    chunk_sums,
    decode_chunk_records,
    decompress_chunk,
    parse_header_body,
    parse_trailer_body,
)
from htabtool.container.format import (
    DESCRIPTOR,
    ENVELOPE,
    FRAME_CRC,
    HEADER_FRAME_LIMIT,
    PASS_END,
    SEEK_TABLE_ENTRY,
    SEEK_TABLE_FOOTER,
    SEEK_TABLE_MAGIC,
    SKIPPABLE_MAGIC,
    SKIPPABLE_RANGE,
    SMALL_FRAME_LIMIT,
    TAG_CHUNK,
    TAG_HEADER,
    TAG_PASS,
    TAG_TRAILER,
    TRAILER_BASE_LIMIT,
    TRAILER_ENTRY_LIMIT,
    ZSTD_MAGIC,
    encode_seek_table,
    tag_name,
)
from htabtool.container.model import ChunkInfo, PassInfo, SnapshotHeader, SnapshotTrailer
from htabtool.errors import ContainerError, StreamError, TruncatedContainer, UnsupportedFeature, UsageError
from htabtool.records import RecordBatch, decode_batch
from htabtool.sansio import END_OF_STREAM, NEED_DATA, ReceiveBuffer

__all__ = ["Chunk", "CompressedChunk", "ContainerParser", "Event", "Header", "PassEnd", "Trailer"]


# -- events of the parser -----------------------------------------------------


@dataclass(frozen=True)
class Header:
    header: SnapshotHeader
    size: int  # bytes of the header frame


@dataclass(frozen=True)
class Chunk:
    """A chunk's description and its records (``data``: the raw stream
    bytes; ``decoded``: their RecordBatch when the reader decoded them ahead,
    on its worker threads)."""

    info: ChunkInfo
    data: bytes = field(repr=False)
    byte_order: str = "little"
    decoded: RecordBatch | None = field(default=None, repr=False, compare=False)
    #: the table size ``decoded`` passed the write-side checks against (on
    #: the worker thread), None if not checked or if they failed there
    checked_entries: int | None = field(default=None, repr=False, compare=False)
    #: what the reader's ``chunk_work`` made of ``decoded`` (on the worker thread)
    work: object = field(default=None, repr=False, compare=False)

    @property
    def number(self) -> int:
        return self.info.number

    @property
    def pass_number(self) -> int:
        return self.info.pass_number

    def batch(self, n_entries: int | None = None):
        """The chunk's records as a :class:`htabtool.records.RecordBatch`
        (with ``n_entries`` checked against the table as the kernel's write
        side would)."""
        if self.decoded is not None:
            if n_entries is not None and n_entries != self.checked_entries:
                self.decoded.check(n_entries)
            return self.decoded
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
    records against the descriptor) and returns the :class:`Chunk`, with
    ``decode_entries`` its records decoded too (``Chunk.decoded``).  It may
    run on another thread."""

    info: ChunkInfo
    frame: object = field(repr=False)  # bytes-like, read-only
    byte_order: str = "little"
    check_entries: int | None = None  # the table size, to check the records
    decode_entries: int | None = None  # the table size, to decode the records
    chunk_work: Callable | None = None  # called with the decoded records; its result is Chunk.work

    def decompress(self) -> Chunk:
        data = decompress_chunk(self.frame, self.info)
        if self.decode_entries is not None:
            batch = decode_chunk_records(data, self.info, self.byte_order, self.decode_entries,
                                         check=self.check_entries is not None)
            work = self.chunk_work(batch) if self.chunk_work is not None else None
            try:  # the write-side checks here too; a fault is raised where the batch is asked for
                batch.check(self.decode_entries)
            except StreamError:
                return Chunk(self.info, data, self.byte_order, batch, None, work)
            return Chunk(self.info, data, self.byte_order, batch, self.decode_entries, work)
        if self.check_entries is not None:
            check_chunk_records(data, self.info, self.byte_order, self.check_entries)
        return Chunk(self.info, data, self.byte_order)


@dataclass(frozen=True)
class PassEnd:
    info: PassInfo


@dataclass(frozen=True)
class Trailer:
    trailer: SnapshotTrailer


Event = Header | Chunk | CompressedChunk | PassEnd | Trailer


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
    guard the bytes).  With ``decode_records`` every chunk comes with its
    records decoded (``Chunk.decoded``), where the chunk is decompressed: on
    the reader's worker threads, and with ``chunk_work`` too a function
    called there with them (its result: ``Chunk.work``).  After an error
    the parser raises it again."""

    def __init__(self, *, decompress: bool = True, check_records: bool = False, decode_records: bool = False,
                 chunk_work: Callable | None = None):
        self.decompress = decompress
        self.check_records = check_records
        self.decode_records = decode_records or chunk_work is not None
        self.chunk_work = chunk_work
        self.header: SnapshotHeader | None = None
        self.trailer: SnapshotTrailer | None = None
        self._buf = ReceiveBuffer()  # received, not yet consumed; its offset is the file offset
        self._wanted = 8  # bytes the current step needs in the buffer
        self._state = _State.HEADER
        self._dispatch = {
            _State.HEADER: self._read_header,
            _State.FRAME: self._read_frame,
            _State.DATA: self._read_data,
            _State.SEEK_TABLE: self._read_seek_table,
            _State.DONE: self._read_end,
        }
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
        return self._buf.offset

    @property
    def chunks(self) -> tuple:
        """The chunks read so far."""
        return tuple(self._chunks)

    @property
    def wanted(self) -> int:
        """How many more bytes the parser needs before it can go on (at least
        1): a reader that reads exactly this much hands whole frames over
        without copying them."""
        return max(1, self._wanted - len(self._buf))

    def receive_data(self, data) -> None:
        """Feed bytes; ``b""`` means the input ended.  ``bytes`` are kept as
        they are; other buffers are copied."""
        if self._buf.eof:
            raise UsageError("receive_data after the end of the input")
        if data:
            self._buf.feed(data)
        else:
            self._buf.eof = True

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
    def _peek(self, n: int):
        """The next ``n`` bytes as a read-only view, or None (wanting ``n``).
        Views are of immutable bytes objects: they stay valid."""
        view = self._buf.peek(n)
        if view is None:
            self._wanted = n
        return view

    def _consume(self, n: int) -> None:
        self._buf.consume(n)
        self._wanted = 8

    def _truncated(self, what: str, need: int):
        have = len(self._buf)
        at = self._buf.offset
        chunk = self._descriptor.number if self._descriptor else None
        raise TruncatedContainer(
            f"truncated at offset {at + have:#x}: {what} at offset {at:#x} needs {need} bytes, the file has {have}",
            offset=at,
            chunk=chunk,
        )

    def _need(self, n: int, what: str):
        """``n`` bytes at the current offset, None (NEED_DATA), or Truncated at EOF."""
        view = self._peek(n)
        if view is None and self._buf.eof:
            self._truncated(what, n)
        return view

    # -- the state machine -------------------------------------------------------
    def _step(self):
        """Run the state's step until it makes an event (or wants bytes)."""
        while True:
            event = self._dispatch[self._state]()
            if event is None:
                return NEED_DATA
            if event is not _CONTINUE:
                return event

    def _read_end(self):
        """After the seek table: the end of the input, and nothing else."""
        if self._buf:
            at = self._buf.offset
            raise ContainerError(f"unexpected data after the end of the snapshot at offset {at:#x}", offset=at)
        return END_OF_STREAM if self._buf.eof else None

    def _our_frame(self, limit: Callable[[bytes], int], what: str):
        """The next of our skippable frames, checked: (tag, body, offset, size)
        or None for NEED_DATA.  The size is checked against ``limit`` (a
        callable of the tag) before anything is buffered for it."""
        head = self._need(12, what)
        if head is None:
            return None
        magic, size = ENVELOPE.unpack_from(head)
        tag = bytes(head[8:12])
        at = self._buf.offset
        if size < 8:
            raise ContainerError(
                f"{what} at offset {at:#x} declares {size} bytes, less than a tag and a checksum", offset=at
            )
        cap = limit(tag)
        if size > cap:
            raise ContainerError(
                f"{what} at offset {at:#x} declares {size} bytes, more than the {cap} allowed for {tag_name(tag)}",
                offset=at,
            )
        frame = self._need(8 + size, f"{tag_name(tag)} frame")
        if frame is None:
            return None
        stored = FRAME_CRC.unpack_from(frame, 8 + size - 4)[0]
        computed = zlib.crc32(frame[: 8 + size - 4])
        if stored != computed:
            chunk = len(self._chunks) if tag == TAG_CHUNK and self.header is not None else None
            name = f"chunk {chunk} descriptor" if chunk is not None else f"{tag_name(tag)} frame"
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
                f"not an htabtool snapshot: first frame is {tag_name(tag)}, not a header", offset=at
            )
        self.header = parse_header_body(body, at)
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
            if self._buf.eof:
                if not self._buf:
                    at = self._buf.offset
                    where = f"after chunk {len(self._chunks) - 1}" if self._chunks else "after the header"
                    raise TruncatedContainer(
                        f"truncated at offset {at:#x}: the snapshot ends {where} without a trailer", offset=at
                    )
                self._truncated("a frame", 4)
            return None
        magic = int.from_bytes(head[:4], "little")
        at = self._buf.offset
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
                f"frame {tag_name(tag)} at offset {at:#x} is required but unknown to this reader", offset=at
            )
        return _CONTINUE  # an optional frame of a later version: skipped

    def _on_descriptor(self, body: bytes, at: int, size: int):
        number = len(self._chunks)

        def fail(what: str) -> ContainerError:
            return ContainerError(f"chunk {number} descriptor at offset {at:#x}: {what}", offset=at, chunk=number)

        if len(body) < DESCRIPTOR.size:
            raise fail(f"{len(body)} bytes, less than {DESCRIPTOR.size}")
        (n, pass_number, raw_offset, csize, rsize, crc, recs, first_index, end_index, valid,
         invalid) = DESCRIPTOR.unpack_from(body)
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
        assert self.header is not None  # the HEADER state ran first
        check_chunk_fields(info, self.header, fail)
        self._descriptor = info
        self._state = _State.DATA
        return _CONTINUE

    def _read_data(self):
        info, header = self._descriptor, self.header
        assert info is not None and header is not None  # the DATA state follows a descriptor
        frame = self._need(info.compressed_size, f"chunk {info.number}")
        if frame is None:
            return None
        compressed = self.compressed_chunk(info, frame, header)
        event = compressed.decompress() if self.decompress else compressed
        self._consume(info.compressed_size)
        self._frames.append((info.compressed_size, info.raw_size))
        self._chunks.append(info)
        self._raw += info.raw_size
        self._records += info.records
        self._descriptor = None
        self._state = _State.FRAME
        return event

    def compressed_chunk(self, info: ChunkInfo, frame, header: SnapshotHeader) -> CompressedChunk:
        """A chunk's frame of a snapshot with ``header``, to be decompressed
        (checked, decoded, worked on) as this parser's settings ask."""
        check = header.entries if self.check_records else None
        decode = header.entries if self.decode_records else None
        return CompressedChunk(info, frame, header.byte_order, check, decode, self.chunk_work)

    def _on_pass(self, body: bytes, at: int):
        def fail(what: str) -> ContainerError:
            return ContainerError(f"pass end at offset {at:#x}: {what}", offset=at)

        if len(body) < PASS_END.size:
            raise fail(f"{len(body)} bytes, less than {PASS_END.size}")
        info = PassInfo(*PASS_END.unpack_from(body))
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
                            *chunk_sums(mine))
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
        assert self.header is not None
        trailer = parse_trailer_body(body, at, self.header)
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
        expected_size = n * SEEK_TABLE_ENTRY.size + SEEK_TABLE_FOOTER.size
        head = self._need(8, "the seek table")
        if head is None:
            return None
        magic, size = ENVELOPE.unpack_from(head)
        at = self._buf.offset
        if magic != SEEK_TABLE_MAGIC:
            raise ContainerError(f"seek table at offset {at:#x}: bad magic {magic:#010x}", offset=at)
        if size != expected_size:
            raise ContainerError(
                f"seek table at offset {at:#x}: declares {size} bytes, {n} frames need {expected_size}", offset=at
            )
        table = self._need(8 + size, "the seek table")
        if table is None:
            return None
        expected = encode_seek_table(self._frames)
        table = bytes(table)
        if table != expected:
            k = next(i for i in range(len(expected)) if table[i] != expected[i])
            raise ContainerError(
                f"seek table at offset {at:#x}: differs from the frames read at byte {k}", offset=at + k
            )
        self._consume(8 + size)
        self._state = _State.DONE
        assert self._pending_trailer is not None  # the trailer came before the seek table
        self.trailer = replace(self._pending_trailer, file_size=self._buf.offset)
        return Trailer(self.trailer)


_CONTINUE = object()  # internal: a frame was consumed without an event
