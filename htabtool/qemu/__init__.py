"""QEMU migration streams: read and write the ``spapr/htab`` section.

A sans-I/O walker in the style of h11 (bytes in, events out), with files at
the edge.  What lives where, and what each module may import:

- :mod:`~htabtool.qemu.format`: QEMU's constants as QEMU names them
  (migration/savevm.c, migration/ram.c, hw/ppc/spapr.c), the byte layouts
  and :func:`~htabtool.qemu.format.stream_error`.  Imports
  :mod:`htabtool.errors`, :mod:`htabtool.hpte` and :mod:`htabtool.records` only.
- :mod:`~htabtool.qemu.ram`: RAM items walked past, pages never kept
  (:class:`~htabtool.qemu.ram.RamWalk`, with the numpy fast path).
  Imports ``format``.
- :mod:`~htabtool.qemu.htab`: the htab section's framing (the START shift,
  the part header, the records and end marker) and QEMU's parts as a
  snapshot keeps them (:class:`QemuPart`, the ``qprt`` frame).  Imports
  ``format`` and :mod:`htabtool.records`.
- :mod:`~htabtool.qemu.walker`: :class:`MigrationWalker` and its events
  (:class:`FileHeader`, :class:`SectionBegin`, :class:`HtabRecords`, ...).
  Sans I/O: imports ``format``, ``ram``, ``htab``, :mod:`htabtool.sansio`,
  :mod:`htabtool.records` and :mod:`htabtool.errors`; no I/O module.
- :mod:`~htabtool.qemu.source`: the I/O adapter, a file read as events
  (:func:`iter_events`) or as snapshot pieces (:class:`QemuSource`).
- :mod:`~htabtool.qemu.write`: section payloads (:func:`write_section`)
  and a migration stream spliced with a snapshot's htab (:func:`splice`).

``source`` and ``write`` are the only modules here that import
:mod:`htabtool.sources`, and this file loads them only when one of their
names is asked for (``from htabtool.qemu import QemuSource`` works as
ever): importing the walker loads no I/O module.  Nothing here imports
the CLI, the container or the simulated kernel.

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
- the ``ram`` and ``spapr/htab`` payloads: see :mod:`htabtool.qemu.ram`
  and :mod:`htabtool.qemu.htab`.
"""

from typing import TYPE_CHECKING

from htabtool.lazy import lazy_exports
from htabtool.qemu.format import (
    HTAB_END_MARKER,
    HTAB_SECTION,
    HTAB_SHIFT_MAX,
    HTAB_SHIFT_MIN,
    HTAB_VERSION,
    KNOWN_CAPABILITIES,
    MAX_RAM_BLOCKS,
    MIG_CMD_ENABLE_COLO,
    MIG_CMD_INVALID,
    MIG_CMD_NAMES,
    MIG_CMD_OPEN_RETURN_PATH,
    MIG_CMD_PACKAGED,
    MIG_CMD_PING,
    MIG_CMD_POSTCOPY_ADVISE,
    MIG_CMD_POSTCOPY_LISTEN,
    MIG_CMD_POSTCOPY_RAM_DISCARD,
    MIG_CMD_POSTCOPY_RESUME,
    MIG_CMD_POSTCOPY_RUN,
    MIG_CMD_RECV_BITMAP,
    MIG_CMD_REFUSED,
    MIG_CMD_SWITCHOVER_START,
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
    QEMU_VM_VMDESCRIPTION,
    RAM_REFUSED_FLAGS,
    RAM_SAVE_FLAG_COMPRESS_PAGE,
    RAM_SAVE_FLAG_CONTINUE,
    RAM_SAVE_FLAG_EOS,
    RAM_SAVE_FLAG_FULL,
    RAM_SAVE_FLAG_HOOK,
    RAM_SAVE_FLAG_MEM_SIZE,
    RAM_SAVE_FLAG_MULTIFD_FLUSH,
    RAM_SAVE_FLAG_PAGE,
    RAM_SAVE_FLAG_XBZRLE,
    RAM_SAVE_FLAG_ZERO,
    RAM_SECTION,
    RAM_VERSION,
    SECTION_KINDS,
    TARGET_PAGE_SIZE,
)
from htabtool.qemu.htab import (
    PARTS_PER_FRAME,
    PARTS_TAG,
    QemuPart,
    parts_frames,
    parts_from_frames,
)
from htabtool.qemu.ram import (
    GRID_CELLS,
    GRID_CELLS_MIN,
)
from htabtool.qemu.walker import (
    BARE_PART,
    BARE_START,
    DONE,
    END_OF_STREAM,
    FILE_HEADER,
    FOOTER,
    HTAB_PART,
    HTAB_RECORDS,
    HTAB_START,
    NEED_DATA,
    RAM,
    SECTION,
    Command,
    Configuration,
    DeviceState,
    FileHeader,
    HtabPartEnd,
    HtabRecords,
    HtabStart,
    MigrationWalker,
    RamSkipped,
    SectionBegin,
    SectionEnd,
    VmEof,
)

if TYPE_CHECKING:
    from htabtool.qemu.source import QemuSource, iter_events
    from htabtool.qemu.write import SectionStats, SpliceStats, splice, write_section

#: the names of the I/O modules, loaded when first asked for, so that
#: importing the walker (which runs this file first) loads no I/O module
_AT_THE_EDGE = {
    "QemuSource": "source",
    "iter_events": "source",
    "SectionStats": "write",
    "SpliceStats": "write",
    "splice": "write",
    "write_section": "write",
}


__getattr__, __dir__ = lazy_exports(__name__, _AT_THE_EDGE)

__all__ = [
    "QEMU_VM_FILE_MAGIC",
    "QEMU_VM_FILE_VERSION_COMPAT",
    "QEMU_VM_FILE_VERSION",
    "QEMU_VM_EOF",
    "QEMU_VM_SECTION_START",
    "QEMU_VM_SECTION_PART",
    "QEMU_VM_SECTION_END",
    "QEMU_VM_SECTION_FULL",
    "QEMU_VM_SUBSECTION",
    "QEMU_VM_VMDESCRIPTION",
    "QEMU_VM_CONFIGURATION",
    "QEMU_VM_COMMAND",
    "QEMU_VM_SECTION_FOOTER",
    "MIG_CMD_INVALID",
    "MIG_CMD_OPEN_RETURN_PATH",
    "MIG_CMD_PING",
    "MIG_CMD_POSTCOPY_ADVISE",
    "MIG_CMD_POSTCOPY_LISTEN",
    "MIG_CMD_POSTCOPY_RUN",
    "MIG_CMD_POSTCOPY_RAM_DISCARD",
    "MIG_CMD_PACKAGED",
    "MIG_CMD_ENABLE_COLO",
    "MIG_CMD_POSTCOPY_RESUME",
    "MIG_CMD_RECV_BITMAP",
    "MIG_CMD_SWITCHOVER_START",
    "MIG_CMD_NAMES",
    "MIG_CMD_WALKED",
    "MIG_CMD_REFUSED",
    "SECTION_KINDS",
    "RAM_SAVE_FLAG_FULL",
    "RAM_SAVE_FLAG_ZERO",
    "RAM_SAVE_FLAG_MEM_SIZE",
    "RAM_SAVE_FLAG_PAGE",
    "RAM_SAVE_FLAG_EOS",
    "RAM_SAVE_FLAG_CONTINUE",
    "RAM_SAVE_FLAG_XBZRLE",
    "RAM_SAVE_FLAG_HOOK",
    "RAM_SAVE_FLAG_COMPRESS_PAGE",
    "RAM_SAVE_FLAG_MULTIFD_FLUSH",
    "RAM_REFUSED_FLAGS",
    "RAM_SECTION",
    "MAX_RAM_BLOCKS",
    "RAM_VERSION",
    "HTAB_SECTION",
    "HTAB_VERSION",
    "TARGET_PAGE_SIZE",
    "GRID_CELLS",
    "GRID_CELLS_MIN",
    "HTAB_SHIFT_MIN",
    "HTAB_SHIFT_MAX",
    "NO_HPT",
    "HTAB_END_MARKER",
    "KNOWN_CAPABILITIES",
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
    "FILE_HEADER",
    "SECTION",
    "FOOTER",
    "RAM",
    "HTAB_START",
    "HTAB_PART",
    "HTAB_RECORDS",
    "BARE_START",
    "BARE_PART",
    "DONE",
    "MigrationWalker",
    "iter_events",
    "QemuSource",
    "QemuPart",
    "PARTS_TAG",
    "PARTS_PER_FRAME",
    "parts_frames",
    "parts_from_frames",
    "SectionStats",
    "SpliceStats",
    "write_section",
    "splice",
    "NEED_DATA",
    "END_OF_STREAM",
]
