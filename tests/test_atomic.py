"""atomic_write: all or nothing under the final name, mode 0600, no litter."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from htabtool import atomic
from htabtool.atomic import atomic_write


def entries(directory) -> list[str]:
    return sorted(os.listdir(directory))


def test_writes_the_file_with_mode_0600(tmp_path):
    path = tmp_path / "snap.htab"
    old = os.umask(0o022)
    try:
        with atomic_write(path) as f:
            f.write(b"hello")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"hello"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert entries(tmp_path) == ["snap.htab"]


def test_other_modes_and_path_types(tmp_path):
    path = tmp_path / "out.bin"
    old = os.umask(0o022)
    try:
        with atomic_write(str(path), mode=0o644) as f:
            f.write(b"x")
        with atomic_write(os.fsencode(path)) as f:  # bytes paths too; mode 0600 again
            f.write(b"y")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"y"
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_the_temp_file_is_hidden_in_the_same_directory_until_the_end(tmp_path):
    path = tmp_path / "snap.htab"
    path.write_bytes(b"old")
    with atomic_write(path) as f:
        f.write(b"new")
        names = entries(tmp_path)
        assert len(names) == 2 and path.read_bytes() == b"old"
        temp = next(n for n in names if n != "snap.htab")
        assert temp.startswith(".snap.htab.") and temp.endswith(atomic.TEMP_SUFFIX)
        assert os.stat(tmp_path / temp).st_mode & 0o777 == 0o600
    assert path.read_bytes() == b"new"
    assert entries(tmp_path) == ["snap.htab"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt(), SystemExit(3)])
def test_a_failure_mid_write_keeps_the_old_file_and_removes_the_temp(tmp_path, exc):
    path = tmp_path / "snap.htab"
    path.write_bytes(b"old contents")
    with pytest.raises(type(exc)):
        with atomic_write(path) as f:
            f.write(b"partial" * 1000)
            f.flush()
            raise exc
    assert path.read_bytes() == b"old contents"
    assert entries(tmp_path) == ["snap.htab"]


def test_a_failure_without_an_old_file_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        with atomic_write(tmp_path / "new.htab") as f:
            f.write(b"partial")
            raise ValueError
    assert entries(tmp_path) == []


def test_fsyncs_the_file_and_the_directory(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else None)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with atomic_write(tmp_path / "a") as f:
        f.write(b"x")
    assert len(synced) == 2
    if synced[0] is not None:
        assert synced == [False, True]  # the file, then its directory
    synced.clear()
    with atomic_write(tmp_path / "b", fsync=False) as f:
        f.write(b"x")
    assert synced == []


def test_a_directory_that_refuses_fsync_is_tolerated(tmp_path, monkeypatch):
    real = os.fsync

    def fsync(fd):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with atomic_write(tmp_path / "a") as f:
        f.write(b"x")
    assert (tmp_path / "a").read_bytes() == b"x"


def test_a_failing_file_fsync_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a"
    path.write_bytes(b"old")

    def fsync(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="I/O error"):
        with atomic_write(path) as f:
            f.write(b"new")
    assert path.read_bytes() == b"old"
    assert entries(tmp_path) == ["a"]


def test_a_symlink_under_the_final_name_is_replaced_not_followed(tmp_path):
    target = tmp_path / "target"
    target.write_bytes(b"keep me")
    link = tmp_path / "link"
    link.symlink_to(target)
    with atomic_write(link) as f:
        f.write(b"new")
    assert target.read_bytes() == b"keep me"
    assert not link.is_symlink() and link.read_bytes() == b"new"


def test_a_missing_directory_or_a_directory_name_fails_cleanly(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_write(tmp_path / "no" / "such") as f:
            f.write(b"x")
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        with atomic_write(tmp_path / "d") as f:
            f.write(b"x")
    assert entries(tmp_path) == ["d"]
    assert entries(tmp_path / "d") == []


def test_temp_names_are_unpredictable_and_never_reuse_an_existing_file(tmp_path, monkeypatch):
    tokens = iter(["aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr(atomic, "_token", lambda: next(tokens))
    (tmp_path / f".f.aaaa{atomic.TEMP_SUFFIX}").write_bytes(b"someone else's")
    with atomic_write(tmp_path / "f") as f:
        f.write(b"mine")
    assert (tmp_path / f".f.aaaa{atomic.TEMP_SUFFIX}").read_bytes() == b"someone else's"
    assert (tmp_path / "f").read_bytes() == b"mine"


def test_an_interrupted_process_leaves_the_old_file(tmp_path):
    """SIGINT in the middle of a write (KeyboardInterrupt in the child)."""
    path = tmp_path / "snap.htab"
    path.write_bytes(b"old")
    script = textwrap.dedent(
        f"""
        import sys, time
        from htabtool.atomic import atomic_write
        with atomic_write({str(path)!r}) as f:
            f.write(b"partial")
            f.flush()
            print("writing", flush=True)
            time.sleep(30)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"writing\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode != 0 and b"KeyboardInterrupt" in err
    assert path.read_bytes() == b"old"
    assert entries(tmp_path) == ["snap.htab"]
