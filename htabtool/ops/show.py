"""``show``: a snapshot's entries decoded and filtered (htabtool-show/1
objects, one per entry); the index ranges a later pass wrote (``show
--changed-in`` and the map's churn).

Strategy: the final table streams past in windows (:func:`htabtool.ops.state.final_state`)
and one pass's records in their chunks (:func:`htabtool.ops.state.batches`); the
filters are numpy masks over a whole window, and only the entries that pass
them and the limit are decoded, a batch of at most :data:`BATCH` at a time,
by the field functions of :mod:`htabtool.hpte` over arrays, then turned into
one plain dict per entry.  Memory: a window and a batch, whatever the
table's size.

Imports: the final state (:mod:`htabtool.ops.state`), the HPTE model and
the table's word views; nothing of the CLI.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from htabtool import hpte
from htabtool.errors import UsageError
from htabtool.ops.state import batches, final_state, pass_numbers
from htabtool.records.table import DEFAULT_WINDOW, native, valid_mask
from htabtool.sources import SnapshotInput

#: entries decoded at a time (a bound on the memory of the decoded columns)
BATCH = 1 << 16
#: entries per window of show and map: the default window (262,144 entries, 4 MiB)
WINDOW = DEFAULT_WINDOW

PAGE_SHIFTS = {name: shift for shift, name in hpte.PAGE_SIZE_NAMES.items() if shift}
SEGMENT_CODES = {"256M": hpte.MMU_SEGSIZE_256M, "1T": hpte.MMU_SEGSIZE_1T}

#: the keys of an entry object (htabtool-show/1), in order
ENTRY_KEYS = (
    "kind", "index", "pteg", "slot", "v", "r", "valid", "bolted", "secondary", "large", "segment_size", "avpn",
    "page_size", "actual_page_size", "rpn", "real_address", "wimg", "pp", "no_execute", "key", "referenced",
    "changed", "vrma", "hvlock", "absent",
)
#: the keys of a record object (--pass mode)
RECORD_KEYS = ("kind", "pass", "record", "offset", "index", "n_valid", "n_invalid")


# -- filters -----------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """Which entries to show; every filter given must hold (they combine).

    ``valid``: True valid entries only (the default), False invalid only,
    None all.  ``index``: (first, last) inclusive.  ``page_size``: the base
    page size, "4K", "64K", "16M" or "16G".  ``segment``: "256M" or "1T".
    ``avpn``/``rpn``: (value, mask): the field ANDed with mask equals value.
    ``changed_in``: a pass after the first; entries its records wrote (sent
    valid or counted invalid)."""

    index: tuple[int, int] | None = None
    valid: bool | None = True
    bolted: bool | None = None
    page_size: str | None = None
    segment: str | None = None
    avpn: tuple[int, int] | None = None
    rpn: tuple[int, int] | None = None
    vrma: bool = False
    changed_in: int | None = None

    def __post_init__(self):
        if self.page_size is not None and self.page_size not in PAGE_SHIFTS:
            raise UsageError(f"page size {self.page_size!r}: give one of {', '.join(PAGE_SHIFTS)}")
        if self.segment is not None and self.segment not in SEGMENT_CODES:
            raise UsageError(f"segment size {self.segment!r}: give 256M or 1T")
        if self.index is not None and self.index[0] > self.index[1]:
            raise UsageError(f"index range {self.index[0]}..{self.index[1]} is empty")

    @property
    def on_entries(self) -> bool:
        """Does any filter look at an entry's contents (not only its place)?"""
        return any(x is not None for x in (self.bolted, self.page_size, self.segment, self.avpn, self.rpn)) or self.vrma

    def mask(self, index: np.ndarray, v: np.ndarray, r: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """The entries (native doublewords ``v``, ``r`` at ``index``) that pass."""
        keep = np.ones(len(index), dtype=bool)
        if self.index is not None:
            keep &= (index >= self.index[0]) & (index <= self.index[1])
        if self.valid is not None:
            keep &= valid if self.valid else ~valid
        if self.bolted is not None:
            keep &= ((v & np.uint64(hpte.HPTE_V_BOLTED)) != 0) == self.bolted
        if self.page_size is not None:
            keep &= hpte.base_page_shift_array(v, r) == PAGE_SHIFTS[self.page_size]
        if self.segment is not None:
            keep &= hpte.segment_size_code(v) == np.uint64(SEGMENT_CODES[self.segment])
        if self.avpn is not None:
            keep &= (hpte.avpn(v) & np.uint64(self.avpn[1])) == np.uint64(self.avpn[0] & self.avpn[1])
        if self.rpn is not None:
            keep &= (hpte.rpn(r) & np.uint64(self.rpn[1])) == np.uint64(self.rpn[0] & self.rpn[1])
        if self.vrma:
            keep &= hpte.vrma_array(v)
        return keep


def parse_index_range(text: str) -> tuple[int, int]:
    """``A..B`` (inclusive; either end may be left out), or one index ``A``;
    decimal or 0x-hexadecimal."""
    m = re.fullmatch(r"\s*([0-9a-fA-Fx_]*)\s*(\.\.\s*([0-9a-fA-Fx_]*))?\s*", text)
    if not m or (not m.group(1) and not m.group(3)):
        raise UsageError(f"index range {text!r}: give A..B, A.., ..B or A (decimal or 0x...)")
    lo = _number(m.group(1), text) if m.group(1) else 0
    if m.group(2) is None:
        return lo, lo
    hi = _number(m.group(3), text) if m.group(3) else (1 << 63) - 1
    return lo, hi


def parse_masked_hex(text: str, what: str) -> tuple[int, int]:
    """``HEX`` or ``HEX/MASK`` (hexadecimal, 0x optional): (value, mask); no
    mask means every bit."""
    value, _, mask = text.partition("/")
    try:
        v = int(value, 16)
        m = int(mask, 16) if mask else (1 << 64) - 1
    except ValueError:
        raise UsageError(f"{what} {text!r}: give HEX or HEX/MASK (hexadecimal)") from None
    if v >= 1 << 64 or m >= 1 << 64 or v < 0 or m < 0:
        raise UsageError(f"{what} {text!r}: more than 64 bits")
    return v, m


def _number(s: str, text: str) -> int:
    try:
        return int(s, 0)
    except ValueError:
        raise UsageError(f"index range {text!r}: {s!r} is not a number") from None


# -- decoding -----------------------------------------------------------------------


def decode_columns(index: np.ndarray, v: np.ndarray, r: np.ndarray) -> dict[str, np.ndarray]:
    """Every field of the entries (native doublewords) at ``index``, one array
    a field (the keys of :data:`ENTRY_KEYS` but ``kind``)."""
    shifts = hpte.page_shifts_array(v, r)
    base = (shifts & np.uint16(0xFF)).astype(np.uint8)
    actual = np.where(shifts >= 0x100, shifts >> np.uint16(8), shifts).astype(np.uint8)
    names = np.array([hpte.PAGE_SIZE_NAMES.get(s, f"2^{s}") for s in range(64)], dtype=object)
    segments = np.array([hpte.SEGMENT_SIZE_NAMES[s] for s in range(4)], dtype=object)

    def bit(word, mask):
        return (word & np.uint64(mask)) != 0

    return {
        "index": index,
        "pteg": index // hpte.ENTRIES_PER_PTEG,
        "slot": index % hpte.ENTRIES_PER_PTEG,
        "v": v,
        "r": r,
        "valid": bit(v, hpte.HPTE_V_VALID),
        "bolted": bit(v, hpte.HPTE_V_BOLTED),
        "secondary": bit(v, hpte.HPTE_V_SECONDARY),
        "large": bit(v, hpte.HPTE_V_LARGE),
        "segment_size": segments[hpte.segment_size_code(v).astype(np.intp)],
        "avpn": hpte.avpn(v),
        "page_size": names[base],
        "actual_page_size": names[actual],
        "rpn": hpte.rpn(r),
        "real_address": hpte.real_address(r, np.where(actual == 0, 12, actual).astype(np.uint64)),
        "wimg": hpte.wimg(r),
        "pp": hpte.pp(r),
        "no_execute": bit(r, hpte.HPTE_R_N),
        "key": hpte.key(r),
        "referenced": bit(r, hpte.HPTE_R_R),
        "changed": bit(r, hpte.HPTE_R_C),
        "vrma": hpte.vrma_array(v),
        "hvlock": bit(v, hpte.HPTE_V_HVLOCK),
        "absent": bit(v, hpte.HPTE_V_ABSENT),
    }


def _rows(columns: dict[str, np.ndarray]) -> Iterator[dict]:
    """One dict per entry (Python ints and bools), in ENTRY_KEYS order."""
    n = len(columns["index"])
    lists = [["entry"] * n] + [columns[k].tolist() for k in ENTRY_KEYS[1:]]
    for values in zip(*lists):
        yield dict(zip(ENTRY_KEYS, values))


# -- show ---------------------------------------------------------------------------


def show(snap: SnapshotInput, filters: Filters | None = None, *, limit: int | None = None,
         pass_number: int | None = None,
         window: int = WINDOW) -> Iterator[dict]:
    """The entries of a snapshot's final table that pass ``filters``, decoded,
    one dict each (JSON-ready: the htabtool-show/1 objects), in index order,
    at most ``limit``.

    With ``pass_number``: that pass's records as the kernel sent them, in
    stream order, a record object (its header) before the entries of its
    valid run that pass; a record is given when it meets ``filters.index``
    and one of its entries passes, or when no filter looks at the entries'
    contents (with ``valid=False``: the records with an invalid run).
    ``limit`` then counts records too."""
    filters = filters or Filters()
    if limit is not None and limit <= 0:
        return
    written = pass_ranges(snap, filters.changed_in) if filters.changed_in is not None else None
    if pass_number is not None:
        _check_pass(snap, pass_number, "pass_number")
        yield from _show_pass(snap, filters, limit, pass_number, written)
        return
    yield from _show_final(snap, filters, limit, written, window)


def _show_final(snap, filters, limit, written, window) -> Iterator[dict]:
    left = limit
    for lo, part in final_state(snap, window):
        if filters.index is not None:
            if lo > filters.index[1]:
                return  # past the range: the rest of the table is not read
            if lo + len(part) <= filters.index[0]:
                continue
        v, r = native(part)
        index = np.arange(lo, lo + len(part), dtype=np.int64)
        keep = filters.mask(index, v, r, valid_mask(part))
        if written is not None:
            keep &= written.covers(lo, lo + len(part))
        rows = np.flatnonzero(keep)
        if left is not None:
            rows = rows[:left]
            left -= len(rows)
        for k in range(0, len(rows), BATCH):
            sel = rows[k : k + BATCH]
            yield from _rows(decode_columns(index[sel], v[sel], r[sel]))
        if left == 0:
            return


def _show_pass(snap, filters, limit, pass_number, written) -> Iterator[dict]:
    left = limit
    for _, batch in batches(snap, lambda p: p == pass_number):
        if not len(batch):
            continue
        ei = batch.entry_index()
        er = batch.entry_record()
        v, r = native(batch.entries)
        keep = filters.mask(ei, v, r, valid_mask(batch.entries))
        if written is not None:
            keep &= written.covers_indices(ei)
        rec = _records_shown(batch, filters, written, keep, er)
        # stream order: record k after the entries of the records before it
        # and k headers, its entries just after it
        starts = np.concatenate(([0], np.cumsum(batch.n_valid)[:-1]))
        rec_rows, ent_rows = np.flatnonzero(rec), np.flatnonzero(keep)
        keys = np.concatenate((starts[rec_rows] + rec_rows, ent_rows + er[ent_rows] + 1))
        order = np.argsort(keys, kind="stable")
        items = np.concatenate((rec_rows, ent_rows))[order]
        is_rec = (np.arange(len(keys)) < len(rec_rows))[order]
        if left is not None:
            is_rec, items = is_rec[:left], items[:left]
            left -= len(items)
        for k in range(0, len(items), BATCH):
            yield from _pass_items(batch, pass_number, is_rec[k : k + BATCH], items[k : k + BATCH], ei, er, v, r)
        if left == 0:
            return


def _records_shown(batch, filters, written, keep, er) -> np.ndarray:
    """The records of a batch to show (see :func:`show`)."""
    rec = np.ones(len(batch), dtype=bool)
    if filters.index is not None:
        rec &= (batch.end > filters.index[0]) & (batch.index <= filters.index[1])
    if written is not None:
        rec &= written.meets(batch.index, batch.end)
    if filters.valid is False:
        return rec & (batch.n_invalid > 0) & (not filters.on_entries)
    if filters.on_entries:
        rec &= np.bincount(er[keep], minlength=len(batch)) > 0
    return rec


def _pass_items(batch, pass_number, is_rec, items, ei, er, v, r) -> Iterator[dict]:
    ents = items[~is_rec]
    entry_rows = _rows(decode_columns(ei[ents], v[ents], r[ents]))
    records = (batch.first_record + er[ents]).tolist()
    k = 0
    for flag, item in zip(is_rec.tolist(), items.tolist()):
        if flag:
            yield {
                "kind": "record",
                "pass": pass_number,
                "record": batch.first_record + item,
                "offset": int(batch.offset[item]),
                "index": int(batch.index[item]),
                "n_valid": int(batch.n_valid[item]),
                "n_invalid": int(batch.n_invalid[item]),
            }
        else:
            row = next(entry_rows)
            row["pass"] = pass_number
            row["record"] = records[k]
            k += 1
            yield row


# -- passes ---------------------------------------------------------------------------


def _check_pass(snap: SnapshotInput, number: int, param: str, later: bool = False) -> None:
    """``number`` (the parameter ``param``) is one of the snapshot's passes
    (with ``later``: not the first)."""
    numbers = pass_numbers(snap)
    if number not in numbers:
        listed = ", ".join(map(str, numbers)) or "none"
        raise UsageError(f"{param} {number}: the snapshot has no pass {number} (its passes: {listed})", param=param)
    if later and number == numbers[0]:
        raise UsageError(f"{param} {number}: that is the first pass, which sends the whole table; "
                         f"give a later pass ({', '.join(map(str, numbers[1:])) or 'there is none'})", param=param)


@dataclass
class Ranges:
    """Index ranges [start, end), sorted and merged (what a pass wrote)."""

    starts: np.ndarray
    ends: np.ndarray

    @classmethod
    def of(cls, starts: np.ndarray, ends: np.ndarray) -> Ranges:
        order = np.argsort(starts, kind="stable")
        s, e = np.asarray(starts, np.int64)[order], np.asarray(ends, np.int64)[order]
        keep = (e > s)
        s, e = s[keep], e[keep]
        if not len(s):
            return cls(s, e)
        reach = np.maximum.accumulate(e)
        new = np.concatenate(([True], s[1:] > reach[:-1]))
        heads = np.flatnonzero(new)
        return cls(s[heads], np.maximum.reduceat(e, heads))

    def __len__(self) -> int:
        return int((self.ends - self.starts).sum())

    def covers_indices(self, index: np.ndarray) -> np.ndarray:
        k = np.searchsorted(self.starts, index, side="right") - 1
        return (k >= 0) & (index < self.ends[np.maximum(k, 0)]) if len(self.starts) else np.zeros(len(index), bool)

    def covers(self, lo: int, hi: int) -> np.ndarray:
        return self.covers_indices(np.arange(lo, hi, dtype=np.int64))

    def meets(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Which of the ranges [starts, ends) overlap one of these."""
        if not len(self.starts):
            return np.zeros(len(starts), dtype=bool)
        k = np.searchsorted(self.starts, ends, side="left") - 1  # the last range starting before the end
        return (k >= 0) & (self.ends[np.maximum(k, 0)] > starts)

    def covered_below(self, x: np.ndarray) -> np.ndarray:
        """How many covered indices lie below each x."""
        if not len(self.starts):
            return np.zeros(len(x), dtype=np.int64)
        lengths = self.ends - self.starts
        before = np.concatenate(([0], np.cumsum(lengths)))
        k = np.searchsorted(self.starts, x, side="right") - 1
        kk = np.maximum(k, 0)
        inside = np.clip(x - self.starts[kk], 0, lengths[kk])
        return np.where(k >= 0, before[kk] + inside, 0)


def pass_ranges(snap: SnapshotInput, number: int) -> Ranges:
    """The entries pass ``number`` (a later pass) wrote, as index ranges."""
    _check_pass(snap, number, "changed_in", later=True)
    starts, ends = [], []
    for _, batch in batches(snap, lambda p: p == number):
        starts.append(batch.index)
        ends.append(batch.end)
    return Ranges.of(np.concatenate(starts or [np.zeros(0, np.int64)]), np.concatenate(ends or [np.zeros(0, np.int64)]))
