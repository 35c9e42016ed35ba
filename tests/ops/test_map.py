"""htabtool map and ops.table_map: the arrays, the terminal map (in a real
terminal under tmux), PNG and SVG files; stat's labelled histograms."""

import importlib.util
import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
import zlib

import numpy as np
import pytest

from htabtool import hpte, ops
from htabtool.cli import map as map_cli
from htabtool.sources import open_snapshot
from tests.helpers import QEMU_FIXTURES, ROOT, cli_run, env_with_root, synthetic_table, write_snapshot

FIXTURES = QEMU_FIXTURES
ORDER = 16  # 4,096 entries, 512 PTEGs


@pytest.fixture
def live(tmp_path):
    a = synthetic_table(ORDER, 0.3, 4)
    b = a.copy()
    ch = np.zeros(len(a), bool)
    ch[1000:1100] = True
    b[1000:1100] = 0
    return write_snapshot(tmp_path / "live.htab", [(a, None), (b, ch)], order=ORDER), b


def test_table_map_arrays(live):
    path, final = live
    with open_snapshot(str(path)) as snap:
        m = ops.table_map(snap, bins=128)
    ok = (final[:, 0].astype(np.uint64) & np.uint64(1)) != 0
    bolted = ok & ((final[:, 0].astype(np.uint64) & np.uint64(hpte.HPTE_V_BOLTED)) != 0)
    assert (m.bins, m.bin_entries) == (128, 32)
    assert m.valid.tolist() == ok.reshape(128, 32).sum(1).tolist()
    assert m.bolted.tolist() == bolted.reshape(128, 32).sum(1).tolist()
    assert m.non_bolted.tolist() == (ok & ~bolted).reshape(128, 32).sum(1).tolist()
    assert m.passes == [2] and m.pass_entries == {2: 100}
    want = np.zeros(4096, int)
    want[1000:1100] = 1
    assert m.changed[0].tolist() == want.reshape(128, 32).sum(1).tolist()
    groups = ok.reshape(-1, 8).sum(1)
    assert m.pteg_fill.tolist() == np.bincount(groups, minlength=9).tolist()
    assert m.image().shape == (8, 16)
    assert np.allclose(m.image().ravel(), m.valid / 4)
    # strips: fractions of each column's entries, at any width
    assert np.allclose(m.strip(m.valid, 128), m.valid / 32)
    assert np.allclose(m.strip(m.valid, 4), ok.reshape(4, -1).mean(1))
    wide = m.strip(m.valid, 300)  # columns narrower than a slice show their slice
    assert len(wide) == 300 and set(np.round(wide, 6)) <= set(np.round(m.valid / 32, 6))


def test_map_json_and_plain_text(live, tmp_path, monkeypatch):
    path, final = live
    monkeypatch.setenv("NO_COLOR", "1")
    r = cli_run("map", "--json", "--width", 73, path, cwd=tmp_path)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["schema"] == "htabtool-map/1" and doc["columns"] == 73 - map_cli.LABEL_WIDTH - 2
    assert set(doc["strips"]) == {"valid", "bolted", "non-bolted", "pass 2"}
    assert all(len(s) == doc["columns"] for s in doc["strips"].values())
    assert doc["passes"] == [{"pass": 2, "entries": 100}]
    r = cli_run("map", "--width", 73, path, cwd=tmp_path)
    lines = r.output.splitlines()
    strip_lines = [line for line in lines if "│" in line]
    assert [line.split("│")[0].strip() for line in strip_lines] == ["valid", "bolted", "non-bolted", "pass 2"]
    assert all(len(line) == 73 for line in strip_lines)
    assert all(set(line.split("│")[1]) <= set(map_cli.PLAIN_SHADES) for line in strip_lines)
    fill = {line.split()[0]: line for line in lines if line.startswith("  ") and " valid " in line}
    groups = ((final[:, 0].astype(np.uint64) & np.uint64(1)) != 0).reshape(-1, 8).sum(1)
    for k, n in enumerate(np.bincount(groups, minlength=9)):
        assert f" {n:,} " in fill[str(k)]


needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


@needs_tmux
@pytest.mark.parametrize("columns", [100, 61])
def test_map_in_a_real_terminal_is_as_wide_as_it(live, tmp_path, columns):
    path, _ = live
    session = f"htabtool-map-{os.getpid()}-{columns}"
    done = tmp_path / "done"
    env = f"PYTHONPATH={shlex.quote(str(ROOT))} TERM=xterm-256color"
    command = (f"env -u NO_COLOR -u COLUMNS {env} {shlex.quote(sys.executable)} -m htabtool map"
               f" {shlex.quote(str(path))} 2>&1; touch {shlex.quote(str(done))}; sleep 30")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(columns), "-y", "40", command], check=True)
    try:
        deadline = time.monotonic() + 60
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert done.exists(), "htabtool map did not finish in the terminal"
        screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                                check=True).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    strips = [line for line in screen.splitlines() if "│" in line]
    assert [line.split("│")[0].strip() for line in strips] == ["valid", "bolted", "non-bolted", "pass 2"], screen
    for line in strips:
        assert len(line) == columns, (len(line), line)
        cells = line.split("│")[1]
        assert len(cells) == columns - map_cli.LABEL_WIDTH - 2
        assert set(cells) <= set(map_cli.SHADES)  # block shades on a terminal
    assert "█" in strips[0]  # the fullest cell of the valid strip
    assert "PTEG fill" in screen and "Traceback" not in screen


# -- picture files ------------------------------------------------------------------------

needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason="matplotlib (the plot extra: pip install '.[plot]') is not installed")


def png_header(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    crc = struct.unpack(">I", data[29:33])[0]
    assert crc == zlib.crc32(data[12:29])
    return width, height, depth, colour


def draw(snapshot, directory, name):
    """map SNAPSHOT -o DIRECTORY/NAME, which must succeed."""
    out = directory / name
    r = cli_run("map", snapshot, "-o", out, cwd=directory)
    assert r.exit_code == 0, r.output
    return out


@needs_matplotlib
def test_png_is_a_valid_picture_of_the_expected_size(live, tmp_path):
    out = draw(live[0], tmp_path, "map.png")
    data = out.read_bytes()
    width, height, depth, _ = png_header(data)
    assert (width, height) == (map_cli.FIGURE_SIZE[0] * map_cli.DPI, map_cli.FIGURE_SIZE[1] * map_cli.DPI)
    assert data.endswith(b"IEND\xaeB`\x82")
    from matplotlib.image import imread

    pixels = imread(str(out))
    assert pixels.shape[:2] == (height, width)
    assert pixels[..., :3].std() > 0.05  # not blank
    assert len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 50
    assert os.stat(out).st_mode & 0o777 == 0o600


@needs_matplotlib
def test_svg_is_valid_xml_of_the_expected_size(live, tmp_path):
    out = draw(live[0], tmp_path, "map.svg")
    root = ET.parse(out).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("width") == f"{map_cli.FIGURE_SIZE[0] * 72}pt"
    assert root.get("height") == f"{map_cli.FIGURE_SIZE[1] * 72}pt"
    drawn = [e for e in root.iter() if e.tag.endswith(("}path", "}image", "}use"))]
    assert len(drawn) > 50  # bars, axes, the heat map's image
    assert any(e.tag.endswith("}image") for e in root.iter())


@needs_matplotlib
def test_the_same_snapshot_draws_the_same_bytes(live, tmp_path):
    for name in ("a.png", "b.png", "a.svg", "b.svg"):
        draw(live[0], tmp_path, name)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "a.svg").read_bytes() == (tmp_path / "b.svg").read_bytes()


@needs_matplotlib
def test_a_real_qemu_capture_draws(tmp_path):
    snap = tmp_path / "q.htab"
    assert cli_run("dump", "--qemu", FIXTURES / "pseries-4g-two-parts.mig", "-o", snap, cwd=tmp_path).exit_code == 0
    r = cli_run("map", snap, "-o", "-", "--format", "png", cwd=tmp_path)
    assert r.exit_code == 0
    assert png_header(r.stdout_bytes)[:2] == (1000, 800)


@needs_matplotlib
def test_outputs_are_refused_unless_forced_and_never_an_input(live, tmp_path):
    path, _ = live
    out = tmp_path / "map.png"
    out.write_bytes(b"keep me")
    r = cli_run("map", path, "-o", out, cwd=tmp_path)
    assert r.exit_code == 2 and "already exists; not overwritten (use -f to replace it)" in r.output
    assert out.read_bytes() == b"keep me"
    assert cli_run("map", path, "-o", out, "--force", cwd=tmp_path).exit_code == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    r = cli_run("map", path, "-o", path, "--format", "png", "-f", cwd=tmp_path)
    assert r.exit_code == 2 and "is an input of this command; not overwritten, even with -f" in r.output
    r = cli_run("map", path, "-o", tmp_path / "map.jpg", cwd=tmp_path)
    assert r.exit_code == 2 and ".png or .svg" in r.output
    r = cli_run("map", path, "--format", "svg", cwd=tmp_path)
    assert r.exit_code == 2 and "--format goes with -o" in r.output
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_without_matplotlib_one_line_says_how_to_install(live, tmp_path, monkeypatch):
    path, _ = live
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    r = cli_run("map", path, "-o", tmp_path / "m.png", cwd=tmp_path)
    assert r.exit_code == 2
    assert r.output == (f"htabtool: error: picture files need matplotlib, which is not installed: "
                        f"{map_cli.INSTALL_PLOT}\n")
    assert not (tmp_path / "m.png").exists()
    assert cli_run("map", path, cwd=tmp_path).exit_code == 0  # the terminal map needs none of it


def test_no_other_command_imports_matplotlib(live, tmp_path):
    path, _ = live
    code = ("import sys; from htabtool.cli import main\n"
            "try: main(['stat', sys.argv[1]])\n"
            "except SystemExit: pass\n"
            "try: main(['map', sys.argv[1]])\n"
            "except SystemExit: pass\n"
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         env=env_with_root())
    assert out.stdout.strip().splitlines()[-1] == "False"


# -- stat's histograms --------------------------------------------------------------------


def test_stat_labels_its_histograms(live, tmp_path, monkeypatch):
    path, final = live
    monkeypatch.setenv("NO_COLOR", "1")
    report = json.loads(cli_run("stat", "--json", path, cwd=tmp_path).output)
    text = cli_run("stat", path, cwd=tmp_path).output.splitlines()
    for k, n in enumerate(report["pteg_fill"]):
        line = next(x for x in text if x.startswith(f"  {k} valid "))
        assert line.split()[-3] == f"{n:,}"
    for label, n in report["n_valid_distribution"].items():
        assert any(x.split()[0] == label and x.split()[-3] == f"{n:,}" for x in text if x.startswith("  ")), label
    top = max(report["pteg_fill"])
    bars = [x for x in text if x.startswith(f"  {report['pteg_fill'].index(top)} valid ")]
    assert "#" * 30 in bars[0]
