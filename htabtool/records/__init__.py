"""The kernel record stream, sans I/O: the format of the KVM_PPC_GET_HTAB_FD fd.

What lives here (one module per layer, each importing only those above it):

- :mod:`~htabtool.records.format`   the header's layout and limits, a record,
  records as 8-byte words
- :mod:`~htabtool.records.batch`    :class:`RecordBatch`: many records as arrays,
  the kernel's write-side checks
- :mod:`~htabtool.records.passes`   THE pass rule (a new pass starts where an
  index falls below the previous record's end) and cutting batches by pass
- :mod:`~htabtool.records.decode`   bytes cut anywhere to records
  (:func:`decode_batch`, :class:`RecordDecoder`)
- :mod:`~htabtool.records.apply`    the write side on a plain table
- :mod:`~htabtool.records.encode`   a table to the bytes of the kernel's reads
- :mod:`~htabtool.records.table`    table states: statistics, comparison, the
  final state of a stream of passes in windows

What it may import: numpy, :mod:`htabtool.hpte`, :mod:`htabtool.sansio` and
:mod:`htabtool.errors`, nothing else of htabtool.  Nothing here touches a
file or an fd: files, fds and QEMU streams sit at the edges (sources,
sinks, the simulated kernel).

The rules are today's upstream kernel's (arch/powerpc/kvm/book3s_64_mmu_hv.c,
kvm_htab_read), byte for byte, quirks included:

- The header is in the host's byte order, but the entries are big-endian on
  every host: record_hpte stores them with cpu_to_be64 (and kvm_htab_write
  reads them with be64_to_cpu).  The 2012 patch wrote host-order entries;
  today's kernel does not.  The header byte order is therefore a parameter,
  always explicit, never guessed.
- On later passes the header's index is set *after* the loop that skips
  clean entries (the 2012 patch set it before, naming a clean entry).
- A record is started only while ``nb + 8 + 16 < count`` and a valid entry
  is added only while ``nb + 16 < count``: both strict, so a read never
  fills its buffer to the last byte, and a valid run cut by the budget ends
  its record with n_invalid = 0.
- n_valid and n_invalid are each capped at 0xffff.
- A read that reaches the end of the table returns there; the next read
  starts an incremental pass at index 0.

Every public name is re-exported here: ``from htabtool.records import X``.
"""

from htabtool.hpte import HPTE_SIZE
from htabtool.records.apply import (
    apply_batch,
    new_table,
)
from htabtool.records.batch import (
    RecordBatch,
    expand_ranges,
    record_stats,
)
from htabtool.records.decode import (
    RecordDecoder,
    decode_batch,
    decode_pieces,
    iter_batches,
    scan_headers,
)
from htabtool.records.encode import (
    UNBOUNDED_READ,
    ReadResult,
    StaticTable,
    TableSource,
    encode_pass,
    encode_read,
    encode_reads,
    iter_reads,
    plan_records,
    plan_sparse_records,
)
from htabtool.records.format import (
    BYTE_ORDERS,
    ENTRY_DTYPE,
    HEADER_SIZE,
    KIND_CLEAN,
    KIND_INVALID,
    KIND_VALID,
    MAX_INDEX,
    MAX_INDEX_ORDER,
    MAX_RUN,
    Record,
    RecordHeader,
    check_byte_order,
    check_indexable_order,
    header_dtype,
    header_struct,
    header_words,
    layout_records,
    layout_words,
)
from htabtool.records.passes import (
    begins_pass,
    end_before,
    pass_bounds,
    pass_starts,
    split_passes,
    split_passes_stated,
    wrap_starts,
)
from htabtool.sansio import END_OF_STREAM, NEED_DATA

__all__ = [
    "BYTE_ORDERS",
    "END_OF_STREAM",
    "ENTRY_DTYPE",
    "HEADER_SIZE",
    "HPTE_SIZE",
    "KIND_CLEAN",
    "KIND_INVALID",
    "KIND_VALID",
    "MAX_INDEX",
    "MAX_INDEX_ORDER",
    "MAX_RUN",
    "NEED_DATA",
    "ReadResult",
    "Record",
    "RecordBatch",
    "RecordDecoder",
    "RecordHeader",
    "StaticTable",
    "TableSource",
    "UNBOUNDED_READ",
    "apply_batch",
    "begins_pass",
    "check_byte_order",
    "check_indexable_order",
    "decode_batch",
    "encode_pass",
    "encode_read",
    "encode_reads",
    "end_before",
    "expand_ranges",
    "header_dtype",
    "header_struct",
    "header_words",
    "decode_pieces",
    "iter_batches",
    "iter_reads",
    "layout_records",
    "layout_words",
    "new_table",
    "pass_bounds",
    "pass_starts",
    "plan_records",
    "plan_sparse_records",
    "record_stats",
    "scan_headers",
    "split_passes",
    "split_passes_stated",
    "wrap_starts",
]
