"""Two processes on one VM image, and readers of snapshot files.

The rules (htabtool-errors(7), CONCURRENCY): every command that changes an
image (load --vm, dump --vm, vm run, vm stop, vm cont, vm create --force)
holds its exclusive lock; readers (vm info) hold a shared one.  A second
process is refused at once, exit 2, ``IMAGE: the VM image is in use by
another htabtool process; try again when it has finished`` -- it does not
wait.  A change replaces the image (a copy renamed over it), so an open
checks, once it holds the lock, that the path still names the file it
locked.  Snapshot files are replaced whole by a rename: their readers need
no lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from htabtool import ops
from htabtool.sim import vmimage
from htabtool.sources import open_snapshot
from tests.helpers import ENV, cli_run, record_stream, spawn_htabtool

IN_USE = "the VM image is in use by another htabtool process; try again when it has finished"

HOLDER = r"""
import sys
from htabtool.sim.vmimage import open_vm
with open_vm(sys.argv[1], writable=sys.argv[2] == "write"):
    print("held", flush=True)
    sys.stdin.readline()
"""


def spawn(*args, cwd: Path) -> subprocess.Popen:
    return spawn_htabtool(*args, cwd=cwd)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def info(path: Path) -> dict:
    return vmimage.image_info(str(path))


class Holder:
    """Another process holding an image open (and locked) until released."""

    def __init__(self, image: Path, mode: str = "write"):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(image), mode], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=ENV)
        assert self.proc.stdout.readline() == "held\n"

    def release(self) -> None:
        self.proc.communicate("\n", timeout=30)
        assert self.proc.returncode == 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.returncode is None:
            self.release()


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    for name, profile, seed in (("guest.img", "kernel-build", 5), ("other.img", "idle", 2)):
        assert cli_run("vm", "create", name, "--order", 18, "--profile", profile, "--seed", seed, cwd=d).exit_code == 0
    assert cli_run("dump", "--vm", "other.img", "-o", "a.htab", cwd=d).exit_code == 0
    assert cli_run("vm", "run", "other.img", "--ops", 300, cwd=d).exit_code == 0
    assert cli_run("dump", "--vm", "other.img", "-o", "b.htab", cwd=d).exit_code == 0
    return d


@pytest.fixture
def d(made, tmp_path):
    for name in ("guest.img", "other.img", "a.htab", "b.htab"):
        shutil.copyfile(made / name, tmp_path / name)
        os.chmod(tmp_path / name, 0o600)
    return tmp_path


WRITERS = [
    ("load", "a.htab", "--vm", "guest.img", "--stop"),
    ("dump", "--vm", "guest.img", "-o", "x.htab"),
    ("vm", "run", "guest.img", "--ops", 10),
    ("vm", "stop", "guest.img"),
    ("vm", "cont", "guest.img"),
    ("vm", "create", "guest.img", "--order", 18, "--force"),
]


def test_a_second_process_is_refused_at_once(d):
    before = sha(d / "guest.img")
    with Holder(d / "guest.img", "write"):
        for args in [*WRITERS, ("vm", "info", "guest.img")]:
            start = time.monotonic()
            r = cli_run(*args, cwd=d)
            took = time.monotonic() - start
            assert r.exit_code == 2, (args, r.stderr)
            assert r.stderr == f"htabtool: error: guest.img: {IN_USE}\n", (args, r.stderr)
            assert took < 2, f"{args}: refused only after {took:.1f} s"
        assert sha(d / "guest.img") == before
    assert sorted(p.name for p in d.iterdir()) == ["a.htab", "b.htab", "guest.img", "other.img"]
    # once the other process has finished, the same commands work
    assert cli_run("vm", "run", "guest.img", "--ops", 10, cwd=d).exit_code == 0


def test_readers_share_writers_wait_for_none(d):
    before = sha(d / "guest.img")
    with Holder(d / "guest.img", "read"):
        r = cli_run("vm", "info", "guest.img", "--json", cwd=d)
        assert r.exit_code == 0 and json.loads(r.stdout)["order"] == 18
        for args in WRITERS:
            r = cli_run(*args, cwd=d)
            assert r.exit_code == 2 and IN_USE in r.stderr, (args, r.stderr)
    assert sha(d / "guest.img") == before


def test_the_path_is_checked_once_the_lock_is_held(d, monkeypatch):
    """B opens the image; A renames a new image over the path and lets go;
    only then does B lock what it opened (the old, unlinked file).  B must
    notice and open what the path names now, or its change is lost."""
    image, other = d / "guest.img", d / "other.img"
    events_of = lambda path: info(path)["guest"]["events"]  # noqa: E731
    other_before = events_of(other)
    real_lock = vmimage._lock
    state = {"swapped": False}

    def lock_after_a_rename(fd, path, exclusive):
        if not state["swapped"]:
            state["swapped"] = True
            os.replace(other, image)  # what a load or a vm run of another process does
        return real_lock(fd, path, exclusive)

    monkeypatch.setattr(vmimage, "_lock", lock_after_a_rename)
    stats = vmimage.run_image(str(image), ops=25)
    assert state["swapped"]
    ran = sum(stats["events"].values())
    assert ran > 0 and events_of(image) == other_before + ran, "the run went to the file that was renamed away"


def test_without_the_check_a_change_is_lost(d, monkeypatch):
    """The same race with the checks disabled: the run says it succeeded,
    and the image is not the other process's image plus the run (one of
    the two changes is lost).  This shows that the test above can fail."""
    image, other = d / "guest.img", d / "other.img"
    other_before = info(other)["guest"]["events"]
    real_lock = vmimage._lock
    state = {"swapped": False}

    def lock_after_a_rename(fd, path, exclusive):
        if not state["swapped"]:
            state["swapped"] = True
            os.replace(other, image)
        return real_lock(fd, path, exclusive)

    monkeypatch.setattr(vmimage, "_lock", lock_after_a_rename)
    monkeypatch.setattr(vmimage, "_names", lambda path, st: True)
    monkeypatch.setattr(vmimage, "_same_file", lambda a, b: True)
    ran = sum(vmimage.run_image(str(image), ops=25)["events"].values())
    monkeypatch.undo()
    assert info(image)["guest"]["events"] != other_before + ran


def _wait(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _table_is(d: Path, image: str, snapshot: str) -> bool:
    assert cli_run("dump", "--vm", image, "-o", "now.htab", cwd=d).exit_code == 0
    with open_snapshot(str(d / "now.htab")) as a, open_snapshot(str(d / snapshot)) as b:
        same = not ops.diff(a, b, ignore_rc=True).different
    os.unlink(d / "now.htab")
    return same


def test_two_loads_at_once(d):
    """Each load finishes or is refused whole; the image is one snapshot's
    table, never a mix."""
    assert cli_run("vm", "stop", "guest.img", cwd=d).exit_code == 0
    for _ in range(2):
        first = spawn("load", "a.htab", "--vm", "guest.img", "--buffer-size", 64, cwd=d)
        second = spawn("load", "b.htab", "--vm", "guest.img", "--buffer-size", 64, cwd=d)
        results = [_wait(first), _wait(second)]
        for code, err in results:
            assert code == 0 or (code == 2 and err == f"htabtool: error: guest.img: {IN_USE}\n"), err
        assert any(code == 0 for code, _ in results)
        assert _table_is(d, "guest.img", "a.htab") != _table_is(d, "guest.img", "b.htab")
        if [code for code, _ in results] == [0, 2]:
            assert _table_is(d, "guest.img", "a.htab")
        if [code for code, _ in results] == [2, 0]:
            assert _table_is(d, "guest.img", "b.htab")
        assert sorted(p.name for p in d.iterdir()) == ["a.htab", "b.htab", "guest.img", "other.img"]


def test_a_load_and_a_vm_run_at_once(d):
    """No run's work is lost: the guest's event count grows by exactly the
    events of the runs that said they succeeded; a load that succeeded
    leaves its snapshot's table (a run after it finds the VM stopped)."""
    image = d / "guest.img"
    for _ in range(2):
        assert cli_run("vm", "cont", "guest.img", cwd=d).exit_code == 0
        events = info(image)["guest"]["events"]
        run = spawn("vm", "run", "guest.img", "--ops", 200, "--json", cwd=d)
        load = spawn("load", "a.htab", "--vm", "guest.img", "--stop", "--buffer-size", 64, cwd=d)
        out, run_err = run.communicate(timeout=120)
        load_code, load_err = _wait(load)
        if run.returncode == 0:
            events += sum(json.loads(out)["events"].values())
        else:
            assert run.returncode == 2 and (IN_USE in run_err or "the VM is stopped" in run_err), run_err
        assert load_code == 0 or (load_code == 2 and IN_USE in load_err), load_err
        assert info(image)["guest"]["events"] == events, "a run that succeeded was lost"
        if load_code == 0 and info(image)["vcpus"] == "stopped":
            assert _table_is(d, "guest.img", "a.htab")


def test_a_dump_and_a_load_at_once(d):
    assert cli_run("vm", "stop", "guest.img", cwd=d).exit_code == 0
    dump = spawn("dump", "--vm", "guest.img", "--buffer-size", 64, "-o", "x.htab", cwd=d)
    load = spawn("load", "b.htab", "--vm", "guest.img", "--buffer-size", 64, cwd=d)
    (dump_code, dump_err), (load_code, load_err) = _wait(dump), _wait(load)
    assert dump_code == 0 or (dump_code == 2 and IN_USE in dump_err), dump_err
    assert load_code == 0 or (load_code == 2 and IN_USE in load_err), load_err
    if dump_code == 0:
        with open_snapshot(str(d / "x.htab")) as snap:
            assert ops.verify(snap).sound
    else:
        assert not (d / "x.htab").exists()
    if load_code == 0:
        assert _table_is(d, "guest.img", "b.htab")


WRITER = r"""
import sys, time
from htabtool import ops
from htabtool.sources import RawStreamSource, open_output
deadline = time.monotonic() + float(sys.argv[3])
n = 0
while time.monotonic() < deadline or n < 3:
    with open(sys.argv[1], "rb") as f, open_output(sys.argv[2]) as out:
        ops.dump(RawStreamSource(f, byte_order="little", order=18), out)
    n += 1
print(n)
"""


def test_snapshot_readers_need_no_lock(d):
    """While another process keeps replacing a snapshot, every read of it is
    of one whole snapshot; a reader that opened the old one reads it to the
    end after it was replaced."""
    (d / "records.bin").write_bytes(record_stream(18, "little", 4096))
    assert cli_run("dump", "--raw", "records.bin", "--byte-order", "little", "--order", 18, "-o", "s.htab",
                   cwd=d).exit_code == 0
    early = open_snapshot(str(d / "s.htab"))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(d / "records.bin"), str(d / "s.htab"), "2"],
                              stdout=subprocess.PIPE, text=True, env=ENV)
    reads = 0
    try:
        while writer.poll() is None:
            with open_snapshot(str(d / "s.htab")) as snap:
                assert ops.verify(snap).sound
                assert ops.stat_report(snap)["records"] > 0
            reads += 1
    finally:
        written = int(writer.communicate(timeout=60)[0])
    assert writer.returncode == 0 and written >= 3 and reads >= 3, (written, reads)
    with early:
        assert ops.verify(early).sound
    assert sorted(p.name for p in d.iterdir() if p.name.startswith(".")) == []
