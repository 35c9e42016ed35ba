"""htabtool show and ops.show: every field decoded as the kernel defines it,
every filter (and combinations), JSON Lines, CSV, --pass with its headers,
``| head``."""

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from htabtool import hpte, ops
from htabtool.errors import UsageError
from htabtool.records import RecordDecoder, new_table
from htabtool.sources import open_snapshot
from tests.helpers import QEMU_FIXTURES, cli_run, env_with_root, synthetic_table, write_snapshot

FIXTURES = QEMU_FIXTURES
ORDER = 14  # 1,024 entries


def entries(path, **kw):
    with open_snapshot(str(path)) as snap:
        return list(ops.show(snap, **kw))


# -- hand-decoded entries ---------------------------------------------------------------

#: (v, r) -> the fields, decoded by hand from the bit layout of
#: arch/powerpc/include/asm/book3s/64/mmu-hash.h and kvmppc_hpte_page_shifts
HAND = [
    # 4K page (L clear) in a 256M segment: AVPN 0x123, RPN 0x45678, R C, M, PP 1
    ((0x123 << 7) | 0x1, 0x45678000 | 0x100 | 0x080 | 0x010 | 0x1,
     dict(valid=True, bolted=False, secondary=False, large=False, segment_size="256M", avpn=0x123, page_size="4K",
          actual_page_size="4K", rpn=0x45678, real_address=0x45678000, wimg=0b0010, pp=1, no_execute=False, key=0,
          referenced=True, changed=True, vrma=False, hvlock=False, absent=False)),
    # 64K (LP 0001) in a 1T segment, bolted, HVLOCK as today's kernel reports it, PP0 set with PP 2, N
    ((1 << 62) | (0xABC << 7) | 0x40 | 0x10 | 0x4 | 0x1, 0x8000000000000000 | (0x1234 << 16) | 0x1000 | 0x4 | 0x2,
     dict(valid=True, bolted=True, secondary=False, large=True, segment_size="1T", avpn=0xABC, page_size="64K",
          actual_page_size="64K", rpn=0x12341, real_address=0x12340000, wimg=0, pp=6, no_execute=True, key=0,
          referenced=False, changed=False, vrma=False, hvlock=True, absent=False)),
    # 16M (LP 0000, LPHI 0) in the secondary group, ABSENT, key 31 (KEY_HI 11, KEY_LO 111), I and G, PP 3
    ((0x789 << 7) | 0x20 | 0x4 | 0x2 | 0x1, 0x3000000100000000 | 0xE00 | 0x20 | 0x08 | 0x3,
     dict(valid=True, bolted=False, secondary=True, large=True, segment_size="256M", avpn=0x789, page_size="16M",
          actual_page_size="16M", rpn=0x100000, real_address=0x100000000, wimg=0b0101, pp=3, no_execute=False,
          key=31, referenced=False, changed=False, vrma=False, hvlock=False, absent=True)),
    # 16G (LP 0011) of the VRMA (1T, VRMA_VSID), bolted
    (0x4001FFFFFF000000 | 0x10 | 0x4 | 0x1, 0x400000000 | 0x3000 | 0x2,
     dict(valid=True, bolted=True, secondary=False, large=True, segment_size="1T", avpn=0x3FFFFFE0000,
          page_size="16G", actual_page_size="16G", rpn=0x400003, real_address=0x400000000, wimg=0, pp=2,
          no_execute=False, key=0, referenced=False, changed=False, vrma=True, hvlock=False, absent=False)),
    # 64K in 4K (LP 0111): base 4K, actual 64K
    ((0x5 << 7) | 0x4 | 0x1, 0xABC0000 | 0x7000,
     dict(large=True, segment_size="256M", avpn=0x5, page_size="4K", actual_page_size="64K", rpn=0xABC7,
          real_address=0xABC0000, pp=0)),
    # 16M in 64K (LP 1000, LPHI 0): base 64K, actual 16M
    ((0x6 << 7) | 0x4 | 0x1, 0x2000000 | 0x8000 | 0x100,
     dict(page_size="64K", actual_page_size="16M", rpn=0x2008, real_address=0x2000000, referenced=True)),
    # an encoding kvmppc_hpte_page_shifts does not decode (LP 0101): 0, the address taken as 4K
    ((0x7 << 7) | 0x4 | 0x1, 0x100000 | 0x5000,
     dict(page_size="invalid", actual_page_size="invalid", rpn=0x105, real_address=0x105000)),
]


@pytest.fixture
def hand_snapshot(tmp_path):
    table = new_table(1 << (ORDER - 4))
    slots = [3, 8, 9, 100, 511, 512, 1023]
    for slot, (v, r, _) in zip(slots, HAND):
        table[slot] = (v, r)
    return write_snapshot(tmp_path / "hand.htab", [(table, None)], order=ORDER), slots


def test_every_field_decoded_as_by_hand(hand_snapshot):
    path, slots = hand_snapshot
    got = entries(path)
    assert [e["index"] for e in got] == slots
    for e, slot, (v, r, want) in zip(got, slots, HAND):
        assert (e["v"], e["r"]) == (v, r)
        assert (e["pteg"], e["slot"]) == (slot // 8, slot % 8)
        assert e["kind"] == "entry"
        for key, value in want.items():
            assert e[key] == value, (slot, key, e[key], value)
        # the scalar decoder (one object an entry, for people) agrees field by field
        fields = hpte.HPTE(v, r)
        assert e["page_size"] == fields.page_size and e["real_address"] == fields.real_address
        assert e["actual_page_size"] == hpte.PAGE_SIZE_NAMES[fields.actual_page_shift]


def test_a_real_qemu_capture_decoded_by_hand(tmp_path):
    """The first entry of the QEMU 7.2 capture (fixtures/qemu), decoded by
    hand: v 0x400fdbc2b3ffc385 = B 01 (1T), AVPN 0x1fb78567ff87, L, V;
    r 0x3fe41196 = RPN 0x3fe41 with LP 0001 (64K; LPHI 4 is RPN there), R C, M, N, PP 2."""
    snap = tmp_path / "q.htab"
    assert cli_run("dump", "--qemu", FIXTURES / "pseries-4g-one-part.mig", "-o", snap, cwd=tmp_path).exit_code == 0
    first = entries(snap, limit=1)[0]
    assert first == {
        "kind": "entry", "index": 2376, "pteg": 297, "slot": 0, "v": 0x400FDBC2B3FFC385, "r": 0x3FE41196,
        "valid": True, "bolted": False, "secondary": False, "large": True, "segment_size": "1T",
        "avpn": 0x1FB78567FF87, "page_size": "64K", "actual_page_size": "64K", "rpn": 0x3FE41,
        "real_address": 0x3FE40000, "wimg": 0b0010, "pp": 2, "no_execute": True, "key": 0, "referenced": True,
        "changed": True, "vrma": False, "hvlock": False, "absent": False,
    }
    r = cli_run("show", snap, cwd=tmp_path)
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert len(lines) == 1 + 1500  # the header and the capture's 1,500 entries (one each)
    assert lines[1].split() == ["2376", "297:0", "V--L", "1T", "0x001fb78567ff87", "64K", "0x00000003fe41",
                                "0x000000003fe40000", "0010", "0:2", "1", "0", "RC", "-"]


def test_array_page_shifts_equal_the_scalar_kernel_function():
    rng = np.random.default_rng(5)
    v = rng.integers(0, 1 << 63, 4000, dtype=np.uint64) | np.uint64(1)
    r = rng.integers(0, 1 << 63, 4000, dtype=np.uint64)
    got = hpte.page_shifts_array(v, r).tolist()
    assert got == [hpte.page_shifts(int(a), int(b)) for a, b in zip(v, r)]
    assert set(got) >= {0, 12, 16, 24, 34, (16 << 8) + 12, (24 << 8) + 16}


# -- filters ------------------------------------------------------------------------------


@pytest.fixture
def mixed(tmp_path):
    """A table of 1,024 entries mixing page sizes, segments, bolted, VRMA."""
    n = 1 << (ORDER - 4)
    rng = np.random.default_rng(7)
    table = new_table(n)
    valid = rng.random(n) < 0.6
    v = (rng.integers(0, 1 << 20, n, dtype=np.uint64) << np.uint64(7)) | np.uint64(1)
    v |= np.where(rng.random(n) < 0.5, np.uint64(hpte.HPTE_V_BOLTED), np.uint64(0))
    v |= np.where(rng.random(n) < 0.5, np.uint64(hpte.HPTE_V_1TB_SEG), np.uint64(0))
    large = rng.random(n) < 0.7
    v |= np.where(large, np.uint64(hpte.HPTE_V_LARGE), np.uint64(0))
    lp = rng.choice(np.array([0, 1, 3, 1], dtype=np.uint64), n)
    r = (rng.integers(0, 1 << 24, n, dtype=np.uint64) << np.uint64(20)) | (lp << np.uint64(12)) | np.uint64(0x190)
    vrma = rng.random(n) < 0.05
    v = np.where(vrma, np.uint64(0x4001FFFFFF000000 | 0x15), v)
    table[:, 0] = np.where(valid, v, 0)
    table[:, 1] = np.where(valid, r, 0)
    return write_snapshot(tmp_path / "mixed.htab", [(table, None)], order=ORDER), table


def expected(table, pred):
    """Indices whose (index, HPTE) the predicate accepts: the slow, scalar path."""
    out = []
    for i, (v, r) in enumerate(table.tolist()):
        if pred(i, hpte.HPTE(v, r)):
            out.append(i)
    return out


FILTERS = [
    ({}, lambda i, e: e.valid),
    ({"valid": None}, lambda i, e: True),
    ({"valid": False}, lambda i, e: not e.valid),
    ({"index": (100, 299)}, lambda i, e: e.valid and 100 <= i <= 299),
    ({"bolted": True}, lambda i, e: e.valid and e.bolted),
    ({"bolted": False}, lambda i, e: e.valid and not e.bolted),
    *[({"page_size": s}, lambda i, e, s=s: e.valid and e.page_size == s) for s in ("4K", "64K", "16M", "16G")],
    *[({"segment": s}, lambda i, e, s=s: e.valid and e.segment_size == s) for s in ("256M", "1T")],
    ({"avpn": (0x40, 0xC0)}, lambda i, e: e.valid and e.avpn & 0xC0 == 0x40),
    ({"rpn": (0x100, 0x300)}, lambda i, e: e.valid and e.rpn & 0x300 == 0x100),
    ({"avpn": (e := 0x3FFFFFE0000, (1 << 64) - 1)}, lambda i, x: x.valid and x.avpn == e),
    ({"vrma": True}, lambda i, e: e.valid and e.vrma),
    # combinations
    ({"bolted": True, "page_size": "16M", "segment": "1T"},
     lambda i, e: e.valid and e.bolted and e.page_size == "16M" and e.segment_size == "1T"),
    ({"index": (0, 511), "bolted": False, "rpn": (0x100, 0x100)},
     lambda i, e: e.valid and i <= 511 and not e.bolted and e.rpn & 0x100),
    ({"valid": None, "index": (10, 20)}, lambda i, e: 10 <= i <= 20),
    ({"vrma": True, "bolted": False}, lambda i, e: False),
]


@pytest.mark.parametrize("kw,pred", FILTERS, ids=[str(f[0]) for f in FILTERS])
def test_filters_select_what_the_scalar_decoder_selects(mixed, kw, pred):
    path, table = mixed
    want = expected(table, pred)
    got = [e["index"] for e in entries(path, filters=ops.Filters(**kw))]
    assert got == want
    if kw.get("vrma") is not True or kw.get("bolted") is not False:
        assert want, "a filter that selects nothing tests little"


def test_limit_and_small_windows(mixed):
    path, table = mixed
    every = [e["index"] for e in entries(path)]
    assert [e["index"] for e in entries(path, limit=7)] == every[:7]
    assert entries(path, limit=0) == []
    with open_snapshot(str(path)) as snap:
        assert [e["index"] for e in ops.show(snap, window=64, limit=300)] == every[:300]


def test_bad_filters_are_usage_errors():
    from htabtool.ops.show import parse_index_range, parse_masked_hex

    assert parse_index_range("10..20") == (10, 20)
    assert parse_index_range("0x10..") == (16, (1 << 63) - 1)
    assert parse_index_range("..7") == (0, 7)
    assert parse_index_range("5") == (5, 5)
    assert parse_masked_hex("ff/f0", "--avpn") == (0xFF, 0xF0)
    assert parse_masked_hex("0x1", "--rpn") == (1, (1 << 64) - 1)
    for bad in ("", "a..b..c", "x..", ".."):
        with pytest.raises(UsageError):
            parse_index_range(bad)
    for bad in ("zz", "1/zz", "1" * 17):
        with pytest.raises(UsageError):
            parse_masked_hex(bad, "--avpn")
    with pytest.raises(UsageError):
        ops.Filters(index=(5, 4))
    with pytest.raises(UsageError):
        ops.Filters(page_size="2M")


# -- later passes ------------------------------------------------------------------------


@pytest.fixture
def live(tmp_path):
    """Three passes: a first pass, then two that change, add and remove entries."""
    a = synthetic_table(ORDER, 0.4, 3)
    b = a.copy()
    valid = np.flatnonzero(a[:, 0].astype(np.uint64) & np.uint64(1))
    free = np.flatnonzero(~(a[:, 0].astype(np.uint64) & np.uint64(1)).astype(bool))
    b[valid[:5]] = 0  # removed
    b[free[:4]] = a[valid[10:14]]  # added
    b[valid[20:23], 1] ^= np.array([0x80, 0x80, 0x80], dtype=">u8")  # C changed
    ch2 = np.zeros(len(a), bool)
    ch2[valid[:5]] = ch2[free[:4]] = ch2[valid[20:23]] = True
    c = b.copy()
    c[valid[100:102], 1] ^= np.array([0x100, 0x100], dtype=">u8")
    ch3 = np.zeros(len(a), bool)
    ch3[valid[100:102]] = True
    path = write_snapshot(tmp_path / "live.htab", [(a, None), (b, ch2), (c, ch3)], order=ORDER)
    return path, c, ch2, ch3


def test_final_table_is_the_last_pass_laid_over(live):
    path, final, _, _ = live
    got = entries(path, filters=ops.Filters(valid=None))
    assert [(e["v"], e["r"]) for e in got] == [tuple(x) for x in final.astype(np.uint64).tolist()]


def test_changed_in_a_later_pass(live):
    path, final, ch2, ch3 = live
    for number, mask in ((2, ch2), (3, ch3)):
        got = entries(path, filters=ops.Filters(valid=None, changed_in=number))
        assert [e["index"] for e in got] == np.flatnonzero(mask).tolist()
    # combined with the default (valid): pass 2's removals are not shown
    valid_now = final[:, 0].astype(np.uint64) & np.uint64(1) != 0
    got = entries(path, filters=ops.Filters(changed_in=2))
    assert [e["index"] for e in got] == np.flatnonzero(ch2 & valid_now).tolist()
    with pytest.raises(UsageError, match="first pass"):
        entries(path, filters=ops.Filters(changed_in=1))
    with pytest.raises(UsageError, match="no pass 9"):
        entries(path, filters=ops.Filters(changed_in=9))


def _records_of_pass(path, number):
    with open_snapshot(str(path)) as snap:
        dec = RecordDecoder(snap.byte_order, n_entries=snap.entries)
        for n, data in snap.pieces():
            if n == number:
                dec.receive_data(data)
        dec.receive_data(b"")
        return list(dec.next_batch().records())


def test_pass_gives_records_and_their_entries_in_stream_order(live):
    path, *_ = live
    want = []
    for rec in _records_of_pass(path, 2):
        want.append(("record", rec.index, rec.n_valid, rec.n_invalid, rec.offset))
        for k in range(rec.n_valid):
            v, r = (int.from_bytes(rec.entries[16 * k + o : 16 * k + o + 8], "big") for o in (0, 8))
            want.append(("entry", rec.index + k, v, r, rec.number))
    got = []
    for item in entries(path, pass_number=2):
        if item["kind"] == "record":
            got.append(("record", item["index"], item["n_valid"], item["n_invalid"], item["offset"]))
            assert item["pass"] == 2
        else:
            got.append(("entry", item["index"], item["v"], item["r"], item["record"]))
    assert got == want and len(want) > 9
    # --invalid: the records with an invalid run, no entries
    inv = entries(path, pass_number=2, filters=ops.Filters(valid=False))
    assert [x["record"] for x in inv] == [k for k, r in enumerate(_records_of_pass(path, 2)) if r.n_invalid]
    assert all(x["kind"] == "record" for x in inv)
    # an entry filter keeps only the records with a passing entry; --limit counts lines
    c_set = entries(path, pass_number=2, filters=ops.Filters(rpn=(0, 0)))
    assert {x["kind"] for x in c_set} == {"record", "entry"}
    assert len(entries(path, pass_number=2, limit=3)) == 3
    with pytest.raises(UsageError, match="no pass 4"):
        entries(path, pass_number=4)


# -- the command --------------------------------------------------------------------------


def test_json_lines_parse_one_by_one(live, tmp_path):
    path, final, _, _ = live
    r = cli_run("show", "--json", "--all", path, cwd=tmp_path)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert len(lines) == len(final)
    for i, line in enumerate(lines):
        obj = json.loads(line)
        assert obj["index"] == i and isinstance(obj["v"], int) and isinstance(obj["r"], int)
        assert (obj["v"], obj["r"]) == tuple(final[i].astype(np.uint64).tolist())


def test_json_of_a_pass_carries_its_headers(live, tmp_path):
    path, *_ = live
    r = cli_run("show", "--json", "--pass", 3, path, cwd=tmp_path)
    objs = [json.loads(line) for line in r.output.splitlines()]
    recs = _records_of_pass(path, 3)
    assert [o["index"] for o in objs if o["kind"] == "record"] == [x.index for x in recs]
    assert sum(o["kind"] == "entry" for o in objs) == sum(x.n_valid for x in recs)


def test_csv_parses_with_the_csv_module(mixed, tmp_path):
    path, table = mixed
    r = cli_run("show", "--csv", "--bolted", path, cwd=tmp_path)
    assert r.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(r.output)))
    want = entries(path, filters=ops.Filters(bolted=True))
    assert len(rows) == len(want) > 10
    for row, e in zip(rows, want):
        assert int(row["index"]) == e["index"] and int(row["v"]) == e["v"] and int(row["r"]) == e["r"]
        assert row["bolted"] == "1" and row["page_size"] == e["page_size"]


def test_csv_of_a_pass_has_record_rows(live, tmp_path):
    path, *_ = live
    r = cli_run("show", "--csv", "--pass", 2, path, cwd=tmp_path)
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert {row["kind"] for row in rows} == {"record", "entry"}
    assert all(row["n_valid"] != "" for row in rows if row["kind"] == "record")


def test_text_pass_headers_and_options(live, tmp_path):
    path, *_ = live
    r = cli_run("show", "--pass", 2, "--limit", 5, path, cwd=tmp_path)
    lines = r.output.splitlines()
    assert lines[0].split()[0] == "INDEX" and len(lines) == 6
    assert lines[1].startswith("record 0 (pass 2, offset 0x0): index ")
    r = cli_run("show", "--index", "0..15", "--all", "--not-bolted", "--page-size", "4k", "--segment", "256m",
                "--avpn", "0/0", "--rpn", "0/0", path, cwd=tmp_path)
    assert r.exit_code == 0, r.output
    for line in r.output.splitlines()[1:]:
        assert int(line.split()[0]) <= 15 and " 256M " in line


@pytest.mark.parametrize("args,message", [
    (["--json", "--csv"], "at most one of --json and --csv"),
    (["--changed-in", 1], "first pass"),
    (["--pass", 7], "no pass 7"),
    (["--index", "9..2"], "is empty"),
    (["--avpn", "xyz"], "--avpn 'xyz'"),
    (["--page-size", "2M"], "2M"),
])
def test_bad_options_one_line(live, tmp_path, args, message):
    path, *_ = live
    r = cli_run("show", *args, path, cwd=tmp_path)
    assert r.exit_code == 2
    assert message in r.output and "Traceback" not in r.output


def test_head_ends_quietly(tmp_path):
    """show | head: the reader goes away, the command stops without a word."""
    table = synthetic_table(20, 0.5, 2)  # 65,536 entries, about 32,000 valid
    path = write_snapshot(tmp_path / "big.htab", [(table, None)], order=20, read=65536)
    env = env_with_root()
    for fmt in ([], ["--json"], ["--csv"]):
        proc = subprocess.run(f"{sys.executable} -m htabtool show {' '.join(fmt)} {path} | head -3",
                              shell=True, capture_output=True, text=True, env=env, timeout=60,
                              executable="/bin/bash")
        assert proc.stderr == "", proc.stderr
        assert len(proc.stdout.splitlines()) == 3
        status = subprocess.run(f"{sys.executable} -m htabtool show {' '.join(fmt)} {path} | head -1 >/dev/null; "
                                "echo ${{PIPESTATUS[0]}}".replace("{{", "{").replace("}}", "}"),
                                shell=True, capture_output=True, text=True, env=env, timeout=60,
                                executable="/bin/bash")
        assert status.stderr == ""
        assert int(status.stdout) == 141  # stopped by the broken pipe (128 + SIGPIPE), not run to the end


def test_text_columns_of_the_hand_decoded_entries(hand_snapshot, tmp_path):
    path, slots = hand_snapshot
    r = cli_run("show", path, cwd=tmp_path)
    header, *lines = r.output.splitlines()
    assert header.split() == ["INDEX", "PTEG:S", "VBHL", "SEG", "AVPN", "PAGE", "RPN", "REAL", "ADDRESS", "WIMG", "PP",
                              "N", "KEY", "RC", "SW"]
    cols = [line.split() for line in lines]
    assert [c[0] for c in cols] == [str(s) for s in slots]
    assert cols[0][2:] == ["V---", "256M", "0x00000000000123", "4K", "0x000000045678", "0x0000000045678000", "0010",
                           "0:1", "0", "0", "RC", "-"]
    assert cols[1][2:] == ["VB-L", "1T", "0x00000000000abc", "64K", "0x000000012341", "0x0000000012340000", "0000",
                           "1:2", "1", "0", "--", "HVLOCK"]
    assert cols[2][2:] == ["V-HL", "256M", "0x00000000000789", "16M", "0x000000100000", "0x0000000100000000", "0101",
                           "0:3", "0", "31", "--", "ABSENT"]
    assert cols[3][5] == "16G" and cols[4][5] == "4K/64K" and cols[5][5] == "64K/16M" and cols[6][5] == "invalid"


def test_standard_input(live, tmp_path):
    path, final, _, _ = live
    r = cli_run("show", "--json", "--limit", 5, "-", input=path.read_bytes())
    assert r.exit_code == 0, r.output
    want = [e["index"] for e in entries(path, limit=5)]
    assert [json.loads(line)["index"] for line in r.output.splitlines()] == want
    r = cli_run("map", "--json", "--width", 40, "-", input=path.read_bytes())
    assert r.exit_code == 0 and json.loads(r.output)["passes"][0]["pass"] == 2
