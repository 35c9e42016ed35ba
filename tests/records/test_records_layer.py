"""The record layer as a package: its layering, the one pass rule, the
streaming decoder on the shared receive buffer."""

import ast
import pathlib

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import htabtool.records as records
from htabtool import sansio
from htabtool.records import (
    RecordDecoder,
    StaticTable,
    begins_pass,
    decode_batch,
    encode_pass,
    end_before,
    new_table,
    pass_bounds,
    pass_starts,
    wrap_starts,
)

PACKAGE = pathlib.Path(records.__file__).parent
#: what the record layer may import of htabtool (its __init__ says so)
ALLOWED = {"htabtool.hpte", "htabtool.sansio", "htabtool.errors"}
MODULES = ["format", "batch", "passes", "decode", "apply", "encode", "table"]


def _imports(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "htabtool":
                found |= {f"htabtool.{a.name}" for a in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m.startswith("htabtool")}


def test_the_record_layer_imports_only_hpte_sansio_errors_and_itself():
    for path in sorted(PACKAGE.glob("*.py")):
        outside = {m for m in _imports(path) if not m.startswith("htabtool.records")}
        assert outside <= ALLOWED, (path.name, outside - ALLOWED)


def _defined(path: pathlib.Path) -> list[str]:
    """The public names a module defines at its top level."""
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
    return [n for n in names if not n.startswith("_")]


def test_every_public_name_of_the_codec_modules_is_importable_from_the_package():
    for name in MODULES[:-1]:  # table's names are imported from htabtool.records.table
        module = getattr(records, name)
        names = _defined(PACKAGE / f"{name}.py")
        assert names, name
        for n in names:
            assert getattr(records, n) is getattr(module, n), (name, n)
            assert n in records.__all__, (name, n)


def test_the_sentinels_are_the_shared_ones():
    assert records.NEED_DATA is sansio.NEED_DATA
    assert records.END_OF_STREAM is sansio.END_OF_STREAM


def test_begins_pass_is_the_rule_on_ints_and_arrays():
    assert begins_pass(3, 4) and not begins_pass(4, 4) and not begins_pass(9, 4)
    got = begins_pass(np.array([0, 5, 2]), np.array([0, 4, 8]))
    assert got.tolist() == [False, False, True]


def test_wrap_starts_and_pass_starts_find_the_same_records():
    table = new_table(64)
    table[::3, 0] = 1  # every third entry valid: many short records
    batch, _ = decode_batch(encode_pass(StaticTable(table), "little") * 2, "little")
    half = len(batch) // 2
    assert pass_starts(batch, 0).tolist() == [half]  # the second copy starts again at 0
    assert wrap_starts(batch.index, batch.end, 0).tolist() == [half]
    assert pass_starts(batch, 1).tolist() == [0, half]  # 0 is below a previous end of 1
    assert end_before(batch, half, 0) == int(batch.end[half - 1]) == 64
    assert end_before(batch, 0, 17) == 17
    assert pass_bounds(batch.index, batch.end).tolist() == [0, half, len(batch)]
    assert pass_bounds(batch.index, batch.end, 1).tolist() == [0, 0, half, len(batch)]  # an empty first run


def _stream(n_entries: int = 256, step: int = 3) -> bytes:
    table = new_table(n_entries)
    table[::step, 0] = 1
    return encode_pass(StaticTable(table), "little")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=600), max_size=12))
def test_decoder_cut_anywhere_matches_one_decode(cuts):
    stream = _stream()
    whole, used = decode_batch(stream, "little")
    assert used == len(stream)
    dec = RecordDecoder("little", scan_bound=256)
    got = []
    offsets = []
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    for a, b in zip(bounds[:-1], bounds[1:]):
        before = dec.offset
        dec.receive_data(bytearray(stream[a:b]))  # not bytes: the buffer copies it
        batch = dec.next_batch()
        got.append(batch)
        offsets.append(dec.offset)
        assert dec.offset <= b  # only whole records are consumed
        if len(batch):  # a batch starts where the one before ended
            assert int(batch.offset[0]) == before and dec.offset == before + len(batch.raw)
    dec.receive_data(b"")
    got.append(dec.next_batch())
    assert dec.offset == len(stream) and dec.records == len(whole)
    assert offsets == sorted(offsets)
    assert np.concatenate([g.offset for g in got]).tolist() == whole.offset.tolist()
    assert np.concatenate([g.index for g in got]).tolist() == whole.index.tolist()
    assert b"".join(g.raw or b"" for g in got) == stream


def test_a_whole_bytes_buffer_is_kept_not_copied_and_a_bytearray_is_copied():
    stream = _stream()
    batch, _ = decode_batch(stream, "little")
    assert batch.raw is stream
    mutable = bytearray(stream)
    batch, _ = decode_batch(mutable, "little")
    mutable[:8] = b"\xff" * 8
    assert batch.raw == stream  # the batch's bytes do not change with the caller's buffer
    part, used = decode_batch(stream[:-4], "little")
    assert part.raw == stream[:used] and used < len(stream)
