"""The receive buffer and sentinels the three sans-I/O parsers share."""

import copy
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from htabtool.sansio import END_OF_STREAM, NEED_DATA, ReceiveBuffer, Sentinel


def test_sentinels_are_singletons_through_pickle_and_copy():
    assert pickle.loads(pickle.dumps(NEED_DATA)) is NEED_DATA
    assert copy.deepcopy(END_OF_STREAM) is END_OF_STREAM
    assert Sentinel("NEED_DATA") is NEED_DATA
    assert NEED_DATA is not END_OF_STREAM
    assert repr(NEED_DATA) == "NEED_DATA"


def test_a_piece_that_arrives_whole_is_not_copied():
    data = b"x" * 100
    buf = ReceiveBuffer()
    buf.feed(data)
    view = buf.peek(100)
    assert view.obj is data


def test_peek_across_pieces_and_offsets():
    buf = ReceiveBuffer()
    buf.feed(b"ab")
    assert buf.peek(3) is None
    buf.feed(bytearray(b"cd"))
    assert bytes(buf.peek(3)) == b"abc"
    buf.consume(3)
    assert (len(buf), buf.offset, bytes(buf.view())) == (1, 3, b"d")
    with pytest.raises(ValueError):
        buf.consume(2)


def test_skip_drops_bytes_still_to_come():
    buf = ReceiveBuffer()
    buf.feed(b"0123")
    buf.skip(10)  # 4 held, 6 to come
    assert (len(buf), buf.offset, buf.skipping) == (0, 4, 6)
    buf.feed(b"456")
    assert (len(buf), buf.offset, buf.skipping) == (0, 7, 3)
    buf.feed(b"789ABC")
    assert (bytes(buf.view()), buf.offset, buf.skipping) == (b"ABC", 10, 0)


@given(st.lists(st.binary(max_size=40), max_size=12), st.lists(st.integers(0, 50), max_size=12))
def test_matches_a_plain_bytearray(pieces, steps):
    buf, model, base = ReceiveBuffer(), bytearray(), 0
    for piece in pieces:
        buf.feed(piece)
        model += piece
    for n in steps:
        view = buf.peek(n)
        if n > len(model):
            assert view is None
            continue
        assert bytes(view) == bytes(model[:n])
        buf.consume(n)
        del model[:n]
        base += n
        assert (len(buf), buf.offset) == (len(model), base)
    assert bytes(buf.view()) == bytes(model)
