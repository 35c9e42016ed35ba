"""What the three sans-I/O parsers share: a receive buffer and sentinels.

The record decoder (:mod:`htabtool.records`), the snapshot parser
(:mod:`htabtool.container`) and the QEMU stream walker (:mod:`htabtool.qemu`)
are built as h11 builds its connection: bytes go in with ``receive_data``,
events come out of ``next_event``, and no parser touches a file.  They keep
their unconsumed input in one :class:`ReceiveBuffer` and answer with the same
two sentinels, :data:`NEED_DATA` and :data:`END_OF_STREAM`.

This module imports nothing of htabtool: every layer may use it.
"""

from __future__ import annotations

from collections import deque

__all__ = ["END_OF_STREAM", "NEED_DATA", "ReceiveBuffer", "Sentinel"]


class Sentinel:
    """A named singleton compared with ``is`` (``event is NEED_DATA``).

    Pickling and copying give back the same object, so a sentinel survives a
    trip through a queue or a process pool."""

    __slots__ = ("_name",)
    _name: str
    _registry: dict[str, Sentinel] = {}

    def __new__(cls, name: str) -> Sentinel:
        known = cls._registry.get(name)
        if known is not None:
            return known
        self = super().__new__(cls)
        self._name = name
        cls._registry[name] = self
        return self

    def __repr__(self) -> str:
        return self._name

    def __reduce__(self) -> tuple:
        return (Sentinel, (self._name,))

    def __copy__(self) -> Sentinel:
        return self

    def __deepcopy__(self, memo: dict) -> Sentinel:
        return self


#: next_event() found no whole unit in the buffer: feed more bytes
NEED_DATA = Sentinel("NEED_DATA")
#: next_event() after receive_data(b"") handed out everything
END_OF_STREAM = Sentinel("END_OF_STREAM")


class ReceiveBuffer:
    """The bytes a parser has received and not yet consumed.

    Input is kept as the pieces it came in (``bytes`` are kept as they are,
    other buffers copied once), so a frame that arrives whole is handed out
    as a view of the caller's own object, without a copy; a unit that spans
    pieces is joined once, when it is asked for.  :attr:`offset` is the
    stream offset of the first unconsumed byte, whatever has been dropped
    before it.

    :meth:`skip` drops bytes that may not have arrived yet: what arrives
    later is discarded until the count is spent, without entering the buffer
    (QEMU's RAM pages, which htabtool never needs).

    >>> buf = ReceiveBuffer()
    >>> buf.feed(b"abc"); buf.feed(b"def")
    >>> bytes(buf.peek(4)), buf.offset
    (b'abcd', 0)
    >>> buf.consume(4); len(buf), buf.offset
    (2, 4)
    """

    __slots__ = ("_parts", "_pos", "_size", "_offset", "_skip", "eof")

    def __init__(self) -> None:
        self._parts: deque[bytes] = deque()
        self._pos = 0  # consumed bytes of _parts[0]
        self._size = 0  # unconsumed bytes held
        self._offset = 0  # stream offset of the first unconsumed byte
        self._skip = 0  # bytes still to discard from what arrives
        #: set by the owner when the input has ended (``receive_data(b"")``)
        self.eof = False

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    @property
    def offset(self) -> int:
        """Stream offset of the first unconsumed byte."""
        return self._offset

    @property
    def skipping(self) -> int:
        """Bytes :meth:`skip` still has to discard from input to come."""
        return self._skip

    def feed(self, data) -> None:
        """Append received bytes (any buffer); skipped bytes are dropped here."""
        if type(data) is not bytes:
            data = bytes(data)
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            self._offset += n
            data = data[n:]
        if data:
            self._parts.append(data)
            self._size += len(data)

    def peek(self, n: int) -> memoryview | None:
        """The next ``n`` bytes as a read-only view, or None when fewer are
        held.  The view stays valid after :meth:`consume` (it is of an
        immutable ``bytes``)."""
        if self._size < n:
            return None
        if not n:
            return memoryview(b"")
        first = self._parts[0]
        if len(first) - self._pos < n:
            self._join(n)
            first = self._parts[0]
        return memoryview(first)[self._pos : self._pos + n]

    def view(self) -> memoryview:
        """Every unconsumed byte, as one read-only view (joined if needed)."""
        if not self._size:
            return memoryview(b"")
        return self.peek(self._size)  # type: ignore[return-value]

    def consume(self, n: int) -> None:
        """Drop the next ``n`` bytes, which must be held."""
        if n > self._size:
            raise ValueError(f"consume({n}) with {self._size} bytes held")
        self._pos += n
        self._size -= n
        self._offset += n
        parts = self._parts
        while parts and self._pos >= len(parts[0]):
            self._pos -= len(parts.popleft())

    def skip(self, n: int) -> None:
        """Drop the next ``n`` bytes, held or still to come."""
        held = min(n, self._size)
        self.consume(held)
        self._skip += n - held

    def _join(self, n: int) -> None:
        """Make the first ``n`` unconsumed bytes one piece (one copy)."""
        parts = self._parts
        first = parts.popleft()
        pieces = [memoryview(first)[self._pos :]]
        got = len(first) - self._pos
        while got < n:
            part = parts.popleft()
            pieces.append(memoryview(part))
            got += len(part)
        parts.appendleft(b"".join(pieces))
        self._pos = 0
