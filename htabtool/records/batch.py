"""Many records as numpy arrays: :class:`RecordBatch`, the fast path.

A batch holds consecutive records of a stream column by column (offset,
index, n_valid, n_invalid) with every valid entry in one (E, 2) array, and
knows the kernel's write-side checks (kvm_htab_write).  Decoding makes
batches, applying and the statistics read them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from htabtool.errors import RecordError
from htabtool.hpte import HPTE_SIZE, HPTE_V_VALID, v_low_bytes
from htabtool.records.format import ENTRY_DTYPE, HEADER_SIZE, Record, layout_records


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
    def empty(cls, first_record: int = 0) -> RecordBatch:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z, z, z, np.zeros((0, 2), dtype=ENTRY_DTYPE), first_record)

    @cached_property
    def end(self) -> np.ndarray:
        """index + n_valid + n_invalid: computed once (the checks, the pass
        rule and the statistics all ask; a batch's columns are not changed
        after it is made: a new batch is made instead, as with replace())."""
        return self.index + self.n_valid + self.n_invalid

    @property
    def nbytes(self) -> int:
        """Bytes these records take in the stream."""
        return int(HEADER_SIZE * len(self) + HPTE_SIZE * len(self.entries))

    def entry_index(self) -> np.ndarray:
        """The table index of each entry in :attr:`entries`."""
        return expand_ranges(self.index, self.n_valid)

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
        return layout_records(self.index, self.n_valid, self.n_invalid, self.entries, byte_order)

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
            lacking = (v_low_bytes(self.entries) & HPTE_V_VALID) == 0
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


def expand_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """concatenate(arange(s, s + n) for s, n in zip(starts, lengths)), vectorised."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    firsts = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - firsts, lengths) + np.arange(total, dtype=np.int64)
