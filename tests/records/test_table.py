"""Table statistics and comparison."""

import numpy as np
import pytest

from htabtool import hpte
from htabtool.records import StaticTable, decode_batch, encode_pass, new_table
from htabtool.records.table import RecordStats, TableStats, diff_tables, field_changes

V64K = hpte.HPTE_V_1TB_SEG | hpte.HPTE_V_BOLTED | hpte.HPTE_V_LARGE | hpte.HPTE_V_VALID
R64K = 0x1000 | hpte.HPTE_R_M | 0x2


def sample():
    t = new_table(64)
    t[0] = (V64K | (1 << 7), R64K | hpte.HPTE_R_R)
    t[1] = (V64K | (2 << 7), R64K | hpte.HPTE_R_R | hpte.HPTE_R_C)
    t[9] = ((3 << 7) | hpte.HPTE_V_SECONDARY | hpte.HPTE_V_VALID | hpte.HPTE_V_HVLOCK, 0x5000)  # 4K, 256M
    t[63] = (hpte.HPTE_V_1TB_SEG | (hpte.VRMA_VSID << 24) | hpte.HPTE_V_BOLTED | hpte.HPTE_V_LARGE | 1, 0)  # 16M VRMA
    return t


def test_table_stats():
    s = TableStats.of(sample(), chunk=16)
    assert (s.entries, s.valid, s.invalid, s.bolted) == (64, 4, 60, 3)
    assert s.secondary == 1 and s.hvlock == 1 and s.vrma == 1
    assert s.referenced == 2 and s.changed == 1
    assert s.page_sizes == {"64K": 2, "4K": 1, "16M": 1}
    assert s.segment_sizes == {"1T": 3, "256M": 1}
    assert s.pteg_fill == [5, 2, 1, 0, 0, 0, 0, 0, 0]  # groups 0: 2 valid, 1: 1, 7: 1


def _reference_stats(t):
    """TableStats by the scalar rules of htabtool.hpte, an entry at a time."""
    counts = dict.fromkeys(("valid", "bolted", "secondary", "hvlock", "referenced", "changed", "vrma"), 0)
    pages, segments, fill = {}, {}, [0] * 9
    per_group = [0] * (len(t) // 8)
    for k, (v, r) in enumerate(t.tolist()):
        if not v & hpte.HPTE_V_VALID:
            continue
        per_group[k // 8] += 1
        counts["valid"] += 1
        counts["bolted"] += bool(v & hpte.HPTE_V_BOLTED)
        counts["secondary"] += bool(v & hpte.HPTE_V_SECONDARY)
        counts["hvlock"] += bool(v & hpte.HPTE_V_HVLOCK)
        counts["referenced"] += bool(r & hpte.HPTE_R_R)
        counts["changed"] += bool(r & hpte.HPTE_R_C)
        counts["vrma"] += hpte.is_vrma_hpte(v)
        name = hpte.PAGE_SIZE_NAMES.get(hpte.page_shift_pair(v, r)[0])
        pages[name] = pages.get(name, 0) + 1
        seg = hpte.SEGMENT_SIZE_NAMES[v >> hpte.HPTE_V_SSIZE_SHIFT]
        segments[seg] = segments.get(seg, 0) + 1
    for n in per_group:
        fill[n] += 1
    return counts, pages, segments, fill


def test_table_stats_agree_with_the_scalar_rules_entry_by_entry():
    """Random words (every flag, page encoding and segment size; junk in the
    invalid entries too, which must not count), in windows of 24 entries."""
    rng = np.random.default_rng(11)
    n = 4096
    v = rng.integers(0, 1 << 63, n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
    r = rng.integers(0, 1 << 63, n, dtype=np.uint64)
    r[::3] &= ~np.uint64(0xFF000)  # LP 0 and its high nibble 0: 16M when large
    r[1::5] = (r[1::5] & ~np.uint64(0xFF000)) | np.uint64(0x8000)  # LP 8: 16M in 64K
    vrma = rng.random(n) < 0.1
    v[vrma] = np.uint64(hpte.VRMA_HPTE_V) | (v[vrma] & np.uint64(hpte.VRMA_IGNORED_BITS))
    t = new_table(n)
    t[:, 0], t[:, 1] = v, r
    s = TableStats.of(t, chunk=24)
    counts, pages, segments, fill = _reference_stats(t)
    assert {k: getattr(s, k) for k in counts} == counts
    assert s.page_sizes == pages and s.segment_sizes == segments
    assert s.pteg_fill == fill and s.entries == n and s.invalid == n - counts["valid"]
    assert 0 < counts["vrma"] and len(pages) >= 4 and len(segments) == 4


@pytest.mark.parametrize("read", [200, 4096, 1 << 16])
def test_a_first_pass_counted_from_its_records_equals_its_table_counted(read):
    """TableStats.of_first_pass (no table built) against TableStats.of the
    table the pass makes; reads of 200 bytes cut PTEGs between batches."""
    from htabtool.records import iter_reads

    rng = np.random.default_rng(12)
    n = 1 << 13
    t = new_table(n)
    live = rng.random(n) < 0.45
    live[:8] = True  # a full first group
    v = (rng.integers(0, 1 << 60, n, dtype=np.uint64) << np.uint64(2)) | np.uint64(hpte.HPTE_V_VALID)
    t[live, 0] = v[live]
    t[live, 1] = rng.integers(0, 1 << 63, int(live.sum()), dtype=np.uint64)
    batches = [decode_batch(res.data, "little")[0] for res in iter_reads(StaticTable(t), read, "little")]
    seen = []
    got = TableStats.of_first_pass(batches, n, progress=seen.append)
    assert got.to_dict() == TableStats.of(t).to_dict()
    assert sum(seen) == n and got.valid == int(live.sum())


def test_a_first_pass_that_goes_back_is_refused_as_the_windows_refuse_it():
    from htabtool.errors import StreamError
    from htabtool.records.table import Overrides, final_windows

    t = sample()
    batch, _ = decode_batch(encode_pass(StaticTable(t), "little"), "little")
    messages = []
    for count in (lambda b: TableStats.of_first_pass(b, 64), lambda b: list(final_windows(b, Overrides(), 64))):
        with pytest.raises(StreamError) as info:
            count([batch, batch])
        messages.append(str(info.value))
    assert messages[0] == messages[1] and "goes back within the first pass" in messages[0]


def test_record_stats_per_pass():
    t = sample()
    batch, _ = decode_batch(encode_pass(StaticTable(t), "little"), "little")
    rs = RecordStats()
    rs.add(batch, 1)
    d = rs.to_dict()
    assert d["records"] == len(batch) == 3
    assert d["per_pass"] == [{"pass": 1, "records": 3, "valid": 4, "invalid": 60, "bytes": 3 * 8 + 4 * 16}]
    assert d["n_valid_distribution"]["2-7"] == 1 and d["n_valid_distribution"]["1"] == 2


def test_diff_counts_and_rc_apart():
    a = sample()
    b = a.copy()
    b[0, 1] = int(b[0, 1]) | hpte.HPTE_R_C  # R/C only
    b[1] = (0, 0)  # removed
    b[5] = (V64K, R64K)  # added
    b[9, 1] = 0x6000  # changed (RPN)
    b[63, 0] = int(b[63, 0]) | hpte.HPTE_V_HVLOCK  # software bit only: ignored
    d = diff_tables(a, b, chunk=8)
    assert (d.added, d.removed, d.changed, d.rc_only) == (1, 1, 1, 1)
    assert d.different
    assert d.first == [(0, "rc"), (1, "removed"), (5, "added"), (9, "changed")]
    d2 = diff_tables(a, b, ignore_rc=True)
    assert d2.first[0] == (1, "removed") and d2.rc_only == 1
    strict = diff_tables(a, b, ignore_software=False)
    assert strict.changed == 2


def test_identical_and_rc_only_with_ignore():
    a = sample()
    assert not diff_tables(a, a.copy()).different
    b = a.copy()
    b[0, 1] = int(b[0, 1]) | hpte.HPTE_R_C
    assert diff_tables(a, b).different
    assert not diff_tables(a, b, ignore_rc=True).different


def test_field_changes():
    ch = field_changes(V64K, R64K, V64K | hpte.HPTE_V_SECONDARY, R64K | hpte.HPTE_R_C)
    assert ch == {"secondary": (False, True), "changed": (False, True)}


def _batches(stream, size=64):
    from htabtool.records import iter_batches

    return list(iter_batches([stream[i : i + size] for i in range(0, len(stream), size)], "little"))


def test_final_windows_equal_applying_every_pass():
    from htabtool.records import apply_batch, encode_pass
    from htabtool.records.table import Overrides, final_windows

    rng = np.random.default_rng(3)
    n = 4096
    a = new_table(n)
    live = rng.random(n) < 0.4
    a[live, 0] = (np.flatnonzero(live).astype(np.uint64) << np.uint64(7)) | np.uint64(1)
    a[live, 1] = 0x1000
    b = a.copy()
    changed = rng.random(n) < 0.05
    b[changed] = 0
    grow = changed & (rng.random(n) < 0.5)
    b[grow, 0] = np.uint64(0x81)
    b[grow, 1] = 0x2000
    first = encode_pass(StaticTable(a), "little", start=100)
    later = encode_pass(StaticTable(b, changed=changed), "little", first_pass=False)
    want = new_table(n)
    for batch in _batches(first + later):
        apply_batch(want, batch)
    ov = Overrides()
    for batch in _batches(later):
        ov.add(batch)
    ov.finish()
    for window in (8, 1000, 4096, 1 << 20):
        got = np.concatenate([w.copy() for _, w in final_windows(iter(_batches(first)), ov, n, window)])
        assert np.array_equal(got, want), window
    alone = np.concatenate([w.copy() for _, w in final_windows(iter(_batches(first)), Overrides().finish(), n, 1000)])
    assert not alone[:100].any() and np.array_equal(alone[100:], a[100:])  # the first pass started at 100


def test_final_windows_refuse_a_first_pass_that_goes_back():
    import struct

    from htabtool.errors import StreamError
    from htabtool.records.table import Overrides, final_windows

    stream = struct.pack("<IHH", 4, 0, 2) + struct.pack("<IHH", 2, 0, 1)
    with pytest.raises(StreamError, match="record 1 at offset 0x8: index 2 goes back"):
        list(final_windows(iter(_batches(stream)), Overrides().finish(), 16))
