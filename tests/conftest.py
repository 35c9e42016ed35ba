"""Shared test helpers: small synthetic tables and record streams."""

import numpy as np
import pytest

from htabtool.records import StaticTable, iter_reads, new_table


def synthetic(order=18, fill=0.3, seed=1):
    """An (N, 2) '>u8' table filled as a hash table fills: low slots of each
    group valid, 64K bolted entries in 1T segments and 4K user entries."""
    n = 1 << (order - 4)
    rng = np.random.default_rng(seed)
    per_group = rng.binomial(8, fill, n // 8)
    valid = np.tile(np.arange(8), n // 8) < np.repeat(per_group, 8)
    v = (rng.integers(1, 1 << 40, n, dtype=np.uint64) << np.uint64(7)) | np.uint64(0x1)
    bolted = rng.random(n) < 0.5
    v[bolted] |= np.uint64((1 << 62) | 0x10 | 0x4)
    r = (rng.integers(0, 1 << 30, n, dtype=np.uint64) << np.uint64(16)) | np.uint64(0x192)
    r[bolted] |= np.uint64(0x1000)
    t = new_table(n)
    t[:, 0] = np.where(valid, v, 0)
    t[:, 1] = np.where(valid, r, 0)
    return t


def raw_stream(table, byte_order="little", read=65536):
    return b"".join(r.data for r in iter_reads(StaticTable(table), read, byte_order))


@pytest.fixture
def table18():
    return synthetic()
