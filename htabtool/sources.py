"""Sources and sinks: where record streams come from and where they go.

Strategy: the codec and the container never touch a file; this module is
the edge.  A *source* yields ``(pass_number, records)`` pieces: whole
kernel records, in the header byte order it states, as read(2) of an htab
fd returned them, numbered by pass (1 = the first pass).  A *sink* takes
the same pieces.  Paths are opened here and nowhere else below the CLI;
``-`` means standard input or output.

The interfaces are declared, not probed: :class:`RecordSource` (what a dump
reads; :class:`SourceBase` declares what a source lacks: every source,
QEMU's and the kernel's too, derives from it), :class:`SnapshotInput` (what the operations
read a snapshot through; :class:`SnapshotFileInput` adds the header, the
trailer and the container's reader) and :class:`Sink`.  The options a
command gives are made once, at the edge, and passed down whole:
:class:`WriteOptions` (how a snapshot is written) and
:class:`VMReadOptions` (how a VM's table is read).

Imports: the record layer, :mod:`htabtool.atomic` and the error tree; the
container, the VM image and the engine when a snapshot or a VM is opened.
"""

from __future__ import annotations

import contextlib
import os
import stat as stat_module
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from htabtool.atomic import atomic_write
from htabtool.errors import HtabError, UsageError
from htabtool.hpte import table_entries
from htabtool.records import RecordBatch, RecordDecoder, check_byte_order, check_indexable_order, split_passes_stated

if TYPE_CHECKING:  # types only: the container is imported when a snapshot is opened
    from htabtool.container import SnapshotHeader, SnapshotReader, SnapshotTrailer, SnapshotWriter

DEFAULT_READ_SIZE = 1 << 20


@dataclass
class StreamInfo:
    """What a source knows about its stream, for the snapshot header."""

    byte_order: str
    order: int
    bolted_only: bool = False
    start_index: int = 0
    source: dict = field(default_factory=dict)

    @property
    def entries(self) -> int:
        return table_entries(self.order)


def order_for(order: int | None, entries: int | None) -> int:
    """The table order (log2 of its bytes) from ``order`` or ``entries``
    (exactly one given); the errors name the parameter (``param``)."""
    if (order is None) == (entries is None):
        raise UsageError("give the table size as exactly one of order N or entries N", param=("order", "entries"))
    if entries is not None:
        if entries < 8 or entries & (entries - 1):
            raise UsageError(f"entries must be a power of two of at least 8, not {entries}", param="entries")
        order = entries.bit_length() - 1 + 4
    assert order is not None  # one of the two was given
    if not 7 <= order <= 46:
        raise UsageError(f"order must be between 7 and 46 (the kernel allows 18 to 46), not {order}", param="order")
    try:
        return check_indexable_order(order, "order")
    except UsageError as exc:
        exc.param = "order"
        raise


# -- the interfaces -------------------------------------------------------------


class RecordSource(Protocol):
    """Where a dump's records come from (a raw stream, a simulated VM, QEMU,
    the kernel).  Every member is there: a source without a capability
    declares it so (:class:`SourceBase` has the declarations)."""

    @property
    def info(self) -> StreamInfo:
        """What the snapshot's header says of the stream."""

    def pieces(self) -> Iterator[tuple[int, bytes]]:
        """(pass number, whole records), in stream order."""

    def stated_pieces(self) -> Iterator[tuple[int, bytes, tuple | None]]:
        """(pass number, whole records, their statistics or None when the
        source does not know them)."""

    def progress_total(self) -> int | None:
        """About the bytes the source yields (None: not known)."""

    def snapshot_notes(self) -> list[tuple[bytes, bytes]]:
        """(tag, body) of what the source keeps apart from the passes, for
        the snapshot's optional frames (QEMU's parts); none for most."""

    @property
    def final_valid(self) -> int | None:
        """Valid entries of the table the passes add up to (None: not known
        without reading the snapshot again)."""

    @property
    def converged(self) -> bool | None:
        """Did a pass come down to ``until_dirty`` (None: not asked)."""


class SourceBase:
    """The declarations of a source that has only ``info`` and
    ``pieces()``: no statistics of its own, no size known in advance, no
    notes, no final count, no convergence asked.  A source overrides what it
    has."""

    info: StreamInfo
    final_valid: int | None = None
    converged: bool | None = None

    def pieces(self) -> Iterator[tuple[int, bytes]]:
        raise NotImplementedError

    def stated_pieces(self) -> Iterator[tuple[int, bytes, tuple | None]]:
        for number, data in self.pieces():
            yield number, data, None

    def progress_total(self) -> int | None:
        return None

    def snapshot_notes(self) -> list[tuple[bytes, bytes]]:
        return []


class SnapshotInput(Protocol):
    """A snapshot's records to read: its size, its chunks streamable as many
    times as needed, its name (None: unnamed) and its trailer (None: not
    known, as for records held in memory; the records are counted instead)."""

    @property
    def byte_order(self) -> str: ...

    @property
    def entries(self) -> int: ...

    @property
    def name(self) -> str | None: ...

    def pieces(self, passes: Callable[[int], bool] | None = None) -> Iterator[tuple[int, bytes]]:
        """(pass number, whole records) of every chunk whose pass ``passes``
        accepts (all when None), in file order."""

    def batches(self, passes: Callable[[int], bool] | None = None) -> Iterator[tuple[int, RecordBatch]]:
        """(pass number, RecordBatch) of the same chunks, checked against the
        table as the kernel's write side would (an input without a faster
        way decodes its pieces: :func:`htabtool.records.decode_pieces`)."""

    def worked_batches(self, work: Callable[[RecordBatch], Any] | None,
                       passes: Callable[[int], bool] | None = None) -> Iterator[tuple[int, RecordBatch, Any]]:
        """(pass number, RecordBatch, ``work(batch)``) of the same batches:
        where the input decodes on other threads, ``work`` runs there too."""

    def trailer(self) -> SnapshotTrailer | None: ...


class SnapshotFileInput(SnapshotInput, Protocol):
    """A snapshot file: a SnapshotInput with its header, its trailer (always
    known), its optional frames and a container reader over it."""

    @property
    def header(self) -> SnapshotHeader: ...

    @property
    def file_size(self) -> int: ...

    def trailer(self) -> SnapshotTrailer: ...

    def reader(self, **kw: Any) -> SnapshotReader: ...

    def optional_frames(self, tag: bytes) -> list[bytes]: ...


class Sink(Protocol):
    """Where records go: called with each (pass number, whole records)."""

    def __call__(self, pass_number: int, data: bytes) -> object: ...


# -- options made once, at the edge ----------------------------------------------


@dataclass(frozen=True)
class WriteOptions:
    """How a snapshot is written: zstd ``level``, compression ``threads``
    and ``chunk_size`` (None: the container's default).  The one object
    the CLI makes and the operations pass down to the container writer."""

    level: int | None = None
    threads: int | None = None
    chunk_size: int | None = None

    def writer(self, out: BinaryIO, header: SnapshotHeader) -> SnapshotWriter:
        """The container's writer over ``out`` with these options."""
        from htabtool import container

        given = {k: v for k, v in asdict(self).items() if v is not None}
        return container.SnapshotWriter(out, header, **given)


@dataclass(frozen=True)
class VMReadOptions:
    """How a VM's table is read through its htab fd (the simulated VM's and
    the kernel's): header ``byte_order`` (the simulated host's; the kernel's
    is the host's own), ``bolted_only`` (KVM_GET_HTAB_BOLTED_ONLY), the first
    entry ``start_index``, ``buffer_size``-byte reads, ``passes``, the guest's
    ``churn`` operations between them (simulated VM), ``until_dirty`` and
    its cap ``max_passes``."""

    byte_order: str = "little"
    bolted_only: bool = False
    start_index: int = 0
    buffer_size: int = 65536
    passes: int = 1
    churn: int = 1000
    until_dirty: int | None = None
    max_passes: int = 30

    def __post_init__(self) -> None:
        check_byte_order(self.byte_order)
        for name in ("start_index", "buffer_size", "passes", "churn", "max_passes"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must not be negative, not {getattr(self, name)}", param=name)
        if self.until_dirty is not None and self.until_dirty < 0:
            raise UsageError(f"until_dirty must not be negative, not {self.until_dirty}", param="until_dirty")

    @classmethod
    def of(cls, options: VMReadOptions | None = None, **keywords) -> VMReadOptions:
        """``options``, or the options the keywords give (both: the keywords
        replace those fields of ``options``)."""
        unknown = set(keywords) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown VM read option(s): {', '.join(sorted(unknown))}")
        if options is None:
            return cls(**keywords)
        return replace(options, **keywords) if keywords else options

    @property
    def live(self) -> bool:
        """More than one pass (the guest runs between them)."""
        return self.passes > 1 or self.until_dirty is not None

    @property
    def pass_count(self) -> int:
        """The passes to make at most."""
        return self.max_passes if self.until_dirty is not None else self.passes

    def last_pass(self, number: int, changed: int) -> bool:
        """Whether pass ``number``, which reported ``changed`` entries, ends
        an ``until_dirty`` run: a later pass came down to it."""
        return self.until_dirty is not None and number > 1 and changed <= self.until_dirty

    def check_start(self, entries: int) -> None:
        """The first pass's ``start_index`` is inside a table of ``entries``."""
        if self.start_index >= entries:
            raise UsageError(f"start_index {self.start_index} is past the table of {entries} entries",
                             param="start_index")


# -- files at the edge ---------------------------------------------------------


def open_input(path: str) -> BinaryIO:
    """A binary file to read: ``-`` is standard input.  A directory is
    refused with a clear message; a FIFO or a pipe is fine."""
    if path == "-":
        if sys.stdin is None:
            raise HtabError("standard input is closed")
        return sys.stdin.buffer
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise HtabError(f"{path}: no such file") from None
    if stat_module.S_ISDIR(st.st_mode):
        raise HtabError(f"{path}: is a directory, not a file")
    return open(path, "rb")


@contextlib.contextmanager
def open_output(path: str, mode: int = 0o600) -> Iterator[BinaryIO]:
    """A binary file to write: atomically replaced for a path (temp file in
    the same directory, fsync, rename), standard output for ``-``."""
    if path == "-":
        out = sys.stdout.buffer
        yield out
        out.flush()
        return
    if os.path.isdir(path):
        raise HtabError(f"{path}: is a directory")
    with atomic_write(path, mode) as f:
        yield f


def read_blocks(f: BinaryIO, read_size: int = DEFAULT_READ_SIZE) -> Iterator[bytes]:
    while True:
        block = f.read(read_size)
        if not block:
            return
        yield block


# -- sources -------------------------------------------------------------------


class RawStreamSource(SourceBase):
    """A kernel record stream someone captured from an htab fd (a file or a
    pipe): records in ``byte_order``, for a table of ``2**(order-4)`` entries.

    Passes are recovered from the indexes: a record below the end of the one
    before it begins a new pass (:func:`htabtool.records.pass_starts`).  The
    records are checked against the table as the kernel's write side would;
    a stream that ends inside a record is a TruncatedStream naming where."""

    #: a little under a snapshot chunk (1 MiB), so that a block's records and
    #: the partial record carried over from the one before fill one chunk
    #: and are not cut (and scanned) again by the writer
    READ_SIZE = (1 << 20) - (1 << 16)

    def __init__(self, f: BinaryIO, *, byte_order: str, order: int, name: str = "-", read_size: int = READ_SIZE):
        check_byte_order(byte_order)
        self.f = f
        self.read_size = read_size
        self.info = StreamInfo(byte_order, order, source={"kind": "raw", "name": name})

    def progress_total(self) -> int | None:
        """The stream's size, when it is a regular file (for a progress bar)."""
        try:
            st = os.fstat(self.f.fileno())
        except (AttributeError, OSError, ValueError):
            return None
        return st.st_size if stat_module.S_ISREG(st.st_mode) else None

    def pieces(self) -> Iterator[tuple[int, bytes]]:
        for number, data, _ in self.stated_pieces():
            yield number, data

    def stated_pieces(self) -> Iterator[tuple[int, bytes, tuple]]:
        """(pass number, whole records, their statistics): the records are
        decoded and checked here, so a snapshot writer need not scan them
        again."""
        dec = RecordDecoder(self.info.byte_order, n_entries=self.info.entries)
        pass_number, previous_end = 1, 0
        for block in read_blocks(self.f, self.read_size):
            dec.receive_data(block)
            pieces, pass_number, previous_end = split_passes_stated(dec.next_batch(), pass_number, previous_end)
            yield from pieces
        dec.close()


__all__ = [
    "DEFAULT_READ_SIZE",
    "StreamInfo",
    "RawStreamSource",
    "VMSource",
    "VMReadOptions",
    "WriteOptions",
    "RecordSource",
    "SourceBase",
    "SnapshotInput",
    "SnapshotFileInput",
    "Sink",
    "SnapshotFile",
    "open_input",
    "open_output",
    "open_snapshot",
    "order_for",
    "read_blocks",
    "named_errors",
]


# -- snapshot files ---------------------------------------------------------------


class SnapshotFile:
    """A snapshot opened for reading: its header, its trailer, and its chunks
    streamable as often as needed (:class:`SnapshotFileInput`).

    A pipe (``-``) is spooled to an unnamed temporary file first, so that it
    too can be read twice (the passes after the first, then the first) and
    checked whole before anything is written from it.  Passes are numbered
    from 1, the first pass."""

    def __init__(self, path: str, *, threads: int | None = None):
        from htabtool import container

        self.path = path
        self.name = "<stdin>" if path == "-" else path
        self._threads = container.DEFAULT_THREADS if threads is None else threads
        with named_errors(self.name):
            f = open_input(path)
            if path == "-" or not _seekable(f):
                f = _spool(f)
            self._f = f
            self.header = container.SnapshotReader(f, threads=0).header
        self._trailer = None

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> SnapshotFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def byte_order(self) -> str:
        return self.header.byte_order

    @property
    def entries(self) -> int:
        entries = self.header.entries
        assert entries is not None  # the header derives it from the order
        return entries

    @property
    def file_size(self) -> int:
        return os.fstat(self._f.fileno()).st_size

    def reader(self, **kw):
        from htabtool import container

        self._f.seek(0)
        return container.SnapshotReader(self._f, threads=kw.pop("threads", self._threads), **kw)

    def trailer(self):
        """The trailer, read from the end of the file (the chunks unread)."""
        if self._trailer is None:
            with named_errors(self.name):
                self._trailer = self.reader(threads=0).read_trailer()
        return self._trailer

    def optional_frames(self, tag: bytes) -> list[bytes]:
        """The bodies of the snapshot's optional frames with ``tag``."""
        return self.reader(threads=0).read_optional(tag)

    def pieces(self, passes=None) -> Iterator[tuple[int, bytes]]:
        with named_errors(self.name):
            yield from self._pieces(passes)

    def batches(self, passes=None) -> Iterator[tuple[int, RecordBatch]]:
        """(pass number, RecordBatch) of every chunk whose pass ``passes``
        accepts, checked against the table as the kernel's write side would;
        the records are decoded on the reader's worker threads, beside their
        decompression.  As from :func:`htabtool.records.decode_pieces`, a
        record's number and offset are in its pass's stream."""
        for number, batch, _ in self.worked_batches(None, passes):
            yield number, batch

    def worked_batches(self, work, passes=None) -> Iterator[tuple[int, RecordBatch, Any]]:
        """(pass number, RecordBatch, ``work(batch)``) as :meth:`batches`,
        ``work`` called on the reader's worker threads (with the batch as
        decoded there: its records numbered in the whole stream)."""
        from htabtool.container import batches_in_pass

        with named_errors(self.name):
            for chunk, batch in batches_in_pass(self._chunks(passes, decode=True, work=work)):
                if chunk.checked_entries != self.header.entries:  # not checked, or faulty: named here
                    batch.check(self.header.entries)
                yield chunk.pass_number, batch, chunk.work

    def _pieces(self, passes=None) -> Iterator[tuple[int, bytes]]:
        for chunk in self._chunks(passes):
            yield chunk.pass_number, chunk.data

    def _chunks(self, passes=None, decode: bool = False, work=None):
        if passes is not None:
            wanted = [c.number for c in self.trailer().chunks if passes(c.pass_number)]
            if len(wanted) < len(self.trailer().chunks):
                reader = self.reader(threads=0, decode_records=decode, chunk_work=work)
                for number in wanted:
                    yield reader.read_chunk(number)
                return
        yield from self.reader(decode_records=decode, chunk_work=work).chunks()


def open_snapshot(path: str) -> SnapshotFile:
    return SnapshotFile(path)


def _seekable(f) -> bool:
    try:
        return f.seekable()
    except (AttributeError, OSError, ValueError):
        return False


def _spool(f: BinaryIO, block: int = 1 << 20):
    """A pipe copied into an unnamed temporary file, checked as it comes:
    the container's frames are parsed (not decompressed) while they are
    spooled, so that what is not a snapshot (garbage, data after its end)
    is refused at its first bad byte, never spooled until the disk fills."""
    import tempfile

    from htabtool.container import END_OF_STREAM, NEED_DATA, ContainerParser

    parser = ContainerParser(decompress=False)
    spool = tempfile.TemporaryFile(prefix="htabtool-")
    try:
        for data in read_blocks(f, block):
            parser.receive_data(data)
            while parser.next_event() is not NEED_DATA:
                pass
            spool.write(data)
        parser.receive_data(b"")
        while parser.next_event() is not END_OF_STREAM:
            pass
    except BaseException:
        spool.close()
        raise
    spool.flush()
    spool.seek(0)
    return spool


@contextlib.contextmanager
def named_errors(name: str) -> Iterator[None]:
    """Errors about a file's content name the file: an HtabError raised in
    the block gets ``NAME: `` in front of its message (once)."""
    try:
        yield
    except HtabError as exc:
        message = str(exc)
        prefix = f"{name}: "
        if not message.startswith(prefix) and exc.args:
            exc.args = (prefix + message, *exc.args[1:])
        raise



# -- simulated VMs --------------------------------------------------------------------


class VMSource(SourceBase):
    """The HPT of a simulated VM image, read through its htab fd exactly as
    from the kernel: ``buffer_size``-byte reads, the first pass from
    ``start_index`` to the end, then incremental passes.

    With ``passes`` > 1 the guest runs ``churn`` operations between passes
    (a live snapshot); with ``until_dirty`` passes go on until one returns at
    most that many changed entries (at most ``max_passes``).  The pass
    boundaries are the simulated fd's (``first_pass`` / ``last_read``): a
    real kernel does not tell them.  Reading clears the entries' modified
    marks and harvests R/C, as in the kernel; the image is saved after."""

    def __init__(self, vm, options: VMReadOptions | None = None):
        options = options or VMReadOptions()
        options.check_start(vm.hpt.npte)
        self.vm = vm
        self.options = options
        self.buffer_size = options.buffer_size
        self.passes = options.pass_count
        self.churn = options.churn
        self.until_dirty = options.until_dirty
        guest = vm.guest.summary()
        self.info = StreamInfo(
            options.byte_order,
            vm.hpt.order,
            bolted_only=options.bolted_only,
            start_index=options.start_index,
            source={"kind": "vm", "image": os.path.basename(vm.path), "profile": guest.get("profile"),
                    "seed": guest.get("seed"), "generation": vm.header.get("generation")},
        )
        self.pass_changes: list[int] = []  # entries reported by each pass (n_valid + n_invalid)
        self.converged: bool | None = None  # until_dirty: did a pass come down to it?
        self.final_valid: int | None = None  # valid entries of the table the passes add up to

    def progress_total(self) -> int:
        """About the bytes of the first pass (for a progress bar; it scans
        the table, so it is asked for only when a bar is shown)."""
        valid = self.vm.hpt.count_valid()
        return 16 * valid + 8 * max(1, valid // 4)

    @classmethod
    @contextlib.contextmanager
    def open(cls, path: str, options: VMReadOptions | None = None) -> Iterator[VMSource]:
        """A source over the image at ``path``, locked for the dump.  With
        more than one pass the guest runs between them: the image is changed
        all or nothing (a copy renamed over it).  One pass changes only the
        modified marks and harvested R/C bits that any read of the kernel's
        fd changes; they are written back in place and the image's state
        is not rewritten."""
        from htabtool.sim.vmimage import VMImage, transaction

        options = options or VMReadOptions()
        if options.live:
            with transaction(path) as vm:
                yield cls(vm, options)
            return
        vm = VMImage.open(path)
        try:
            yield cls(vm, options)
            vm.flush()
        finally:
            vm.close(save=False)

    def pieces(self) -> Iterator[tuple[int, bytes]]:
        for number, data, _ in self.stated_pieces():
            yield number, data

    def stated_pieces(self) -> Iterator[tuple[int, bytes, tuple | None]]:
        """(pass number, one read's bytes, its records' statistics): the
        reads describe their records as they make them (ReadResult.stats),
        so a snapshot writer need not scan them again."""
        from htabtool.sim.papr import KVM_GET_HTAB_BOLTED_ONLY

        hpt = self.vm.hpt
        flags = KVM_GET_HTAB_BOLTED_ONLY if self.info.bolted_only else 0
        with hpt.htab_fd(flags, self.info.start_index, byte_order=self.info.byte_order) as fd:
            for number in range(1, self.passes + 1):
                if number > 1:
                    if self.churn and not hpt.vcpus_running:
                        raise UsageError(f"{self.vm.path}: the VM is stopped, so nothing changes between passes "
                                         f"(htabtool vm cont first, or --passes 1)")
                    if self.churn:
                        self.vm.guest.run(ops=self.churn)
                changed = 0
                # one burst of read(buffer_size) calls to the end of the pass
                for data in fd.reads(self.buffer_size):
                    res = fd.last_read
                    changed += res.reported
                    yield number, data, res.stats
                if not fd.last_read.wrapped:
                    raise UsageError(f"a read of {self.buffer_size} bytes holds no record")
                self.pass_changes.append(changed)
                if self.options.last_pass(number, changed):
                    self.converged = True
                    break
        if self.until_dirty is not None and not self.converged:
            self.converged = False
        if len(self.pass_changes) > 1 and not self.info.bolted_only and not self.info.start_index:
            # nothing ran after the last pass: the table is what the passes add up to (an absent
            # entry is reported with HPTE_V_VALID, as the kernel does)
            from htabtool.sim.vmimage import table_counts

            self.final_valid = table_counts(hpt)["valid"]
