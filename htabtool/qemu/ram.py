"""RAM pages walked past: the ``ram`` section's items, never kept.

A ``ram`` payload (version 4) is a sequence of be64 ``address | flags``
items, flags in the bits below the target page (migration/ram.c,
ram_load_precopy).  MEM_SIZE 0x04: the RAM block list (u8 length + idstr,
be64 length, for blocks whose lengths add up to the address); ZERO 0x02: a
fill byte; PAGE 0x08: the page; CONTINUE 0x20: same block as the previous
item, else u8 length + idstr follow the header; EOS 0x10 ends the payload.
XBZRLE 0x40, the RDMA hook 0x80, COMPRESS_PAGE 0x100 and MULTIFD_FLUSH
0x200 are refused.

:class:`RamWalk` walks items over a buffer the walker hands it and says how
far it got and how many bytes of a page lie beyond the buffer's end (the
walker drops them as they arrive: a page never enters its buffer).  Sans
I/O: it imports :mod:`htabtool.qemu.format` and numpy only.
"""

from __future__ import annotations

import numpy as np

from htabtool.errors import QemuStreamError
from htabtool.qemu.format import (
    BE64,
    MAX_RAM_BLOCKS,
    RAM_REFUSED_FLAGS,
    RAM_SAVE_FLAG_CONTINUE,
    RAM_SAVE_FLAG_EOS,
    RAM_SAVE_FLAG_MEM_SIZE,
    RAM_SAVE_FLAG_PAGE,
    RAM_SAVE_FLAG_ZERO,
    RAM_SECTION,
    Cursor,
    Short,
    stream_error,
)

__all__ = ["GRID_CELLS", "GRID_CELLS_MIN", "RamWalk"]

#: cells of the 9-byte grid looked at in one go: at most about 1.2 MB of
#: stream, at least about 4.6 KB
GRID_CELLS = 1 << 17
GRID_CELLS_MIN = 1 << 9
_GRID_FLAGS = (RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_CONTINUE, RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_CONTINUE)
#: the flags an item may carry and be walked
_WALKED_FLAGS = (
    RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_MEM_SIZE | RAM_SAVE_FLAG_EOS | RAM_SAVE_FLAG_CONTINUE
)


class RamWalk:
    """The state of the ``ram`` section across its payloads: the block list
    (:attr:`blocks`, name -> length), the block of the last page, and the
    pages and zero pages of the payload under way (reset by :meth:`begin`).

    ``page_size``: the target page (a power of two); ``ignore_shared``: the
    x-ignore-shared capability, which adds each block's address to the
    block list."""

    def __init__(self, page_size: int, *, ignore_shared: bool = False):
        self.page_size = page_size
        self.mask = page_size - 1
        self.ignore_shared = ignore_shared
        self.blocks: dict[str, int] = {}
        self.last_block: str | None = None
        self.pages = 0
        self.zero_pages = 0
        self.kind = ""  # the payload's section kind and offset, for messages
        self.section_offset = 0
        self._grid_window = GRID_CELLS_MIN
        self._base = 0  # stream offset of the buffer walk() was given

    def begin(self, kind: str, section_offset: int) -> None:
        """A payload starts (of a section of ``kind`` at ``section_offset``)."""
        self.kind, self.section_offset = kind, section_offset
        self.pages = self.zero_pages = 0

    def walk(self, buf, pos: int, base: int) -> tuple[int, int, bool]:
        """Walk items of ``buf`` (whose first byte is at stream offset
        ``base``) from ``pos`` as far as it goes: ``(reached, page_left,
        ended)``, ``page_left`` the bytes of a page cut by the buffer's end
        (to be dropped as they arrive), ``ended`` when the EOS item was
        walked (``reached`` is one past it).  Refusals name their offset."""
        self._base = base
        mask = self.mask
        end = len(buf)
        page = self.page_size
        while end - pos >= 8:
            word = BE64.unpack_from(buf, pos)[0]
            flags, addr = word & mask, word & ~mask
            main = flags & ~RAM_SAVE_FLAG_CONTINUE
            if flags & RAM_SAVE_FLAG_CONTINUE and main in (RAM_SAVE_FLAG_ZERO, RAM_SAVE_FLAG_PAGE):
                # two CONTINUE zero/page items in a row: try the grid
                nxt = pos + (9 if main == RAM_SAVE_FLAG_ZERO else 8 + page)
                if nxt + 8 <= end and (buf[nxt + 6] << 8 | buf[nxt + 7]) & mask in _GRID_FLAGS:
                    got = self._grid(buf, pos, end)
                    if got > pos:
                        pos = got
                        continue
            if flags & ~_WALKED_FLAGS:
                raise self._flags_error(flags, pos)
            if main == RAM_SAVE_FLAG_EOS:
                if flags != RAM_SAVE_FLAG_EOS or addr:
                    raise self._error(f"an end-of-section item with flags {flags:#x} and address {addr:#x}", pos)
                return pos + 8, 0, True
            if main == RAM_SAVE_FLAG_MEM_SIZE:
                if flags != RAM_SAVE_FLAG_MEM_SIZE:
                    raise self._error(f"a block list item with flags {flags:#x}", pos)
                listed = self._block_list(buf, pos, addr)
                if listed is None:
                    break
                pos = listed
                continue
            if main not in (RAM_SAVE_FLAG_ZERO, RAM_SAVE_FLAG_PAGE):
                raise self._error(f"RAM page flags {flags:#x}: no single page kind", pos)
            q = pos + 8
            if flags & RAM_SAVE_FLAG_CONTINUE:
                block = self.last_block
                if block is None:
                    raise self._error("a RAM page with CONTINUE but no block before it", pos)
            else:
                if q >= end or q + 1 + buf[q] > end:
                    break
                block = bytes(buf[q + 1 : q + 1 + buf[q]]).decode("latin-1")
                q += 1 + buf[q]
                if block not in self.blocks:
                    raise self._error(f"a RAM page of unknown block {block!r}", pos)
            if addr >= self.blocks[block]:
                raise self._error(
                    f"RAM page address {addr:#x} past the end of block {block!r} ({self.blocks[block]:#x} bytes)", pos
                )
            if main == RAM_SAVE_FLAG_ZERO:
                if q >= end:
                    break
                pos = q + 1
                self.zero_pages += 1
            else:
                self.pages += 1
                if q + page > end:
                    self.last_block = block
                    return end, q + page - end, False
                pos = q + page
            self.last_block = block
        return pos, 0, False

    def _grid(self, buf, pos: int, end: int) -> int:
        """The fast path: CONTINUE zero pages and whole pages from pos, found
        on the 9-byte grid on which such items lie (a zero item is 9 bytes,
        a whole 4 KiB page item 8 + 4096 = 456 * 9).  The flags of every
        cell are computed at once; the runs of zero items between whole
        pages are hopped over in Python, and the addresses of the items on
        the path are checked against the block at once.  Stops before
        anything else (a block name, EOS, a page cut by the buffer's end,
        an address past the block) and leaves it to the item loop, which
        names any error.  Returns the position reached."""
        block = self.last_block
        if block is None:
            return pos
        k = min((end - pos) // 9, self._grid_window)
        cells = np.frombuffer(buf, dtype=np.uint8, count=9 * k, offset=pos).reshape(k, 9)
        flags = (cells[:, 6].astype(np.uint16) << 8 | cells[:, 7]) & self.mask
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
        addrs = np.ascontiguousarray(cells[cell_index, :8]).view(">u8").ravel() & np.uint64(~self.mask & (2**64 - 1))
        reached = ends[-1] if not pages or pages[-1] < ends[-1] else pages[-1] + page_cells
        bad = np.flatnonzero(addrs >= self.blocks[block])
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
        self.zero_pages += zeros
        self.pages += pages_before
        return pos + 9 * reached

    def _block_list(self, buf, pos: int, total: int) -> int | None:
        """The MEM_SIZE item at pos: the RAM block list.  Its end, or None."""
        c = Cursor(buf, pos + 8)
        blocks: dict[str, int] = {}
        left = total
        try:
            while left:
                entry = c.pos
                name = c.idstr()
                length = c.be64()
                if self.ignore_shared:
                    c.be64()  # the block's guest-physical address
                if length > left:
                    raise self._error(
                        f"RAM block {name!r} of {length:#x} bytes overruns the {total:#x} bytes "
                        "the block list announces",
                        entry,
                    )
                if length & self.mask:
                    raise self._error(f"RAM block {name!r} length {length:#x} is not a whole number of pages", entry)
                if not length:
                    # QEMU announces only blocks with memory; an empty one would let a
                    # hostile list grow without end (and be re-read as it arrives)
                    raise self._error(f"RAM block {name!r} of length 0: QEMU announces only blocks with memory", entry)
                if name in blocks:
                    raise self._error(f"RAM block {name!r} is announced twice", entry)
                if len(blocks) >= MAX_RAM_BLOCKS:
                    raise self._error(f"more than {MAX_RAM_BLOCKS} RAM blocks", entry)
                blocks[name] = length
                left -= length
        except Short:
            return None
        self.blocks.update(blocks)
        return c.pos

    def _flags_error(self, flags: int, pos: int) -> QemuStreamError:
        for bit, why in RAM_REFUSED_FLAGS.items():
            if flags & bit:
                return self._error(f"unsupported RAM page flag {bit:#x} ({why})", pos)
        return self._error(f"unknown RAM page flags {flags:#x}", pos)

    def _error(self, what: str, pos: int) -> QemuStreamError:
        at = self._base + pos
        return stream_error(
            f"{what} at offset {at:#x} (in the {self.kind} section of {RAM_SECTION!r} at {self.section_offset:#x})",
            at,
        )

