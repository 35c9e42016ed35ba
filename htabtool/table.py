"""Table states: what records add up to, their statistics, their differences.

Strategy: a table state is an (N, 2) array of big-endian doublewords
(:func:`htabtool.records.new_table`), an entry valid when HPTE_V_VALID is
set in its first doubleword and all zero when invalid.  Everything here is
a numpy expression over whole arrays (no loop per entry): statistics of a
state, statistics of the records that built it, and the comparison of two
states.  Files are not opened here; the CLI feeds batches from snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from htabtool import hpte
from htabtool.records import RecordBatch

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


def native(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(v, r) as native uint64 arrays."""
    return table[:, 0].astype(np.uint64), table[:, 1].astype(np.uint64)


def valid_mask(table: np.ndarray) -> np.ndarray:
    return (table.view(np.uint8)[:, 7] & hpte.HPTE_V_VALID) != 0


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
    def of(cls, table: np.ndarray, chunk: int = 1 << 20) -> "TableStats":
        """Statistics of a table, in slices of ``chunk`` entries (bounded temporaries)."""
        n = len(table)
        acc = dict(valid=0, bolted=0, secondary=0, referenced=0, changed=0, vrma=0, hvlock=0)
        pages: dict[str, int] = {}
        segs: dict[str, int] = {}
        fill = np.zeros(9, dtype=np.int64)
        for lo in range(0, n, chunk):
            part = table[lo : lo + chunk]
            ok = valid_mask(part)
            groups = ok[: len(ok) // 8 * 8].reshape(-1, 8).sum(axis=1)
            fill += np.bincount(groups, minlength=9)
            v, r = native(part[ok])
            acc["valid"] += int(ok.sum())
            acc["bolted"] += int(np.count_nonzero(v & _U(hpte.HPTE_V_BOLTED)))
            acc["secondary"] += int(np.count_nonzero(v & _U(hpte.HPTE_V_SECONDARY)))
            acc["hvlock"] += int(np.count_nonzero(v & _U(hpte.HPTE_V_HVLOCK)))
            acc["referenced"] += int(np.count_nonzero(r & _U(hpte.HPTE_R_R)))
            acc["changed"] += int(np.count_nonzero(r & _U(hpte.HPTE_R_C)))
            acc["vrma"] += int(np.count_nonzero(hpte.vrma_array(v)))
            shifts = hpte.base_page_shift_array(v, r)
            for s, c in zip(*np.unique(shifts, return_counts=True)):
                name = hpte.PAGE_SIZE_NAMES.get(int(s), f"2^{int(s)}")
                pages[name] = pages.get(name, 0) + int(c)
            ss = (v >> _U(hpte.HPTE_V_SSIZE_SHIFT)).astype(np.uint8)
            for s, c in zip(*np.unique(ss, return_counts=True)):
                name = hpte.SEGMENT_SIZE_NAMES[int(s)]
                segs[name] = segs.get(name, 0) + int(c)
        return cls(entries=n, page_sizes=pages, segment_sizes=segs, pteg_fill=fill.tolist(), **acc)

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


@dataclass
class PassStats:
    number: int
    records: int = 0
    valid: int = 0  # entries sent (n_valid summed)
    invalid: int = 0  # entries counted invalid (n_invalid summed)
    bytes: int = 0

    def to_dict(self) -> dict:
        return {"pass": self.number, "records": self.records, "valid": self.valid, "invalid": self.invalid, "bytes": self.bytes}


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
    edges = np.array([b[1] for b in RUN_BUCKETS] + [0x10000])
    return np.histogram(counts, bins=edges)[0]


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


def diff_tables(
    a: np.ndarray,
    b: np.ndarray,
    *,
    ignore_rc: bool = False,
    ignore_software: bool = True,
    limit: int = 10,
    chunk: int = 1 << 20,
) -> TableDiff:
    """Compare two table states of the same size, in slices of ``chunk``.

    R/C-only changes are counted apart (``rc_only``); with ``ignore_rc``
    they do not make the tables different.  KVM's software bits
    (HPTE_V_HVLOCK, HPTE_V_ABSENT, HPTE_GR_RESERVED) are ignored unless
    ``ignore_software`` is false."""
    if len(a) != len(b):
        from htabtool.errors import UsageError

        raise UsageError(f"the tables differ in size: {len(a)} and {len(b)} entries")
    mv = _U(~IGNORE_V & 0xFFFFFFFFFFFFFFFF if ignore_software else 0xFFFFFFFFFFFFFFFF)
    mr = _U(~IGNORE_R & 0xFFFFFFFFFFFFFFFF if ignore_software else 0xFFFFFFFFFFFFFFFF)
    rc = _U(RC_BITS)
    added = removed = changed = rc_only = 0
    first: list = []
    mask = np.zeros(len(a), dtype=bool)
    for lo in range(0, len(a), chunk):
        pa, pb = a[lo : lo + chunk], b[lo : lo + chunk]
        va, vb = valid_mask(pa), valid_mask(pb)
        av, ar = native(pa)
        bv, br = native(pb)
        both = va & vb
        dv = ((av ^ bv) & mv) != 0
        dr = (ar ^ br) & mr
        real = both & (dv | ((dr & ~rc) != 0))
        rc_diff = both & ~real & (dr != 0)
        add = vb & ~va
        rem = va & ~vb
        added += int(add.sum())
        removed += int(rem.sum())
        changed += int(real.sum())
        rc_only += int(rc_diff.sum())
        part = add | rem | real | (rc_diff if not ignore_rc else False)
        mask[lo : lo + len(pa)] = part
        if len(first) < limit and part.any():
            for i in np.flatnonzero(part)[: limit - len(first)]:
                kind = "added" if add[i] else "removed" if rem[i] else "changed" if real[i] else "rc"
                first.append((lo + int(i), kind))
    return TableDiff(len(a), added, removed, changed, rc_only, ignore_rc, first, mask)


def field_changes(va: int, ra: int, vb: int, rb: int) -> dict:
    """The decoded fields that differ between two entries: {name: (a, b)}."""
    fa = hpte.HPTE(va, ra).fields()
    fb = hpte.HPTE(vb, rb).fields()
    return {k: (fa[k], fb[k]) for k in fa if fa[k] != fb[k] and k not in ("v", "r")}
