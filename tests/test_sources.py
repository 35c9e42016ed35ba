"""The options made once at the edge (sources.VMReadOptions)."""

import dataclasses

import pytest

from htabtool.errors import UsageError
from htabtool.sources import VMReadOptions


def test_vm_read_options_from_keywords_and_replacing_fields():
    opts = VMReadOptions.of(passes=3, churn=10)
    assert (opts.passes, opts.churn, opts.pass_count, opts.live) == (3, 10, 3, True)
    assert VMReadOptions.of(opts) is opts
    until = VMReadOptions.of(opts, until_dirty=5)
    assert (until.passes, until.until_dirty, until.pass_count) == (3, 5, 30)
    assert not VMReadOptions().live
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.passes = 4  # type: ignore[misc]
    with pytest.raises(TypeError, match="threads"):
        VMReadOptions.of(threads=2)


@pytest.mark.parametrize("field", ["start_index", "buffer_size", "passes", "churn", "max_passes", "until_dirty"])
def test_vm_read_options_refuse_negative_counts_naming_the_parameter(field):
    with pytest.raises(UsageError) as refused:
        VMReadOptions(**{field: -1})
    assert refused.value.param == field


def test_vm_read_options_check_the_byte_order():
    with pytest.raises(UsageError):
        VMReadOptions(byte_order="middle")


@pytest.mark.parametrize("byte_order", ["little", "big"])
def test_a_snapshot_files_batches_are_its_pieces_decoded_pass_by_pass(tmp_path, byte_order):
    """SnapshotFile.batches decodes on the reader's threads; what it gives
    is what decoding each pass's pieces as one stream gives: the same
    records, numbered and placed within their pass, with the same entries,
    for every pass and for one pass asked alone."""
    import numpy as np

    from htabtool.records import decode_pieces
    from htabtool.sources import open_snapshot
    from tests.helpers import synthetic_table
    from tests.helpers.snapshots import write_snapshot

    a = synthetic_table(22, 0.5, 7)
    b = a.copy()
    b[::97] = 0
    changed = np.zeros(len(a), bool)
    changed[::97] = True
    path = write_snapshot(tmp_path / "s.htab", [(a, None), (b, changed), (a, changed)], order=22,
                          byte_order=byte_order, read=1 << 16)
    with open_snapshot(str(path)) as snap:
        assert len(snap.trailer().chunks) > 3
        for passes in (None, lambda p: p == 2, lambda p: p != 1):
            fast = list(snap.batches(passes))
            slow = [(n, x) for n, x in decode_pieces(snap.pieces(passes), byte_order, snap.entries) if len(x)]
            assert [n for n, _ in fast] == [n for n, _ in slow]
            for (_, x), (_, y) in zip(fast, slow):
                assert x.first_record == y.first_record
                for name in ("offset", "index", "n_valid", "n_invalid", "entries"):
                    assert np.array_equal(getattr(x, name), getattr(y, name)), name
