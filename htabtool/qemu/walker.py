"""The sans-I/O walker of a QEMU migration stream, and its events.

:class:`MigrationWalker` takes bytes cut anywhere (``receive_data``; ``b""``
is the end of the stream) and hands out events (``next_event``): the file
header, the configuration, every section's start and end with its name, id
and version, the htab START shift, the htab records of each PART/END
payload, the RAM bytes it skipped, and the first device-state section,
where it stops.  It checks every structure it crosses and refuses, naming
what it found and the byte offset, whatever it cannot walk for certain.

Its input waits in one :class:`htabtool.sansio.ReceiveBuffer`; RAM pages
never enter it (:meth:`~htabtool.sansio.ReceiveBuffer.skip` drops page bytes
as they arrive).  One handler per state, in a dispatch table; the ``ram``
items are walked by :class:`htabtool.qemu.ram.RamWalk`, the htab fields
checked by :mod:`htabtool.qemu.htab`.

Imports no I/O module: :mod:`htabtool.sansio`, :mod:`htabtool.errors`,
:mod:`htabtool.records` and the format modules of this package only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from htabtool.errors import UsageError
from htabtool.qemu.format import (
    BE32,
    HTAB_SECTION,
    HTAB_VERSION,
    KNOWN_CAPABILITIES,
    MIG_CMD_NAMES,
    MIG_CMD_REFUSED,
    MIG_CMD_WALKED,
    NO_HPT,
    QEMU_VM_COMMAND,
    QEMU_VM_CONFIGURATION,
    QEMU_VM_EOF,
    QEMU_VM_FILE_MAGIC,
    QEMU_VM_FILE_VERSION,
    QEMU_VM_FILE_VERSION_COMPAT,
    QEMU_VM_SECTION_END,
    QEMU_VM_SECTION_FOOTER,
    QEMU_VM_SECTION_FULL,
    QEMU_VM_SECTION_PART,
    QEMU_VM_SECTION_START,
    QEMU_VM_SUBSECTION,
    RAM_SECTION,
    RAM_VERSION,
    SECTION_KINDS,
    TARGET_PAGE_SIZE,
    Cursor,
    Short,
    htab_entries,
    stream_error,
)
from htabtool.qemu.htab import check_part_header, check_start_shift, scan_records
from htabtool.qemu.ram import RamWalk
from htabtool.records import HEADER_SIZE
from htabtool.sansio import END_OF_STREAM, NEED_DATA, ReceiveBuffer, Sentinel

__all__ = [
    "Command",
    "Configuration",
    "DeviceState",
    "END_OF_STREAM",
    "FileHeader",
    "HtabPartEnd",
    "HtabRecords",
    "HtabStart",
    "MigrationWalker",
    "NEED_DATA",
    "RamSkipped",
    "SectionBegin",
    "SectionEnd",
    "VmEof",
]


# -- events ------------------------------------------------------------------


@dataclass(frozen=True)
class FileHeader:
    version: int
    offset: int = 0


@dataclass(frozen=True)
class Configuration:
    """QEMU_VM_CONFIGURATION: the machine type and the subsections sent."""

    machine: str
    capabilities: tuple = ()
    subsections: tuple = ()
    offset: int = 0


@dataclass(frozen=True)
class SectionBegin:
    """A section header was read.  ``offset``: its type byte;
    ``payload_offset``: the first byte after the header."""

    kind: str  # START, PART, END (FULL sections end the walk: DeviceState)
    section_id: int
    name: str
    instance_id: int
    version_id: int
    offset: int
    payload_offset: int


@dataclass(frozen=True)
class SectionEnd:
    """A section ended.  ``footer_offset``: its footer (None without
    footers); ``end``: one past its last byte."""

    kind: str
    section_id: int
    name: str
    offset: int
    footer_offset: int | None
    end: int


@dataclass(frozen=True)
class HtabStart:
    """The htab START payload: the table's size, log2 of its bytes."""

    shift: int
    offset: int = 0

    def __post_init__(self):
        check_start_shift(self.shift, self.offset)

    @property
    def entries(self) -> int:
        return htab_entries(self.shift)


@dataclass(frozen=True)
class HtabRecords:
    """Whole records of htab part ``part`` (1-based, every PART/END payload
    counts), big-endian as QEMU writes them; ``offset``: the first one's."""

    part: int
    data: bytes = field(repr=False)
    records: int
    offset: int


@dataclass(frozen=True)
class HtabPartEnd:
    """The end marker of an htab part (at ``offset``)."""

    part: int
    kind: str
    records: int
    offset: int


@dataclass(frozen=True)
class RamSkipped:
    """A ``ram`` payload was walked past: its bytes, pages and zero pages."""

    section_id: int
    kind: str
    nbytes: int
    pages: int
    zero_pages: int
    offset: int


@dataclass(frozen=True)
class DeviceState:
    """The first device-state (FULL) section: the walk ends at its header."""

    section_id: int
    name: str
    instance_id: int
    version_id: int
    offset: int


@dataclass(frozen=True)
class VmEof:
    """QEMU_VM_EOF before any device state: the walk ends here."""

    offset: int


@dataclass(frozen=True)
class Command:
    """A QEMU_VM_COMMAND walked past (only one carrying no state:
    SWITCHOVER_START); ``offset``: its type byte, ``size``: its bytes."""

    command: int
    name: str
    offset: int
    size: int


# -- the walker ----------------------------------------------------------------


# the walker's states (each has its handler in MigrationWalker._dispatch)
FILE_HEADER = Sentinel("MigrationWalker.FILE_HEADER")
SECTION = Sentinel("MigrationWalker.SECTION")
FOOTER = Sentinel("MigrationWalker.FOOTER")
RAM = Sentinel("MigrationWalker.RAM")
HTAB_START = Sentinel("MigrationWalker.HTAB_START")
HTAB_PART = Sentinel("MigrationWalker.HTAB_PART")
HTAB_RECORDS = Sentinel("MigrationWalker.HTAB_RECORDS")
BARE_START = Sentinel("MigrationWalker.BARE_START")
BARE_PART = Sentinel("MigrationWalker.BARE_PART")
DONE = Sentinel("MigrationWalker.DONE")


@dataclass
class _Section:
    section_id: int
    name: str
    instance_id: int
    version_id: int
    offset: int  # of its START
    ended: bool = False


class MigrationWalker:
    """Walks a QEMU migration stream (or, with ``section_only``, bare
    ``spapr/htab`` payloads: START then PART/END payloads to the end).

    >>> w = MigrationWalker()
    >>> w.receive_data(block); ...; w.receive_data(b"")
    >>> w.next_event()   # an event, NEED_DATA, or END_OF_STREAM

    Every refusal is a :class:`QemuStreamError` whose ``offset`` attribute
    is the byte offset named in its message."""

    def __init__(self, *, section_only: bool = False, page_size: int = TARGET_PAGE_SIZE):
        if not 1024 <= page_size <= 65536 or page_size & (page_size - 1):
            raise UsageError(f"page size must be a power of two from 1024 to 65536, not {page_size}")
        self.section_only = section_only
        self.page_size = page_size
        self._rb = ReceiveBuffer()
        # what a handler reads: a view of the unconsumed input, the position
        # reached in it, its stream offset, and page bytes to drop after it
        self._buf: memoryview = memoryview(b"")
        self._pos = 0
        self._base = 0
        self._page_left = 0
        self._events: deque = deque()
        self._state = BARE_START if section_only else FILE_HEADER
        self._what = "the file header"  # what a truncation would cut
        self._dispatch = {
            FILE_HEADER: self._file_header,
            SECTION: self._section,
            FOOTER: self._footer,
            RAM: self._ram,
            HTAB_START: self._htab_start,
            HTAB_PART: self._part_header,
            HTAB_RECORDS: self._htab_records,
            BARE_START: self._bare_start,
            BARE_PART: self._bare_part,
        }
        self.footers: bool | None = None  # decided by the first section
        self.sections: dict[int, _Section] = {}
        self.configuration: Configuration | None = None
        self.capabilities: tuple = ()
        self.htab_shift: int | None = None
        self.htab_parts = 0
        self._seen_section = False
        self._cur: _Section | None = None
        self._cur_kind = ""
        self._cur_offset = 0
        self._cur_payload = 0
        self._ram_walk = RamWalk(page_size)
        # htab part in progress
        self._part_records = 0

    # -- feeding ------------------------------------------------------------

    @property
    def offset(self) -> int:
        """Bytes of the stream consumed so far."""
        return self._rb.offset

    @property
    def buffered(self) -> int:
        """Bytes received and not yet walked (RAM pages never count)."""
        return len(self._rb)

    @property
    def ram_blocks(self) -> dict[str, int]:
        """The RAM block list announced so far: name -> length in bytes."""
        return self._ram_walk.blocks

    def receive_data(self, data) -> None:
        if self._rb.eof:
            raise UsageError("receive_data after the end of the stream")
        if not data:
            self._rb.eof = True
            return
        if self._state is DONE:
            return  # the rest of the device state is not ours to read
        self._rb.feed(data)  # page bytes still to skip never enter the buffer

    def next_event(self):
        rb = self._rb
        while not self._events:
            if self._state is DONE:
                return END_OF_STREAM
            if rb.skipping:
                return self._need()
            self._buf, self._pos, self._base = rb.view(), 0, rb.offset
            progressed = self._dispatch[self._state]()
            rb.consume(self._pos)
            if self._page_left:
                rb.skip(self._page_left)
                self._page_left = 0
            if not progressed:
                return self._need()
        return self._events.popleft()

    def _need(self):
        rb = self._rb
        self._buf = memoryview(b"")  # hold no view of input between calls
        if rb.eof:
            at = rb.offset
            if self._state is SECTION and not rb:
                raise stream_error(f"stream ends at offset {at:#x} before any device-state section", at)
            if rb.skipping:
                raise stream_error(
                    f"stream ends at offset {at:#x} inside a RAM page: {rb.skipping} more bytes expected", at
                )
            raise stream_error(f"stream ends at offset {at:#x} inside {self._what}", at)
        return NEED_DATA

    def _at(self, pos: int | None = None) -> int:
        return self._base + (self._pos if pos is None else pos)

    # -- file header and sections -------------------------------------------

    def _file_header(self) -> bool:
        c = Cursor(self._buf, self._pos)
        try:
            magic, version = c.be32(), c.be32()
        except Short:
            return False
        if magic != QEMU_VM_FILE_MAGIC:
            raise stream_error(
                f"not a QEMU migration stream: magic {magic:#010x} at offset {self._at():#x}, "
                f"expected {QEMU_VM_FILE_MAGIC:#010x} ('QEVM')",
                self._at(),
            )
        if version == QEMU_VM_FILE_VERSION_COMPAT:
            raise stream_error(
                f"migration stream version 2 at offset {self._at() + 4:#x} is QEMU's obsolete format: "
                f"only version {QEMU_VM_FILE_VERSION} can be walked",
                self._at() + 4,
            )
        if version != QEMU_VM_FILE_VERSION:
            raise stream_error(
                f"unsupported migration stream version {version} at offset {self._at() + 4:#x}: "
                f"only version {QEMU_VM_FILE_VERSION} can be walked",
                self._at() + 4,
            )
        self._events.append(FileHeader(version, self._at()))
        self._pos = c.pos
        self._state = SECTION
        self._what = "a section header"
        return True

    def _section(self) -> bool:
        if self._pos >= len(self._buf):
            return False
        at = self._at()
        kind = self._buf[self._pos]
        self._what = f"the section header at offset {at:#x}"
        c = Cursor(self._buf, self._pos + 1)
        try:
            if kind == QEMU_VM_CONFIGURATION:
                return self._configuration(c, at)
            if kind in (QEMU_VM_SECTION_START, QEMU_VM_SECTION_FULL):
                section_id, name, instance_id, version_id = c.be32(), c.idstr(), c.be32(), c.be32()
            elif kind in (QEMU_VM_SECTION_PART, QEMU_VM_SECTION_END):
                section_id = c.be32()
            elif kind == QEMU_VM_COMMAND:
                return self._command(c, at)
            elif kind == QEMU_VM_EOF:
                self._check_iterative_ended(at, "QEMU_VM_EOF")
                self._events.append(VmEof(at))
                self._pos += 1
                self._state = DONE
                return True
            else:
                raise stream_error(f"unknown section type {kind:#04x} at offset {at:#x}", at)
        except Short:
            return False
        self._seen_section = True
        kind_name = SECTION_KINDS[kind]
        if kind == QEMU_VM_SECTION_FULL:
            # the first FULL after the END of every iterative section is the
            # device state of the completion phase; one before is an
            # early-setup device's (vmsd early_setup: qemu_savevm_state_setup
            # saves it among the STARTs), whose payload has no length
            early = "an early-setup device's state (qemu_savevm_state_setup), which has no length to walk past"
            if not self.sections:
                raise stream_error(
                    f"the device-state section {name!r} at offset {at:#x} comes before any iterative section: {early}",
                    at,
                )
            self._check_iterative_ended(at, f"the device-state section {name!r}", why=early)
            self._events.append(DeviceState(section_id, name, instance_id, version_id, at))
            self._pos = c.pos
            self._state = DONE
            return True
        if kind == QEMU_VM_SECTION_START:
            if section_id in self.sections:
                raise stream_error(
                    f"START of section id {section_id} ({name!r}) at offset {at:#x}: that id is already in use", at
                )
            if name == RAM_SECTION:
                want, state = RAM_VERSION, RAM
            elif name == HTAB_SECTION:
                want, state = HTAB_VERSION, HTAB_START
            else:
                raise stream_error(
                    f"unknown iterative section {name!r} (id {section_id}, START) at offset {at:#x}: "
                    f"only {RAM_SECTION!r} and {HTAB_SECTION!r} can be walked",
                    at,
                )
            if version_id != want:
                raise stream_error(
                    f"section {name!r} version {version_id} at offset {at:#x}: only version {want} is known", at
                )
            sec = _Section(section_id, name, instance_id, version_id, at)
            self.sections[section_id] = sec
        else:
            known = self.sections.get(section_id)
            if known is None:
                raise stream_error(
                    f"{kind_name} section at offset {at:#x} names section id {section_id}, which has no START", at
                )
            sec = known
            if sec.ended:
                raise stream_error(
                    f"{kind_name} section at offset {at:#x} for section {sec.name!r} (id {section_id}) "
                    "after its END",
                    at,
                )
            state = RAM if sec.name == RAM_SECTION else HTAB_PART
            if kind == QEMU_VM_SECTION_END:
                sec.ended = True
        self._cur, self._cur_kind, self._cur_offset = sec, kind_name, at
        self._pos = c.pos
        self._cur_payload = self._at()
        self._events.append(
            SectionBegin(kind_name, sec.section_id, sec.name, sec.instance_id, sec.version_id, at, self._cur_payload)
        )
        self._state = state
        if state is RAM:
            self._ram_walk.begin(kind_name, at)
            self._what = f"the {kind_name} section of {RAM_SECTION!r} at offset {at:#x}"
        else:
            self._what = f"the {kind_name} section of {HTAB_SECTION!r} at offset {at:#x}"
        return True

    def _command(self, c: Cursor, at: int) -> bool:
        """QEMU_VM_COMMAND: be16 command, be16 length, then its payload
        (loadvm_process_command).  Only a command that carries no state and
        leaves the sections after it as they are is walked past; every
        other is refused by name, with its offset."""
        command, length = int.from_bytes(c.take(2), "big"), int.from_bytes(c.take(2), "big")
        name = MIG_CMD_NAMES.get(command)
        if name is None:
            raise stream_error(
                f"QEMU_VM_COMMAND with unknown command {command} (length {length}) at offset {at:#x}: "
                "QEMU's loadvm_process_command refuses it",
                at,
            )
        if command not in MIG_CMD_WALKED:
            raise stream_error(
                f"QEMU_VM_COMMAND {name} (command {command}) at offset {at:#x}: {MIG_CMD_REFUSED[command]}: "
                "such a stream cannot be walked",
                at,
            )
        if length != MIG_CMD_WALKED[command]:
            raise stream_error(
                f"QEMU_VM_COMMAND {name} (command {command}) at offset {at:#x} has length {length}, "
                f"expected {MIG_CMD_WALKED[command]} (QEMU's loader refuses it)",
                at,
            )
        c.take(length)
        self._events.append(Command(command, name, at, c.pos - self._pos))
        self._pos = c.pos
        return True

    def _check_iterative_ended(self, at: int, what: str, why: str = "") -> None:
        for sec in self.sections.values():
            if not sec.ended:
                raise stream_error(
                    f"{what} at offset {at:#x} comes before the END of iterative section "
                    f"{sec.name!r} (id {sec.section_id}, START at {sec.offset:#x})" + (f": {why}" if why else ""),
                    at,
                )

    def _configuration(self, c: Cursor, at: int) -> bool:
        if self._seen_section or self.configuration is not None:
            raise stream_error(f"configuration section at offset {at:#x}: it may only follow the file header", at)
        length = c.be32()
        machine = c.take(length).decode("latin-1")
        caps: list[str] = []
        subs: list[str] = []
        while c.pos < len(self._buf) and self._buf[c.pos] == QEMU_VM_SUBSECTION:
            sub_at = self._at(c.pos)
            c.u8()
            name = c.idstr()
            version = c.be32()
            if name == "configuration/target-page-bits":
                bits = c.be32()
                if 1 << bits != self.page_size:
                    raise stream_error(
                        f"target page bits {bits} in the configuration at offset {sub_at:#x}: "
                        f"the walker expects pages of {self.page_size} bytes",
                        sub_at,
                    )
            elif name == "configuration/capabilities":
                caps += [c.idstr() for _ in range(c.be32())]
            elif name == "configuration/uuid":
                c.take(16)
            else:
                raise stream_error(f"unknown configuration subsection {name!r} at offset {sub_at:#x}", sub_at)
            if version != 1:
                raise stream_error(f"configuration subsection {name!r} version {version} at offset {sub_at:#x}", sub_at)
            subs.append(name)
        if c.pos >= len(self._buf) and not self._rb.eof:
            raise Short  # a subsection may follow
        unknown = [cap for cap in caps if cap not in KNOWN_CAPABILITIES]
        if unknown:
            raise stream_error(
                f"migration capability {unknown[0]!r} in the configuration at offset {at:#x} "
                "changes the stream layout: it cannot be walked",
                at,
            )
        self.capabilities = tuple(caps)
        self._ram_walk.ignore_shared = "x-ignore-shared" in caps
        self.configuration = Configuration(machine, tuple(caps), tuple(subs), at)
        self._events.append(self.configuration)
        self._pos = c.pos
        return True

    def _footer(self) -> bool:
        sec = self._section_under_way()
        at = self._at()
        if self.footers is None:
            if self._pos >= len(self._buf):
                self._what = self._footer_what(sec)
                return False
            self.footers = self._buf[self._pos] == QEMU_VM_SECTION_FOOTER
        footer_offset = None
        if self.footers:
            c = Cursor(self._buf, self._pos)
            try:
                mark, section_id = c.u8(), c.be32()
            except Short:
                self._what = self._footer_what(sec)
                return False
            if mark != QEMU_VM_SECTION_FOOTER:
                raise stream_error(
                    f"expected a section footer (0x7e) at offset {at:#x} after the {self._cur_kind} payload of "
                    f"{sec.name!r} (id {sec.section_id}), found {mark:#04x}",
                    at,
                )
            if section_id != sec.section_id:
                raise stream_error(
                    f"section footer at offset {at:#x} names section id {section_id}, expected "
                    f"{sec.section_id} ({sec.name!r} {self._cur_kind} at {self._cur_offset:#x})",
                    at,
                )
            footer_offset = at
            self._pos = c.pos
        self._events.append(
            SectionEnd(self._cur_kind, sec.section_id, sec.name, self._cur_offset, footer_offset, self._at())
        )
        self._state = SECTION
        self._what = "a section header"
        return True

    def _section_under_way(self) -> _Section:
        assert self._cur is not None, "a payload state without its section"
        return self._cur

    def _footer_what(self, sec: _Section) -> str:
        return f"the footer of the {self._cur_kind} section of {sec.name!r} at offset {self._cur_offset:#x}"

    # -- ram -----------------------------------------------------------------

    def _ram(self) -> bool:
        """Walk RAM items as far as the buffer goes; True if any progress."""
        start = self._pos
        pos, self._page_left, ended = self._ram_walk.walk(self._buf, start, self._base)
        self._pos = pos
        if ended:
            ram = self._ram_walk
            self._events.append(
                RamSkipped(
                    self._section_under_way().section_id, self._cur_kind, self._at() - self._cur_payload,
                    ram.pages, ram.zero_pages, self._cur_payload,
                )
            )
            self._state = FOOTER
            return True
        return pos > start

    # -- spapr/htab ---------------------------------------------------------

    def _read_shift(self) -> int | None:
        if len(self._buf) - self._pos < 4:
            return None
        at = self._at()
        shift = BE32.unpack_from(self._buf, self._pos)[0]
        if shift == NO_HPT:
            raise stream_error(f"htab_shift -1 at offset {at:#x}: the guest uses the radix MMU, it has no HPT", at)
        if self.htab_shift is not None:
            raise stream_error(f"a second htab START at offset {at:#x}", at)
        event = HtabStart(shift, at)  # validates the range
        self.htab_shift = shift
        self._events.append(event)
        self._pos += 4
        return shift

    def _htab_start(self) -> bool:
        if self._read_shift() is None:
            return False
        self._state = FOOTER
        return True

    def _bare_start(self) -> bool:
        self._what = "the htab START payload (be32 htab_shift)"
        if self._read_shift() is None:
            return False
        self._state = BARE_PART
        self._what = "an htab part"
        return True

    def _part_header(self) -> bool:
        if len(self._buf) - self._pos < 4:
            return False
        at = self._at()
        check_part_header(BE32.unpack_from(self._buf, self._pos)[0], at)
        self._pos += 4
        self.htab_parts += 1
        self._part_records = 0
        self._state = HTAB_RECORDS
        return True

    def _bare_part(self) -> bool:
        if self._pos >= len(self._buf) and self._rb.eof:
            if not self.htab_parts:
                at = self._at()
                raise stream_error(
                    f"htab section payload ends after its START (htab_shift {self.htab_shift}) at offset "
                    f"{at:#x}: no PART/END payload follows",
                    at,
                )
            self._state = DONE
            return True
        self._what = "an htab part header"
        return self._part_header()

    def _htab_records(self) -> bool:
        buf = self._buf
        start = self._pos
        assert self.htab_shift is not None, "htab records before the htab START"
        pos, count, marker = scan_records(buf, start, self.htab_shift, self._base)
        if pos > start:
            self._part_records += count
            self._events.append(HtabRecords(self.htab_parts, bytes(buf[start:pos]), count, self._at(start)))
            self._pos = pos
        if marker:
            kind = self._cur_kind if not self.section_only else "PART"
            self._events.append(HtabPartEnd(self.htab_parts, kind, self._part_records, self._at(pos)))
            self._pos = pos + HEADER_SIZE
            self._state = BARE_PART if self.section_only else FOOTER
            return True
        self._what = f"the records of htab part {self.htab_parts} at offset {self._at(pos):#x} (no end marker yet)"
        return pos > start

