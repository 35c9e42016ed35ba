"""The console script's own start (htabtool.__main__): which commands ask
glibc's malloc to keep freed memory, and that asking works here."""

import subprocess
import sys

import pytest

from htabtool import __main__ as entry


@pytest.mark.parametrize("argv,moves", [
    (["verify", "a.htab"], True),
    (["--debug", "stat", "a.htab"], True),
    (["vm", "create", "a.img"], True),
    (["vm", "run", "a.img"], True),
    (["vm", "info", "a.img"], False),
    (["--help"], False),
    (["--version"], False),
    ([], False),
])
def test_only_the_commands_that_move_tables_tune_malloc(argv, moves):
    assert entry._moves_tables(argv) is moves


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keeping_freed_memory_is_accepted_by_glibc_and_a_table_command_runs_with_it(tmp_path):
    """In a process of its own (mallopt changes the process): glibc takes
    both settings (mallopt returns 1), and a command that moves tables runs
    after them as always."""
    code = "from htabtool import __main__ as m; print(m._keep_freed_memory())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr
    r = subprocess.run([sys.executable, "-m", "htabtool", "vm", "create", str(tmp_path / "a.img"), "--order", "18"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "htabtool", "dump", "--vm", str(tmp_path / "a.img"),
                        "-o", str(tmp_path / "a.htab")], capture_output=True, text=True)
    assert r.returncode == 0 and (tmp_path / "a.htab").stat().st_size > 0, r.stderr


def test_the_commands_said_to_move_tables_are_the_cli_s():
    """TABLE_COMMANDS names commands of htabtool.cli (it cannot import the
    CLI's table: click would come with it); a rename there shows here."""
    from htabtool.cli import COMMANDS
    from htabtool.cli.vm import vm

    for name in entry.TABLE_COMMANDS:
        group, _, sub = name.partition(" ")
        assert group in COMMANDS, name
        if sub:
            assert sub in vm.commands and group == "vm", name
