"""Each command against its zstd yardstick, paired: the two run one after
the other, round after round, and the figure is the median of the rounds'
ratios (a shared machine moves both alike within a round, where the best of
separate runs can catch them in different minutes).

    python -m benchmarks.paired A.htab B.htab RAW --byte-order little --order 30 [--rounds 5]

A.htab and B.htab: two snapshots of one table (``diff``); RAW: A's record
stream (``zstd -dc A.htab > RAW``).  Pairs: ``verify``, ``stat`` and
``diff`` against ``zstd -dc A.htab``; ``dump --raw -T 1`` against ``zstd -1
-T1`` of RAW; ``dump --raw`` (a thread per CPU) against ``zstd -1 -T0``.
``htabtool`` is the one on PATH.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

from benchmarks.__main__ import run


def _seconds(cmd: list[str]) -> float:
    return run(cmd, ok=(0, 1)).seconds  # diff: 1 when the tables differ


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("raw")
    ap.add_argument("--byte-order", default="little")
    ap.add_argument("--order", type=int, required=True)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="htabtool-paired-") as tmp:
        out = os.path.join(tmp, "out.htab")
        dump = ["htabtool", "dump", "--raw", args.raw, "--byte-order", args.byte_order, "--order", str(args.order),
                "-q", "-f", "-o", out]
        pairs = [
            ("verify", ["htabtool", "verify", args.a], "zstd -dc", ["zstd", "-dc", args.a]),
            ("stat", ["htabtool", "stat", args.a], "zstd -dc", ["zstd", "-dc", args.a]),
            ("diff", ["htabtool", "diff", args.a, args.b], "zstd -dc", ["zstd", "-dc", args.a]),
            ("dump --raw -T 1", dump + ["-T", "1"], "zstd -1 -T1", ["zstd", "-1", "-T1", "-c", args.raw]),
            ("dump --raw", dump, "zstd -1 -T0", ["zstd", "-1", "-T0", "-c", args.raw]),
        ]
        times: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for name, cmd, yardstick, ycmd in pairs:
                times.setdefault(name, []).append(_seconds(cmd))
                times.setdefault(f"{name} | {yardstick}", []).append(_seconds(ycmd))
    print(f"{args.rounds} rounds, medians (seconds) and the median of the paired ratios")
    print("| command | s | yardstick | s | ratio |")
    print("| --- | ---: | --- | ---: | ---: |")
    for name, _, yardstick, _ in pairs:
        mine, theirs = times[name], times[f"{name} | {yardstick}"]
        ratio = statistics.median(x / y for x, y in zip(mine, theirs))
        print(f"| {name} | {statistics.median(mine):.2f} | {yardstick} | {statistics.median(theirs):.2f} | "
              f"{ratio:.2f}x |")


if __name__ == "__main__":
    main()
