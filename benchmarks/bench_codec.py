"""The record codec at the typical size: order 24 (16 MiB, 1,048,576 entries),
half the entries valid.

    python -m benchmarks.bench_codec [--order 24] [--fill 0.5]

Prints the best of 5 wall times for a full first-pass encode (one unbounded
read), the same pass as 64 KiB reads, a full decode, and decode + apply.
"""

from __future__ import annotations

import argparse

from benchmarks.common import best_of, synthetic_table
from htabtool.records import StaticTable, apply_batch, decode_batch, encode_pass, iter_reads, new_table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--order", type=int, default=24)
    ap.add_argument("--fill", type=float, default=0.5)
    args = ap.parse_args()
    table = synthetic_table(args.order, args.fill)
    src = StaticTable(table)
    stream = encode_pass(src, "little")
    n = len(table)
    batch, _ = decode_batch(stream, "little")
    print(f"order {args.order}: {n} entries, fill {args.fill}, stream {len(stream)} bytes, "
          f"{len(batch)} records, mean n_valid {batch.n_valid.mean():.2f}")
    figures = {
        "encode (one unbounded read)": best_of(lambda: encode_pass(src, "little")),
        "encode (64 KiB reads)": best_of(lambda: [r.data for r in iter_reads(src, 65536, "little")]),
        "decode": best_of(lambda: decode_batch(stream, "little", n_entries=n)),
        "decode + apply": best_of(lambda: apply_batch(new_table(n), decode_batch(stream, "little")[0])),
    }
    for name, secs in figures.items():
        print(f"  {name:30s} {secs * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
