"""htabtool migrate: the simulated live migration, its figures and its outputs."""

import hashlib
import json

import pytest

from htabtool import ops
from htabtool.errors import UsageError
from htabtool.ops.migrate import INDEX_ENTRY_SIZE, Link, Migration, MigrationResult
from htabtool.sim import H_EXACT, H_SUCCESS, SimulatedHPT
from htabtool.sim.guest import PROFILES
from htabtool.units import parse_bandwidth, parse_duration
from tests.helpers import cli_run


def make_vm(tmp_path, profile="kernel-build", order=20, seed=7, name="src.img"):
    img = tmp_path / name
    r = cli_run("vm", "create", img, "--order", order, "--profile", profile, "--seed", seed, cwd=tmp_path)
    assert r.exit_code == 0, r.output
    return img


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stat(path, tmp_path):
    r = cli_run("stat", "--json", path, cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


# -- the parsers ---------------------------------------------------------------------


@pytest.mark.parametrize("text,bits", [("1G", 1e9), ("10G", 1e10), ("25G", 25e9), ("100M", 1e8), ("2.5G", 2.5e9),
                                       ("1Gbit/s", 1e9), ("10Gbps", 1e10), ("800k", 8e5), ("1e9", 1e9), ("1000", 1e3)])
def test_bandwidth_is_decimal_bits_per_second(text, bits):
    assert parse_bandwidth(text) == pytest.approx(bits)


@pytest.mark.parametrize("text", ["", "fast", "1GiB", "1X", "-1G", "0", "0G", "inf", "1 G b p"])
def test_bad_bandwidths_are_refused(text):
    with pytest.raises(UsageError):
        parse_bandwidth(text)


@pytest.mark.parametrize("text,seconds", [("30ms", 0.03), ("0.3s", 0.3), ("300ms", 0.3), ("500us", 5e-4),
                                          ("2", 2.0), ("0", 0.0), ("5000000ns", 0.005), (".5s", 0.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "30 parsecs", "-1s", "1h", "ms"])
def test_bad_durations_are_refused(text):
    with pytest.raises(UsageError):
        parse_duration(text)


# -- the per-entry-index figure, against a hand count ------------------------------------


class ScriptedGuest:
    """A guest that changes the table once, the first time it runs: removes
    the entry at slot 1 and enters two at slots 300 and 301."""

    class profile:
        name = "scripted"
        rate = 1.0
        weights = {"change": 1}

    class rng:
        @staticmethod
        def poisson(lam):
            return 1

    def __init__(self, hpt):
        self.hpt = hpt
        self.done = False

    def run(self, ops):
        if self.done:
            return
        self.done = True
        assert self.hpt.h_remove(0, 1)[0] == H_SUCCESS
        for slot in (300, 301):
            assert self.hpt.h_enter(H_EXACT, slot, 0x4000000000012381 + (slot << 7), 0x12340190)[0] == H_SUCCESS


def test_index_and_record_bytes_match_a_hand_count():
    hpt = SimulatedHPT(order=18)  # 16,384 entries
    for slot in (0, 1, 2, 100):
        rc, _ = hpt.h_enter(H_EXACT, slot, 0x4000000000012381 + (slot << 7), 0x12340190)
        assert rc == H_SUCCESS
    hpt.cont()
    guest = ScriptedGuest(hpt)
    # downtime limit 0: nothing but an empty table converges
    link = Link(bandwidth=1e9, downtime_limit=0.0)
    result = MigrationResult("hand", "scripted", 18, hpt.npte, 4, link, 1.0)
    Migration(hpt, guest, link).run(result)
    first, second, stopped = result.passes
    # pass 1: records (0, 3 valid, 97 invalid) and (100, 1 valid, 16283 invalid)
    assert (first.records, first.valid, first.invalid) == (2, 4, 97 + 16283)
    assert first.record_bytes == (8 + 3 * 16) + (8 + 16) == 80
    # the index format leaves invalid entries out of a first pass: 4 entries of 20 bytes
    assert first.entries == 4 and first.index_bytes == 4 * 20 == 80 and first.ratio == 1.0
    assert (first.dirty_after, first.pending_bytes) == (3, 48)
    # pass 2: (1, 0 valid, 1 invalid) and (300, 2 valid, 0 invalid); 3 entries of 20 bytes
    assert (second.records, second.valid, second.invalid, second.entries) == (2, 2, 1, 3)
    assert second.record_bytes == 8 + (8 + 2 * 16) == 48
    assert second.index_bytes == 3 * INDEX_ENTRY_SIZE == 60
    assert result.converged and len(result.live) == 2
    assert stopped.stopped and stopped.entries == 0 and stopped.record_bytes == 0 and result.left_dirty == 0
    assert result.ratio(first=True) == 1.0 and result.ratio(first=False) == pytest.approx(48 / 60)


def test_the_link_and_the_threshold():
    link = Link(bandwidth=1e9, downtime_limit=0.03, ram_share=0.5)
    assert link.hpt_rate == pytest.approx(62.5e6)  # half of 125 MB/s
    assert link.threshold_bytes == pytest.approx(62.5e6 * 0.03)
    with pytest.raises(UsageError):
        Link(bandwidth=1e9, ram_share=1.0)


# -- the command -------------------------------------------------------------------------


def test_json_per_pass_bytes_equal_stat_of_the_snapshot_and_the_destination_equals(tmp_path):
    src = make_vm(tmp_path)
    before = digest(src)
    snap, dst = tmp_path / "mig.htab", tmp_path / "dst.img"
    r = cli_run("migrate", src, "--bandwidth", "1G", "--downtime-limit", "30ms", "--ops-per-second", 2000,
                "--ram-round", "20ms", "--snapshot", snap, "--to", dst, "--json", cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["schema"] == "htabtool-migrate/1" and d["converged"] is True
    passes = d["passes"]
    assert [p["stopped"] for p in passes] == [False] * (len(passes) - 1) + [True]
    assert len(passes) >= 2 and passes[-1]["entries"] > 0  # the guest ran while passes were read
    s = stat(snap, tmp_path)
    assert s["source"]["kind"] == "migrate"
    assert [p["pass"] for p in s["per_pass"]] == [p["pass"] for p in passes]
    for mine, theirs in zip(passes, s["per_pass"]):
        assert mine["record_bytes"] == theirs["raw_bytes"]
        assert mine["records"] == theirs["records"]
        assert (mine["valid"], mine["invalid"]) == (theirs["valid"], theirs["invalid"])
        assert mine["index_bytes"] == 20 * mine["entries"]
    assert d["destination"] == {"image": str(dst), "equal": True}
    # the destination, dumped, equals what was sent (the source's final table)
    r = cli_run("dump", "--vm", dst, "-o", tmp_path / "dst.htab", cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    r = cli_run("diff", snap, tmp_path / "dst.htab", cwd=tmp_path)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert digest(src) == before  # the source image is only read


def test_the_library_call_returns_the_passes_and_the_destination_is_the_source(tmp_path):
    src = make_vm(tmp_path, profile="database", order=20)
    result = ops.migrate(str(src), bandwidth="10G", downtime_limit="1ms", ops_per_second=3000,
                         ram_round="50ms", to=str(tmp_path / "dst.img"))
    assert isinstance(result, ops.MigrationResult)
    assert result.destination_equal is True and result.left_dirty == 0
    assert result.passes[-1].stopped and all(not p.stopped for p in result.passes[:-1])
    d = result.to_dict()
    assert d["stopped_phase"]["entries"] == result.passes[-1].entries
    assert result.hpt_downtime == pytest.approx(result.passes[-1].record_bytes * 8 / 10e9)
    # the passes follow each other in simulated time
    for a, b in zip(result.passes, result.passes[1:]):
        assert b.start == pytest.approx(a.start + a.seconds)


def test_not_converged_says_so_and_exits_1(tmp_path):
    src = make_vm(tmp_path)
    # a slow link, RAM's rounds in between: the guest dirties entries faster than one pass sends them
    args = ("migrate", src, "--downtime-limit", "0", "--ops-per-second", 2000, "--max-passes", 1,
            "--bandwidth", "10M", "--ram-round", "10ms", "--to", tmp_path / "dst.img")
    r = cli_run(*args, cwd=tmp_path)
    assert r.exit_code == 1, r.output
    assert "NOT converged within 1 live pass;" in r.stdout
    assert "htabtool: not converged" in r.stderr
    r = cli_run(*args, "--json", "-f", cwd=tmp_path)
    assert r.exit_code == 1
    d = json.loads(r.stdout)
    assert d["converged"] is False and d["live_passes"] == 1 and d["passes"][-1]["stopped"] is True
    # the stopped phase sends what is left all the same: the destination is complete
    assert d["passes"][-1]["entries"] > 0 and d["destination"]["equal"] is True


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_profile_runs_and_converges(tmp_path, profile):
    src = make_vm(tmp_path, profile=profile, order=19)
    r = cli_run("migrate", src, "--json", "--downtime-limit", "30ms", "--to", tmp_path / "dst.img", cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["profile"] == profile and d["converged"] is True and d["destination"]["equal"] is True
    assert d["passes"][0]["valid"] == d["valid_at_start"] or profile != "empty"


def test_order_24_runs(tmp_path):
    src = make_vm(tmp_path, profile="database", order=24)
    result = ops.migrate(str(src), bandwidth="1G", downtime_limit="30ms", ram_round="30ms")
    assert result.converged and result.passes[0].valid == result.valid_at_start


def test_table_for_people(tmp_path):
    src = make_vm(tmp_path)
    r = cli_run("migrate", src, "--bandwidth", "10G", "--ram-share", "0.9", cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    assert "record bytes" in r.stdout and "index bytes" in r.stdout and "(stopped)" in r.stdout
    assert "converged after 1 live pass" in r.stdout and "link 10Gbit/s, RAM's share 0.9" in r.stdout


# -- outputs ------------------------------------------------------------------------------


def test_outputs_are_refused_when_they_exist_or_are_inputs(tmp_path):
    src = make_vm(tmp_path)
    snap = tmp_path / "mig.htab"
    snap.write_bytes(b"keep me")
    r = cli_run("migrate", src, "--snapshot", snap, cwd=tmp_path)
    assert r.exit_code == 2 and "already exists; not overwritten (use -f to replace it)" in r.stderr
    assert snap.read_bytes() == b"keep me"
    r = cli_run("migrate", src, "--to", src, "-f", cwd=tmp_path)
    assert r.exit_code == 2 and "is an input of this command; not overwritten, even with -f" in r.stderr
    r = cli_run("migrate", src, "--to", tmp_path / "x.img", "--snapshot", tmp_path / "x.img", cwd=tmp_path)
    assert r.exit_code == 2 and "is also the output of --snapshot" in r.stderr
    r = cli_run("migrate", src, "--snapshot", snap, "-f", cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    assert stat(snap, tmp_path)["source"]["kind"] == "migrate"


def test_snapshot_to_standard_output(tmp_path):
    src = make_vm(tmp_path, order=19)
    r = cli_run("migrate", src, "--snapshot", "-", "--json", cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    (tmp_path / "out.htab").write_bytes(r.stdout_bytes)
    assert json.loads(r.stderr)["converged"] is True
    assert stat(tmp_path / "out.htab", tmp_path)["passes"] == len(json.loads(r.stderr)["passes"])


@pytest.mark.parametrize("bad,message", [
    (("--bandwidth", "fast"), "not a bandwidth"),
    (("--downtime-limit", "soon"), "not a duration"),
    (("--ram-share", "1"), "--ram-share"),
    (("-o", "plot.gif"), "must be a .png or .svg"),
])
def test_bad_options_are_one_line(tmp_path, bad, message):
    src = make_vm(tmp_path, order=19)
    r = cli_run("migrate", src, *bad, cwd=tmp_path)
    assert r.exit_code == 2 and message in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_missing_image_is_one_line(tmp_path):
    r = cli_run("migrate", tmp_path / "nope.img", cwd=tmp_path)
    assert r.exit_code == 2 and r.stderr.startswith("htabtool: error:") and "Traceback" not in r.stderr


@pytest.mark.parametrize("suffix", ["png", "svg"])
def test_plot(tmp_path, suffix):
    pytest.importorskip("matplotlib")
    src = make_vm(tmp_path, order=19)
    out = tmp_path / f"passes.{suffix}"
    r = cli_run("migrate", src, "-o", out, "--ops-per-second", 500, cwd=tmp_path)
    assert r.exit_code == 0, r.stderr
    head = out.read_bytes()[:64]
    assert head.startswith(b"\x89PNG") if suffix == "png" else b"<svg" in out.read_bytes()[:2000] or b"<?xml" in head


def test_plot_without_matplotlib_is_one_line(tmp_path, monkeypatch):
    import sys

    src = make_vm(tmp_path, order=19)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    out, snap = tmp_path / "passes.png", tmp_path / "mig.htab"
    r = cli_run("migrate", src, "-o", out, "--snapshot", snap, cwd=tmp_path)
    assert r.exit_code == 2
    assert r.stderr == ("htabtool: error: drawing a picture needs matplotlib, which is not installed"
                        " (pip install matplotlib)\n")
    assert not out.exists() and not snap.exists()  # refused before anything ran
