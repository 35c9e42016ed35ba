"""show and map as whole processes: wall time and peak RSS by table size.

    python -m benchmarks.bench_show [--orders 24 28 30] [--fill 0.03]

For each order, a snapshot of a synthetic table (``common.synthetic_table``,
one first pass in 64 KiB reads) is written to a scratch directory, then each
command runs as its own process, its output to /dev/null, and its peak RSS
is the child's ru_maxrss (os.wait4).  Flat memory means the same peak from
order 24 to 30: the final table streams in windows of 262,144 entries and
only the entries that pass the filters are decoded, a batch at a time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

COMMANDS = {
    "show (text, every valid entry)": ["show"],
    "show --json (every valid entry)": ["show", "--json"],
    "show --vrma (a scan, no entry passes)": ["show", "--vrma"],
    "show --not-bolted --limit 10": ["show", "--not-bolted", "--limit", "10"],
    "map --json": ["map", "--json", "--width", "80"],
}


def write_snapshot(path: str, order: int, fill: float) -> int:
    """Write the snapshot in a child process (so that this one stays small:
    a child's peak RSS counts what it inherited at fork)."""
    code = (
        "import sys\n"
        "from benchmarks.common import synthetic_table\n"
        "from htabtool.container import SnapshotHeader, SnapshotWriter\n"
        "from htabtool.records import StaticTable, iter_reads\n"
        "path, order, fill = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])\n"
        "table = synthetic_table(order, fill)\n"
        "with open(path, 'wb') as f, SnapshotWriter(f, SnapshotHeader(byte_order='little', order=order)) as w:\n"
        "    for res in iter_reads(StaticTable(table), 1 << 16, 'little'):\n"
        "        w.write_records(res.data, 1)\n"
        "print(int((table[:, 0].astype('u8') & 1).sum()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, path, str(order), str(fill)], check=True,
                         capture_output=True, text=True)
    return int(out.stdout)


#: run argv, then print its peak RSS (KiB) and exit status: an intermediate
#: process a few MiB large, so that what the command inherits at fork is small
_PEAK = (
    "import resource, subprocess, sys\n"
    "with open('/dev/null', 'wb') as null:\n"
    "    rc = subprocess.call(sys.argv[1:], stdout=null)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)\n"
)


def measure(argv: list[str]) -> tuple[float, int, int]:
    """(seconds, peak RSS in bytes, exit status) of one htabtool process."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-S", "-c", _PEAK, sys.executable, "-m", "htabtool", *argv],
                         capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - t0
    rss_kib, rc = map(int, out.stdout.split())
    return seconds, rss_kib * 1024, rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, nargs="+", default=[24, 28])
    ap.add_argument("--fill", type=float, default=0.03)
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-show-") as work:
        print("| order | entries | valid | command | time | peak RSS |")
        print("| --- | --- | --- | --- | --- | --- |")
        for order in args.orders:
            path = os.path.join(work, f"o{order}.htab")
            valid = write_snapshot(path, order, args.fill)
            for label, argv in COMMANDS.items():
                seconds, rss, rc = measure([*argv, path])
                assert rc == 0, (label, rc)
                print(f"| {order} | {1 << (order - 4):,} | {valid:,} | `{label}` | {seconds:.1f} s | "
                      f"{rss / 2**20:.0f} MiB |", flush=True)
            os.unlink(path)


if __name__ == "__main__":
    main()
