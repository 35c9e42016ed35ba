"""The VM image format: the header's layout, the sections' places, the
state's JSON and what a reader checks of them; sizes as people write them.
No numpy: ``vm info`` reads an image's header, state and entry counts with
this module alone (:func:`entry_counts` counts from the bytes).

On-disk layout, format version 1
--------------------------------

All header integers are little-endian.  The header is one 4096-byte block::

    offset size field
         0    8 magic: 89 48 54 41 42 56 4d 0a ("\\x89HTABVM\\n")
         8    4 format version: 1
        12    4 header size: 4096
        16    4 order: log2 of the table's size in bytes (18..46)
        20    4 flags: bit 0 vCPUs running, bit 1 MMU ready,
                bit 2 map the VRMA on the first run
        24    8 entries: 2**(order-4)
        32    8 guest RAM size in bytes
        40    4 backing page shift (log2 of the host pages backing RAM)
        44    4 host CPU: 0 POWER8 (also every image made before this
                field was used), 9 POWER9, 10 POWER10
        48    8 table offset          56  8 table length   (entries * 16)
        64    8 reverse map offset    72  8 its length     (entries * 8)
        80    8 guest map offset      88  8 its length     (entries * 8)
        96    8 state offset         104  8 state length   (bytes of JSON)
       112    8 vrma_slb_v: the VRMA's SLB word (0 until set up)
       120    8 LPCR bits of the VRMA (the VRMASD field)
       128    8 generation: bumped by every save
       136    4 CRC-32 (zlib) of bytes 0..135
       140  ... zero to the end of the block

The sections start at multiples of 64 KiB, in this order:

- table: the HPT as the hardware sees it, each entry two big-endian 64-bit
  doublewords (as the HPT is in memory), with KVM's software bits and host
  real addresses;
- reverse map: each entry's ``guest_rpte`` (the guest's view of the second
  doubleword, HPTE_GR_MODIFIED in bit 62), little-endian 64-bit;
- guest map: the guest model's record of each slot, little-endian 64-bit
  (bit 63 present, bit 62 clean-but-writable, bits 40..58 context, bits
  0..32 the 64K page within the context's 512T); zero where the guest
  believes the slot is free;
- state: UTF-8 JSON, ``{"format": 1, "tool": ..., "guest": {...},
  "engine": {"hcalls": {...}}}``; the guest part holds the profile, seed,
  the generator state, the processes and their mappings.  It is the last
  section; a save rewrites it and truncates the file after it.

A reader refuses an image whose magic, version, header checksum, sizes or
JSON do not hold, and anything that is not a regular file (a FIFO, a
device), with a one-line :class:`~htabtool.errors.VMImageError`.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from collections import Counter

from htabtool.errors import HtabError, UsageError, VMImageError
from htabtool.hpte import (
    HPTE_SIZE,
    HPTE_V_ABSENT,
    HPTE_V_BOLTED,
    HPTE_V_SECONDARY,
    HPTE_V_VALID,
    V_LOW_BYTE,
    table_entries,
)
from htabtool.sim.mmu import CPUS
from htabtool.sim.papr import PPC_MAX_HPT_ORDER, PPC_MIN_HPT_ORDER
from htabtool.sim.profiles import get_profile

MAGIC = b"\x89HTABVM\n"
FORMAT_VERSION = 1
HEADER_SIZE = 4096
SECTION_ALIGN = 1 << 16
HEADER = struct.Struct("<8sIIIIQQII" + "Q" * 8 + "QQQ")
assert HEADER.size == 136

FLAG_RUNNING = 1
FLAG_MMU_READY = 2
FLAG_MAP_VRMA = 4

#: the header's host CPU field (0: POWER8, the only host before the field was used)
CPU_CODES = {"POWER8": 0, "POWER9": 9, "POWER10": 10}
assert set(CPU_CODES) == set(CPUS)


def align(x: int) -> int:
    return (x + SECTION_ALIGN - 1) // SECTION_ALIGN * SECTION_ALIGN


def layout(npte: int) -> dict:
    table = align(HEADER_SIZE)
    rev = align(table + npte * 16)
    gmap = align(rev + npte * 8)
    state = align(gmap + npte * 8)
    return {"table": table, "rev": rev, "gmap": gmap, "state": state}


_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kKmMgGtT]?)(i?[bB])?\s*$")


def parse_size(text: str) -> int:
    """'4G', '512M', '4GiB', '1T' or plain bytes; binary multiples."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise UsageError(f"not a size: {text!r} (use e.g. 4G, 512M, 1T)")
    n = int(m.group(1))
    shift = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[m.group(2).lower()]
    return n << shift


def format_size(n: int) -> str:
    for shift, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def write_header(fd: int, h: dict) -> None:
    try:
        body = pack_header(h)
    except struct.error as exc:
        raise VMImageError(f"a VM image header field is out of range ({exc})") from None
    block = body + struct.pack("<I", zlib.crc32(body))
    os.pwrite(fd, block + bytes(HEADER_SIZE - len(block)), 0)


def pack_header(h: dict) -> bytes:
    return HEADER.pack(
        MAGIC,
        h["version"],
        HEADER_SIZE,
        h["order"],
        h["flags"],
        h["entries"],
        h["ram"],
        h["backing_page_shift"],
        CPU_CODES[h["cpu"]],
        h["table_offset"],
        h["table_length"],
        h["rev_offset"],
        h["rev_length"],
        h["gmap_offset"],
        h["gmap_length"],
        h["state_offset"],
        h["state_length"],
        h["vrma_slb_v"],
        h["lpcr"],
        h["generation"],
    )


def read_header(fd: int, path: str) -> dict:
    raw = os.pread(fd, HEADER_SIZE, 0)
    if len(raw) < HEADER.size + 4 or raw[:8] != MAGIC:
        if len(raw) >= 8 and raw[:8] != MAGIC:
            raise VMImageError(f"{path}: not a VM image (bad magic {raw[:8].hex()})")
        raise VMImageError(f"{path}: not a VM image (only {len(raw)} bytes)")
    fields = HEADER.unpack_from(raw)
    (
        _,
        version,
        header_size,
        order,
        flags,
        entries,
        ram,
        backing,
        cpu_code,
        t_off,
        t_len,
        r_off,
        r_len,
        g_off,
        g_len,
        s_off,
        s_len,
        vrma_slb_v,
        lpcr,
        generation,
    ) = fields
    if version != FORMAT_VERSION:
        raise VMImageError(
            f"{path}: VM image format version {version}; this htabtool reads version {FORMAT_VERSION}"
        )
    (crc,) = struct.unpack_from("<I", raw, HEADER.size)
    if crc != zlib.crc32(raw[: HEADER.size]):
        raise VMImageError(f"{path}: the VM image header is corrupted (checksum mismatch)")
    if header_size != HEADER_SIZE:
        raise VMImageError(f"{path}: unexpected header size {header_size}")
    cpu = {code: name for name, code in CPU_CODES.items()}.get(cpu_code)
    if cpu is None:
        raise VMImageError(f"{path}: unknown host CPU code {cpu_code} in the VM image header")
    if not PPC_MIN_HPT_ORDER <= order <= PPC_MAX_HPT_ORDER or entries != table_entries(order):
        raise VMImageError(f"{path}: order {order} and {entries} entries do not agree")
    lay = layout(entries)
    want = (lay["table"], entries * 16, lay["rev"], entries * 8, lay["gmap"], entries * 8, lay["state"])
    if (t_off, t_len, r_off, r_len, g_off, g_len, s_off) != want:
        raise VMImageError(f"{path}: the section offsets do not match a table of {entries} entries")
    size = os.fstat(fd).st_size
    if size < s_off + s_len:
        raise VMImageError(f"{path}: truncated VM image: {size} bytes, the header says {s_off + s_len}")
    return {
        "version": version,
        "order": order,
        "flags": flags,
        "entries": entries,
        "ram": ram,
        "backing_page_shift": backing,
        "cpu": cpu,
        "table_offset": t_off,
        "table_length": t_len,
        "rev_offset": r_off,
        "rev_length": r_len,
        "gmap_offset": g_off,
        "gmap_length": g_len,
        "state_offset": s_off,
        "state_length": s_len,
        "vrma_slb_v": vrma_slb_v,
        "lpcr": lpcr,
        "generation": generation,
    }


def read_state(fd: int, path: str, h: dict) -> dict:
    blob = os.pread(fd, h["state_length"], h["state_offset"])
    try:
        state = json.loads(blob.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VMImageError(f"{path}: the VM image's state is not valid JSON ({exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("guest"), dict):
        raise VMImageError(f"{path}: the VM image's state has no guest")
    return state


MAX_U64 = (1 << 64) - 1


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_U64


def _is_number(x) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) and 0 <= x < float("inf")


_GUEST_FIELDS = {
    "profile": lambda x: isinstance(x, str),
    "seed": lambda x: isinstance(x, int) and not isinstance(x, bool),
    "rng": lambda x: isinstance(x, dict),
    "clock": _is_number,
    "events": _is_int,
    "next_pid": _is_int,
    "next_context": _is_int,
    "processes": lambda x: isinstance(x, list),
    "vmalloc_next": _is_int,
    "shm": lambda x: x is None or (isinstance(x, dict) and _is_int(x.get("pages")) and _is_int(x.get("pa"))),
    "totals": lambda x: isinstance(x, dict) and all(isinstance(k, str) and _is_int(v) for k, v in x.items()),
}
_PROCESS_FIELDS = {
    "pid": _is_int,
    "ppid": _is_int,
    "comm": lambda x: isinstance(x, str),
    "ctx": _is_int,
    "vmas": lambda x: isinstance(x, list) and all(_is_vma(v) for v in x),
}
_PROCESS_OPTIONAL = {"brk": _is_int, "mmap_top": _is_int}


def _is_vma(v) -> bool:
    """[start, 64K pages, protection, kind, shared physical address or None]"""
    return (isinstance(v, list) and len(v) == 5 and _is_int(v[0]) and _is_int(v[1]) and isinstance(v[2], str)
            and isinstance(v[3], str) and (v[4] is None or _is_int(v[4])))


def check_state(state: dict, path: str) -> None:
    """The types of the state's JSON, field by field (a hand-edited or
    damaged image is refused in one line, not met by a TypeError later)."""
    def fail(where: str) -> None:
        raise VMImageError(f"{path}: the VM image's state does not hold: {where}")

    guest = state["guest"]
    for key, ok in _GUEST_FIELDS.items():
        if key not in guest:
            fail(f"guest.{key} is missing")
        if not ok(guest[key]):
            fail(f"guest.{key} has the wrong type or value ({type(guest[key]).__name__})")
    try:
        programs = get_profile(guest["profile"]).programs
    except HtabError:
        fail(f"unknown profile {guest['profile']!r}")
    for i, proc in enumerate(guest["processes"]):
        if not isinstance(proc, dict):
            fail(f"guest.processes[{i}] is not an object")
        for key, ok in _PROCESS_FIELDS.items():
            if key not in proc:
                fail(f"guest.processes[{i}].{key} is missing")
            if not ok(proc[key]):
                fail(f"guest.processes[{i}].{key} has the wrong type or value")
        for key, ok in _PROCESS_OPTIONAL.items():
            if key in proc and not ok(proc[key]):
                fail(f"guest.processes[{i}].{key} has the wrong type or value")
        if proc["comm"] not in programs:
            fail(f"guest.processes[{i}].comm {proc['comm']!r} is not a program of profile {guest['profile']!r}")
    engine = state.get("engine", {})
    hcalls = engine.get("hcalls", {}) if isinstance(engine, dict) else None
    if not isinstance(hcalls, dict) or not all(isinstance(k, str) and _is_int(v) for k, v in hcalls.items()):
        fail("engine.hcalls is not an object of counts")


# -- what an image holds, for people (no numpy) -------------------------------------


def _kind_table(test) -> bytes:
    """A bytes.translate table: 1 for the low bytes of v that ``test`` accepts, else 0."""
    return bytes(1 if test(b) else 0 for b in range(256))


_OCCUPIED = HPTE_V_VALID | HPTE_V_ABSENT  # what a read calls valid
#: the entry counts of ``vm info``, each a test of the low byte of v
ENTRY_KINDS = {
    "valid": _kind_table(lambda b: b & _OCCUPIED),
    "bolted": _kind_table(lambda b: b & _OCCUPIED and b & HPTE_V_BOLTED),
    "absent": _kind_table(lambda b: b & HPTE_V_ABSENT),
    "secondary": _kind_table(lambda b: b & _OCCUPIED and b & HPTE_V_SECONDARY),
}


def entry_counts(low: bytes) -> dict:
    """Valid (valid or absent), bolted, absent and secondary entries among
    entries whose v ends in the bytes ``low`` (:func:`htabtool.hpte.v_low_bytes`)."""
    return {kind: low.translate(table).count(1) for kind, table in ENTRY_KINDS.items()}


def add_counts(total: dict, more: dict) -> dict:
    for kind, n in more.items():
        total[kind] = total.get(kind, 0) + n
    return total


def file_entry_counts(fd: int, h: dict, chunk: int = 1 << 18) -> dict:
    """:func:`entry_counts` of the table of the image open on ``fd``, read
    ``chunk`` entries at a time."""
    total = dict.fromkeys(ENTRY_KINDS, 0)
    step = chunk * HPTE_SIZE
    end = h["table_offset"] + h["table_length"]
    for at in range(h["table_offset"], end, step):
        data = os.pread(fd, min(step, end - at), at)
        add_counts(total, entry_counts(data[V_LOW_BYTE::HPTE_SIZE]))
    return total


def guest_summary(guest: dict) -> dict:
    """What the guest part of an image's state says, for people."""
    procs = guest["processes"]
    return {
        "profile": guest["profile"],
        "seed": guest["seed"],
        "clock_seconds": round(guest["clock"], 6),
        "events": guest["events"],
        "processes": len(procs),
        "programs": dict(Counter(p["comm"] for p in procs)),
        "totals": dict(guest.get("totals", {})),
    }


def describe(path: str, h: dict, counts: dict, guest: dict, hcalls: dict, st: os.stat_result, *, running: bool,
             mmu_ready: bool, map_vrma: bool, vrma_slb_v: int) -> dict:
    """``vm info``'s dictionary of an image (the schema of htabtool-vm-info/1)."""
    return {
        "path": path,
        "format_version": h["version"],
        "generation": h["generation"],
        "order": h["order"],
        "entries": h["entries"],
        "table_bytes": h["table_length"],
        "ram_bytes": h["ram"],
        "backing_page_shift": h["backing_page_shift"],
        "cpu": h["cpu"],
        "vcpus": "running" if running else "stopped",
        "mmu_ready": mmu_ready,
        "map_vrma": map_vrma,
        "vrma_slb_v": f"{vrma_slb_v:#x}",
        **counts,
        "guest": guest_summary(guest),
        "hcalls": dict(sorted(hcalls.items())),
        "file_bytes": st.st_size,
        "disk_bytes": st.st_blocks * 512,
    }


def describe_file(path: str, fd: int) -> dict:
    """:func:`describe` of the image open on ``fd`` as the file says it."""
    h = read_header(fd, path)
    state = read_state(fd, path, h)
    check_state(state, path)
    flags = h["flags"]
    return describe(path, h, file_entry_counts(fd, h), state["guest"], state.get("engine", {}).get("hcalls", {}),
                    os.fstat(fd), running=bool(flags & FLAG_RUNNING), mmu_ready=bool(flags & FLAG_MMU_READY),
                    map_vrma=bool(flags & FLAG_MAP_VRMA), vrma_slb_v=h["vrma_slb_v"])
