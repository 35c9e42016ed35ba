"""The real kernel's htab fd: ``load --kvm`` and ``dump --kvm``, records and bytes per second.

Inside a POWER KVM-HV host (the kernel kit; ``/dev/kvm`` serving HV VMs):

    python3 -m benchmarks.bench_kvm [--order 24] [--records 8000] [--repeat 1] [--json FILE]

Anywhere else, the same run inside the kit (found as the kernel tests find
it: ``HTABTOOL_KVM_HOST``, else ``../shared/kvm-host/kvm-host.sh`` beside the
repository; ``HTABTOOL_KVM_HOST_DIR`` for its folder), the figures coming
back as ``bench_kvm.json``:

    python -m benchmarks.bench_kvm [--machine powernv8|powernv9] [--order 24] [--records 8000]

What it measures, on a guest HPT of ``--records`` records of a first pass's
shapes (``tests/helpers/kvm_vm.py``'s random records: runs of 1-4 valid entries):

- ``load --kvm PID`` and ``dump --kvm PID`` as whole processes (the way an
  operator runs them), into and out of a process holding a real VM
  (``tests/helpers/kvm_vm.py serve``), the best of ``--repeat``; with the start-up
  of a command in this host measured apart (``stat`` of a tiny snapshot);
- the floor: the same records written by a plain loop of ``os.write``
  (standard library only, one record per write(), as the kernel needs),
  and the kernel's share of it (the time inside the write() calls);
- in-process, what dominates: ``ops.load_kvm`` under cProfile (its top
  functions by own time), on a VM of this process (``--kvm-fd``'s path).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pathlib
import pstats
import re
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
KVM_VM = REPO / "tests" / "helpers" / "kvm_vm.py"  # a process holding a real VM
INSIDE = os.path.exists("/dev/kvm") and os.path.exists("/proc/cpuinfo") and "POWER" in open("/proc/cpuinfo").read()
HTABTOOL = [sys.executable, "-m", "htabtool"]


# -- inside the host ------------------------------------------------------------------


class Holder:
    """``tests/helpers/kvm_vm.py serve ...``: a process holding a real VM until its stdin closes."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, str(KVM_VM), "serve", *map(str, args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=dict(os.environ, PYTHONPATH=str(REPO)))
        lines = []
        for line in self.proc.stdout:
            lines.append(line.strip())
            if line.startswith("READY"):
                self.pid = int(line.split()[1])
                return
        raise SystemExit(f"the VM holder did not get ready: {lines}")

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(30)


def timed(argv, repeat: int) -> tuple[float, dict]:
    """The best wall time of ``repeat`` runs of a command printing --json."""
    argv = [str(a) for a in argv]
    best, out = float("inf"), {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"failed ({done.returncode}): {' '.join(map(str, argv))}\n{done.stderr}")
        if seconds < best:
            best, out = seconds, (json.loads(done.stdout) if done.stdout.strip().startswith("{") else {})
    return best, out


def floor(kvm_vm, order: int, records: list[bytes], ram_mib: int) -> dict:
    """A plain os.write loop of the same records into a fresh VM: the
    whole loop, and the time spent inside write() (the kernel's part)."""
    vm = kvm_vm.VM(order, ram_mib)
    fd = vm.htab_fd(kvm_vm.KVM_GET_HTAB_WRITE)
    inside = 0.0
    clock = time.perf_counter
    try:
        t0 = clock()
        for rec in records:
            t = clock()
            n = os.write(fd, rec)
            inside += clock() - t
            if n != len(rec):
                raise SystemExit(f"the kernel took {n} of {len(rec)} bytes")
        seconds = clock() - t0
    finally:
        os.close(fd)
        os.close(vm.fd)
        os.close(vm.kvm)
    nbytes = sum(map(len, records))
    return {"records": len(records), "bytes": nbytes, "seconds": seconds, "in_write_seconds": inside,
            "records_per_s": len(records) / seconds, "bytes_per_s": nbytes / seconds,
            "us_per_write": 1e6 * inside / len(records)}


def profile_load(kvm_vm, order: int, snapshot: str, ram_mib: int, top: int = 8) -> dict:
    """``ops.load_kvm`` in this process (a VM of its own, as --kvm-fd): its
    wall time without and with cProfile, and the profile's top functions."""
    from htabtool import ops
    from htabtool.sources import open_snapshot

    def once(profiler=None):
        vm = kvm_vm.VM(order, ram_mib)
        try:
            with open_snapshot(snapshot) as snap:
                t0 = time.perf_counter()
                if profiler:
                    profiler.enable()
                report = ops.load_kvm(snap, fd=vm.fd)
                if profiler:
                    profiler.disable()
                return time.perf_counter() - t0, report
        finally:
            os.close(vm.fd)
            os.close(vm.kvm)

    seconds, report = once()
    prof = cProfile.Profile()
    profiled, _ = once(prof)
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(top)
    lines = [line for line in text.getvalue().splitlines() if re.match(r"\s+\d", line)]
    return {"seconds": seconds, "records": report.records, "records_per_s": report.records / seconds,
            "profiled_seconds": profiled, "top_by_own_time": lines}


def inside_main(args) -> dict:
    from tests.helpers import kvm_vm  # run as python -m benchmarks.bench_kvm from the repository

    work = tempfile.mkdtemp(prefix="bench-kvm-")
    npte = 1 << (args.order - 4)
    records = kvm_vm.random_records(args.seed, npte, args.records, args.ram << 20)
    result = {"host": {"kernel": os.uname().release, "machine": os.uname().machine,
                       "cpu": next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                    if line.startswith("cpu")), "?")},
              "order": args.order, "records": len(records), "bytes": sum(map(len, records))}
    result["floor"] = floor(kvm_vm, args.order, records, args.ram)
    print(f"floor: {result['floor']['seconds']:.2f} s", flush=True)
    src = Holder("--order", args.order, "--records", args.records, "--seed", args.seed, "--ram", args.ram)
    dst = Holder("--order", args.order, "--ram", args.ram)
    try:
        snap = os.path.join(work, "a.htab")
        seconds, out = timed(HTABTOOL + ["dump", "-q", "--kvm", src.pid, "-o", snap, "-f", "--json"], args.repeat)
        stat = json.loads(subprocess.run(HTABTOOL + ["stat", "--json", snap], capture_output=True, check=True).stdout)
        result["dump_kvm"] = {"seconds": seconds, "records": stat["records"], "raw_bytes": stat["raw_bytes"],
                              "records_per_s": stat["records"] / seconds, "bytes_per_s": stat["raw_bytes"] / seconds}
        print(f"dump --kvm: {seconds:.2f} s", flush=True)
        seconds, out = timed(HTABTOOL + ["load", "-q", snap, "--kvm", dst.pid, "--json"], args.repeat)
        result["load_kvm"] = {"seconds": seconds, "records": out["records"], "writes": out["writes"],
                              "bytes": out["bytes"], "records_per_s": out["records"] / seconds,
                              "bytes_per_s": out["bytes"] / seconds}
        # what any command costs here before its work: the same snapshot's stat (its reading is milliseconds)
        result["startup_seconds"], _ = timed(HTABTOOL + ["stat", "--json", snap], args.repeat)
        print(f"load --kvm: {seconds:.2f} s; a command's start-up: {result['startup_seconds']:.2f} s", flush=True)
        result["load_in_process"] = profile_load(kvm_vm, args.order, snap, args.ram)
    finally:
        src.close()
        dst.close()
    return result


# -- outside: through the kit ---------------------------------------------------------


def kit() -> tuple[pathlib.Path, pathlib.Path | None]:
    script = pathlib.Path(os.environ.get("HTABTOOL_KVM_HOST") or REPO.parent / "shared" / "kvm-host" / "kvm-host.sh")
    if os.environ.get("HTABTOOL_KVM_HOST_DIR"):
        return script, pathlib.Path(os.environ["HTABTOOL_KVM_HOST_DIR"])
    try:
        m = re.search(r"^DEFAULT_DIR=(\S+)", script.read_text(), re.M)
    except OSError:
        raise SystemExit(f"the kernel kit is not at {script} (set HTABTOOL_KVM_HOST)") from None
    return script, pathlib.Path(m.group(1)) if m else None


def outside_main(args) -> dict:
    script, folder = kit()
    out = pathlib.Path(tempfile.mkdtemp(prefix="bench-kvm-out-"))
    cmd = [str(script), "run"] + (["--dir", str(folder)] if folder else []) + [
        "--out", str(out), "--timeout", str(args.timeout), "--exclude", "fixtures", "--exclude", "docs",
        str(REPO), "--", "python3", "-m", "benchmarks.bench_kvm", "--order", str(args.order),
        "--records", str(args.records), "--repeat", str(args.repeat), "--seed", str(args.seed),
        "--ram", str(args.ram), "--json", "/out/bench_kvm.json"]
    env = dict(os.environ, MACHINE=args.machine, CPU=args.machine.replace("powernv", "POWER"))
    done = subprocess.run(cmd, env=env)
    if done.returncode != 0:
        raise SystemExit(f"the kit's run failed (exit {done.returncode})")
    return json.loads((out / "bench_kvm.json").read_text())


def report(r: dict) -> str:
    f, d, ld, p = r["floor"], r["dump_kvm"], r["load_kvm"], r["load_in_process"]
    lines = [
        f"{r['host']['cpu']} host, Linux {r['host']['kernel']}; order {r['order']}, {r['records']:,} records "
        f"({r['bytes']:,} bytes); start-up of a command here {r['startup_seconds']:.2f} s",
        f"load --kvm (whole process): {ld['seconds']:.2f} s, {ld['records_per_s']:,.0f} records/s, "
        f"{ld['bytes_per_s'] / 1e6:.2f} MB/s ({ld['writes']:,} writes)",
        f"dump --kvm (whole process): {d['seconds']:.2f} s, {d['records_per_s']:,.0f} records/s, "
        f"{d['bytes_per_s'] / 1e6:.2f} MB/s",
        f"load in-process (ops.load_kvm): {p['seconds']:.2f} s, {p['records_per_s']:,.0f} records/s",
        f"floor, a plain os.write loop: {f['seconds']:.2f} s, {f['records_per_s']:,.0f} records/s, "
        f"{f['us_per_write']:.0f} us inside each write() "
        f"({100 * f['in_write_seconds'] / f['seconds']:.0f} % of the loop)",
        f"cProfile of ops.load_kvm ({p['profiled_seconds']:.2f} s profiled), top by own time:",
        "   ncalls  tottime  percall  cumtime  percall filename:lineno(function)",
        *p["top_by_own_time"],
    ]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_kvm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--order", type=int, default=24)
    ap.add_argument("--records", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ram", type=int, default=64, help="MiB of guest memory at address 0")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--machine", default="powernv8", help="outside: the kit's MACHINE (powernv8 or powernv9)")
    ap.add_argument("--timeout", type=int, default=1200, help="outside: seconds before the kit stops the host")
    return ap.parse_args(argv)


def main() -> None:
    args = parse_args()
    r = inside_main(args) if INSIDE else outside_main(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    print(report(r), flush=True)


if __name__ == "__main__":
    main()
