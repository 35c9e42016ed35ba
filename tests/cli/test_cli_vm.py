"""dump and load with simulated VMs, through the CLI."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import HTABTOOL, QEMU_FIXTURES, cli_run, env_with_root, run_htabtool


@pytest.fixture
def vm(tmp_path):
    img = tmp_path / "a.img"
    r = cli_run("vm", "create", img, "--order", 20, "--profile", "kernel-build", "--seed", 7)
    assert r.exit_code == 0, r.output
    return img


def stat(path):
    r = cli_run("stat", "--json", path)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_dump_vm_first_pass_then_load_into_a_new_vm(vm, tmp_path):
    snap = tmp_path / "a.htab"
    r = cli_run("dump", "--vm", vm, "-o", snap, "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    s = stat(snap)
    assert s["passes"] == 1 and s["order"] == 20 and s["source"]["kind"] == "vm"
    assert s["valid"] == summary["valid"] > 0
    assert s["hvlock"] == s["valid"], "today's kernel reports every entry with HPTE_V_HVLOCK"
    r = cli_run("load", snap, "--vm", tmp_path / "b.img", "--create", "--verify", "--json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["verified"] is True and rep["created"] is True and rep["records"] == s["records"]
    assert (os.stat(tmp_path / "b.img").st_mode & 0o777) == 0o600
    assert cli_run("dump", "--vm", tmp_path / "b.img", "-o", tmp_path / "b.htab").exit_code == 0
    assert cli_run("diff", snap, tmp_path / "b.htab").exit_code == 0


def test_live_passes_are_recorded(vm, tmp_path):
    snap = tmp_path / "live.htab"
    r = cli_run("dump", "--vm", vm, "--passes", 3, "--churn", 300, "-o", snap)
    assert r.exit_code == 0, r.stderr
    s = stat(snap)
    assert s["passes"] == 3 and [p["pass"] for p in s["per_pass"]] == [1, 2, 3]
    assert all(p["records"] > 0 for p in s["per_pass"][1:])
    # the final state equals a fresh first pass of the VM as it is now
    assert cli_run("dump", "--vm", vm, "-o", tmp_path / "now.htab").exit_code == 0
    r = cli_run("diff", "--ignore-rc", snap, tmp_path / "now.htab")
    assert r.exit_code == 0, r.stdout


def test_until_dirty_stops_when_quiet(tmp_path):
    img = tmp_path / "idle.img"
    assert cli_run("vm", "create", img, "--order", 20, "--profile", "idle", "--seed", 1).exit_code == 0
    snap = tmp_path / "u.htab"
    r = cli_run("dump", "--vm", img, "--until-dirty", 10_000, "--churn", 10, "-o", snap)
    assert r.exit_code == 0, r.stderr
    assert stat(snap)["passes"] == 2  # the second pass is already quiet
    r = cli_run("dump", "--vm", img, "--until-dirty", 0, "--max-passes", 3, "--churn", 200, "-o", snap, "-f")
    assert r.exit_code == 0 and stat(snap)["passes"] <= 3


def test_bolted_only_and_start_index(vm, tmp_path):
    snap = tmp_path / "b.htab"
    assert cli_run("dump", "--vm", vm, "--bolted-only", "-o", snap).exit_code == 0
    s = stat(snap)
    assert s["bolted_only"] and s["valid"] == s["bolted"]
    assert cli_run("dump", "--vm", vm, "--start-index", 4096, "-o", tmp_path / "s.htab").exit_code == 0
    assert stat(tmp_path / "s.htab")["start_index"] == 4096
    r = cli_run("dump", "--vm", vm, "--start-index", 1 << 30, "-o", tmp_path / "x.htab")
    assert r.exit_code == 2 and "past the table" in r.stderr


def test_load_refuses_a_running_vm_and_a_size_mismatch(vm, tmp_path):
    snap = tmp_path / "a.htab"
    assert cli_run("dump", "--vm", vm, "-o", snap).exit_code == 0
    before = vm.read_bytes()
    r = cli_run("load", snap, "--vm", vm)
    assert r.exit_code == 2 and "EBUSY" in r.stderr and r.stderr.count("\n") == 1
    assert vm.read_bytes() == before
    assert cli_run("load", snap, "--vm", vm, "--stop", "--verify").exit_code == 0
    assert cli_run("vm", "create", tmp_path / "small.img", "--order", 18, "--profile", "empty").exit_code == 0
    r = cli_run("load", snap, "--vm", tmp_path / "small.img")
    assert r.exit_code == 2 and "16,384 entries" in r.stderr and "65,536" in r.stderr
    r = cli_run("load", snap, "--vm", tmp_path / "missing.img")
    assert r.exit_code == 2 and "--create" in r.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers


def test_small_write_buffers_and_big_records(vm, tmp_path):
    snap = tmp_path / "a.htab"
    assert cli_run("dump", "--vm", vm, "-o", snap, "--buffer-size", 100).exit_code == 0
    r = cli_run("load", snap, "--vm", tmp_path / "c.img", "--create", "--buffer-size", 25, "--verify", "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["writes"] > 100




def test_pipe_dump_into_load_processes(vm, tmp_path):
    exe = HTABTOOL
    dump = subprocess.Popen(exe + ["dump", "--vm", str(vm), "-o", "-", "-q"], stdout=subprocess.PIPE)
    load = subprocess.run(exe + ["load", "-", "--vm", str(tmp_path / "b.img"), "--create", "--verify"],
                          stdin=dump.stdout, capture_output=True, text=True)
    dump.stdout.close()
    assert dump.wait() == 0
    assert load.returncode == 0, load.stderr
    assert "verified: identical" in load.stderr


WORKFLOW = Path(__file__).parent / "savevm_workflow.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_savevm_loadvm_workflow_script(tmp_path):
    env = dict(os.environ, HTABTOOL=f"{sys.executable} -m htabtool")
    done = subprocess.run(["bash", str(WORKFLOW), str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("workflow ok")


def test_diff_between_a_qemu_snapshot_and_a_simulated_one(tmp_path):
    fixtures = QEMU_FIXTURES
    assert cli_run("dump", "--qemu", fixtures / "pseries-4g-one-part.mig", "-o", tmp_path / "q.htab").exit_code == 0
    assert cli_run("vm", "create", tmp_path / "g.img", "--ram", "4G", "--profile", "idle", "--seed", 1).exit_code == 0
    assert cli_run("dump", "--vm", tmp_path / "g.img", "-o", tmp_path / "g.htab").exit_code == 0
    r = cli_run("diff", "--json", "--limit", 2, tmp_path / "q.htab", tmp_path / "g.htab")
    assert r.exit_code == 1, r.stderr
    d = json.loads(r.stdout)
    assert d["entries"] == 1 << 21 and d["added"] > 60_000 and len(d["first_differences"]) == 2


def test_shell_completion():
    env = env_with_root(_HTABTOOL_COMPLETE="bash_complete", COMP_WORDS="htabtool dump --bo", COMP_CWORD="2")
    done = run_htabtool(env=env, text=True)
    assert "--bolted-only" in done.stdout


def test_the_image_sizes_refusals_name_the_options_on_the_command_line_and_the_parameters_in_the_library(tmp_path):
    from htabtool.errors import UsageError
    from htabtool.sim.vmimage import create_image

    r = cli_run("vm", "create", tmp_path / "x.img", "--ram", "16400K")
    assert r.exit_code == 2 and "--ram must be a multiple of 64 KiB and at least 16 MiB" in r.output
    assert not (tmp_path / "x.img").exists()
    with pytest.raises(UsageError) as refused:
        create_image(str(tmp_path / "y.img"), ram=16400 << 10)
    assert refused.value.param == "ram" and str(refused.value).startswith("ram must be")
