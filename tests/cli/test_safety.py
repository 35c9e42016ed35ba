"""Safe by default: no command destroys an input or an existing file; signals,
pipes and terminals handled as zstd and cmp handle them.

What must hold (htabtool(1), CONVENTIONS; htabtool-errors(7), SAFETY):

- an output that exists is refused (exit 2) unless -f; an output that is one
  of the command's inputs (through symlinks and hard links) is refused even
  with -f; ``load --vm`` changes its image in place, as before;
- when a command's data go to ``-``, its report goes to standard error;
- SIGTERM, SIGHUP and SIGINT remove every temporary file, leave images and
  outputs as they were, print ``htabtool: interrupted`` and kill the process
  with the same signal (the shell sees 128 + N); a signal after the commit
  point lets the command finish (success);
- a reader that goes away ends the command quietly with exit status 141;
- binary data is not written to a terminal without -f, ``-`` is not read
  from a terminal;
- errors name the file they are about, on one line.

Real signals go to real processes (as the kill -9 tests of test_faults.py),
at random points once the command has made its temporary file;
HTABTOOL_FAULT_SEED fixes the choice.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import random
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests import helpers as C
from tests.helpers import ENV, HTABTOOL, ROOT, cli_run, run_htabtool

SEED = int(os.environ.get("HTABTOOL_FAULT_SEED", time.time_ns() % 1_000_000))
TEMP = re.compile(r"^\..+\.[0-9a-f]{16}\.tmp$")


def sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def one_line(stderr, fragment: str) -> None:
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    assert text.startswith("htabtool: error: ") and text.count("\n") == 1, text
    assert fragment in text, text
    assert "Traceback" not in text


def temps(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if TEMP.match(p.name) or p.name.startswith(".htabvm-"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A small VM (running), a stopped one, snapshots of both, a QEMU stream."""
    d = tmp_path_factory.mktemp("safety")
    assert cli_run("vm", "create", "g.img", "--order", 18, "--profile", "idle", "--seed", 1, cwd=d).exit_code == 0
    assert cli_run("dump", "--vm", "g.img", "-o", "a.htab", cwd=d).exit_code == 0
    assert cli_run("vm", "run", "g.img", "--ops", 200, cwd=d).exit_code == 0
    assert cli_run("dump", "--vm", "g.img", "-o", "b.htab", cwd=d).exit_code == 0
    assert cli_run("vm", "create", "dst.img", "--order", 18, "--profile", "empty", cwd=d).exit_code == 0
    (d / "vm.mig").write_bytes(C.qemu_stream())
    r = cli_run("dump", "--qemu", "vm.mig", "-o", "q.htab", cwd=d)
    assert r.exit_code == 0, r.stderr
    return d


def workdir(tmp_path: Path, inputs: Path, *names: str) -> Path:
    for name in names:
        shutil.copyfile(inputs / name, tmp_path / name)
    return tmp_path


# -- 1. never overwrite without being asked ------------------------------------------------

OUTPUTS = {
    "dump -o": ("dump", "--vm", "g.img", "-o", "OUT"),
    "load --raw-out": ("load", "a.htab", "--raw-out", "OUT"),
    "load --qemu-section": ("load", "a.htab", "--qemu-section", "OUT"),
    "load --qemu-splice -o": ("load", "q.htab", "--qemu-splice", "vm.mig", "-o", "OUT"),
    "diff --delta": ("diff", "a.htab", "b.htab", "--delta", "OUT"),
    "vm create": ("vm", "create", "OUT", "--order", 18, "--profile", "empty"),
}


@pytest.mark.parametrize("args", list(OUTPUTS.values()), ids=list(OUTPUTS))
def test_an_output_that_exists_is_refused_without_force(inputs, tmp_path, args):
    d = workdir(tmp_path, inputs, "g.img", "a.htab", "b.htab", "q.htab", "vm.mig")
    (d / "OUT").write_bytes(b"precious")
    r = cli_run(*args, cwd=d)
    assert r.exit_code == 2
    one_line(r.stderr, "OUT: already exists; not overwritten (use -f to replace it)")
    assert (d / "OUT").read_bytes() == b"precious"
    assert temps(d) == []
    r = cli_run(*args, "-f", cwd=d)
    assert r.exit_code in (0, 1), r.stderr
    assert (d / "OUT").read_bytes() != b"precious"


@pytest.mark.parametrize("args,victim", [
    (("dump", "--vm", "g.img", "-o", "g.img"), "g.img"),
    (("load", "a.htab", "--raw-out", "a.htab"), "a.htab"),
    (("diff", "a.htab", "b.htab", "--delta", "a.htab"), "a.htab"),
    (("diff", "a.htab", "b.htab", "--delta", "b.htab"), "b.htab"),
    (("load", "q.htab", "--qemu-splice", "vm.mig", "-o", "vm.mig"), "vm.mig"),
    (("load", "q.htab", "--qemu-section", "q.htab"), "q.htab"),
    (("dump", "--qemu", "vm.mig", "-o", "vm.mig"), "vm.mig"),
], ids=["dump-vm-onto-its-image", "load-raw-out-onto-its-snapshot", "diff-delta-onto-a", "diff-delta-onto-b",
        "splice-onto-its-stream", "section-onto-its-snapshot", "dump-qemu-onto-its-stream"])
@pytest.mark.parametrize("how", ["same-name", "symlink", "hard-link"])
def test_an_output_that_is_an_input_is_refused_even_with_force(inputs, tmp_path, args, victim, how):
    d = workdir(tmp_path, inputs, "g.img", "a.htab", "b.htab", "q.htab", "vm.mig")
    before = sha(d / victim)
    out = victim
    if how == "symlink":
        (d / "link").symlink_to(victim)
        out = "link"
    elif how == "hard-link":
        os.link(d / victim, d / "link")
        out = "link"
    i = len(args) - 1 - list(reversed(args)).index(victim)  # the output's place
    args = args[:i] + (out,) + args[i + 1:]
    for extra in ((), ("-f",)):
        r = cli_run(*args, *extra, cwd=d)
        assert r.exit_code == 2, (r.stdout, r.stderr)
        one_line(r.stderr, f"{out}: is an input of this command")
        assert "even with -f" in r.stderr
        assert sha(d / victim) == before
    assert temps(d) == []


def test_load_vm_changes_its_image_in_place_without_force(inputs, tmp_path):
    d = workdir(tmp_path, inputs, "a.htab", "dst.img")
    before = sha(d / "dst.img")
    r = cli_run("load", "a.htab", "--vm", "dst.img", cwd=d)
    assert r.exit_code == 0, r.stderr
    assert sha(d / "dst.img") != before


def test_the_readme_first_command_runs_again_where_it_ran(tmp_path):
    readme = (ROOT / "README.md").read_text()
    first = next(line.strip() for line in readme.splitlines() if line.strip().startswith("pip install . &&"))
    command = first.split("&&", 1)[1].strip()  # without the install
    shell = f'htabtool() {{ "{sys.executable}" -m htabtool "$@"; }}\n{command}\n'
    for attempt in (1, 2):
        done = subprocess.run(["bash", "-c", shell], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, (attempt, done.stderr)


# -- 2. standard output carries one thing -----------------------------------------------------


def test_a_delta_on_standard_output_pipes_into_load(inputs, tmp_path):
    """diff --delta - | load - --vm: the report goes to stderr, the delta
    alone to stdout, and the VM ends up with B's table."""
    d = workdir(tmp_path, inputs, "a.htab", "b.htab")
    assert cli_run("load", "a.htab", "--vm", "t.img", "--create", cwd=d).exit_code == 0
    diff = subprocess.Popen(HTABTOOL + ["diff", "a.htab", "b.htab", "--delta", "-"], cwd=d, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    load = subprocess.run(HTABTOOL + ["load", "-", "--vm", "t.img"], cwd=d, env=ENV, stdin=diff.stdout,
                          capture_output=True, text=True, timeout=120)
    diff.stdout.close()
    diff_err = diff.stderr.read().decode()
    assert diff.wait() == 1  # the tables differ
    assert load.returncode == 0, load.stderr
    assert "delta:" in diff_err and "differ in" in diff_err
    assert cli_run("dump", "--vm", "t.img", "-o", "t.htab", cwd=d).exit_code == 0
    assert cli_run("diff", "t.htab", "b.htab", cwd=d).exit_code == 0


@pytest.mark.parametrize("args", [
    ("dump", "--vm", "g.img", "-o", "-"),
    ("dump", "--vm", "g.img", "-o", "-", "--json"),
    ("load", "a.htab", "--raw-out", "-"),
    ("load", "a.htab", "--raw-out", "-", "--json"),
    ("load", "a.htab", "--qemu-section", "-"),
    ("diff", "a.htab", "b.htab", "--delta", "-"),
    ("diff", "a.htab", "b.htab", "--delta", "-", "--json"),
], ids=lambda a: " ".join(map(str, a[:1] + a[3:])))
def test_data_on_standard_output_and_nothing_else(inputs, tmp_path, args):
    d = workdir(tmp_path, inputs, "g.img", "a.htab", "b.htab")
    r = run_htabtool(*args, cwd=d)
    assert r.returncode in (0, 1), r.stderr
    assert r.stderr, "the report went nowhere"
    if args[0] == "load" and "--raw-out" in args:
        assert r.stdout == run_htabtool("load", "a.htab", "--raw-out", "raw.bin",
                                        cwd=d).stdout + (d / "raw.bin").read_bytes()
    elif "--qemu-section" not in args:
        (d / "out.htab").write_bytes(r.stdout)
        v = run_htabtool("verify", "out.htab", cwd=d)
        assert v.returncode == 0, v.stdout  # a whole snapshot, nothing after it


# -- 3. signals -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """Jobs that run for seconds: an order-22 VM (running) and snapshots of it."""
    d = tmp_path_factory.mktemp("big")
    assert cli_run("vm", "create", "big.img", "--order", 22, "--profile", "kernel-build", "--seed", 3,
                   cwd=d).exit_code == 0
    assert cli_run("dump", "--vm", "big.img", "-o", "one.htab", cwd=d).exit_code == 0
    assert cli_run("vm", "run", "big.img", "--ops", 3000, cwd=d).exit_code == 0
    assert cli_run("dump", "--vm", "big.img", "-o", "two.htab", cwd=d).exit_code == 0
    shutil.copyfile(d / "big.img", d / "stopped.img")
    assert cli_run("vm", "stop", "stopped.img", cwd=d).exit_code == 0
    return d


LONG_JOBS = {
    "dump --passes": (("dump", "--vm", "big.img", "--passes", 3, "--churn", 3000, "-o", "out.htab"), "big.img",
                      "out.htab"),
    "load --vm": (("load", "two.htab", "--vm", "stopped.img", "--buffer-size", 4096), "stopped.img", None),
    "load --vm --create": (("load", "two.htab", "--vm", "new.img", "--create", "--buffer-size", 4096), None,
                           "new.img"),
    "vm create": (("vm", "create", "new.img", "--order", 23, "--profile", "kernel-build"), None, "new.img"),
    "vm run": (("vm", "run", "big.img", "--ops", 3000), "big.img", None),
    "diff --delta": (("diff", "one.htab", "two.htab", "--delta", "out.htab", "--level", 19), None, "out.htab"),
}


def _wait_for_temp(proc, d: Path, timeout: float = 60) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if temps(d):
            return True
        time.sleep(0.005)
    return False


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGINT"])
@pytest.mark.parametrize("job", list(LONG_JOBS), ids=list(LONG_JOBS))
def test_a_signal_cleans_up_and_kills_by_that_signal(big, tmp_path, job, signame):
    args, image, output = LONG_JOBS[job]
    signum = getattr(signal, signame)
    rng = random.Random(f"{SEED}-{job}-{signame}")
    d = workdir(tmp_path, big, "big.img", "stopped.img", "one.htab", "two.htab")
    keep = set(os.listdir(d))
    before = {n: sha(d / n) for n in keep}
    proc = subprocess.Popen(HTABTOOL + [str(a) for a in args], cwd=d, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    started = _wait_for_temp(proc, d)
    if started:
        time.sleep(rng.uniform(0, 0.05))  # early in the job: most land before its commit point
        proc.send_signal(signum)
    err = proc.communicate(timeout=300)[1].decode()
    assert started, f"the job ended before making a temporary file: {err}"
    assert temps(d) == [], f"seed {SEED}: left behind: {temps(d)}"
    if proc.returncode == -signum:  # interrupted: everything as it was
        assert err == "htabtool: interrupted\n", err
        assert set(os.listdir(d)) == keep, f"seed {SEED}: {sorted(set(os.listdir(d)) - keep)}"
        assert {n: sha(d / n) for n in keep} == before, f"seed {SEED}: an input or an image was changed"
    else:  # the signal came after the commit point: the command finished
        assert proc.returncode in (0, 1), (proc.returncode, err)
        assert not output or (d / output).exists(), (proc.returncode, err, sorted(os.listdir(d)))
        assert "interrupted" not in err
        if output:
            assert (d / output).exists()
    if image and proc.returncode != -signum and job != "dump --passes":
        assert sha(d / image) != before[image]


HOOK = r"""
import os, signal, sys
when, call, nth, signame = sys.argv[1:5]
del sys.argv[1:5]
real = getattr(os, call)
calls = [0]
def hooked(*args, **kw):
    calls[0] += 1
    if when == "before" and calls[0] == int(nth):
        os.kill(os.getpid(), getattr(signal, signame))
    result = real(*args, **kw)
    if when == "after" and calls[0] == int(nth):
        os.kill(os.getpid(), getattr(signal, signame))
    return result
setattr(os, call, hooked)
from htabtool.cli import main
main()
"""


@pytest.mark.parametrize("args,commit,changed", [
    (("vm", "run", "big.img", "--ops", 50), ("replace", 1), "big.img"),
    (("load", "one.htab", "--vm", "stopped.img"), ("replace", 1), "stopped.img"),
    (("load", "one.htab", "--vm", "new.img", "--create"), ("link", 2), "new.img"),  # 1: its empty image's
    (("vm", "create", "new.img", "--order", 18), ("link", 1), "new.img"),
    (("dump", "--vm", "stopped.img", "-o", "out.htab"), ("replace", 1), "out.htab"),
], ids=["vm-run", "load-vm", "load-vm-create", "vm-create", "dump"])
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_signal_at_the_commit_point(big, tmp_path, args, commit, changed, when):
    """SIGINT at the last fsync before the rename (link) that commits:
    nothing changed, death by SIGINT; just after the rename: the change is
    made, and reported as a success, never as a failure."""
    d = workdir(tmp_path, big, "big.img", "stopped.img", "one.htab")
    before = sha(d / changed)
    call, nth = commit if when == "after" else ("fsync", 1)
    done = subprocess.run([sys.executable, "-c", HOOK, when, call, str(nth), "SIGINT", *map(str, args)], cwd=d,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert temps(d) == []
    if when == "before":
        assert done.returncode == -signal.SIGINT, done.stderr
        assert done.stderr.endswith("htabtool: interrupted\n"), done.stderr
        assert sha(d / changed) == before
    else:
        assert done.returncode == 0, done.stderr
        assert "interrupted" not in done.stderr and "error" not in done.stderr, done.stderr
        assert sha(d / changed) != before


def test_ctrl_c_stops_a_shell_loop_around_the_command(inputs, tmp_path):
    """``until htabtool ...; do ...; done``: a shell goes on with its loop
    when the command exits 2, and stops when it dies by SIGINT."""
    os.mkfifo(tmp_path / "pipe")  # nobody writes it: stat waits in open()
    loop = f'until "{sys.executable}" -m htabtool stat pipe; do sleep 0.1; done'
    proc = subprocess.Popen(["bash", "-c", loop], cwd=tmp_path, env=ENV, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(3)  # the command is waiting in open()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail("the loop went on after Ctrl-C")
    assert proc.returncode in (-signal.SIGINT, 130), proc.returncode
    assert b"htabtool: interrupted" in proc.stderr.read()


def test_a_signal_ignored_at_start_stays_ignored(inputs, tmp_path):
    """nohup: SIGHUP ignored by the parent is not turned back on."""
    d = workdir(tmp_path, inputs, "a.htab", "b.htab")
    proc = subprocess.Popen(HTABTOOL + ["diff", "a.htab", "b.htab", "--delta", "out.htab"], cwd=d, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    time.sleep(0.5)
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(timeout=60) == 1
    assert (d / "out.htab").exists()


# -- 4. broken pipes --------------------------------------------------------------------------------


def _into_a_closed_pipe(args, cwd):
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run(HTABTOOL + [str(a) for a in args], cwd=cwd, env=ENV, stdout=w, stderr=subprocess.PIPE,
                              timeout=120)
    finally:
        os.close(w)


@pytest.mark.parametrize("args", [
    ("verify", "a.htab"),
    ("verify", "a.htab", "--json"),
    ("stat", "a.htab"),
    ("diff", "a.htab", "b.htab"),
    ("diff", "a.htab", "a.htab"),
    ("dump", "--vm", "g.img", "-o", "-"),
    ("load", "a.htab", "--raw-out", "-"),
    ("diff", "a.htab", "b.htab", "--delta", "-"),
    ("vm", "info", "g.img"),
], ids=lambda a: " ".join(map(str, a)))
def test_a_reader_that_went_away_exits_141_quietly(inputs, tmp_path, args):
    d = workdir(tmp_path, inputs, "g.img", "a.htab", "b.htab")
    done = _into_a_closed_pipe(args, d)
    assert done.returncode == 141, (done.returncode, done.stderr)
    assert done.stderr in (b"",) or b"error" not in done.stderr.split(b"\n")[-2:][0], done.stderr
    assert b"Traceback" not in done.stderr and b"Exception ignored" not in done.stderr
    assert temps(d) == []


def test_dump_into_head_exits_141(inputs, tmp_path):
    d = workdir(tmp_path, inputs, "g.img")
    for _ in range(2):
        assert cli_run("vm", "run", "g.img", "--ops", 500, cwd=d).exit_code == 0
    dump = subprocess.Popen(HTABTOOL + ["dump", "--vm", "g.img", "-o", "-", "--level", "19"], cwd=d, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.run(["head", "-c", "10"], stdin=dump.stdout, capture_output=True)
    dump.stdout.close()
    err = dump.stderr.read()
    code = dump.wait(timeout=60)
    assert len(head.stdout) == 10
    assert code in (141, 0), err  # 0 only if it all fitted in the pipe before head left
    assert b"Traceback" not in err


# -- 5. terminals -----------------------------------------------------------------------------------


def _with_a_terminal(args, cwd, stream: str):
    master, slave = pty.openpty()
    got = bytearray()

    def drain():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            got.extend(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    kw = {"stdout": slave, "stderr": subprocess.PIPE} if stream == "stdout" else {"stdin": slave,
                                                                                   "capture_output": True}
    try:
        done = subprocess.run(HTABTOOL + [str(a) for a in args], cwd=cwd, env=ENV, timeout=60, **kw)
    finally:
        os.close(slave)
    time.sleep(0.2)
    os.close(master)
    return done, bytes(got)


@pytest.mark.parametrize("args", [
    ("dump", "--vm", "g.img", "-o", "-"),
    ("load", "a.htab", "--raw-out", "-"),
    ("load", "a.htab", "--qemu-section", "-"),
    ("diff", "a.htab", "b.htab", "--delta", "-"),
], ids=["dump", "raw-out", "qemu-section", "delta"])
def test_binary_data_is_not_written_to_a_terminal(inputs, tmp_path, args):
    d = workdir(tmp_path, inputs, "g.img", "a.htab", "b.htab")
    done, shown = _with_a_terminal(args, d, "stdout")
    assert done.returncode == 2
    one_line(done.stderr, "binary data not written to a terminal")
    assert shown == b""
    done, shown = _with_a_terminal(args + ("-f",), d, "stdout")
    assert done.returncode in (0, 1), done.stderr
    assert len(shown) > 100


@pytest.mark.parametrize("args", [("stat", "-"), ("verify", "-"), ("load", "-", "--raw-out", "x.bin"),
                                  ("dump", "--raw", "-", "--byte-order", "little", "--order", 18, "-o", "x.htab"),
                                  ("diff", "-", "a.htab")], ids=["stat", "verify", "load", "dump-raw", "diff"])
def test_standard_input_that_is_a_terminal_is_refused_not_waited_on(inputs, tmp_path, args):
    d = workdir(tmp_path, inputs, "a.htab")
    done, _ = _with_a_terminal(args, d, "stdin")
    assert done.returncode == 2
    one_line(done.stderr, "standard input is a terminal")


# -- 6. errors name their file ---------------------------------------------------------------------


@pytest.fixture
def flipped(inputs, tmp_path):
    d = workdir(tmp_path, inputs, "a.htab", "b.htab")
    data = bytearray((d / "a.htab").read_bytes())
    chunk = C.frame(bytes(data), "data")
    data[chunk.offset + 40] ^= 1
    (d / "flip.htab").write_bytes(bytes(data))
    return d


@pytest.mark.parametrize("args", [
    ("stat", "flip.htab"),
    ("diff", "flip.htab", "b.htab"),
    ("diff", "b.htab", "flip.htab"),
    ("load", "flip.htab", "--raw-out", "out.bin"),
    ("load", "flip.htab", "--vm", "x.img", "--create"),
], ids=lambda a: " ".join(a))
def test_a_content_error_names_its_file(flipped, args):
    r = cli_run(*args, cwd=flipped)
    assert r.exit_code == 2
    one_line(r.stderr, "flip.htab")
    assert re.search(r"flip\.htab[: ].*chunk 0 at offset 0x[0-9a-f]+: frame checksum mismatch", r.stderr), r.stderr


@pytest.mark.parametrize("args,name", [
    (("dump", "--raw", "cut.bin", "--byte-order", "little", "--order", 18, "-o", "x.htab"), "cut.bin"),
    (("dump", "--qemu", "zero.mig", "-o", "x.htab"), "zero.mig"),
    (("dump", "--qemu-section", "zero.mig", "-o", "x.htab"), "zero.mig"),
    (("load", "a.htab", "--qemu-splice", "zero.mig", "-o", "x.mig"), "zero.mig"),
], ids=["dump-raw", "dump-qemu", "dump-qemu-section", "load-qemu-splice"])
def test_a_source_error_names_its_file(inputs, tmp_path, args, name):
    d = workdir(tmp_path, inputs, "a.htab")
    assert cli_run("load", "a.htab", "--raw-out", "raw.bin", cwd=d).exit_code == 0
    (d / "cut.bin").write_bytes((d / "raw.bin").read_bytes()[:1000])
    (d / "zero.mig").write_bytes(bytes(100))
    r = cli_run(*args, cwd=d)
    assert r.exit_code == 2
    one_line(r.stderr, f"htabtool: error: {name}: ")
    assert not (d / "x.htab").exists() and not (d / "x.mig").exists()


def test_a_header_error_names_its_file(tmp_path):
    (tmp_path / "text.htab").write_bytes(b"hello, world\n" * 20)
    for command in ("stat", "verify"):
        r = cli_run(command, "text.htab", cwd=tmp_path)
        assert r.exit_code == 2
        one_line(r.stderr, "text.htab: not an htabtool snapshot: bad magic")


@pytest.mark.parametrize("content", [None, b"", b"GARBAGE!" * 10], ids=["missing", "empty", "garbage"])
def test_verify_json_of_an_unreadable_file_is_still_json(tmp_path, content):
    if content is not None:
        (tmp_path / "x.htab").write_bytes(content)
    r = cli_run("verify", "--json", "x.htab", cwd=tmp_path)
    assert r.exit_code == 2
    doc = json.loads(r.stdout)
    assert doc["schema"] == "htabtool-verify/1" and doc["sound"] is False and doc["readable"] is False
    assert doc["file"] == "x.htab" and doc["error"] and doc["problems"][0]["what"] == doc["error"]


# -- 10. what an attacker tries ------------------------------------------------------------------------


@pytest.mark.parametrize("args,closed,message", [
    (("stat", "a.htab"), "stdout", "standard output is closed"),
    (("verify", "a.htab"), "stdout", "standard output is closed"),
    (("diff", "a.htab", "b.htab"), "stdout", "standard output is closed"),
    (("vm", "info", "g.img"), "stdout", "standard output is closed"),
    (("dump", "--vm", "g.img", "-o", "-"), "stdout", "standard output is closed"),
    (("stat", "-"), "stdin", "standard input is closed"),
    (("load", "-", "--raw-out", "x.bin"), "stdin", "standard input is closed"),
], ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_a_closed_standard_stream_is_an_error_not_a_traceback_or_a_silent_success(inputs, tmp_path, args, closed,
                                                                                   message):
    d = workdir(tmp_path, inputs, "g.img", "a.htab", "b.htab")
    fd = 1 if closed == "stdout" else 0
    done = subprocess.run(HTABTOOL + list(args), cwd=d, env=ENV, stderr=subprocess.PIPE, timeout=60,
                          preexec_fn=lambda: os.close(fd), **({"stdin": subprocess.DEVNULL} if fd == 1 else
                                                             {"stdout": subprocess.DEVNULL}))
    assert done.returncode == 2, done.stderr
    one_line(done.stderr, message)
    assert not (d / "x.bin").exists()


def test_a_file_opened_with_stdout_closed_does_not_receive_the_report(inputs, tmp_path):
    """With fd 1 closed, the first file opened would get fd 1: the report
    must not go into it."""
    d = workdir(tmp_path, inputs, "a.htab", "b.htab")
    done = subprocess.run(HTABTOOL + ["diff", "a.htab", "b.htab", "--delta", "out.htab"], cwd=d, env=ENV,
                          stderr=subprocess.PIPE, timeout=60, preexec_fn=lambda: os.close(1))
    assert done.returncode == 2
    assert not (d / "out.htab").exists() or cli_run("verify", "out.htab", cwd=d).exit_code == 0


@pytest.mark.parametrize("args", [
    ("load", "-", "--qemu-splice", "-", "-o", "out.mig"),
    ("diff", "-", "-"),
], ids=["load-splice", "diff"])
def test_standard_input_named_twice_is_refused(tmp_path, args):
    r = cli_run(*args, cwd=tmp_path)
    assert r.exit_code == 2
    one_line(r.stderr, "standard input")
    assert not (tmp_path / "out.mig").exists()


GARBAGE_FOREVER = "import sys\nhead = open(sys.argv[1], 'rb').read() if len(sys.argv) > 1 else b''\n" \
                  "sys.stdout.buffer.write(head)\nblock = bytes(range(256)) * 4096\n" \
                  "try:\n    while True:\n        sys.stdout.buffer.write(block)\nexcept BrokenPipeError:\n    pass\n"


@pytest.mark.parametrize("lead", ["nothing", "a-header"])
def test_endless_garbage_on_standard_input_is_refused_at_once(inputs, tmp_path, lead):
    """Checked as it is spooled: refused at the first bad frame, not spooled
    until the disk fills."""
    d = workdir(tmp_path, inputs, "a.htab")
    head = d / "head.bin"
    head.write_bytes(C.snapshot()[: C.frame(C.snapshot(), "HEAD").end] if lead == "a-header" else b"")
    spool = d / "spool"
    spool.mkdir()
    feed = subprocess.Popen([sys.executable, "-c", GARBAGE_FOREVER, str(head)], stdout=subprocess.PIPE)
    t0 = time.monotonic()
    done = subprocess.run(HTABTOOL + ["stat", "-"], cwd=d, env=dict(ENV, TMPDIR=str(spool)), stdin=feed.stdout,
                          capture_output=True, timeout=60)
    feed.stdout.close()
    feed.kill()
    feed.wait()
    assert done.returncode == 2
    one_line(done.stderr, "<stdin>: ")
    assert time.monotonic() - t0 < 30
    assert list(spool.iterdir()) == []


@pytest.mark.parametrize("out,message", [
    ("", "an empty output file name"),
    ("out/", "out/: not a file name"),
    ("missing/", "missing/: not a file name"),
], ids=["empty", "trailing-slash", "trailing-slash-missing"])
def test_an_output_name_that_is_no_file_name_is_named_as_given(inputs, tmp_path, out, message):
    d = workdir(tmp_path, inputs, "a.htab")
    names = sorted(os.listdir(d))
    for args in (("load", "a.htab", "--raw-out", out), ("dump", "--raw", "a.htab", "--byte-order", "little",
                                                         "--order", 18, "-o", out)):
        r = cli_run(*args, cwd=d)
        assert r.exit_code == 2
        one_line(r.stderr, message)
        assert ".tmp" not in r.stderr
        assert sorted(os.listdir(d)) == names
    assert not (tmp_path.parent / tmp_path.name).is_file()


def test_too_many_open_files_names_the_image_not_its_copy(inputs, tmp_path):
    d = workdir(tmp_path, inputs, "g.img")
    for limit in (10, 11, 12, 13, 14):
        done = run_htabtool("vm", "run", "g.img", "--ops", 5, cwd=d,
                            preexec_fn=lambda limit=limit: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)))
        if done.returncode == 0:
            continue
        assert done.returncode == 2
        one_line(done.stderr, "too many open files")
        assert ".tmp" not in done.stderr.decode()
        assert temps(d) == []


@pytest.mark.parametrize("args,name", [
    (("load", "a.htab", "--vm", "dst.img"), "dst.img"),
    (("vm", "create", "new.img", "--order", 20), "new.img"),
], ids=["load-vm", "vm-create"])
def test_a_file_size_limit_names_the_image(inputs, tmp_path, args, name):
    d = workdir(tmp_path, inputs, "a.htab", "dst.img")
    names = sorted(os.listdir(d))

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    done = run_htabtool(*args, cwd=d, preexec_fn=limit)
    assert done.returncode == 2
    one_line(done.stderr, f"htabtool: error: {name}: ")
    assert "File too large" in done.stderr.decode()
    assert sorted(os.listdir(d)) == names


def test_a_newline_in_a_file_name_does_not_split_the_error(tmp_path):
    r = cli_run("stat", "evil\nhtabtool: error: forged.htab", cwd=tmp_path)
    assert r.exit_code == 2
    one_line(r.stderr, "evil\\nhtabtool: error: forged.htab: no such file")


def test_an_output_onto_an_image_in_use_is_refused(inputs, tmp_path):
    """load --raw-out -f IMG while vm run holds IMG: refused, or vm run's
    rename would silently undo it."""
    from htabtool.sim.vmimage import VMImage

    d = workdir(tmp_path, inputs, "a.htab", "g.img")
    held = VMImage.open(str(d / "g.img"))  # as vm run holds it
    try:
        r = cli_run("load", "a.htab", "--raw-out", "g.img", "-f", cwd=d)
        assert r.exit_code == 2
        one_line(r.stderr, "g.img: the file is in use by another htabtool process")
    finally:
        held.close(save=False)
    assert cli_run("vm", "info", "g.img", cwd=d).exit_code == 0


def test_a_change_keeps_the_image_mode_and_owner(inputs, tmp_path):
    d = workdir(tmp_path, inputs, "g.img")
    os.chmod(d / "g.img", 0o640)
    uid = os.getuid()
    if uid == 0:
        os.chown(d / "g.img", 12345, 23456)
    assert cli_run("vm", "run", "g.img", "--ops", 5, cwd=d).exit_code == 0
    st = (d / "g.img").stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    if uid == 0:
        assert (st.st_uid, st.st_gid) == (12345, 23456)


def test_a_change_of_an_image_with_hard_links_is_refused(inputs, tmp_path):
    d = workdir(tmp_path, inputs, "g.img")
    os.link(d / "g.img", d / "other.img")
    before = sha(d / "g.img")
    r = cli_run("vm", "run", "g.img", "--ops", 5, cwd=d)
    assert r.exit_code == 2
    one_line(r.stderr, "g.img: the VM image has 2 hard links")
    assert sha(d / "g.img") == sha(d / "other.img") == before


def _rss_limit(mb: int):
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (mb << 20, mb << 20))


def test_a_small_snapshot_of_many_empty_records_costs_little(tmp_path, monkeypatch):
    """Millions of empty records (n_valid 0, n_invalid 0: the kernel never
    writes one) compress to a few KB: refused from the descriptors, in
    bounded memory; and never written."""
    from htabtool.container import writer
    from htabtool.errors import StreamError

    empty = b"\0" * 8 * (1 << 17)  # 131,072 empty records at index 0, 1 MiB
    with pytest.raises(StreamError, match="empty records"):
        C.snapshot(pieces=[(1, empty)])
    monkeypatch.setattr(writer, "refuse_empty_records", lambda *a: None)  # as an attacker's writer
    data = C.snapshot(pieces=[(1, empty)] * 32, chunk_size=1 << 20)  # 4 M records
    (tmp_path / "empty.htab").write_bytes(data)
    assert len(data) < 64 << 10
    for command in ("verify", "stat"):
        done = run_htabtool(command, "empty.htab", cwd=tmp_path, preexec_fn=_rss_limit(400))
        assert done.returncode in (1, 2), done.stderr
        text = (done.stdout + done.stderr).decode()
        assert "empty record" in text, text
        assert "out of memory" not in text


def test_a_snapshot_of_the_largest_table_without_records_is_quick(tmp_path):
    """Order 36 (2**32 entries, the most a record header's 32-bit index
    addresses) and no records: stat answers from what the snapshot holds,
    not by walking 64 GiB of empty table."""
    data = C.snapshot(pieces=[], order=36)
    (tmp_path / "huge.htab").write_bytes(data)
    t0 = time.monotonic()
    done = run_htabtool("stat", "--json", "huge.htab", cwd=tmp_path, timeout=60)
    assert time.monotonic() - t0 < 30
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["entries"] == 1 << 32 and doc["valid"] == 0 and doc["invalid"] == 1 << 32


def test_vm_create_with_more_ram_than_the_table_maps_is_refused_at_once(tmp_path):
    t0 = time.monotonic()
    r = cli_run("vm", "create", "x.img", "--order", 18, "--ram", "64G", cwd=tmp_path)
    assert time.monotonic() - t0 < 10
    assert r.exit_code == 2
    one_line(r.stderr, "--ram 64 GiB needs 1,048,576 bolted entries")
    r = cli_run("vm", "create", "x.img", "--order", 46, "--ram", str(1 << 70), cwd=tmp_path)
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert os.listdir(tmp_path) == []


def _edit_state(path: Path, edit) -> None:
    from htabtool.sim import vmformat

    with open(path, "r+b") as f:
        raw = bytearray(f.read(vmformat.HEADER_SIZE))
        fields = list(vmformat.HEADER.unpack_from(raw))
        off, length = fields[15], fields[16]
        f.seek(off)
        state = json.loads(f.read(length))
        edit(state)
        blob = json.dumps(state).encode()
        f.seek(off)
        f.write(blob)
        f.truncate(off + len(blob))
        fields[16] = len(blob)
        body = vmformat.HEADER.pack(*fields)
        import zlib

        f.seek(0)
        f.write(body + zlib.crc32(body).to_bytes(4, "little"))


STATE_DAMAGE = {
    "clock-a-string": lambda s: s["guest"].update(clock="soon"),
    "events-a-list": lambda s: s["guest"].update(events=[1]),
    "processes-an-int": lambda s: s["guest"].update(processes=7),
    "process-without-pid": lambda s: s["guest"]["processes"][0].pop("pid"),
    "process-comm-unknown": lambda s: s["guest"]["processes"][0].update(comm="\x1b[31mevil"),
    "vma-a-string": lambda s: s["guest"]["processes"][0].update(vmas=["x"]),
    "hcalls-a-list": lambda s: s.update(engine={"hcalls": [1, 2]}),
    "next-pid-negative": lambda s: s["guest"].update(next_pid=-1),
    "totals-of-strings": lambda s: s["guest"].update(totals={"a": "b"}),
}


@pytest.mark.parametrize("damage", list(STATE_DAMAGE), ids=list(STATE_DAMAGE))
@pytest.mark.parametrize("args", [("vm", "info", "g.img"), ("vm", "run", "g.img", "--ops", 5),
                                  ("dump", "--vm", "g.img", "-o", "x.htab")], ids=["info", "run", "dump"])
def test_a_vm_state_of_the_wrong_types_is_one_line(inputs, tmp_path, damage, args):
    d = workdir(tmp_path, inputs, "g.img")
    _edit_state(d / "g.img", STATE_DAMAGE[damage])
    r = cli_run(*args, cwd=d)
    assert r.exit_code == 2, (r.stdout, r.exception)
    one_line(r.stderr, "g.img: the VM image's state does not hold")
    assert "\x1b" not in r.stderr
    assert not (d / "x.htab").exists()


def test_a_generation_at_its_maximum_is_refused_for_changes(inputs, tmp_path):
    from htabtool.sim import vmformat

    d = workdir(tmp_path, inputs, "g.img")
    with open(d / "g.img", "r+b") as f:
        raw = bytearray(f.read(vmformat.HEADER.size))
        fields = list(vmformat.HEADER.unpack_from(raw))
        fields[-1] = (1 << 64) - 1
        body = vmformat.HEADER.pack(*fields)
        import zlib

        f.seek(0)
        f.write(body + zlib.crc32(body).to_bytes(4, "little"))
    assert cli_run("vm", "info", "g.img", cwd=d).exit_code == 0
    for args in (("vm", "run", "g.img", "--ops", 5), ("vm", "stop", "g.img"), ("dump", "--vm", "g.img", "-o", "x")):
        r = cli_run(*args, cwd=d)
        assert r.exit_code == 2
        one_line(r.stderr, "generation is at its maximum")


def test_strings_of_an_image_reach_no_terminal_as_escapes(inputs, tmp_path):
    d = workdir(tmp_path, inputs, "g.img")
    _edit_state(d / "g.img", lambda s: s["guest"].update(profile="idle", seed=1) or s["engine"]["hcalls"].update(
        {"\x1b]0;pwned\x07": 1}))
    r = cli_run("vm", "info", "g.img", cwd=d)
    assert r.exit_code == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout


def test_a_file_name_that_is_not_utf8_can_be_dumped(inputs, tmp_path):
    d = workdir(tmp_path, inputs, "a.htab")
    assert cli_run("load", "a.htab", "--raw-out", "raw.bin", cwd=d).exit_code == 0
    src = os.fsdecode(b"caf\xe9.bin")
    os.rename(d / "raw.bin", d / src)
    out = os.fsdecode(b"caf\xe9.htab")
    done = subprocess.run(HTABTOOL + ["dump", "--raw", src, "--byte-order", "little", "--order", "18", "-o", out,
                                      "--json"], cwd=d, env=ENV, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    r = run_htabtool("stat", "--json", out, cwd=d)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["source"]["name"] == "caf\\xe9.bin"


def test_a_dangling_symlink_as_an_image_gets_one_answer(inputs, tmp_path):
    d = workdir(tmp_path, inputs, "a.htab")
    (d / "g.img").symlink_to("nowhere.img")
    a = cli_run("vm", "create", "g.img", "--order", 18, cwd=d)
    b = cli_run("load", "a.htab", "--vm", "g.img", "--create", cwd=d)
    for r in (a, b):
        assert r.exit_code == 2
        one_line(r.stderr, "g.img: is a symbolic link to a missing file (nowhere.img)")
    assert not (d / "nowhere.img").exists()


@pytest.mark.parametrize("limit", [20_000, 30_000, 60_000, 70_000, 100_000,
                                   150_000])  # KiB; below 96 MiB refused before numpy loads
def test_a_low_address_space_limit_is_one_line(inputs, tmp_path, limit):
    d = workdir(tmp_path, inputs, "a.htab")
    done = run_htabtool("stat", "a.htab", cwd=d, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit << 10,
                                                                                                     limit << 10)))
    if done.returncode == 0:
        return  # enough here
    assert done.returncode == 2, done.stderr
    one_line(done.stderr, "out of memory")


# -- 7. progress and options that do not apply ------------------------------------------------------


@pytest.mark.parametrize("args,message", [
    (("dump", "--vm", "g.img", "--passes", 2, "--until-dirty", 5, "-o", "x.htab"),
     "--passes does not go with --until-dirty"),
    (("dump", "--qemu", "vm.mig", "--churn", 5, "-o", "x.htab"), "--churn goes with --vm"),
    (("dump", "--qemu", "vm.mig", "--buffer-size", "64K", "-o", "x.htab"), "--buffer-size goes with --vm"),
    (("dump", "--raw", "a.htab", "--byte-order", "little", "--order", 18, "--max-passes", 3, "-o", "x.htab"),
     "--max-passes goes with"),
    (("dump", "--vm", "g.img", "--churn", 5, "-o", "x.htab"), "--churn goes with --passes"),
    (("dump", "--vm", "g.img", "--max-passes", 5, "-o", "x.htab"), "--max-passes goes with --until-dirty"),
    (("load", "a.htab", "--raw-out", "x.bin", "--buffer-size", 4096), "--buffer-size goes with --vm"),
], ids=["passes-and-until-dirty", "churn-qemu", "buffer-size-qemu", "max-passes-raw", "churn-one-pass",
        "max-passes-alone", "buffer-size-raw-out"])
def test_options_that_do_not_apply_are_refused_by_name(inputs, tmp_path, args, message):
    d = workdir(tmp_path, inputs, "g.img", "a.htab", "vm.mig")
    r = cli_run(*args, cwd=d)
    assert r.exit_code == 2
    one_line(r.stderr, message)


def test_until_dirty_that_does_not_converge_says_so(tmp_path):
    assert cli_run("vm", "create", "k.img", "--order", 18, "--profile", "kernel-build", cwd=tmp_path).exit_code == 0
    r = cli_run("dump", "--vm", "k.img", "--until-dirty", 0, "--max-passes", 2, "--churn", 500, "-o", "x.htab",
                "--json", cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["converged"] is False and doc["passes"] == 2
    r = cli_run("dump", "-f", "--vm", "k.img", "--until-dirty", 0, "--max-passes", 2, "--churn", 500, "-o",
                "x.htab", cwd=tmp_path)
    assert "did not converge" in r.stderr
    r = cli_run("dump", "-f", "--vm", "k.img", "--until-dirty", 1_000_000, "--churn", 5, "-o", "x.htab", "--json",
                cwd=tmp_path)
    assert json.loads(r.stdout)["converged"] is True


@pytest.mark.parametrize("args", [
    ("dump", "--vm", "g.img", "-o", "x.htab"),
    ("load", "a.htab", "--vm", "n.img", "--create"),
    ("stat", "a.htab"),
    ("verify", "a.htab"),
    ("diff", "a.htab", "b.htab"),
    ("vm", "create", "c.img", "--order", 18),
    ("vm", "run", "g.img", "--ops", 50),
], ids=lambda a: " ".join(map(str, a[:2])))
def test_progress_can_be_forced_on_and_off(inputs, tmp_path, args):
    d = workdir(tmp_path, inputs, "g.img", "a.htab", "b.htab")
    i = 2 if args[0] == "vm" else 1
    on = run_htabtool(*args[:i], "--progress", *args[i:], cwd=d, )
    assert on.returncode in (0, 1), on.stderr
    assert b"\r" in on.stderr or b"\x1b[" in on.stderr, on.stderr  # a bar was drawn
    for p in ("x.htab", "n.img", "c.img"):
        if (d / p).exists():
            os.unlink(d / p)
    off = run_htabtool(*args[:i], "--no-progress", *args[i:], cwd=d)
    assert off.returncode in (0, 1)
    assert b"\x1b[" not in off.stderr and b"\r" not in off.stderr


def test_no_color_keeps_the_bar_without_colour(inputs, tmp_path):
    d = workdir(tmp_path, inputs, "a.htab")
    done = subprocess.run(HTABTOOL + ["verify", "--progress", "a.htab"], cwd=d, env=dict(ENV, NO_COLOR="1"),
                          capture_output=True, timeout=60)
    assert done.returncode == 0
    assert b"\r" in done.stderr or b"\x1b[" in done.stderr
    assert not re.search(rb"\x1b\[[0-9;]*3[0-9]m", done.stderr), done.stderr  # no colour codes


# -- 8. completion and man pages -----------------------------------------------------------------


def test_file_arguments_complete_file_names(inputs, tmp_path):
    d = workdir(tmp_path, inputs, "a.htab", "b.htab")
    env = dict(ENV, _HTABTOOL_COMPLETE="bash_complete", COMP_WORDS="htabtool stat a", COMP_CWORD="2")
    done = subprocess.run(HTABTOOL, cwd=d, env=env, capture_output=True, text=True, timeout=60)
    assert "file" in [line.split(",")[0] for line in done.stdout.split()], done.stdout  # file names: the shell's
    for words in ("htabtool dump --vm g", "htabtool dump -o o", "htabtool load x --raw-out r",
                  "htabtool diff a.htab b", "htabtool vm info g"):
        env.update(COMP_WORDS=words, COMP_CWORD=str(len(words.split()) - 1))
        done = subprocess.run(HTABTOOL, cwd=d, env=env, capture_output=True, text=True, timeout=60)
        assert "file" in [line.split(",")[0] for line in done.stdout.split()], (words, done.stdout)


def test_the_man_pages_are_installed_with_the_package(monkeypatch):
    """pip install . puts every page under <prefix>/share/man/manN, where
    man(1) finds it (setuptools resolves the globs as an install does)."""
    setuptools = pytest.importorskip("setuptools.config.pyprojecttoml")
    monkeypatch.chdir(ROOT)
    files = setuptools.read_configuration("pyproject.toml")["tool"]["setuptools"]["data-files"]
    files = dict(files) if not isinstance(files, dict) else files
    installed = {Path(p).name for dest, paths in files.items() if dest.startswith("share/man/man") for p in paths}
    pages = {p.name for p in (ROOT / "man").glob("*.[1-9]")}
    assert installed == pages
    for dest, paths in files.items():
        for p in paths:
            assert dest == f"share/man/man{Path(p).suffix[1:]}", (dest, p)


def test_stat_text_shows_what_its_page_promises(inputs, tmp_path):
    """Every row of stat's text output is in htabtool-stat(1), and every JSON
    key is documented there; the HPTE_V_HVLOCK count the page promises is
    in the text."""
    d = workdir(tmp_path, inputs, "a.htab")
    text = cli_run("stat", "a.htab", cwd=d).stdout
    page = (ROOT / "man" / "htabtool-stat.1").read_text().replace("\\-", "-")
    labels = [line.split("  ")[0].strip() for line in text.splitlines() if line.strip()]
    assert "HPTE_V_HVLOCK" in labels
    missing = [label for label in labels if not label.startswith("pass ") and label not in page]
    assert not missing, f"stat rows not in htabtool-stat(1): {missing}"
    keys = json.loads(cli_run("stat", "--json", "a.htab", cwd=d).stdout)
    schema = page[page.index(".SH JSON SCHEMA"):]
    schema = schema[: schema.index("\n.SH ", 1)]
    undocumented = [k for k in keys if not re.search(rf"^\.B[IR]? .*\b{k}\b", schema, re.M)]
    assert not undocumented, undocumented


# -- 9. readable output ------------------------------------------------------------------------------


def test_diff_headline_more_and_quiet(inputs, tmp_path):
    d = workdir(tmp_path, inputs, "a.htab", "b.htab")
    r = cli_run("diff", "a.htab", "b.htab", "--limit", 2, cwd=d)
    assert r.exit_code == 1
    head = r.stdout.splitlines()[0]
    assert re.match(r"a\.htab and b\.htab differ in [0-9,]+ of 16,384 entries: ", head), head
    assert re.search(r"\.\.\. and [0-9,]+ more \(--limit 2 shown\)", r.stdout)
    kinds = re.findall(r"^  entry 0x[0-9a-f]+ \([0-9,]+\) (\w+):", r.stdout, re.M)
    assert len(kinds) == 2
    for block in re.split(r"^  entry ", r.stdout, flags=re.M)[1:]:
        assert len(block.splitlines()) >= 2, block  # decoded, whatever the kind
    same = cli_run("diff", "a.htab", "a.htab", cwd=d)
    assert same.stdout.startswith("a.htab and a.htab are identical (16,384 entries compared")
    q = cli_run("diff", "-q", "a.htab", "b.htab", cwd=d)
    assert (q.exit_code, q.stdout, q.stderr) == (1, "", "")
    assert cli_run("diff", "--quiet", "a.htab", "a.htab", cwd=d).exit_code == 0


def test_dump_summary_counts_the_final_table(tmp_path):
    assert cli_run("vm", "create", "k.img", "--order", 18, "--profile", "kernel-build", cwd=tmp_path).exit_code == 0
    r = cli_run("dump", "--vm", "k.img", "--passes", 3, "--churn", 300, "-o", "x.htab", "--json", cwd=tmp_path)
    doc = json.loads(r.stdout)
    final = json.loads(cli_run("stat", "--json", "x.htab", cwd=tmp_path).stdout)["valid"]
    assert doc["final_valid"] == final
    assert doc["last_pass_changed"] == doc["per_pass"][-1]["valid"] + doc["per_pass"][-1]["invalid"]
    r = cli_run("dump", "-f", "--vm", "k.img", "--passes", 3, "--churn", 300, "-o", "x.htab", cwd=tmp_path)
    assert re.search(r"[0-9,]+ valid entries in the final table \([0-9,]+ changed in the last pass\)", r.stderr), \
        r.stderr
    assert "3 passes" in r.stderr
    r = cli_run("dump", "-f", "--vm", "k.img", "-o", "x.htab", cwd=tmp_path)
    assert "1 pass," in r.stderr


@pytest.mark.parametrize("args", [
    ("load", "a.htab", "--vm", "n.img", "--create", "--buffer-size", "64K"),
    ("dump", "--vm", "g.img", "--buffer-size", "1M", "-o", "x.htab"),
    ("vm", "create", "c.img", "--ram", "64M", "--backing-page-size", "64K"),
], ids=["load", "dump", "vm-create"])
def test_size_options_take_suffixes(inputs, tmp_path, args):
    d = workdir(tmp_path, inputs, "a.htab", "g.img")
    r = cli_run(*args, cwd=d)
    assert r.exit_code == 0, r.stderr
    bad = cli_run(*[("64Q" if a in ("64K", "1M") else a) for a in args], cwd=d)
    assert bad.exit_code == 2 and "not a size" in bad.stderr


def test_debug_after_the_subcommand(tmp_path):
    r = cli_run("stat", "missing.htab", "--debug", cwd=tmp_path)
    assert r.exit_code == 2
    assert "Traceback" in r.stderr and r.stderr.rstrip().endswith("htabtool: error: missing.htab: no such file")


def test_version_line():
    r = cli_run("--version", cwd=ROOT)
    assert re.fullmatch(r"htabtool \d+\.\d+\.\d+\n", r.stdout), r.stdout


def test_vm_stop_and_cont_json(inputs, tmp_path):
    d = workdir(tmp_path, inputs, "g.img")
    for cmd, state in (("stop", "stopped"), ("cont", "running")):
        r = cli_run("vm", cmd, "g.img", "--json", cwd=d)
        assert r.exit_code == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["schema"] == "htabtool-vm-state/1" and doc["vcpus"] == state


def test_counts_have_separators_and_the_right_plural(inputs, tmp_path):
    d = workdir(tmp_path, inputs, "g.img")
    r = cli_run("vm", "info", "g.img", cwd=d)
    assert "16,384 entries" in r.stdout, r.stdout
    r = cli_run("vm", "create", "e.img", "--order", 18, "--profile", "empty", cwd=d)
    assert "16,384 entries" in r.stdout and "0 valid entries" in r.stdout, r.stdout
    assert cli_run("dump", "--vm", "e.img", "-o", "e.htab", cwd=d).exit_code == 0
    r = cli_run("verify", "e.htab", cwd=d)
    assert re.search(r"\(1 chunk, [0-9,]+ records?\)", r.stdout), r.stdout


def test_a_seek_table_of_millions_of_frames_costs_little(tmp_path):
    """A sparse file whose seek table states 8 M frames: read as arrays
    (8 bytes a frame), not as a Python object per frame, and refused."""
    import struct

    from htabtool import container

    good = C.snapshot()
    head = good[: C.frame(good, "HEAD").end]
    frames = 8 << 20
    table = 8 + 8 * frames + 9
    size = len(head) + (1 << 20) + table
    path = tmp_path / "sparse.htab"
    with open(path, "wb") as f:
        f.write(head)
        f.seek(size - table)
        f.write(struct.pack("<II", container.SEEK_TABLE_MAGIC, table - 8))
        f.seek(size - 9)
        f.write(struct.pack("<IBI", frames, 0, container.SEEKABLE_MAGIC))
    done = run_htabtool("stat", "sparse.htab", cwd=tmp_path, preexec_fn=_rss_limit(800))
    assert done.returncode == 2
    one_line(done.stderr, "sparse.htab: seek table at offset")
    assert b"out of memory" not in done.stderr
