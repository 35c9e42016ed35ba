"""The kernel record codec, sans I/O: the format of the KVM_PPC_GET_HTAB_FD fd.

Strategy: nothing here touches a file or an fd.  The encoder turns a table
state into the bytes one ``read(2)`` of the htab fd returns; the decoder
takes bytes cut anywhere and hands out whole records; :func:`apply_batch`
is the write side on a plain table.  Files, fds and QEMU streams sit at the
edges (sources, sinks, the engine).

The format (Documentation/virt/kvm/api.rst, 4.79 KVM_PPC_GET_HTAB_FD, and
struct kvm_get_htab_header in arch/powerpc/include/uapi/asm/kvm.h)::

    struct kvm_get_htab_header {   /* in the host's byte order */
        __u32 index;               /* first entry of the record */
        __u16 n_valid;             /* entries that follow, 16 bytes each */
        __u16 n_invalid;           /* invalid entries after them, not sent */
    };

The rules are today's upstream kernel's (arch/powerpc/kvm/book3s_64_mmu_hv.c,
kvm_htab_read), byte for byte, quirks included:

- The header is in the host's byte order, but the entries are big-endian on
  every host: record_hpte stores them with cpu_to_be64 (and kvm_htab_write
  reads them with be64_to_cpu).  The 2012 patch wrote host-order entries;
  today's kernel does not.  The header byte order is therefore a parameter,
  always explicit, never guessed.
- On later passes the header's index is set *after* the loop that skips
  clean entries (the 2012 patch set it before, naming a clean entry).
- A record is started only while ``nb + 8 + 16 < count`` and a valid entry
  is added only while ``nb + 16 < count``: both strict, so a read never
  fills its buffer to the last byte, and a valid run cut by the budget ends
  its record with n_invalid = 0.
- n_valid and n_invalid are each capped at 0xffff.
- A read that reaches the end of the table returns there; the next read
  starts an incremental pass at index 0.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import numpy as np

from htabtool.errors import RecordError, StreamError, TruncatedStream, UsageError
from htabtool.hpte import HPTE, HPTE_SIZE, HPTE_V_BOLTED, HPTE_V_VALID

HEADER_SIZE = 8
MAX_RUN = 0xFFFF
#: struct kvm_get_htab_header's index is a __u32: it addresses 2**32
#: entries, tables of order 36 (64 GiB) at most.  The kernel allows orders
#: up to 46 (PPC_MAX_HPT_ORDER) and its ``hdr.index = i`` would truncate
#: an index past 2**32 - 1 (QEMU's be32 chunk start too): such a stream
#: cannot say where its records belong, so htabtool refuses those orders
#: (:func:`check_indexable_order`) and never encodes such an index.
MAX_INDEX = 0xFFFFFFFF
MAX_INDEX_ORDER = 36
BYTE_ORDERS = ("little", "big")

#: The kinds of entries an encoder walks over (one uint8 per entry).
KIND_CLEAN = 0  # not modified since last read: skipped on incremental passes
KIND_VALID = 1  # reported with its doublewords in a valid run
KIND_INVALID = 2  # counted in an invalid run

ENTRY_DTYPE = np.dtype(">u8")  # entries: two big-endian doublewords, always
_ROW = np.dtype("V16")  # one entry as bytes: rows are gathered 16 bytes at a time
_UNLIMITED = 1 << 62  # a read budget no table reaches


def check_indexable_order(order: int, what: str = "table order") -> int:
    """``order`` if the record header's 32-bit index can address every entry
    of a table of ``2**(order-4)`` entries; UsageError otherwise."""
    if order > MAX_INDEX_ORDER:
        raise UsageError(
            f"{what} {order} ({1 << (order - 4):,} entries) is above {MAX_INDEX_ORDER}: the record header's "
            f"32-bit index addresses {1 << (MAX_INDEX_ORDER - 4):,} entries at most (the kernel would truncate it)"
        )
    return order


def check_byte_order(byte_order: str) -> str:
    if byte_order not in BYTE_ORDERS:
        raise UsageError(f"byte order must be 'little' or 'big', not {byte_order!r}")
    return byte_order


def _prefix(byte_order: str) -> str:
    return "<" if check_byte_order(byte_order) == "little" else ">"


def header_dtype(byte_order: str) -> np.dtype:
    """struct kvm_get_htab_header as a numpy dtype in the given byte order."""
    p = _prefix(byte_order)
    return np.dtype([("index", p + "u4"), ("n_valid", p + "u2"), ("n_invalid", p + "u2")])


# -- events ---------------------------------------------------------------


@dataclass(frozen=True)
class RecordHeader:
    """One ``struct kvm_get_htab_header``; rejects what cannot be encoded."""

    index: int
    n_valid: int
    n_invalid: int

    def __post_init__(self):
        if not 0 <= self.index <= MAX_INDEX:
            raise StreamError(f"record index {self.index} does not fit in 32 bits")
        for name in ("n_valid", "n_invalid"):
            value = getattr(self, name)
            if not 0 <= value <= MAX_RUN:
                raise StreamError(f"{name} {value} is outside 0..{MAX_RUN}")

    @property
    def end(self) -> int:
        """One past the last entry the record covers."""
        return self.index + self.n_valid + self.n_invalid

    def pack(self, byte_order: str) -> bytes:
        return struct.pack(_prefix(byte_order) + "IHH", self.index, self.n_valid, self.n_invalid)

    @classmethod
    def unpack(cls, data, byte_order: str, offset: int = 0) -> "RecordHeader":
        if len(data) - offset < HEADER_SIZE:
            raise TruncatedStream(
                f"truncated record header at offset {offset:#x}: "
                f"need {HEADER_SIZE} bytes, got {max(0, len(data) - offset)}",
                offset=offset,
            )
        return cls(*struct.unpack_from(_prefix(byte_order) + "IHH", data, offset))


@dataclass(frozen=True)
class Record:
    """One record of the stream: its header, its valid entries, where it stood."""

    index: int
    n_valid: int
    n_invalid: int
    entries: bytes  # n_valid * 16 bytes, big-endian doublewords
    offset: int = 0  # byte offset of the header in the stream
    number: int = 0  # 0-based number of the record in the stream

    def __post_init__(self):
        RecordHeader(self.index, self.n_valid, self.n_invalid)  # validates
        if len(self.entries) != self.n_valid * HPTE_SIZE:
            raise StreamError(
                f"record {self.number} at offset {self.offset:#x}: "
                f"{len(self.entries)} entry bytes for n_valid {self.n_valid}",
                offset=self.offset,
                record=self.number,
            )

    @property
    def header(self) -> RecordHeader:
        return RecordHeader(self.index, self.n_valid, self.n_invalid)

    @property
    def end(self) -> int:
        return self.index + self.n_valid + self.n_invalid

    def hptes(self) -> Iterator[tuple[int, HPTE]]:
        """(table index, decoded entry) for each valid entry."""
        for j, (v, r) in enumerate(struct.iter_unpack(">QQ", self.entries)):
            yield self.index + j, HPTE(v, r)

    def to_bytes(self, byte_order: str) -> bytes:
        return self.header.pack(byte_order) + self.entries


class _Sentinel:
    def __init__(self, name: str):
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: next_event() found no whole record in the buffer: feed more bytes
NEED_DATA = _Sentinel("NEED_DATA")
#: next_event() after receive_data(b"") consumed every record
END_OF_STREAM = _Sentinel("END_OF_STREAM")


# -- batches: many records as numpy arrays ---------------------------------


@dataclass
class RecordBatch:
    """Consecutive records as arrays (the fast path of decoding)."""

    offset: np.ndarray  # int64: stream byte offset of each header
    index: np.ndarray  # int64
    n_valid: np.ndarray  # int64
    n_invalid: np.ndarray  # int64
    entries: np.ndarray  # (E, 2) '>u8': every valid-run entry, in stream order
    first_record: int = 0  # number of the first record in the stream
    raw: bytes | None = field(default=None, repr=False)  # the records' stream bytes, when kept

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def empty(cls, first_record: int = 0) -> "RecordBatch":
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z, z, z, np.zeros((0, 2), dtype=ENTRY_DTYPE), first_record)

    @property
    def end(self) -> np.ndarray:
        return self.index + self.n_valid + self.n_invalid

    @property
    def nbytes(self) -> int:
        """Bytes these records take in the stream."""
        return int(HEADER_SIZE * len(self) + HPTE_SIZE * len(self.entries))

    def entry_index(self) -> np.ndarray:
        """The table index of each entry in :attr:`entries`."""
        return _expand_ranges(self.index, self.n_valid)

    def entry_record(self) -> np.ndarray:
        """The position in this batch of the record each entry belongs to."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.n_valid)

    def records(self) -> Iterator[Record]:
        """The slow path: one :class:`Record` per record."""
        raw = self.entries.tobytes()
        starts = np.concatenate(([0], np.cumsum(self.n_valid))) * HPTE_SIZE
        for k in range(len(self)):
            yield Record(
                int(self.index[k]),
                int(self.n_valid[k]),
                int(self.n_invalid[k]),
                raw[starts[k] : starts[k + 1]],
                int(self.offset[k]),
                self.first_record + k,
            )

    def stats(self) -> tuple | None:
        """(records, first index, end index, valid, invalid): :func:`record_stats`."""
        return record_stats(self.index, self.n_valid, self.n_invalid)

    def to_bytes(self, byte_order: str) -> bytes:
        """The records back in stream form (headers in ``byte_order``)."""
        return _layout(self.index, self.n_valid, self.n_invalid, self.entries, byte_order)

    def check(self, n_entries: int) -> None:
        """The kernel's write-side checks (kvm_htab_write) on every record:
        index past the table, index + n_valid + n_invalid past the table, a
        valid-run entry without HPTE_V_VALID.  Raises :class:`RecordError`
        naming the first bad record and its byte offset."""
        bad = (self.index >= n_entries) | (self.end > n_entries)
        if bad.any():
            k = int(np.argmax(bad))
            what = (
                f"index {int(self.index[k])} is past the table of {n_entries} entries"
                if self.index[k] >= n_entries
                else f"entries {int(self.index[k])}..{int(self.end[k]) - 1} run past the table of "
                f"{n_entries} entries"
            )
            raise self._error(k, what)
        if len(self.entries):
            # the valid bit is the lowest bit of byte 7 of a big-endian doubleword
            lacking = (self.entries.view(np.uint8)[:, 7] & HPTE_V_VALID) == 0
            if lacking.any():
                e = int(np.argmax(lacking))
                k = int(np.searchsorted(np.cumsum(self.n_valid), e, side="right"))
                j = e - int(np.sum(self.n_valid[:k]))
                raise self._error(
                    k, f"entry {int(self.index[k]) + j} of the valid run lacks HPTE_V_VALID"
                )

    def _error(self, k: int, what: str) -> RecordError:
        number = self.first_record + k
        offset = int(self.offset[k])
        return RecordError(f"record {number} at offset {offset:#x}: {what}", offset=offset, record=number)


def record_stats(index, n_valid, n_invalid) -> tuple | None:
    """(records, first index, end index, valid, invalid) of some records, as
    a snapshot's chunk descriptor states them (None for no record)."""
    if not len(index):
        return None
    end = index + n_valid + n_invalid
    return len(index), int(index.min()), int(end.max()), int(n_valid.sum()), int(n_invalid.sum())


def _expand_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """concatenate(arange(s, s + n) for s, n in zip(starts, lengths)), vectorised."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    firsts = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - firsts, lengths) + np.arange(total, dtype=np.int64)


# -- decoding ---------------------------------------------------------------


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


def _scan(headers: np.ndarray, n_words: int, n_entries: int, rounds: int = 64):
    """The walk without a loop per record, where it can vouch for the result.

    Records start at multiples of 8 bytes, and a header at word w says the
    next starts at word w + 1 + 2 * n_valid.  Every header of a sound stream
    has index < n_entries, so the words that do are the candidates.  Pointers
    only go forward, so a false candidate is pointed at by nothing but other
    false candidates, and pruning the candidates no candidate points at
    (word 0 excepted) removes them, a layer a round.  When nothing more is
    pruned and the rest is one chain from word 0, it is exactly the chain of
    headers: the complete records, and the start of an incomplete last one
    (or the end).  Anything else (a record past the table, data that keeps
    false candidates alive for ``rounds`` rounds: each round removes one layer
    of false chains, which in real data run about log2(candidates) long) gives None, and the walk
    decides.  (The idea came with the container's chunk statistics.)"""
    cand = np.flatnonzero(headers["index"] < n_entries)
    if not len(cand) or cand[0] != 0:
        return None
    nxt = headers["n_valid"][cand].astype(np.int64)
    nxt *= 2
    nxt += cand
    nxt += 1
    for _ in range(rounds):
        pointed = np.zeros(n_words + 1, dtype=bool)
        pointed[np.minimum(nxt, n_words)] = True
        keep = pointed[cand]
        keep[0] = True
        if keep.all():
            break
        cand = cand[keep]
        nxt = nxt[keep]
    else:
        return None
    if not np.array_equal(nxt[:-1], cand[1:]):
        return None
    if nxt[-1] > n_words:  # the last header starts an incomplete record
        return cand[:-1], int(cand[-1])
    if nxt[-1] < n_words:  # the next header is not a candidate: let the walk name it
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
    found without a loop per record (:func:`_scan`); ``n_entries`` does too."""
    check_byte_order(byte_order)
    mv = memoryview(buf).cast("B")
    n_words = len(mv) // 8
    if n_words == 0:
        return RecordBatch.empty(first_record), 0
    all_headers = np.frombuffer(mv, dtype=header_dtype(byte_order), count=n_words)
    bound = scan_bound if scan_bound is not None else n_entries
    scanned = _scan(all_headers, n_words, bound) if bound is not None else None
    if scanned is not None:
        pos, end_word = scanned
    else:
        positions, end_word = _walk(memoryview(all_headers["n_valid"].astype(np.uint16)), n_words)
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
        raw=bytes(mv[:consumed]),
    )
    if n_entries is not None:
        batch.check(n_entries)
    return batch, consumed


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
        self._buf = bytearray()
        self._offset = 0  # stream offset of _buf[0]
        self._records = 0  # records handed out so far
        self._eof = False
        self._pending: Iterator[Record] | None = None

    @property
    def offset(self) -> int:
        """Bytes of the stream consumed by the records handed out."""
        return self._offset

    @property
    def records(self) -> int:
        return self._records

    def receive_data(self, data: bytes) -> None:
        if self._eof:
            raise StreamError("receive_data after the end of the stream")
        if data:
            self._buf += data
        else:
            self._eof = True

    def next_batch(self) -> RecordBatch:
        """Every complete record in the buffer (possibly none)."""
        if self._pending is not None:
            raise StreamError("next_batch while next_event has records pending")
        batch, used = decode_batch(
            self._buf,
            self.byte_order,
            base_offset=self._offset,
            first_record=self._records,
            n_entries=self.n_entries,
            scan_bound=self.scan_bound,
        )
        if used:
            del self._buf[:used]
            self._offset += used
            self._records += len(batch)
        if self._eof and self._buf:
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
        return END_OF_STREAM if self._eof else NEED_DATA

    def close(self) -> None:
        """Declare the end of the stream: a partial record left is an error."""
        self._eof = True
        if self._buf:
            self.next_batch()

    def _raise_truncated(self) -> None:
        have = len(self._buf)
        at = self._offset
        if have < HEADER_SIZE:
            raise TruncatedStream(
                f"truncated record header at offset {at:#x}: need {HEADER_SIZE} bytes, got {have}",
                offset=at,
                record=self._records,
            )
        header = RecordHeader.unpack(self._buf, self.byte_order)
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


def pass_starts(batch: RecordBatch, previous_end: int) -> np.ndarray:
    """Positions in ``batch`` of records that begin a new pass: the one rule
    by which passes are found wherever records arrive without their pass
    marked (raw streams, QEMU's parts, a snapshot's first pass checked,
    verify, the write side's runs).

    A pass is what the kernel's fd means by one: a sweep of the table from
    where it starts to its end.  Within a pass the kernel emits records in
    ascending, disjoint order and every pass after the first starts again
    at index 0, so a record whose index is below the end of the record
    before it (``previous_end`` for the first of the batch) begins a new
    pass: the records wrap round.  A stream cannot show every wrap: a later
    pass whose first record lies at or beyond where the pass before it
    ended reads as that pass's continuation (applied in order they give the
    same table)."""
    return wrap_starts(batch.index, batch.end, previous_end)


def wrap_starts(index: np.ndarray, end: np.ndarray, previous_end: int = 0) -> np.ndarray:
    """:func:`pass_starts` on plain arrays (records' first indexes and ends)."""
    if not len(index):
        return np.zeros(0, dtype=np.int64)
    before = np.concatenate(([previous_end], end[:-1]))
    return np.flatnonzero(index < before)


def split_passes(batch: RecordBatch, pass_number: int, previous_end: int) -> tuple[list[tuple[int, bytes]], int, int]:
    """Cut a batch (with its raw bytes) where passes begin.

    Returns ``[(pass number, records bytes), ...]`` and the pass number and
    previous end to carry into the next batch."""
    pieces, pass_number, previous_end = split_passes_stated(batch, pass_number, previous_end)
    return [(number, data) for number, data, _ in pieces], pass_number, previous_end


def split_passes_stated(batch: RecordBatch, pass_number: int, previous_end: int):
    """:func:`split_passes` with each piece's statistics: ``[(pass number,
    records bytes, (records, first index, end index, valid, invalid)), ...]``
    (within a pass records ascend, so the first index is the first
    record's and the end the last one's)."""
    if not len(batch):
        return [], pass_number, previous_end
    starts = pass_starts(batch, previous_end)
    base = int(batch.offset[0])
    bounds = [0, *starts.tolist(), len(batch)]
    offsets = [0] + [int(batch.offset[k]) - base for k in starts] + [len(batch.raw)]
    # the running sums at the bounds only (a batch holds tens of thousands of records)
    valid = np.concatenate(([0], np.cumsum(batch.n_valid)))[bounds].tolist()
    invalid = np.concatenate(([0], np.cumsum(batch.n_invalid)))[bounds].tolist()
    ends = batch.end
    pieces = []
    for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        if b > a:
            stats = (b - a, int(batch.index[a]), int(ends[b - 1]), valid[n + 1] - valid[n], invalid[n + 1] - invalid[n])
            pieces.append((pass_number + n, batch.raw[offsets[n] : offsets[n + 1]], stats))
    return pieces, pass_number + len(starts), int(ends[-1])


# -- the write side on a plain table ---------------------------------------


def new_table(n_entries: int) -> np.ndarray:
    """An empty table state: (n_entries, 2) big-endian doublewords, all zero."""
    return np.zeros((n_entries, 2), dtype=ENTRY_DTYPE)


def apply_batch(table: np.ndarray, batch: RecordBatch) -> None:
    """Apply records to a table state as the kernel's write side places them:
    n_valid entries from the header index, then n_invalid slots invalidated
    (zeroed here).  Every record of the batch is checked first (RecordError),
    so a bad batch changes nothing.  Records apply in stream order; runs of
    ascending, disjoint records (a pass) are applied at once."""
    n = len(table)
    batch.check(n)
    if not len(batch):
        return
    # split where the records wrap round (a new pass): each run ascends
    bounds = np.concatenate(([0], pass_starts(batch, 0), [len(batch)]))
    entry_bounds = np.concatenate(([0], np.cumsum(batch.n_valid)))
    for a, b in zip(bounds[:-1], bounds[1:]):
        idx = batch.index[a:b]
        nv = batch.n_valid[a:b]
        ni = batch.n_invalid[a:b]
        ents = batch.entries[entry_bounds[a] : entry_bounds[b]]
        table[_expand_ranges(idx, nv)] = ents
        has_inv = ni > 0
        if has_inv.any():
            s = (idx + nv)[has_inv]
            e = s + ni[has_inv]
            lo, hi = int(s[0]), int(e[-1])
            marks = np.bincount(s - lo, minlength=hi - lo + 1) - np.bincount(e - lo, minlength=hi - lo + 1)
            table[lo:hi][np.cumsum(marks[: hi - lo]) > 0] = 0


# -- encoding ---------------------------------------------------------------


class TableSource(Protocol):
    """What an encoder walks over: a table and which entries to report."""

    n_entries: int

    def kinds(self, lo: int, hi: int, first_pass: bool) -> np.ndarray:
        """uint8 kind of entries lo..hi-1: KIND_VALID / KIND_INVALID on the
        first pass; on later passes KIND_CLEAN for entries not modified."""

    def words(self, lo: int, hi: int, rows: np.ndarray | None = None) -> np.ndarray:
        """(len(rows), 2) '>u8': the doublewords reported for entries lo + rows
        (rows: sorted, relative to lo, all in valid runs; None: lo..hi-1)."""

    # optional: ``later_rows(lo, limit)`` -> (rows, kinds, hi) or None: a
    # later pass's dirty entries from lo on, without a scan (see
    # htabtool.sim.readview.HptSource.later_rows); the planner then costs what changed


class StaticTable:
    """A plain table state as a :class:`TableSource`.

    ``table``: (N, 2) '>u8'; an entry is valid when HPTE_V_VALID is set in
    its first doubleword.  ``changed``: a bool mask of the entries an
    incremental pass reports (None: none changed).  ``bolted_only``: entries
    without HPTE_V_BOLTED count as invalid, as KVM_GET_HTAB_BOLTED_ONLY."""

    def __init__(self, table: np.ndarray, changed: np.ndarray | None = None, bolted_only: bool = False):
        if table.ndim != 2 or table.shape[1] != 2:
            raise UsageError("a table is an (N, 2) array of doublewords")
        self.table = table
        self.n_entries = len(table)
        self.changed = changed
        self.bolted_only = bolted_only

    def kinds(self, lo: int, hi: int, first_pass: bool) -> np.ndarray:
        low_byte = self.table[lo:hi].view(np.uint8)[:, 7]  # lowest byte of big-endian v
        valid = (low_byte & HPTE_V_VALID) != 0
        if self.bolted_only:
            valid &= (low_byte & HPTE_V_BOLTED) != 0
        kinds = np.where(valid, np.uint8(KIND_VALID), np.uint8(KIND_INVALID))
        if not first_pass:
            if self.changed is None:
                kinds[:] = KIND_CLEAN
            else:
                kinds[~self.changed[lo:hi]] = KIND_CLEAN
        return kinds

    def words(self, lo: int, hi: int, rows: np.ndarray | None = None) -> np.ndarray:
        part = self.table[lo:hi]
        if rows is None:
            return part
        return np.ascontiguousarray(part).view(_ROW)[:, 0][rows].view(ENTRY_DTYPE).reshape(-1, 2)

    def mark_read(self, result: "ReadResult") -> None:
        """Clear the changed marks of the entries a read reported, as the
        kernel clears HPTE_GR_MODIFIED (the entries of its records)."""
        if self.changed is not None and len(result.index):
            self.changed[_expand_ranges(result.index, result.end - result.index)] = False


def plan_records(kinds: np.ndarray, base: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The records the kernel cuts from ``kinds`` (entries base, base+1, ...)
    with no byte budget: each a run of valid entries and the run of invalid
    ones after it, clean entries skipped, each count capped at 0xffff.

    Returns (index, n_valid, n_invalid) as int64 arrays, in table order."""
    n = len(kinds)
    if n == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    change = np.flatnonzero(kinds[1:] != kinds[:-1])
    starts = np.empty(len(change) + 1, dtype=np.int64)
    starts[0] = 0
    np.add(change, 1, out=starts[1:])
    lengths = np.diff(starts, append=n)
    run_kind = kinds[starts]
    if len(starts) > 1 and lengths.max() <= MAX_RUN and run_kind.min() != KIND_CLEAN:
        # the common first pass: valid and invalid runs alternate, none
        # needs cutting, so each valid run and the invalid run after it are
        # a record (and a leading invalid run is one alone)
        lead = int(run_kind[0] != KIND_VALID)
        index = starts[lead::2]
        n_valid = lengths[lead::2]
        n_invalid = np.zeros(len(index), dtype=np.int64)
        after = lengths[lead + 1 :: 2]
        n_invalid[: len(after)] = after
        if lead:
            index = np.concatenate((starts[:1], index))
            n_valid = np.concatenate(([0], n_valid))
            n_invalid = np.concatenate((lengths[:1], n_invalid))
        return index + base, n_valid, n_invalid
    if lengths.max() <= MAX_RUN:
        # a later pass: clean runs between, none needs cutting; a record is
        # a valid run with the invalid run right after it, or an invalid run
        # right after a clean one (or at the start)
        is_v = run_kind == KIND_VALID
        is_i = run_kind == KIND_INVALID
        after_v = np.zeros(len(starts), dtype=bool)
        after_v[1:] = is_v[:-1]
        rec = np.flatnonzero(is_v | (is_i & ~after_v))
        v_rec = is_v[rec]
        nxt = np.minimum(rec + 1, len(starts) - 1)
        joined = v_rec & is_i[nxt] & (nxt > rec)
        n_valid = np.where(v_rec, lengths[rec], 0)
        n_invalid = np.where(v_rec, np.where(joined, lengths[nxt], 0), lengths[rec])
        return starts[rec] + base, n_valid, n_invalid
    # cut every run into pieces of at most MAX_RUN entries
    pieces = (lengths + MAX_RUN - 1) // MAX_RUN
    p_run = np.repeat(np.arange(len(starts)), pieces)
    p_j = np.arange(len(p_run)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    p_start = starts[p_run] + p_j * MAX_RUN
    p_len = np.minimum(MAX_RUN, lengths[p_run] - p_j * MAX_RUN)
    p_kind = run_kind[p_run]
    p_first = p_j == 0
    p_last = p_j == pieces[p_run] - 1
    # a valid run's last piece takes the first piece of the invalid run after it
    is_v = p_kind == KIND_VALID
    is_i = p_kind == KIND_INVALID
    nxt_i_first = np.zeros(len(p_run), dtype=bool)
    nxt_i_first[:-1] = is_i[1:] & p_first[1:]
    merge = is_v & p_last & nxt_i_first
    absorbed = np.zeros(len(p_run), dtype=bool)
    absorbed[1:] = merge[:-1]
    keep = (is_v | is_i) & ~absorbed
    nxt_len = np.zeros(len(p_run), dtype=np.int64)
    nxt_len[:-1] = p_len[1:]
    index = p_start[keep] + base
    n_valid = np.where(is_v, p_len, 0)[keep]
    n_invalid = np.where(is_v, np.where(merge, nxt_len, 0), p_len)[keep]
    return index.astype(np.int64), n_valid.astype(np.int64), n_invalid.astype(np.int64)


def plan_sparse_records(rows: np.ndarray, kinds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`plan_records` for a table given by its reported entries alone:
    ``rows`` (sorted) of kinds ``kinds`` (KIND_VALID or KIND_INVALID), every
    other entry clean.  The same records, at the cost of len(rows): the
    entries are planned packed, one clean entry standing for each gap."""
    n = len(rows)
    if n == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    rows = np.asarray(rows, dtype=np.int64)
    gap_after = rows[1:] != rows[:-1] + 1
    pos = np.arange(n, dtype=np.int64)
    pos[1:] += np.cumsum(gap_after)  # each gap before an entry moves it one place on
    packed = np.zeros(int(pos[-1]) + 1, dtype=np.uint8)  # KIND_CLEAN in the gaps
    packed[pos] = kinds
    where = np.zeros(len(packed), dtype=np.int64)
    where[pos] = rows
    index, n_valid, n_invalid = plan_records(packed)
    return where[index], n_valid, n_invalid


class ReadResult:
    """What one kvm_htab_read() returned and where it left the fd.

    ``reported`` is how many entries its records cover (the sum of n_valid
    and n_invalid).  The records' arrays are built on first use: a burst of
    reads (:func:`encode_reads`) hands out thousands of results whose arrays
    nobody asks for."""

    __slots__ = ("data", "next_index", "wrapped", "reported", "stats", "_parts", "_arrays")

    def __init__(self, data: bytes, next_index: int, wrapped: bool, reported: int, stats: tuple | None = None, *,
                 arrays=None, parts=()):
        self.data = data
        self.next_index = next_index
        self.wrapped = wrapped  # reached the end of the table: the next read starts a new pass at 0
        self.reported = reported
        # (records, first index, end of the last record, valid, invalid); None when no record
        self.stats = stats
        self._arrays = arrays  # (index, n_valid, n_invalid, entries)
        self._parts = parts  # or the pieces of laid-out windows they come from

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return (f"ReadResult({len(self.data)} bytes, next_index={self.next_index}, wrapped={self.wrapped}, "
                f"reported={self.reported})")

    @property
    def index(self) -> np.ndarray:
        """The first entry of each record emitted (the last may be cut by the budget)."""
        return self._build()[0]

    @property
    def n_valid(self) -> np.ndarray:
        return self._build()[1]

    @property
    def n_invalid(self) -> np.ndarray:
        return self._build()[2]

    @property
    def entries(self) -> np.ndarray:
        """(E, 2) '>u8': the entries emitted."""
        return self._build()[3]

    @property
    def end(self) -> np.ndarray:
        return self.index + self.n_valid + self.n_invalid

    def _build(self):
        if self._arrays is None:
            cols: list[list] = [[], [], [], []]
            for part in self._parts:
                if len(part) == 3:  # whole records a..b-1 of a window
                    w, a, b = part
                    cols[0].append(w.idx[a:b])
                    cols[1].append(w.nv[a:b])
                    cols[2].append(w.ni[a:b])
                    cols[3].append(w.words[int(w.woff[a]) : int(w.woff[b])])
                else:  # one record made here (a run cut by the budget, or its rest)
                    index, nv, ni, w, wo = part
                    cols[0].append(np.array([index], dtype=np.int64))
                    cols[1].append(np.array([nv], dtype=np.int64))
                    cols[2].append(np.array([ni], dtype=np.int64))
                    cols[3].append(w.words[wo : wo + nv])
            z = np.zeros(0, dtype=np.int64)
            self._arrays = (
                np.concatenate(cols[0]) if cols[0] else z,
                np.concatenate(cols[1]) if cols[1] else z,
                np.concatenate(cols[2]) if cols[2] else z,
                # concatenate raw words: numpy would turn big-endian arrays into native ones
                (np.concatenate(cols[3]) if cols[3] else np.zeros((0, 2), dtype=np.uint64)).view(ENTRY_DTYPE),
            )
            self._parts = ()
        return self._arrays


def _header_words(index, n_valid, n_invalid, byte_order: str) -> np.ndarray:
    """The headers as 8-byte words (their bytes as the stream has them).
    An index that a __u32 cannot hold is refused, never let into n_valid."""
    index = np.asarray(index, dtype=np.int64)
    if len(index) and int(index.max()) > MAX_INDEX:
        k = int(np.argmax(index > MAX_INDEX))
        raise StreamError(
            f"record index {int(index[k])} does not fit the header's 32-bit index: "
            f"tables of order {MAX_INDEX_ORDER} ({1 << (MAX_INDEX_ORDER - 4):,} entries) at most"
        )
    if byte_order == "little":  # index, n_valid, n_invalid from the lowest byte up
        value = index | (np.asarray(n_valid, dtype=np.int64) << 32) | (np.asarray(n_invalid, dtype=np.int64) << 48)
        return value.astype("<u8").view(np.uint64)
    value = (index << 32) | (np.asarray(n_valid, dtype=np.int64) << 16) | np.asarray(n_invalid, dtype=np.int64)
    return value.astype(">u8").view(np.uint64)


def _layout_words(index, n_valid, n_invalid, entries, byte_order: str, header_pos=None) -> np.ndarray:
    """Headers and entries interleaved, as 8-byte words, without a loop: the
    stream is a sequence of words, one per header and two per entry, and
    entries appear in the same order as their records.  ``header_pos``: the
    word position of each header, when the caller has it."""
    r = len(index)
    if r == 0:
        return np.zeros(0, dtype=np.uint64)
    n_words = r + 2 * len(entries)
    if header_pos is None:
        header_pos = np.arange(r, dtype=np.int64) + 2 * (np.cumsum(n_valid) - n_valid)
    out = np.empty(n_words, dtype=np.uint64)
    is_entry = np.ones(n_words, dtype=bool)
    is_entry[header_pos] = False
    out[header_pos] = _header_words(index, n_valid, n_invalid, byte_order)
    out[is_entry] = np.ascontiguousarray(entries).view(np.uint64).reshape(-1)
    return out


def _layout(index, n_valid, n_invalid, entries, byte_order: str) -> bytes:
    """The records as stream bytes (see :func:`_layout_words`)."""
    return _layout_words(index, n_valid, n_invalid, entries, byte_order).tobytes()


class _Planner:
    """The records of the table from a position on, planned a window at a
    time (:func:`plan_records`) and kept with their entries' doublewords.

    A read (:func:`encode_read`) takes records from it with :meth:`chunk`;
    a burst of reads (:func:`encode_reads`) plans each window once
    (:meth:`_plan`) and lays it out (:class:`_Window`) for all the reads it
    feeds.  That is sound because nothing changes the table between the
    reads of a burst but the reads' own side effects, and those touch only
    entries before the next read's start."""

    def __init__(self, source: TableSource, first_pass: bool, window: int, count: int):
        self.source = source
        self.first_pass = first_pass
        self.window = window
        self.sparse = count // 2  # a window that yields fewer bytes makes the next one larger
        self.n = source.n_entries
        self.lo = self.resume = -1
        z = np.zeros(0, dtype=np.int64)
        self.idx, self.nv, self.ni = z, z, z
        self.words = np.zeros((0, 2), dtype=np.uint64)
        self.woff = np.zeros(1, dtype=np.int64)

    def chunk(self, scan: int, limit: int):
        """(index, n_valid, n_invalid, raw words of their valid entries,
        resume): at most ``limit`` of the records the kernel makes from
        ``scan`` on, as far as they are planned; they go on at ``resume``."""
        if self.lo <= scan < self.resume:
            got = self._from_plan(scan, limit)
            if got is not None:
                return got
        self._plan(scan)
        return self._from_plan(scan, limit)

    def _from_plan(self, scan: int, limit: int):
        idx, nv, ni, woff = self.idx, self.nv, self.ni, self.woff
        k = int(np.searchsorted(idx, scan, side="right")) - 1
        head = None
        if k >= 0 and scan < idx[k] + nv[k] + ni[k]:
            if scan == idx[k]:
                start = k
            elif scan < idx[k] + nv[k] and nv[k] < MAX_RUN:
                # the rest of a valid run the previous read cut short (a run
                # piece shorter than the cap ends where the run ends)
                start = k + 1
                head = (scan, int(idx[k] + nv[k] - scan), int(ni[k]), int(woff[k] + scan - idx[k]))
            else:
                return None
        else:
            start = k + 1  # scan is in a clean gap before record k + 1
        stop = min(len(idx), start + limit)
        resume = int(idx[stop]) if stop < len(idx) else self.resume
        s_idx, s_nv, s_ni = idx[start:stop], nv[start:stop], ni[start:stop]
        w0 = int(woff[start])
        if head is not None:
            s_idx = np.concatenate(([head[0]], s_idx))
            s_nv = np.concatenate(([head[1]], s_nv))
            s_ni = np.concatenate(([head[2]], s_ni))
            w0 = head[3]
        return s_idx, s_nv, s_ni, self.words[w0 : int(woff[stop])], resume

    def _plan(self, scan: int) -> None:
        n = self.n
        # a later pass over a source that knows which entries may be dirty
        later_rows = None if self.first_pass else getattr(self.source, "later_rows", None)
        while True:
            lo, hi = scan, min(n, scan + self.window)
            got = later_rows(lo, self.window) if later_rows else None
            if got is not None:
                rows, kinds, hi = got
                idx, nv, ni = plan_sparse_records(rows, kinds)
            else:
                idx, nv, ni = plan_records(self.source.kinds(lo, hi, self.first_pass), lo)
            if hi < n:
                trusted = int(np.searchsorted(idx + nv + ni, hi, side="left"))  # records ending before hi
                resume = int(idx[trusted]) if trusted < len(idx) else hi
            else:
                trusted, resume = len(idx), n
            if trusted or resume > lo:
                break
            self.window *= 2  # one record is longer than the window
        idx, nv, ni = idx[:trusted], nv[:trusted], ni[:trusted]
        if nv.sum():
            rows = _expand_ranges(idx - lo, nv)
            self.words = np.asarray(self.source.words(lo, hi, rows), dtype=ENTRY_DTYPE).view(np.uint64)
        else:
            self.words = np.zeros((0, 2), dtype=np.uint64)
        self.idx, self.nv, self.ni = idx, nv, ni
        self.woff = np.concatenate(([0], np.cumsum(nv)))
        self.lo, self.resume = lo, resume
        if HEADER_SIZE * len(idx) + HPTE_SIZE * int(self.woff[-1]) < self.sparse:
            self.window = min(self.window * 2, 1 << 22)  # sparse (an incremental pass): look further at once


def encode_read(
    source: TableSource, start: int, first_pass: bool, count: int, byte_order: str
) -> ReadResult:
    """Exactly one ``read(2)`` of ``count`` bytes on the htab fd (kvm_htab_read).

    Takes the records the kernel makes from ``start`` on (planned a window
    at a time) and fits them to the budget with the kernel's strict rules:
    a record starts only while a header and one entry fit strictly inside
    what is left, a valid run is cut where the next entry would not."""
    check_byte_order(byte_order)
    n = source.n_entries
    planner = _Planner(source, first_pass, max(4096, min(1 << 22, count // 8)), count)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    words: list[np.ndarray] = []
    nb = 0  # bytes of the read so far
    i = start  # the fd's index: one past the last record emitted
    scan = start  # where the records go on (clean entries in between)
    wrapped = False
    while nb + HEADER_SIZE + HPTE_SIZE < count:
        if scan >= n:
            # nothing more to report: the kernel skips to the end, emits
            # nothing, and wraps
            wrapped = True
            break
        # a record takes 8 bytes at least: more than count // 8 never fit
        idx, nv, ni, w, resume = planner.chunk(scan, count // HEADER_SIZE + 1)
        # byte offset of each record's header, and the budget rules
        b = nb + np.concatenate(([0], np.cumsum(HEADER_SIZE + HPTE_SIZE * nv)))
        stop = b[:-1] + HEADER_SIZE + HPTE_SIZE >= count
        fit = (count - b[:-1] - HEADER_SIZE - HPTE_SIZE + HPTE_SIZE - 1) // HPTE_SIZE
        cut = ~stop & (nv > fit)
        over = stop | cut
        if over.any():
            k = int(np.argmax(over))
            take = k + 1 if cut[k] else k
            nv = nv[:take].copy()
            ni = ni[:take].copy()
            if cut[k]:
                nv[k] = fit[k]
                ni[k] = 0
            idx = idx[:take]
            if take:
                i = int(idx[-1] + nv[-1] + ni[-1])
                parts.append((idx, nv, ni))
                words.append(w[: int(nv.sum())])
            nb = int(b[0] + HEADER_SIZE * take + HPTE_SIZE * nv.sum())
            break
        if len(idx):
            parts.append((idx, nv, ni))
            words.append(w[: int(nv.sum())])
        nb = int(b[-1])
        if len(idx):
            i = int(idx[-1] + nv[-1] + ni[-1])
            if i >= n:
                wrapped = True
                break
        scan = resume
    if wrapped:
        i = 0
    index = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    n_valid = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    n_invalid = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    # concatenate raw words: numpy would turn big-endian arrays into native ones
    entries = (np.concatenate(words) if words else np.zeros((0, 2), dtype=np.uint64)).view(ENTRY_DTYPE)
    data = _layout(index, n_valid, n_invalid, entries, byte_order)
    assert len(data) == nb, (len(data), nb)
    stats = record_stats(index, n_valid, n_invalid)
    reported = stats[3] + stats[4] if stats else 0
    return ReadResult(data, i, wrapped, reported, stats, arrays=(index, n_valid, n_invalid, entries))


class _Window:
    """One planned window's records laid out as the stream one unbounded
    read would return (headers in the fd's byte order), with the byte offset
    of every header: the reads of a burst are slices of it."""

    __slots__ = ("idx", "nv", "ni", "words", "woff", "off", "cum", "data", "resume", "n")

    def __init__(self, planner: _Planner, byte_order: str):
        self.idx, self.nv, self.ni, self.words = planner.idx, planner.nv, planner.ni, planner.words
        self.resume = planner.resume
        self.n = len(self.idx)
        self.woff = planner.woff  # first entry of each record in words, and the end
        pos = np.arange(self.n + 1, dtype=np.int64)
        pos += 2 * self.woff  # the word position of each header, and the end
        self.off = pos * 8
        self.cum = np.concatenate(([0], np.cumsum(self.nv + self.ni)))  # entries covered before each record
        words = _layout_words(self.idx, self.nv, self.ni, self.words, byte_order, pos[:-1])
        self.data = memoryview(words).cast("B")


def encode_reads(
    source: TableSource, start: int, first_pass: bool, count: int, byte_order: str, *, window: int = 1 << 16
) -> Iterator[ReadResult]:
    """Successive reads of ``count`` bytes, exactly as :func:`encode_read`
    one after another, until one reaches the end of the table or returns
    nothing: a burst.  The table is planned and laid out a window at a time
    (:class:`_Window`) and each read is cut from that layout by the kernel's
    budget rules: whole records are a slice, and only where the budget cuts
    a valid run is a header made anew (the cut record, n_invalid 0, and the
    rest of the run starting the next read).  No numpy call per record or
    per entry, only a few per read.

    The caller applies each read's side effects (if any) before asking for
    the next, or later: nothing else may change the table during the burst,
    and a read's side effects touch only entries before the next read's
    start."""
    check_byte_order(byte_order)
    pack = struct.Struct(_prefix(byte_order) + "IHH").pack
    n = source.n_entries
    planner = _Planner(source, first_pass, max(window, count // 8), count)
    w: _Window | None = None
    k = 0  # the next whole record of w
    head = None  # (index, n_valid, n_invalid, byte offset, word offset): the rest of a run cut by the last read
    scan = start  # where the records go on when w is None
    i = start  # the fd's index
    limit = count - HEADER_SIZE - HPTE_SIZE  # a record starts while nb < limit
    while True:
        pieces: list = []
        parts: list = []
        nb = reported = valid = records = 0
        first = i
        wrapped = False
        while nb < limit:
            if head is not None:
                h_index, rest, h_ni, boff, wo = head
                fit = (limit - nb + HPTE_SIZE - 1) // HPTE_SIZE  # entries the budget takes (>= 1)
                if not records:
                    first = h_index
                records += 1
                if rest > fit:
                    pieces += (pack(h_index, fit, 0), w.data[boff : boff + HPTE_SIZE * fit])
                    parts.append((h_index, fit, 0, w, wo))
                    head = (h_index + fit, rest - fit, h_ni, boff + HPTE_SIZE * fit, wo + fit)
                    nb += HEADER_SIZE + HPTE_SIZE * fit
                    reported += fit
                    valid += fit
                    i = h_index + fit
                    break
                pieces += (pack(h_index, rest, h_ni), w.data[boff : boff + HPTE_SIZE * rest])
                parts.append((h_index, rest, h_ni, w, wo))
                head = None
                k += 1
                nb += HEADER_SIZE + HPTE_SIZE * rest
                reported += rest + h_ni
                valid += rest
                i = h_index + rest + h_ni
                if i >= n:
                    wrapped = True
                    break
                continue
            while w is None or k >= w.n:
                nxt = scan if w is None else w.resume
                if nxt >= n:
                    break
                planner._plan(nxt)
                w, k = _Window(planner, byte_order), 0
            if w is None or k >= w.n:
                # nothing more to report: the kernel skips to the end, emits
                # nothing, and wraps
                wrapped = True
                break
            at_k = int(w.off[k])
            base = at_k - nb  # where this read's byte 0 would be in w.data
            if not records:
                first = int(w.idx[k])
            # the records that start within the budget: k .. j-1 (j > k)
            j = min(w.n, int(w.off.searchsorted(base + limit, "left")))
            last = j - 1
            after = int(w.off[j]) - base
            if after < count:  # the last one fits whole (its last entry is added while nb + 16 < count)
                pieces.append(w.data[at_k : int(w.off[j])])
                parts.append((w, k, j))
                reported += int(w.cum[j] - w.cum[k])
                valid += int(w.woff[j] - w.woff[k])
                records += j - k
                nb = after
                i = int(w.idx[last] + w.nv[last] + w.ni[last])
                k = j
                if i >= n:
                    wrapped = True
                    break
                continue
            # the budget cuts the valid run of record `last`
            at = int(w.off[last])
            fit = (limit - (at - base) + HPTE_SIZE - 1) // HPTE_SIZE
            index, nv, wo = int(w.idx[last]), int(w.nv[last]), int(w.woff[last])
            pieces += (w.data[at_k:at], pack(index, fit, 0), w.data[at + HEADER_SIZE : at + HEADER_SIZE + HPTE_SIZE * fit])
            parts += ((w, k, last), (index, fit, 0, w, wo))
            reported += int(w.cum[last] - w.cum[k]) + fit
            valid += wo - int(w.woff[k]) + fit
            records += last - k + 1
            nb = at - base + HEADER_SIZE + HPTE_SIZE * fit
            i = index + fit
            if nv >= MAX_RUN:
                # a capped piece of a longer run: from i the kernel's valid
                # run goes on into the next piece, so plan afresh from i
                w, scan = None, i
            else:
                head = (i, nv - fit, int(w.ni[last]), at + HEADER_SIZE + HPTE_SIZE * fit, wo + fit)
                k = last
            break
        stats = (records, first, i, valid, reported - valid) if records else None
        if wrapped:
            i = 0
        yield ReadResult(b"".join(pieces), i, wrapped, reported, stats, parts=parts)
        if wrapped or not nb:
            return


def iter_reads(source: TableSource, count: int, byte_order: str, start: int = 0, first_pass: bool = True) -> Iterator[ReadResult]:
    """Successive reads of ``count`` bytes until one reaches the end of the
    table (the end of the pass).  Reads that return nothing are not yielded."""
    for res in encode_reads(source, start, first_pass, count, byte_order):
        if res.data:
            yield res
        if res.wrapped:
            return
        if not res.data:
            raise UsageError(f"a read of {count} bytes cannot hold one record: use more than 24")


def encode_pass(source: TableSource, byte_order: str, start: int = 0, first_pass: bool = True) -> bytes:
    """A whole pass in one piece, as one unbounded read returns it."""
    return encode_read(source, start, first_pass, _UNLIMITED, byte_order).data
