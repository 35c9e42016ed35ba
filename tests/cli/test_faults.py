"""Faults: a full disk, a file size limit, kill -9 at any point; and safety.

What must hold (htabtool-errors(7), FAULTS):

- a command that fails leaves nothing under the name it was to write (the
  old file, if there was one, untouched), removes its temporary file, and
  says so in one line, exit 2;
- a command killed outright (SIGKILL) never leaves a partial snapshot under
  the destination's name (a temporary ``.NAME.<16 hex>.tmp``, mode 0600, may
  stay behind), and a VM image it was changing is byte for byte as before or
  as after, never in between.

Kill points are of two kinds.  Counted: the command runs under a small
wrapper (HOOK) that numbers every call of os.open, os.pwrite, os.ftruncate,
os.fsync, os.replace, os.rename, os.link, os.unlink, of the writes of output
files and of the writes into a VM's htab fd, and kills the process with
SIGKILL just before the call numbered HTABTOOL_KILL_AT; a first run without
a kill lists the calls, and the kills are chosen among them at random
(always including the rename and the call after it).  Timed: a plain run
killed after a random delay.  HTABTOOL_FAULT_SEED fixes the choice.
"""

from __future__ import annotations

import ast
import errno
import hashlib
import os
import random
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from htabtool import atomic, ops
from htabtool.sources import open_snapshot
from tests import helpers as C
from tests.helpers import HTABTOOL, ROOT, cli_run, env_with_root, spawn_htabtool

SEED = int(os.environ.get("HTABTOOL_FAULT_SEED", time.time_ns() % 1_000_000))
TEMP = re.compile(r"^\..+\.[0-9a-f]{16}\.tmp$")

HOOK = r"""
import atexit, os, signal, sys
target = int(os.environ.get("HTABTOOL_KILL_AT", "0"))
trace = []
def wrap(owner, name, label):
    fn = getattr(owner, name)
    def hooked(*args, **kwargs):
        trace.append(label)
        if len(trace) == target:
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(*args, **kwargs)
    setattr(owner, name, hooked)
for name in ("open", "pwrite", "ftruncate", "fsync", "replace", "rename", "link", "unlink"):
    wrap(os, name, name)
import htabtool.atomic, htabtool.sim.htabfd
wrap(htabtool.atomic._File, "write", "file-write")
wrap(htabtool.sim.htabfd.HtabFd, "write", "htab-write")
wrap(htabtool.sim.htabfd.HtabFd, "write_records", "htab-write")  # one record per write(), a burst of them
if not target:
    atexit.register(lambda: sys.stderr.write("\nKILL-POINTS " + " ".join(trace) + "\n"))
from htabtool.cli import main
main()
"""


def htabtool(*args, cwd: Path, kill_at: int | None = None, preexec=None, timeout: float = 120):
    """The command in a new process; with ``kill_at`` under HOOK (0: count)."""
    env = env_with_root()
    if kill_at is None:
        cmd = HTABTOOL
    else:
        cmd = [sys.executable, "-c", HOOK]
        env["HTABTOOL_KILL_AT"] = str(kill_at)
    return subprocess.run(cmd + [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=preexec)


def kill_points(*args, cwd: Path) -> list[str]:
    done = htabtool(*args, cwd=cwd, kill_at=0)
    assert done.returncode == 0, done.stderr
    return done.stderr.rsplit("KILL-POINTS", 1)[1].split()


def choose(points: list[str], k: int, rng: random.Random) -> list[int]:
    """1-based kill points: k at random, the last rename and the call after it."""
    chosen = set(rng.sample(range(1, len(points) + 1), min(k, len(points))))
    for i, name in enumerate(points, 1):
        if name in ("replace", "rename", "link"):
            chosen |= {i, min(i + 1, len(points))}
    return sorted(chosen)


def killed_after(seconds: float, *args, cwd: Path) -> int:
    proc = spawn_htabtool(*args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    proc.send_signal(signal.SIGKILL)
    return proc.wait()


def sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def leftovers(directory: Path, keep: set[str]) -> list[Path]:
    """Files other than ``keep``: each must be one of our temporary files,
    mode 0600; they are removed."""
    extra = [p for p in directory.iterdir() if p.name not in keep]
    for p in extra:
        assert TEMP.match(p.name), f"unexpected file {p.name}"
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        p.unlink()
    return extra


def sound_and_equal(path: Path, reference: Path) -> bool:
    with open_snapshot(str(path)) as a, open_snapshot(str(reference)) as b:
        return ops.verify(a).sound and not ops.diff(a, b).different


def one_line(result_stderr: str, fragment: str) -> None:
    assert result_stderr.startswith("htabtool: error: ") and result_stderr.count("\n") == 1, result_stderr
    assert fragment in result_stderr, result_stderr
    assert "Traceback" not in result_stderr


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Inputs made once: a raw capture of a large table (several chunks), an
    older snapshot, a stopped VM image and a snapshot of another guest."""
    d = tmp_path_factory.mktemp("inputs")
    (d / "big.bin").write_bytes(C.record_stream(22, "little", 1 << 16, fill=0.5))
    (d / "small.bin").write_bytes(C.record_stream(18, "little", 4096))
    assert cli_run("dump", "--raw", "small.bin", "--byte-order", "little", "--order", 18, "-o", "old.htab",
                   cwd=d).exit_code == 0
    assert cli_run("dump", "--raw", "big.bin", "--byte-order", "little", "--order", 22, "-o", "big.htab",
                   cwd=d).exit_code == 0
    assert cli_run("vm", "create", "src.img", "--order", 18, "--profile", "idle", "--seed", 2, cwd=d).exit_code == 0
    assert cli_run("dump", "--vm", "src.img", "-o", "guest.htab", cwd=d).exit_code == 0
    assert cli_run("vm", "create", "guest.img", "--order", 18, "--profile", "kernel-build", "--seed", 5,
                   cwd=d).exit_code == 0
    assert cli_run("vm", "stop", "guest.img", cwd=d).exit_code == 0
    return d


def workdir(tmp_path: Path, inputs: Path, *names: str) -> Path:
    for name in names:
        shutil.copyfile(inputs / name, tmp_path / name)
        os.chmod(tmp_path / name, 0o600)
    return tmp_path


# -- a full disk, in this process -----------------------------------------------------------


class FullDisk:
    """An io.FileIO whose writes fail with ENOSPC once ``budget`` bytes are
    written (the last write short, as the kernel does)."""

    budget = 0

    def __init__(self, budget: int):
        self.budget = budget

    def make(self):
        budget = self

        class _FileIO(atomic.io.FileIO):
            def write(self, data):
                if budget.budget <= 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                n = super().write(memoryview(data)[: budget.budget])
                budget.budget -= n
                return n

        return types.SimpleNamespace(FileIO=_FileIO, BufferedWriter=atomic.io.BufferedWriter)




@pytest.mark.parametrize("budget", [0, 100, 5000, 200_000])
@pytest.mark.parametrize("old", [False, True], ids=["new", "replacing"])
def test_dump_on_a_full_disk(inputs, tmp_path, monkeypatch, budget, old):
    d = workdir(tmp_path, inputs, "big.bin", *(["old.htab"] if old else []))
    before = sha(d / "old.htab")
    if old:
        os.rename(d / "old.htab", d / "out.htab")
    monkeypatch.setattr(atomic, "io", FullDisk(budget).make())
    r = cli_run("dump", "--raw", "big.bin", "--byte-order", "little", "--order", 22, "-o", "out.htab", "-f", cwd=d)
    assert r.exit_code == 2
    one_line(r.stderr, "No space left on device: out.htab")
    assert sha(d / "out.htab") == before  # the old snapshot, or none
    assert sorted(p.name for p in d.iterdir()) == sorted(["big.bin"] + (["out.htab"] if old else []))


@pytest.mark.parametrize("command", [
    ("load", "big.htab", "--raw-out", "out.bin"),
    ("load", "big.htab", "--qemu-section", "out.bin"),
    ("diff", "old.htab", "guest.htab", "--delta", "out.bin"),
], ids=["raw-out", "qemu-section", "diff-delta"])
def test_other_outputs_on_a_full_disk(inputs, tmp_path, monkeypatch, command):
    d = workdir(tmp_path, inputs, "big.htab", "old.htab", "guest.htab")
    monkeypatch.setattr(atomic, "io", FullDisk(3000).make())
    r = cli_run(*command, cwd=d)
    assert r.exit_code == 2
    one_line(r.stderr, "No space left on device: out.bin")
    assert sorted(p.name for p in d.iterdir()) == ["big.htab", "guest.htab", "old.htab"]


def test_a_full_disk_reported_by_fsync(inputs, tmp_path, monkeypatch):
    """Some file systems (NFS, some FUSE) report ENOSPC only at fsync."""
    d = workdir(tmp_path, inputs, "small.bin", "old.htab")
    before = sha(d / "old.htab")

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    r = cli_run("dump", "--raw", "small.bin", "--byte-order", "little", "--order", 18, "-o", "old.htab", "-f", cwd=d)
    assert r.exit_code == 2
    one_line(r.stderr, "No space left on device: old.htab")
    assert sha(d / "old.htab") == before
    assert sorted(p.name for p in d.iterdir()) == ["old.htab", "small.bin"]


def _pwrite_fails_after(monkeypatch, calls: int):
    real = os.pwrite
    count = [0]

    def pwrite(fd, data, offset):
        count[0] += 1
        if count[0] > calls:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)


def test_load_vm_on_a_full_disk_leaves_the_image(inputs, tmp_path, monkeypatch):
    d = workdir(tmp_path, inputs, "guest.htab", "guest.img")
    before = sha(d / "guest.img")
    _pwrite_fails_after(monkeypatch, 0)
    r = cli_run("load", "guest.htab", "--vm", "guest.img", cwd=d)
    assert r.exit_code == 2
    one_line(r.stderr, "No space left on device")
    assert sha(d / "guest.img") == before


def test_load_vm_on_a_full_disk_leaves_no_copy(inputs, tmp_path, monkeypatch):
    d = workdir(tmp_path, inputs, "guest.htab", "guest.img")
    _pwrite_fails_after(monkeypatch, 0)
    assert cli_run("load", "guest.htab", "--vm", "guest.img", cwd=d).exit_code == 2
    assert sorted(p.name for p in d.iterdir()) == ["guest.htab", "guest.img"]


@pytest.mark.parametrize("command", [("vm", "run", "guest.img", "--ops", 5), ("vm", "stop", "guest.img")])
def test_vm_changes_on_a_full_disk(inputs, tmp_path, monkeypatch, command):
    d = workdir(tmp_path, inputs, "guest.img")
    assert cli_run("vm", "cont", "guest.img", cwd=d).exit_code == 0
    before = sha(d / "guest.img")
    _pwrite_fails_after(monkeypatch, 0)
    r = cli_run(*command, cwd=d)
    assert r.exit_code == 2
    one_line(r.stderr, "guest.img: cannot make the working copy of the image (No space left on device); "
                       "the image is left as it was")
    assert sha(d / "guest.img") == before
    assert sorted(p.name for p in d.iterdir()) == ["guest.img"]


# -- a file size limit, in a real process (RLIMIT_FSIZE: EFBIG) --------------------------------


def fsize_limit(limit: int):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return preexec


@pytest.mark.parametrize("old", [False, True], ids=["new", "replacing"])
def test_dump_past_a_file_size_limit(inputs, tmp_path, old):
    d = workdir(tmp_path, inputs, "big.bin", *(["old.htab"] if old else []))
    if old:
        os.rename(d / "old.htab", d / "out.htab")
    before = sha(d / "out.htab")
    done = htabtool("dump", "--raw", "big.bin", "--byte-order", "little", "--order", 22, "-o", "out.htab", "-f",
                    cwd=d, preexec=fsize_limit(64 << 10))
    assert done.returncode == 2, done.stderr
    one_line(done.stderr, "File too large: out.htab")
    assert sha(d / "out.htab") == before
    assert sorted(p.name for p in d.iterdir()) == sorted(["big.bin"] + (["out.htab"] if old else []))


def test_vm_run_past_a_file_size_limit(inputs, tmp_path):
    d = workdir(tmp_path, inputs, "guest.img")
    assert cli_run("vm", "cont", "guest.img", cwd=d).exit_code == 0
    before = sha(d / "guest.img")
    done = htabtool("vm", "run", "guest.img", "--ops", 5, cwd=d, preexec=fsize_limit(64 << 10))
    assert done.returncode == 2
    one_line(done.stderr, "cannot make the working copy of the image (File too large)")
    assert sha(d / "guest.img") == before
    assert sorted(p.name for p in d.iterdir()) == ["guest.img"]


def test_load_vm_past_a_file_size_limit(inputs, tmp_path):
    d = workdir(tmp_path, inputs, "guest.htab", "guest.img")
    before = sha(d / "guest.img")
    done = htabtool("load", "guest.htab", "--vm", "guest.img", cwd=d, preexec=fsize_limit(64 << 10))
    assert done.returncode == 2
    one_line(done.stderr, "File too large")
    assert sha(d / "guest.img") == before


# -- a real full file system (a small tmpfs: root only, skipped elsewhere) --------------------------


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(directory: Path, leave: int) -> None:
    """Fill the file system of ``directory`` but ``leave`` bytes."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    with open(directory / "filler", "wb") as f:
        f.write(bytes(max(0, free - leave)))


def test_a_really_full_file_system(inputs, small_fs):
    d = small_fs
    for name in ("small.bin", "guest.img"):
        shutil.copyfile(inputs / name, d / name)
    shutil.copyfile(inputs / "old.htab", d / "out.htab")
    assert cli_run("vm", "cont", "guest.img", cwd=d).exit_code == 0
    image_before, out_before = sha(d / "guest.img"), sha(d / "out.htab")
    fill(d, 8 << 10)
    names = sorted(p.name for p in d.iterdir())
    r = htabtool("dump", "--raw", "small.bin", "--byte-order", "little", "--order", 18, "-o", "out.htab", "-f", cwd=d)
    assert r.returncode == 2
    one_line(r.stderr, "No space left on device: out.htab")
    r = htabtool("vm", "run", "guest.img", "--ops", 5, cwd=d)
    assert r.returncode == 2 and "not enough free space" in r.stderr, r.stderr
    r = htabtool("vm", "create", "new.img", "--order", 18, "--profile", "idle", cwd=d)
    assert r.returncode == 2 and "not enough free space" in r.stderr, r.stderr
    assert (sha(d / "guest.img"), sha(d / "out.htab")) == (image_before, out_before)
    assert sorted(p.name for p in d.iterdir()) == names


# -- kill -9 --------------------------------------------------------------------------------------


def test_kill_dump_at_any_point(inputs, tmp_path):
    """The destination is the old snapshot or the whole new one, never a part."""
    d = workdir(tmp_path, inputs, "big.bin", "old.htab", "big.htab")
    os.rename(d / "old.htab", d / "out.htab")
    old = sha(d / "out.htab")
    args = ("dump", "--raw", "big.bin", "--byte-order", "little", "--order", 22, "-o", "out.htab", "-f")
    rng = random.Random(SEED)
    points = kill_points(*args, cwd=d)
    assert sound_and_equal(d / "out.htab", d / "big.htab")

    def old_or_new(what: str) -> bool:
        """The old file, or a sound snapshot of the whole table (its bytes
        differ from run to run: the header holds the time it was made)."""
        if sha(d / "out.htab") == old:
            return False
        assert sound_and_equal(d / "out.htab", d / "big.htab"), f"seed {SEED}, {what}: a partial snapshot"
        return True

    outcomes = []
    for at in choose(points, 5, rng):
        shutil.copyfile(inputs / "old.htab", d / "out.htab")
        done = htabtool(*args, cwd=d, kill_at=at)
        assert done.returncode == -signal.SIGKILL, (at, done.stderr)
        outcomes.append(old_or_new(f"killed at {at} ({points[at - 1]})"))
        leftovers(d, {"big.bin", "out.htab", "big.htab"})
    assert False in outcomes and True in outcomes, "the kill points missed the rename"
    for delay in (rng.uniform(0.2, 0.6), rng.uniform(0.3, 1.0)):
        shutil.copyfile(inputs / "old.htab", d / "out.htab")
        killed_after(delay, *args, cwd=d)
        old_or_new(f"killed after {delay:.2f} s")
        leftovers(d, {"big.bin", "out.htab", "big.htab"})
    # what a killed run left does not stand in the way of the next
    assert htabtool(*args, cwd=d).returncode == 0 and old_or_new("a run to the end")


def _reference(d: Path, image: str, *args) -> str:
    """The image after the command ran to the end (on a copy)."""
    ref = d / "reference"
    ref.mkdir()
    for p in d.iterdir():
        if p.is_file():
            shutil.copyfile(p, ref / p.name)
    done = htabtool(*args, cwd=ref)
    assert done.returncode == 0, done.stderr
    after = sha(ref / image)
    shutil.rmtree(ref)
    return after


def test_kill_load_vm_at_any_point(inputs, tmp_path):
    """The image is byte for byte as before or as after the load."""
    d = workdir(tmp_path, inputs, "guest.htab", "guest.img")
    keep = {"guest.htab", "guest.img"}
    args = ("load", "guest.htab", "--vm", "guest.img", "--buffer-size", 256)
    before = sha(d / "guest.img")
    after = _reference(d, "guest.img", *args)
    assert after != before
    rng = random.Random(SEED + 1)
    points = kill_points(*args, cwd=d)
    assert sha(d / "guest.img") == after
    outcomes = []
    for at in choose(points, 6, rng):
        shutil.copyfile(inputs / "guest.img", d / "guest.img")
        done = htabtool(*args, cwd=d, kill_at=at)
        assert done.returncode == -signal.SIGKILL, (at, done.stderr)
        now = sha(d / "guest.img")
        assert now in (before, after), f"seed {SEED}, killed at {at} ({points[at - 1]}): the image is in between"
        outcomes.append(now == after)
        leftovers(d, keep)
    assert False in outcomes and True in outcomes
    for delay in (rng.uniform(0.2, 0.5), rng.uniform(0.3, 0.8)):
        shutil.copyfile(inputs / "guest.img", d / "guest.img")
        killed_after(delay, *args, cwd=d)
        assert sha(d / "guest.img") in (before, after), f"seed {SEED}, killed after {delay:.2f} s"
        leftovers(d, keep)


def test_kill_vm_run_at_any_point(inputs, tmp_path):
    d = workdir(tmp_path, inputs, "guest.img")
    assert cli_run("vm", "cont", "guest.img", cwd=d).exit_code == 0
    args = ("vm", "run", "guest.img", "--ops", 400)
    before = sha(d / "guest.img")
    shutil.copyfile(d / "guest.img", tmp_path / "running.img")
    after = _reference(d, "guest.img", *args)
    rng = random.Random(SEED + 2)
    points = kill_points(*args, cwd=d)
    duration = time.monotonic()
    shutil.copyfile(tmp_path / "running.img", d / "guest.img")
    assert htabtool(*args, cwd=d).returncode == 0
    duration = time.monotonic() - duration
    outcomes = []
    for at in choose(points, 4, rng):
        shutil.copyfile(tmp_path / "running.img", d / "guest.img")
        done = htabtool(*args, cwd=d, kill_at=at)
        assert done.returncode == -signal.SIGKILL, (at, done.stderr)
        now = sha(d / "guest.img")
        assert now in (before, after), f"seed {SEED}, killed at {at} ({points[at - 1]}): the image is in between"
        outcomes.append(now == after)
        leftovers(d, {"guest.img", "running.img"})
    assert False in outcomes and True in outcomes
    # most of a run is the guest churning the mapped copy: kill it there
    for _ in range(3):
        shutil.copyfile(tmp_path / "running.img", d / "guest.img")
        delay = rng.uniform(0.3, max(0.4, duration))
        killed_after(delay, *args, cwd=d)
        assert sha(d / "guest.img") in (before, after), f"seed {SEED}, killed after {delay:.2f} s"
        leftovers(d, {"guest.img", "running.img"})
    assert cli_run("vm", "info", "guest.img", cwd=d).exit_code == 0


def test_kill_load_vm_create_leaves_no_image(inputs, tmp_path):
    d = workdir(tmp_path, inputs, "guest.htab")
    args = ("load", "guest.htab", "--vm", "new.img", "--create")
    points = kill_points(*args, cwd=d)
    os.unlink(d / "new.img")
    at = points.index("htab-write") + 1  # the load has begun
    assert htabtool(*args, cwd=d, kill_at=at).returncode == -signal.SIGKILL
    leftovers(d, {"guest.htab", "new.img"})
    assert not (d / "new.img").exists(), "an image that is neither before (none) nor after the load"


def test_kill_dump_vm_leaves_the_source_image_usable(inputs, tmp_path):
    d = workdir(tmp_path, inputs, "guest.img")
    assert cli_run("vm", "cont", "guest.img", cwd=d).exit_code == 0
    shutil.copyfile(d / "guest.img", tmp_path / "running.img")
    args = ("dump", "--vm", "guest.img", "--passes", 2, "--churn", 200, "-o", "live.htab", "-f")
    points = kill_points(*args, cwd=d)
    at = len(points) - points[::-1].index("ftruncate")  # inside the last save of the image
    shutil.copyfile(tmp_path / "running.img", d / "guest.img")
    assert htabtool(*args, cwd=d, kill_at=at).returncode == -signal.SIGKILL
    r = cli_run("vm", "info", "guest.img", cwd=d)
    assert r.exit_code == 0, r.stderr


# -- safety ---------------------------------------------------------------------------------------


def test_everything_written_is_mode_0600_even_with_umask_0(inputs, tmp_path):
    d = workdir(tmp_path, inputs, "small.bin", "guest.htab", "old.htab")
    old = os.umask(0)
    try:
        for args in (("dump", "--raw", "small.bin", "--byte-order", "little", "--order", 18, "-o", "a.htab"),
                     ("load", "guest.htab", "--raw-out", "b.bin"),
                     ("load", "guest.htab", "--qemu-section", "c.section"),
                     ("diff", "old.htab", "guest.htab", "--delta", "d.htab"),
                     ("vm", "create", "e.img", "--order", 18, "--profile", "idle"),
                     ("load", "guest.htab", "--vm", "f.img", "--create"),
                     ("vm", "run", "e.img", "--ops", 5),
                     ("vm", "stop", "e.img")):
            r = cli_run(*args, cwd=d)
            assert r.exit_code in (0, 1), (args, r.stderr)
    finally:
        os.umask(old)
    for name in ("a.htab", "b.bin", "c.section", "d.htab", "e.img", "f.img"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name


def test_the_working_copy_of_an_image_never_follows_a_planted_symlink(inputs, tmp_path, monkeypatch):
    """The copy's name is random; even a guessed name holding a symlink is
    not followed (O_EXCL | O_NOFOLLOW): another name is taken."""
    from htabtool.sim import vmimage

    d = workdir(tmp_path, inputs, "guest.img")
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    names = iter(["0000000000000000", "0000000000000000", "1111111111111111"])
    monkeypatch.setattr(atomic, "_token", lambda: next(names))
    (d / ".guest.img.0000000000000000.tmp").symlink_to(victim)
    vmimage.set_running(str(d / "guest.img"), True)
    assert victim.read_bytes() == b"keep me"
    assert vmimage.image_info(str(d / "guest.img"))["vcpus"] == "running"


def test_vm_run_through_a_symlink_changes_the_image_it_names(inputs, tmp_path):
    d = workdir(tmp_path, inputs, "guest.img")
    (d / "link.img").symlink_to("guest.img")
    assert cli_run("vm", "cont", "link.img", cwd=d).exit_code == 0
    assert (d / "link.img").is_symlink()
    assert cli_run("vm", "info", "guest.img", "--json", cwd=d).stdout.count('"vcpus": "running"') == 1


def test_load_vm_through_a_symlink_loads_the_image_it_names(inputs, tmp_path):
    d = workdir(tmp_path, inputs, "guest.img", "guest.htab")
    (d / "link.img").symlink_to("guest.img")
    before = sha(d / "guest.img")
    assert cli_run("load", "guest.htab", "--vm", "link.img", cwd=d).exit_code == 0
    assert (d / "link.img").is_symlink() and sha(d / "guest.img") != before


def test_nothing_in_a_file_is_used_as_a_path(inputs, tmp_path):
    """A snapshot's metadata can name any path (source.image, source.name):
    no command opens, creates or changes it."""
    d = workdir(tmp_path, inputs, "guest.img")
    assert cli_run("vm", "create", "target.img", "--order", 18, "--profile", "empty", cwd=d).exit_code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    planted = elsewhere / "planted"
    for p in (planted, planted.with_suffix(".img")):
        p.write_bytes(b"untouched")
    name = str(planted)
    assert cli_run("dump", "--vm", "guest.img", "-o", "guest.htab", cwd=d).exit_code == 0
    assert cli_run("load", "guest.htab", "--raw-out", "records.bin", cwd=d).exit_code == 0
    snap = C.snapshot(pieces=[(1, (d / "records.bin").read_bytes())],
                      source={"kind": "vm", "image": name + ".img", "name": name, "path": name})
    (d / "s.htab").write_bytes(snap)
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (planted, planted.with_suffix(".img"))}
    for args in (("stat", "s.htab"), ("verify", "s.htab"), ("diff", "s.htab", "s.htab", "--delta", "delta.htab"),
                 ("load", "s.htab", "--raw-out", "raw.bin"), ("load", "s.htab", "--vm", "target.img")):
        r = cli_run(*args, cwd=d)
        assert r.exit_code == 0, (args, r.stderr)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in stamps} == stamps
    assert sorted(p.name for p in elsewhere.iterdir()) == ["planted", "planted.img"]
    assert not [p for p in d.iterdir() if "planted" in p.name]


BANNED_CALLS = {"eval", "exec", "compile", "__import__", "input"}
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "yaml"}


def test_no_pickle_or_eval_anywhere():
    """No code path of the tool can run what a file contains."""
    found = []
    for path in sorted((ROOT / "htabtool").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in BANNED_CALLS:
                found.append(f"{path.name}:{node.lineno}: {node.func.id}()")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                for n in names:
                    if n and n.split(".")[0] in BANNED_MODULES:
                        found.append(f"{path.name}:{node.lineno}: import {n}")
            if isinstance(node, ast.keyword) and node.arg == "allow_pickle":
                found.append(f"{path.name}:{node.lineno}: allow_pickle")
            if isinstance(node, ast.keyword) and node.arg == "shell" and getattr(node.value, "value", False):
                found.append(f"{path.name}:{node.lineno}: shell=True")
    assert not found, found


def test_a_fifo_destination_is_written_through_not_replaced(inputs, tmp_path):
    import threading

    d = workdir(tmp_path, inputs, "guest.htab")
    os.mkfifo(d / "pipe")
    got = []
    reader = threading.Thread(target=lambda: got.append((d / "pipe").read_bytes()))
    reader.start()
    r = cli_run("load", "guest.htab", "--raw-out", "pipe", cwd=d)
    reader.join(timeout=30)
    assert r.exit_code == 0, r.stderr
    assert stat.S_ISFIFO((d / "pipe").lstat().st_mode), "the FIFO was replaced by a file"
    assert cli_run("load", "guest.htab", "--raw-out", "raw.bin", cwd=d).exit_code == 0
    assert got == [(d / "raw.bin").read_bytes()]


def test_a_name_in_dev_is_written_through_not_replaced(inputs, tmp_path, monkeypatch):
    """/dev/stdout is a link the system owns: written through to what it
    names, never replaced (here a stand-in directory plays /dev)."""
    d = workdir(tmp_path, inputs, "guest.htab")
    dev = tmp_path / "dev"
    dev.mkdir()
    (tmp_path / "terminal").write_bytes(b"")
    (dev / "stdout").symlink_to(tmp_path / "terminal")
    monkeypatch.setattr(atomic, "_SYSTEM_DIRECTORIES", (str(dev),))
    assert cli_run("load", "guest.htab", "--raw-out", dev / "stdout", cwd=d).exit_code == 0
    assert (dev / "stdout").is_symlink() and sorted(os.listdir(dev)) == ["stdout"]
    assert cli_run("load", "guest.htab", "--raw-out", "raw.bin", cwd=d).exit_code == 0
    assert (tmp_path / "terminal").read_bytes() == (d / "raw.bin").read_bytes()
    r = cli_run("load", "guest.htab", "--raw-out", dev / "new", cwd=d)
    assert r.exit_code == 2 and "No such file or directory" in r.stderr and os.listdir(dev) == ["stdout"]
