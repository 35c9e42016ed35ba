"""VM images: one file, one guest, across processes; and ``htabtool vm``."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import struct
import subprocess
import sys

import numpy as np
import pytest

from htabtool.errors import UsageError, VMImageError
from htabtool.sim import KVM_GET_HTAB_WRITE
from htabtool.sim.vmimage import MAGIC, VMImage, create_image, image_info, open_vm, parse_size, run_image, set_running
from tests.helpers import cli_run, run_htabtool

MIB = 1 << 20


@pytest.fixture
def img(tmp_path):
    path = str(tmp_path / "guest.img")
    create_image(path, ram=256 * MIB, profile="kernel-build", seed=3)
    return path


def arrays(path):
    with open_vm(path, writable=False) as vm:
        return vm.hpt.hpt.copy(), vm.hpt.rev.copy(), vm.guest.gmap.copy(), json.dumps(vm.guest.state, sort_keys=True)


def test_create_layout_and_mode(img):
    st = os.stat(img)
    assert stat.S_IMODE(st.st_mode) == 0o600
    with open(img, "rb") as f:
        head = f.read(64)
    assert head[:8] == MAGIC
    version, header_size, order, flags = struct.unpack_from("<IIII", head, 8)
    assert (version, header_size, order) == (1, 4096, 21)
    assert flags & 3 == 3  # running, MMU ready
    info = image_info(img)
    assert info["entries"] == 1 << 17 and info["ram_bytes"] == 256 * MIB
    assert info["valid"] > 4096 and info["guest"]["profile"] == "kernel-build"
    assert info["disk_bytes"] < info["file_bytes"]  # sparse until written


def test_reopened_in_another_process_is_the_same_guest(img, tmp_path):
    other = str(tmp_path / "copy.img")
    shutil.copyfile(img, other)
    os.chmod(other, 0o600)
    # one continues here, the other in a child process: same guest, same table
    run_image(img, ops=60)
    code = (
        "import sys; from htabtool.sim.vmimage import run_image; "
        "run_image(sys.argv[1], ops=25); run_image(sys.argv[1], ops=35)"
    )
    subprocess.run([sys.executable, "-c", code, other], check=True)
    a, b = arrays(img), arrays(other)
    assert all(np.array_equal(x, y) for x, y in zip(a[:3], b[:3]))
    sa, sb = json.loads(a[3]), json.loads(b[3])
    assert sa.pop("clock") == pytest.approx(sb.pop("clock"))
    assert sa == sb


def test_dump_in_one_process_load_in_another(img, tmp_path):
    dest = str(tmp_path / "dest.img")
    create_image(dest, ram=256 * MIB, profile="empty")
    dump = str(tmp_path / "pass.bin")
    code = (
        "import sys\n"
        "from htabtool.sim.vmimage import open_vm\n"
        "with open_vm(sys.argv[1]) as vm, vm.hpt.htab_fd() as fd, open(sys.argv[2], 'wb') as out:\n"
        "    while True:\n"
        "        out.write(fd.read(1 << 16))\n"
        "        if fd.last_read.wrapped: break\n"
    )
    subprocess.run([sys.executable, "-c", code, img, dump], check=True)
    with open(dump, "rb") as f:
        data = f.read()
    with open_vm(dest) as vm, vm.hpt.htab_fd(KVM_GET_HTAB_WRITE) as fd:
        assert fd.write_records(data) == len(data)
    with open_vm(img, writable=False) as a, open_vm(dest, writable=False) as b:
        assert np.array_equal(a.hpt.guest_view(), b.hpt.guest_view())


def test_stop_and_cont_persist_and_writes_honour_them(img):
    record = struct.pack("<IHH", 0, 0, 8)
    with open_vm(img) as vm, vm.hpt.htab_fd(KVM_GET_HTAB_WRITE) as fd:
        with pytest.raises(OSError) as exc:
            fd.write(record)
        assert exc.value.errno == errno.EBUSY
    assert set_running(img, False)["vcpus"] == "stopped"
    assert image_info(img)["vcpus"] == "stopped"
    with pytest.raises(VMImageError, match="stopped"):
        run_image(img, ops=1)
    with open_vm(img) as vm, vm.hpt.htab_fd(KVM_GET_HTAB_WRITE) as fd:
        assert fd.write(record) == 8
    set_running(img, True)
    assert image_info(img)["vcpus"] == "running"
    run_image(img, ops=5)


def test_a_read_only_image_has_no_htab_fd(img):
    with open_vm(img, writable=False) as vm:
        with pytest.raises(UsageError, match="read-only"):
            vm.hpt.htab_fd()


def test_an_open_image_is_locked(img):
    with open_vm(img):
        with pytest.raises(VMImageError, match="in use"):
            VMImage.open(img)
        with pytest.raises(VMImageError, match="in use"):
            VMImage.open(img, writable=False)
    with open_vm(img, writable=False):
        with open_vm(img, writable=False):
            pass


def test_create_refuses_to_overwrite(img):
    with pytest.raises(VMImageError, match="exists"):
        create_image(img, ram=256 * MIB)
    create_image(img, order=18, profile="idle", force=True)
    assert image_info(img)["order"] == 18
    assert not [n for n in os.listdir(os.path.dirname(img)) if n.startswith(".htabvm-")]


def _patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: _patch(p, 0, b"NOTANIMG"), "not a VM image"),
        (lambda p: _patch(p, 8, struct.pack("<I", 2)), "format version 2"),
        (lambda p: _patch(p, 24, struct.pack("<Q", 12345)), "checksum"),
        (lambda p: os.truncate(p, os.path.getsize(p) - 10), "truncated"),
        (lambda p: os.truncate(p, 100), "not a VM image"),
    ],
)
def test_damaged_images_are_refused(img, damage, message):
    damage(img)
    with pytest.raises(VMImageError, match=message):
        image_info(img)


def test_damaged_state(img):
    with open_vm(img) as vm:
        off = vm.header["state_offset"]
    _patch(img, off, b"{{{")
    with pytest.raises(VMImageError, match="JSON"):
        image_info(img)


def test_missing_image():
    with pytest.raises(VMImageError, match="no such"):
        image_info("/nonexistent/x.img")


@pytest.mark.parametrize("text, value", [("4G", 4 << 30), ("512M", 512 * MIB), ("4GiB", 4 << 30), ("65536", 65536),
                                         ("1t", 1 << 40)])
def test_parse_size(text, value):
    assert parse_size(text) == value


# -- the CLI ------------------------------------------------------------------------


def test_cli_create_run_info_stop_cont(tmp_path):
    path = str(tmp_path / "g.img")
    res = cli_run("vm", "create", path, "--ram", "256M", "--profile", "idle", "--seed", "2")
    assert res.exit_code == 0, res.output
    assert "order 21" in res.output and "profile idle" in res.output
    res = cli_run("vm", "run", path, "--ops", "20", "--json")
    assert res.exit_code == 0, res.output
    assert sum(json.loads(res.output)["events"].values()) == 20
    res = cli_run("vm", "info", path, "--json")
    info = json.loads(res.output)
    assert info["schema"] == "htabtool-vm-info/1"
    assert info["guest"]["events"] == 20 and info["vcpus"] == "running"
    assert cli_run("vm", "stop", path).exit_code == 0
    assert "stopped" in cli_run("vm", "info", path).output
    assert cli_run("vm", "cont", path).exit_code == 0
    res = cli_run("vm", "run", path, "--seconds", "1")
    assert res.exit_code == 0 and "valid entries" in res.output


def test_cli_usage_errors(tmp_path):
    path = str(tmp_path / "g.img")
    assert cli_run("vm", "create", path).exit_code == 2
    assert cli_run("vm", "create", path, "--ram", "lots").exit_code == 2
    assert cli_run("vm", "create", path, "--order", "50").exit_code == 2
    assert cli_run("vm", "run", path).exit_code == 2


def test_cli_errors_are_one_line(tmp_path):
    path = str(tmp_path / "g.img")
    create_image(path, order=18, profile="empty")
    res = run_htabtool("vm", "run", path, "--ops", "1", text=True)
    assert res.returncode == 2
    assert res.stderr.strip() == f"htabtool: error: {path}: the VM is stopped (htabtool vm cont {path} first)"
    res = run_htabtool("vm", "info", tmp_path / "none.img", text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "no such VM image" in res.stderr


def test_cli_help_has_examples():
    for cmd in ([], ["create"], ["run"], ["info"], ["stop"], ["cont"]):
        res = cli_run("vm", *cmd, "--help")
        assert res.exit_code == 0 and "Example" in res.output
