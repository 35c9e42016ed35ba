"""WriterOptions: the snapshot writer's knobs as one value (issue #15)."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest

from htabtool.container import SnapshotHeader, SnapshotReader, SnapshotWriter, WriterOptions
from htabtool.errors import UsageError
from htabtool.records import StaticTable, iter_reads


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
