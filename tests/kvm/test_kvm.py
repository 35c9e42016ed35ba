"""htabtool against the real kernel: Linux's own KVM-HV and its htab fd.

Opt-in (``python -m pytest -m kvm tests/kvm/test_kvm.py``).  Two kinds of test:

- inside a POWER KVM-HV host (``/dev/kvm`` there and serving HV VMs, as in
  the kernel kit, which sets KVM_HOST=1): the engine against the kernel
  byte for byte (the same records written one per write() into a fresh
  real VM and a fresh SimulatedHPT of the same host CPU and memory, then
  reads of many sizes, start indexes, both flags, first and later passes,
  writes in the middle of a pass, bad writes, several records in one
  write(), 0xffff runs), and the backend end to end (``dump --kvm PID`` of
  a helper process holding a VM, ``load --kvm`` into a second one, ``diff``
  exit 0; the migration guard; EBUSY with a running vCPU);
- anywhere else: the same tests run inside the kernel kit, booted once per
  host machine (POWER8 and POWER9), found through ``HTABTOOL_KVM_HOST``,
  else at ``../shared/kvm-host/kvm-host.sh`` beside the repository (set up
  once with ``kvm-host.sh setup``).  About 2 to 4 minutes a machine under
  software emulation.

Each is skipped, with the reason, where what it needs is absent.
"""

from __future__ import annotations

import os
import pathlib
import random
import re
import select
import subprocess
import sys

import pytest

from tests.helpers import ENV, ROOT, cli_run

pytestmark = pytest.mark.kvm

KIT = pathlib.Path(os.environ.get("HTABTOOL_KVM_HOST") or ROOT.parent / "shared" / "kvm-host" / "kvm-host.sh")


def _kit_dir() -> pathlib.Path | None:
    """Where the kit keeps its host: $HTABTOOL_KVM_HOST_DIR, else the kit's
    own default (its DEFAULT_DIR line)."""
    if os.environ.get("HTABTOOL_KVM_HOST_DIR"):
        return pathlib.Path(os.environ["HTABTOOL_KVM_HOST_DIR"])
    try:
        m = re.search(r"^DEFAULT_DIR=(\S+)", KIT.read_text(), re.M)
    except OSError:
        return None
    return pathlib.Path(m.group(1)) if m else None


KIT_DIR = _kit_dir()
INSIDE = os.path.exists("/dev/kvm") and os.path.exists("/proc/cpuinfo") and "POWER" in open("/proc/cpuinfo").read()
inside = pytest.mark.skipif(not INSIDE, reason="needs a POWER KVM-HV host (/dev/kvm); run through the kernel kit")

if INSIDE:
    from htabtool.kvm import parse_cpuinfo  # noqa: E402
    from htabtool.sim import KVM_GET_HTAB_BOLTED_ONLY, KVM_GET_HTAB_WRITE, SimulatedHPT  # noqa: E402
    from tests.helpers import kvm_vm  # noqa: E402

    CPU = re.match(r"POWER\d+", parse_cpuinfo(open("/proc/cpuinfo").read()) or "").group(0)
RAM_MIB = 64


# -- inside the host: the engine against the kernel ------------------------------


class Pair:
    """A fresh real VM and a fresh SimulatedHPT made alike: same order, the
    same guest RAM at address 0 (backed by the host's 64K pages), the
    host's CPU."""

    def __init__(self, order=18):
        self.vm = kvm_vm.VM(order, RAM_MIB)
        self.e = SimulatedHPT(order, ram_size=self.vm.ram, backing_page_shift=16, cpu=CPU)
        self.npte = self.vm.npte
        self.fds = []

    def open(self, flags=0, start=0):
        k = self.vm.htab_fd(flags, start)
        self.fds.append(k)
        return k, self.e.htab_fd(flags, start)

    def write_each(self, records):
        """One write() per record on both: the return values must agree."""
        want = self.vm.write_each(records)
        fd = self.e.htab_fd(KVM_GET_HTAB_WRITE)
        got = []
        for rec in records:
            got.append(_call(fd.write, rec))
        fd.close()
        assert got == want
        return got

    def write_one(self, data):
        """One write() of ``data`` on both (several records, maybe)."""
        k = self.vm.htab_fd(KVM_GET_HTAB_WRITE)
        try:
            want = _call(lambda d: os.write(k, d), data)
        finally:
            os.close(k)
        got = _call(self.e.htab_fd(KVM_GET_HTAB_WRITE).write, data)
        assert got == want, (got, want)
        return got

    def read_both(self, kfd, efd, size):
        want = _call(lambda n: os.read(kfd, n), size)
        got = _call(efd.read, size)
        assert got == want, (size, _head(got), _head(want))
        return want

    def same_table(self):
        """A whole first pass of a new read fd, 64 KiB reads, on both."""
        k, e = self.open()
        while True:
            data = self.read_both(k, e, 1 << 16)
            if not e.first_pass or not data:
                break
        e.close()

    def close(self):
        for fd in self.fds:
            os.close(fd)
        os.close(self.vm.fd)
        os.close(self.vm.kvm)


def _call(f, arg):
    try:
        return f(arg)
    except OSError as exc:
        return -exc.errno


def _head(x):
    return x[:64] if isinstance(x, bytes) else x


@pytest.fixture
def pair():
    p = Pair()
    yield p
    p.close()


def _filled(p, seed=1, count=300):
    recs = kvm_vm.random_records(seed, p.npte, count, p.vm.ram)
    assert all(n > 0 for n in p.write_each(recs))
    return recs


SIZES = [1, 24, 25, 26, 40, 41, 57, 100, 1000, 4096, 65536, 1 << 20]


@inside
@pytest.mark.parametrize("flags", [0, 1])
def test_first_passes_of_every_size_and_start(pair, flags):
    _filled(pair)
    for start in (0, 5, pair.npte // 2, pair.npte - 1, pair.npte, pair.npte + 7):
        for size in SIZES:
            k, e = pair.open(flags, start)
            reads = 0
            while e.first_pass and reads < 100_000:
                pair.read_both(k, e, size)
                reads += 1
                if size <= 24:
                    break
            pair.read_both(k, e, size)  # the next pass: nothing changed
            e.close()


@inside
def test_later_passes_and_writes_in_the_middle_of_a_pass(pair):
    recs = _filled(pair, seed=2)
    k, e = pair.open()
    pair.read_both(k, e, 4096)  # part of the first pass
    rng = random.Random(5)
    pair.write_each(kvm_vm.random_records(9, pair.npte, 40, pair.vm.ram))  # changes behind and ahead of it
    pair.write_each([kvm_vm.record(int.from_bytes(r[:4], sys.byteorder), [], 1)
                     for r in rng.sample(recs, min(20, len(recs)))])
    for size in (4096, 65536, 100, 25, 65536, 65536):
        pair.read_both(k, e, size)
    pair.write_each(kvm_vm.random_records(11, pair.npte, 30, pair.vm.ram))
    for _ in range(6):  # the rest of this pass and the next ones
        pair.read_both(k, e, 300)
    pair.same_table()


@inside
def test_bolted_only_later_passes(pair):
    _filled(pair, seed=3)
    k, e = pair.open(KVM_GET_HTAB_BOLTED_ONLY)
    while e.first_pass:
        pair.read_both(k, e, 65536)
    pair.write_each(kvm_vm.random_records(4, pair.npte, 50, pair.vm.ram))
    for _ in range(4):
        pair.read_both(k, e, 1000)


BAD = [
    ("index past the table", lambda n: kvm_vm.record(n, [], 0)),
    ("run past the table", lambda n: kvm_vm.record(n - 2, [(0x91a11, 0x10012)], 2)),
    ("n_invalid 0xffff past the end", lambda n: kvm_vm.record(1, [], 0xFFFF)),
    ("no valid bit", lambda n: kvm_vm.record(3, [(0x91a10, 0x10012)])),
    ("ABSENT alone", lambda n: kvm_vm.record(3, [(0x91a30, 0x10012)])),
    ("LP 0010", lambda n: kvm_vm.record(3, [(0x91a15, 0x12012)])),
    ("segment size 0b10", lambda n: kvm_vm.record(3, [((2 << 62) | 0x91a11, 0x10012)])),
    ("16M page in 64K-backed RAM", lambda n: kvm_vm.record(3, [(0x91a15, 0x1000012)])),
    ("second entry bad", lambda n: kvm_vm.record(40, [(0x91a11, 0x10012), (0x91a10, 0x20012)], 3)),
    ("64K page in a 4K segment", lambda n: kvm_vm.record(3, [(0x91a15, 0x17012)])),
    ("short of a header", lambda n: kvm_vm.record(3, [], 1)[:7]),
    ("header only", lambda n: kvm_vm.record(5, [], 0)),
]


@inside
@pytest.mark.parametrize("name, make", BAD, ids=[b[0] for b in BAD])
def test_bad_writes_errno_and_table_after(pair, name, make):
    _filled(pair, seed=6, count=60)
    pair.write_one(make(pair.npte))
    pair.same_table()


@inside
@pytest.mark.parametrize("seed", range(6))
def test_several_records_in_one_write(pair, seed):
    """The kernel's pointer quirk, modelled exactly: one write() of a
    stream of records applies what the kernel reads from it."""
    _filled(pair, seed=seed + 20, count=40)
    recs = kvm_vm.random_records(seed, pair.npte, 7, pair.vm.ram)
    if seed % 2:
        recs = [kvm_vm.record(8 * k, [], 3) for k in range(4)] + recs  # n_valid 0 records chain right
    n = pair.write_one(b"".join(recs))
    if seed == 0:
        assert n != sum(map(len, recs))  # not what a kinder parser would return
    pair.same_table()


@inside
def test_runs_of_0xffff():
    p = Pair(order=21)  # 131072 entries: invalid runs of 0xffff and more
    try:
        entry = (0x1234 << 7) | 1, 0x10012
        assert p.write_each([kvm_vm.record(i, [entry], 0) for i in (0, 70000, 131071)]) == [24] * 3
        assert p.write_each([kvm_vm.record(1, [entry] * 3, 0xFFFF)]) == [8 + 48]
        for size in (25, 4096, 1 << 20):
            k, e = p.open()
            while e.first_pass:
                p.read_both(k, e, size)
            e.close()
        p.write_one(kvm_vm.record(0, [], 0xFFFF) + kvm_vm.record(0xFFFF, [], 0xFFFF))  # n_valid 0 chains
        p.same_table()
    finally:
        p.close()


# -- inside the host: the backend end to end ------------------------------------------


class Helper:
    """``python3 tests/helpers/kvm_vm.py serve ...``: a process holding a VM."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, kvm_vm.__file__, "serve",
                                      *map(str, args)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=ENV)
        self.lines = []
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], 120)
            line = self.proc.stdout.readline() if ready else ""
            if not line:
                raise AssertionError(f"the helper did not get ready: {self.lines}")
            self.lines.append(line.strip())
            if line.startswith("READY"):
                self.pid = int(line.split()[1])
                return

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def helpers():
    made = []

    def make(*args):
        h = Helper(*args)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


@inside
def test_dump_load_dump_diff_equal(helpers, tmp_path):
    src = helpers("--order", 18, "--records", 400, "--seed", 3)
    dst = helpers("--order", 18)
    r = cli_run("dump", "--kvm", src.pid, "-o", "a.htab", "--json", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    meta = cli_run("stat", "a.htab", "--json", cwd=tmp_path)
    assert meta.exit_code == 0, meta.output
    import json

    source = json.loads(meta.stdout)["source"]
    assert source["kind"] == "kvm" and source["pid"] == src.pid and source["kernel"] == os.uname().release
    assert source["cpu"].startswith(CPU) and "kvm_vm.py" in " ".join(source["cmdline"])
    written = kvm_vm.random_records(3, 1 << 14, 400, RAM_MIB << 20)
    valid = sum(int.from_bytes(r[4:6], sys.byteorder) for r in written)
    assert json.loads(meta.stdout)["order"] == 18 and json.loads(meta.stdout)["valid"] == valid > 100
    r = cli_run("load", "a.htab", "--kvm", dst.pid, "--json", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["writes"] == json.loads(r.stdout)["records"]
    r = cli_run("dump", "--kvm", dst.pid, "-o", "b.htab", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    assert cli_run("diff", "a.htab", "b.htab", cwd=tmp_path).exit_code == 0
    # and it can fail: a third VM with other records differs
    other = helpers("--order", 18, "--records", 50, "--seed", 4)
    assert cli_run("dump", "--kvm", other.pid, "-o", "c.htab", cwd=tmp_path).exit_code == 0
    assert cli_run("diff", "a.htab", "c.htab", cwd=tmp_path).exit_code == 1


@inside
def test_live_passes_and_start_index_and_bolted_only(helpers, tmp_path):
    src = helpers("--order", 19, "--records", 200, "--seed", 8)
    r = cli_run("dump", "--kvm", src.pid, "--passes", 3, "--buffer-size", 4096, "--start-index", 100, "--bolted-only",
                "-o", "a.htab", "--json", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    import json

    out = json.loads(r.stdout)
    assert out["passes"] >= 1 and out["per_pass"][0]["records"] > 0
    assert cli_run("verify", "a.htab", cwd=tmp_path).exit_code == 0


@inside
def test_kvm_fd_of_this_process(tmp_path):
    vm = kvm_vm.VM(18, RAM_MIB)
    try:
        vm.write_each(kvm_vm.random_records(5, vm.npte, 100, vm.ram))
        r = cli_run("dump", "--kvm-fd", vm.fd, "-o", "a.htab", cwd=tmp_path)
        assert r.exit_code == 0, r.output
        r = cli_run("dump", "--kvm-fd", vm.kvm, "-o", "b.htab", cwd=tmp_path)  # /dev/kvm, not a VM fd
        assert r.exit_code == 2 and "not a KVM VM fd" in r.output
    finally:
        os.close(vm.fd)
        os.close(vm.kvm)


@inside
def test_a_second_reader_is_refused(helpers, tmp_path):
    src = helpers("--order", 18, "--records", 100, "--reader")
    r = cli_run("dump", "--kvm", src.pid, "-o", "a.htab", cwd=tmp_path)
    assert r.exit_code == 2
    assert "already holds an htab fd" in r.output and "migration" in r.output and "(read)" in r.output
    assert not (tmp_path / "a.htab").exists()
    r = cli_run("dump", "--kvm", src.pid, "--ignore-readers", "-o", "a.htab", cwd=tmp_path)
    assert r.exit_code == 0, r.output


@inside
def test_order_mismatch_and_no_process(helpers, tmp_path):
    src = helpers("--order", 18, "--records", 30)
    dst = helpers("--order", 19)
    assert cli_run("dump", "--kvm", src.pid, "-o", "a.htab", cwd=tmp_path).exit_code == 0
    r = cli_run("load", "a.htab", "--kvm", dst.pid, cwd=tmp_path)
    assert r.exit_code == 2 and "32,768 entries (order 19)" in r.output
    r = cli_run("dump", "--kvm", os.getpid(), "-o", "b.htab", cwd=tmp_path)  # pytest holds no VM fd
    assert r.exit_code == 2 and "holds no KVM VM fd" in r.output


@inside
def test_load_into_a_running_guest_is_ebusy(helpers, tmp_path):
    src = helpers("--order", 18, "--records", 30)
    assert cli_run("dump", "--kvm", src.pid, "-o", "a.htab", cwd=tmp_path).exit_code == 0
    running = helpers("--order", 18, "--run-vcpu")
    if "VCPU running" not in running.lines or any(line.startswith("VCPU ") and line != "VCPU running"
                                                  for line in running.lines):
        pytest.skip(f"no vCPU could be kept running in this host: {running.lines}")
    r = cli_run("load", "a.htab", "--kvm", running.pid, cwd=tmp_path)
    assert r.exit_code == 2, r.output
    assert "EBUSY" in r.output and "stop the guest first" in r.output


@inside
def test_a_radix_guest_is_refused(helpers, tmp_path):
    if CPU == "POWER8":
        pytest.skip("a POWER8 host has no radix MMU")
    try:
        radix = helpers("--order", 18, "--radix")
    except AssertionError as exc:
        pytest.skip(f"KVM_PPC_CONFIGURE_V3_MMU(radix) refused here: {exc}")
    r = cli_run("dump", "--kvm", radix.pid, "-o", "a.htab", cwd=tmp_path)
    assert r.exit_code == 2 and "radix" in r.output


# -- anywhere else: through the kit ---------------------------------------------------


def _kit_skip_reason() -> str | None:
    if INSIDE:
        return "already inside a KVM host"
    if not KIT.is_file():
        return f"the kernel kit is not at {KIT} (set HTABTOOL_KVM_HOST)"
    if KIT_DIR is None or not (KIT_DIR / "base.cpio.zst").is_file():
        return f"the kernel kit is not set up in {KIT_DIR} (run kvm-host.sh setup once; HTABTOOL_KVM_HOST_DIR)"
    return None


@pytest.mark.skipif(_kit_skip_reason() is not None, reason=_kit_skip_reason() or "")
@pytest.mark.parametrize("machine, cpu", [("powernv8", "POWER8"), ("powernv9", "POWER9")])
def test_inside_the_kernel_kit(machine, cpu, tmp_path):
    env = dict(os.environ, MACHINE=machine, CPU=cpu)
    out = tmp_path / "out"
    cmd = [str(KIT), "run", "--dir", str(KIT_DIR), "--out", str(out), "--timeout", "900",
           "--exclude", "benchmarks", "--exclude", "fixtures", str(ROOT), "--",
           "python3", "-m", "pytest", "-q", "-m", "kvm", "-p", "no:cacheprovider", "tests/kvm/test_kvm.py"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    tail = "\n".join(done.stdout.splitlines()[-30:])
    assert done.returncode == 0, f"{machine}: exit {done.returncode}\n{tail}\n{done.stderr[-2000:]}"
    assert re.search(r"\d+ passed", done.stdout), tail
