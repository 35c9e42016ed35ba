"""The container package: its layering, its named layouts, WriterOptions (the writer's knobs as one value)."""

from __future__ import annotations

import ast
import dataclasses
import io
import struct
from pathlib import Path

import numpy as np
import pytest

from htabtool import container
from htabtool.container import SnapshotHeader, SnapshotReader, SnapshotWriter, WriterOptions
from htabtool.errors import UsageError
from htabtool.records import StaticTable, iter_reads
from tests.helpers.paths import MAN


def _pieces(order: int = 16) -> list[bytes]:
    n = 1 << (order - 4)
    table = np.zeros((n, 2), dtype=">u8")
    table[::3, 0] = (np.arange(0, n, 3, dtype=np.uint64) << np.uint64(7)) | np.uint64(1)
    table[::3, 1] = np.arange(0, n, 3, dtype=np.uint64) << np.uint64(12)
    return [r.data for r in iter_reads(StaticTable(table), 4096, "little")]


def _write(**kw) -> tuple[bytes, SnapshotWriter]:
    header = SnapshotHeader(byte_order="little", order=16, created="2026-01-01T00:00:00Z", tool_version="t")
    out = io.BytesIO()
    with SnapshotWriter(out, header, **kw) as writer:
        for piece in _pieces():
            writer.write_records(piece, 1)
    return out.getvalue(), writer


def test_options_and_keyword_arguments_write_the_same_bytes():
    by_options, w1 = _write(options=WriterOptions(level=3, threads=0, chunk_size=8192))
    by_keywords, w2 = _write(level=3, threads=0, chunk_size=8192)
    assert by_options == by_keywords
    assert (w1.level, w1.threads, w1.chunk_size) == (3, 0, 8192)
    assert w2.options == WriterOptions(level=3, threads=0, chunk_size=8192)
    assert len(SnapshotReader(io.BytesIO(by_options)).read_trailer().chunks) > 1  # 8 KiB chunks were cut


def test_keyword_arguments_override_the_options():
    _, writer = _write(options=WriterOptions(level=5, threads=0), chunk_size=4096)
    assert writer.options == WriterOptions(level=5, threads=0, chunk_size=4096)


def test_the_defaults_are_the_writers():
    _, writer = _write()
    assert writer.options == WriterOptions()


def test_options_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        WriterOptions().level = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"level": 23}, "compression level 23 is outside"),
        ({"threads": -1}, "threads -1 is outside 0..64"),
        ({"chunk_size": 0}, "chunk size 0 is outside 1.."),
        ({"level": None}, "compression level None is outside"),
    ],
)
def test_bad_options_are_refused_with_the_same_message_either_way(kw, message):
    with pytest.raises(UsageError, match=message):
        WriterOptions(**kw)
    with pytest.raises(UsageError, match=message):
        SnapshotWriter(io.BytesIO(), SnapshotHeader(byte_order="little", order=16), **kw)


# -- layering and the named layouts -------------------------------------------------------

PACKAGE = Path(container.__file__).parent
LOWER = ("htabtool.container", "htabtool.hpte", "htabtool.records", "htabtool.sansio", "htabtool.errors",
         "htabtool.atomic")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "htabtool":
            names.update(f"htabtool.{a.name}" for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", sorted(p.name for p in PACKAGE.glob("*.py")))
def test_the_container_imports_only_the_layers_below_it(module):
    ours = {n for n in _imports(PACKAGE / module) if n.startswith("htabtool.")}
    assert all(n.startswith(LOWER) or n == "htabtool.__version__" for n in ours), ours


def test_the_parser_does_no_io():
    assert not _imports(PACKAGE / "parser.py") & {"io", "os", "builtins", "htabtool.atomic"}
    assert "open(" not in (PACKAGE / "parser.py").read_text()


def test_the_named_layouts_have_the_man_pages_sizes_and_fields():
    from htabtool.container import format as F

    page = (MAN / "htabtool-snapshot.5").read_text()
    sizes = {"HEADER": 48, "DESCRIPTOR": 64, "CHUNK_ENTRY": 72, "PASS_END": 52, "TRAILER": 56,
             "ENVELOPE": 8, "SEEK_TABLE_ENTRY": 8, "SEEK_TABLE_FOOTER": 9}
    for name, size in sizes.items():
        layout, fields = getattr(F, name), getattr(F, name + "_FIELDS")
        assert isinstance(layout, struct.Struct) and layout.size == size, name
        assert len(fields) == len(layout.unpack(bytes(size))), name
        for field_name in fields:
            assert field_name in page, (name, field_name)


def test_every_public_name_is_there_from_the_package():
    for name in container.__all__:
        assert getattr(container, name) is not None
    assert container.SnapshotWriter.__module__ == "htabtool.container.writer"
    assert container.ContainerParser.__module__ == "htabtool.container.parser"
