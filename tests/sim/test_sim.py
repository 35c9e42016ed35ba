"""The simulated kernel's package (htabtool.sim), the one home of the HPTE
rules (htabtool.hpte) and of durability (htabtool.atomic)."""

from __future__ import annotations

import errno
import inspect
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from htabtool import atomic, hpte
from htabtool.sim import vmformat
from htabtool.sim.guest import EVENTS
from htabtool.sim.profiles import PROFILES
from htabtool.sim.vmimage import VMImage, create_image, image_info
from tests.sim.test_engine_model import (
    lp_shifts as kernel_page_shifts,  # the kernel model: kvmppc_hpte_page_shifts as C has it
)

LEFTOVER = re.compile(r"^\.(?P<base>.+)\.[0-9a-f]{16}\.tmp$")


def leftovers(directory) -> list[str]:
    return [n for n in os.listdir(directory) if LEFTOVER.match(n)]


# -- hpte: kvmppc_hpte_page_shifts, the VRMA test, the low byte of v ----------


def every_encoding():
    for large in (0, hpte.HPTE_V_LARGE):
        for lphi in range(16):
            for lp in range(16):
                yield large | hpte.HPTE_V_VALID, (lphi << 16) | (lp << 12) | 0x192


def test_the_page_size_decode_is_the_kernels_for_every_encoding():
    pairs = list(every_encoding())
    v = np.array([p[0] for p in pairs], dtype=np.uint64)
    r = np.array([p[1] for p in pairs], dtype=np.uint64)
    base, actual = hpte.page_shift_pair_array(v, r)
    packed = hpte.page_shifts_array(v, r)
    for k, (vv, rr) in enumerate(pairs):
        want = kernel_page_shifts(vv, rr)
        want_base = want & 0xFF
        want_actual = want >> 8 if want >= 0x100 else want
        assert hpte.page_shifts(vv, rr) == want
        assert hpte.page_shift_pair(vv, rr) == (want_base, want_actual)
        assert (hpte.base_page_shift(vv, rr), hpte.actual_page_shift(vv, rr)) == (want_base, want_actual)
        assert (int(base[k]), int(actual[k]), int(packed[k])) == (want_base, want_actual, want)
    assert np.array_equal(hpte.base_page_shift_array(v, r), base)
    assert np.array_equal(hpte.actual_page_shift_array(v, r), actual)


def test_the_engine_alias_keeps_its_page_shifts_array_as_base_and_actual():
    from htabtool import engine

    v = np.array([hpte.HPTE_V_LARGE, 0], dtype=np.uint64)
    r = np.array([7 << 12, 0], dtype=np.uint64)
    base, actual = engine.page_shifts_array(v, r)
    assert base.tolist() == [12, 12] and actual.tolist() == [16, 12]


def test_the_vrma_test_is_one_rule_for_ints_and_arrays():
    vrma = hpte.HPTE_V_1TB_SEG | (hpte.VRMA_VSID << 24)
    cases = [vrma | 0x15, vrma | 0xFFFFFF, vrma ^ (1 << 24), vrma & ~hpte.HPTE_V_1TB_SEG, 0x15]
    want = [True, True, False, False, False]
    assert [hpte.is_vrma_hpte(v) for v in cases] == want
    assert hpte.vrma_array(np.array(cases, dtype=np.uint64)).tolist() == want


def test_the_low_byte_of_v_is_read_from_the_tables_own_bytes():
    rng = np.random.default_rng(5)
    native = rng.integers(0, 1 << 63, size=(1000, 2), dtype=np.uint64)
    table = native.astype(">u8")
    low = hpte.v_low_bytes(table)
    assert np.array_equal(low, (native[:, 0] & np.uint64(0xFF)).astype(np.uint8))
    assert np.array_equal(hpte.v_low_bytes(table.view(np.uint8).reshape(-1, 16)), low)  # the (N, 16) form
    assert np.shares_memory(low, table)  # a view, not a copy


# -- the VM image format: counts and vm info without numpy ----------------------


def test_entry_counts_are_the_counts_of_the_kind_bits():
    low = np.random.default_rng(1).integers(0, 256, size=5000, dtype=np.uint8)
    occupied = (low & (hpte.HPTE_V_VALID | hpte.HPTE_V_ABSENT)) != 0
    want = {
        "valid": int(occupied.sum()),
        "bolted": int((occupied & ((low & hpte.HPTE_V_BOLTED) != 0)).sum()),
        "absent": int(((low & hpte.HPTE_V_ABSENT) != 0).sum()),
        "secondary": int((occupied & ((low & hpte.HPTE_V_SECONDARY) != 0)).sum()),
    }
    assert vmformat.entry_counts(low.tobytes()) == want


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "guest.img"
    create_image(str(path), order=20, profile="kernel-build", seed=3, vrma=True)
    return path


def test_vm_info_from_the_file_is_what_the_open_image_says(image):
    with VMImage.open(str(image), writable=False) as vm:
        mapped = vm.info()
    assert image_info(str(image)) == mapped
    assert mapped["valid"] > 0 and mapped["bolted"] > 0


def test_vm_info_imports_no_numpy(image):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "htabtool", "vm", "info", str(image)],
                         capture_output=True, text=True, env=env, check=True)
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "htabtool.sim.vmformat" in imported
    assert not {name for name in imported if name.split(".")[0] == "numpy"}


# -- the guest's events ------------------------------------------------------------


def test_every_event_a_profile_draws_has_a_handler():
    drawn = {name for profile in PROFILES.values() for name in profile.weights}
    assert drawn <= set(EVENTS)
    assert all(callable(handler) for handler in EVENTS.values())


def test_a_fork_with_the_process_table_full_is_counted_as_an_exit():
    from htabtool.sim.guest import Guest
    from htabtool.sim.hpt import SimulatedHPT

    guest = Guest.boot(SimulatedHPT(20), "idle", seed=2)
    while len(guest.state["processes"]) < guest.profile.max_procs:
        guest._on_fork()
    before = len(guest.state["processes"])
    guest._event("fork")
    assert guest.stats.events["exit"] == 1 and guest.stats.events["fork"] == 0
    assert len(guest.state["processes"]) == before - 1


# -- the VM read options -----------------------------------------------------------


# -- atomic: temporary names, install, staged, fsync ----------------------------


def test_a_temp_file_has_the_documented_leftover_name_and_mode(tmp_path):
    temp = atomic.TempFile(tmp_path / "out.bin", readable=True)
    try:
        name = os.path.basename(temp.name)
        assert LEFTOVER.match(name).group("base") == "out.bin"
        assert os.stat(temp.name).st_mode & 0o777 == 0o600 & ~_umask()
        os.write(temp.fd, b"abc")
        assert os.pread(temp.fd, 3, 0) == b"abc"  # readable: a VM image is mapped from it
    finally:
        temp.close()
        temp.discard()
    assert leftovers(tmp_path) == [] and not (tmp_path / "out.bin").exists()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_install_replaces_or_links_and_never_replaces_when_told_not_to(tmp_path):
    dest = tmp_path / "f"
    dest.write_bytes(b"old")
    temp = atomic.TempFile(dest)
    os.write(temp.fd, b"new")
    with pytest.raises(FileExistsError):
        temp.install(replace=False, final=False)
    assert dest.read_bytes() == b"old" and len(leftovers(tmp_path)) == 1
    temp.install(final=False)
    temp.close()
    temp.discard()  # installed: nothing to remove, the new file stays
    assert dest.read_bytes() == b"new" and leftovers(tmp_path) == []
    linked = atomic.TempFile(tmp_path / "g")
    linked.install(replace=False, final=False)
    linked.close()
    assert (tmp_path / "g").exists() and leftovers(tmp_path) == []


def test_install_marks_the_commit_point_only_when_final(tmp_path):
    atomic.SIGNALS.reset()
    try:
        for final in (False, True):
            temp = atomic.TempFile(tmp_path / f"f{final}")
            temp.install(final=final)
            temp.close()
            assert atomic.SIGNALS.committed is final
    finally:
        atomic.SIGNALS.reset()


def test_staged_puts_the_file_in_place_or_leaves_nothing(tmp_path):
    dest = tmp_path / "image"
    with atomic.staged(dest, final=False) as temp:
        assert LEFTOVER.match(os.path.basename(temp))
        with open(temp, "wb") as f:
            f.write(b"one")
    assert dest.read_bytes() == b"one" and leftovers(tmp_path) == []
    with pytest.raises(RuntimeError), atomic.staged(dest, final=False) as temp:
        with open(temp, "wb") as f:
            f.write(b"two")
        raise RuntimeError("killed half way")
    assert dest.read_bytes() == b"one" and leftovers(tmp_path) == []
    with pytest.raises(FileExistsError), atomic.staged(dest, replace=False, final=False) as temp:
        with open(temp, "wb") as f:
            f.write(b"three")
    assert dest.read_bytes() == b"one" and leftovers(tmp_path) == []


def test_the_one_directory_fsync_skips_what_file_systems_refuse(tmp_path, monkeypatch):
    calls = []

    def refusing(code):
        def fsync(fd):
            calls.append(code)
            raise OSError(code, os.strerror(code))
        return fsync

    for code in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EROFS):
        monkeypatch.setattr(os, "fsync", refusing(code))
        atomic.fsync_directory(str(tmp_path))
    monkeypatch.setattr(os, "fsync", refusing(errno.EIO))
    with pytest.raises(OSError) as info:
        atomic.fsync_directory(str(tmp_path))
    assert info.value.errno == errno.EIO and len(calls) == 5
    atomic.fsync_directory(str(tmp_path / "missing"))  # cannot be opened: nothing to sync


def test_an_fsync_error_names_the_final_file(tmp_path, monkeypatch):
    temp = atomic.TempFile(tmp_path / "final.bin")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    try:
        with pytest.raises(OSError) as info:
            temp.install(final=False)
        assert info.value.filename == str(tmp_path / "final.bin")
    finally:
        monkeypatch.undo()
        temp.close()
        temp.discard()
    assert leftovers(tmp_path) == [] and not (tmp_path / "final.bin").exists()


def test_the_vm_image_code_uses_atomic_alone_for_durability():
    import htabtool.sim.vmimage as vmimage

    source = inspect.getsource(vmimage)
    for call in ("os.replace(", "os.link(", "os.unlink(", "mkstemp", "temp_name(", "O_EXCL"):
        assert call not in source, call
