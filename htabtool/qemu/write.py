"""Writing QEMU streams: ``spapr/htab`` section payloads, and a migration
stream spliced with a snapshot's htab.

:func:`write_section` writes the payloads as QEMU's htab_save_* functions
do (hw/ppc/spapr.c); :func:`splice` copies a migration stream, walked by
:class:`~htabtool.qemu.walker.MigrationWalker`, with its htab parts
replaced.  Files at the edge: with :mod:`htabtool.qemu.source`, the only
module of the package that imports :mod:`htabtool.sources`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import groupby
from typing import BinaryIO

from htabtool.errors import TruncatedStream, UsageError
from htabtool.qemu.format import (
    BE32,
    HTAB_END_MARKER,
    HTAB_SECTION,
    HTAB_SHIFT_MAX,
    HTAB_SHIFT_MIN,
    NO_HPT,
    QEMU_VM_SECTION_FOOTER,
    QEMU_VM_SECTION_PART,
    htab_entries,
    stream_error,
)
from htabtool.qemu.walker import (
    END_OF_STREAM,
    NEED_DATA,
    DeviceState,
    HtabStart,
    MigrationWalker,
    SectionBegin,
    SectionEnd,
    VmEof,
)
from htabtool.records import HEADER_SIZE, RecordBatch, check_byte_order, check_indexable_order, decode_batch
from htabtool.sources import DEFAULT_READ_SIZE

__all__ = ["SectionStats", "SpliceStats", "splice", "write_section"]


@dataclass
class SectionStats:
    """What :func:`write_section` or :func:`splice` wrote of the htab."""

    shift: int
    parts: int = 0
    records: int = 0
    valid_entries: int = 0
    invalid_entries: int = 0
    nbytes: int = 0


@dataclass
class SpliceStats:
    """What :func:`splice` did to the migration stream."""

    htab: SectionStats
    input_bytes: int = 0
    output_bytes: int = 0
    dropped_parts: int = 0  # QEMU's htab PART sections left out
    added_parts: int = 0  # htab PART sections written for the snapshot's passes but the last
    replaced_end_offset: int = 0  # where the htab END section stands
    device_state_offset: int = 0


def _check_shift(shift: int) -> int:
    if shift == -1 or shift == NO_HPT:
        raise UsageError("htab_shift -1 means no HPT: there is nothing to write")
    if not HTAB_SHIFT_MIN <= shift <= HTAB_SHIFT_MAX:
        raise UsageError(
            f"htab_shift {shift} is outside {HTAB_SHIFT_MIN}..{HTAB_SHIFT_MAX} (the architected HPT sizes)"
        )
    return check_indexable_order(shift, "htab_shift")


def _qemu_records(data: bytes, byte_order: str, n_entries: int, pass_number: int, stats: SectionStats) -> bytes:
    """Whole records in ``byte_order`` -> QEMU's big-endian records, checked
    as the kernel's write side would (RecordError); empty records are left
    out (index 0 with no entries would be QEMU's end marker)."""
    batch, used = decode_batch(data, byte_order, n_entries=n_entries)
    if used != len(data):
        raise TruncatedStream(
            f"a piece of pass {pass_number} ends inside a record: {len(data) - used} bytes left over",
            offset=used,
        )
    empty = (batch.n_valid == 0) & (batch.n_invalid == 0)
    if empty.any():
        keep = ~empty
        batch = RecordBatch(
            batch.offset[keep], batch.index[keep], batch.n_valid[keep], batch.n_invalid[keep], batch.entries
        )
        data = batch.to_bytes("big")
    elif byte_order != "big":
        data = batch.to_bytes("big")
    stats.records += len(batch)
    stats.valid_entries += int(batch.n_valid.sum())
    stats.invalid_entries += int(batch.n_invalid.sum())
    return bytes(data)


def _write_part(write: Callable[[bytes], object], chunks: Iterable[bytes], stats: SectionStats) -> None:
    """One PART/END payload: the iteration header (be32 0), the records,
    the end marker."""
    write(bytes(4))
    stats.nbytes += 4
    for chunk in chunks:
        write(chunk)
        stats.nbytes += len(chunk)
    write(HTAB_END_MARKER)
    stats.nbytes += HEADER_SIZE
    stats.parts += 1


def write_section(
    pieces: Iterable[tuple[int, bytes]], shift: int, out: BinaryIO, *, byte_order: str = "big"
) -> SectionStats:
    """The ``spapr/htab`` payloads as QEMU writes them, to ``out``: the
    START payload (be32 ``shift``), then one PART/END payload per pass of
    ``pieces`` (consecutive pieces of one pass make one part): be32 0, the
    records (big-endian), the end marker.  No pieces: one empty part.
    ``byte_order``: the header order of the pieces (big: QEMU's own)."""
    check_byte_order(byte_order)
    _check_shift(shift)
    stats = SectionStats(shift)
    n_entries = htab_entries(shift)
    out.write(BE32.pack(shift))
    stats.nbytes += 4
    for pass_number, group in groupby(pieces, key=lambda piece: piece[0]):
        chunks = (_qemu_records(data, byte_order, n_entries, pass_number, stats) for _, data in group)
        _write_part(out.write, chunks, stats)
    if not stats.parts:
        _write_part(out.write, (), stats)
    return stats


def splice(
    mig_in: BinaryIO,
    shift: int,
    pieces: Iterable[tuple[int, bytes]],
    out: BinaryIO,
    *,
    byte_order: str = "big",
    passes: int | None = None,
    read_size: int = DEFAULT_READ_SIZE,
) -> SpliceStats:
    """Copy the migration stream ``mig_in`` to ``out`` with its htab
    replaced by ``pieces``: one htab part per pass of the snapshot.

    Every byte is copied as it is except the htab's PART and END sections.
    QEMU's PART sections (header, payload, footer) are left out; the
    snapshot's passes but the last become PART sections of their own right
    after the htab START section (where the iterative phase begins: before
    any RAM part and before any QEMU_VM_COMMAND, which stay where QEMU put
    them), and the last pass is the payload of QEMU's END section, which
    keeps its header and footer and its place.  QEMU's htab_load applies
    the records of every part in order onto the zeroed table its START
    allocated, as passes apply: the result is the snapshot's final table.
    One part per pass, not QEMU's own part sizes: QEMU cuts its parts by
    time and bandwidth (MAX_ITERATION_NS, the rate limit), which mean
    nothing to the loader, while a part per pass keeps the snapshot's
    sweeps apart in the new stream, and a one-pass snapshot of a stream
    whose htab was one END gives that stream back byte for byte.

    ``passes``: how many passes ``pieces`` holds records of (a snapshot's
    trailer knows it); without it ``pieces`` is gathered in memory first to
    count them.  The htab START must give ``shift`` (QEMU would size the
    table from it).  RAM pages pass through in blocks of ``read_size`` and
    are never held."""
    check_byte_order(byte_order)
    _check_shift(shift)
    if passes is None:
        pieces = list(pieces)
        passes = len({number for number, _ in pieces})
    stats = SpliceStats(SectionStats(shift))
    n_entries = htab_entries(shift)
    groups = groupby(pieces, key=lambda piece: piece[0])
    walker = MigrationWalker()
    pending = bytearray()  # input bytes from pending_base on, not yet decided
    pending_base = 0
    dropping = False  # inside an htab PART/END section: its bytes are not copied
    written = 0

    def emit(data) -> None:
        nonlocal written
        out.write(data)
        written += len(data)

    def flush(upto: int) -> None:
        nonlocal pending_base
        n = upto - pending_base
        if n > 0:
            if not dropping:
                emit(pending[:n])
            del pending[:n]
            pending_base = upto

    def next_pass():
        group = next(groups, None)
        if group is None:
            return ()
        number, chunks = group
        return (_qemu_records(data, byte_order, n_entries, number, stats.htab) for _, data in chunks)

    while True:
        event = walker.next_event()
        if event is NEED_DATA:
            flush(walker.offset)
            block = mig_in.read(read_size)
            stats.input_bytes += len(block)
            pending += block
            walker.receive_data(block)
            continue
        if event is END_OF_STREAM:
            break
        if isinstance(event, HtabStart) and event.shift != shift:
            raise stream_error(
                f"the htab START at offset {event.offset:#x} gives htab_shift {event.shift}, the snapshot's table "
                f"has {shift}: QEMU would size the table from the stream and the guest's hash would not match",
                event.offset,
            )
        if isinstance(event, SectionBegin) and event.name == HTAB_SECTION and event.kind in ("PART", "END"):
            flush(event.offset)
            dropping = True
            if event.kind == "PART":
                stats.dropped_parts += 1
            else:
                stats.replaced_end_offset = event.offset
                emit(pending[: event.payload_offset - pending_base])
                _write_part(emit, next_pass(), stats.htab)
                if next(groups, None) is not None:
                    raise UsageError(f"the pieces hold records of more than the {passes} passes announced")
        elif isinstance(event, SectionEnd) and event.name == HTAB_SECTION:
            if event.kind == "START":
                flush(event.end)
                # the snapshot's passes but the last, each a PART section of its own
                head = bytes([QEMU_VM_SECTION_PART]) + BE32.pack(event.section_id)
                foot = bytes([QEMU_VM_SECTION_FOOTER]) + BE32.pack(event.section_id) if walker.footers else b""
                for _ in range(passes - 1):
                    emit(head)
                    _write_part(emit, next_pass(), stats.htab)
                    emit(foot)
                    stats.added_parts += 1
            elif event.kind == "END" and event.footer_offset is not None:
                flush(event.footer_offset)
                dropping = False
                flush(event.end)
            else:
                flush(event.end)
                dropping = False
        elif isinstance(event, (DeviceState, VmEof)):
            stats.device_state_offset = event.offset
            if walker.htab_shift is None:
                raise stream_error(
                    f"no {HTAB_SECTION!r} section before offset {event.offset:#x}: nothing to replace", event.offset
                )
    # the walk ended at the first device-state section: the rest is copied
    flush(pending_base + len(pending))
    while True:
        block = mig_in.read(read_size)
        if not block:
            break
        stats.input_bytes += len(block)
        emit(block)
    stats.output_bytes = written
    return stats

