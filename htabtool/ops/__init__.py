"""The operations behind the commands, as library calls.

Strategy: each command of the CLI is one call here, over the layers below:
sources and sinks (:mod:`htabtool.sources`) give and take
``(pass_number, records)`` pieces, the container stores them, the codec
decodes them, :mod:`htabtool.records.table` adds them up.  Nothing here prints;
every result is a typed object of :mod:`htabtool.ops.results` whose
``to_json()`` is the command's ``--json`` document.

A snapshot is read through :class:`htabtool.sources.SnapshotInput`: its size
and a way to stream its chunks as many times as needed (a pipe is spooled
to a temporary file first by :class:`htabtool.sources.SnapshotFile`), so
that the passes after the first can be gathered before the first pass
streams past (flat memory).

What lives where (one module per operation; ``ops.X`` is every public name
of them, so ``from htabtool import ops; ops.stat_report(snap)`` works; a
module named as its operation is shadowed here by the function: import
from it with ``from htabtool.ops.dump import ...``):

- :mod:`~htabtool.ops.state`: a snapshot's batches and its final state in
  windows, the pass numbers (what every operation reading a table uses)
- :mod:`~htabtool.ops.dump`: a record source into a snapshot
- :mod:`~htabtool.ops.load`: a snapshot into a target (VM image, the
  kernel, raw records, QEMU section payloads, a spliced migration stream)
- :mod:`~htabtool.ops.diff`, :mod:`~htabtool.ops.stat`,
  :mod:`~htabtool.ops.verify`: compare, count, check
- :mod:`~htabtool.ops.show`, :mod:`~htabtool.ops.map`: entries decoded and
  filtered; the arrays of the table's pictures
- :mod:`~htabtool.ops.migrate` (and :mod:`~htabtool.ops.migrate_plot`, its
  figure): a live migration simulated pass by pass
- :mod:`~htabtool.ops.results`: every command's result and its --json
  schema, in one place

Imports: the layers below (records, table, hpte, container, qemu, sim/
engine, vmimage, kvm) and the I/O edge (:mod:`htabtool.sources`,
:mod:`htabtool.atomic`); never click or rich (only :mod:`htabtool.cli`
does), and nothing below imports ops.
"""

from __future__ import annotations

from htabtool.ops.diff import diff, diff_with_delta
from htabtool.ops.dump import dump
from htabtool.ops.load import (
    KVMTarget,
    QemuSectionTarget,
    QemuSpliceTarget,
    RawTarget,
    Target,
    VMTarget,
    check_sound,
    load,
    load_kvm,
    load_qemu_section,
    load_qemu_splice,
    load_raw,
    load_vm,
    records_out,
    write_records,
)
from htabtool.ops.map import TableMap, table_map
from htabtool.ops.migrate import migrate
from htabtool.ops.results import (
    SCHEMAS,
    Diff,
    DumpSummary,
    EntryChange,
    LoadReport,
    MapReport,
    MigrationResult,
    Problem,
    Stat,
    StatReport,
    Unreadable,
    Verification,
    VMReport,
)
from htabtool.ops.show import Filters, show
from htabtool.ops.stat import stat, stat_report, stat_result
from htabtool.ops.state import batches, final_state, first_pass_number, pass_numbers
from htabtool.ops.verify import RecordChecker, verify, verify_records
from htabtool.sources import SnapshotInput

__all__ = [
    "SCHEMAS", "Diff", "DumpSummary", "EntryChange", "Filters", "KVMTarget", "LoadReport", "MapReport",
    "MigrationResult", "Problem", "QemuSectionTarget", "QemuSpliceTarget", "RawTarget", "RecordChecker",
    "SnapshotInput", "Stat", "StatReport", "TableMap", "Target", "Unreadable", "VMReport", "VMTarget",
    "Verification", "batches", "check_sound", "diff", "diff_with_delta", "dump", "final_state", "first_pass_number",
    "load",
    "load_kvm", "load_qemu_section", "load_qemu_splice", "load_raw", "load_vm", "migrate", "pass_numbers",
    "records_out", "show", "stat", "stat_report", "stat_result", "table_map", "verify",
    "verify_records", "write_records",
]
