"""The I/O adapter: a QEMU stream read from a file, as snapshot pieces.

:func:`iter_events` walks a file with :class:`~htabtool.qemu.walker.MigrationWalker`;
:class:`QemuSource` is a snapshot source (:mod:`htabtool.sources`): the
``spapr/htab`` records as ``(pass_number, records)`` pieces, QEMU's parts
kept apart (:class:`~htabtool.qemu.htab.QemuPart`).  The only module of the
package, with :mod:`htabtool.qemu.write`, that reads files or imports
:mod:`htabtool.sources`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any, BinaryIO

from htabtool.qemu.format import HTAB_SECTION, QEMU_VM_FILE_VERSION, stream_error
from htabtool.qemu.htab import QemuPart, parts_frames
from htabtool.qemu.walker import (
    END_OF_STREAM,
    NEED_DATA,
    DeviceState,
    HtabPartEnd,
    HtabRecords,
    HtabStart,
    MigrationWalker,
    RamSkipped,
    SectionBegin,
    VmEof,
)
from htabtool.records import check_byte_order, decode_batch, split_passes
from htabtool.sources import DEFAULT_READ_SIZE, SourceBase, StreamInfo

__all__ = ["QemuSource", "iter_events"]


def iter_events(f: BinaryIO, *, section_only: bool = False, read_size: int = DEFAULT_READ_SIZE) -> Iterator:
    """Every event of the stream read from ``f`` in blocks of ``read_size``;
    reading stops at the first device-state section."""
    walker = MigrationWalker(section_only=section_only)
    while True:
        event = walker.next_event()
        if event is NEED_DATA:
            walker.receive_data(f.read(read_size))
        elif event is END_OF_STREAM:
            return
        else:
            yield event


# -- the source: QEMU's records as snapshot pieces ------------------------------


class QemuSource(SourceBase):
    """The ``spapr/htab`` records of a QEMU migration stream (or, with
    ``section_only``, of bare section payloads) as a snapshot source.

    ``info`` is known once the htab START is read (the constructor reads
    up to it); ``pieces()`` yields ``(pass_number, records)`` with headers
    in ``byte_order``.  Passes are sweeps of the table, as the kernel's fd
    means them, not QEMU's parts: QEMU's first pass spans as many parts as
    its time and bandwidth limits make (htab_save_first_pass stops after
    MAX_ITERATION_NS), a later pass resumes where the part before stopped,
    and the END continues the pass under way and then makes one later
    pass (htab_save_complete).  So the records of all parts are one
    sequence and a new pass starts where it wraps round
    (:func:`htabtool.records.pass_starts`, the rule every source follows).
    QEMU's parts are kept apart: :attr:`parts` lists them
    (:class:`QemuPart`: kind, stream offset, records, where their records
    lie in the snapshot's record stream) once ``pieces()`` has ended, and
    :meth:`snapshot_notes` hands them to the snapshot writer.  Records are
    checked as the kernel's write side would (RecordError names the stream
    offset).  ``info.source`` gains the counts (parts, passes, records, RAM
    bytes skipped) when ``pieces()`` ends."""

    def __init__(
        self,
        f: BinaryIO,
        *,
        byte_order: str = "little",
        section_only: bool = False,
        name: str = "-",
        read_size: int = DEFAULT_READ_SIZE,
    ):
        check_byte_order(byte_order)
        self.f = f
        self.read_size = read_size
        self.walker = MigrationWalker(section_only=section_only)
        self._backlog: deque = deque()
        self.parts: list[QemuPart] = []
        self._ram = {"sections": 0, "bytes": 0, "pages": 0, "zero_pages": 0}
        start = None
        for event in self._walk():
            self._backlog.append(event)
            if isinstance(event, HtabStart):
                start = event
                break
            if isinstance(event, (DeviceState, VmEof)):
                where = f"the device-state section {event.name!r}" if isinstance(event, DeviceState) else "QEMU_VM_EOF"
                raise stream_error(
                    f"no {HTAB_SECTION!r} section before {where} at offset {event.offset:#x}: "
                    "not a pseries guest with a hashed page table",
                    event.offset,
                )
        if start is None:
            raise stream_error("the stream ended before an htab START", self.walker.offset)
        self._start = start
        source: dict[str, Any] = {
            "kind": "qemu",
            "name": name,
            "format": "section" if section_only else "migration",
            "htab_shift": start.shift,
            "htab_start_offset": start.offset,
        }
        if not section_only:
            conf = self.walker.configuration
            source["stream_version"] = QEMU_VM_FILE_VERSION
            source["machine"] = conf.machine if conf else None
            sec = next(s for s in self.walker.sections.values() if s.name == HTAB_SECTION)
            source["htab_section_id"] = sec.section_id
            source["htab_instance_id"] = sec.instance_id
            source["htab_version"] = sec.version_id
        self.info = StreamInfo(byte_order, start.shift, source=source)

    def _walk(self) -> Iterator:
        while self._backlog:
            yield self._backlog.popleft()
        walker = self.walker
        while True:
            event = walker.next_event()
            if event is NEED_DATA:
                walker.receive_data(self.f.read(self.read_size))
            elif event is END_OF_STREAM:
                return
            else:
                if isinstance(event, RamSkipped):
                    self._ram["sections"] += 1
                    self._ram["bytes"] += event.nbytes
                    self._ram["pages"] += event.pages
                    self._ram["zero_pages"] += event.zero_pages
                yield event

    def pieces(self) -> Iterator[tuple[int, bytes]]:
        order = self.info.byte_order
        n_entries = self.info.entries
        pass_number, previous_end = 1, 0
        records = entries = raw = 0
        part_start = part_raw = None
        self.parts = []
        for event in self._walk():
            if isinstance(event, SectionBegin) and event.name == HTAB_SECTION and event.kind != "START":
                part_start = event.offset
            elif isinstance(event, HtabRecords):
                batch, used = decode_batch(
                    event.data, "big", base_offset=event.offset, first_record=records, n_entries=n_entries
                )
                assert used == len(event.data)
                if part_raw is None:
                    part_raw = raw
                records += len(batch)
                entries += len(batch.entries)
                raw += used
                if order != "big":
                    batch.raw = batch.to_bytes(order)
                pieces, pass_number, previous_end = split_passes(batch, pass_number, previous_end)
                yield from pieces
            elif isinstance(event, HtabPartEnd):
                if part_start is not None:
                    start = part_start
                else:  # a bare payload: its be32 0 stands before its records
                    start = event.offset - 4 - (raw - part_raw if part_raw is not None else 0)
                first = raw if part_raw is None else part_raw
                self.parts.append(QemuPart(event.part, event.kind, start, event.records, first, raw - first))
                part_start = part_raw = None
        self.info.source.update(
            parts=len(self.parts),
            passes=pass_number if records else 0,
            records=records,
            valid_entries=entries,
            ram_sections=self._ram["sections"],
            ram_bytes_skipped=self._ram["bytes"],
            ram_pages=self._ram["pages"],
            ram_zero_pages=self._ram["zero_pages"],
            end_offset=self.walker.offset,
        )

    def snapshot_notes(self) -> list[tuple[bytes, bytes]]:
        """The optional snapshot frames that keep QEMU's parts apart from
        the passes (``(tag, body)``, :func:`parts_frames`); after ``pieces()``."""
        return parts_frames(self.parts)

