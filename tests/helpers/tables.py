"""Synthetic tables and kernel record streams: the one generator of tables
for the tests, the fuzzers' seeds and the catalogue of bad inputs.

Deterministic (same arguments, same table) and free of pytest, so that the
atheris harnesses can use it too.
"""

from __future__ import annotations

import struct

import numpy as np

from htabtool.records import StaticTable, apply_batch, decode_batch, iter_reads, new_table


def synthetic_table(order: int = 18, fill: float = 0.05, seed: int = 1) -> np.ndarray:
    """An (N, 2) '>u8' table of ``1 << (order - 4)`` entries, filled as a
    hash table fills: the low slots of each group of 8 valid (a binomial
    number of them, ``fill`` on average), half of them bolted 64K entries
    in 1T segments, the others 4K user entries."""
    n = 1 << (order - 4)
    rng = np.random.default_rng(seed)
    per_group = rng.binomial(8, fill, n // 8)
    valid = np.tile(np.arange(8), n // 8) < np.repeat(per_group, 8)
    v = (rng.integers(1, 1 << 40, n, dtype=np.uint64) << np.uint64(7)) | np.uint64(0x1)
    bolted = rng.random(n) < 0.5
    v[bolted] |= np.uint64((1 << 62) | 0x10 | 0x4)
    r = (rng.integers(0, 1 << 30, n, dtype=np.uint64) << np.uint64(16)) | np.uint64(0x192)
    t = new_table(n)
    t[:, 0] = np.where(valid, v, 0)
    t[:, 1] = np.where(valid, r, 0)
    return t


def raw_stream(table: np.ndarray, byte_order: str = "little", read: int = 65536) -> bytes:
    """A first pass over ``table``, as reads of ``read`` bytes of the
    kernel's htab fd return it."""
    return b"".join(r.data for r in iter_reads(StaticTable(table), read, byte_order))


def record_stream(order: int = 18, byte_order: str = "little", read: int = 4096, fill: float = 0.05,
                  seed: int = 1) -> bytes:
    """A first pass over :func:`synthetic_table`, as reads of ``read`` bytes return it."""
    return raw_stream(synthetic_table(order, fill, seed), byte_order, read)


def whole(stream: bytes, limit: int, byte_order: str = "little") -> bytes:
    """The longest run of whole records at the start of ``stream`` that
    fits in ``limit`` bytes."""
    _, used = decode_batch(stream[:limit], byte_order)
    return stream[:used]


def record(index: int, entries=(), n_invalid: int = 0, byte_order: str = "little") -> bytes:
    """One record: ``entries`` are (v, r) pairs, big-endian on every host."""
    p = "<" if byte_order == "little" else ">"
    return struct.pack(p + "IHH", index, len(entries), n_invalid) + b"".join(
        struct.pack(">QQ", v, r) for v, r in entries
    )


def final_table(pieces, shift: int, byte_order: str = "little") -> np.ndarray:
    """The table of ``1 << (shift - 4)`` entries that the kernel's write
    side makes of ``pieces`` ((pass, whole records) in order)."""
    table = new_table(1 << (shift - 4))
    for _, data in pieces:
        apply_batch(table, decode_batch(data, byte_order)[0])
    return table
