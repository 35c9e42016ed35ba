"""Decoding, sans I/O: bytes cut anywhere in, whole records out.

:func:`decode_batch` takes the complete records at the start of a buffer
(without a loop per record where :func:`scan_headers` can vouch for the result,
else with the walk that names the fault); :class:`RecordDecoder` is the
streaming form (``receive_data`` / ``next_event``, as h11), keeping its
input in :class:`htabtool.sansio.ReceiveBuffer` and answering with the
sentinels of :mod:`htabtool.sansio`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from htabtool.errors import StreamError, TruncatedStream
from htabtool.hpte import HPTE_SIZE
from htabtool.records.batch import RecordBatch
from htabtool.records.format import (
    ENTRY_DTYPE,
    HEADER_SIZE,
    Record,
    RecordHeader,
    check_byte_order,
    header_dtype,
)
from htabtool.sansio import END_OF_STREAM, NEED_DATA, ReceiveBuffer


def _walk(n_valid: memoryview, n_words: int) -> tuple[list[int], int]:
    """Word positions of the complete records among ``n_words`` 8-byte words,
    and the word position where the first incomplete one starts.

    ``n_valid[w]`` is the n_valid field of the header at word w (if word w
    is a header).  The walk is sequential by nature (each header says
    where the next one is): one tight step per record.  It is the slow path,
    and the one that finds and names faults."""
    positions: list[int] = []
    append = positions.append
    pos = 0
    while pos < n_words:
        nxt = pos + 1 + 2 * n_valid[pos]
        if nxt > n_words:
            break
        append(pos)
        pos = nxt
    return positions, pos


def scan_headers(headers: np.ndarray, n_words: int, n_entries: int, rounds: int = 64):
    """The walk without a loop per record, where it can vouch for the result.

    Records start at multiples of 8 bytes, and a header at word w says the
    next starts at word w + 1 + 2 * n_valid.  Every header of a sound stream
    has index < n_entries, so the words that do are the candidates.  If the
    candidates are one chain from word 0 (each pointing at the next, the
    last at the end or past it), they are exactly the walk's headers: the
    complete records, and the start of an incomplete last one (or the end).
    Else the false ones are pruned, a layer a round: pointers only go
    forward, so a false candidate is pointed at by nothing but other false
    candidates, and pruning those that no candidate points at (word 0
    excepted) removes them; the first round also drops those that point at
    a word that is no candidate (a header always points at one, or at the
    end).  A record past the table, or data that keeps false candidates
    alive for ``rounds`` rounds (each removes one layer of false chains,
    which in real data run about log2(candidates) long), gives None, and the
    walk decides.  (The idea came with the container's chunk statistics.)

    Masks are compacted with flatnonzero and take: boolean indexing of a
    mask about a third true is several times slower here."""
    is_cand = np.empty(n_words + 1, dtype=bool)
    np.less(headers["index"], n_entries, out=is_cand[:n_words])
    is_cand[n_words] = True  # the end: where the last record points
    cand = np.flatnonzero(is_cand[:n_words])
    if not len(cand) or cand[0] != 0:
        return None
    nxt = headers["n_valid"][cand].astype(np.int64)  # (a field's take is slower than its fancy index)
    nxt *= 2
    nxt += cand
    nxt += 1
    for done in range(rounds + 1):
        found = _chain(cand, nxt, n_words)
        if found is not None:
            return found
        if done == rounds:
            break
        bounded = np.minimum(nxt, n_words)
        pointed = np.zeros(n_words + 1, dtype=bool)
        pointed[bounded] = True
        keep = pointed.take(cand)
        if not done:
            keep &= is_cand.take(bounded)
        keep[0] = True
        kept = np.flatnonzero(keep)
        if len(kept) == len(cand):  # nothing more to prune, and no chain
            break
        cand = cand.take(kept)
        nxt = nxt.take(kept)
    return None


def _chain(cand: np.ndarray, nxt: np.ndarray, n_words: int):
    """scan_headers' answer if ``cand`` is one chain from word 0 to the end
    of ``n_words`` words (or into an incomplete last record), else None."""
    if cand[0] != 0 or not np.array_equal(nxt[:-1], cand[1:]):
        return None
    last = int(nxt[-1])
    if last > n_words:  # the last header starts an incomplete record
        return cand[:-1], int(cand[-1])
    if last < n_words:  # the next header is not a candidate: let the walk name it
        return None
    return cand, n_words


def decode_batch(
    buf,
    byte_order: str,
    *,
    base_offset: int = 0,
    first_record: int = 0,
    n_entries: int | None = None,
    scan_bound: int | None = None,
) -> tuple[RecordBatch, int]:
    """The complete records at the start of ``buf`` and how many bytes they take.

    A trailing partial record is left (not an error here: feed more bytes);
    the caller decides whether the stream may end there.  ``base_offset`` is
    the stream offset of ``buf[0]``, for messages; with ``n_entries`` the
    records are also checked against the table (RecordBatch.check).
    ``scan_bound`` (the table size, without the checks) lets the records be
    found without a loop per record (:func:`scan_headers`); ``n_entries`` does too."""
    check_byte_order(byte_order)
    mv = memoryview(buf).cast("B")
    n_words = len(mv) // 8
    if n_words == 0:
        return RecordBatch.empty(first_record), 0
    all_headers = np.frombuffer(mv, dtype=header_dtype(byte_order), count=n_words)
    bound = scan_bound if scan_bound is not None else n_entries
    scanned = scan_headers(all_headers, n_words, bound) if bound is not None else None
    if scanned is not None:
        pos, end_word = scanned
    else:
        positions, end_word = _walk(all_headers["n_valid"].astype(np.uint16).data, n_words)
        pos = np.asarray(positions, dtype=np.int64)
    headers = all_headers[pos]
    consumed = end_word * 8
    is_entry = np.ones(end_word, dtype=bool)
    is_entry[pos] = False
    entries = np.frombuffer(mv, dtype=ENTRY_DTYPE, count=end_word)[is_entry].reshape(-1, 2)
    batch = RecordBatch(
        offset=pos * 8 + base_offset,
        index=headers["index"].astype(np.int64),
        n_valid=headers["n_valid"].astype(np.int64),
        n_invalid=headers["n_invalid"].astype(np.int64),
        entries=entries,
        first_record=first_record,
        raw=_raw_bytes(mv, consumed),
    )
    if n_entries is not None:
        batch.check(n_entries)
    return batch, consumed


def _raw_bytes(mv: memoryview, n: int) -> bytes:
    """The first ``n`` bytes of ``mv`` as ``bytes``: the viewed object itself
    when it is a ``bytes`` taken whole (immutable, so sharing it is safe),
    else a copy."""
    whole = mv.obj
    if type(whole) is bytes and n == len(whole) and mv.nbytes == n:
        return whole
    return bytes(mv[:n])


class RecordDecoder:
    """A streaming decoder: feed bytes cut anywhere, take whole records.

    >>> dec = RecordDecoder("little")
    >>> dec.receive_data(stream[:5]); dec.next_event()
    NEED_DATA
    >>> dec.receive_data(stream[5:]); dec.receive_data(b"")
    >>> dec.next_event()  # Record(...), then END_OF_STREAM

    With ``n_entries`` every record is checked against the table as the
    kernel's write side would (RecordError names the record and offset)."""

    def __init__(self, byte_order: str, n_entries: int | None = None, *, scan_bound: int | None = None):
        check_byte_order(byte_order)
        self.byte_order = byte_order
        self.n_entries = n_entries
        self.scan_bound = scan_bound
        self._buf = ReceiveBuffer()  # the bytes after the records handed out
        self._records = 0  # records handed out so far
        self._pending: Iterator[Record] | None = None

    @property
    def offset(self) -> int:
        """Bytes of the stream consumed by the records handed out."""
        return self._buf.offset

    @property
    def records(self) -> int:
        return self._records

    def receive_data(self, data: bytes) -> None:
        if self._buf.eof:
            raise StreamError("receive_data after the end of the stream")
        if data:
            self._buf.feed(data)
        else:
            self._buf.eof = True

    def next_batch(self) -> RecordBatch:
        """Every complete record in the buffer (possibly none)."""
        if self._pending is not None:
            raise StreamError("next_batch while next_event has records pending")
        buf = self._buf
        batch, used = decode_batch(
            buf.view(),
            self.byte_order,
            base_offset=buf.offset,
            first_record=self._records,
            n_entries=self.n_entries,
            scan_bound=self.scan_bound,
        )
        if used:
            buf.consume(used)
            self._records += len(batch)
        if buf.eof and buf:
            self._raise_truncated()
        return batch

    def next_event(self):
        """A :class:`Record`, NEED_DATA, or END_OF_STREAM."""
        if self._pending is not None:
            record = next(self._pending, None)
            if record is not None:
                return record
            self._pending = None
        batch = self.next_batch()
        if len(batch):
            self._pending = batch.records()
            return next(self._pending)
        return END_OF_STREAM if self._buf.eof else NEED_DATA

    def close(self) -> None:
        """Declare the end of the stream: a partial record left is an error."""
        self._buf.eof = True
        if self._buf:
            self.next_batch()

    def _raise_truncated(self) -> None:
        have = len(self._buf)
        at = self._buf.offset
        if have < HEADER_SIZE:
            raise TruncatedStream(
                f"truncated record header at offset {at:#x}: need {HEADER_SIZE} bytes, got {have}",
                offset=at,
                record=self._records,
            )
        header = RecordHeader.unpack(self._buf.view(), self.byte_order)
        need = header.n_valid * HPTE_SIZE
        raise TruncatedStream(
            f"truncated record {self._records} at offset {at:#x}: "
            f"need {need} entry bytes, got {have - HEADER_SIZE}",
            offset=at,
            record=self._records,
        )


def iter_batches(chunks, byte_order: str, n_entries: int | None = None) -> Iterator[RecordBatch]:
    """Batches from an iterable of byte chunks cut anywhere; TruncatedStream
    if the last chunk ends inside a record."""
    dec = RecordDecoder(byte_order, n_entries)
    for chunk in chunks:
        if chunk:
            dec.receive_data(chunk)
            batch = dec.next_batch()
            if len(batch):
                yield batch
    dec.receive_data(b"")
    batch = dec.next_batch()
    if len(batch):
        yield batch


def decode_pieces(pieces, byte_order: str, n_entries: int) -> Iterator[tuple[int, RecordBatch]]:
    """(pass number, RecordBatch) from (pass number, bytes) pieces: each
    pass's bytes decoded as one stream (a record may be cut between two of
    its pieces), checked against the table as the kernel's write side would;
    TruncatedStream if a pass ends inside a record."""
    decoders: dict[int, RecordDecoder] = {}
    for number, data in pieces:
        dec = decoders.get(number)
        if dec is None:
            dec = decoders[number] = RecordDecoder(byte_order, n_entries=n_entries)
        dec.receive_data(data)
        yield number, dec.next_batch()
    for dec in decoders.values():
        dec.close()
