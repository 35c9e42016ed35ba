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


def test_worked_batches_run_the_work_on_the_readers_threads_with_each_batch(tmp_path):
    """worked_batches gives each batch with what ``work`` made of it, made
    on the reader's threads (not the caller's) from the batch as decoded
    there: the same records, numbered in the whole stream."""
    import threading

    import numpy as np

    from htabtool.sources import open_snapshot
    from tests.helpers import synthetic_table
    from tests.helpers.snapshots import write_snapshot

    a = synthetic_table(22, 0.5, 8)
    b = a.copy()
    b[::50] = 0
    changed = np.zeros(len(a), bool)
    changed[::50] = True
    path = write_snapshot(tmp_path / "w.htab", [(a, None), (b, changed)], order=22, read=1 << 16)
    main = threading.get_ident()

    def work(batch):
        return threading.get_ident(), batch.first_record, batch.index.copy()

    with open_snapshot(str(path)) as snap:
        got = list(snap.worked_batches(work))
        plain = list(snap.batches())
        starts = {c.pass_number: c.first_record for c in reversed(snap.trailer().chunks)}
    assert len(got) == len(plain) > 2 and {n for n, _, _ in got} == {1, 2}
    for (n, batch, (thread, first, index)), (m, same) in zip(got, plain):
        assert n == m and thread != main
        assert np.array_equal(index, batch.index) and np.array_equal(batch.index, same.index)
        assert first == batch.first_record + starts[n]  # the work saw the stream's numbering
    # one pass asked alone: its chunks are read through the index, decoded and
    # worked on once, here, from the same batch as decoded (the stream's numbering)
    with open_snapshot(str(path)) as snap:
        alone = list(snap.worked_batches(work, lambda p: p == 2))
    assert [n for n, _, _ in alone] == [n for n, _, _ in got if n == 2]
    for (_, batch, (thread, first, index)), (_, same, _) in zip(alone, [g for g in got if g[0] == 2]):
        assert thread == main and first == batch.first_record + starts[2]
        assert np.array_equal(index, same.index)
