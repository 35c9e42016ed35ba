"""Benchmarks of the simulated HPT engine, the guest model and VM images.

Run: python benchmarks/bench_engine.py [--quick] [--skip-order30]

Figures (the issue's targets):
  1. a whole first pass of an order-24 table at 50 % fill, 64 KiB reads  (< 0.15 s)
  2. an incremental pass with 1 % of the entries changed, 64 KiB reads    (< 0.03 s)
  3. creating a 4G-RAM idle guest (in memory, and as a VM image file)    (< 2 s)
  4. an order-30 image (1 GiB table): create it, read a whole first pass  (fits in 24 GiB)
Each timing is the best of a few runs; the peak RSS is the process's.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

import numpy as np

from htabtool.sim.guest import Guest, ram_order
from htabtool.sim.hpt import SimulatedHPT
from htabtool.sim.vmimage import VMImage, table_counts

READ = 64 << 10


def best(fn, repeat=3):
    times = []
    for _ in range(repeat):
        setup = fn()
        t = time.perf_counter()
        out = setup()
        times.append(time.perf_counter() - t)
    return min(times), out


def fill_half(order: int, seed: int = 0) -> SimulatedHPT:
    """An order-``order`` table with exactly half its entries valid: random
    64K-page entries (bolted or not), placed by H_ENTER into random groups."""
    e = SimulatedHPT(order)
    rng = np.random.default_rng(seed)
    target = e.npte // 2
    while True:
        have = e.count_valid()
        if have >= target:
            break
        n = target - have
        group = rng.integers(0, e.npteg, size=n)
        v = (rng.integers(0, 1 << 50, size=n, dtype=np.uint64) << np.uint64(7)) | np.uint64(0x5)
        v |= rng.integers(0, 2, size=n, dtype=np.uint64) << np.uint64(4)  # bolted or not
        r = (rng.integers(0, e.ram_size >> 16, size=n, dtype=np.uint64) << np.uint64(16)) | np.uint64(0x1192)
        e.bulk_enter(group, v, r)
    return e


def read_pass(fd, size=READ) -> int:
    total = 0
    while True:
        d = fd.read(size)
        total += len(d)
        if fd.last_read.wrapped or not d:
            return total


def bench_first_pass(order=24, repeat=3):
    e = fill_half(order)

    def setup():
        fd = e.htab_fd()
        return lambda: (read_pass(fd), fd.close())[0]

    t, nbytes = best(setup, repeat)
    return t, nbytes, e.count_valid(), e.npte


def bench_burst(order=24, repeat=3):
    """The first pass as dump reads it: one burst of 64 KiB reads (HtabFd.reads)."""
    e = fill_half(order)

    def setup():
        fd = e.htab_fd()
        return lambda: (sum(len(d) for d in fd.reads(READ)), fd.close())[0]

    t, nbytes = best(setup, repeat)
    return t, nbytes


def bench_incremental(order=24, fraction=0.01, repeat=3):
    e = fill_half(order)
    rng = np.random.default_rng(1)
    times = []
    nbytes = 0
    fd = e.htab_fd()
    read_pass(fd)  # the first pass
    for _ in range(repeat):
        n = int(e.npte * fraction)
        slots = rng.choice(e.npte, size=n, replace=False)
        valid = e.valid_mask()[slots]
        # a third of the changes remove entries, the rest re-protect them;
        # invalid slots get new entries
        vs, inv = slots[valid], slots[~valid]
        cut = len(vs) // 3
        e.bulk_remove(vs[:cut])
        e.bulk_protect(vs[cut:], 0x3)
        v = (rng.integers(0, 1 << 50, size=len(inv), dtype=np.uint64) << np.uint64(7)) | np.uint64(0x5)
        r = (rng.integers(0, e.ram_size >> 16, size=len(inv), dtype=np.uint64) << np.uint64(16)) | np.uint64(0x1192)
        e.bulk_enter(inv // 8, v, r)
        t = time.perf_counter()
        nbytes = read_pass(fd)
        times.append(time.perf_counter() - t)
        assert fd.read(READ) == b""  # nothing changed since
    fd.close()
    return min(times), nbytes, int(e.npte * fraction)


def bench_create_idle(repeat=3):
    ram = 4 << 30

    def setup():
        return lambda: Guest.boot(SimulatedHPT(ram_order(ram), ram_size=ram), "idle", 1)

    t_mem, g = best(setup, repeat)
    valid = g.hpt.count_valid()
    with tempfile.TemporaryDirectory() as d:
        times = []
        for k in range(repeat):
            path = os.path.join(d, f"idle{k}.img")
            t = time.perf_counter()
            VMImage.create(path, ram=ram, profile="idle", seed=1).close()
            times.append(time.perf_counter() - t)
    return t_mem, min(times), valid


def bench_order30():
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as d:
        path = os.path.join(d, "big.img")
        t = time.perf_counter()
        vm = VMImage.create(path, order=30, profile="idle", seed=1)
        t_create = time.perf_counter() - t
        counts = table_counts(vm.hpt)
        vm.close()
        size = os.path.getsize(path)
        disk = os.stat(path).st_blocks * 512
        t = time.perf_counter()
        with VMImage.open(path) as vm:
            with vm.hpt.htab_fd() as fd:
                nbytes = read_pass(fd, 1 << 20)
        t_read = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return t_create, t_read, nbytes, counts["valid"], size, disk, rss


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one run each")
    ap.add_argument("--skip-order30", action="store_true")
    args = ap.parse_args(argv)
    repeat = 1 if args.quick else 3

    t, nbytes, valid, npte = bench_first_pass(repeat=repeat)
    print(f"1. first pass, order 24 ({npte} entries, {valid} valid), 64 KiB reads: "
          f"{t:.3f} s, {nbytes} bytes  [target < 0.15 s]")
    for order in (24, 26):
        t, nbytes = bench_burst(order, repeat=repeat)
        print(f"1b. first pass, order {order}, as one burst of 64 KiB reads (HtabFd.reads, what dump does): "
              f"{t:.3f} s, {nbytes} bytes")
    t, nbytes, changed = bench_incremental(repeat=repeat)
    print(f"2. incremental pass, order 24, {changed} entries changed (1 %), 64 KiB reads: "
          f"{t:.4f} s, {nbytes} bytes  [target < 0.03 s]")
    t_mem, t_img, valid = bench_create_idle(repeat=repeat)
    print(f"3. create a 4G idle guest: {t_mem:.3f} s in memory, {t_img:.3f} s as an image file; "
          f"{valid} valid entries  [target < 2 s]")
    if not args.skip_order30:
        t_create, t_read, nbytes, valid, size, disk, rss = bench_order30()
        print(f"4. order-30 image (1 GiB table, 128 GiB RAM idle guest): created in {t_create:.2f} s "
              f"({valid} valid), first pass read (1 MiB reads) in {t_read:.2f} s, {nbytes} bytes; "
              f"file {size >> 20} MiB ({disk >> 20} MiB on disk); peak RSS {rss >> 20} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
