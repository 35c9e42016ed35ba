"""What a snapshot says: its header, chunks, passes and trailer, as values.

No bytes here: :mod:`htabtool.container.format` has the layouts these are
read from and written to.  Imports the record layer (the indexable table
orders), the errors and the format's numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone

from htabtool.container.format import BYTE_ORDER_CODES, FORMAT_VERSION, MAX_CHUNK_LIMIT, MAX_ORDER, MIN_ORDER
from htabtool.errors import UsageError
from htabtool.hpte import table_entries
from htabtool.records import check_indexable_order

__all__ = ["JSON_KEYS", "ChunkInfo", "PassInfo", "SnapshotHeader", "SnapshotTrailer"]


def _now() -> str:
    """Now, to the second, UTC; or the time SOURCE_DATE_EPOCH gives (the
    reproducible-builds convention), so that the same records make the same
    snapshot bytes whenever they are written."""
    fixed = os.environ.get("SOURCE_DATE_EPOCH", "")
    if fixed.isdigit():
        when = datetime.fromtimestamp(int(fixed), timezone.utc)
    else:
        when = datetime.now(timezone.utc)
    return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _tool_version() -> str:
    from htabtool import __version__

    return __version__


#: the keys of the header's JSON object that the format defines (the others are ``extra``)
JSON_KEYS = ("source", "created", "tool_version")


@dataclass(frozen=True)
class SnapshotHeader:
    """The header: what table the records describe and where they came from.

    ``order`` is log2 of the table's size in bytes (entries = 2**(order-4));
    ``entries`` defaults to that.  ``source`` is a JSON-able dict with at
    least ``kind`` ("vm", "raw", "qemu", "kvm") and any details (image, seed,
    file name, ...).  ``created`` defaults to now (UTC, ISO 8601) and
    ``tool_version`` to htabtool's.  ``extra`` holds optional fields this
    version does not know (kept on reading, written back as top-level JSON
    keys).  ``chunk_limit`` is filled in by the writer (0 = not yet);
    ``required_features`` / ``optional_features`` are the feature bits
    (version 1 defines none)."""

    byte_order: str
    order: int
    entries: int = None  # type: ignore[assignment]  # None: derived from order; an int once made
    bolted_only: bool = False
    start_index: int = 0
    source: dict = field(default_factory=lambda: {"kind": "raw"})
    created: str | None = None
    tool_version: str | None = None
    extra: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    chunk_limit: int = 0
    required_features: int = 0
    optional_features: int = 0

    def __post_init__(self):
        set_ = object.__setattr__
        if self.byte_order not in BYTE_ORDER_CODES:
            raise UsageError(f"byte order must be 'little' or 'big', not {self.byte_order!r}")
        if not isinstance(self.order, int) or not MIN_ORDER <= self.order <= MAX_ORDER:
            raise UsageError(f"table order {self.order!r} is outside {MIN_ORDER}..{MAX_ORDER}")
        check_indexable_order(self.order)
        derived = table_entries(self.order)
        if self.entries is None:
            set_(self, "entries", derived)
        elif self.entries != derived:
            raise UsageError(f"{self.entries} entries do not match order {self.order} ({derived} entries)")
        if not 0 <= self.start_index < self.entries:
            raise UsageError(f"start index {self.start_index} is outside the table of {self.entries} entries")
        if not isinstance(self.source, dict) or not isinstance(self.source.get("kind"), str):
            raise UsageError("source must be a dict with a string 'kind'")
        if self.created is None:
            set_(self, "created", _now())
        if self.tool_version is None:
            set_(self, "tool_version", _tool_version())
        if not isinstance(self.created, str) or not isinstance(self.tool_version, str):
            raise UsageError("created and tool_version must be strings")
        if not isinstance(self.extra, dict) or any(k in JSON_KEYS for k in self.extra):
            raise UsageError(f"extra must be a dict without the keys {', '.join(JSON_KEYS)}")
        if not 0 <= self.chunk_limit <= MAX_CHUNK_LIMIT:
            raise UsageError(f"chunk limit {self.chunk_limit} is outside 0..{MAX_CHUNK_LIMIT}")
        set_(self, "bolted_only", bool(self.bolted_only))

    def metadata(self) -> dict:
        """The JSON object of the header frame."""
        return {**self.extra, "source": self.source, "created": self.created, "tool_version": self.tool_version}

    def to_dict(self) -> dict:
        """Every field, for people and for --json."""
        return {
            "format_version": self.format_version,
            "byte_order": self.byte_order,
            "order": self.order,
            "entries": self.entries,
            "bolted_only": self.bolted_only,
            "start_index": self.start_index,
            "chunk_limit": self.chunk_limit,
            "required_features": self.required_features,
            "optional_features": self.optional_features,
            **self.metadata(),
        }


@dataclass(frozen=True)
class ChunkInfo:
    """One chunk: where its zstd frame is and what its records hold.

    ``offset`` is the file offset of the zstd frame (its descriptor frame is
    just before it); ``raw_offset`` the offset of its content in the record
    stream; ``first_index``..``end_index`` the table slots its records touch
    (lowest index, highest index + n_valid + n_invalid); ``valid`` and
    ``invalid`` the sums of n_valid and n_invalid; ``crc32`` the CRC-32 of
    the compressed frame.  ``first_record`` (the number of the chunk's first
    record in the stream) is derived, not stored."""

    number: int
    pass_number: int
    offset: int
    compressed_size: int
    raw_offset: int
    raw_size: int
    records: int
    first_index: int
    end_index: int
    valid: int
    invalid: int
    crc32: int
    first_record: int = 0

    def _fields(self) -> tuple:
        return (
            self.number,
            self.pass_number,
            self.raw_offset,
            self.compressed_size,
            self.raw_size,
            self.crc32,
            self.records,
            self.first_index,
            self.end_index,
            self.valid,
            self.invalid,
        )

    def to_dict(self) -> dict:
        return {
            "chunk": self.number,
            "pass": self.pass_number,
            "offset": self.offset,
            "compressed_size": self.compressed_size,
            "raw_offset": self.raw_offset,
            "raw_size": self.raw_size,
            "records": self.records,
            "first_index": self.first_index,
            "end_index": self.end_index,
            "valid": self.valid,
            "invalid": self.invalid,
            "crc32": f"{self.crc32:08x}",
        }


@dataclass(frozen=True)
class PassInfo:
    """One pass and its totals (htabtool numbers the first pass 1, then each
    incremental pass 2, 3, ...; the format only asks that numbers grow)."""

    pass_number: int
    first_chunk: int
    chunks: int
    raw_offset: int
    raw_size: int
    records: int
    valid: int
    invalid: int

    def _fields(self) -> tuple:
        return (
            self.pass_number,
            self.first_chunk,
            self.chunks,
            self.raw_offset,
            self.raw_size,
            self.records,
            self.valid,
            self.invalid,
        )

    def to_dict(self) -> dict:
        return {
            "pass": self.pass_number,
            "first_chunk": self.first_chunk,
            "chunks": self.chunks,
            "raw_offset": self.raw_offset,
            "raw_size": self.raw_size,
            "records": self.records,
            "valid": self.valid,
            "invalid": self.invalid,
        }


@dataclass(frozen=True)
class SnapshotTrailer:
    """The trailer: the chunk index, the passes and the file totals."""

    chunks: tuple
    passes: tuple
    records: int
    raw_size: int
    valid: int
    invalid: int
    offset: int  # file offset of the trailer frame
    file_size: int  # the whole container, seek table included

    @property
    def compressed_size(self) -> int:
        """Bytes of the chunks' zstd frames."""
        return sum(c.compressed_size for c in self.chunks)

    def to_dict(self) -> dict:
        return {
            "chunks": len(self.chunks),
            "passes": len(self.passes),
            "records": self.records,
            "raw_size": self.raw_size,
            "compressed_size": self.compressed_size,
            "file_size": self.file_size,
            "valid": self.valid,
            "invalid": self.invalid,
            "per_pass": [p.to_dict() for p in self.passes],
        }
