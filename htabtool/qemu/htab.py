"""The ``spapr/htab`` section's framing, and QEMU's parts as a snapshot keeps them.

As hw/ppc/spapr.c writes and reads it (version 1): the START payload is be32
htab_shift (-1 when the guest has no HPT: radix; htab_save_setup); a PART or
END payload is be32 0, then records (be32 index, be16 n_valid, be16
n_invalid, n_valid 16-byte entries; htab_save_chunk), then the all-zero
8-byte end marker.  htab_load allocates a zeroed table on the START and
applies the records of every PART/END in order: valid entries copied,
n_invalid slots zeroed; a record past the table is refused.

Here: the checks of those fields (:func:`check_start_shift`,
:func:`check_part_header`), the scan of a part's records over a buffer
(:func:`scan_records`), and :class:`QemuPart` with the optional snapshot
frame that lists the parts (:func:`parts_frames`,
:func:`parts_from_frames`).  Sans I/O: imports :mod:`htabtool.qemu.format`
and :mod:`htabtool.records` only.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from htabtool.qemu.format import (
    HTAB_RECORD_HEADER,
    HTAB_SHIFT_MAX,
    HTAB_SHIFT_MIN,
    NO_HPT,
    QEMU_VM_SECTION_END,
    QEMU_VM_SECTION_PART,
    htab_entries,
    stream_error,
)
from htabtool.records import HEADER_SIZE, MAX_INDEX_ORDER

__all__ = [
    "PARTS_FRAME_COUNT",
    "PARTS_FRAME_ENTRY",
    "PARTS_PER_FRAME",
    "PARTS_TAG",
    "QemuPart",
    "check_part_header",
    "check_start_shift",
    "parts_frames",
    "parts_from_frames",
    "scan_records",
]


def check_start_shift(shift: int, at: int) -> None:
    """The htab START's be32 htab_shift at stream offset ``at`` must be an
    architected HPT size whose entries a be32 index can address (-1, no HPT,
    is the walker's to refuse first); else a QemuStreamError naming ``at``."""
    if not HTAB_SHIFT_MIN <= shift <= HTAB_SHIFT_MAX:
        raise stream_error(
            f"htab_shift {shift} at offset {at:#x} is outside "
            f"{HTAB_SHIFT_MIN}..{HTAB_SHIFT_MAX} (the architected HPT sizes)",
            at,
        )
    if shift > MAX_INDEX_ORDER:
        # QEMU writes each record's index as a be32 (htab_save_first_pass:
        # qemu_put_be32(f, chunkstart)): past 2**32 entries it cannot say
        raise stream_error(
            f"htab_shift {shift} at offset {at:#x}: a table of {htab_entries(shift):,} entries, more "
            f"than the records' 32-bit index addresses (htab_shift {MAX_INDEX_ORDER} at most)",
            at,
        )


def check_part_header(word: int, at: int) -> None:
    """A PART/END payload's leading be32 (at ``at``) must be 0."""
    if word == NO_HPT:
        raise stream_error(f"htab part header -1 at offset {at:#x}: the guest uses the radix MMU, it has no HPT", at)
    if word != 0:
        raise stream_error(
            f"htab part at offset {at:#x} starts with {word:#x}: expected 0 (a nonzero header "
            "would make QEMU's htab_load reallocate the table)",
            at,
        )


def scan_records(buf, pos: int, shift: int, base: int) -> tuple[int, int, bool]:
    """Whole records of ``buf`` from ``pos`` (``base``: the stream offset of
    ``buf[0]``) in a table of htab_shift ``shift``: ``(end, count,
    marker)``, ``end`` one past the last whole record, ``marker`` when the
    end marker lies at ``end``.  A record past the table is refused as
    htab_load refuses it."""
    end = len(buf)
    limit = htab_entries(shift)
    count = 0
    while end - pos >= HEADER_SIZE:
        index, n_valid, n_invalid = HTAB_RECORD_HEADER.unpack_from(buf, pos)
        if not (index or n_valid or n_invalid):
            return pos, count, True
        if index + n_valid + n_invalid > limit:
            at = base + pos
            raise stream_error(
                f"htab record at offset {at:#x}: index {index} + n_valid {n_valid} + n_invalid "
                f"{n_invalid} runs past the table of {limit} entries (htab_shift {shift}); "
                "QEMU's htab_load refuses it",
                at,
            )
        nxt = pos + HEADER_SIZE + 16 * n_valid
        if nxt > end:
            break
        pos = nxt
        count += 1
    return pos, count, False


# -- QEMU's parts in a snapshot ---------------------------------------------------

@dataclass(frozen=True)
class QemuPart:
    """One htab PART/END payload of a QEMU stream, as a snapshot keeps it:
    its number (from 1), kind (PART, END; PART for bare payloads), the
    offset of its section header in the stream (of its be32 0 for bare
    payloads), its records, and where its records lie in the snapshot's
    record stream (``raw_offset``, ``raw_bytes``: the same sizes as in
    QEMU's stream, headers turned to the snapshot's byte order)."""

    part: int
    kind: str
    offset: int
    records: int
    raw_offset: int
    raw_bytes: int

    def passes(self, passes) -> list[int]:
        """The numbers of the passes (PassInfo: raw_offset, raw_size) whose
        records this part holds."""
        lo, hi = self.raw_offset, self.raw_offset + self.raw_bytes
        return [p.pass_number for p in passes if p.raw_size and p.raw_offset < hi and lo < p.raw_offset + p.raw_size]

    def to_dict(self) -> dict:
        return {"part": self.part, "kind": self.kind, "offset": self.offset, "records": self.records,
                "raw_offset": self.raw_offset, "raw_bytes": self.raw_bytes}


#: the optional snapshot frame (htabtool-snapshot(5)) that lists QEMU's
#: parts: a lower-case tag, so a reader that does not know it skips it
PARTS_TAG = b"qprt"
#: its body: u32 count, then per part: u32 part, u32 kind (QEMU's section
#: type: 2 PART, 3 END), u64 stream offset, u64 records, u64 raw offset,
#: u64 raw bytes (little-endian, as the container's own frames)
PARTS_FRAME_COUNT = struct.Struct("<I")
PARTS_FRAME_ENTRY = struct.Struct("<IIQQQQ")
_KIND_CODES = {"PART": QEMU_VM_SECTION_PART, "END": QEMU_VM_SECTION_END}
#: parts per frame: the body stays within the container's limit on optional frames (64 KiB)
PARTS_PER_FRAME = 1600


def parts_frames(parts) -> list[tuple[bytes, bytes]]:
    """(tag, body) of the frames listing ``parts`` (QemuPart), in order;
    none without parts."""
    frames = []
    for k in range(0, len(parts), PARTS_PER_FRAME):
        group = parts[k : k + PARTS_PER_FRAME]
        body = PARTS_FRAME_COUNT.pack(len(group)) + b"".join(
            PARTS_FRAME_ENTRY.pack(p.part, _KIND_CODES[p.kind], p.offset, p.records, p.raw_offset, p.raw_bytes)
            for p in group
        )
        frames.append((PARTS_TAG, body))
    return frames


def parts_from_frames(bodies: Iterable[bytes]) -> list[QemuPart]:
    """The parts the frames' bodies list (ContainerError-free: a body that
    does not parse is a QemuStreamError naming it)."""
    kinds = {code: kind for kind, code in _KIND_CODES.items()}
    parts = []
    for body in bodies:
        if len(body) < PARTS_FRAME_COUNT.size:
            raise stream_error(f"a {PARTS_TAG.decode()} frame of {len(body)} bytes lists no parts")
        (count,) = PARTS_FRAME_COUNT.unpack_from(body)
        if len(body) != PARTS_FRAME_COUNT.size + count * PARTS_FRAME_ENTRY.size:
            raise stream_error(f"a {PARTS_TAG.decode()} frame of {len(body)} bytes for {count} parts")
        for k in range(count):
            number, code, offset, recs, raw_offset, raw_bytes = PARTS_FRAME_ENTRY.unpack_from(
                body, PARTS_FRAME_COUNT.size + k * PARTS_FRAME_ENTRY.size
            )
            if code not in kinds:
                raise stream_error(f"a {PARTS_TAG.decode()} frame names part {number} of kind {code}")
            parts.append(QemuPart(number, kinds[code], offset, recs, raw_offset, raw_bytes))
    return parts
