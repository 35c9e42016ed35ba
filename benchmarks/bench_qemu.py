"""Taking the htab out of an 80 MB QEMU migration stream.

    python -m benchmarks.bench_qemu [--capture FILE] [--repeat 3]

Without ``--capture`` a synthetic stream shaped like the real captures of
fixtures/qemu/README.md is written to a temporary file: a 4 GiB RAM block
sent as about a million zero pages and 16,000 whole pages over a dozen
``ram`` sections, and an htab of htab_shift 25 with 65,700 single-entry
records in a PART and an END (about 80 MB in all).  Prints the best wall
time of: walking the stream (every event), the dump (QemuSource.pieces,
headers turned little-endian), the splice (a new stream written to a
temporary file), the section payloads (write_section), and the peak of
Python memory during the dump (tracemalloc, a separate run).
"""

from __future__ import annotations

import argparse
import io
import os
import struct
import tempfile
import time
import tracemalloc

import numpy as np

from benchmarks.common import best_of
from htabtool import qemu

PAGE = 4096
BLOCK = b"ppc_spapr.ram"


def _be32(x: int) -> bytes:
    return struct.pack(">I", x & 0xFFFFFFFF)


def _ram_items(first_page: int, n_pages: int, full: np.ndarray) -> bytes:
    """The items of pages first_page.. (``full``: which are whole pages):
    a whole first page with the block name, then CONTINUE items."""
    head = struct.pack(">Q", first_page * PAGE | 0x08) + bytes([len(BLOCK)]) + BLOCK + b"\x5a" * PAGE
    idx = np.arange(first_page + 1, first_page + n_pages, dtype=np.uint64)
    is_full = full[1:n_pages]
    sizes = np.where(is_full, 8 + PAGE, 9).astype(np.int64)
    offs = np.cumsum(sizes) - sizes
    out = np.zeros(int(sizes.sum()), dtype=np.uint8)
    words = (idx * np.uint64(PAGE)) | np.where(is_full, np.uint64(0x28), np.uint64(0x22))
    out[offs[:, None] + np.arange(8)] = words.astype(">u8").view(np.uint8).reshape(-1, 8)
    for o in offs[is_full]:
        out[o + 8 : o + 8 + PAGE] = 0x5A
    return head + out.tobytes()


def synthetic_capture(
    f, *, ram_pages: int = 1 << 20, full_pages: int = 16000, records: int = 65700, shift: int = 25, seed: int = 1
) -> None:
    rng = np.random.default_rng(seed)
    ram_id, htab_id = 2, 576
    f.write(struct.pack(">II", 0x5145564D, 3) + b"\x07" + _be32(11) + b"pseries-7.2")
    length = ram_pages * PAGE
    f.write(b"\x01" + _be32(ram_id) + b"\x03ram" + _be32(0) + _be32(4))
    f.write(struct.pack(">Q", length | 0x04) + bytes([len(BLOCK)]) + BLOCK + struct.pack(">Q", length))
    f.write(struct.pack(">Q", 0x10) + b"\x7e" + _be32(ram_id))
    f.write(b"\x01" + _be32(htab_id) + b"\x0aspapr/htab" + _be32(0) + _be32(1) + _be32(shift)
            + b"\x7e" + _be32(htab_id))
    full = np.zeros(ram_pages, dtype=bool)
    full[rng.choice(ram_pages, full_pages, replace=False)] = True
    n_entries = 1 << (shift - 4)
    index = np.sort(rng.choice(n_entries, records, replace=False)).astype(np.int64)
    avpn = rng.integers(1, 1 << 40, records).astype(np.uint64) << np.uint64(7)
    v = np.uint64(0x4000000000000000) | avpn | np.uint64(0x15)
    r = (rng.integers(0, 1 << 30, records).astype(np.uint64) << np.uint64(16)) | np.uint64(0x190)
    hdr = np.zeros(records, dtype=[("index", ">u4"), ("nv", ">u2"), ("ni", ">u2"), ("v", ">u8"), ("r", ">u8")])
    hdr["index"], hdr["nv"], hdr["v"], hdr["r"] = index, 1, v, r
    recs = hdr.tobytes()
    sections = 12
    per = ram_pages // sections
    for k in range(sections):
        kind = 3 if k == sections - 1 else 2
        count = per if k < sections - 1 else ram_pages - k * per
        f.write(bytes([kind]) + _be32(ram_id) + _ram_items(k * per, count, full[k * per :]))
        f.write(struct.pack(">Q", 0x10) + b"\x7e" + _be32(ram_id))
        if k == 0:  # a short htab PART, as QEMU's 5 ms iterations give
            f.write(b"\x02" + _be32(htab_id) + _be32(0) + recs[: 24 * 11] + bytes(8) + b"\x7e" + _be32(htab_id))
    f.write(b"\x03" + _be32(htab_id) + _be32(0) + recs[24 * 11 :] + bytes(8) + b"\x7e" + _be32(htab_id))
    f.write(b"\x04" + _be32(0) + b"\x05timer" + _be32(0) + _be32(2) + bytes(24) + b"\x7e" + _be32(0))
    f.write(b"\x00" + bytes(64 * 1024))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--capture", help="a real migration file instead of the synthetic one")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = None
    if args.capture:
        path = args.capture
    else:
        tmp = tempfile.NamedTemporaryFile(prefix="bench-qemu-", suffix=".mig", delete=False)
        t0 = time.perf_counter()
        synthetic_capture(tmp)
        tmp.close()
        path = tmp.name
        print(f"synthetic stream written in {time.perf_counter() - t0:.1f} s")
    size = os.path.getsize(path)
    src = qemu.QemuSource(open(path, "rb"))
    shift = src.info.order
    pieces = list(src.pieces())
    s = src.info.source
    print(
        f"{size / 1e6:.1f} MB stream: htab_shift {shift}, {s['parts']} htab parts, {s['records']} records, "
        f"{s['ram_sections']} ram sections, {s['ram_pages']} pages + {s['ram_zero_pages']} zero pages skipped"
    )

    def walk():
        with open(path, "rb") as f:
            for _ in qemu.iter_events(f):
                pass

    def dump():
        with open(path, "rb") as f:
            for _ in qemu.QemuSource(f, byte_order="little").pieces():
                pass

    out_path = path + ".spliced"

    def do_splice():
        with open(path, "rb") as f, open(out_path, "wb") as out:
            qemu.splice(f, shift, pieces, out, byte_order="little")

    figures = {
        "walk (every event)": best_of(walk, args.repeat),
        "dump --qemu (pieces, little-endian)": best_of(dump, args.repeat),
        "load --qemu-splice (file to file)": best_of(do_splice, args.repeat),
        "load --qemu-section (to memory)": best_of(
            lambda: qemu.write_section(pieces, shift, io.BytesIO(), byte_order="little"), args.repeat),
    }
    for name, secs in figures.items():
        print(f"  {name:38s} {secs * 1000:8.1f} ms")
    tracemalloc.start()
    dump()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"  {'peak Python memory during the dump':38s} {peak / 1e6:8.1f} MB")
    os.unlink(out_path)
    if tmp is not None:
        os.unlink(path)


if __name__ == "__main__":
    main()
