"""The man pages render without groff warnings and name every option."""

import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest

from htabtool.cli import COMMANDS, cli
from tests import helpers

MAN = helpers.MAN
PAGES = sorted(MAN.glob("*.[1-9]"))

needs_groff = pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")


def render(page: Path, device: str = "ascii") -> str:
    out = subprocess.run(["groff", "-man", f"-T{device}", "-ww", "-z" if device == "check" else "-P-c", str(page)],
                         capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stderr == "", f"{page.name}: {out.stderr}"
    return re.sub(r".\x08", "", out.stdout)


@needs_groff
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_renders_without_warnings(page):
    text = render(page, "utf8")
    assert "NAME" in text and "DESCRIPTION" in text


def _options(command: click.Command, ctx_name: str):
    for p in command.params:
        if isinstance(p, click.Option):
            for opt in p.opts + p.secondary_opts:
                if opt.startswith("--"):
                    yield opt


def _commands():
    for name in COMMANDS:
        ctx = click.Context(cli)
        cmd = cli.get_command(ctx, name)
        if cmd is None:
            continue
        if isinstance(cmd, click.Group):
            for sub in cmd.list_commands(ctx):
                yield name, f"{name} {sub}", cmd.get_command(ctx, sub)
        else:
            yield name, name, cmd


@needs_groff
@pytest.mark.parametrize("page_name,label,command", list(_commands()), ids=[c[1] for c in _commands()])
def test_every_option_is_in_its_page(page_name, label, command):
    page = MAN / f"htabtool-{page_name}.1"
    assert page.exists(), f"no man page for htabtool {page_name}"
    text = render(page)
    missing = [opt for opt in _options(command, label) if opt not in text]
    assert not missing, f"htabtool {label}: options missing from {page.name}: {missing}"
    if isinstance(command, click.Command) and label.count(" "):
        assert label.split()[1] in text


@needs_groff
def test_main_page_lists_every_command():
    text = render(MAN / "htabtool.1")
    # every command the CLI has (a COMMANDS entry is listed once its module exists)
    for name in cli.list_commands(click.Context(cli)):
        assert re.search(rf"^\s+{name}\b", text, re.M), name
