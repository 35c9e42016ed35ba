"""The stream's layout: struct kvm_get_htab_header, its limits, a record.

The kernel's fd (Documentation/virt/kvm/api.rst, 4.79 KVM_PPC_GET_HTAB_FD;
struct kvm_get_htab_header in arch/powerpc/include/uapi/asm/kvm.h) is a
sequence of records, each a header in the host's byte order followed by
n_valid entries of two big-endian doublewords (16 bytes)::

    struct kvm_get_htab_header {   /* in the host's byte order */
        __u32 index;               /* first entry of the record */
        __u16 n_valid;             /* entries that follow, 16 bytes each */
        __u16 n_invalid;           /* invalid entries after them, not sent */
    };

Every field's layout lives here once: :func:`header_struct` and
:func:`header_dtype` (one header), :func:`header_words` and
:func:`layout_words` (many records as 8-byte words, the way the stream is
cut: one word a header, two an entry).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from htabtool.errors import StreamError, TruncatedStream, UsageError
from htabtool.hpte import HPTE, HPTE_SIZE, table_entries

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


def check_indexable_order(order: int, what: str = "table order") -> int:
    """``order`` if the record header's 32-bit index can address every entry
    of a table of ``2**(order-4)`` entries; UsageError otherwise."""
    if order > MAX_INDEX_ORDER:
        raise UsageError(
            f"{what} {order} ({table_entries(order):,} entries) is above {MAX_INDEX_ORDER}: the record header's "
            f"32-bit index addresses {table_entries(MAX_INDEX_ORDER):,} entries at most (the kernel would truncate it)"
        )
    return order


def check_byte_order(byte_order: str) -> str:
    if byte_order not in BYTE_ORDERS:
        raise UsageError(f"byte order must be 'little' or 'big', not {byte_order!r}")
    return byte_order


def _prefix(byte_order: str) -> str:
    return "<" if check_byte_order(byte_order) == "little" else ">"


def header_struct(byte_order: str) -> struct.Struct:
    """struct kvm_get_htab_header as a :class:`struct.Struct` in the given
    byte order: ``pack(index, n_valid, n_invalid)``."""
    return struct.Struct(_prefix(byte_order) + "IHH")


def header_dtype(byte_order: str) -> np.dtype:
    """struct kvm_get_htab_header as a numpy dtype in the given byte order."""
    p = _prefix(byte_order)
    return np.dtype([("index", p + "u4"), ("n_valid", p + "u2"), ("n_invalid", p + "u2")])


# -- one header, one record ----------------------------------------------------


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
        return header_struct(byte_order).pack(self.index, self.n_valid, self.n_invalid)

    @classmethod
    def unpack(cls, data, byte_order: str, offset: int = 0) -> RecordHeader:
        if len(data) - offset < HEADER_SIZE:
            raise TruncatedStream(
                f"truncated record header at offset {offset:#x}: "
                f"need {HEADER_SIZE} bytes, got {max(0, len(data) - offset)}",
                offset=offset,
            )
        return cls(*header_struct(byte_order).unpack_from(data, offset))


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


# -- many records as 8-byte words ---------------------------------------------


def header_words(index, n_valid, n_invalid, byte_order: str) -> np.ndarray:
    """The headers as 8-byte words (their bytes as the stream has them).
    An index that a __u32 cannot hold is refused, never let into n_valid."""
    index = np.asarray(index, dtype=np.int64)
    if len(index) and int(index.max()) > MAX_INDEX:
        k = int(np.argmax(index > MAX_INDEX))
        raise StreamError(
            f"record index {int(index[k])} does not fit the header's 32-bit index: "
            f"tables of order {MAX_INDEX_ORDER} ({table_entries(MAX_INDEX_ORDER):,} entries) at most"
        )
    if byte_order == "little":  # index, n_valid, n_invalid from the lowest byte up
        value = index | (np.asarray(n_valid, dtype=np.int64) << 32) | (np.asarray(n_invalid, dtype=np.int64) << 48)
        return value.astype("<u8").view(np.uint64)
    value = (index << 32) | (np.asarray(n_valid, dtype=np.int64) << 16) | np.asarray(n_invalid, dtype=np.int64)
    return value.astype(">u8").view(np.uint64)


def layout_words(index, n_valid, n_invalid, entries, byte_order: str, header_pos=None) -> np.ndarray:
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
    out[header_pos] = header_words(index, n_valid, n_invalid, byte_order)
    out[is_entry] = np.ascontiguousarray(entries).view(np.uint64).reshape(-1)
    return out


def layout_records(index, n_valid, n_invalid, entries, byte_order: str) -> bytes:
    """The records as stream bytes (see :func:`layout_words`)."""
    return layout_words(index, n_valid, n_invalid, entries, byte_order).tobytes()
