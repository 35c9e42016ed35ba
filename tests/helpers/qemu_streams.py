"""QEMU migration streams built field by field (htabtool-qemu(7)): the one
set of builders for the walker's tests, the fuzzers and the catalogue of
bad inputs, and a small sound stream made of them.

A stream is a dict of named pieces in order; :func:`join_pieces` makes the
bytes (with pieces replaced, or left out with None) and :func:`piece_offset`
says where a piece starts, so that a test can name the offsets its errors
must report.  Nothing here imports pytest.
"""

from __future__ import annotations

import struct

from tests.helpers.tables import record

QEVM_MAGIC = 0x5145564D
RAM_BLOCK = b"ppc_spapr.ram"
RAM_BLOCK_LENGTH = 1 << 20
PAGE_SIZE = 4096


def be16(x: int) -> bytes:
    return struct.pack(">H", x)


def be32(x: int) -> bytes:
    return struct.pack(">I", x & 0xFFFFFFFF)


def be64(x: int) -> bytes:
    return struct.pack(">Q", x)


def idstr(name: bytes) -> bytes:
    return bytes([len(name)]) + name


#: RAM_SAVE_FLAG_EOS: the end of a RAM section's items
EOS = be64(0x10)
#: the end of a spapr/htab PART or END payload: a record header of zeros
HTAB_END_MARKER = bytes(8)


def file_header(magic: int = QEVM_MAGIC, version: int = 3) -> bytes:
    return be32(magic) + be32(version)


def configuration(machine: bytes = b"pseries-7.2", subsections: bytes = b"") -> bytes:
    return b"\x07" + be32(len(machine)) + machine + subsections


def section_start(section_id: int, name: bytes, version: int, instance: int = 0, kind: int = 0x01) -> bytes:
    """A START (or, with ``kind`` 0x04, FULL) section header."""
    return bytes([kind]) + be32(section_id) + idstr(name) + be32(instance) + be32(version)


def section_part(section_id: int, kind: int = 0x02) -> bytes:
    """A PART (or, with ``kind`` 0x03, END) section header."""
    return bytes([kind]) + be32(section_id)


def footer(section_id: int) -> bytes:
    return b"\x7e" + be32(section_id)


def block_list(blocks=((RAM_BLOCK, RAM_BLOCK_LENGTH),)) -> bytes:
    """The RAM section's START payload: total size | MEM_SIZE, then the blocks."""
    total = sum(length for _, length in blocks)
    return be64(total | 0x04) + b"".join(idstr(n) + be64(length) for n, length in blocks)


def ram_item(address: int, flags: int = 0x08, page: bytes | None = None, block: bytes | None = RAM_BLOCK) -> bytes:
    """A RAM item: with ``block`` the block name follows, else CONTINUE;
    a zero page (0x02) carries its fill byte, a page (0x08) its data
    (default: the page number's low byte, repeated)."""
    head = be64(address | flags | (0 if block else 0x20)) + (idstr(block) if block else b"")
    if flags & 0x02:
        return head + b"\x00"
    if flags & 0x08:
        return head + (page if page is not None else bytes([address >> 12 & 0xFF]) * PAGE_SIZE)
    return head


def htab_record(index: int, entries=(), n_invalid: int = 0) -> bytes:
    """A record in a spapr/htab section: big-endian, whatever the host."""
    return record(index, entries, n_invalid, byte_order="big")


def htab_payload(*records: bytes) -> bytes:
    """A PART/END payload: be32 0, big-endian records, the end marker."""
    return be32(0) + b"".join(records) + HTAB_END_MARKER


def join_pieces(pieces: dict, **replace) -> bytes:
    """The stream of ``pieces`` with named pieces replaced (None: left out)."""
    merged = dict(pieces, **replace)
    return b"".join(v for v in merged.values() if v is not None)


def piece_offset(pieces: dict, name: str) -> int:
    """Offset of the piece ``name`` in the stream of ``pieces``."""
    at = 0
    for key, value in pieces.items():
        if key == name:
            return at
        at += len(value)
    raise KeyError(name)


# -- a small sound stream: one 1 MiB RAM block, a 2**18-byte table ---------------------

RAM_ID, HTAB_ID = 2, 5
HTAB_SHIFT = 18
PART1 = (htab_record(8, [(0x4000000000001015, 0x190), (0x4000000000001095, 0x10190)]),
         htab_record(100, [(0x4000000000001115, 0x20190)]))
PART2 = (htab_record(9, [], 1), htab_record(50, [(0x4000000000001195, 0x30190)], 2))
DEVICE_STATE = section_start(0, b"timer", 2, kind=0x04) + bytes(24) + footer(0) + b"\x00"


def qemu_pieces(shift: int = HTAB_SHIFT) -> dict:
    """The pieces of a small migration stream, by name, in order."""
    return {
        "header": file_header(),
        "config": configuration(),
        "ram_start": section_start(RAM_ID, b"ram", 4) + block_list() + EOS + footer(RAM_ID),
        "htab_start": section_start(HTAB_ID, b"spapr/htab", 1) + be32(shift) + footer(HTAB_ID),
        "ram_part": section_part(RAM_ID) + ram_item(0, 0x08) + ram_item(PAGE_SIZE, 0x02, block=None)
        + ram_item(2 * PAGE_SIZE, 0x08, block=None) + EOS + footer(RAM_ID),
        "htab_part": section_part(HTAB_ID) + htab_payload(*PART1) + footer(HTAB_ID),
        "ram_end": section_part(RAM_ID, 0x03) + EOS + footer(RAM_ID),
        "htab_end": section_part(HTAB_ID, 0x03) + htab_payload(*PART2) + footer(HTAB_ID),
        "device": DEVICE_STATE,
    }


def qemu_stream(**replace) -> bytes:
    """The small migration stream with named pieces replaced (None: left out)."""
    return join_pieces(qemu_pieces(), **replace)


def qemu_offset(name: str) -> int:
    """Offset of a named piece in the default stream."""
    return piece_offset(qemu_pieces(), name)


def qemu_section(shift: int = HTAB_SHIFT) -> bytes:
    """Bare spapr/htab section payloads: START, then two parts."""
    return be32(shift) + htab_payload(*PART1) + htab_payload(*PART2)
