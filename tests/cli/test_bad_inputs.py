"""The catalogue of bad inputs: one table, each case driven through the CLI.

Every case names the input, the command, the exit status and a fragment of
the message.  Exit 2 (trouble) must come with exactly one line on standard
error, ``htabtool: error: ...``, holding the fragment, and no traceback;
exit 1 is ``verify``'s documented answer for a snapshot whose header is
sound but whose body is not (the problems listed on standard output).  A
command that was to write a file must leave nothing under its name and no
temporary file.  The same list, with the same ids, is in
man/htabtool-errors.7 (checked below).

Cases marked xfail(strict=True) are bugs found by this catalogue, in code
this file does not own; the reason says what to change.  When it is fixed
the case passes and the strict xfail fails: remove the mark.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import tempfile
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import zstandard

from htabtool.sim.vmimage import create_image
from tests import helpers as C

MAN = C.MAN / "htabtool-errors.7"
VALID = (0x4000000000001015, 0x10190)  # a bolted 64K entry with HPTE_V_VALID
NOT_VALID = (0x4000000000001014, 0x10190)  # the same without it

# -- the inputs ------------------------------------------------------------------------


@cache
def snap() -> bytes:
    """A sound snapshot: order 18, a first pass in several chunks, an empty
    second pass."""
    return C.snapshot()


@cache
def raw() -> bytes:
    return C.record_stream(18, "little", 4096)


def frame(kind: str, n: int = 0) -> C.Frame:
    return C.frame(snap(), kind, n)


def write(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        path = d / name
        path.write_bytes(data() if callable(data) else data)
        return path

    return make


def snapshot_file(data: Callable[[], bytes]) -> Callable[[Path], Path]:
    return lambda d: write("bad.htab", data())(d)


def cut(at: Callable[[], int]) -> Callable[[], bytes]:
    return lambda: snap()[: at()]


def insert_after_header(extra: Callable[[], bytes]) -> Callable[[], bytes]:
    def make():
        end = frame("HEAD").end
        return snap()[:end] + extra() + snap()[end:]

    return make


def envelope_size(size: int) -> Callable[[], bytes]:
    return lambda: snap()[:4] + struct.pack("<I", size) + snap()[8:]


def header_tag(tag: bytes) -> Callable[[], bytes]:
    def make():
        out = bytearray(snap())
        out[8:12] = tag
        C.reseal(out, frame("HEAD"))
        return bytes(out)

    return make


def json_text(old: bytes, new: bytes) -> Callable[[], bytes]:
    return lambda: C.patch_json(snap(), old, new)


def deep_json() -> bytes:
    return C.deep_json(snap())


def flip_at(where: Callable[[], int]) -> Callable[[], bytes]:
    return lambda: C.flip(snap(), where())


def content_checksum() -> bytes:
    """A flipped bit in chunk 0's zstd content checksum, with the descriptor's
    CRC-32 of the frame made to match: only zstd's own checksum can tell."""
    data = C.flip(snap(), frame("data").end - 1)
    f = frame("data")
    return C.descriptor(data, frame_crc=zlib.crc32(data[f.offset : f.end]))


def pass_end_lie() -> bytes:
    out = bytearray(snap())
    f = frame("PASS")
    struct.pack_into("<Q", out, f.body.start + 28, 12345)  # its records
    C.reseal(out, f)
    return bytes(out)


def seek_entry() -> bytes:
    out = bytearray(snap())
    struct.pack_into("<I", out, frame("SEEK").offset + 8, 1)  # the header frame's size
    return bytes(out)


def seek_magic() -> bytes:
    out = bytearray(snap())
    struct.pack_into("<I", out, frame("SEEK").offset, 0x184D2A5F)
    return bytes(out)


@cache
def two_passes() -> bytes:
    stream = C.whole(raw(), 3000)
    return C.snapshot(pieces=[(2, stream), (3, stream)])


def passes_out_of_order() -> bytes:
    data = two_passes()
    last = len([f for f in C.frames(data) if f.kind == "CHNK"]) - 1
    return C.descriptor(data, last, **{"pass": 1})


def records(*recs: bytes) -> bytes:
    return b"".join(recs)


OVERLAPPING = C.snapshot(pieces=[(1, records(C.record(100, [VALID, VALID]), C.record(101, [VALID])))])
NO_VALID_BIT = C.snapshot(pieces=[(1, records(C.record(100, [VALID, NOT_VALID])))])


def fifo_with(data: bytes) -> Callable[[Path], Path]:
    """A FIFO a thread writes ``data`` into once a reader opens it."""

    def make(d: Path) -> Path:
        path = d / "pipe"
        os.mkfifo(path)

        def feed():
            with open(path, "wb") as f:
                f.write(data)

        threading.Thread(target=feed, daemon=True).start()
        return path

    return make


def unix_socket(d: Path) -> Path:
    path = d / "sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    return path


# QEMU streams


def mig(**replace) -> Callable[[], bytes]:
    return lambda: C.qemu_stream(**replace)


def mig_cut(piece: str, into: int) -> Callable[[], bytes]:
    return lambda: C.qemu_stream()[: C.qemu_offset(piece) + into]


def htab_records(*recs: bytes) -> bytes:
    return C.section_part(C.HTAB_ID) + C.htab_payload(*recs) + C.footer(C.HTAB_ID)


# VM images


def image(profile: str = "empty", order: int = 18, damage: Callable[[Path], None] | None = None):
    def make(d: Path) -> Path:
        path = d / "guest.img"
        create_image(str(path), order=order, profile=profile, seed=1)
        if damage is not None:
            damage(path)
        return path

    return make


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def huge_table(path: Path) -> None:
    """The header of an image rewritten for the largest table (order 46:
    2**42 entries, 64 TiB), its sections where such a table puts them and
    its checksum right: only the file's size can tell."""
    from htabtool.sim import vmformat

    raw = bytearray(path.read_bytes()[: vmformat.HEADER.size])
    fields = list(vmformat.HEADER.unpack_from(raw))
    entries = 1 << 42
    lay = vmformat.layout(entries)
    fields[3], fields[5] = 46, entries
    fields[9:16] = [lay["table"], entries * 16, lay["rev"], entries * 8, lay["gmap"], entries * 8, lay["state"]]
    body = vmformat.HEADER.pack(*fields)
    patch(path, 0, body + struct.pack("<I", zlib.crc32(body)))


def state_offset(path: Path) -> int:
    with open(path, "rb") as f:
        return struct.unpack_from("<Q", f.read(136), 96)[0]


# -- the catalogue -------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """``make(dir)`` builds the input and returns its path; ``args`` is the
    command line, ``{}`` standing for that path and ``OUT`` for a file the
    command is to write; ``code`` and ``message`` what must come out."""

    id: str
    make: Callable[[Path], Path]
    args: str
    code: int
    message: str
    xfail: str | None = None


def snap_case(id_, data, message, args="stat {}", code=2, xfail=None) -> Bad:
    return Bad(id_, snapshot_file(data), args, code, message, xfail)


def raw_case(id_, data, message, order="--order 18", byte_order="little") -> Bad:
    return Bad(id_, write("capture.bin", data), f"dump --raw {{}} --byte-order {byte_order} {order} -o OUT", 2,
               message)


def qemu_case(id_, data, message, option="--qemu", xfail=None) -> Bad:
    return Bad(id_, write("vm.mig", data), f"dump {option} {{}} -o OUT", 2, message, xfail)



EMPTY_BLOCKS = b"".join(C.idstr(b"b%04d" % i) + C.be64(0) for i in range(1000))

CASES = [
    # -- what is not a snapshot at all --------------------------------------------------------
    Bad("empty-file", write("empty.htab", b""), "stat {}", 2, "the header frame at offset 0x0 needs 8 bytes"),
    Bad("directory", lambda d: (d / "dir.htab").mkdir() or d / "dir.htab", "stat {}", 2, "is a directory"),
    Bad("missing-file", lambda d: d / "missing.htab", "stat {}", 2, "no such file"),
    Bad("fifo-with-garbage", fifo_with(b"GARBAGE!" * 100), "stat {}", 2, "not an htabtool snapshot: bad magic"),
    Bad("text-file", write("notes.htab", b"hello, world\n" * 20), "verify {}", 2,
        "not an htabtool snapshot: bad magic 0x6c6c6568"),
    Bad("plain-zstd-file", write("records.zst", lambda: zstandard.compress(raw())), "stat {}", 2,
        "holds a plain zstd frame, not a snapshot header"),
    # -- the header ----------------------------------------------------------------------------
    snap_case("wrong-signature", lambda: C.head(snap(), signature=b"HTABSNAX"), "bad signature b'HTABSNAX'"),
    snap_case("future-version", lambda: C.head(snap(), version=2), "format version 2 is not supported"),
    snap_case("unknown-required-feature", lambda: C.head(snap(), required=4), "needs features 0x4"),
    snap_case("wrong-byte-order-code", lambda: C.head(snap(), byte_order=2), "unknown byte order code 2"),
    snap_case("unknown-read-flags", lambda: C.head(snap(), flags=0x80), "unknown read flags 0x80"),
    snap_case("reserved-byte-set", lambda: C.head(snap(), reserved=1), "reserved byte is 1, not 0"),
    snap_case("table-order-out-of-range", lambda: C.head(snap(), order=60, entries=1 << 56),
              "table order 60 is outside 4..46"),
    snap_case("entries-disagree-with-order", lambda: C.head(snap(), entries=12345),
              "12345 entries do not match order 18"),
    snap_case("start-index-past-table", lambda: C.head(snap(), start_index=1 << 20), "start index 1048576"),
    snap_case("chunk-limit-zero", lambda: C.head(snap(), chunk_limit=0), "chunk limit 0 is outside"),
    snap_case("chunk-limit-huge", lambda: C.head(snap(), chunk_limit=1 << 30), "chunk limit 1073741824 is outside"),
    snap_case("fixed-size-too-small", lambda: C.head(snap(), fixed_size=40), "do not fill"),
    snap_case("json-size-wrong", lambda: C.head(snap(), json_size=C.HEAD.unpack_from(snap(), 12)[-1] + 1),
              "do not fill"),
    snap_case("header-checksum-flipped", flip_at(lambda: frame("HEAD").end - 1), "'HEAD' frame at offset 0x0: "
              "checksum mismatch"),
    snap_case("header-declares-huge-size", envelope_size(0xFFFFFFF0),
              "declares 4294967280 bytes, more than the 1048576 allowed"),
    snap_case("header-declares-tiny-size", envelope_size(4), "declares 4 bytes, less than a tag and a checksum"),
    snap_case("first-frame-not-a-header", header_tag(b"CHNK"), "first frame is 'CHNK', not a header"),
    snap_case("json-invalid", json_text(b'"kind":"raw"', b'"kind":[raw]'), "bad JSON metadata"),
    snap_case("json-without-source", json_text(b'"source"', b'"sourcf"'), "lacks a source with a kind"),
    snap_case("json-duplicate-key", json_text(b'"name"', b'"kind"'), "duplicate key 'kind'"),
    snap_case("json-nan", json_text(b'"corpus"', b"NaN     "), "NaN is not JSON"),
    snap_case("json-deeply-nested", deep_json, "bad JSON metadata"),
    snap_case("json-lone-surrogate", json_text(b'"corpus"', b'"\\ud800"'), "metadata"),
    # -- cut short, at each structure ------------------------------------------------------------
    snap_case("truncated-in-header", cut(lambda: 50), "'HEAD' frame at offset 0x0 needs 162 bytes, the file has 50"),
    snap_case("truncated-after-header", cut(lambda: frame("HEAD").end),
              "the snapshot ends after the header without a trailer", "load {} --raw-out OUT"),
    snap_case("truncated-stat", cut(lambda: frame("HEAD").end), "no seek table at the end of the file"),
    snap_case("truncated-in-descriptor", cut(lambda: frame("CHNK").offset + 20), "'CHNK' frame at offset 0xa2 needs",
              "load {} --raw-out OUT"),
    snap_case("truncated-in-chunk", cut(lambda: frame("data").offset + 100), "chunk 0 at offset 0xf2 needs",
              "load {} --raw-out OUT"),
    snap_case("truncated-after-chunk", cut(lambda: frame("data").end),
              "the snapshot ends after chunk 0 without a trailer", "load {} --raw-out OUT"),
    snap_case("truncated-in-pass-end", cut(lambda: frame("PASS").offset + 30), "'PASS' frame at offset",
              "load {} --raw-out OUT"),
    snap_case("truncated-in-trailer", cut(lambda: frame("TRLR").offset + 30), "'TRLR' frame at offset",
              "load {} --raw-out OUT"),
    snap_case("truncated-in-seek-table", cut(lambda: frame("SEEK").offset + 12), "the seek table at offset",
              "load {} --raw-out OUT"),
    snap_case("last-byte-missing", cut(lambda: len(snap()) - 1), "the seek table at offset", "load {} --raw-out OUT"),
    snap_case("data-after-the-end", lambda: snap() + b"\0", "unexpected data after the end of the snapshot",
              "load {} --raw-out OUT"),
    # -- checksums and what frames declare -------------------------------------------------------
    snap_case("descriptor-checksum-flipped", flip_at(lambda: frame("CHNK").end - 2),
              "chunk 0 descriptor at offset 0xa2: checksum mismatch"),
    snap_case("chunk-bit-flipped", flip_at(lambda: frame("data").offset + 40), "chunk 0 at offset 0xf2: frame "
              "checksum mismatch"),
    snap_case("chunk-content-checksum-flipped", content_checksum, "chunk 0 at offset 0xf2: zstd: content checksum "
              "mismatch"),
    snap_case("chunk-declares-huge-size", lambda: C.descriptor(snap(), raw_size=1 << 30),
              "declares 1073741824 raw bytes, outside 1..1048568"),
    snap_case("chunk-misnumbered", lambda: C.descriptor(snap(), chunk=5), "chunk 0 descriptor at offset 0xa2: "
              "numbered 5"),
    snap_case("chunk-stream-offset-wrong", lambda: C.descriptor(snap(), 1, raw_offset=8), "says stream offset 0x8"),
    snap_case("chunk-record-count-wrong", lambda: C.descriptor(snap(), records=3),
              "3 records with"),
    snap_case("records-past-the-table", lambda: C.head(snap(), order=17, entries=1 << 13),
              "does not fit the table of 8192 entries"),
    snap_case("passes-out-of-order", passes_out_of_order, "belongs to pass 1, which is not after pass 2"),
    snap_case("pass-end-totals-wrong", pass_end_lie, "pass end at offset"),
    snap_case("zstd-frame-without-descriptor", insert_after_header(lambda: zstandard.compress(b"x" * 8)),
              "zstd frame without a chunk descriptor", "load {} --raw-out OUT"),
    snap_case("second-header", insert_after_header(lambda: snap()[: frame("HEAD").end]), "a second header",
              "load {} --raw-out OUT"),
    snap_case("unknown-required-frame", insert_after_header(lambda: C.our_frame(b"XTRA", b"")),
              "frame 'XTRA' at offset 0xa2 is required but unknown to this reader", "load {} --raw-out OUT"),
    snap_case("seek-table-without-trailer", insert_after_header(lambda: snap()[frame("SEEK").offset :]),
              "seek table at offset 0xa2 without a trailer before it", "load {} --raw-out OUT"),
    snap_case("trailer-checksum-flipped", flip_at(lambda: frame("TRLR").end - 1), "checksum mismatch"),
    snap_case("trailer-totals-wrong", lambda: C.trailer(snap(), records=1), "file totals do not add up"),
    snap_case("trailer-offset-wrong", lambda: C.trailer(snap(), offset=12), "says it is at offset 0xc"),
    snap_case("seek-table-entry-wrong", seek_entry, "differs from the frames read", "load {} --raw-out OUT"),
    snap_case("seek-table-entry-wrong-stat", seek_entry, "its frames add up to 14142 bytes"),
    snap_case("seek-table-magic-wrong", seek_magic, "bad magic 0x184d2a5f", "load {} --raw-out OUT"),
    # -- sound containers, unsound records: verify lists, load refuses -----------------------------
    snap_case("overlapping-records", lambda: OVERLAPPING, "index 101 is below the end 102", "verify {}", 1),
    snap_case("overlapping-records-load", lambda: OVERLAPPING, "not sound, nothing was written",
              "load {} --raw-out OUT"),
    snap_case("valid-run-without-valid-bit", lambda: NO_VALID_BIT, "entry 101 of the valid run lacks HPTE_V_VALID",
              "verify {}", 1),
    snap_case("damaged-snapshot-verify", cut(lambda: frame("TRLR").offset), "container: truncated", "verify {}", 1),
    snap_case("damaged-snapshot-load", cut(lambda: frame("TRLR").offset), "not sound, nothing was written",
              "load {} --qemu-section OUT"),
    snap_case("damaged-snapshot-diff", cut(lambda: frame("TRLR").offset), "truncated", "diff {} {}"),
    Bad("diff-tables-of-two-sizes", lambda d: write("a.htab", snap())(d) and write("b.htab", C.snapshot(
        pieces=[(1, C.record_stream(19))], order=19))(d) and d / "a.htab", "diff {} b.htab", 2,
        "the snapshots' tables differ in size: 16384 and 32768 entries"),
    # -- raw record streams ---------------------------------------------------------------------
    raw_case("raw-truncated-in-a-header", lambda: raw() + b"\0\0\0", "truncated record header at offset"),
    raw_case("raw-truncated-in-entries", lambda: raw()[:-5], "need 16 entry bytes, got 11"),
    raw_case("raw-index-past-the-table", C.record(20000, [VALID]), "index 20000 is past the table of 16384 entries"),
    raw_case("raw-run-past-the-table", C.record(16380, [VALID], 10), "entries 16380..16390 run past the table"),
    raw_case("raw-wrong-byte-order", raw, "is past the table", byte_order="big"),
    raw_case("raw-entry-without-valid-bit", C.record(7, [NOT_VALID]), "lacks HPTE_V_VALID"),
    raw_case("raw-order-out-of-range", raw, "--order must be between 7 and 46", order="--order 3"),
    Bad("raw-directory", lambda d: (d / "capture").mkdir() or d / "capture",
        "dump --raw {} --byte-order little --order 18 -o OUT", 2, "capture: is a directory, not a file"),
    # -- QEMU migration streams ------------------------------------------------------------------
    qemu_case("qemu-empty-file", b"", "stream ends at offset 0x0 inside the file header"),
    qemu_case("qemu-wrong-magic", lambda: b"QEVN" + C.qemu_stream()[4:], "not a QEMU migration stream: magic"),
    qemu_case("qemu-version-2", mig(header=C.be32(0x5145564D) + C.be32(2)), "obsolete format"),
    qemu_case("qemu-version-4", mig(header=C.be32(0x5145564D) + C.be32(4)), "unsupported migration stream version 4"),
    qemu_case("qemu-radix-guest", mig(htab_start=C.section_start(C.HTAB_ID, b"spapr/htab", 1) + C.be32(-1)
                                      + C.footer(C.HTAB_ID)), "the guest uses the radix MMU"),
    qemu_case("qemu-htab-shift-out-of-range", mig(htab_start=C.section_start(C.HTAB_ID, b"spapr/htab", 1)
                                                  + C.be32(60) + C.footer(C.HTAB_ID)), "htab_shift 60"),
    qemu_case("qemu-unknown-iterative-section", mig(ram_start=C.section_start(9, b"dirty-bitmap", 1)),
              "unknown iterative section 'dirty-bitmap'"),
    qemu_case("qemu-xbzrle-page", mig(ram_part=C.section_part(C.RAM_ID) + C.ram_item(0, 0x40)),
              "unsupported RAM page flag 0x40 (XBZRLE)"),
    qemu_case("qemu-truncated-in-a-page", mig_cut("ram_part", 100), "inside a RAM page"),
    qemu_case("qemu-truncated-in-htab-records", mig_cut("htab_part", 14), "stream ends at offset"),
    qemu_case("qemu-record-past-the-table", mig(htab_part=htab_records(C.record(20000, [VALID], byte_order="big"))),
              "runs past the table of 16384 entries"),
    qemu_case("qemu-without-htab", mig(htab_start=None, htab_part=None, htab_end=None),
              "no 'spapr/htab' section before the device-state section 'timer'"),
    qemu_case("qemu-command-section", mig(ram_end=b"\x08\x00\x02"),
              "QEMU_VM_COMMAND PING (command 2) at offset 0x2104: a ping for the source on a return path"),
    qemu_case("qemu-postcopy-command", mig(ram_end=b"\x08\x00\x03\x00\x10" + bytes(16)),
              "QEMU_VM_COMMAND POSTCOPY_ADVISE (command 3) at offset 0x2104: postcopy"),
    qemu_case("qemu-unknown-command", mig(ram_end=b"\x08\x00\x0c\x00\x00"),
              "QEMU_VM_COMMAND with unknown command 12 (length 0) at offset 0x2104"),
    qemu_case("qemu-early-setup-device-state", mig(ram_start=C.section_start(3, b"virtio-mem-device-early", 1, kind=4)),
              "the device-state section 'virtio-mem-device-early' at offset 0x18 comes before any iterative section"),
    qemu_case("qemu-htab-shift-above-the-32-bit-index", mig(htab_start=C.section_start(C.HTAB_ID, b"spapr/htab", 1)
                                                            + C.be32(37) + C.footer(C.HTAB_ID)),
              "htab_shift 37 at offset 0x6c: a table of 8,589,934,592 entries, more than the records' 32-bit index"),
    qemu_case("qemu-footer-names-another-section", mig(htab_part=C.section_part(C.HTAB_ID) + C.htab_payload()
                                                       + C.footer(99)), "names section id 99"),
    qemu_case("qemu-configuration-declares-huge-length", mig(config=b"\x07" + C.be32(0xFFFFFFFF) + b"pseries"),
              "stream ends at offset"),
    qemu_case("qemu-ram-blocks-of-zero-length", mig(ram_start=C.section_start(C.RAM_ID, b"ram", 4)
                                                    + C.be64(C.RAM_BLOCK_LENGTH | 0x04) + EMPTY_BLOCKS
                                                    + C.idstr(C.RAM_BLOCK) + C.be64(C.RAM_BLOCK_LENGTH)
                                                    + C.be64(0x10) + C.footer(C.RAM_ID)),
              "RAM block 'b0000' of length 0"),
    qemu_case("qemu-section-empty", b"", "the htab START payload", option="--qemu-section"),
    qemu_case("qemu-section-part-header-not-zero", lambda: C.be32(18) + C.be32(1), "expected 0",
              option="--qemu-section"),
    # -- simulated VM images ------------------------------------------------------------------------
    Bad("vm-not-an-image", write("guest.img", b"\x89HTABVN\n" + bytes(8000)), "vm info {}", 2,
        "not a VM image (bad magic"),
    Bad("vm-empty-file", write("guest.img", b""), "vm info {}", 2, "not a VM image (only 0 bytes)"),
    Bad("vm-declares-a-huge-table", image(damage=huge_table), "vm run {} --ops 1", 2,
        "truncated VM image: 590204 bytes, the header says 1407374884"),
    Bad("vm-future-version", image(damage=lambda p: patch(p, 8, struct.pack("<I", 2))), "vm info {}", 2,
        "VM image format version 2"),
    Bad("vm-header-checksum", image(damage=lambda p: patch(p, 24, struct.pack("<Q", 99))), "vm info {}", 2,
        "the VM image header is corrupted (checksum mismatch)"),
    Bad("vm-truncated", image(damage=lambda p: os.truncate(p, os.path.getsize(p) - 10)), "vm run {} --ops 1", 2,
        "truncated VM image"),
    Bad("vm-state-not-json", image(damage=lambda p: patch(p, state_offset(p), b"{{{")), "vm info {}", 2,
        "state is not valid JSON"),
    Bad("vm-fifo", lambda d: os.mkfifo(d / "guest.img") or d / "guest.img", "vm info {}", 2,
        "not a regular file"),
    Bad("vm-fifo-load-target", lambda d: os.mkfifo(d / "guest.img") or write("s.htab", snap())(d) and d / "guest.img",
        "load s.htab --vm {}", 2, "not a regular file"),
    Bad("vm-directory", lambda d: (d / "guest.img").mkdir() or write("s.htab", snap())(d) and d / "guest.img",
        "load s.htab --vm {}", 2, "is a directory"),
    Bad("vm-table-size-differs", lambda d: image(order=19)(d) and write("s.htab", snap())(d) and d / "guest.img",
        "load s.htab --vm {}", 2, "its table has 32,768 entries (order 19), the snapshot's 16,384 (order 18)"),
    Bad("vm-running", lambda d: image("idle")(d) and write("s.htab", snap())(d) and d / "guest.img",
        "load s.htab --vm {}", 2, "the VM is running and the kernel refuses htab writes"),
    Bad("vm-missing", lambda d: write("s.htab", snap())(d) and d / "guest.img", "load s.htab --vm {}", 2,
        "no such VM image (--create makes one"),
    # -- where the output is to go ---------------------------------------------------------------------
    Bad("output-in-a-missing-directory", write("s.htab", snap), "load {} --raw-out nowhere/out.bin", 2,
        "No such file or directory: nowhere/out.bin"),
    Bad("output-is-a-directory", write("s.htab", snap), "load {} --raw-out .", 2, "is a directory"),
    Bad("output-is-a-socket", lambda d: unix_socket(d) and write("s.htab", snap())(d), "load {} --raw-out sock", 2,
        "sock: is a socket"),
    Bad("output-new-name-in-dev", write("s.htab", snap), "load {} --raw-out /dev/htabtool-test-never-created", 2,
        "No such file or directory: /dev/htabtool-test-never-created"),
    # -- show and map ------------------------------------------------------------------------------------
    Bad("show-no-such-pass", write("s.htab", snap), "show --pass 7 {}", 2, "--pass 7: the snapshot has no pass 7"),
    Bad("show-changed-in-the-first-pass", write("s.htab", snap), "show --changed-in 1 {}", 2,
        "--changed-in 1: that is the first pass, which sends the whole table"),
    Bad("show-empty-index-range", write("s.htab", snap), "show --index 9..2 {}", 2, "index range 9..2 is empty"),
    Bad("show-bad-avpn", write("s.htab", snap), "show --avpn 12/zz {}", 2, "--avpn '12/zz': give HEX or HEX/MASK"),
    Bad("map-output-exists", lambda d: write("map.png", b"keep")(d) and write("s.htab", snap())(d), "map {} -o map.png",
        2, "map.png: already exists; not overwritten (use -f to replace it)"),
    Bad("map-output-is-the-input", write("s.htab", snap), "map {} -o {} --format png --force", 2,
        "s.htab: is an input of this command; not overwritten, even with -f"),
    Bad("map-output-suffix", write("s.htab", snap), "map {} -o OUT", 2,
        "the picture's format comes from its suffix, .png or .svg"),
]

def both(first: Callable[[Path], Path], second: Callable[[Path], Path]) -> Callable[[Path], Path]:
    """Make both inputs; the case's path is the first's."""
    return lambda d: second(d) and first(d)


def symlink_to(name: str, target: Callable[[Path], Path]) -> Callable[[Path], Path]:
    return lambda d: target(d) and ((d / name).symlink_to(target(d).name) or d / name)


def hard_link_to(name: str, target: Callable[[Path], Path]) -> Callable[[Path], Path]:
    return lambda d: os.link(target(d), d / name) or d / name


def dangling(name: str) -> Callable[[Path], Path]:
    return lambda d: write("s.htab", snap())(d) and ((d / name).symlink_to("nowhere.img") or d / name)


def state_edit(edit) -> Callable[[Path], None]:
    """A VM image whose state JSON is changed by ``edit`` (header fixed up)."""

    def damage(path: Path) -> None:
        from htabtool.sim import vmformat

        raw = bytearray(path.read_bytes()[: vmformat.HEADER.size])
        fields = list(vmformat.HEADER.unpack_from(raw))
        off, length = fields[15], fields[16]
        state = json.loads(path.read_bytes()[off : off + length])
        edit(state)
        blob = json.dumps(state).encode()
        with open(path, "r+b") as f:
            f.seek(off)
            f.write(blob)
            f.truncate(off + len(blob))
        fields[16] = len(blob)
        body = vmformat.HEADER.pack(*fields)
        patch(path, 0, body + struct.pack("<I", zlib.crc32(body)))

    return damage


def header_field(index: int, value: int) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        from htabtool.sim import vmformat

        fields = list(vmformat.HEADER.unpack_from(path.read_bytes()[: vmformat.HEADER.size]))
        fields[index] = value
        body = vmformat.HEADER.pack(*fields)
        patch(path, 0, body + struct.pack("<I", zlib.crc32(body)))

    return damage


def empty_records() -> bytes:
    """A snapshot whose chunk is 4,096 empty records (n_valid 0, n_invalid 0),
    made as an attacker's writer would (htabtool's refuses to)."""
    from htabtool.container import writer

    keep = writer.refuse_empty_records
    writer.refuse_empty_records = lambda *a: None
    try:
        return C.snapshot(pieces=[(1, bytes(8 * 4096))], chunk_size=1 << 20)
    finally:
        writer.refuse_empty_records = keep


CASES += [
    # -- what no command may overwrite, and options that do not apply ------------------------------
    Bad("output-exists", both(write("s.htab", snap), write("out.htab", b"keep")), "load {} --raw-out OUT", 2,
        "out.htab: already exists; not overwritten (use -f to replace it)"),
    Bad("output-is-the-input", write("s.htab", snap), "load {} --raw-out {} -f", 2,
        "s.htab: is an input of this command; not overwritten, even with -f"),
    Bad("output-is-the-input-through-a-symlink", symlink_to("link.htab", write("s.htab", snap)),
        "load s.htab --raw-out {} -f", 2, "link.htab: is an input of this command (s.htab)"),
    Bad("output-is-the-input-through-a-hard-link", hard_link_to("link.htab", write("s.htab", snap)),
        "diff s.htab s.htab --delta {} -f", 2, "link.htab: is an input of this command (s.htab)"),
    Bad("dump-onto-its-vm-image", image("idle"), "dump --vm {} -o {} -f", 2,
        "guest.img: is an input of this command; not overwritten, even with -f"),
    Bad("output-name-ends-in-a-slash", write("s.htab", snap), "load {} --raw-out out/", 2,
        "out/: not a file name (it ends in '/')"),
    Bad("standard-input-twice", write("s.htab", snap), "load - --qemu-splice - -o OUT", 2,
        "only one input can be standard input (-): SNAP and --qemu-splice both are"),
    Bad("vm-create-exists", image(), "vm create {} --order 18", 2,
        "guest.img: already exists; not overwritten (use -f to replace it)"),
    Bad("vm-dangling-symlink-create", dangling("guest.img"), "vm create {} --order 18", 2,
        "guest.img: is a symbolic link to a missing file (nowhere.img)"),
    Bad("vm-dangling-symlink-load", dangling("guest.img"), "load s.htab --vm {} --create", 2,
        "guest.img: is a symbolic link to a missing file (nowhere.img)"),
    Bad("vm-ram-past-the-table", lambda d: d / "new.img", "vm create {} --order 18 --ram 64G", 2,
        "--ram 64 GiB needs 1,048,576 bolted entries for the kernel's linear map"),
    Bad("vm-ram-past-64-bits", lambda d: d / "new.img", f"vm create {{}} --order 36 --ram {1 << 70}", 2,
        "bolted entries for the kernel's linear map"),
    Bad("vm-state-a-string-for-a-number", image(damage=state_edit(lambda s: s["guest"].update(clock="x"))),
        "vm info {}", 2, "the VM image's state does not hold: guest.clock has the wrong type"),
    Bad("vm-state-process-without-pid", image("idle", damage=state_edit(
        lambda s: s["guest"]["processes"][0].pop("pid"))), "vm run {} --ops 1", 2,
        "guest.processes[0].pid is missing"),
    Bad("vm-state-an-int-for-a-list", image(damage=state_edit(lambda s: s["guest"].update(processes=3))),
        "dump --vm {} -o OUT", 2, "guest.processes has the wrong type"),
    Bad("vm-generation-at-its-maximum", image("idle", damage=header_field(-1, (1 << 64) - 1)), "vm run {} --ops 1",
        2, "the VM image's generation is at its maximum"),
    Bad("vm-hard-links", lambda d: image("idle")(d) and os.link(d / "guest.img", d / "other.img") or d / "guest.img",
        "vm run {} --ops 1", 2, "the VM image has 2 hard links"),
    snap_case("empty-records", empty_records, "4096 records hold only 0 entries: mostly empty records"),
    snap_case("empty-records-verify", empty_records, "empty records", "verify {}", 1),
    Bad("option-passes-with-until-dirty", image("idle"), "dump --vm {} --passes 2 --until-dirty 3 -o OUT", 2,
        "--passes does not go with --until-dirty"),
    Bad("option-churn-with-qemu", write("vm.mig", lambda: C.qemu_stream()), "dump --qemu {} --churn 5 -o OUT", 2,
        "--churn goes with --vm"),
    Bad("option-buffer-size-with-raw-out", write("s.htab", snap), "load {} --raw-out OUT --buffer-size 4K", 2,
        "--buffer-size goes with --vm"),
    Bad("size-without-a-unit-known", image("idle"), "dump --vm {} --buffer-size 64Q -o OUT", 2,
        "not a size: '64Q'"),
]

IDS = [case.id for case in CASES]
assert len(IDS) == len(set(IDS)), "catalogue ids must be unique"


def params():
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
        yield pytest.param(case, id=case.id, marks=marks)


# -- running a case -------------------------------------------------------------------------------


def invoke(args: list[str], cwd: Path):
    return C.cli_run(*args, cwd=cwd)


def command_line(case: Bad, path: Path) -> list[str]:
    return [path.name if a == "{}" else ("out.htab" if a == "OUT" else a) for a in case.args.split()]


def check_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.startswith("htabtool: error: "), result.stderr
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    assert fragment in result.stderr, result.stderr


@pytest.mark.parametrize("case", list(params()))
def test_bad_input(case: Bad, tmp_path):
    path = case.make(tmp_path)
    assert path.parent == tmp_path
    before = set(os.listdir(tmp_path))
    result = invoke(command_line(case, path), tmp_path)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (
        f"an untyped exception came out: {result.exception!r}"
    )
    if case.code == 1:
        assert result.exit_code == 1, (result.stdout, result.stderr)
        assert case.message in result.stdout and result.stderr == "", (result.stdout, result.stderr)
    else:
        check_one_line_error(result, case.message)
    # nothing written where a file was to be written, no temporary file left
    after = set(os.listdir(tmp_path))
    assert after <= before, f"left behind: {sorted(after - before)}"


# -- the cases that need more than the table ---------------------------------------------------


def test_an_unreadable_file(tmp_path):
    """Permission denied, as a user to whom the mode applies (root reads a
    mode-000 file: a forked child drops to nobody first)."""
    directory = Path(tempfile.mkdtemp(prefix="htabtool-perm-"))
    try:
        os.chmod(directory, 0o755)
        path = directory / "secret.htab"
        path.write_bytes(snap())
        invoke(["stat", str(path)], directory)  # every module the command needs, imported as ourselves
        os.chmod(path, 0)
        code, stdout, stderr = _as_nobody(["stat", str(path)]) if os.geteuid() == 0 else _here(["stat", str(path)])
        assert code == 2, (code, stdout, stderr)
        assert stderr == f"htabtool: error: Permission denied: {path}\n"
    finally:
        for p in directory.iterdir():
            p.unlink()
        directory.rmdir()


def _here(args):
    r = C.cli_run(*args)
    return r.exit_code, r.stdout, r.stderr


def _as_nobody(args):
    read, write_ = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, run the command in-process, report, leave
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            payload = json.dumps(_here(args))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            payload = json.dumps(["setuid", "", repr(exc)])
        os.write(write_, payload.encode())
        os._exit(0)
    os.close(write_)
    with os.fdopen(read) as f:
        got = json.loads(f.read() or '["no answer", "", ""]')
    os.waitpid(pid, 0)
    if got[0] == "setuid":
        pytest.skip(f"cannot drop to an unprivileged user here: {got[2]}")
    return got


def test_control_characters_in_metadata_reach_no_terminal(tmp_path):
    """The header's JSON can hold any character as an escape; stat must not
    print an escape sequence from a file to the terminal as it is."""
    path = tmp_path / "escape.htab"
    path.write_bytes(C.patch_json(snap(), b'"corpus"', b'"\\u001b"'))
    result = invoke(["stat", str(path)], tmp_path)
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout, "a control character from the file reached the output"




def test_a_first_pass_numbered_0_counts(tmp_path):
    """The format lets pass numbers start anywhere (htabtool-snapshot(5):
    they only grow); stat and diff must count every pass, as load replays
    every pass."""
    stream = C.record_stream(18)
    (tmp_path / "zero.htab").write_bytes(C.snapshot(pieces=[(0, stream)]))
    (tmp_path / "one.htab").write_bytes(C.snapshot(pieces=[(1, stream)]))
    result = invoke(["diff", "zero.htab", "one.htab"], tmp_path)
    assert result.exit_code == 0, result.stdout




def test_the_catalogue_is_big_enough_and_in_the_manual():
    assert len(CASES) >= 40
    text = MAN.read_text().replace("\\-", "-")
    section = text[text.index(".SH BAD INPUTS") : text.index(".SH FAULTS")]
    listed = set(re.findall(r"^\.TP\n\.B ([a-z0-9-]+)$", section, re.M))
    assert sorted(set(IDS) - listed) == [], f"cases missing from {MAN.name}"
    assert sorted(listed - set(IDS) - EXTRA_IN_MANUAL) == [], f"{MAN.name} lists cases the catalogue does not have"
    assert EXTRA_IN_MANUAL <= listed


#: cases the manual lists that are tested outside the table
EXTRA_IN_MANUAL = {"unreadable-file", "metadata-control-characters", "first-pass-numbered-0",
                   # tests/test_migrate.py
                   "migrate-output-exists", "migrate-output-is-an-input", "migrate-bad-bandwidth",
                   "migrate-bad-plot-name", "migrate-no-matplotlib", "migrate-destination-differs",
                   "map-without-matplotlib"}  # tests/test_map.py
