"""Snapshot files: kernel records in zstd frames, described by skippable frames.

Strategy: a snapshot is a valid zstd stream.  Every chunk of kernel records
(whole records, exactly as read(2) of the htab fd returned them) is one zstd
frame with its content size and content checksum; everything else -- the
header, a descriptor before each chunk, the end of each pass, the trailer
with the chunk index -- sits in zstd *skippable frames*, and the file ends
with a seek table in the zstd seekable format.  So ``zstd -dc`` prints the
exact record stream and ``zstd -t`` checks it.  The byte-level rules are in
htabtool-snapshot(5) (man/htabtool-snapshot.5); this package follows it.

What lives where (layout, then the sans-I/O parser, then the I/O adapters):

- :mod:`~htabtool.container.format`: the magic numbers, tags, limits and the
  field layouts, named as the man page names them (``ENVELOPE``, ``HEADER``,
  ``DESCRIPTOR``, ``PASS_END``, ``TRAILER``, ``CHUNK_ENTRY``,
  ``SEEK_TABLE_ENTRY``, ``SEEK_TABLE_FOOTER``, each with its ``*_FIELDS``);
  the frame envelope and the seek table as bytes.
- :mod:`~htabtool.container.model`: what a snapshot says, as values
  (:class:`SnapshotHeader`, :class:`ChunkInfo`, :class:`PassInfo`,
  :class:`SnapshotTrailer`).
- :mod:`~htabtool.container.checks`: the checks the parser, the reader and
  the writer share (a chunk's records and frame against its descriptor, the
  HEAD and TRLR bodies decoded and checked, the descriptor's limits).
- :mod:`~htabtool.container.parser`: :class:`ContainerParser`, the reader's
  core, sans I/O as h11: bytes in with ``receive_data`` (``b""`` at the
  end), events out of ``next_event`` (:class:`Header`, :class:`Chunk`,
  :class:`PassEnd`, :class:`Trailer`, then END_OF_STREAM, or NEED_DATA).
  It checks every frame as it comes (checksums, sizes against limits before
  anything is buffered or decompressed, numbering, totals) and raises
  ContainerError / TruncatedContainer / UnsupportedFeature naming the chunk
  and the byte offset.
- :mod:`~htabtool.container.writer`: :class:`SnapshotWriter` (and its
  :class:`WriterOptions`) takes record data and pass numbers, cuts chunks at
  record boundaries, compresses them on worker threads (zstd releases the
  GIL) while the caller produces the next ones, and never seeks.
- :mod:`~htabtool.container.reader`: :class:`SnapshotReader` drives the
  parser over a file object in bounded memory (with ``decode_records`` the
  chunks' records are decoded on its worker threads); on a seekable file it
  can answer from the trailer alone; :func:`batches_in_pass` numbers a
  chunk's records within their pass.

Layering: this package may import the HPTE model and the record layer (:mod:`htabtool.hpte`, :mod:`htabtool.records`),
:mod:`htabtool.sansio`, :mod:`htabtool.errors` and :mod:`htabtool.atomic`;
never the sources, the operations or the CLI.  Inside it, each module
imports only those above it in the list (``format`` none of them, the
``parser`` no file object).  The writer and the reader take file objects:
opening, syncing and renaming files (durability) is :mod:`htabtool.atomic`'s,
at the edge; no module here has temp-file, fsync or rename code.
"""

from __future__ import annotations

from htabtool.container.format import (
    BYTE_ORDER_CODES,
    BYTE_ORDER_NAMES,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_LEVEL,
    DEFAULT_READ_SIZE,
    DEFAULT_THREADS,
    FLAG_BOLTED_ONLY,
    FORMAT_CHUNK_MIN,
    FORMAT_VERSION,
    HEADER_FRAME_LIMIT,
    KNOWN_FLAGS,
    KNOWN_REQUIRED_FEATURES,
    MAX_CHUNK_LIMIT,
    MAX_ORDER,
    MAX_RECORD_SIZE,
    MIN_ORDER,
    SEEK_TABLE_MAGIC,
    SEEKABLE_MAGIC,
    SEEKABLE_MAX_FRAMES,
    SIGNATURE,
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
    compress_bound,
)
from htabtool.container.model import ChunkInfo, PassInfo, SnapshotHeader, SnapshotTrailer
from htabtool.container.parser import Chunk, CompressedChunk, ContainerParser, Event, Header, PassEnd, Trailer
from htabtool.container.reader import SnapshotReader, batches_in_pass
from htabtool.container.writer import SnapshotWriter, WriterOptions
from htabtool.sansio import END_OF_STREAM, NEED_DATA

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
    "Event",
    "ContainerParser",
    "SnapshotWriter",
    "WriterOptions",
    "SnapshotReader",
    "batches_in_pass",
    "NEED_DATA",
    "END_OF_STREAM",
    # the numbers of the format (the layouts: htabtool.container.format)
    "SIGNATURE",
    "SKIPPABLE_MAGIC",
    "SEEK_TABLE_MAGIC",
    "SEEKABLE_MAGIC",
    "ZSTD_MAGIC",
    "SKIPPABLE_RANGE",
    "TAG_HEADER",
    "TAG_CHUNK",
    "TAG_PASS",
    "TAG_TRAILER",
    "BYTE_ORDER_CODES",
    "BYTE_ORDER_NAMES",
    "FLAG_BOLTED_ONLY",
    "KNOWN_FLAGS",
    "KNOWN_REQUIRED_FEATURES",
    "MIN_ORDER",
    "MAX_ORDER",
    "MAX_RECORD_SIZE",
    "MAX_CHUNK_LIMIT",
    "FORMAT_CHUNK_MIN",
    "HEADER_FRAME_LIMIT",
    "SMALL_FRAME_LIMIT",
    "TRAILER_BASE_LIMIT",
    "TRAILER_ENTRY_LIMIT",
    "SEEKABLE_MAX_FRAMES",
    "compress_bound",
]
