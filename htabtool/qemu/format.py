"""QEMU's migration stream format: the numbers as QEMU names them.

The section types, the file magic and version (migration/savevm.c: enum
qemu_vm_cmd, QEMU_VM_*), the RAM item flags (migration/ram.c:
RAM_SAVE_FLAG_*), the htab section's limits (hw/ppc/spapr.c:
htab_save_setup, htab_load, spapr_hpt_shift_for_ramsize), the byte layouts
they are read with (:class:`Cursor`), and :func:`stream_error`, the one way a refusal names its
offset.  No I/O, no state: every other module of :mod:`htabtool.qemu` may
import it, it imports only :mod:`htabtool.errors`, :mod:`htabtool.hpte` and
:mod:`htabtool.records`
(the record header size).
"""

from __future__ import annotations

import struct

from htabtool.errors import QemuStreamError
from htabtool.hpte import table_entries
from htabtool.records import HEADER_SIZE

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
#: spapr_hpt_shift_for_ramsize: "Minimum architected size" and maximum
HTAB_SHIFT_MIN = 18
HTAB_SHIFT_MAX = 46
NO_HPT = 0xFFFFFFFF  # be32 -1: htab_save_setup's "no hash table"
HTAB_END_MARKER = bytes(HEADER_SIZE)
#: capabilities that change the layout of what we walk
KNOWN_CAPABILITIES = {"x-ignore-shared"}

#: the big-endian integers QEMU's qemu_put_be32/_be64 write
BE32 = struct.Struct(">I")
BE64 = struct.Struct(">Q")
#: an htab record's header as QEMU writes it (htab_save_chunk): be32 index,
#: be16 n_valid, be16 n_invalid
HTAB_RECORD_HEADER = struct.Struct(">IHH")


def htab_entries(shift: int) -> int:
    """The entries of a table of htab_shift ``shift`` (log2 of its bytes,
    as spapr's HTAB_SIZE reads it; an entry is 16 bytes)."""
    return table_entries(shift)


def stream_error(message: str, offset: int | None = None) -> QemuStreamError:
    """The refusal of a stream: ``message`` names the byte ``offset``, which
    the error also carries as its ``offset`` attribute."""
    err = QemuStreamError(message)
    err.offset = offset
    return err


class Short(Exception):
    """Not enough bytes buffered for a small structure: wait for more."""


class Cursor:
    """Reads QEMU's small structures (u8, be32, be64, idstr: a u8 length and
    its bytes) from ``buf`` at ``pos``; raises :class:`Short` at its end."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf, pos: int):
        self.buf, self.pos = buf, pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise Short
        data = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return data

    def u8(self) -> int:
        if self.pos >= len(self.buf):
            raise Short
        self.pos += 1
        return self.buf[self.pos - 1]

    def be32(self) -> int:
        return BE32.unpack(self.take(4))[0]

    def be64(self) -> int:
        return BE64.unpack(self.take(8))[0]

    def idstr(self) -> str:
        return self.take(self.u8()).decode("latin-1")
