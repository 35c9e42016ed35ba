"""Shared test helpers: small synthetic tables and record streams."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fuzz"))
import corpus  # noqa: E402  (the fuzz corpus: tables and damaged files)

from htabtool.records import StaticTable, iter_reads


def synthetic(order=18, fill=0.3, seed=1):
    """An (N, 2) '>u8' table filled as a hash table fills: low slots of each
    group valid, 64K bolted entries in 1T segments and 4K user entries."""
    return corpus.table(order, fill, seed)


def raw_stream(table, byte_order="little", read=65536):
    return b"".join(r.data for r in iter_reads(StaticTable(table), read, byte_order))


@pytest.fixture
def table18():
    return synthetic()


def cli_run(*args, cwd):
    """The CLI through click's CliRunner, run in directory ``cwd``."""
    from click.testing import CliRunner

    from htabtool.cli import cli

    here = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, [str(a) for a in args])
    finally:
        os.chdir(here)
