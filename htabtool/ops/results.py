"""Every command's result, and the ``--json`` document it prints, in one place.

Strategy: an operation returns one of these typed objects; its
``to_json()`` is the one source of the documented schema (the man page of
each command lists it, tests check the bytes), and the CLI only prints it
(``json.dumps(result.to_json(), indent=2)``).  Nothing here reads a file or
computes a table: the objects hold what the operations counted.  The schema
names are :data:`SCHEMAS`.

Imports: the record layer's sizes and, for the type of a field only, the
table statistics; no I/O module, no CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from htabtool.records import HPTE_SIZE

if TYPE_CHECKING:  # the types of fields only
    from htabtool.ops.migrate import Link
    from htabtool.records.table import RecordStats, TableDiff, TableStats

#: the schema of each command's --json document (``htabtool-NAME/1``)
SCHEMAS = {
    name: f"htabtool-{name}/1"
    for name in ("dump", "load", "diff", "stat", "verify", "show", "map", "migrate", "vm-info", "vm-run", "vm-state")
}

#: a changed entry in the per-entry-index format migrate compares with: a u32 index and its 16 bytes
INDEX_ENTRY_SIZE = 4 + HPTE_SIZE


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


# -- dump ---------------------------------------------------------------------------


@dataclass
class DumpSummary:
    output: str | None = None
    passes: int = 0
    chunks: int = 0
    records: int = 0
    valid: int = 0
    invalid: int = 0
    raw_bytes: int = 0
    file_bytes: int = 0
    seconds: float = 0.0
    per_pass: list = field(default_factory=list)
    final_valid: int | None = None  # valid entries of the final table (None: not known without a re-read)
    converged: bool | None = None  # --until-dirty: a pass came down to it (None: not asked)

    @property
    def last_pass_changed(self) -> int:
        """Entries the last pass reported (valid + invalid): what changed."""
        last = self.per_pass[-1] if self.per_pass else {}
        return last.get("valid", 0) + last.get("invalid", 0)

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMAS["dump"],
            "output": self.output,
            "passes": self.passes,
            "chunks": self.chunks,
            "records": self.records,
            "valid": self.valid,
            "invalid": self.invalid,
            "final_valid": self.final_valid,
            "last_pass_changed": self.last_pass_changed,
            "converged": self.converged,
            "raw_bytes": self.raw_bytes,
            "file_bytes": self.file_bytes,
            "seconds": round(self.seconds, 4),
            "per_pass": self.per_pass,
        }

    to_json = to_dict


# -- stat -----------------------------------------------------------------------------


@dataclass
class Stat:
    table: TableStats
    records: RecordStats

    def to_dict(self) -> dict:
        return {"table": self.table.to_dict(), "records": self.records.to_dict()}


@dataclass
class StatReport:
    """Everything ``htabtool stat`` shows (htabtool-stat/1): the snapshot's
    header and trailer (container models), the statistics of its final
    table and records, and QEMU's parts (None when not from QEMU; each a
    part's dict with the passes its records feed)."""

    file: str | None
    header: Any
    trailer: Any
    stat: Stat
    qemu_parts: list | None = None

    def per_pass(self) -> list[dict]:
        trailer = self.trailer
        out = []
        for p in trailer.passes:
            chunks = [c for c in trailer.chunks if c.pass_number == p.pass_number]
            entry = {
                "pass": p.pass_number,
                "chunks": p.chunks,
                "records": p.records,
                "valid": p.valid,
                "invalid": p.invalid,
                "raw_bytes": p.raw_size,
                "compressed_bytes": sum(c.compressed_size for c in chunks),
            }
            if self.qemu_parts is not None:  # every pass names the parts it spans
                entry["qemu_parts"] = [q["part"] for q in self.qemu_parts if p.pass_number in q["passes"]]
            out.append(entry)
        return out

    def to_dict(self) -> dict:
        header, trailer = self.header, self.trailer
        table = self.stat.table.to_dict()
        recs = self.stat.records.to_dict()
        return {
            "schema": SCHEMAS["stat"],
            "file": self.file,
            "format_version": header.format_version,
            "byte_order": header.byte_order,
            "order": header.order,
            "entries": header.entries,
            "bolted_only": header.bolted_only,
            "start_index": header.start_index,
            "source": header.source,
            "created": header.created,
            "tool_version": header.tool_version,
            **{k: table[k] for k in ("valid", "invalid", "bolted", "secondary", "referenced", "changed", "vrma",
                                     "hvlock")},
            "page_sizes": table["page_sizes"],
            "segment_sizes": table["segment_sizes"],
            "pteg_fill": table["pteg_fill"],
            "records": recs["records"],
            "mean_n_valid": recs["mean_n_valid"],
            "mean_n_invalid": recs["mean_n_invalid"],
            "n_valid_distribution": recs["n_valid_distribution"],
            "n_invalid_distribution": recs["n_invalid_distribution"],
            "passes": len(trailer.passes),
            "per_pass": self.per_pass(),
            "qemu_parts": self.qemu_parts,
            "chunks": len(trailer.chunks),
            "raw_bytes": trailer.raw_size,
            "compressed_bytes": trailer.compressed_size,
            "file_bytes": trailer.file_size,
            "ratio": round(trailer.raw_size / trailer.file_size, 3) if trailer.file_size else None,
        }

    to_json = to_dict


# -- diff ------------------------------------------------------------------------------


@dataclass
class EntryChange:
    index: int
    kind: str  # added, removed, changed, rc
    a: tuple[int, int]
    b: tuple[int, int]
    fields: dict

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "kind": self.kind,
            "a": {"v": f"0x{self.a[0]:016x}", "r": f"0x{self.a[1]:016x}"},
            "b": {"v": f"0x{self.b[0]:016x}", "r": f"0x{self.b[1]:016x}"},
            "fields": {k: [x, y] for k, (x, y) in self.fields.items()},
        }


@dataclass
class Diff:
    summary: TableDiff
    first: list[EntryChange] = field(default_factory=list)
    delta_records: int = 0
    delta_path: str | None = None
    a: str | None = None  # the snapshots' names
    b: str | None = None

    @property
    def different(self) -> bool:
        return self.summary.different

    @property
    def shown_of(self) -> int:
        """How many differences ``first`` could have shown (its limit cuts)."""
        s = self.summary
        return s.added + s.removed + s.changed + (0 if s.ignore_rc else s.rc_only)

    def to_dict(self) -> dict:
        """The comparison (the document without its schema and names)."""
        d = self.summary.to_dict()
        d["first_differences"] = [c.to_dict() for c in self.first]
        d["delta"] = {"path": self.delta_path, "records": self.delta_records} if self.delta_path else None
        return d

    def to_json(self) -> dict:
        return {"schema": SCHEMAS["diff"], "a": self.a, "b": self.b, **self.to_dict()}


# -- verify -----------------------------------------------------------------------------


@dataclass
class Problem:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"

    def to_dict(self) -> dict:
        return {"where": self.where, "what": self.what}


@dataclass
class Verification:
    problems: list[Problem]
    chunks: int = 0
    records: int = 0
    file: str | None = None  # the snapshot's name

    @property
    def sound(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMAS["verify"],
            "sound": self.sound,
            "chunks": self.chunks,
            "records": self.records,
            "problems": [p.to_dict() for p in self.problems],
        }

    def to_json(self) -> dict:
        return {**self.to_dict(), "file": self.file}


@dataclass
class Unreadable:
    """verify's document for a file that could not be read at all (exit 2):
    a script still gets its JSON, and why."""

    file: str
    error: str

    def to_json(self) -> dict:
        return {"schema": SCHEMAS["verify"], "sound": False, "readable": False, "file": self.file,
                "error": self.error, "chunks": 0, "records": 0,
                "problems": [Problem("file", self.error).to_dict()]}


# -- load -------------------------------------------------------------------------------


@dataclass
class VMLoad:
    image: str
    records: int
    bytes: int
    writes: int
    buffer_size: int
    created: bool
    stopped: bool
    verified: bool | None = None  # --verify: the VM's table read back equals the snapshot's (None: not asked)
    differences: int | None = None  # --verify: the entries that differ

    def to_dict(self) -> dict:
        d = {"target": "vm", "image": self.image, "records": self.records, "bytes": self.bytes,
             "writes": self.writes, "buffer_size": self.buffer_size, "created": self.created,
             "stopped": self.stopped, "verified": self.verified}
        if self.verified is not None:
            d["differences"] = self.differences
        return d


@dataclass
class KVMLoad:
    pid: int
    vm_fd: int
    records: int
    bytes: int
    writes: int
    verified = None  # a real guest is not read back

    def to_dict(self) -> dict:
        return {"target": "kvm", "pid": self.pid, "vm_fd": self.vm_fd, "records": self.records, "bytes": self.bytes,
                "writes": self.writes}


@dataclass
class RawLoad:
    output: str
    bytes: int
    verified = None

    def to_dict(self) -> dict:
        return {"target": "raw", "output": self.output, "bytes": self.bytes}


@dataclass
class QemuSectionLoad:
    output: str
    parts: int
    records: int
    bytes: int
    verified = None

    def to_dict(self) -> dict:
        return {"target": "qemu-section", "output": self.output, "parts": self.parts, "records": self.records,
                "bytes": self.bytes}


@dataclass
class QemuSpliceLoad:
    input: str
    output: str
    records: int
    parts: int
    dropped_parts: int
    bytes: int
    verified = None

    def to_dict(self) -> dict:
        return {"target": "qemu-splice", "input": self.input, "output": self.output, "records": self.records,
                "parts": self.parts, "dropped_parts": self.dropped_parts, "bytes": self.bytes}


LoadTarget = VMLoad | KVMLoad | RawLoad | QemuSectionLoad | QemuSpliceLoad


@dataclass
class LoadReport:
    """What ``htabtool load`` did (htabtool-load/1): the snapshot, and the
    target's own fields (``target`` names which)."""

    snapshot: str | None
    result: LoadTarget

    @property
    def verified(self) -> bool | None:
        return self.result.verified

    def to_dict(self) -> dict:
        return {"schema": SCHEMAS["load"], "snapshot": self.snapshot, **self.result.to_dict()}

    to_json = to_dict


# -- map --------------------------------------------------------------------------------


@dataclass
class MapReport:
    """The terminal map's arrays (htabtool-map/1): each strip (label ->
    fractions of ``columns`` cells), the PTEG fill, the page-size mix and the
    entries each later pass wrote."""

    entries: int
    columns: int
    strips: list  # (label, fractions)
    pteg_fill: list
    page_sizes: dict
    pass_entries: dict  # pass -> entries it wrote

    def to_json(self) -> dict:
        return {
            "schema": SCHEMAS["map"],
            "entries": self.entries,
            "columns": self.columns,
            "strips": {label: [round(float(x), 6) for x in fractions] for label, fractions in self.strips},
            "pteg_fill": [int(n) for n in self.pteg_fill],
            "page_sizes": self.page_sizes,
            "passes": [{"pass": p, "entries": n} for p, n in self.pass_entries.items()],
        }


# -- migrate ------------------------------------------------------------------------------


@dataclass
class PassResult:
    """One pass of the kernel's fd: live, or the stopped phase."""

    number: int
    stopped: bool
    start: float = 0.0  # simulated seconds since the migration began
    seconds: float = 0.0  # its duration (the HPT's link time, and RAM's iterations in between)
    link_seconds: float = 0.0  # the HPT's own time on the link
    reads: int = 0
    records: int = 0
    valid: int = 0  # entries sent with their doublewords
    invalid: int = 0  # entries the records' n_invalid runs cover
    record_bytes: int = 0  # the kernel's format
    dirty_after: int = 0  # entries dirty when the pass ended (the guest ran meanwhile)
    pending_bytes: int = 0  # bytes a read of them would return
    guest_events: int = 0

    @property
    def invalidated(self) -> int:
        """Entries a destination must invalidate: none on a first pass (the
        destination's table starts empty), every n_invalid entry later."""
        return 0 if self.number == 1 else self.invalid

    @property
    def entries(self) -> int:
        """Entries sent: valid plus invalidated."""
        return self.valid + self.invalidated

    @property
    def index_bytes(self) -> int:
        return INDEX_ENTRY_SIZE * self.entries

    @property
    def ratio(self) -> float | None:
        """Bytes in the kernel's format per byte in the per-entry-index format."""
        return self.record_bytes / self.index_bytes if self.index_bytes else None

    def to_dict(self) -> dict:
        return {
            "pass": self.number,
            "stopped": self.stopped,
            "start": round(self.start, 9),
            "seconds": round(self.seconds, 9),
            "link_seconds": round(self.link_seconds, 9),
            "reads": self.reads,
            "records": self.records,
            "valid": self.valid,
            "invalid": self.invalid,
            "invalidated": self.invalidated,
            "entries": self.entries,
            "record_bytes": self.record_bytes,
            "index_bytes": self.index_bytes,
            "ratio": _round(self.ratio),
            "entries_per_record": _round(self.valid / self.records if self.records else None),
            "dirty_after": self.dirty_after,
            "pending_bytes": self.pending_bytes,
            "guest_events": self.guest_events,
        }


@dataclass
class MigrationResult:
    source: str
    profile: str
    order: int
    entries: int
    valid_at_start: int
    link: Link
    ops_per_second: float
    converged: bool = False
    passes: list[PassResult] = field(default_factory=list)
    left_dirty: int = 0  # entries still dirty after the stopped phase (0 unless something is wrong)
    snapshot: str | None = None
    destination: str | None = None
    destination_equal: bool | None = None

    @property
    def live(self) -> list[PassResult]:
        return [p for p in self.passes if not p.stopped]

    @property
    def stopped(self) -> PassResult:
        return self.passes[-1]

    @property
    def hpt_downtime(self) -> float:
        """The HPT's share of the downtime: its stopped phase on the link."""
        return self.stopped.link_seconds

    @property
    def total_seconds(self) -> float:
        last = self.stopped
        return last.start + last.seconds

    def ratio(self, first: bool) -> float | None:
        """Record bytes per index byte over the first pass, or over every
        later pass (the stopped phase included)."""
        chosen = [p for p in self.passes if (p.number == 1) == first]
        index = sum(p.index_bytes for p in chosen)
        return sum(p.record_bytes for p in chosen) / index if index else None

    def to_dict(self) -> dict:
        link = self.link
        last = self.stopped
        return {
            "schema": SCHEMAS["migrate"],
            "source": self.source,
            "profile": self.profile,
            "order": self.order,
            "entries": self.entries,
            "valid_at_start": self.valid_at_start,
            "bandwidth": link.bandwidth,
            "ram_share": link.ram_share,
            "ram_round": link.ram_round,
            "hpt_bytes_per_second": link.hpt_rate,
            "downtime_limit": link.downtime_limit,
            "threshold_bytes": int(link.threshold_bytes),
            "max_passes": link.max_passes,
            "buffer_size": link.buffer_size,
            "iteration_seconds": link.iteration_time,
            "ops_per_second": self.ops_per_second,
            "converged": self.converged,
            "live_passes": len(self.live),
            "passes": [p.to_dict() for p in self.passes],
            "stopped_phase": {
                "entries": last.entries,
                "records": last.records,
                "record_bytes": last.record_bytes,
                "index_bytes": last.index_bytes,
                "hpt_downtime": round(self.hpt_downtime, 9),
            },
            "hpt_downtime": round(self.hpt_downtime, 9),
            "total_seconds": round(self.total_seconds, 9),
            "first_pass_ratio": _round(self.ratio(first=True)),
            "later_passes_ratio": _round(self.ratio(first=False)),
            "left_dirty": self.left_dirty,
            "snapshot": self.snapshot,
            "destination": None if self.destination is None else
            {"image": self.destination, "equal": self.destination_equal},
        }

    to_json = to_dict


# -- vm (the image's own reports, from htabtool.sim.vmimage, under their schema) ----------------


@dataclass
class VMReport:
    """``htabtool vm info|create|run|stop|cont``: the image's report (a dict
    of :mod:`htabtool.sim.vmimage`) under its schema (``kind``: info, run or
    state)."""

    kind: str
    data: dict

    def to_json(self) -> dict:
        return {"schema": SCHEMAS[f"vm-{self.kind}"], **self.data}


__all__ = [
    "SCHEMAS", "INDEX_ENTRY_SIZE", "DumpSummary", "Stat", "StatReport", "EntryChange", "Diff", "Problem",
    "Verification", "Unreadable", "VMLoad", "KVMLoad", "RawLoad", "QemuSectionLoad", "QemuSpliceLoad", "LoadTarget",
    "LoadReport", "MapReport", "PassResult", "MigrationResult", "VMReport",
]
