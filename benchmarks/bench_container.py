"""The snapshot container against python-zstandard alone, in-process.

    python -m benchmarks.bench_container [--order 24] [--fill 0.5] [--level 1]
        [--repeat 7] [--chunk-sizes 256K,512K,1M,2M,4M] [--threads 0,1,2]

The workload: the first pass of a synthetic table (order 24: 16 MiB,
1,048,576 entries; half of them valid) as the 64 KiB reads the kernel would
return (htabtool.records.iter_reads), produced once, before timing.

- write: SnapshotWriter into a BytesIO, every read given to write_records,
  then close(); against ZstdCompressor(level).compress() of the same bytes
  joined (one frame, one thread) -- the issue's bound is 1.5x.
- read: SnapshotReader(...).chunks() over the file, content kept; against
  ZstdDecompressor().decompress() of that one frame -- bound 1.5x.

Best of --repeat wall times, the baseline and the candidate run in turns
(the machine's speed drifts; each ratio compares runs of the same moments).  Threads are compression (write) and
decompression (read) workers; 0 means on the calling thread.  The figures
depend on the other load of the machine: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import io
import os

import zstandard

from benchmarks.common import best_of, synthetic_table
from htabtool.container import SnapshotHeader, SnapshotReader, SnapshotWriter
from htabtool.records import StaticTable, iter_reads


def size_arg(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
    return int(text.rstrip("KM")) * scale


def human(n: int) -> str:
    return f"{n >> 20}M" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n >> 10}K"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--order", type=int, default=24)
    ap.add_argument("--fill", type=float, default=0.5)
    ap.add_argument("--level", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--chunk-sizes", default="256K,512K,1M,2M,4M")
    ap.add_argument("--threads", default="0,1,2")
    args = ap.parse_args()
    chunk_sizes = [size_arg(s) for s in args.chunk_sizes.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]

    table = synthetic_table(args.order, args.fill)
    pieces = [r.data for r in iter_reads(StaticTable(table), 65536, "little")]
    raw = b"".join(pieces)
    header = SnapshotHeader(byte_order="little", order=args.order, source={"kind": "vm", "seed": 1})
    print(
        f"order {args.order}, fill {args.fill}: {len(pieces)} reads, {len(raw)} bytes of records; "
        f"level {args.level}; {os.cpu_count()} CPUs; best of {args.repeat}"
    )

    cctx = zstandard.ZstdCompressor(level=args.level, write_checksum=True)
    one_frame = cctx.compress(raw)
    dctx = zstandard.ZstdDecompressor()
    print(f"python-zstandard alone: one frame of {len(one_frame)} bytes (ratio {len(raw) / len(one_frame):.3f})")
    print(
        f"{'chunk':>6} {'threads':>7} {'zstd c ms':>9} {'write ms':>9} {'ratio':>6}"
        f" {'zstd d ms':>9} {'read ms':>8} {'ratio':>6} {'file bytes':>11}"
    )

    for chunk_size in chunk_sizes:
        for threads in thread_counts:

            def write(threads: int = threads, chunk_size: int = chunk_size) -> bytes:
                out = io.BytesIO()
                with SnapshotWriter(out, header, level=args.level, threads=threads, chunk_size=chunk_size) as w:
                    for piece in pieces:
                        w.write_records(piece, 1)
                return out.getvalue()

            data = write()

            def read(data: bytes = data, threads: int = threads) -> list:
                return [c.data for c in SnapshotReader(io.BytesIO(data), threads=threads).chunks()]

            assert b"".join(read()) == raw
            # baseline and candidate alternate, so that both see the same machine
            t_c, t_w = interleaved(lambda: cctx.compress(raw), write, args.repeat)
            t_d, t_r = interleaved(lambda: dctx.decompress(one_frame), read, args.repeat)
            print(
                f"{human(chunk_size):>6} {threads:>7} {t_c * 1e3:9.1f} {t_w * 1e3:9.1f} {t_w / t_c:6.2f}"
                f" {t_d * 1e3:9.1f} {t_r * 1e3:8.1f} {t_r / t_d:6.2f} {len(data):>11}"
            )


def interleaved(baseline, candidate, repeat: int) -> tuple[float, float]:
    """Best wall times of ``baseline`` and ``candidate``, run in turns."""
    best_b = best_c = float("inf")
    for _ in range(repeat):
        best_b = min(best_b, best_of(baseline, 1))
        best_c = min(best_c, best_of(candidate, 1))
    return best_b, best_c


if __name__ == "__main__":
    main()
