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
