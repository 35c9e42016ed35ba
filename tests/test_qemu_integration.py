"""htabtool against the real peer: QEMU's pseries machine running Linux.

Opt-in (``python -m pytest -m qemu tests/test_qemu_integration.py``): it
boots a guest with the shared guest harness (``guest.sh``: a Debian
ppc64le guest on QEMU's pseries machine, -cpu POWER8 so that it uses the
hashed page table), captures a migration stream of it, takes the htab out
(``dump --qemu``), looks at it (``stat``), splices it back into the
stream (``load --qemu-splice``), and boots a destination from the new
stream: the guest must run on.  The negative control splices an emptied
htab: that guest must stop, or the test could not fail.

The harness is found through ``HTABTOOL_GUEST_SH``, else at
``../shared/qemu-guest/guest.sh`` beside the repository; it must have been
set up once (``guest.sh setup``).  Each step runs through the CLI when
the CLI has it (``dump --qemu``, ``stat``, ``load --qemu-splice``), else
through the library call the CLI wraps.  About 70 s on two cores; one
guest at a time.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from htabtool import qemu
from htabtool.records import apply_batch, decode_batch, new_table
from htabtool.table import valid_mask

pytestmark = pytest.mark.qemu

REPO = pathlib.Path(__file__).resolve().parent.parent
GUEST_SH = pathlib.Path(os.environ.get("HTABTOOL_GUEST_SH") or REPO.parent / "shared" / "qemu-guest" / "guest.sh")
MEM, SMP = "4G", "2"


def _guest_dir() -> pathlib.Path | None:
    """Where the harness keeps its guest: $GUEST_DIR, else its own default."""
    if os.environ.get("GUEST_DIR"):
        return pathlib.Path(os.environ["GUEST_DIR"])
    m = re.search(r"^GUEST_DIR=\$\{GUEST_DIR:-([^}]+)\}", GUEST_SH.read_text(), re.M)
    return pathlib.Path(m.group(1)) if m else None


def _skip_reason() -> str | None:
    if shutil.which("qemu-system-ppc64") is None:
        return "qemu-system-ppc64 is not installed (guest.sh setup installs it)"
    if not GUEST_SH.is_file():
        return f"the guest harness is not at {GUEST_SH} (set HTABTOOL_GUEST_SH)"
    guest = _guest_dir()
    if guest is None or not (guest / "initrd.gz").is_file() or not list((guest / "root" / "boot").glob("vmlinux-*")):
        return f"the guest is not set up in {guest} (run guest.sh setup once)"
    return None


def _run(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)


def _incoming(mig: pathlib.Path, seconds: int) -> subprocess.CompletedProcess:
    return _run("bash", GUEST_SH, "incoming", mig, MEM, SMP, seconds, timeout=seconds + 120)


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("qemu-capture")
    done = _run("bash", GUEST_SH, "capture", out, MEM, SMP, "10")
    assert done.returncode == 0, done.stdout + done.stderr
    mig = out / "capture.1.mig"
    assert mig.stat().st_size > 10_000_000
    yield mig
    shutil.rmtree(out, ignore_errors=True)


def _final_table(pieces, shift, byte_order):
    table = new_table(1 << (shift - 4))
    for _, data in pieces:
        apply_batch(table, decode_batch(data, byte_order)[0])
    return table


def test_spliced_stream_runs_on(capture, tmp_path):
    new = tmp_path / "spliced.mig"
    snap = tmp_path / "guest.htab"
    with open(capture, "rb") as f:
        src = qemu.QemuSource(f, byte_order="little", name=capture.name)
        shift, pieces = src.info.order, list(src.pieces())
    table = _final_table(pieces, shift, "little")
    assert shift == 25 and src.info.source["machine"].startswith("pseries")
    assert int(valid_mask(table).sum()) > 10_000  # the guest's kernel maps its RAM
    for step in (("dump", "--qemu", capture, "-o", snap), ("stat", snap),
                 ("load", snap, "--qemu-splice", capture, "-o", new)):
        done = _run(sys.executable, "-m", "htabtool", *step)
        assert done.returncode == 0, (step, done.stdout, done.stderr)
    # the new stream holds the same table, in one htab part
    with open(new, "rb") as f:
        again = qemu.QemuSource(f)
        assert np.array_equal(_final_table(list(again.pieces()), again.info.order, "little"), table)
        assert again.info.source["parts"] == 1
    done = _incoming(new, 60)
    new.unlink()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "runs on" in done.stdout


def test_emptied_htab_stops_the_guest(capture, tmp_path):
    """The negative control: without its HPT the destination guest cannot
    translate a single address and prints nothing more."""
    empty = tmp_path / "empty.mig"
    with open(capture, "rb") as f:
        shift = qemu.QemuSource(f).info.order
    with open(capture, "rb") as f, open(empty, "wb") as out:
        stats = qemu.splice(f, shift, [], out)
    assert stats.htab.records == 0
    done = _incoming(empty, 30)
    empty.unlink()
    assert done.returncode == 1, done.stdout + done.stderr
