"""Shared helpers for the benchmarks: synthetic tables and a timer."""

from __future__ import annotations

import time

import numpy as np


def synthetic_table(order: int, fill: float, seed: int = 1) -> np.ndarray:
    """An (N, 2) '>u8' table at about ``fill`` valid, as a hash table fills:
    each 8-entry group holds a binomial number of entries in its low slots
    (creation takes the first free slot), with plausible AVPN and RPN."""
    n = 1 << (order - 4)
    rng = np.random.default_rng(seed)
    per_group = rng.binomial(8, fill, n // 8)
    valid = np.tile(np.arange(8), n // 8) < np.repeat(per_group, 8)
    v = (rng.integers(0, 1 << 50, n, dtype=np.uint64) << np.uint64(7)) | np.uint64(0x1)
    v |= np.uint64(1 << 62)  # 1T segments
    r = (rng.integers(0, 1 << 36, n, dtype=np.uint64) << np.uint64(12)) | np.uint64(0x192)
    table = np.zeros((n, 2), dtype=">u8")
    table[:, 0] = np.where(valid, v, 0)
    table[:, 1] = np.where(valid, r, 0)
    return table


def best_of(fn, repeat: int = 5) -> float:
    """The best wall time of ``repeat`` calls, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
