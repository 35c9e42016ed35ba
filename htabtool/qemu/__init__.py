"""QEMU migration streams: read and write the ``spapr/htab`` section.

Strategy: a sans-I/O walker in the style of h11.  :class:`MigrationWalker`
takes bytes cut anywhere (``receive_data``; ``b""`` is the end of the
stream) and hands out events (``next_event``): the file header, the
configuration, every section's start and end with its name, id and
version, the htab START shift, the htab records of each PART/END payload,
the RAM bytes it skipped, and the first device-state section, where it
stops.  It checks every structure it crosses and refuses, naming what it
found and the byte offset, whatever it cannot walk for certain.  RAM pages
are never buffered: page data not yet received is discarded as it arrives.
Files sit at the edge: :class:`QemuSource` (a snapshot source),
:func:`write_section` and :func:`splice`.

The format, as QEMU writes and reads it (all integers big-endian; checked
against QEMU's migration/savevm.c, migration/ram.c and hw/ppc/spapr.c):

- file header: be32 magic ``QEVM`` (0x5145564d), be32 version 3 (2 is the
  obsolete format, refused by QEMU itself); then, when the machine type
  sends it, QEMU_VM_CONFIGURATION (0x07): be32 length, the machine type,
  and optional vmstate subsections (0x05, u8 name length, name, be32
  version, fields) named ``configuration/...``.
- sections: a type byte; START (0x01) and FULL (0x04): be32 section id, u8
  length + idstr, be32 instance id, be32 version id; PART (0x02) and END
  (0x03): be32 section id only.  With section footers (the machine type
  decides; current ones send them) each section ends with 0x7e and its be32
  section id; the walker learns from the first section whether they are
  there and then requires them on every section (or on none).
  QEMU_VM_EOF (0x00).  QEMU_VM_COMMAND (0x08): be16 command, be16 length,
  payload (loadvm_process_command, called from qemu_loadvm_state_main's
  loop between sections); only MIG_CMD_SWITCHOVER_START, which QEMU 10.0
  and later send right before the END sections, is walked past, every
  other is refused by name (:data:`MIG_CMD_REFUSED`).
- the setup phase writes a START for each iterative section, the iterate
  phase PARTs, the completion phase an END for each, then the device
  state as FULL sections (qemu_savevm_state_setup / _iterate /
  _complete_precopy).  The loader finds a PART/END's handler by its id and
  calls its load function; a section may have any number of PARTs.  Since
  QEMU 8.0 an early-setup device (vmsd early_setup: virtio-mem) is saved as
  a FULL section among the STARTs; its payload has no length, so such a
  stream is refused by name.
- ``ram`` (version 4): a sequence of be64 ``address | flags`` items (flags
  in the bits below the 4 KiB target page of ppc64).  MEM_SIZE 0x04: the
  RAM block list (u8 length + idstr, be64 length, for blocks whose lengths
  add up to the address); ZERO 0x02: a fill byte; PAGE 0x08: the page;
  CONTINUE 0x20: same block as the previous item, else u8 length + idstr
  follow the header; EOS 0x10 ends the payload.  XBZRLE 0x40, the RDMA
  hook 0x80, COMPRESS_PAGE 0x100 and MULTIFD_FLUSH 0x200 are refused.
- ``spapr/htab`` (version 1): START payload be32 htab_shift (-1 when the
  guest has no HPT: radix); PART/END payload be32 0, then records (be32
  index, be16 n_valid, be16 n_invalid, n_valid 16-byte entries), then the
  all-zero 8-byte end marker.  htab_load allocates a zeroed table on the
  START and applies the records of every PART/END in order: valid entries
  copied, n_invalid slots zeroed; a record past the table is refused.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from itertools import groupby
from typing import BinaryIO, Iterable, Iterator

import numpy as np

from htabtool.errors import QemuStreamError, TruncatedStream, UsageError
from htabtool.records import (
    END_OF_STREAM,
    HEADER_SIZE,
    MAX_INDEX_ORDER,
    NEED_DATA,
    RecordBatch,
    check_byte_order,
    check_indexable_order,
    decode_batch,
    split_passes,
)
from htabtool.sources import DEFAULT_READ_SIZE, StreamInfo

__all__ = [
    "MigrationWalker",
    "FileHeader",
    "Configuration",
    "SectionBegin",
    "SectionEnd",
    "HtabStart",
    "HtabRecords",
    "HtabPartEnd",
    "RamSkipped",
    "DeviceState",
    "VmEof",
    "Command",
    "NEED_DATA",
    "END_OF_STREAM",
    "iter_events",
    "QemuSource",
    "SectionStats",
    "SpliceStats",
    "write_section",
    "splice",
    "HTAB_SECTION",
    "RAM_SECTION",
]

QEMU_VM_FILE_MAGIC = 0x5145564D
QEMU_VM_FILE_VERSION_COMPAT = 2
QEMU_VM_FILE_VERSION = 3

QEMU_VM_EOF = 0x00
QEMU_VM_SECTION_START = 0x01
QEMU_VM_SECTION_PART = 0x02
QEMU_VM_SECTION_END = 0x03
QEMU_VM_SECTION_FULL = 0x04
QEMU_VM_SUBSECTION = 0x05
QEMU_VM_VMDESCRIPTION = 0x06
QEMU_VM_CONFIGURATION = 0x07
QEMU_VM_COMMAND = 0x08
QEMU_VM_SECTION_FOOTER = 0x7E

#: QEMU_VM_COMMAND's commands (enum qemu_vm_cmd and mig_cmd_args in
#: migration/savevm.c; the same numbers from QEMU 7.2 to today's master,
#: SWITCHOVER_START added in 10.0).  loadvm_process_command reads be16 cmd,
#: be16 len, refuses a command it does not know and a length other than
#: the table's (where the table fixes one), then acts on it.
MIG_CMD_INVALID = 0
MIG_CMD_OPEN_RETURN_PATH = 1
MIG_CMD_PING = 2
MIG_CMD_POSTCOPY_ADVISE = 3
MIG_CMD_POSTCOPY_LISTEN = 4
MIG_CMD_POSTCOPY_RUN = 5
MIG_CMD_POSTCOPY_RAM_DISCARD = 6
MIG_CMD_PACKAGED = 7
MIG_CMD_ENABLE_COLO = 8
MIG_CMD_POSTCOPY_RESUME = 9
MIG_CMD_RECV_BITMAP = 10
MIG_CMD_SWITCHOVER_START = 11

MIG_CMD_NAMES = {
    MIG_CMD_OPEN_RETURN_PATH: "OPEN_RETURN_PATH",
    MIG_CMD_PING: "PING",
    MIG_CMD_POSTCOPY_ADVISE: "POSTCOPY_ADVISE",
    MIG_CMD_POSTCOPY_LISTEN: "POSTCOPY_LISTEN",
    MIG_CMD_POSTCOPY_RUN: "POSTCOPY_RUN",
    MIG_CMD_POSTCOPY_RAM_DISCARD: "POSTCOPY_RAM_DISCARD",
    MIG_CMD_PACKAGED: "PACKAGED",
    MIG_CMD_ENABLE_COLO: "ENABLE_COLO",
    MIG_CMD_POSTCOPY_RESUME: "POSTCOPY_RESUME",
    MIG_CMD_RECV_BITMAP: "RECV_BITMAP",
    MIG_CMD_SWITCHOVER_START: "SWITCHOVER_START",
}

#: commands walked past, with the payload length mig_cmd_args fixes.
#: SWITCHOVER_START (no payload): qemu_savevm_maybe_send_switchover_start
#: sends it right before the END sections of a precopy migration
#: (migration_completion_precopy) and of savevm (qemu_savevm_state) when
#: the machine type is 10.0 or later (send-switchover-start, off in
#: hw_compat_9_2); its loader, loadvm_postcopy_handle_switchover_start, only
#: calls the handlers' switchover_start (VFIO's), and reads nothing more.
MIG_CMD_WALKED = {MIG_CMD_SWITCHOVER_START: 0}

#: why every other command cannot be walked (the words go into the message)
MIG_CMD_REFUSED = {
    MIG_CMD_OPEN_RETURN_PATH: "the stream needs a return path to its source",
    MIG_CMD_PING: "a ping for the source on a return path",
    MIG_CMD_POSTCOPY_ADVISE: "postcopy: RAM pages may come after the device state",
    MIG_CMD_POSTCOPY_LISTEN: "postcopy: the rest of the stream is loaded by a listening thread",
    MIG_CMD_POSTCOPY_RUN: "postcopy: the guest starts before its RAM has arrived",
    MIG_CMD_POSTCOPY_RAM_DISCARD: "postcopy: a list of RAM pages to discard",
    MIG_CMD_PACKAGED: "a packaged stream: the device state wrapped in a blob of its own",
    MIG_CMD_ENABLE_COLO: "COLO: the stream goes on with checkpoints",
    MIG_CMD_POSTCOPY_RESUME: "postcopy recovery",
    MIG_CMD_RECV_BITMAP: "postcopy recovery: a request for the received bitmap",
}

SECTION_KINDS = {
    QEMU_VM_SECTION_START: "START",
    QEMU_VM_SECTION_PART: "PART",
    QEMU_VM_SECTION_END: "END",
    QEMU_VM_SECTION_FULL: "FULL",
}

RAM_SAVE_FLAG_FULL = 0x01
RAM_SAVE_FLAG_ZERO = 0x02
RAM_SAVE_FLAG_MEM_SIZE = 0x04
RAM_SAVE_FLAG_PAGE = 0x08
RAM_SAVE_FLAG_EOS = 0x10
RAM_SAVE_FLAG_CONTINUE = 0x20
RAM_SAVE_FLAG_XBZRLE = 0x40
RAM_SAVE_FLAG_HOOK = 0x80
RAM_SAVE_FLAG_COMPRESS_PAGE = 0x100
RAM_SAVE_FLAG_MULTIFD_FLUSH = 0x200

#: flags we cannot walk, and why (the word goes into the message)
RAM_REFUSED_FLAGS = {
    RAM_SAVE_FLAG_FULL: "FULL, obsolete since 2009",
    RAM_SAVE_FLAG_XBZRLE: "XBZRLE",
    RAM_SAVE_FLAG_HOOK: "RDMA hook",
    RAM_SAVE_FLAG_COMPRESS_PAGE: "compressed page",
    RAM_SAVE_FLAG_MULTIFD_FLUSH: "multifd flush",
}

RAM_SECTION = "ram"
MAX_RAM_BLOCKS = 4096  # a pseries guest has a handful; the list is re-read as it arrives
RAM_VERSION = 4
HTAB_SECTION = "spapr/htab"
HTAB_VERSION = 1
#: ppc64's TARGET_PAGE_BITS is 12: the unit of RAM page items
TARGET_PAGE_SIZE = 4096
#: cells of the 9-byte grid looked at in one go: at most about 1.2 MB of
#: stream, at least about 4.6 KB
GRID_CELLS = 1 << 17
GRID_CELLS_MIN = 1 << 9
_GRID_FLAGS = (RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE, RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_CONTINUE)
#: spapr_hpt_shift_for_ramsize: "Minimum architected size" and maximum
HTAB_SHIFT_MIN = 18
HTAB_SHIFT_MAX = 46
NO_HPT = 0xFFFFFFFF  # be32 -1: htab_save_setup's "no hash table"
HTAB_END_MARKER = bytes(HEADER_SIZE)
#: capabilities that change the layout of what we walk
KNOWN_CAPABILITIES = {"x-ignore-shared"}

_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")
_RECORD = struct.Struct(">IHH")


def _error(message: str, offset: int | None = None) -> QemuStreamError:
    err = QemuStreamError(message)
    err.offset = offset
    return err


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
        if not HTAB_SHIFT_MIN <= self.shift <= HTAB_SHIFT_MAX:
            raise _error(
                f"htab_shift {self.shift} at offset {self.offset:#x} is outside "
                f"{HTAB_SHIFT_MIN}..{HTAB_SHIFT_MAX} (the architected HPT sizes)",
                self.offset,
            )
        if self.shift > MAX_INDEX_ORDER:
            # QEMU writes each record's index as a be32 (htab_save_first_pass:
            # qemu_put_be32(f, chunkstart)): past 2**32 entries it cannot say
            raise _error(
                f"htab_shift {self.shift} at offset {self.offset:#x}: a table of {self.entries:,} entries, more "
                f"than the records' 32-bit index addresses (htab_shift {MAX_INDEX_ORDER} at most)",
                self.offset,
            )

    @property
    def entries(self) -> int:
        return 1 << (self.shift - 4)


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


class _State:
    def __init__(self, name: str):
        self._name = name

    def __repr__(self) -> str:
        return self._name


FILE_HEADER = _State("FILE_HEADER")
SECTION = _State("SECTION")
FOOTER = _State("FOOTER")
RAM = _State("RAM")
HTAB_START = _State("HTAB_START")
HTAB_PART = _State("HTAB_PART")
HTAB_RECORDS = _State("HTAB_RECORDS")
BARE_START = _State("BARE_START")
BARE_PART = _State("BARE_PART")
DONE = _State("DONE")


class _Short(Exception):
    """Not enough bytes buffered for a small structure: wait for more."""


class _Cursor:
    """Reads small structures from the buffer; raises _Short at its end."""

    def __init__(self, buf: bytearray, pos: int):
        self.buf, self.pos = buf, pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise _Short
        data = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return data

    def u8(self) -> int:
        if self.pos >= len(self.buf):
            raise _Short
        self.pos += 1
        return self.buf[self.pos - 1]

    def be32(self) -> int:
        return _BE32.unpack(self.take(4))[0]

    def be64(self) -> int:
        return _BE64.unpack(self.take(8))[0]

    def idstr(self) -> str:
        return self.take(self.u8()).decode("latin-1")


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
        self._mask = page_size - 1
        self._buf = bytearray()
        self._pos = 0  # next byte to parse in _buf
        self._base = 0  # stream offset of _buf[0]
        self._eof = False
        self._skip = 0  # page bytes still to discard
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
        # ram
        self.ram_blocks: dict[str, int] = {}
        self._last_block: str | None = None
        self._ram_pages = 0
        self._ram_zero = 0
        self._grid_window = GRID_CELLS_MIN
        # htab part in progress
        self._part_records = 0

    # -- feeding ------------------------------------------------------------

    @property
    def offset(self) -> int:
        """Bytes of the stream consumed so far."""
        return self._base + self._pos

    def receive_data(self, data) -> None:
        if self._eof:
            raise UsageError("receive_data after the end of the stream")
        if not data:
            self._eof = True
            return
        if self._state is DONE:
            return  # the rest of the device state is not ours to read
        mv = memoryview(data).cast("B")
        if self._skip and self._pos == len(self._buf):
            # page bytes never enter the buffer
            n = min(self._skip, len(mv))
            self._skip -= n
            self._compact()
            self._base += n
            mv = mv[n:]
        if len(mv):
            self._buf += mv

    def next_event(self):
        while not self._events:
            if self._state is DONE:
                return END_OF_STREAM
            if self._skip:
                n = min(self._skip, len(self._buf) - self._pos)
                self._pos += n
                self._skip -= n
                if self._skip:
                    return self._need()
            if not self._dispatch[self._state]():
                return self._need()
        return self._events.popleft()

    def _need(self):
        if self._eof:
            at = self._base + self._pos
            if self._state is SECTION and self._pos >= len(self._buf):
                raise _error(f"stream ends at offset {at:#x} before any device-state section", at)
            if self._skip:
                raise _error(
                    f"stream ends at offset {at:#x} inside a RAM page: {self._skip} more bytes expected", at
                )
            raise _error(f"stream ends at offset {at:#x} inside {self._what}", at)
        self._compact()
        return NEED_DATA

    def _compact(self) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._base += self._pos
            self._pos = 0

    def _at(self, pos: int | None = None) -> int:
        return self._base + (self._pos if pos is None else pos)

    # -- file header and sections -------------------------------------------

    def _file_header(self) -> bool:
        c = _Cursor(self._buf, self._pos)
        try:
            magic, version = c.be32(), c.be32()
        except _Short:
            return False
        if magic != QEMU_VM_FILE_MAGIC:
            raise _error(
                f"not a QEMU migration stream: magic {magic:#010x} at offset {self._at():#x}, "
                f"expected {QEMU_VM_FILE_MAGIC:#010x} ('QEVM')",
                self._at(),
            )
        if version == QEMU_VM_FILE_VERSION_COMPAT:
            raise _error(
                f"migration stream version 2 at offset {self._at() + 4:#x} is QEMU's obsolete format: "
                f"only version {QEMU_VM_FILE_VERSION} can be walked",
                self._at() + 4,
            )
        if version != QEMU_VM_FILE_VERSION:
            raise _error(
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
        c = _Cursor(self._buf, self._pos + 1)
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
                raise _error(f"unknown section type {kind:#04x} at offset {at:#x}", at)
        except _Short:
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
                raise _error(
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
                raise _error(f"START of section id {section_id} ({name!r}) at offset {at:#x}: that id is already in use", at)
            if name == RAM_SECTION:
                want, state = RAM_VERSION, RAM
            elif name == HTAB_SECTION:
                want, state = HTAB_VERSION, HTAB_START
            else:
                raise _error(
                    f"unknown iterative section {name!r} (id {section_id}, START) at offset {at:#x}: "
                    f"only {RAM_SECTION!r} and {HTAB_SECTION!r} can be walked",
                    at,
                )
            if version_id != want:
                raise _error(
                    f"section {name!r} version {version_id} at offset {at:#x}: only version {want} is known", at
                )
            sec = _Section(section_id, name, instance_id, version_id, at)
            self.sections[section_id] = sec
        else:
            sec = self.sections.get(section_id)
            if sec is None:
                raise _error(f"{kind_name} section at offset {at:#x} names section id {section_id}, which has no START", at)
            if sec.ended:
                raise _error(
                    f"{kind_name} section at offset {at:#x} for section {sec.name!r} (id {section_id}) after its END", at
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
            self._ram_pages = self._ram_zero = 0
            self._what = f"the {kind_name} section of {RAM_SECTION!r} at offset {at:#x}"
        else:
            self._what = f"the {kind_name} section of {HTAB_SECTION!r} at offset {at:#x}"
        return True

    def _command(self, c: _Cursor, at: int) -> bool:
        """QEMU_VM_COMMAND: be16 command, be16 length, then its payload
        (loadvm_process_command).  Only a command that carries no state and
        leaves the sections after it as they are is walked past; every
        other is refused by name, with its offset."""
        command, length = int.from_bytes(c.take(2), "big"), int.from_bytes(c.take(2), "big")
        name = MIG_CMD_NAMES.get(command)
        if name is None:
            raise _error(
                f"QEMU_VM_COMMAND with unknown command {command} (length {length}) at offset {at:#x}: "
                "QEMU's loadvm_process_command refuses it",
                at,
            )
        if command not in MIG_CMD_WALKED:
            raise _error(
                f"QEMU_VM_COMMAND {name} (command {command}) at offset {at:#x}: {MIG_CMD_REFUSED[command]}: "
                "such a stream cannot be walked",
                at,
            )
        if length != MIG_CMD_WALKED[command]:
            raise _error(
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
                raise _error(
                    f"{what} at offset {at:#x} comes before the END of iterative section "
                    f"{sec.name!r} (id {sec.section_id}, START at {sec.offset:#x})" + (f": {why}" if why else ""),
                    at,
                )

    def _configuration(self, c: _Cursor, at: int) -> bool:
        if self._seen_section or self.configuration is not None:
            raise _error(f"configuration section at offset {at:#x}: it may only follow the file header", at)
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
                    raise _error(
                        f"target page bits {bits} in the configuration at offset {sub_at:#x}: "
                        f"the walker expects pages of {self.page_size} bytes",
                        sub_at,
                    )
            elif name == "configuration/capabilities":
                caps += [c.idstr() for _ in range(c.be32())]
            elif name == "configuration/uuid":
                c.take(16)
            else:
                raise _error(f"unknown configuration subsection {name!r} at offset {sub_at:#x}", sub_at)
            if version != 1:
                raise _error(f"configuration subsection {name!r} version {version} at offset {sub_at:#x}", sub_at)
            subs.append(name)
        if c.pos >= len(self._buf) and not self._eof:
            raise _Short  # a subsection may follow
        unknown = [cap for cap in caps if cap not in KNOWN_CAPABILITIES]
        if unknown:
            raise _error(
                f"migration capability {unknown[0]!r} in the configuration at offset {at:#x} "
                "changes the stream layout: it cannot be walked",
                at,
            )
        self.capabilities = tuple(caps)
        self.configuration = Configuration(machine, tuple(caps), tuple(subs), at)
        self._events.append(self.configuration)
        self._pos = c.pos
        return True

    def _footer(self) -> bool:
        sec = self._cur
        at = self._at()
        if self.footers is None:
            if self._pos >= len(self._buf):
                self._what = f"the footer of the {self._cur_kind} section of {sec.name!r} at offset {self._cur_offset:#x}"
                return False
            self.footers = self._buf[self._pos] == QEMU_VM_SECTION_FOOTER
        footer_offset = None
        if self.footers:
            c = _Cursor(self._buf, self._pos)
            try:
                mark, section_id = c.u8(), c.be32()
            except _Short:
                self._what = f"the footer of the {self._cur_kind} section of {sec.name!r} at offset {self._cur_offset:#x}"
                return False
            if mark != QEMU_VM_SECTION_FOOTER:
                raise _error(
                    f"expected a section footer (0x7e) at offset {at:#x} after the {self._cur_kind} payload of "
                    f"{sec.name!r} (id {sec.section_id}), found {mark:#04x}",
                    at,
                )
            if section_id != sec.section_id:
                raise _error(
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

    # -- ram -----------------------------------------------------------------

    def _ram(self) -> bool:
        """Walk RAM items as far as the buffer goes; True if any progress."""
        buf, mask = self._buf, self._mask
        end = len(buf)
        start = pos = self._pos
        page = self.page_size
        while end - pos >= 8:
            word = _BE64.unpack_from(buf, pos)[0]
            flags, addr = word & mask, word & ~mask
            main = flags & ~RAM_SAVE_FLAG_CONTINUE
            if flags & RAM_SAVE_FLAG_CONTINUE and main in (RAM_SAVE_FLAG_ZERO, RAM_SAVE_FLAG_PAGE):
                # two CONTINUE zero/page items in a row: try the grid
                nxt = pos + (9 if main == RAM_SAVE_FLAG_ZERO else 8 + page)
                if nxt + 8 <= end and (buf[nxt + 6] << 8 | buf[nxt + 7]) & mask in _GRID_FLAGS:
                    got = self._ram_grid(pos, end)
                    if got > pos:
                        pos = got
                        continue
            if flags & ~(RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_MEM_SIZE | RAM_SAVE_FLAG_EOS | RAM_SAVE_FLAG_CONTINUE):
                self._pos = pos
                raise self._ram_flags_error(flags, pos)
            if main == RAM_SAVE_FLAG_EOS:
                if flags != RAM_SAVE_FLAG_EOS or addr:
                    raise self._ram_error(f"an end-of-section item with flags {flags:#x} and address {addr:#x}", pos)
                pos += 8
                self._pos = pos
                self._events.append(
                    RamSkipped(
                        self._cur.section_id, self._cur_kind, self._at() - self._cur_payload,
                        self._ram_pages, self._ram_zero, self._cur_payload,
                    )
                )
                self._state = FOOTER
                return True
            if main == RAM_SAVE_FLAG_MEM_SIZE:
                if flags != RAM_SAVE_FLAG_MEM_SIZE:
                    raise self._ram_error(f"a block list item with flags {flags:#x}", pos)
                got = self._ram_block_list(pos, addr)
                if got is None:
                    break
                pos = got
                continue
            if main not in (RAM_SAVE_FLAG_ZERO, RAM_SAVE_FLAG_PAGE):
                raise self._ram_error(f"RAM page flags {flags:#x}: no single page kind", pos)
            q = pos + 8
            if flags & RAM_SAVE_FLAG_CONTINUE:
                block = self._last_block
                if block is None:
                    raise self._ram_error("a RAM page with CONTINUE but no block before it", pos)
            else:
                if q >= end or q + 1 + buf[q] > end:
                    break
                block = bytes(buf[q + 1 : q + 1 + buf[q]]).decode("latin-1")
                q += 1 + buf[q]
                if block not in self.ram_blocks:
                    raise self._ram_error(f"a RAM page of unknown block {block!r}", pos)
            if addr >= self.ram_blocks[block]:
                raise self._ram_error(
                    f"RAM page address {addr:#x} past the end of block {block!r} ({self.ram_blocks[block]:#x} bytes)", pos
                )
            if main == RAM_SAVE_FLAG_ZERO:
                if q >= end:
                    break
                pos = q + 1
                self._ram_zero += 1
            else:
                self._ram_pages += 1
                if q + page <= end:
                    pos = q + page
                else:
                    self._skip = q + page - end
                    pos = end
            self._last_block = block
        self._pos = pos
        return pos > start

    def _ram_grid(self, pos: int, end: int) -> int:
        """The fast path: CONTINUE zero pages and whole pages from pos, found
        on the 9-byte grid on which such items lie (a zero item is 9 bytes,
        a whole 4 KiB page item 8 + 4096 = 456 * 9).  The flags of every
        cell are computed at once; the runs of zero items between whole
        pages are hopped over in Python, and the addresses of the items on
        the path are checked against the block at once.  Stops before
        anything else (a block name, EOS, a page cut by the buffer's end,
        an address past the block) and leaves it to the item loop, which
        names any error.  Returns the position reached."""
        block = self._last_block
        if block is None:
            return pos
        k = min((end - pos) // 9, self._grid_window)
        cells = np.frombuffer(self._buf, dtype=np.uint8, count=9 * k, offset=pos).reshape(k, 9)
        try:
            flags = (cells[:, 6].astype(np.uint16) << 8 | cells[:, 7]) & self._mask
            stops = np.flatnonzero(flags != RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE)
            page_cells = (8 + self.page_size) // 9 if (8 + self.page_size) % 9 == 0 else 0
            page_flags = RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_CONTINUE
            starts, ends, pages = [], [], []  # runs of zero items, whole pages after them
            i, n_stops = 0, len(stops)
            while i < k:
                s = stops.searchsorted(i)
                j = int(stops[s]) if s < n_stops else k
                starts.append(i)
                ends.append(j)
                if j < k and page_cells and flags[j] == page_flags and j + page_cells <= k:
                    pages.append(j)
                    i = j + page_cells
                else:
                    break
            path = np.zeros(k, dtype=bool)
            for a, b in zip(starts, ends):
                path[a:b] = True
            path[pages] = True
            cell_index = np.flatnonzero(path)
            addrs = np.ascontiguousarray(cells[cell_index, :8]).view(">u8").ravel() & np.uint64(~self._mask & (2**64 - 1))
        finally:
            del cells  # no view of the buffer may outlive the call: it is resized later
        reached = ends[-1] if not pages or pages[-1] < ends[-1] else pages[-1] + page_cells
        bad = np.flatnonzero(addrs >= self.ram_blocks[block])
        if len(bad):
            reached = int(cell_index[bad[0]])  # the item loop will name it
        # the window grows while the grid walks most of it, and shrinks when
        # it stops early: its cost is in proportion to the window
        if 2 * reached >= k:
            self._grid_window = min(4 * self._grid_window, GRID_CELLS)
        else:
            self._grid_window = max(GRID_CELLS_MIN, self._grid_window // 4)
        pages_before = int(np.searchsorted(pages, reached)) if pages else 0
        zeros = int(np.count_nonzero(path[:reached])) - pages_before
        self._ram_zero += zeros
        self._ram_pages += pages_before
        return pos + 9 * reached

    def _ram_block_list(self, pos: int, total: int) -> int | None:
        """The MEM_SIZE item at pos: the RAM block list.  Its end, or None."""
        c = _Cursor(self._buf, pos + 8)
        blocks = {}
        left = total
        try:
            while left:
                entry = c.pos
                name = c.idstr()
                length = c.be64()
                if "x-ignore-shared" in self.capabilities:
                    c.be64()  # the block's guest-physical address
                if length > left:
                    raise self._ram_error(
                        f"RAM block {name!r} of {length:#x} bytes overruns the {total:#x} bytes the block list announces",
                        entry,
                    )
                if length & self._mask:
                    raise self._ram_error(f"RAM block {name!r} length {length:#x} is not a whole number of pages", entry)
                if not length:
                    # QEMU announces only blocks with memory; an empty one would let a
                    # hostile list grow without end (and be re-read as it arrives)
                    raise self._ram_error(f"RAM block {name!r} of length 0: QEMU announces only blocks with memory", entry)
                if name in blocks:
                    raise self._ram_error(f"RAM block {name!r} is announced twice", entry)
                if len(blocks) >= MAX_RAM_BLOCKS:
                    raise self._ram_error(f"more than {MAX_RAM_BLOCKS} RAM blocks", entry)
                blocks[name] = length
                left -= length
        except _Short:
            return None
        self.ram_blocks.update(blocks)
        return c.pos

    def _ram_flags_error(self, flags: int, pos: int) -> QemuStreamError:
        for bit, why in RAM_REFUSED_FLAGS.items():
            if flags & bit:
                return self._ram_error(f"unsupported RAM page flag {bit:#x} ({why})", pos)
        return self._ram_error(f"unknown RAM page flags {flags:#x}", pos)

    def _ram_error(self, what: str, pos: int) -> QemuStreamError:
        at = self._at(pos)
        return _error(
            f"{what} at offset {at:#x} (in the {self._cur_kind} section of {RAM_SECTION!r} at {self._cur_offset:#x})",
            at,
        )

    # -- spapr/htab ---------------------------------------------------------

    def _read_shift(self) -> int | None:
        if len(self._buf) - self._pos < 4:
            return None
        at = self._at()
        shift = _BE32.unpack_from(self._buf, self._pos)[0]
        if shift == NO_HPT:
            raise _error(f"htab_shift -1 at offset {at:#x}: the guest uses the radix MMU, it has no HPT", at)
        if self.htab_shift is not None:
            raise _error(f"a second htab START at offset {at:#x}", at)
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
        word = _BE32.unpack_from(self._buf, self._pos)[0]
        if word == NO_HPT:
            raise _error(f"htab part header -1 at offset {at:#x}: the guest uses the radix MMU, it has no HPT", at)
        if word != 0:
            raise _error(
                f"htab part at offset {at:#x} starts with {word:#x}: expected 0 (a nonzero header "
                "would make QEMU's htab_load reallocate the table)",
                at,
            )
        self._pos += 4
        self.htab_parts += 1
        self._part_records = 0
        self._state = HTAB_RECORDS
        return True

    def _bare_part(self) -> bool:
        if self._pos >= len(self._buf) and self._eof:
            if not self.htab_parts:
                at = self._at()
                raise _error(
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
        end = len(buf)
        start = pos = self._pos
        limit = 1 << (self.htab_shift - 4)
        count = 0
        marker = False
        while end - pos >= HEADER_SIZE:
            index, n_valid, n_invalid = _RECORD.unpack_from(buf, pos)
            if not (index or n_valid or n_invalid):
                marker = True
                break
            if index + n_valid + n_invalid > limit:
                at = self._at(pos)
                raise _error(
                    f"htab record at offset {at:#x}: index {index} + n_valid {n_valid} + n_invalid "
                    f"{n_invalid} runs past the table of {limit} entries (htab_shift {self.htab_shift}); "
                    "QEMU's htab_load refuses it",
                    at,
                )
            nxt = pos + HEADER_SIZE + 16 * n_valid
            if nxt > end:
                break
            pos = nxt
            count += 1
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


class QemuSource:
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
                raise _error(
                    f"no {HTAB_SECTION!r} section before {where} at offset {event.offset:#x}: "
                    "not a pseries guest with a hashed page table",
                    event.offset,
                )
        if start is None:
            raise _error("the stream ended before an htab START", self.walker.offset)
        self._start = start
        source = {
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
                start = part_start if part_start is not None else event.offset - 4 - (raw - part_raw if part_raw is not None else 0)
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
_PARTS_COUNT = struct.Struct("<I")
_PART_ENTRY = struct.Struct("<IIQQQQ")
_KIND_CODES = {"PART": QEMU_VM_SECTION_PART, "END": QEMU_VM_SECTION_END}
#: parts per frame: the body stays within the container's limit on optional frames (64 KiB)
PARTS_PER_FRAME = 1600


def parts_frames(parts) -> list[tuple[bytes, bytes]]:
    """(tag, body) of the frames listing ``parts`` (QemuPart), in order;
    none without parts."""
    frames = []
    for k in range(0, len(parts), PARTS_PER_FRAME):
        group = parts[k : k + PARTS_PER_FRAME]
        body = _PARTS_COUNT.pack(len(group)) + b"".join(
            _PART_ENTRY.pack(p.part, _KIND_CODES[p.kind], p.offset, p.records, p.raw_offset, p.raw_bytes)
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
        if len(body) < _PARTS_COUNT.size:
            raise _error(f"a {PARTS_TAG.decode()} frame of {len(body)} bytes lists no parts")
        (count,) = _PARTS_COUNT.unpack_from(body)
        if len(body) != _PARTS_COUNT.size + count * _PART_ENTRY.size:
            raise _error(f"a {PARTS_TAG.decode()} frame of {len(body)} bytes for {count} parts")
        for k in range(count):
            number, code, offset, recs, raw_offset, raw_bytes = _PART_ENTRY.unpack_from(
                body, _PARTS_COUNT.size + k * _PART_ENTRY.size
            )
            if code not in kinds:
                raise _error(f"a {PARTS_TAG.decode()} frame names part {number} of kind {code}")
            parts.append(QemuPart(number, kinds[code], offset, recs, raw_offset, raw_bytes))
    return parts


# -- writing: section payloads and spliced streams ---------------------------------


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
        raise UsageError(f"htab_shift {shift} is outside {HTAB_SHIFT_MIN}..{HTAB_SHIFT_MAX} (the architected HPT sizes)")
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


def _write_part(out: BinaryIO, chunks: Iterable[bytes], stats: SectionStats) -> None:
    out.write(bytes(4))  # the iteration header: be32 0
    stats.nbytes += 4
    for chunk in chunks:
        out.write(chunk)
        stats.nbytes += len(chunk)
    out.write(HTAB_END_MARKER)
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
    n_entries = 1 << (shift - 4)
    out.write(_BE32.pack(shift))
    stats.nbytes += 4
    for pass_number, group in groupby(pieces, key=lambda piece: piece[0]):
        chunks = (_qemu_records(data, byte_order, n_entries, pass_number, stats) for _, data in group)
        _write_part(out, chunks, stats)
    if not stats.parts:
        _write_part(out, (), stats)
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
    n_entries = 1 << (shift - 4)
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
            raise _error(
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
                _write_part(_Writer(emit), next_pass(), stats.htab)
                if next(groups, None) is not None:
                    raise UsageError(f"the pieces hold records of more than the {passes} passes announced")
        elif isinstance(event, SectionEnd) and event.name == HTAB_SECTION:
            if event.kind == "START":
                flush(event.end)
                # the snapshot's passes but the last, each a PART section of its own
                head = bytes([QEMU_VM_SECTION_PART]) + _BE32.pack(event.section_id)
                foot = bytes([QEMU_VM_SECTION_FOOTER]) + _BE32.pack(event.section_id) if walker.footers else b""
                for _ in range(passes - 1):
                    emit(head)
                    _write_part(_Writer(emit), next_pass(), stats.htab)
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
                raise _error(
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


class _Writer:
    """A file-like ``write`` over a function."""

    def __init__(self, fn):
        self.write = fn
