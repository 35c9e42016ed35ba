"""The tables of docs/migration-study.md, printed as markdown.

    python -m benchmarks.migration_study            # every table (a few minutes on 2 cores)
    python -m benchmarks.migration_study --quick    # order 24 only

Each table is made by ``htabtool migrate`` (through ``ops.migrate``, the
call behind the command) on VM images made here with ``htabtool vm create``
and warmed up with ``htabtool vm run``, in a temporary directory; the QEMU
table by ``htabtool dump --qemu`` and ``htabtool stat --json`` on the
captures in fixtures/qemu/.  The wall time of every migrate run is printed
after the tables (how long a simulation takes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from htabtool import ops
from htabtool.sim.vmimage import create_image, run_image

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ("idle", "kernel-build", "database")
BANDWIDTHS = ("1G", "10G")
DOWNTIME = "30ms"  # the thread's figure
WARMUP_SECONDS = 5.0  # guest time run before migrating: a build or a database under way
SEED = 1
FUTURES = (1, 2, 3, 4, 5)  # --seed: the guest's events drawn afresh, the same guest
timings: list[tuple[str, float]] = []


def image(directory: str, profile: str, order: int) -> str:
    path = os.path.join(directory, f"{profile}-{order}.img")
    if not os.path.exists(path):
        create_image(path, order=order, profile=profile, seed=SEED)
        run_image(path, seconds=WARMUP_SECONDS)
    return path


def migrate(path: str, label: str, **kw):
    t0 = time.perf_counter()
    result = ops.migrate(path, **kw)
    timings.append((label, time.perf_counter() - t0))
    return result


def ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def spread(values) -> str:
    values = sorted(values)
    mean = sum(values) / len(values)
    fmt = (lambda v: f"{v:,.0f}") if mean >= 10 else (lambda v: f"{v:.3g}")
    return fmt(mean) if values[0] == values[-1] else f"{fmt(mean)} ({fmt(values[0])}-{fmt(values[-1])})"


def verdict(r) -> str:
    return str(len(r.live)) if r.converged else f"no ({len(r.live)})"


def main_table(directory: str, orders) -> None:
    print(f"Downtime limit {DOWNTIME}; each image made with seed {SEED} and run for {WARMUP_SECONDS:g} s of guest "
          "time first (a build, a database under way). *Alone*: the HPT has the link to itself (nothing between "
          "its 5 ms iterations). *Beside RAM*: RAM's round between two of the HPT's iterations lasts 30 ms "
          f"(`--ram-round 30ms`); mean (min-max) over the guest's futures `--seed` {', '.join(map(str, FUTURES))}. "
          "Stopped bytes as the kernel's records / with an index per entry; the ratios are record bytes over "
          "index bytes (below 1: the records are smaller).\n")
    print("| guest | order | valid | link | first pass: bytes, link time (ms) | live passes alone "
          "| stopped entries alone | live passes beside RAM "
          "| stopped entries | stopped bytes, records | stopped bytes, index | HPT downtime (ms) "
          "| first pass: entries per record | first-pass ratio | later-passes ratio |")
    print("|" + "---|" * 15)
    for order in orders:
        for profile in PROFILES:
            path = image(directory, profile, order)
            for bw in BANDWIDTHS:
                alone = migrate(path, f"{profile} order {order} {bw} alone", bandwidth=bw, downtime_limit=DOWNTIME)
                runs = [migrate(path, f"{profile} order {order} {bw} beside RAM, seed {k}", bandwidth=bw,
                                downtime_limit=DOWNTIME, ram_round="30ms", seed=k) for k in FUTURES]
                first = runs[0].passes[0]
                later = [r.ratio(False) for r in runs if r.ratio(False) is not None]
                print(f"| {profile} | {order} | {alone.valid_at_start:,} | {bw} | "
                      f"{alone.passes[0].record_bytes:,}, {ms(alone.passes[0].link_seconds)} | {verdict(alone)} | "
                      f"{alone.stopped.entries:,} | {' '.join(verdict(r) for r in runs)} | "
                      f"{spread([r.stopped.entries for r in runs])} | "
                      f"{spread([r.stopped.record_bytes for r in runs])} | "
                      f"{spread([r.stopped.index_bytes for r in runs])} | "
                      f"{spread([r.hpt_downtime * 1e3 for r in runs])} | "
                      f"{first.valid / first.records:.3f} | {ratio(runs[0].ratio(True))} | "
                      f"{spread(later) if later else '-'} |")
    print()


def rate_table(directory: str) -> None:
    path = image(directory, "kernel-build", 24)
    print("kernel-build, order 24, 1G, downtime limit 30 ms, RAM's round 30 ms; the guest's event rate "
          "multiplied (`--ops-per-second`; the profile's own rate is 120):\n")
    print("| events per second | converged after | entries in the stopped phase | stopped bytes (records / index) "
          "| HPT downtime (ms) | later-passes ratio |")
    print("|---|---|---|---|---|---|")
    for rate in (120, 1200, 12000):
        r = migrate(path, f"kernel-build order 24 1G {rate} events/s", bandwidth="1G", downtime_limit=DOWNTIME,
                    ram_round="30ms", ops_per_second=rate, max_passes=30, seed=FUTURES[0])
        last = r.stopped
        passes = f"{verdict(r)} live pass{'es' if len(r.live) != 1 else ''}"
        print(f"| {rate:,} | {passes} | {last.entries:,} | {last.record_bytes:,} / "
              f"{last.index_bytes:,} | {ms(r.hpt_downtime)} | {ratio(r.ratio(False))} |")
    print()


def qemu_table(directory: str) -> None:
    print("The real captures (QEMU 7.2, a 4G pseries guest, fixtures/qemu/; each fixture keeps the first 1,500 "
          "records of a part and every record of a later pass): `htabtool dump --qemu` then `htabtool stat --json`; "
          "index bytes are 20 per valid entry on the first pass, 20 per valid or invalidated entry after.\n")
    print("| capture | pass | the kernel's | records | valid | invalid | entries per record | record bytes "
          "| index bytes | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mig in sorted((ROOT / "fixtures" / "qemu").glob("*.mig")):
        snap = os.path.join(directory, mig.stem + ".htab")
        cmd = [sys.executable, "-m", "htabtool"]
        subprocess.run(cmd + ["dump", "--qemu", str(mig), "-o", snap, "-q"], check=True)
        s = json.loads(subprocess.run(cmd + ["stat", "--json", snap], check=True, capture_output=True).stdout)
        later = _later_kernel_passes(snap)
        for p in s["per_pass"]:
            entries = p["valid"] + (p["invalid"] if p["pass"] in later else 0)
            index = 20 * entries
            kind = "later pass" if p["pass"] in later else "first pass"
            print(f"| {mig.name} | {p['pass']} | {kind} | {p['records']:,} | {p['valid']:,} | {p['invalid']:,} | "
                  f"{p['valid'] / p['records']:.3f} | {p['raw_bytes']:,} | {index:,} | "
                  f"{ratio(p['raw_bytes'] / index if index else None)} |")
    print()


def _later_kernel_passes(snap: str) -> set[int]:
    """QEMU's htab parts become passes; a part goes on with the kernel's
    first pass while its records go on above where the last part ended."""
    from htabtool.records import begins_pass
    from htabtool.sources import open_snapshot

    later: set[int] = set()
    end = 0
    with open_snapshot(snap) as f:
        for c in f.trailer().chunks:
            if later or begins_pass(c.first_index, end):
                later.add(c.pass_number)
            end = max(end, c.end_index)
    return later


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="order 24 only")
    ap.add_argument("--dir", help="keep the VM images here (default: a temporary directory)")
    args = ap.parse_args(argv)
    orders = (24,) if args.quick else (24, 28)
    with tempfile.TemporaryDirectory(prefix="htabtool-study-") as tmp:
        directory = args.dir or tmp
        os.makedirs(directory, exist_ok=True)
        print(f"<!-- made by: python -m benchmarks.migration_study{' --quick' if args.quick else ''} -->\n")
        print("### Passes, the stopped phase and the two formats\n")
        main_table(directory, orders)
        print("### A faster guest\n")
        rate_table(directory)
        print("### The real QEMU captures\n")
        qemu_table(directory)
    print("### How long the simulations took\n")
    print("Wall seconds of each `ops.migrate` call (loading the image into memory, the passes, the guest's "
          "events), on the machine that made this page:\n")
    print("| runs | how many | fastest | median | slowest |")
    print("|---|---|---|---|---|")
    for order in orders:
        mine = sorted(t for label, t in timings if f" order {order} " in label)
        if mine:
            print(f"| order {order} | {len(mine)} | {mine[0]:.2f} | {mine[len(mine) // 2]:.2f} | {mine[-1]:.2f} |")


if __name__ == "__main__":
    main()
