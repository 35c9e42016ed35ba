"""The commands, through click's CliRunner and as real processes."""

import json
import os
import subprocess

import numpy as np
import pytest

from tests.helpers import HTABTOOL, QEMU_FIXTURES, cli_run, raw_stream, synthetic_table


@pytest.fixture
def snaps(tmp_path):
    """a.htab and b.htab (three entries differ) from raw streams."""
    a = synthetic_table(18, 0.3, 1)
    b = a.copy()
    live = np.flatnonzero(a[:, 0].astype(np.uint64) & np.uint64(1))
    b[live[0]] = 0
    b[live[1], 1] = 0x5000
    b[live[2], 1] = int(b[live[2], 1]) ^ 0x80  # C only
    (tmp_path / "a.bin").write_bytes(raw_stream(a))
    (tmp_path / "b.bin").write_bytes(raw_stream(b, "big"))
    assert cli_run("dump", "--raw", tmp_path / "a.bin", "--byte-order", "little", "--order", 18, "-o",
                   tmp_path / "a.htab").exit_code == 0
    r = cli_run("dump", "--raw", tmp_path / "b.bin", "--byte-order", "big", "--entries", 1 << 14, "-o",
                tmp_path / "b.htab", "--json")
    assert r.exit_code == 0, r.output
    return tmp_path, a, b, live


def test_dump_threads_make_the_same_snapshot(tmp_path, monkeypatch):
    """-T N: compression on N threads (0: one per CPU); the snapshot's bytes
    do not depend on how many (the creation time fixed, as reproducible
    builds fix it, or the three dumps may straddle a second)."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764547200")
    (tmp_path / "a.bin").write_bytes(raw_stream(synthetic_table(22, 0.5, 3)))  # about 2 MB: several chunks
    made = []
    for n in ("0", "1", "3"):
        out = tmp_path / f"t{n}.htab"
        r = cli_run("dump", "--raw", tmp_path / "a.bin", "--byte-order", "little", "--order", 22, "-T", n, "-o", out,
                    "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["chunks"] > 1
        made.append(out.read_bytes())
    assert made[0] == made[1] == made[2]
    from htabtool.sources import open_snapshot

    with open_snapshot(str(tmp_path / "t0.htab")) as snap:
        assert snap.header.created == "2025-12-01T00:00:00Z"
    assert cli_run("dump", "--raw", tmp_path / "a.bin", "--byte-order", "little", "--order", 22, "-T", "65",
               "-o", tmp_path / "x.htab").exit_code == 2


def test_dump_raw_json_summary_and_mode(snaps):
    d, a, _, live = snaps
    r = cli_run("dump", "--raw", d / "a.bin", "--byte-order", "little", "--order", 18, "-o", d / "c.htab", "--json")
    s = json.loads(r.stdout)
    assert s["schema"] == "htabtool-dump/1" and s["passes"] == 1 and s["valid"] == len(live)
    assert s["raw_bytes"] == len((d / "a.bin").read_bytes())
    assert (os.stat(d / "c.htab").st_mode & 0o777) == 0o600


def test_stat_json_schema(snaps):
    d, a, _, live = snaps
    r = cli_run("stat", "--json", d / "a.htab")
    assert r.exit_code == 0
    s = json.loads(r.stdout)
    for key in ("format_version", "byte_order", "order", "entries", "valid", "bolted", "records", "passes",
                "raw_bytes", "file_bytes"):
        assert key in s
    assert (s["byte_order"], s["order"], s["entries"], s["valid"]) == ("little", 18, 1 << 14, len(live))
    assert s["bolted"] == int(np.count_nonzero(a[:, 0].astype(np.uint64) & np.uint64(0x11) == 0x11))
    assert sum(s["pteg_fill"]) == (1 << 14) // 8
    assert s["per_pass"][0]["pass"] == 1


def test_stat_plain_text(snaps):
    d, *_ = snaps
    r = cli_run("stat", d / "a.htab")
    assert r.exit_code == 0 and "valid" in r.stdout and "\x1b[" not in r.stdout


def test_diff_exit_codes_and_json(snaps):
    d, a, b, live = snaps
    assert cli_run("diff", d / "a.htab", d / "a.htab").exit_code == 0
    r = cli_run("diff", "--json", d / "a.htab", d / "b.htab")
    assert r.exit_code == 1
    j = json.loads(r.stdout)
    assert (j["removed"], j["changed"], j["rc_only"], j["identical"]) == (1, 1, 1, False)
    assert [x["index"] for x in j["first_differences"]] == [int(i) for i in live[:3]]
    # only the R/C change left: ignored with --ignore-rc
    r = cli_run("diff", "--ignore-rc", "--limit", 0, d / "a.htab", d / "b.htab")
    assert r.exit_code == 1 and "1 removed" in r.stdout


def test_diff_delta_turns_a_into_b(snaps):
    d, a, b, _ = snaps
    r = cli_run("diff", d / "a.htab", d / "b.htab", "--delta", d / "delta.htab")
    assert r.exit_code == 1, r.output
    raw = (d / "a.bin").read_bytes() + _records(d / "delta.htab")
    (d / "ab.bin").write_bytes(raw)
    assert cli_run("dump", "--raw", d / "ab.bin", "--byte-order", "little", "--order", 18, "-o",
                   d / "ab.htab").exit_code == 0
    assert cli_run("diff", d / "ab.htab", d / "b.htab").exit_code == 0


def _records(path):
    from htabtool.sources import open_snapshot

    with open_snapshot(str(path)) as s:
        out = []
        from htabtool.ops import records_out

        records_out(s, out.append, byte_order="little")
        return b"".join(out)


def test_verify_sound_and_problems(snaps, tmp_path):
    d, *_ = snaps
    r = cli_run("verify", d / "a.htab")
    assert r.exit_code == 0 and "sound" in r.stdout
    data = bytearray((d / "a.htab").read_bytes())
    data[len(data) // 2] ^= 0x40
    (tmp_path / "bad.htab").write_bytes(bytes(data))
    r = cli_run("verify", "--json", tmp_path / "bad.htab")
    assert r.exit_code == 1
    assert json.loads(r.stdout)["sound"] is False


@pytest.mark.parametrize("content", [b"", b"not a snapshot at all" * 10, None])
def test_bad_files_one_line_exit_2(tmp_path, content):
    path = tmp_path / "x.htab"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    for cmd in ("stat", "verify"):
        r = cli_run(cmd, path)
        assert r.exit_code == 2, (cmd, r.output)
        assert r.stderr.startswith("htabtool: error: ") and r.stderr.count("\n") == 1
        assert "Traceback" not in r.stderr


def test_usage_errors(snaps):
    d, *_ = snaps
    r = cli_run("dump", "-o", d / "x.htab")
    assert r.exit_code == 2 and "exactly one source" in r.stderr
    r = cli_run("dump", "--raw", d / "a.bin", "-o", d / "x.htab", "--order", 18)
    assert r.exit_code == 2 and "--byte-order" in r.stderr
    r = cli_run("dump", "--raw", d / "a.bin", "--byte-order", "little", "-o", d / "x.htab")
    assert r.exit_code == 2 and "--order N or --entries N" in r.stderr
    assert not (d / "x.htab").exists()


def test_truncated_raw_stream_names_the_offset(snaps):
    d, *_ = snaps
    data = (d / "a.bin").read_bytes()
    (d / "cut.bin").write_bytes(data[:-5])
    r = cli_run("dump", "--raw", d / "cut.bin", "--byte-order", "little", "--order", 18, "-o", d / "cut.htab")
    assert r.exit_code == 2 and "truncated record" in r.stderr and "offset 0x" in r.stderr
    assert not (d / "cut.htab").exists(), "nothing half-written"


def test_pipes_between_processes(snaps):
    d, *_ = snaps
    exe = HTABTOOL
    dump = subprocess.Popen(exe + ["dump", "--raw", "-", "--byte-order", "little", "--order", "18", "-o", "-"],
                            stdin=open(d / "a.bin", "rb"), stdout=subprocess.PIPE)
    stat = subprocess.run(exe + ["stat", "--json", "-"], stdin=dump.stdout, capture_output=True)
    dump.stdout.close()
    assert dump.wait() == 0
    assert stat.returncode == 0, stat.stderr
    assert json.loads(stat.stdout)["entries"] == 1 << 14
    r = subprocess.run(exe + ["diff", str(d / "a.htab"), str(d / "b.htab")], capture_output=True)
    assert r.returncode == 1
    r = subprocess.run(exe + ["stat", str(d / "missing.htab")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr == f"htabtool: error: {d / 'missing.htab'}: no such file\n"


def test_version_and_help():
    r = cli_run("--version")
    assert r.exit_code == 0 and "htabtool" in r.stdout
    for cmd in ("dump", "stat", "diff", "verify"):
        r = cli_run(cmd, "--help")
        assert r.exit_code == 0 and "Example" in r.stdout


QEMU = QEMU_FIXTURES


def test_qemu_dump_stat_and_load_round_trip(tmp_path):
    mig = QEMU / "pseries-4g-one-part.mig"
    r = cli_run("dump", "--qemu", mig, "-o", tmp_path / "q.htab", "--json")
    assert r.exit_code == 0, r.stderr
    s = json.loads(cli_run("stat", "--json", tmp_path / "q.htab").stdout)
    assert s["order"] == 25 and s["source"]["kind"] == "qemu" and s["byte_order"] == "little"
    # the bare section payloads come back byte for byte
    r = cli_run("load", tmp_path / "q.htab", "--qemu-section", tmp_path / "q.section")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "q.section").read_bytes() == (QEMU / "pseries-4g-one-part.htab-section").read_bytes()
    # splicing a capture with its own records gives it back
    r = cli_run("load", tmp_path / "q.htab", "--qemu-splice", mig, "-o", tmp_path / "new.mig")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "new.mig").read_bytes() == mig.read_bytes()
    # and a snapshot of the section alone equals the one of the stream
    assert cli_run("dump", "--qemu-section", tmp_path / "q.section", "--byte-order", "big", "-o",
                   tmp_path / "s.htab").exit_code == 0
    assert cli_run("diff", tmp_path / "q.htab", tmp_path / "s.htab").exit_code == 0


def test_load_refuses_a_damaged_snapshot_before_writing(snaps):
    d, *_ = snaps
    data = bytearray((d / "a.htab").read_bytes())
    data[len(data) // 2] ^= 1
    (d / "bad.htab").write_bytes(bytes(data))
    (d / "out.bin").write_bytes(b"old")
    r = cli_run("load", d / "bad.htab", "--raw-out", d / "out.bin", "-f")
    assert r.exit_code == 2 and "not sound, nothing was written" in r.stderr
    assert (d / "out.bin").read_bytes() == b"old"


def test_load_raw_out_equals_the_captured_stream_in_either_byte_order(snaps):
    d, *_ = snaps
    assert cli_run("load", d / "a.htab", "--raw-out", d / "again.bin").exit_code == 0
    assert (d / "again.bin").read_bytes() == (d / "a.bin").read_bytes()
    assert cli_run("load", d / "b.htab", "--raw-out", d / "b-le.bin", "--byte-order", "little").exit_code == 0
    assert cli_run("dump", "--raw", d / "b-le.bin", "--byte-order", "little", "--order", 18, "-o",
                   d / "b2.htab").exit_code == 0
    assert cli_run("diff", d / "b.htab", d / "b2.htab").exit_code == 0
