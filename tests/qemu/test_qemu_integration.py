"""htabtool against the real peer: QEMU's pseries machine running Linux.

Opt-in (``python -m pytest -m qemu tests/test_qemu_integration.py``): it
boots a guest with the shared guest harness (``guest.sh``: a Debian
ppc64le guest on QEMU's pseries machine, -cpu POWER8 so that it uses the
hashed page table), captures two migration streams of it 10 s apart,
takes the htab out (``dump --qemu``), looks at it (``stat``: passes that
are sweeps of the table, QEMU's parts apart), compares the two captures
(``diff``), splices the first back into its stream (``load
--qemu-splice``), and boots a destination from the new stream: the guest
must run on.  The negative control splices an emptied htab: that guest
must stop, or the test could not fail.

Every test runs once for each QEMU that is present:

- ``7.2``: the ``qemu-system-ppc64`` on PATH (the harness's own), with
  2 vCPUs;
- ``10``: the ``qemu-system-ppc64`` in ``$HTABTOOL_QEMU10_BIN_DIR`` (put
  first on PATH for the harness), machine ``pseries-10.0``, whose streams
  carry QEMU_VM_COMMAND SWITCHOVER_START before the END sections; with
  1 vCPU, the configuration whose destinations run on from an untouched
  capture (with 2 vCPUs under software emulation a QEMU 10.0 destination
  reported hard lockups and stopped printing even from an untouched
  capture).

The harness is found through ``HTABTOOL_GUEST_SH``, else at
``../shared/qemu-guest/guest.sh`` beside the repository; it must have been
set up once (``guest.sh setup``).  Each step runs through the CLI.  About
90 s per QEMU on two cores; one guest at a time.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import pytest

from htabtool import qemu
from htabtool.records.table import valid_mask
from tests.helpers import ROOT, final_table, run_htabtool

pytestmark = pytest.mark.qemu

GUEST_SH = pathlib.Path(os.environ.get("HTABTOOL_GUEST_SH") or ROOT.parent / "shared" / "qemu-guest" / "guest.sh")
MEM = "4G"


@dataclass(frozen=True)
class Peer:
    """One QEMU: its name, the PATH the harness runs it with, its vCPUs."""

    name: str
    path: str
    smp: str
    machine: str
    switchover: bool  # its streams carry MIG_CMD_SWITCHOVER_START

    def binary(self) -> str | None:
        return shutil.which("qemu-system-ppc64", path=self.path)

    def env(self) -> dict:
        return {**os.environ, "PATH": self.path}


def _peers() -> list:
    peers = [Peer("7.2", os.environ.get("PATH", ""), "2", "pseries-7.2", False)]
    q10 = os.environ.get("HTABTOOL_QEMU10_BIN_DIR")
    if q10:
        peers.append(Peer("10", q10 + os.pathsep + os.environ.get("PATH", ""), "1", "pseries-10.0", True))
    return peers


def _guest_dir() -> pathlib.Path | None:
    """Where the harness keeps its guest: $GUEST_DIR, else its own default."""
    if os.environ.get("GUEST_DIR"):
        return pathlib.Path(os.environ["GUEST_DIR"])
    m = re.search(r"^GUEST_DIR=\$\{GUEST_DIR:-([^}]+)\}", GUEST_SH.read_text(), re.M)
    return pathlib.Path(m.group(1)) if m else None


def _skip_reason(peer: Peer) -> str | None:
    if peer.binary() is None:
        where = "$HTABTOOL_QEMU10_BIN_DIR" if peer.name == "10" else "PATH (guest.sh setup installs it)"
        return f"no qemu-system-ppc64 for QEMU {peer.name} in {where}"
    if not GUEST_SH.is_file():
        return f"the guest harness is not at {GUEST_SH} (set HTABTOOL_GUEST_SH)"
    guest = _guest_dir()
    if guest is None or not (guest / "initrd.gz").is_file() or not list((guest / "root" / "boot").glob("vmlinux-*")):
        return f"the guest is not set up in {guest} (run guest.sh setup once)"
    version = subprocess.run([peer.binary(), "--version"], capture_output=True, text=True, env=peer.env()).stdout
    if not re.search(rf"version {re.escape(peer.name)}[.\s]", version):
        return f"the qemu-system-ppc64 found for QEMU {peer.name} is another version: {version.splitlines()[:1]}"
    return None


def _run(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env)


def _cli(*args, rc=0) -> subprocess.CompletedProcess:
    done = run_htabtool(*args, text=True, timeout=600)
    assert done.returncode == rc, (args, done.stdout, done.stderr)
    return done


def _incoming(peer: Peer, mig: pathlib.Path, seconds: int) -> subprocess.CompletedProcess:
    return _run("bash", GUEST_SH, "incoming", mig, MEM, peer.smp, seconds, env=peer.env(), timeout=seconds + 120)


@pytest.fixture(scope="module", params=_peers(), ids=lambda peer: f"qemu-{peer.name}")
def capture(request, tmp_path_factory):
    peer = request.param
    reason = _skip_reason(peer)
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp(f"qemu-{peer.name}-capture")
    done = _run("bash", GUEST_SH, "capture", out, MEM, peer.smp, "10", "10", env=peer.env())
    assert done.returncode == 0, done.stdout + done.stderr
    migs = [out / "capture.1.mig", out / "capture.2.mig"]
    assert all(m.stat().st_size > 10_000_000 for m in migs)
    yield peer, migs
    shutil.rmtree(out, ignore_errors=True)


def test_the_stream_is_walked_with_its_commands(capture):
    peer, (mig, _) = capture
    events = list(qemu.iter_events(open(mig, "rb")))
    conf = next(e for e in events if isinstance(e, qemu.Configuration))
    assert conf.machine == peer.machine
    commands = [e for e in events if isinstance(e, qemu.Command)]
    ends = [e for e in events if isinstance(e, qemu.SectionBegin) and e.kind == "END"]
    if peer.switchover:  # right before the END sections (migration_completion_precopy)
        assert [c.name for c in commands] == ["SWITCHOVER_START"]
        assert commands[0].offset + commands[0].size == ends[0].offset
    else:
        assert commands == []


def test_dump_stat_diff_splice_and_the_destination_runs_on(capture, tmp_path):
    peer, (mig, mig2) = capture
    snap, snap2, new = tmp_path / "guest.htab", tmp_path / "guest2.htab", tmp_path / "spliced.mig"
    with open(mig, "rb") as f:
        src = qemu.QemuSource(f, byte_order="little", name=mig.name)
        shift, pieces = src.info.order, list(src.pieces())
    table = final_table(pieces, shift, "little")
    assert shift == 25 and src.info.source["machine"] == peer.machine
    assert int(valid_mask(table).sum()) > 10_000  # the guest's kernel maps its RAM
    _cli("dump", "--qemu", mig, "-o", snap)
    _cli("dump", "--qemu", mig2, "-o", snap2)
    report = json.loads(_cli("stat", "--json", snap).stdout)
    # passes are sweeps: each part feeds the passes it holds records of, and
    # there are no more passes than the records wrap round
    parts = report["qemu_parts"]
    assert len(parts) == src.info.source["parts"] >= 1 and report["passes"] == src.info.source["passes"]
    assert report["passes"] <= sum(len(p["passes"]) for p in parts)
    assert [p["pass"] for p in report["per_pass"]] == list(range(1, report["passes"] + 1))
    assert report["per_pass"][0]["qemu_parts"][0] == 1 and report["valid"] == int(valid_mask(table).sum())
    assert "QEMU parts" in _cli("stat", snap).stdout
    # the two captures differ (the guest ran on between them), exit 1
    diff = json.loads(_cli("diff", "--json", snap, snap2, rc=1).stdout)
    assert not diff["identical"] and diff["entries"] == 1 << (shift - 4)
    _cli("load", snap, "--qemu-splice", mig, "-o", new)
    # the new stream holds the same table, one htab part per pass, the command where it was
    with open(new, "rb") as f:
        again = qemu.QemuSource(f)
        assert np.array_equal(final_table(list(again.pieces()), again.info.order, "little"), table)
        assert again.info.source["parts"] == again.info.source["passes"] == report["passes"]
    assert len([e for e in qemu.iter_events(open(new, "rb")) if isinstance(e, qemu.Command)]) == int(peer.switchover)
    done = _incoming(peer, new, 60)
    new.unlink()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "runs on" in done.stdout


def test_emptied_htab_stops_the_guest(capture, tmp_path):
    """The negative control: without its HPT the destination guest cannot
    translate a single address and prints nothing more."""
    peer, (mig, _) = capture
    empty = tmp_path / "empty.mig"
    with open(mig, "rb") as f:
        shift = qemu.QemuSource(f).info.order
    with open(mig, "rb") as f, open(empty, "wb") as out:
        stats = qemu.splice(f, shift, [], out, passes=0)
    assert stats.htab.records == 0
    done = _incoming(peer, empty, 30)
    empty.unlink()
    assert done.returncode == 1, done.stdout + done.stderr
