"""``dump``: what a record source yields, written into a snapshot.

Imports: the container (its header and, through
:class:`htabtool.sources.WriteOptions`, its writer), the result types; the
source comes through :class:`htabtool.sources.RecordSource`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import BinaryIO

from htabtool.ops.results import DumpSummary
from htabtool.sources import RecordSource, WriteOptions


def dump(source: RecordSource, out: BinaryIO, options: WriteOptions | None = None, *,
         progress: Callable[[int], None] | None = None, on_pass: Callable[[int], None] | None = None,
         output: str | None = None) -> DumpSummary:
    """Write what ``source`` yields into a snapshot on the binary file ``out``
    (written with ``options``; ``output``: its name, for the summary).

    ``progress`` is called with the bytes of records of each piece,
    ``on_pass`` with the number of each pass as it begins.  The summary
    comes from the trailer written."""
    from htabtool import container

    info = source.info
    header = container.SnapshotHeader(
        byte_order=info.byte_order,
        order=info.order,
        bolted_only=info.bolted_only,
        start_index=info.start_index,
        source=info.source,
    )
    t0 = time.perf_counter()
    with (options or WriteOptions()).writer(out, header) as writer:
        current = None
        for number, data, stats in source.stated_pieces():
            writer.write_records(data, number, stats)
            if number != current:
                current = number
                if on_pass is not None:
                    on_pass(number)
            if progress is not None:
                progress(len(data))
        for tag, body in source.snapshot_notes():
            writer.add_optional(tag, body)  # what a source keeps apart from the passes (QEMU's parts)
    trailer = writer.trailer
    assert trailer is not None  # the writer closed cleanly
    return DumpSummary(
        output=output,
        passes=len(trailer.passes),
        chunks=len(trailer.chunks),
        records=trailer.records,
        valid=trailer.valid,
        invalid=trailer.invalid,
        raw_bytes=trailer.raw_size,
        file_bytes=trailer.file_size,
        seconds=time.perf_counter() - t0,
        per_pass=[p.to_dict() for p in trailer.passes],
        final_valid=trailer.valid if len(trailer.passes) <= 1 else source.final_valid,
        converged=source.converged,
    )
