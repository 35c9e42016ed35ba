"""Table states: what records add up to, their statistics, their differences.

Strategy: a table state is an (N, 2) array of big-endian doublewords
(:func:`htabtool.records.apply.new_table`), an entry valid when HPTE_V_VALID is
set in its first doubleword and all zero when invalid.  Everything here is
a numpy expression over whole arrays (no loop per entry): statistics of a
state, statistics of the records that built it, and the comparison of two
states.  Files are not opened here; the CLI feeds batches from snapshots.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field

import numpy as np

from htabtool import hpte
from htabtool.errors import StreamError, UsageError
from htabtool.records.apply import new_table
from htabtool.records.batch import RecordBatch, expand_ranges
from htabtool.records.passes import end_before, pass_starts

#: n_valid / n_invalid distribution buckets: (label, low, high) inclusive
RUN_BUCKETS = (
    ("0", 0, 0),
    ("1", 1, 1),
    ("2-7", 2, 7),
    ("8", 8, 8),
    ("9-63", 9, 63),
    ("64-65534", 64, 0xFFFE),
    ("65535", 0xFFFF, 0xFFFF),
)

_U = np.uint64
_ROW = np.dtype("V16")  # one entry as bytes


def native(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(v, r) as native uint64 arrays."""
    return table[:, 0].astype(np.uint64), table[:, 1].astype(np.uint64)


def valid_mask(table: np.ndarray) -> np.ndarray:
    return (hpte.v_low_bytes(table) & hpte.HPTE_V_VALID) != 0


_M64 = (1 << 64) - 1
# TableStats' key of r, 10 bits: HPTE_R_C, HPTE_R_R (the bit above it), then the
# large-page encoding (r's bits 12..19)
_KEY_C, _KEY_R, _KEY_LP_SHIFT = 1, 2, 2
_RC_SHIFT = hpte.HPTE_R_C.bit_length() - 1
assert hpte.HPTE_R_R == hpte.HPTE_R_C << 1
_R_KEYS = 1 << 10


def _host_word(value: int) -> np.uint64:
    """``value`` as a big-endian doubleword of the table reads when its
    bytes are taken as a host-order uint64 (a table viewed as np.uint64)."""
    return _U(int.from_bytes(value.to_bytes(8, "big"), sys.byteorder))


def _with_bits(counts: np.ndarray, bits: int) -> int:
    """How many entries counted by key (``counts[key]``) have all of ``bits`` in their key."""
    return int(counts[_keys_with(len(counts), bits)].sum())


@functools.lru_cache(maxsize=32)
def _keys_with(n_keys: int, bits: int) -> np.ndarray:
    """The keys 0..n_keys-1 that have all of ``bits``."""
    return np.flatnonzero((np.arange(n_keys) & bits) == bits)


@functools.lru_cache(maxsize=1)
def _large_page_shifts() -> np.ndarray:
    """The base page shift of a large-page entry by its TableStats key of r
    (its LP bits above C and R): hpte's rule, looked up once per key."""
    r = (np.arange(_R_KEYS, dtype=np.uint64) >> _U(_KEY_LP_SHIFT)) << _U(hpte.LP_SHIFT)
    v = np.full(len(r), hpte.HPTE_V_LARGE, dtype=np.uint64)
    return hpte.base_page_shift_array(v, r).astype(np.intp)


def _counts(values: np.ndarray) -> list[tuple[int, int]]:
    """(value, count) of each value present in a small-integer array, ascending."""
    counts = np.bincount(values)
    present = np.flatnonzero(counts)
    return list(zip(present.tolist(), counts[present].tolist()))


@dataclass
class TableStats:
    """What a table state holds (the final state of a snapshot)."""

    entries: int
    valid: int
    bolted: int
    secondary: int
    referenced: int
    changed: int
    vrma: int
    hvlock: int
    page_sizes: dict  # name -> count of valid entries
    segment_sizes: dict  # name -> count
    pteg_fill: list  # pteg_fill[k] = groups with k valid entries, k = 0..8

    @property
    def invalid(self) -> int:
        return self.entries - self.valid

    @classmethod
    def empty(cls) -> TableStats:
        return cls(0, 0, 0, 0, 0, 0, 0, 0, {}, {}, [0] * 9)

    @classmethod
    def of(cls, table: np.ndarray, chunk: int = 1 << 20) -> TableStats:
        """Statistics of a whole table, in slices of ``chunk`` entries."""
        stats = cls.empty()
        for lo in range(0, len(table), chunk):
            stats.add(table[lo : lo + chunk])
        return stats

    @classmethod
    def of_first_pass(cls, batches, n_entries: int, progress=None) -> TableStats:
        """Statistics of the table one first pass makes (no pass after it):
        its valid entries counted where they lie in the batches, no table
        built.  The records must ascend, as :func:`final_windows` wants
        (:func:`check_ascending`); a PTEG's entries may be cut between two
        batches.  ``batches``: RecordBatches, or (RecordBatch, its
        :class:`PassPart` counted already, on another thread) pairs.
        ``progress`` is called with the entries each batch covers."""
        stats = cls.empty()
        keys = _KeyCounts()
        fill = np.zeros(9, dtype=np.int64)
        previous_end = 0
        group, in_group = -1, 0  # the last PTEG seen, and its valid entries so far
        for item in batches:
            batch, part = item if isinstance(item, tuple) else (item, None)
            if not len(batch):
                continue
            check_ascending(batch, previous_end)
            part = part or PassPart.of(batch)
            if part.entries:
                keys.merge(part.keys)
                first = part.first_size
                if part.first_group == group:  # the group goes on from the batch before
                    first += in_group
                elif in_group:
                    fill[in_group] += 1
                if part.first_group == part.last_group:
                    in_group = first
                else:
                    fill[first] += 1
                    fill += part.inner
                    in_group = part.last_size
                group = part.last_group
            end = int(batch.end[-1])
            if progress is not None:
                progress(end - previous_end)
            previous_end = end
        if in_group:
            fill[in_group] += 1
        keys.into(stats)
        fill[0] += n_entries // 8 - int(fill.sum())
        stats.entries = n_entries
        stats.pteg_fill = fill.tolist()
        if progress is not None and n_entries > previous_end:
            progress(n_entries - previous_end)
        return stats

    def add(self, part: np.ndarray) -> None:
        """Count a slice of the table (slices of a multiple of 8 entries keep
        the PTEG histogram exact)."""
        self.entries += len(part)
        ok = np.bitwise_and(hpte.v_low_bytes(part), np.uint8(hpte.HPTE_V_VALID))  # 0/1 a byte, contiguous
        whole = len(ok) // 8 * 8
        # valid entries per PTEG: the eight 0/1 bytes of a group summed by one multiply
        groups = ((ok[:whole].view(np.uint64) * _U(0x0101010101010101)) >> _U(56)).view(np.int64)  # 0..8
        self.pteg_fill = (np.asarray(self.pteg_fill) + np.bincount(groups, minlength=9)).tolist()
        keys = _KeyCounts()
        keys.add(part)
        keys.into(self)

    def to_dict(self) -> dict:
        return {
            "entries": self.entries,
            "valid": self.valid,
            "invalid": self.invalid,
            "bolted": self.bolted,
            "secondary": self.secondary,
            "referenced": self.referenced,
            "changed": self.changed,
            "vrma": self.vrma,
            "hvlock": self.hvlock,
            "page_sizes": dict(sorted(self.page_sizes.items())),
            "segment_sizes": dict(sorted(self.segment_sizes.items())),
            "pteg_fill": self.pteg_fill,
        }


class _KeyCounts:
    """What TableStats counts of the valid entries, as histograms of small
    keys, added up over any number of slices and turned into counts once.

    Counted from the entries' bytes as they lie, over every entry (a
    gather of the valid ones costs more than it saves): each entry's v low
    byte (its flags, HPTE_V_VALID among them) with its segment size, and r's
    C, R and large-page encoding (bits 12..19) with HPTE_V_LARGE and
    HPTE_V_VALID; VRMA is an equality on host-order words, the constants
    swapped as the bytes are (:func:`_host_word`)."""

    _VRMA_MASK = (~hpte.VRMA_IGNORED_BITS & _M64) | hpte.HPTE_V_VALID

    def __init__(self):
        self.by_v = np.zeros((4, 256), dtype=np.int64)  # [segment size, v low byte]
        self.by_r = np.zeros((8, _R_KEYS), dtype=np.int64)  # [v's low 3 bits, r's key]
        self.vrma = 0

    def add(self, part: np.ndarray) -> None:
        """Count ``part``: entries as they lie in the table, (N, 2) big-endian."""
        if not len(part):
            return
        rows = part.view(np.uint8).reshape(-1, hpte.HPTE_SIZE)
        v_low = hpte.v_low_bytes(part)
        v_keys = (rows[:, 0] >> np.uint8(hpte.HPTE_V_SSIZE_SHIFT - 56)).astype(np.uint16) << np.uint16(8)
        v_keys |= v_low
        self.by_v += np.bincount(v_keys, minlength=1 << 10).reshape(4, 256)
        self.vrma += int(np.count_nonzero((part.view(np.uint64)[:, 0] & _host_word(self._VRMA_MASK))
                                          == _host_word(hpte.VRMA_HPTE_V | hpte.HPTE_V_VALID)))
        r_low = rows[:, 12:16].view(">u4")[:, 0]
        r_keys = (r_low >> np.uint32(hpte.LP_SHIFT - _KEY_LP_SHIFT)) & np.uint32(0xFF << _KEY_LP_SHIFT)
        r_keys |= (r_low >> np.uint32(_RC_SHIFT)) & np.uint32(_KEY_C | _KEY_R)
        r_keys |= (v_low & np.uint8(hpte.HPTE_V_LARGE | hpte.HPTE_V_VALID)).astype(np.uint32) << np.uint32(10)
        self.by_r += np.bincount(r_keys, minlength=8 * _R_KEYS).reshape(8, _R_KEYS)

    def merge(self, other: _KeyCounts) -> None:
        self.by_v += other.by_v
        self.by_r += other.by_r
        self.vrma += other.vrma

    def into(self, stats: TableStats) -> None:
        """Add the counts to ``stats`` (all but entries and the PTEG histogram)."""
        valid_v = self.by_v[:, _keys_with(256, hpte.HPTE_V_VALID)]  # the valid entries' columns
        low = self.by_v.sum(axis=0)
        stats.valid += int(valid_v.sum())
        stats.bolted += _with_bits(low, hpte.HPTE_V_BOLTED | hpte.HPTE_V_VALID)
        stats.secondary += _with_bits(low, hpte.HPTE_V_SECONDARY | hpte.HPTE_V_VALID)
        stats.hvlock += _with_bits(low, hpte.HPTE_V_HVLOCK | hpte.HPTE_V_VALID)
        for s, c in enumerate(valid_v.sum(axis=1).tolist()):
            if c:
                name = hpte.SEGMENT_SIZE_NAMES[s]
                stats.segment_sizes[name] = stats.segment_sizes.get(name, 0) + c
        stats.vrma += self.vrma
        small = self.by_r[hpte.HPTE_V_VALID]
        large = self.by_r[hpte.HPTE_V_VALID | hpte.HPTE_V_LARGE]
        stats.referenced += _with_bits(small + large, _KEY_R)
        stats.changed += _with_bits(small + large, _KEY_C)
        shifts = np.bincount(_large_page_shifts(), weights=large, minlength=256)
        shifts[hpte.SMALL_PAGE_SHIFT] += small.sum()
        for s in np.flatnonzero(shifts).tolist():
            name = hpte.PAGE_SIZE_NAMES.get(s, f"2^{s}")
            stats.page_sizes[name] = stats.page_sizes.get(name, 0) + int(shifts[s])


@dataclass
class PassPart:
    """What :meth:`TableStats.of_first_pass` counts of one batch of a first
    pass, counted apart (on a reader's worker thread, as the batch is
    decoded): its valid entries' key histograms, and its entries per PTEG:
    the first and the last group it touches (either may go on in the batch
    next to it) and the histogram of the groups between them."""

    entries: int
    keys: _KeyCounts
    first_group: int = -1
    first_size: int = 0
    last_group: int = -1
    last_size: int = 0
    inner: np.ndarray = field(default_factory=lambda: np.zeros(9, dtype=np.int64))

    @classmethod
    def of(cls, batch: RecordBatch) -> PassPart:
        keys = _KeyCounts()
        keys.add(batch.entries)
        if not len(batch.entries):
            return cls(0, keys)
        groups = batch.entry_index() >> 3  # ascending in a first pass (checked where they are added up)
        starts = np.flatnonzero(groups[1:] != groups[:-1]) + 1
        sizes = np.diff(starts, prepend=0, append=len(groups))
        inner = np.bincount(sizes[1:-1], minlength=9) if len(sizes) > 2 else np.zeros(9, dtype=np.int64)
        return cls(len(groups), keys, int(groups[0]), int(sizes[0]), int(groups[-1]), int(sizes[-1]), inner)


@dataclass
class PassStats:
    number: int
    records: int = 0
    valid: int = 0  # entries sent (n_valid summed)
    invalid: int = 0  # entries counted invalid (n_invalid summed)
    bytes: int = 0

    def to_dict(self) -> dict:
        return {
            "pass": self.number,
            "records": self.records,
            "valid": self.valid,
            "invalid": self.invalid,
            "bytes": self.bytes,
        }


@dataclass
class RecordStats:
    """The records of a stream: counts, distributions, per pass."""

    records: int = 0
    n_valid_sum: int = 0
    n_invalid_sum: int = 0
    n_valid_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(RUN_BUCKETS), dtype=np.int64))
    n_invalid_hist: np.ndarray = field(default_factory=lambda: np.zeros(len(RUN_BUCKETS), dtype=np.int64))
    passes: dict = field(default_factory=dict)  # pass number -> PassStats

    def add(self, batch: RecordBatch, pass_number: int) -> None:
        k = len(batch)
        if not k:
            return
        self.records += k
        self.n_valid_sum += int(batch.n_valid.sum())
        self.n_invalid_sum += int(batch.n_invalid.sum())
        self.n_valid_hist += _bucket(batch.n_valid)
        self.n_invalid_hist += _bucket(batch.n_invalid)
        p = self.passes.setdefault(pass_number, PassStats(pass_number))
        p.records += k
        p.valid += int(batch.n_valid.sum())
        p.invalid += int(batch.n_invalid.sum())
        p.bytes += batch.nbytes

    def to_dict(self) -> dict:
        r = max(self.records, 1)
        return {
            "records": self.records,
            "mean_n_valid": round(self.n_valid_sum / r, 3),
            "mean_n_invalid": round(self.n_invalid_sum / r, 3),
            "n_valid_distribution": {b[0]: int(c) for b, c in zip(RUN_BUCKETS, self.n_valid_hist)},
            "n_invalid_distribution": {b[0]: int(c) for b, c in zip(RUN_BUCKETS, self.n_invalid_hist)},
            "per_pass": [self.passes[k].to_dict() for k in sorted(self.passes)],
        }


def _bucket(counts: np.ndarray) -> np.ndarray:
    """How many of ``counts`` (0..65535) fall in each of RUN_BUCKETS: a
    lookup of each count's bucket, then a bincount (np.histogram sorts)."""
    return np.bincount(_run_bucket_of()[counts], minlength=len(RUN_BUCKETS))


@functools.lru_cache(maxsize=1)
def _run_bucket_of() -> np.ndarray:
    """The RUN_BUCKETS bucket of every count 0..65535."""
    of = np.zeros(0x10000, dtype=np.intp)
    for k, (_, low, high) in enumerate(RUN_BUCKETS):
        of[low : high + 1] = k
    return of


# -- comparison ---------------------------------------------------------------

#: what a comparison ignores by default: KVM's software bits
IGNORE_V = hpte.SOFTWARE_V_BITS
IGNORE_R = hpte.SOFTWARE_R_BITS
RC_BITS = hpte.HPTE_R_R | hpte.HPTE_R_C


@dataclass
class TableDiff:
    """How table B differs from table A, entry by entry."""

    entries: int
    added: int  # valid in B only
    removed: int  # valid in A only
    changed: int  # valid in both, different beyond R/C (or at all with ignore_rc False... see rc_only)
    rc_only: int  # valid in both, different only in R and/or C
    ignore_rc: bool
    first: list  # [(index, kind)] of the first differences, in table order
    mask: np.ndarray | None = field(default=None, repr=False)  # every differing entry

    @property
    def different(self) -> bool:
        return bool(self.added or self.removed or self.changed or (self.rc_only and not self.ignore_rc))

    def to_dict(self) -> dict:
        return {
            "entries": self.entries,
            "identical": not self.different,
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "rc_only": self.rc_only,
            "ignore_rc": self.ignore_rc,
        }


class TableDiffer:
    """Compare two table states slice by slice (same slices of both).

    R/C-only changes are counted apart (``rc_only``); with ``ignore_rc``
    they do not make the tables different.  KVM's software bits
    (HPTE_V_HVLOCK, HPTE_V_ABSENT, HPTE_GR_RESERVED) are ignored unless
    ``ignore_software`` is false.  With ``keep_mask`` the differing entries
    of each slice are kept (for a delta)."""

    def __init__(self, *, ignore_rc: bool = False, ignore_software: bool = True, limit: int = 10):
        full = 0xFFFFFFFFFFFFFFFF
        self._mv = _U(full & ~IGNORE_V if ignore_software else full)
        self._mr = _U(full & ~IGNORE_R if ignore_software else full)
        self.result = TableDiff(0, 0, 0, 0, 0, ignore_rc, [])
        self.limit = limit

    def add(self, lo: int, pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
        """Compare entries lo.. of both tables; returns the mask of entries
        that differ (R/C-only ones included unless ignore_rc)."""
        res = self.result
        if pa.shape == pb.shape and np.array_equal(pa.view(_U), pb.view(_U)):
            # the same bytes (most windows of most diffs): one compare, no field masks
            res.entries += len(pa)
            return np.zeros(len(pa), dtype=bool)
        va, vb = valid_mask(pa), valid_mask(pb)
        av, ar = native(pa)
        bv, br = native(pb)
        both = va & vb
        dv = ((av ^ bv) & self._mv) != 0
        dr = (ar ^ br) & self._mr
        real = both & (dv | ((dr & ~_U(RC_BITS)) != 0))
        rc_diff = both & ~real & (dr != 0)
        add = vb & ~va
        rem = va & ~vb
        res.entries += len(pa)
        res.added += int(add.sum())
        res.removed += int(rem.sum())
        res.changed += int(real.sum())
        res.rc_only += int(rc_diff.sum())
        part = add | rem | real
        if not res.ignore_rc:
            part |= rc_diff
        if len(res.first) < self.limit and part.any():
            for i in np.flatnonzero(part)[: self.limit - len(res.first)]:
                kind = "added" if add[i] else "removed" if rem[i] else "changed" if real[i] else "rc"
                res.first.append((lo + int(i), kind))
        return part


def diff_tables(
    a: np.ndarray,
    b: np.ndarray,
    *,
    ignore_rc: bool = False,
    ignore_software: bool = True,
    limit: int = 10,
    chunk: int = 1 << 20,
) -> TableDiff:
    """Compare two whole table states of the same size."""
    if len(a) != len(b):
        raise UsageError(f"the tables differ in size: {len(a)} and {len(b)} entries")
    differ = TableDiffer(ignore_rc=ignore_rc, ignore_software=ignore_software, limit=limit)
    masks = [differ.add(lo, a[lo : lo + chunk], b[lo : lo + chunk]) for lo in range(0, len(a), chunk)]
    differ.result.mask = np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
    return differ.result


def field_changes(va: int, ra: int, vb: int, rb: int) -> dict:
    """The decoded fields that differ between two entries: {name: (a, b)}."""
    fa = hpte.HPTE(va, ra).fields()
    fb = hpte.HPTE(vb, rb).fields()
    return {k: (fa[k], fb[k]) for k in fa if fa[k] != fb[k] and k not in ("v", "r")}


# -- the final state of a stream of passes, in windows ------------------------

#: entries per window: 4 MiB of table (the statistics make several passes over
#: a window, and 4 MiB stays in cache where 16 did not: stat of order 30 3.8 -> 3.0 s)
DEFAULT_WINDOW = 1 << 18


class Overrides:
    """What the passes after the first write, last writer winning.

    Later passes are incremental (the entries changed since they were last
    read), so they are small beside the first pass: they are held here,
    entry by entry, and laid over the first pass as it streams past."""

    def __init__(self):
        self._index: list[np.ndarray] = []
        self._words: list[np.ndarray] = []
        self.index = np.zeros(0, dtype=np.int64)
        self.words = np.zeros((0, 2), dtype=">u8")

    def add(self, batch: RecordBatch) -> None:
        if not len(batch):
            return
        self._index.append(batch.entry_index())
        self._words.append(batch.entries.view(np.uint64).reshape(-1, 2))
        inv = _expand_invalid(batch)
        self._index.append(inv)
        self._words.append(np.zeros((len(inv), 2), dtype=np.uint64))

    def finish(self) -> Overrides:
        """Keep the last write of each entry, sorted by index."""
        if self._index:
            idx = np.concatenate(self._index)
            words = np.concatenate(self._words)
            # the last occurrence of each index wins: unique over the reversed order
            rev_unique, first_in_rev = np.unique(idx[::-1], return_index=True)
            self.index = rev_unique
            self.words = words[::-1][first_in_rev].view(">u8")
        self._index, self._words = [], []
        return self

    def __len__(self) -> int:
        return len(self.index)

    def lay_over(self, lo: int, window: np.ndarray) -> None:
        a, b = np.searchsorted(self.index, [lo, lo + len(window)])
        if b > a:
            window[self.index[a:b] - lo] = self.words[a:b]


def _expand_invalid(batch: RecordBatch) -> np.ndarray:
    return expand_ranges(batch.index + batch.n_valid, batch.n_invalid)


def check_ascending(batch: RecordBatch, previous_end: int) -> None:
    """A first pass's records ascend (each at or after the end of the one
    before, ``previous_end`` before the batch): StreamError naming the first
    that goes back (the pass rule of :mod:`htabtool.records.passes`)."""
    back = pass_starts(batch, previous_end)
    if len(back):
        k = int(back[0])
        below = end_before(batch, k, previous_end)
        raise StreamError(
            f"record {batch.first_record + k} at offset {int(batch.offset[k]):#x}: index "
            f"{int(batch.index[k])} goes back within the first pass (below {below})",
            offset=int(batch.offset[k]),
            record=batch.first_record + k,
        )


def final_windows(first_pass, overrides: Overrides, n_entries: int, window: int = DEFAULT_WINDOW):
    """The final table state, as ``(lo, table slice)`` windows covering
    0..n_entries in order.

    ``first_pass``: the first pass's record batches in stream order; they
    must ascend (each record at or after the end of the one before), as a
    kernel's pass does; ``overrides``: the later passes (:class:`Overrides`,
    finished).  Memory: one window plus the overrides, whatever the table's
    size."""
    window = max(8, min(window, n_entries))
    lo = 0
    buf = new_table(min(window, n_entries))
    previous_end = 0
    for batch in first_pass:
        if not len(batch):
            continue
        check_ascending(batch, previous_end)
        previous_end = int(batch.end[-1])
        ei = batch.entry_index()
        ents = batch.entries
        k = 0
        while True:
            hi = lo + len(buf)
            j = int(np.searchsorted(ei, hi, side="left"))
            if j > k:  # rows moved 16 bytes at a time (a V16 view): a 2-D fancy index is several times slower
                buf.view(_ROW)[ei[k:j] - lo, 0] = np.ascontiguousarray(ents[k:j]).view(_ROW)[:, 0]
            k = j
            if previous_end < hi:
                break
            overrides.lay_over(lo, buf)
            yield lo, buf
            lo = hi
            if lo >= n_entries:
                break
            buf = new_table(min(window, n_entries - lo))
    while lo < n_entries:
        overrides.lay_over(lo, buf)
        yield lo, buf
        lo += len(buf)
        if lo < n_entries:
            buf = new_table(min(window, n_entries - lo))
