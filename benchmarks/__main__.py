"""The benchmark harness: whole processes, measured from the outside.

    python -m benchmarks [--orders 20,24,28,30] [--fills 0.03,0.5] [--repeat 3]
                         [--threads N] [--kvm] [--out BENCHMARKS.md] [--workdir DIR]

For each table order and fill it makes a simulated VM and times, as separate
processes (the way an operator's script runs them): ``vm create``, ``dump``
(a first pass, with ``-T 1`` and with ``--threads``: dump's own default,
one compression thread per CPU, unless given), ``load`` into a new VM,
``stat``, ``diff`` of two snapshots of the same table, ``verify``; and
in-process, an incremental pass with 1 % of the entries changed (the best of
three, each with new changes).  In the same run, on the same raw record
stream (what ``zstd -dc`` of the snapshot prints), it times ``zstd -1
-T1``, ``zstd -1 -T0``, ``zstd -dc`` and ``cat`` as yardsticks.  For each: the best wall time of
``--repeat`` runs, MB/s of table, the peak RSS of the process (wait4), and
the snapshot's size.  Results are printed and written as Markdown.
With ``--kvm`` it also runs ``benchmarks.bench_kvm`` inside the kernel kit
(``load --kvm`` and ``dump --kvm`` records per second through the real
kernel's htab fd; minutes under software emulation) and adds its figures.

Fills: 3 % is a real idle Linux guest (the ``idle`` profile, RAM 128 times
the table, as QEMU sizes it); 50 % is the same guest with 16 times the RAM
(its bolted linear mapping fills half the table).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

HTABTOOL = [sys.executable, "-m", "htabtool"]


@dataclass
class Run:
    seconds: float
    rss_kib: int
    returncode: int


TIME = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)


def run(argv, *, stdout=subprocess.DEVNULL, stdin=None, ok=(0,)) -> Run:
    """One process: wall time and peak RSS.  The RSS comes from GNU time
    (its child is forked from a small process, not from this one, whose
    memory a forked child would count); without it, from wait4."""
    argv = [str(a) for a in argv]
    measured = [TIME, "-f", "%M", "--"] + argv if TIME else argv
    t0 = time.perf_counter()
    p = subprocess.Popen(measured, stdout=stdout, stdin=stdin, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    p.returncode = rc
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    if rc not in ok:
        raise SystemExit(f"benchmark step failed ({rc}): {' '.join(argv)}\n{err}")
    rss = usage.ru_maxrss
    if TIME:
        last = err.strip().splitlines()[-1] if err.strip() else ""
        rss = int(last) if last.isdigit() else rss
    return Run(seconds, rss, rc)


def best(argv, repeat: int, **kw) -> Run:
    runs = [run(argv, **kw) for _ in range(repeat)]
    return min(runs, key=lambda r: r.seconds)


def ram_for(order: int, fill: float) -> int:
    table = 1 << order
    return table * 128 * (16 if fill > 0.25 else 1)


def incremental_pass(image: str, fraction: float = 0.01, rounds: int = 3) -> tuple[float, int]:
    """In-process: change 1 % of the valid entries (the guest re-protects
    them with H_PROTECT, which marks them modified while a read fd is open),
    then time a whole incremental pass of 64 KiB reads; the best of
    ``rounds`` such passes (seconds, and that pass's bytes)."""
    import numpy as np

    from htabtool.sim.vmimage import open_vm

    with open_vm(image) as vm:
        hpt = vm.hpt
        with hpt.htab_fd(0) as fd:
            while True:  # the first pass, untimed
                fd.read(1 << 20)
                if fd.last_read.wrapped:
                    break
            valid = np.flatnonzero(hpt.valid_mask())
            rng = np.random.default_rng(1)
            passes = []
            for _ in range(rounds):
                pick = rng.choice(valid, size=max(1, int(len(valid) * fraction)), replace=False)
                hpt.bulk_protect(pick, 0x100 | 0x2)
                t0 = time.perf_counter()
                nbytes = 0
                for data in fd.reads(65536):  # a burst of reads to the end of the pass, as dump makes them
                    nbytes += len(data)
                passes.append((time.perf_counter() - t0, nbytes))
            return min(passes)


def measure(order: int, fill: float, repeat: int, work: str, threads: int | None = None) -> dict:
    d = os.path.join(work, f"o{order}-f{int(fill * 100)}")
    os.makedirs(d, exist_ok=True)
    img, img2 = os.path.join(d, "a.img"), os.path.join(d, "b.img")
    snap, snap2 = os.path.join(d, "a.htab"), os.path.join(d, "b.htab")
    raw, rawz = os.path.join(d, "a.raw"), os.path.join(d, "a.raw.zst")
    table_mb = (1 << order) / 1e6
    rows = {}

    def create():
        for p in (img,):
            if os.path.exists(p):
                os.unlink(p)
        return run(HTABTOOL + ["vm", "create", img, "--order", str(order), "--ram", str(ram_for(order, fill)),
                               "--profile", "idle", "--seed", "1"])

    rows["vm create"] = min((create() for _ in range(max(1, repeat if order < 28 else 1))), key=lambda r: r.seconds)
    default = [] if threads is None else ["-T", str(threads)]
    rows["dump --vm"] = best(HTABTOOL + ["dump", "-q", "-f", "--vm", img, "-o", snap] + default, repeat)
    rows["dump --vm -T 1"] = best(HTABTOOL + ["dump", "-q", "-f", "--vm", img, "-o", snap, "-T", "1"], repeat)
    with open(raw, "wb") as f:
        subprocess.run(["zstd", "-dc", "-q", snap], stdout=f, check=True)
    dump_raw = HTABTOOL + ["dump", "-q", "-f", "--raw", raw, "--byte-order", "little", "--order", str(order),
                           "-o", snap2]
    rows["dump --raw"] = best(dump_raw + default, repeat)
    rows["dump --raw -T 1"] = best(dump_raw + ["-T", "1"], repeat)
    inc_seconds, inc_bytes = incremental_pass(img)

    def load():
        if os.path.exists(img2):
            os.unlink(img2)
        return run(HTABTOOL + ["load", "-q", snap, "--vm", img2, "--create"])

    rows["load --vm"] = min((load() for _ in range(repeat)), key=lambda r: r.seconds)
    rows["stat"] = best(HTABTOOL + ["stat", "--json", snap], repeat)
    rows["diff"] = best(HTABTOOL + ["diff", snap, snap2], repeat)
    rows["verify"] = best(HTABTOOL + ["verify", snap], repeat)
    rows["zstd -1 -T0"] = best(["zstd", "-1", "-T0", "-q", "-f", raw, "-o", rawz], repeat)
    rows["zstd -1 -T1"] = best(["zstd", "-1", "-T1", "-q", "-f", raw, "-o", rawz], repeat)
    rows["zstd -dc"] = best(["zstd", "-dc", "-q", rawz], repeat)
    rows["cat"] = best(["cat", raw], repeat)
    import json

    stat = json.loads(subprocess.run(HTABTOOL + ["stat", "--json", snap], capture_output=True, check=True).stdout)
    result = {
        "order": order,
        "fill_target": fill,
        "entries": 1 << (order - 4),
        "valid": stat["valid"],
        "fill": stat["valid"] / (1 << (order - 4)),
        "raw_bytes": stat["raw_bytes"],
        "snapshot_bytes": stat["file_bytes"],
        "incremental_seconds": inc_seconds,
        "incremental_bytes": inc_bytes,
        "rows": {k: {"seconds": v.seconds, "rss_mib": v.rss_kib / 1024, "mb_s": table_mb / v.seconds}
                 for k, v in rows.items()},
    }
    for p in (img, img2, snap, snap2, raw, rawz):
        if os.path.exists(p):
            os.unlink(p)
    return result


def help_time(repeat: int) -> float:
    return best(HTABTOOL + ["--help"], max(repeat, 5)).seconds


def vm_info_time(repeat: int, work: str) -> float:
    """``htabtool vm info`` of an order-24 image (it counts the table's entries)."""
    img = os.path.join(work, "info.img")
    if not os.path.exists(img):
        run(HTABTOOL + ["vm", "create", img, "--order", "24", "--profile", "idle", "--seed", "1"])
    return best(HTABTOOL + ["vm", "info", img], max(repeat, 5)).seconds


def startup_times(repeat: int, work: str) -> dict[str, float]:
    """What a process costs before any work, on this machine: the
    interpreter, the imports a dump needs, and a whole dump of an empty
    stream (the fixed cost every dump pays)."""
    empty = os.path.join(work, "empty.raw")
    open(empty, "wb").close()
    out = os.path.join(work, "empty.htab")
    py = [sys.executable, "-c"]
    steps = {
        "python -c pass": py + ["pass"],
        "python -c 'import click'": py + ["import click"],
        "python -c 'import click, zstandard'": py + ["import click, zstandard"],
        "python -c 'import numpy'": py + ["import numpy"],
        "python -c 'import numpy, click, zstandard'": py + ["import numpy, click, zstandard"],
        "htabtool dump --raw (an empty stream)": HTABTOOL + ["dump", "-q", "-f", "--raw", empty,
                                                            "--byte-order", "little", "--order", "18", "-o", out],
    }
    return {name: best(argv, max(repeat, 5)).seconds for name, argv in steps.items()}


def kvm_lines(kvm: dict | None) -> list[str]:
    """The kernel kit's figures (benchmarks.bench_kvm), or where to get them."""
    if kvm is None:
        return ["The real kernel (`load --kvm`, `dump --kvm` through KVM_PPC_GET_HTAB_FD): not measured in this run;",
                "`python -m benchmarks --kvm`, or `python -m benchmarks.bench_kvm` alone, runs them inside the kernel",
                "kit (benchmarks/README.md has the last figures).", ""]
    f, ld, d, p = kvm["floor"], kvm["load_kvm"], kvm["dump_kvm"], kvm["load_in_process"]
    return [
        f"## The real kernel (kernel kit: {kvm['host']['cpu'].split(',')[0]} under software emulation, "
        f"Linux {kvm['host']['kernel']})",
        "",
        f"Order {kvm['order']}, {ld['records']:,} records ({ld['bytes']:,} bytes); `python -m benchmarks.bench_kvm`.",
        "",
        "| step | seconds | records/s | MB/s |",
        "| --- | ---: | ---: | ---: |",
        f"| load --kvm (whole process) | {ld['seconds']:.2f} | {ld['records_per_s']:,.0f} | "
        f"{ld['bytes_per_s'] / 1e6:.3f} |",
        f"| dump --kvm (whole process) | {d['seconds']:.2f} | {d['records_per_s']:,.0f} | "
        f"{d['bytes_per_s'] / 1e6:.3f} |",
        f"| a command's start-up there (stat of the snapshot) | {kvm['startup_seconds']:.2f} | | |",
        f"| load in-process (ops.load_kvm) | {p['seconds']:.2f} | {p['records_per_s']:,.0f} | |",
        f"| a plain os.write loop, one record a write() | {f['seconds']:.2f} | {f['records_per_s']:,.0f} | "
        f"{f['bytes_per_s'] / 1e6:.3f} |",
        "",
        f"Each write() spends {f['us_per_write']:.0f} us in the kernel here "
        f"({100 * f['in_write_seconds'] / f['seconds']:.0f} % of the plain loop).",
        "",
    ]


def markdown(results: list[dict], help_seconds: float, argv: list[str], startup: dict[str, float],
             info_seconds: float | None = None, kvm: dict | None = None) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}; "
        f"{_mem_gib():.0f} GiB of memory.",
        "",
        "Rerun with:",
        "",
        "    pip install . && python -m compileall -q htabtool",
        f"    python -m benchmarks {' '.join(argv)}".rstrip(),
        "",
        "from the repository root, with htabtool installed as users install it (`pip install .`, not",
        "editable: an editable install adds an import hook to every start; compileall matters where",
        "PYTHONDONTWRITEBYTECODE is set, as here, or every command compiles its modules again).",
        "",
        "Every figure is a whole process measured from outside (best wall time of the repeats; peak RSS from",
        "wait4), except the incremental pass, which is timed in-process (1 % of the valid entries changed,",
        "64 KiB reads, best of three passes).  Ratios are to `zstd -1 -T1` and `zstd -1 -T0` compressing the",
        "same raw record stream in the same run; `dump` without `-T` uses one compression thread per CPU",
        "(as `zstd -T0`), `dump -T 1` one (as `zstd -T1`).",
        "",
        f"`htabtool --help`: {help_seconds * 1000:.0f} ms"
        + (f"; `htabtool vm info` of an order-24 image: {info_seconds * 1000:.0f} ms." if info_seconds else "."),
        "",
        "Start-up on this machine (whole processes, best of 5): what every command pays before any work,",
        "and so the floor under the ratios of small tables.",
        "",
        "| process | ms |",
        "| --- | ---: |",
        *[f"| `{name}` | {seconds * 1000:.0f} |" for name, seconds in startup.items()],
        "",
        *kvm_lines(kvm),
    ]
    for r in results:
        lines += [
            f"## Order {r['order']} ({r['entries']:,} entries, {(1 << r['order']) >> 20} MiB), "
            f"fill {100 * r['fill']:.1f} % ({r['valid']:,} valid)",
            "",
            f"Raw record stream {r['raw_bytes'] / 1e6:.1f} MB, snapshot {r['snapshot_bytes'] / 1e6:.2f} MB; "
            f"incremental pass with 1 % changed: {r['incremental_seconds'] * 1000:.1f} ms "
            f"({r['incremental_bytes']:,} bytes).",
            "",
            "| step | seconds | MB/s of table | peak RSS MiB | / zstd -1 -T1 | / zstd -1 -T0 |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        z = r["rows"]["zstd -1 -T1"]["seconds"]
        z0 = r["rows"].get("zstd -1 -T0", r["rows"]["zstd -1 -T1"])["seconds"]
        for name, v in r["rows"].items():
            lines.append(f"| {name} | {v['seconds']:.3f} | {v['mb_s']:.0f} | {v['rss_mib']:.0f} | "
                         f"{v['seconds'] / z:.2f} | {v['seconds'] / z0:.2f} |")
        lines.append("")
    return "\n".join(lines)


def _mem_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    except (ValueError, OSError):
        return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--orders", default="20,24,28,30")
    ap.add_argument("--fills", default="0.03,0.5")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None,
                    help="dump's -T for the default rows (default: dump's own, one per CPU)")
    ap.add_argument("--kvm", action="store_true",
                    help="also measure load --kvm and dump --kvm inside the kernel kit (benchmarks.bench_kvm)")
    ap.add_argument("--out", default="BENCHMARKS.md")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    if shutil.which("zstd") is None:
        raise SystemExit("the zstd command is needed for the yardsticks (apt-get install zstd)")
    work = args.workdir or tempfile.mkdtemp(prefix="htabtool-bench-")
    os.makedirs(work, exist_ok=True)
    results = []
    h = help_time(args.repeat)
    print(f"htabtool --help: {h * 1000:.0f} ms", flush=True)
    info = vm_info_time(args.repeat, work)
    print(f"htabtool vm info (order 24): {info * 1000:.0f} ms", flush=True)
    startup = startup_times(args.repeat, work)
    print("start-up: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in startup.items()), flush=True)
    kvm = None
    if args.kvm:
        from benchmarks import bench_kvm

        kvm = bench_kvm.outside_main(bench_kvm.parse_args([]))
        print(bench_kvm.report(kvm), flush=True)
    for order in [int(x) for x in args.orders.split(",")]:
        for fill in [float(x) for x in args.fills.split(",")]:
            r = measure(order, fill, args.repeat, work, args.threads)
            results.append(r)
            z = r["rows"]["zstd -1 -T1"]["seconds"]
            print(f"order {order} fill {100 * r['fill']:.1f} %: " + ", ".join(
                f"{k} {v['seconds']:.3f}s ({v['seconds'] / z:.1f}x, {v['rss_mib']:.0f} MiB)"
                for k, v in r["rows"].items()
            ) + f"; incremental {r['incremental_seconds'] * 1000:.1f} ms", flush=True)
    argv = []  # the command line to print, without where this run wrote its results
    skip = False
    for a in sys.argv[1:]:
        if skip or a.startswith(("--out", "--workdir")):
            skip = a in ("--out", "--workdir")
            continue
        argv.append(a)
    with open(args.out, "w") as f:
        f.write(markdown(results, h, argv, startup, info, kvm) + "\n")
    print(f"wrote {args.out}")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
