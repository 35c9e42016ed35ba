"""``verify``: is a snapshot sound?  The container's checks and the
records' meaning (inside the table, valid bits on valid runs, each pass
ascending), every problem listed.

Imports: the record decoder and the pass rule of the record layer, the
container's numbering of a chunk's records in their pass, the result types.
"""

from __future__ import annotations

from collections.abc import Callable

from htabtool.container import batches_in_pass
from htabtool.errors import ContainerError, StreamError
from htabtool.ops.results import Problem, Verification
from htabtool.records import RecordDecoder, end_before, pass_starts
from htabtool.sources import SnapshotFileInput, SnapshotInput


def verify_records(snap: SnapshotInput) -> list[Problem]:
    """The meaning of a snapshot's records: every record inside the table,
    valid bits on valid runs, each pass ascending; every problem listed."""
    checker = RecordChecker(snap.byte_order, snap.entries)
    for number, data in snap.pieces():
        checker.add(number, data)
    return checker.finish()


class RecordChecker:
    """verify's record checks, fed chunk by chunk."""

    def __init__(self, byte_order: str, entries: int, limit: int = 100):
        self.byte_order = byte_order
        self.entries = entries
        self.limit = limit
        self.problems: list[Problem] = []
        self.records = 0
        self._decoders: dict[int, RecordDecoder] = {}
        self._ends: dict[int, int] = {}

    def note(self, where: str, what: str) -> None:
        if len(self.problems) < self.limit:
            self.problems.append(Problem(where, what))

    def add(self, number: int, data: bytes) -> None:
        dec = self._decoders.setdefault(number, RecordDecoder(self.byte_order, scan_bound=self.entries))
        dec.receive_data(data)
        try:
            batch = dec.next_batch()
        except StreamError as exc:
            self.note(f"pass {number}", str(exc))
            return
        self.add_batch(number, batch)

    def add_batch(self, number: int, batch, checked: bool = False) -> None:
        """The checks on records already decoded (a snapshot's chunk);
        ``checked``: they passed the write-side checks where they were
        decoded."""
        if not len(batch):
            return
        self.records += len(batch)
        if not checked:
            try:
                batch.check(self.entries)
            except StreamError as exc:
                self.note(f"pass {number}", str(exc))
        previous_end = self._ends.get(number, 0)
        for k in pass_starts(batch, previous_end)[:10].tolist():
            self.note(
                f"pass {number}",
                f"record {batch.first_record + k} at offset {int(batch.offset[k]):#x}: index "
                f"{int(batch.index[k])} is below the end {end_before(batch, k, previous_end)} "
                "of the record before it",
            )
        self._ends[number] = int(batch.end[-1])

    def finish(self) -> list[Problem]:
        for number, dec in self._decoders.items():
            try:
                dec.close()
            except StreamError as exc:
                self.note(f"pass {number}", str(exc))
        return self.problems


def verify(snap: SnapshotFileInput, progress: Callable[[int], None] | None = None) -> Verification:
    """Integrity and meaning of a snapshot file in one streaming read: the
    container's checks (checksums, sizes, numbering, trailer; the first fault
    stops the read) and the records' (inside the table, valid bits, each pass
    ascending; all listed).  ``progress`` is called with each chunk's
    compressed bytes."""
    checker = RecordChecker(snap.byte_order, snap.entries)
    chunks = 0
    try:
        # the records are decoded, and checked against the descriptors, on
        # the reader's threads beside the decompression
        for chunk, batch in batches_in_pass(snap.reader(check_records=True, decode_records=True).chunks()):
            chunks += 1
            checker.add_batch(chunk.pass_number, batch, checked=chunk.checked_entries == snap.entries)
            if progress is not None:
                progress(chunk.info.compressed_size)
    except ContainerError as exc:
        checker.note("container", str(exc))
    problems = checker.finish()
    return Verification(problems, chunks, checker.records, file=snap.name)

