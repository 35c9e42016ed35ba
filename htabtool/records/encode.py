"""Encoding, sans I/O: a table state to the bytes of the kernel's reads.

The encoder walks a :class:`TableSource` (a plain table: :class:`StaticTable`;
the simulated kernel's table supplies its own) and cuts the records the
kernel's kvm_htab_read cuts (:func:`plan_records`), then fits them to a
read's byte budget with the kernel's strict rules (:func:`encode_read`, one
read; :func:`encode_reads`, a burst of them laid out a window at a time).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import numpy as np

from htabtool.errors import UsageError
from htabtool.hpte import HPTE_SIZE, HPTE_V_BOLTED, HPTE_V_VALID, v_low_bytes
from htabtool.records.batch import expand_ranges, record_stats
from htabtool.records.format import (
    ENTRY_DTYPE,
    HEADER_SIZE,
    KIND_CLEAN,
    KIND_INVALID,
    KIND_VALID,
    MAX_RUN,
    check_byte_order,
    header_struct,
    layout_records,
    layout_words,
)

_ROW = np.dtype("V16")  # one entry as bytes: rows are gathered 16 bytes at a time
#: a read budget no table reaches: one read of it returns the rest of the pass
UNBOUNDED_READ = 1 << 62


class TableSource(Protocol):
    """What an encoder walks over: a table and which entries to report."""

    n_entries: int

    def kinds(self, lo: int, hi: int, first_pass: bool) -> np.ndarray:
        """uint8 kind of entries lo..hi-1: KIND_VALID / KIND_INVALID on the
        first pass; on later passes KIND_CLEAN for entries not modified."""

    def words(self, lo: int, hi: int, rows: np.ndarray | None = None) -> np.ndarray:
        """(len(rows), 2) '>u8': the doublewords reported for entries lo + rows
        (rows: sorted, relative to lo, all in valid runs; None: lo..hi-1)."""

    def later_rows(self, lo: int, limit: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        """A later pass's dirty entries from ``lo`` on without a scan: (rows,
        kinds, the end of the stretch they cover), or None when the source
        does not know them (then the encoder scans :meth:`kinds`).  With it
        the planner costs what changed (htabtool.sim.readview.HptSource)."""


class StaticTable:
    """A plain table state as a :class:`TableSource`.

    ``table``: (N, 2) '>u8'; an entry is valid when HPTE_V_VALID is set in
    its first doubleword.  ``changed``: a bool mask of the entries an
    incremental pass reports (None: none changed).  ``bolted_only``: entries
    without HPTE_V_BOLTED count as invalid, as KVM_GET_HTAB_BOLTED_ONLY."""

    def __init__(self, table: np.ndarray, changed: np.ndarray | None = None, bolted_only: bool = False):
        if table.ndim != 2 or table.shape[1] != 2:
            raise UsageError("a table is an (N, 2) array of doublewords")
        self.table = table
        self.n_entries = len(table)
        self.changed = changed
        self.bolted_only = bolted_only

    def later_rows(self, lo: int, limit: int) -> None:
        """A plain table does not track what changed: the encoder scans."""
        return None

    def kinds(self, lo: int, hi: int, first_pass: bool) -> np.ndarray:
        low_byte = v_low_bytes(self.table[lo:hi])
        valid = (low_byte & HPTE_V_VALID) != 0
        if self.bolted_only:
            valid &= (low_byte & HPTE_V_BOLTED) != 0
        kinds = np.where(valid, np.uint8(KIND_VALID), np.uint8(KIND_INVALID))
        if not first_pass:
            if self.changed is None:
                kinds[:] = KIND_CLEAN
            else:
                kinds[~self.changed[lo:hi]] = KIND_CLEAN
        return kinds

    def words(self, lo: int, hi: int, rows: np.ndarray | None = None) -> np.ndarray:
        part = self.table[lo:hi]
        if rows is None:
            return part
        return np.ascontiguousarray(part).view(_ROW)[:, 0][rows].view(ENTRY_DTYPE).reshape(-1, 2)

    def mark_read(self, result: ReadResult) -> None:
        """Clear the changed marks of the entries a read reported, as the
        kernel clears HPTE_GR_MODIFIED (the entries of its records)."""
        if self.changed is not None and len(result.index):
            self.changed[expand_ranges(result.index, result.end - result.index)] = False


def plan_records(kinds: np.ndarray, base: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The records the kernel cuts from ``kinds`` (entries base, base+1, ...)
    with no byte budget: each a run of valid entries and the run of invalid
    ones after it, clean entries skipped, each count capped at 0xffff.

    Returns (index, n_valid, n_invalid) as int64 arrays, in table order."""
    n = len(kinds)
    if n == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    change = np.flatnonzero(kinds[1:] != kinds[:-1])
    starts = np.empty(len(change) + 1, dtype=np.int64)
    starts[0] = 0
    np.add(change, 1, out=starts[1:])
    lengths = np.diff(starts, append=n)
    run_kind = kinds[starts]
    if len(starts) > 1 and lengths.max() <= MAX_RUN and run_kind.min() != KIND_CLEAN:
        # the common first pass: valid and invalid runs alternate, none
        # needs cutting, so each valid run and the invalid run after it are
        # a record (and a leading invalid run is one alone)
        lead = int(run_kind[0] != KIND_VALID)
        index = starts[lead::2]
        n_valid = lengths[lead::2]
        n_invalid = np.zeros(len(index), dtype=np.int64)
        after = lengths[lead + 1 :: 2]
        n_invalid[: len(after)] = after
        if lead:
            index = np.concatenate((starts[:1], index))
            n_valid = np.concatenate(([0], n_valid))
            n_invalid = np.concatenate((lengths[:1], n_invalid))
        return index + base, n_valid, n_invalid
    if lengths.max() <= MAX_RUN:
        # a later pass: clean runs between, none needs cutting; a record is
        # a valid run with the invalid run right after it, or an invalid run
        # right after a clean one (or at the start)
        is_v = run_kind == KIND_VALID
        is_i = run_kind == KIND_INVALID
        after_v = np.zeros(len(starts), dtype=bool)
        after_v[1:] = is_v[:-1]
        rec = np.flatnonzero(is_v | (is_i & ~after_v))
        v_rec = is_v[rec]
        nxt = np.minimum(rec + 1, len(starts) - 1)
        joined = v_rec & is_i[nxt] & (nxt > rec)
        n_valid = np.where(v_rec, lengths[rec], 0)
        n_invalid = np.where(v_rec, np.where(joined, lengths[nxt], 0), lengths[rec])
        return starts[rec] + base, n_valid, n_invalid
    # cut every run into pieces of at most MAX_RUN entries
    pieces = (lengths + MAX_RUN - 1) // MAX_RUN
    p_run = np.repeat(np.arange(len(starts)), pieces)
    p_j = np.arange(len(p_run)) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    p_start = starts[p_run] + p_j * MAX_RUN
    p_len = np.minimum(MAX_RUN, lengths[p_run] - p_j * MAX_RUN)
    p_kind = run_kind[p_run]
    p_first = p_j == 0
    p_last = p_j == pieces[p_run] - 1
    # a valid run's last piece takes the first piece of the invalid run after it
    is_v = p_kind == KIND_VALID
    is_i = p_kind == KIND_INVALID
    nxt_i_first = np.zeros(len(p_run), dtype=bool)
    nxt_i_first[:-1] = is_i[1:] & p_first[1:]
    merge = is_v & p_last & nxt_i_first
    absorbed = np.zeros(len(p_run), dtype=bool)
    absorbed[1:] = merge[:-1]
    keep = (is_v | is_i) & ~absorbed
    nxt_len = np.zeros(len(p_run), dtype=np.int64)
    nxt_len[:-1] = p_len[1:]
    index = p_start[keep] + base
    n_valid = np.where(is_v, p_len, 0)[keep]
    n_invalid = np.where(is_v, np.where(merge, nxt_len, 0), p_len)[keep]
    return index.astype(np.int64), n_valid.astype(np.int64), n_invalid.astype(np.int64)


def plan_sparse_records(rows: np.ndarray, kinds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`plan_records` for a table given by its reported entries alone:
    ``rows`` (sorted) of kinds ``kinds`` (KIND_VALID or KIND_INVALID), every
    other entry clean.  The same records, at the cost of len(rows): the
    entries are planned packed, one clean entry standing for each gap."""
    n = len(rows)
    if n == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    rows = np.asarray(rows, dtype=np.int64)
    gap_after = rows[1:] != rows[:-1] + 1
    pos = np.arange(n, dtype=np.int64)
    pos[1:] += np.cumsum(gap_after)  # each gap before an entry moves it one place on
    packed = np.zeros(int(pos[-1]) + 1, dtype=np.uint8)  # KIND_CLEAN in the gaps
    packed[pos] = kinds
    where = np.zeros(len(packed), dtype=np.int64)
    where[pos] = rows
    index, n_valid, n_invalid = plan_records(packed)
    return where[index], n_valid, n_invalid


class ReadResult:
    """What one kvm_htab_read() returned and where it left the fd.

    ``reported`` is how many entries its records cover (the sum of n_valid
    and n_invalid).  The records' arrays are built on first use: a burst of
    reads (:func:`encode_reads`) hands out thousands of results whose arrays
    nobody asks for."""

    __slots__ = ("data", "next_index", "wrapped", "reported", "stats", "_parts", "_arrays")

    def __init__(self, data: bytes, next_index: int, wrapped: bool, reported: int, stats: tuple | None = None, *,
                 arrays=None, parts=()):
        self.data = data
        self.next_index = next_index
        self.wrapped = wrapped  # reached the end of the table: the next read starts a new pass at 0
        self.reported = reported
        # (records, first index, end of the last record, valid, invalid); None when no record
        self.stats = stats
        self._arrays = arrays  # (index, n_valid, n_invalid, entries)
        self._parts = parts  # or the pieces of laid-out windows they come from

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return (f"ReadResult({len(self.data)} bytes, next_index={self.next_index}, wrapped={self.wrapped}, "
                f"reported={self.reported})")

    @property
    def index(self) -> np.ndarray:
        """The first entry of each record emitted (the last may be cut by the budget)."""
        return self._build()[0]

    @property
    def n_valid(self) -> np.ndarray:
        return self._build()[1]

    @property
    def n_invalid(self) -> np.ndarray:
        return self._build()[2]

    @property
    def entries(self) -> np.ndarray:
        """(E, 2) '>u8': the entries emitted."""
        return self._build()[3]

    @property
    def end(self) -> np.ndarray:
        return self.index + self.n_valid + self.n_invalid

    def _build(self):
        if self._arrays is None:
            cols: list[list] = [[], [], [], []]
            for part in self._parts:
                if len(part) == 3:  # whole records a..b-1 of a window
                    w, a, b = part
                    cols[0].append(w.idx[a:b])
                    cols[1].append(w.nv[a:b])
                    cols[2].append(w.ni[a:b])
                    cols[3].append(w.words[int(w.woff[a]) : int(w.woff[b])])
                else:  # one record made here (a run cut by the budget, or its rest)
                    index, nv, ni, w, wo = part
                    cols[0].append(np.array([index], dtype=np.int64))
                    cols[1].append(np.array([nv], dtype=np.int64))
                    cols[2].append(np.array([ni], dtype=np.int64))
                    cols[3].append(w.words[wo : wo + nv])
            z = np.zeros(0, dtype=np.int64)
            self._arrays = (
                np.concatenate(cols[0]) if cols[0] else z,
                np.concatenate(cols[1]) if cols[1] else z,
                np.concatenate(cols[2]) if cols[2] else z,
                # concatenate raw words: numpy would turn big-endian arrays into native ones
                (np.concatenate(cols[3]) if cols[3] else np.zeros((0, 2), dtype=np.uint64)).view(ENTRY_DTYPE),
            )
            self._parts = ()
        return self._arrays


class _Planner:
    """The records of the table from a position on, planned a window at a
    time (:func:`plan_records`) and kept with their entries' doublewords.

    A read (:func:`encode_read`) takes records from it with :meth:`chunk`;
    a burst of reads (:func:`encode_reads`) plans each window once
    (:meth:`_plan`) and lays it out (:class:`_Window`) for all the reads it
    feeds.  That is sound because nothing changes the table between the
    reads of a burst but the reads' own side effects, and those touch only
    entries before the next read's start."""

    def __init__(self, source: TableSource, first_pass: bool, window: int, count: int):
        self.source = source
        self.first_pass = first_pass
        self.window = window
        self.sparse = count // 2  # a window that yields fewer bytes makes the next one larger
        self.n = source.n_entries
        self.lo = self.resume = -1
        z = np.zeros(0, dtype=np.int64)
        self.idx, self.nv, self.ni = z, z, z
        self.words = np.zeros((0, 2), dtype=np.uint64)
        self.woff = np.zeros(1, dtype=np.int64)

    def chunk(self, scan: int, limit: int):
        """(index, n_valid, n_invalid, raw words of their valid entries,
        resume): at most ``limit`` of the records the kernel makes from
        ``scan`` on, as far as they are planned; they go on at ``resume``."""
        if self.lo <= scan < self.resume:
            got = self._from_plan(scan, limit)
            if got is not None:
                return got
        self._plan(scan)
        return self._from_plan(scan, limit)

    def _from_plan(self, scan: int, limit: int):
        idx, nv, ni, woff = self.idx, self.nv, self.ni, self.woff
        k = int(np.searchsorted(idx, scan, side="right")) - 1
        head = None
        if k >= 0 and scan < idx[k] + nv[k] + ni[k]:
            if scan == idx[k]:
                start = k
            elif scan < idx[k] + nv[k] and nv[k] < MAX_RUN:
                # the rest of a valid run the previous read cut short (a run
                # piece shorter than the cap ends where the run ends)
                start = k + 1
                head = (scan, int(idx[k] + nv[k] - scan), int(ni[k]), int(woff[k] + scan - idx[k]))
            else:
                return None
        else:
            start = k + 1  # scan is in a clean gap before record k + 1
        stop = min(len(idx), start + limit)
        resume = int(idx[stop]) if stop < len(idx) else self.resume
        s_idx, s_nv, s_ni = idx[start:stop], nv[start:stop], ni[start:stop]
        w0 = int(woff[start])
        if head is not None:
            s_idx = np.concatenate(([head[0]], s_idx))
            s_nv = np.concatenate(([head[1]], s_nv))
            s_ni = np.concatenate(([head[2]], s_ni))
            w0 = head[3]
        return s_idx, s_nv, s_ni, self.words[w0 : int(woff[stop])], resume

    def _plan(self, scan: int) -> None:
        n = self.n
        # a later pass over a source that knows which entries may be dirty
        later_rows = None if self.first_pass else self.source.later_rows
        while True:
            lo, hi = scan, min(n, scan + self.window)
            got = later_rows(lo, self.window) if later_rows else None
            if got is not None:
                rows, kinds, hi = got
                idx, nv, ni = plan_sparse_records(rows, kinds)
            else:
                idx, nv, ni = plan_records(self.source.kinds(lo, hi, self.first_pass), lo)
            if hi < n:
                trusted = int(np.searchsorted(idx + nv + ni, hi, side="left"))  # records ending before hi
                resume = int(idx[trusted]) if trusted < len(idx) else hi
            else:
                trusted, resume = len(idx), n
            if trusted or resume > lo:
                break
            self.window *= 2  # one record is longer than the window
        idx, nv, ni = idx[:trusted], nv[:trusted], ni[:trusted]
        if nv.sum():
            rows = expand_ranges(idx - lo, nv)
            self.words = np.asarray(self.source.words(lo, hi, rows), dtype=ENTRY_DTYPE).view(np.uint64)
        else:
            self.words = np.zeros((0, 2), dtype=np.uint64)
        self.idx, self.nv, self.ni = idx, nv, ni
        self.woff = np.concatenate(([0], np.cumsum(nv)))
        self.lo, self.resume = lo, resume
        if HEADER_SIZE * len(idx) + HPTE_SIZE * int(self.woff[-1]) < self.sparse:
            self.window = min(self.window * 2, 1 << 22)  # sparse (an incremental pass): look further at once


def encode_read(
    source: TableSource, start: int, first_pass: bool, count: int, byte_order: str
) -> ReadResult:
    """Exactly one ``read(2)`` of ``count`` bytes on the htab fd (kvm_htab_read).

    Takes the records the kernel makes from ``start`` on (planned a window
    at a time) and fits them to the budget with the kernel's strict rules:
    a record starts only while a header and one entry fit strictly inside
    what is left, a valid run is cut where the next entry would not."""
    check_byte_order(byte_order)
    n = source.n_entries
    planner = _Planner(source, first_pass, max(4096, min(1 << 22, count // 8)), count)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    words: list[np.ndarray] = []
    nb = 0  # bytes of the read so far
    i = start  # the fd's index: one past the last record emitted
    scan = start  # where the records go on (clean entries in between)
    wrapped = False
    while nb + HEADER_SIZE + HPTE_SIZE < count:
        if scan >= n:
            # nothing more to report: the kernel skips to the end, emits
            # nothing, and wraps
            wrapped = True
            break
        # a record takes 8 bytes at least: more than count // 8 never fit
        idx, nv, ni, w, resume = planner.chunk(scan, count // HEADER_SIZE + 1)
        # byte offset of each record's header, and the budget rules
        b = nb + np.concatenate(([0], np.cumsum(HEADER_SIZE + HPTE_SIZE * nv)))
        stop = b[:-1] + HEADER_SIZE + HPTE_SIZE >= count
        fit = (count - b[:-1] - HEADER_SIZE - HPTE_SIZE + HPTE_SIZE - 1) // HPTE_SIZE
        cut = ~stop & (nv > fit)
        over = stop | cut
        if over.any():
            k = int(np.argmax(over))
            take = k + 1 if cut[k] else k
            nv = nv[:take].copy()
            ni = ni[:take].copy()
            if cut[k]:
                nv[k] = fit[k]
                ni[k] = 0
            idx = idx[:take]
            if take:
                i = int(idx[-1] + nv[-1] + ni[-1])
                parts.append((idx, nv, ni))
                words.append(w[: int(nv.sum())])
            nb = int(b[0] + HEADER_SIZE * take + HPTE_SIZE * nv.sum())
            break
        if len(idx):
            parts.append((idx, nv, ni))
            words.append(w[: int(nv.sum())])
        nb = int(b[-1])
        if len(idx):
            i = int(idx[-1] + nv[-1] + ni[-1])
            if i >= n:
                wrapped = True
                break
        scan = resume
    if wrapped:
        i = 0
    index = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    n_valid = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    n_invalid = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    # concatenate raw words: numpy would turn big-endian arrays into native ones
    entries = (np.concatenate(words) if words else np.zeros((0, 2), dtype=np.uint64)).view(ENTRY_DTYPE)
    data = layout_records(index, n_valid, n_invalid, entries, byte_order)
    assert len(data) == nb, (len(data), nb)
    stats = record_stats(index, n_valid, n_invalid)
    reported = stats[3] + stats[4] if stats else 0
    return ReadResult(data, i, wrapped, reported, stats, arrays=(index, n_valid, n_invalid, entries))


class _Window:
    """One planned window's records laid out as the stream one unbounded
    read would return (headers in the fd's byte order), with the byte offset
    of every header: the reads of a burst are slices of it."""

    __slots__ = ("idx", "nv", "ni", "words", "woff", "off", "cum", "data", "resume", "n")

    def __init__(self, planner: _Planner, byte_order: str):
        self.idx, self.nv, self.ni, self.words = planner.idx, planner.nv, planner.ni, planner.words
        self.resume = planner.resume
        self.n = len(self.idx)
        self.woff = planner.woff  # first entry of each record in words, and the end
        pos = np.arange(self.n + 1, dtype=np.int64)
        pos += 2 * self.woff  # the word position of each header, and the end
        self.off = pos * 8
        self.cum = np.concatenate(([0], np.cumsum(self.nv + self.ni)))  # entries covered before each record
        words = layout_words(self.idx, self.nv, self.ni, self.words, byte_order, pos[:-1])
        self.data = words.data.cast("B")


def encode_reads(
    source: TableSource, start: int, first_pass: bool, count: int, byte_order: str, *, window: int = 1 << 16
) -> Iterator[ReadResult]:
    """Successive reads of ``count`` bytes, exactly as :func:`encode_read`
    one after another, until one reaches the end of the table or returns
    nothing: a burst.  The table is planned and laid out a window at a time
    (:class:`_Window`) and each read is cut from that layout by the kernel's
    budget rules: whole records are a slice, and only where the budget cuts
    a valid run is a header made anew (the cut record, n_invalid 0, and the
    rest of the run starting the next read).  No numpy call per record or
    per entry, only a few per read.

    The caller applies each read's side effects (if any) before asking for
    the next, or later: nothing else may change the table during the burst,
    and a read's side effects touch only entries before the next read's
    start."""
    check_byte_order(byte_order)
    pack = header_struct(byte_order).pack
    n = source.n_entries
    planner = _Planner(source, first_pass, max(window, count // 8), count)
    w: _Window | None = None
    k = 0  # the next whole record of w
    head = None  # (index, n_valid, n_invalid, byte offset, word offset): the rest of a run cut by the last read
    scan = start  # where the records go on when w is None
    i = start  # the fd's index
    limit = count - HEADER_SIZE - HPTE_SIZE  # a record starts while nb < limit
    while True:
        pieces: list = []
        parts: list = []
        nb = reported = valid = records = 0
        first = i
        wrapped = False
        while nb < limit:
            if head is not None:
                h_index, rest, h_ni, boff, wo = head
                assert w is not None  # a head is the rest of a run of w
                fit = (limit - nb + HPTE_SIZE - 1) // HPTE_SIZE  # entries the budget takes (>= 1)
                if not records:
                    first = h_index
                records += 1
                if rest > fit:
                    pieces += (pack(h_index, fit, 0), w.data[boff : boff + HPTE_SIZE * fit])
                    parts.append((h_index, fit, 0, w, wo))
                    head = (h_index + fit, rest - fit, h_ni, boff + HPTE_SIZE * fit, wo + fit)
                    nb += HEADER_SIZE + HPTE_SIZE * fit
                    reported += fit
                    valid += fit
                    i = h_index + fit
                    break
                pieces += (pack(h_index, rest, h_ni), w.data[boff : boff + HPTE_SIZE * rest])
                parts.append((h_index, rest, h_ni, w, wo))
                head = None
                k += 1
                nb += HEADER_SIZE + HPTE_SIZE * rest
                reported += rest + h_ni
                valid += rest
                i = h_index + rest + h_ni
                if i >= n:
                    wrapped = True
                    break
                continue
            while w is None or k >= w.n:
                nxt = scan if w is None else w.resume
                if nxt >= n:
                    break
                planner._plan(nxt)
                w, k = _Window(planner, byte_order), 0
            if w is None or k >= w.n:
                # nothing more to report: the kernel skips to the end, emits
                # nothing, and wraps
                wrapped = True
                break
            at_k = int(w.off[k])
            base = at_k - nb  # where this read's byte 0 would be in w.data
            if not records:
                first = int(w.idx[k])
            # the records that start within the budget: k .. j-1 (j > k)
            j = min(w.n, int(w.off.searchsorted(base + limit, "left")))
            last = j - 1
            after = int(w.off[j]) - base
            if after < count:  # the last one fits whole (its last entry is added while nb + 16 < count)
                pieces.append(w.data[at_k : int(w.off[j])])
                parts.append((w, k, j))
                reported += int(w.cum[j] - w.cum[k])
                valid += int(w.woff[j] - w.woff[k])
                records += j - k
                nb = after
                i = int(w.idx[last] + w.nv[last] + w.ni[last])
                k = j
                if i >= n:
                    wrapped = True
                    break
                continue
            # the budget cuts the valid run of record `last`
            at = int(w.off[last])
            fit = (limit - (at - base) + HPTE_SIZE - 1) // HPTE_SIZE
            index, nv, wo = int(w.idx[last]), int(w.nv[last]), int(w.woff[last])
            body = at + HEADER_SIZE
            pieces += (w.data[at_k:at], pack(index, fit, 0), w.data[body : body + HPTE_SIZE * fit])
            parts += ((w, k, last), (index, fit, 0, w, wo))
            reported += int(w.cum[last] - w.cum[k]) + fit
            valid += wo - int(w.woff[k]) + fit
            records += last - k + 1
            nb = at - base + HEADER_SIZE + HPTE_SIZE * fit
            i = index + fit
            if nv >= MAX_RUN:
                # a capped piece of a longer run: from i the kernel's valid
                # run goes on into the next piece, so plan afresh from i
                w, scan = None, i
            else:
                head = (i, nv - fit, int(w.ni[last]), at + HEADER_SIZE + HPTE_SIZE * fit, wo + fit)
                k = last
            break
        stats = (records, first, i, valid, reported - valid) if records else None
        if wrapped:
            i = 0
        yield ReadResult(b"".join(pieces), i, wrapped, reported, stats, parts=parts)
        if wrapped or not nb:
            return


def iter_reads(
    source: TableSource, count: int, byte_order: str, start: int = 0, first_pass: bool = True
) -> Iterator[ReadResult]:
    """Successive reads of ``count`` bytes until one reaches the end of the
    table (the end of the pass).  Reads that return nothing are not yielded."""
    for res in encode_reads(source, start, first_pass, count, byte_order):
        if res.data:
            yield res
        if res.wrapped:
            return
        if not res.data:
            raise UsageError(f"a read of {count} bytes cannot hold one record: use more than 24")


def encode_pass(source: TableSource, byte_order: str, start: int = 0, first_pass: bool = True) -> bytes:
    """A whole pass in one piece, as one unbounded read returns it."""
    return encode_read(source, start, first_pass, UNBOUNDED_READ, byte_order).data
