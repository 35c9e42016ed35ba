"""Fuzz the QEMU migration stream walker (htabtool.qemu).

Input: one control byte, then a migration stream (or, with control bit 0,
bare spapr/htab section payloads).  Control bits 1-7: the size of the reads
(1 + 97 * n bytes; at least 64 for a stream over 256 bytes, to keep the fuzzer
fast), so that every structure is also cut at odd places.

The walker is driven through QemuSource (the snapshot source: the walker,
then the records decoded and checked against the table) and, on its own,
byte by byte for inputs of at most 256 bytes.  Allowed out: htabtool's own errors
(HtabError and its subclasses).  Also checked: the pieces handed out are
whole records inside the table the htab START announced.

    python -m tests.fuzz.fuzz_qemu -max_total_time=60 CORPUS_DIR   (atheris)
    python -m tests.fuzz.run qemu                                   (bounded)
"""

from __future__ import annotations

import io


def one_input(data: bytes) -> None:
    from htabtool.errors import HtabError
    from htabtool.qemu import END_OF_STREAM, NEED_DATA, MigrationWalker, QemuSource
    from htabtool.records import decode_batch

    if not data:
        return
    control, stream = data[0], data[1:]
    section_only = bool(control & 1)
    read_size = 1 + 97 * (control >> 1)
    if len(stream) > 256:
        read_size = max(read_size, 64)

    try:
        source = QemuSource(io.BytesIO(stream), byte_order="little", section_only=section_only, read_size=read_size)
        entries = source.info.entries
        for _, piece in source.pieces():
            batch, used = decode_batch(piece, "little", n_entries=entries)
            assert used == len(piece), "a piece that is not whole records"
    except HtabError:
        pass

    if len(stream) <= 256:
        walker = MigrationWalker(section_only=section_only)
        at = 0
        try:
            while True:
                event = walker.next_event()
                if event is NEED_DATA:
                    walker.receive_data(stream[at : at + 1])
                    at += 1
                elif event is END_OF_STREAM:
                    break
        except HtabError:
            pass


def main(argv=None) -> None:
    from tests.fuzz.corpus import fuzz_main

    fuzz_main("htabtool.qemu", one_input, argv)


if __name__ == "__main__":
    main()
