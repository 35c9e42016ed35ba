"""``htabtool --help`` answered before click is imported (htabtool.quickhelp)."""

import os
import subprocess
import sys

import pytest

from htabtool import quickhelp

CLICK_PATH = [sys.executable, "-c", "import sys; from htabtool.cli import main; main(sys.argv[1:])"]
FAST_PATH = [sys.executable, "-m", "htabtool"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env.update(extra)
    return env


def test_the_prebuilt_help_is_what_click_renders_now():
    """Stale after a change to the commands or their help: regenerate it with
    python -m htabtool.quickhelp --write."""
    assert quickhelp.TOP_HELP == quickhelp.render()


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("columns", [None, "80", "200"])
def test_the_fast_answer_is_clicks_byte_for_byte_and_imports_no_click(flag, columns):
    env = _env(**({"COLUMNS": columns} if columns else {}))
    fast = subprocess.run(FAST_PATH + [flag], capture_output=True, env=env)
    slow = subprocess.run(CLICK_PATH + [flag], capture_output=True, env=env)
    assert (fast.returncode, fast.stdout, fast.stderr) == (slow.returncode, slow.stdout, slow.stderr) == (
        0, quickhelp.TOP_HELP.encode(), b"")
    timed = subprocess.run([sys.executable, "-X", "importtime", "-m", "htabtool", flag], capture_output=True, env=env)
    imported = {line.rsplit("|", 1)[-1].strip() for line in timed.stderr.decode().splitlines()}
    assert "click" not in imported and "htabtool.cli" not in imported and "htabtool.quickhelp" in imported


def test_a_narrower_width_or_more_arguments_go_through_click():
    narrow = subprocess.run(FAST_PATH + ["--help"], capture_output=True, env=_env(COLUMNS="60"))
    slow = subprocess.run(CLICK_PATH + ["--help"], capture_output=True, env=_env(COLUMNS="60"))
    assert narrow.returncode == 0 and narrow.stdout == slow.stdout != quickhelp.TOP_HELP.encode()
    assert not quickhelp.answer(["--help", "--debug"]) and not quickhelp.answer(["stat", "--help"])
    assert not quickhelp.answer([])


@pytest.mark.parametrize("output", ["closed", "broken"])
def test_a_closed_or_broken_output_is_answered_as_click_answers_it(output):
    """The fast path gives up on a failed write and click answers: exit 2
    and one line for a closed standard output, 141 for a broken pipe."""
    got = []
    for cmd in (FAST_PATH, CLICK_PATH):
        if output == "closed":
            r = subprocess.run(cmd + ["--help"], stderr=subprocess.PIPE, env=_env(),
                               preexec_fn=lambda: os.close(1))
            got.append((r.returncode, r.stderr))
        else:
            p = subprocess.Popen(cmd + ["--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
            p.stdout.close()
            got.append((p.wait(), p.stderr.read()))
            p.stderr.close()
    assert got[0] == got[1]
    assert got[0] == ((2, b"htabtool: error: standard output is closed\n") if output == "closed" else (141, b""))
