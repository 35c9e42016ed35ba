"""``map``: the arrays the pictures of a table are drawn from (the
terminal map, the PNG/SVG figure, htabtool-map/1), from one streaming read
of the final table and one of the passes after the first.

Memory: a window and fixed-size arrays (at most :data:`MAP_BINS` slices of
the table), so a 1 GiB table draws in the memory a 16 MiB one does.

Imports: the final state, the index ranges of :mod:`htabtool.ops.show`, the
HPTE model and table statistics, the result types.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from htabtool import hpte
from htabtool.ops.results import MapReport
from htabtool.ops.show import PAGE_SHIFTS, WINDOW, pass_ranges
from htabtool.ops.state import final_state, pass_numbers
from htabtool.records.table import TableStats, native, valid_mask
from htabtool.sources import SnapshotInput

#: the map's slices of the table: at most this many (one PTEG each at most)
MAP_BINS = 1 << 18


@dataclass
class TableMap:
    """The arrays a picture of the table is drawn from.

    The table is cut into ``bins`` slices of ``bin_entries`` entries each (a
    whole number of PTEGs; at most :data:`MAP_BINS` slices): ``valid`` and
    ``bolted`` count the final table's entries in each, ``changed[k]`` the
    entries pass ``passes[k]`` (each pass after the first) wrote in each.
    ``stats``: the final table's statistics (PTEG fill, page sizes...)."""

    entries: int
    bin_entries: int
    valid: np.ndarray
    bolted: np.ndarray
    passes: list[int]
    changed: np.ndarray
    stats: TableStats
    pass_entries: dict = field(default_factory=dict)  # pass -> entries it wrote

    @property
    def bins(self) -> int:
        return len(self.valid)

    @property
    def non_bolted(self) -> np.ndarray:
        return self.valid - self.bolted

    @property
    def pteg_fill(self) -> np.ndarray:
        return np.asarray(self.stats.pteg_fill)

    @property
    def page_sizes(self) -> dict:
        return dict(sorted(self.stats.page_sizes.items(), key=lambda kv: PAGE_SHIFTS.get(kv[0], 99)))

    def strip(self, counts: np.ndarray, columns: int) -> np.ndarray:
        """``counts`` (one of valid, bolted, non_bolted, changed[k]) in
        ``columns`` equal slices of the table: the fraction (0..1) of each
        slice's entries counted."""
        edges = np.linspace(0, self.bins, columns + 1).round().astype(np.int64)
        cum = np.concatenate(([0], np.cumsum(counts, dtype=np.int64)))
        lo, hi = edges[:-1], edges[1:]
        narrow = hi <= lo  # a column narrower than a slice shows its slice
        lo = np.where(narrow, np.minimum(lo, self.bins - 1), lo)
        hi = np.where(narrow, lo + 1, hi)
        return (cum[hi] - cum[lo]) / ((hi - lo) * self.bin_entries)

    def image(self) -> np.ndarray:
        """The table as a 2-D image of its groups: mean valid entries per PTEG
        (0..8) of each slice, ``rows x columns`` slices in index order, row by
        row (rows a power of two, at most as many as columns)."""
        rows = 1 << (int(np.log2(self.bins)) // 2)
        return (self.valid / (self.bin_entries / hpte.ENTRIES_PER_PTEG)).reshape(rows, -1)

    def strips(self, columns: int) -> list[tuple[str, np.ndarray]]:
        """(label, fractions) rows of the map's strip, ``columns`` cells each:
        valid, bolted, non-bolted, and the entries each later pass wrote."""
        rows = [("valid", self.strip(self.valid, columns)), ("bolted", self.strip(self.bolted, columns)),
                ("non-bolted", self.strip(self.non_bolted, columns))]
        rows += [(f"pass {p}", self.strip(c, columns)) for p, c in zip(self.passes, self.changed)]
        return rows

    def report(self, columns: int) -> MapReport:
        """The terminal map of ``columns`` cells as its --json document's object."""
        return MapReport(self.entries, columns, self.strips(columns), list(self.pteg_fill), self.page_sizes,
                         {p: self.pass_entries[p] for p in self.passes})


def table_map(snap: SnapshotInput, *, bins: int = MAP_BINS, window: int = WINDOW) -> TableMap:
    """The arrays of ``htabtool map``, from one streaming read of the final
    table and one of the passes after the first."""
    groups = snap.entries // hpte.ENTRIES_PER_PTEG
    nbins = 1 << max(0, min(int(bins), groups).bit_length() - 1)  # a power of two, as the table
    bin_entries = snap.entries // nbins
    numbers = pass_numbers(snap)
    later = numbers[1:]
    edges = np.arange(nbins + 1, dtype=np.int64) * bin_entries
    changed = np.zeros((len(later), nbins), dtype=np.int64)
    pass_entries = {}
    for k, number in enumerate(later):
        ranges = pass_ranges(snap, number)
        changed[k] = np.diff(ranges.covered_below(edges))
        pass_entries[number] = len(ranges)
    valid = np.zeros(nbins, dtype=np.int64)
    bolted = np.zeros(nbins, dtype=np.int64)
    stats = TableStats.empty()
    window = max(window - window % bin_entries, bin_entries)
    for lo, part in final_state(snap, window):
        stats.add(part)
        ok = valid_mask(part)
        v = native(part)[0]
        b = ok & ((v & np.uint64(hpte.HPTE_V_BOLTED)) != 0)
        first = lo // bin_entries
        valid[first : first + len(part) // bin_entries] += ok.reshape(-1, bin_entries).sum(axis=1)
        bolted[first : first + len(part) // bin_entries] += b.reshape(-1, bin_entries).sum(axis=1)
    return TableMap(snap.entries, bin_entries, valid, bolted, later, changed, stats, pass_entries)
