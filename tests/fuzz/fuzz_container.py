"""Fuzz the snapshot container reader (htabtool.container).

Input: one control byte, then a snapshot file.  Control bits: 0-1 the size
of the pieces the file is fed in (1, 7, 4096 bytes, or whole; at least 64
for a file over 256 bytes, to keep the fuzzer fast); 2 check every
chunk's records against its descriptor; 3 hand chunks out compressed and
decompress them afterwards (as the threaded reader does).

Three readers see each input: the streaming parser (sans I/O), the reader
over a seekable file answering from the trailer alone and then chunk by
chunk through the index, and the streaming reader over a file.  Allowed out:
htabtool's own errors (HtabError and its subclasses).  Also checked: a file
the streaming parser accepts whole is accepted by the random-access reader
with the same trailer, and its chunk contents add up to the trailer's totals.

    python -m tests.fuzz.fuzz_container -max_total_time=60 CORPUS_DIR   (atheris)
    python -m tests.fuzz.run container                                   (bounded)
"""

from __future__ import annotations

import io

PIECES = (1, 7, 4096, None)


def one_input(data: bytes) -> None:
    from htabtool.container import (
        END_OF_STREAM,
        NEED_DATA,
        Chunk,
        CompressedChunk,
        ContainerParser,
        SnapshotReader,
        Trailer,
    )
    from htabtool.errors import HtabError

    if not data:
        return
    control, snap = data[0], data[1:]
    piece = PIECES[control & 3] or max(1, len(snap))
    if len(snap) > 256:
        piece = max(piece, 64)
    check_records = bool(control & 4)
    decompress = not control & 8

    # 1. the parser, fed in pieces
    parser = ContainerParser(decompress=decompress, check_records=check_records)
    raw = records = 0
    streamed = None
    at = 0
    try:
        while True:
            event = parser.next_event()
            if event is NEED_DATA:
                parser.receive_data(snap[at : at + piece])
                at += piece
                continue
            if event is END_OF_STREAM:
                break
            if isinstance(event, CompressedChunk):
                event = event.decompress()
            if isinstance(event, Chunk):
                raw += len(event.data)
                records += event.info.records
            if isinstance(event, Trailer):
                streamed = event.trailer
    except HtabError:
        streamed = None
    if streamed is not None:
        assert (raw, records) == (streamed.raw_size, streamed.records), "chunk contents and trailer disagree"

    # 2. random access on a seekable file: the trailer alone, then each chunk
    reader = SnapshotReader(io.BytesIO(snap), threads=0)
    try:
        trailer = reader.read_trailer()
        for number in range(len(trailer.chunks)):
            chunk = reader.read_chunk(number)
            if check_records:
                chunk.batch(reader.header.entries)
    except HtabError:
        trailer = None
    if streamed is not None:
        assert trailer is not None, "the streaming parser accepted a file the random-access reader refuses"
        assert (trailer.chunks, trailer.passes, trailer.file_size) == (
            streamed.chunks, streamed.passes, streamed.file_size,
        ), "the two readers see different trailers"

    # 3. the streaming reader over a file
    try:
        SnapshotReader(io.BytesIO(snap), threads=0, read_size=piece, check_records=check_records).verify()
    except HtabError:
        pass


def main(argv=None) -> None:
    from tests.fuzz.corpus import fuzz_main

    fuzz_main("htabtool.container", one_input, argv)


if __name__ == "__main__":
    main()
