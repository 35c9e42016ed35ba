"""Fuzz the kernel record decoder (htabtool.records).

Input: one control byte, then a record stream.  Control bits: 0 the header
byte order (big if set); 1-2 the table size the decoder checks against
(none, 16, 2**14, 2**20 entries); 3-5 the size of the pieces the stream is
cut into (1, 3, 8, 13, 64, 509 or 4096 bytes, or whole; at least 64 for a
stream over 256 bytes, to keep the fuzzer fast).

Allowed out: htabtool's own errors (HtabError and its subclasses).  Also
checked: the records handed out are exactly the bytes consumed, re-encoded.

    python -m tests.fuzz.fuzz_records -max_total_time=60 CORPUS_DIR   (atheris)
    python -m tests.fuzz.run records                                   (bounded)
"""

from __future__ import annotations

TABLE_SIZES = (None, 16, 1 << 14, 1 << 20)
PIECES = (1, 3, 8, 13, 64, 509, 4096, None)


def one_input(data: bytes) -> None:
    from htabtool.errors import HtabError
    from htabtool.records import END_OF_STREAM, NEED_DATA, RecordDecoder, decode_batch

    if not data:
        return
    control, stream = data[0], data[1:]
    byte_order = "big" if control & 1 else "little"
    n_entries = TABLE_SIZES[control >> 1 & 3]
    piece = PIECES[control >> 3 & 7] or max(1, len(stream))
    if len(stream) > 256:
        piece = max(piece, 64)

    # the whole buffer at once: what is consumed re-encodes to itself
    try:
        batch, used = decode_batch(stream, byte_order, n_entries=n_entries)
    except HtabError as exc:
        batch, used = exc, None
    else:
        assert 0 <= used <= len(stream) and used % 8 == 0, used
        again = batch.to_bytes(byte_order)
        assert again == bytes(stream[:used]), "decoded records do not re-encode to the bytes consumed"

    # with a table size the decoder may take a vectorised path: it must
    # agree with the record-by-record walk followed by the table check
    if n_entries is not None:
        try:
            walked, walked_used = decode_batch(stream, byte_order)
            walked.check(n_entries)
        except HtabError as exc:
            walked, walked_used = exc, None
        assert (used is None) == (walked_used is None), f"fast path: {batch!r}; walk: {walked!r}"
        if used is not None:
            assert used == walked_used and batch.index.tolist() == walked.index.tolist()
            assert batch.n_valid.tolist() == walked.n_valid.tolist()
            assert batch.n_invalid.tolist() == walked.n_invalid.tolist()
            assert batch.offset.tolist() == walked.offset.tolist()

    # streamed in pieces, events one by one
    dec = RecordDecoder(byte_order, n_entries=n_entries)
    consumed = 0
    try:
        for at in range(0, len(stream), piece):
            dec.receive_data(stream[at : at + piece])
            while (event := dec.next_event()) is not NEED_DATA:
                consumed += 8 + len(event.entries)
        dec.receive_data(b"")
        while (event := dec.next_event()) is not END_OF_STREAM:
            consumed += 8 + len(event.entries)
        assert consumed == len(stream), (consumed, len(stream))
    except HtabError:
        pass


def main(argv=None) -> None:
    from tests.fuzz.corpus import fuzz_main

    fuzz_main("htabtool.records", one_input, argv)


if __name__ == "__main__":
    main()
