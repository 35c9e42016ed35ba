"""The fuzz harnesses run, find nothing on their seeds, and would report a
failure: a short run of each under atheris (skipped where atheris is not
installed) and under the random engine (always)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.fuzz import corpus, run
from tests.helpers import ENV, ROOT, deep_json, snapshot

HARNESSES = run.HARNESSES
needs_atheris = pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed")


@pytest.mark.parametrize("name", HARNESSES)
def test_every_seed_passes_its_harness(name):
    harness = run._harness(name)
    for data in corpus.seeds()[name].values():
        harness.one_input(data)
        for control in range(0, 256, 17):
            harness.one_input(bytes([control]) + data[1:])


@needs_atheris
@pytest.mark.parametrize("name", HARNESSES)
def test_a_short_atheris_run(name, tmp_path):
    done = subprocess.run([sys.executable, "-m", "tests.fuzz.run", "--engine", "atheris", "--seconds", "1",
                           "--work", str(tmp_path), name], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{name}: atheris, 1 s: nothing found" in done.stdout
    assert len(list((tmp_path / name / "corpus").iterdir())) >= len(corpus.seeds()[name])


def test_a_short_random_run(tmp_path, capsys):
    assert run.main(["--engine", "random", "--seconds", "0.3", "--seed", "1", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}: random engine" in out for name in HARNESSES)


def test_a_failure_is_caught_saved_and_reproducible(tmp_path, monkeypatch, capsys):
    """An exception that is not one of htabtool's own comes out of the
    harness, is saved as a crash file, and the run fails."""
    import htabtool.container

    def broken(self, data):
        raise IndexError("planted")

    monkeypatch.setattr(htabtool.container.ContainerParser, "receive_data", broken)
    assert run.main(["--engine", "random", "--seconds", "0.3", "--seed", "1", "--work", str(tmp_path),
                     "container"]) == 1
    out = capsys.readouterr().out
    assert "IndexError: planted" in out and "--reproduce container" in out
    crash = next((tmp_path / "container").glob("crash-*"))
    with pytest.raises(IndexError):
        run.reproduce("container", str(crash))


def test_an_own_error_is_not_a_failure(monkeypatch):
    import htabtool.container
    from htabtool.errors import ContainerError

    def refuses(self, data):
        raise ContainerError("refused")

    monkeypatch.setattr(htabtool.container.ContainerParser, "receive_data", refuses)
    run._harness("container").one_input(b"\x00" + snapshot(pieces=[]))


def test_the_container_harness_on_deeply_nested_metadata():
    run._harness("container").one_input(b"\x03" + deep_json())
