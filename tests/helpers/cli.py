"""The CLI in this process, through click's CliRunner: the one wrapper the
tests use (click is imported when a test first runs a command)."""

from __future__ import annotations

import os


def cli_run(*args, cwd=None, input=None):
    """``htabtool ARGS...`` through click's CliRunner, in directory ``cwd``
    (default: where the test is), with ``input`` (bytes or str) on standard
    input; each argument is passed as ``str(arg)``."""
    from click.testing import CliRunner

    from htabtool.cli import cli

    here = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, [str(a) for a in args], input=input)
    finally:
        os.chdir(here)
