"""Fixtures shared by the whole suite; what the tests share besides
fixtures (tables, streams, snapshots, CLI runs) is in tests.helpers."""

import pytest

from tests.helpers import synthetic_table


@pytest.fixture
def table18():
    """An order-18 table (16,384 entries), about 30 % valid."""
    return synthetic_table(18, 0.3, 1)
