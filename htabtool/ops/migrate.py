"""A live migration of a simulated VM's HPT, pass by pass, in simulated time.

Strategy: the source is a private copy of a VM image (the image itself is
only read: a simulation is rerun with the same result), its guest goes on
running its profile while QEMU's rules drive the kernel's htab fd
(:meth:`htabtool.sim.hpt.SimulatedHPT.htab_fd`, byte for byte the kernel's
records), and a clock counts what the link would take.  Nothing loops per
entry: reads are the engine's bursts, the pending data is one planned pass.

QEMU's rules, as they apply to the htab (QEMU 10, hw/ppc/spapr.c and
target/ppc/kvm.c; migration/migration.c and migration/options.c):

- ``htab_save_iterate`` calls ``kvmppc_save_htab(f, fd, MAX_KVM_BUF_SIZE,
  MAX_ITERATION_NS)``: ``read()`` of 2048 bytes (``MAX_KVM_BUF_SIZE``) again
  and again until a read returns 0 or 5 ms (``MAX_ITERATION_NS``; the name
  in the source, where one might look for a "max iterative time") have
  passed; each record is copied into the stream as it is (the kernel's
  header, big-endian, then the entries).  The kernel's fd, not QEMU, makes
  the passes: a read that reaches the end of the table returns and the next
  starts an incremental pass at index 0 (``htab_save_first_pass`` and
  ``htab_save_later_pass`` are QEMU's own loops for a TCG guest, whose
  USHRT_MAX run caps the kernel's records share).  Here a pass is the
  kernel's: from index 0 to the read that wraps.
- ``htab_save_complete`` (the guest stopped) calls the same loop with
  ``max_ns = -1``: reads until one returns 0.
- ``migration_iteration_run`` completes the migration when the pending data
  is below ``threshold_size = expected_bw_per_ms * downtime_limit``
  (``migration_update_counters``), ``downtime-limit`` 300 ms by default
  (``DEFAULT_MIGRATE_SET_DOWNTIME``).  QEMU's htab handlers report no pending
  data (``savevm_htab_handlers`` has no ``state_pending_*``), so in QEMU the
  test counts RAM alone and the htab goes on iterating as long as RAM does.
  Here the test is applied to the htab's own dirty data, as the thread asks
  ("passes until the remaining dirty data fits"): the bytes one read of the
  dirty entries would return now, against the HPT's share of the link
  times the downtime limit.  It is made where a pass ends, after RAM's
  round (QEMU makes it between iterations), and the first pass is always live (QEMU always
  iterates the htab while RAM goes: RAM never fits at first).
- The link: ``bandwidth`` bits per second; ``ram_share`` of it is RAM's
  (RAM itself is not simulated), so the HPT sends at ``(1 - ram_share) *
  bandwidth / 8`` bytes per second, and after each 5 ms iteration of the
  HPT, RAM's iteration takes its share of the time (the guest runs through
  both).  ``ram_round`` makes RAM's iteration last at least that long: in
  QEMU ``qemu_savevm_state_iterate`` does not go on to the next handler
  before one reports the end of its stage, so the htab (registered after
  RAM) is iterated once per RAM round; ``ram_save_iterate`` itself sends
  for up to 50 ms (``MAX_WAIT``, migration/ram.c) a call.  Reading the
  kernel's fd costs no time here: the link does.
- The guest runs its profile (events at its rate, or ``ops_per_second``: a
  Poisson count of events for every stretch of simulated time) between
  iterations, i.e. at most every 5 ms of the HPT's link time; stopped, it
  does nothing (the stopped phase).

Per pass the result counts the kernel's format (records, their bytes) and
the per-entry-index format the thread proposed: each changed entry as a u32
index and its 16 bytes, an invalidated one as its index and 16 zero bytes
(20 bytes an entry, no records).  On the first pass invalid entries are left
out of that format (the destination starts from an empty table, as Paul
assumed), so its entries are the valid ones; on later passes an entry of an
``n_invalid`` run is an invalidation and counts.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from htabtool.errors import HtabError, UsageError
from htabtool.ops.results import INDEX_ENTRY_SIZE, SCHEMAS, MigrationResult, PassResult
from htabtool.records import HEADER_SIZE, HPTE_SIZE
from htabtool.sources import WriteOptions

#: hw/ppc/spapr.c: the time one htab_save_iterate() may read, in ns (5 ms)
MAX_ITERATION_NS = 5_000_000
#: hw/ppc/spapr.c: the read(2) size kvmppc_save_htab() uses on the fd
MAX_KVM_BUF_SIZE = 2048
#: migration/options.c: DEFAULT_MIGRATE_SET_DOWNTIME, ms
DEFAULT_DOWNTIME_LIMIT = 0.300
DEFAULT_MAX_PASSES = 30
#: the per-entry-index format: a u32 index and the 16-byte entry

SCHEMA = SCHEMAS["migrate"]


@dataclass(frozen=True)
class Link:
    """The migration link and QEMU's limits, as the simulation uses them."""

    bandwidth: float  # bits per second
    downtime_limit: float = DEFAULT_DOWNTIME_LIMIT  # seconds
    ram_share: float = 0.0  # the part of the bandwidth RAM keeps
    max_passes: int = DEFAULT_MAX_PASSES  # live passes at most
    ram_round: float = 0.0  # seconds RAM's own iteration takes at least, between two of the HPT's
    buffer_size: int = MAX_KVM_BUF_SIZE
    iteration_time: float = MAX_ITERATION_NS / 1e9

    def __post_init__(self):
        if not self.bandwidth > 0:
            raise UsageError(f"the bandwidth must be positive, not {self.bandwidth}")
        if not 0 <= self.ram_share < 1:
            raise UsageError(f"ram_share must be at least 0 and below 1, not {self.ram_share}", param="ram_share")
        if self.downtime_limit < 0:
            raise UsageError("the downtime limit must not be negative")
        if self.ram_round < 0:
            raise UsageError("ram_round must not be negative", param="ram_round")
        if self.max_passes < 1:
            raise UsageError("max_passes must be at least 1", param="max_passes")
        if self.buffer_size <= HEADER_SIZE + HPTE_SIZE:
            raise UsageError(f"a read of {self.buffer_size} bytes cannot hold one record: use more than 24")

    @property
    def hpt_rate(self) -> float:
        """The HPT's bytes per second on the link."""
        return (1.0 - self.ram_share) * self.bandwidth / 8.0

    @property
    def threshold_bytes(self) -> float:
        """QEMU's threshold_size for the HPT: its rate times the downtime limit."""
        return self.hpt_rate * self.downtime_limit


# -- the source: a private copy of an image -------------------------------------


def scratch_copy(vm):
    """(SimulatedHPT, Guest) copied into memory from an open VM image, so
    that the simulation changes nothing on disk."""
    from htabtool.sim.guest import Guest
    from htabtool.sim.hpt import SimulatedHPT

    src = vm.hpt
    hpt = SimulatedHPT(src.order, ram_size=src.ram_size, backing_page_shift=src.backing_page_shift,
                       map_vrma=src.map_vrma, hpt=np.array(src.hpt), rev=np.array(src.rev))
    hpt.vcpus_running, hpt.mmu_ready = src.vcpus_running, src.mmu_ready
    hpt.vrma_slb_v, hpt.lpcr = src.vrma_slb_v, src.lpcr
    hpt.hcalls.update(src.hcalls)
    return hpt, Guest(hpt, np.array(vm.guest.gmap), copy.deepcopy(vm.guest.state))


# -- the simulation --------------------------------------------------------------


Sink = Callable[[int, bytes, tuple | None], object]


class Migration:
    """The simulation over an HPT and its guest: :meth:`run` makes the live
    passes and the stopped phase.  ``sink(pass_number, data, stats)`` gets
    every read's bytes as sent (for a snapshot)."""

    def __init__(self, hpt, guest, link: Link, *, ops_per_second: float | None = None, byte_order: str = "little",
                 sink: Sink | None = None):
        self.hpt = hpt
        self.guest = guest
        self.link = link
        self.rate = guest.profile.rate if ops_per_second is None else float(ops_per_second)
        if self.rate < 0:
            raise UsageError("ops_per_second must not be negative", param="ops_per_second")
        self.byte_order = byte_order
        self.sink = sink
        self.clock = 0.0  # simulated seconds
        self._guest_clock = 0.0  # the guest has run up to here
        self._iteration = 0.0  # the HPT's link time in the current QEMU iteration
        self._events = 0

    # -- time --------------------------------------------------------------------

    def _send(self, nbytes: int) -> float:
        t = nbytes / self.link.hpt_rate
        self.clock += t
        self._iteration += t
        return t

    def _end_iteration(self) -> None:
        """htab_save_iterate returned: RAM's iteration takes its share of
        the link, and the guest runs through both."""
        s = self.link.ram_share
        self.clock += max(self._iteration * s / (1.0 - s), self.link.ram_round)
        self._iteration = 0.0
        self._run_guest()

    def _run_guest(self) -> None:
        dt = self.clock - self._guest_clock
        self._guest_clock = self.clock
        if dt <= 0 or not self.rate or not self.hpt.vcpus_running or not self.guest.profile.weights:
            return
        ops = int(self.guest.rng.poisson(self.rate * dt))
        if ops:
            self.guest.run(ops=ops)
            self._events += ops

    # -- passes ------------------------------------------------------------------

    def _read_pass(self, fd, number: int, stopped: bool) -> PassResult:
        """Read the fd from where it is (index 0) to the read that wraps."""
        p = PassResult(number, stopped, start=self.clock)
        events = self._events
        size = self.link.buffer_size
        while True:
            burst = fd.reads(size)
            wrapped = empty = False
            try:
                for data in burst:
                    res = fd.last_read
                    p.reads += 1
                    if res.stats is not None:
                        p.records += res.stats[0]
                        p.valid += res.stats[3]
                        p.invalid += res.stats[4]
                    p.record_bytes += len(data)
                    p.link_seconds += self._send(len(data))
                    if self.sink is not None:
                        self.sink(number, data, res.stats)
                    wrapped, empty = res.wrapped, not data
                    if wrapped or (not stopped and self._iteration >= self.link.iteration_time):
                        break  # a read of 0 bytes is always one that wrapped
            finally:
                burst.close()
            if not stopped and (empty or self._iteration >= self.link.iteration_time):
                # kvmppc_save_htab returns after 5 ms or a read of 0 bytes
                self._end_iteration()
            if wrapped:
                break
        if stopped and not empty:
            # kvmppc_save_htab(max_ns = -1) reads until a read returns 0: with
            # the guest stopped, the next read (a new pass at 0) finds nothing
            p.reads += 1
            if fd.read(size):
                raise HtabError("the table changed while the guest was stopped")
        else:
            # the test is made between iterations: the pass's iteration ends
            # here (a later read would find little and return 0 soon), RAM
            # takes its round, the guest runs through it
            self._end_iteration()
        p.seconds = self.clock - p.start
        p.guest_events = self._events - events
        p.dirty_after, p.pending_bytes = self.pending(fd)
        return p

    def pending(self, fd) -> tuple[int, int]:
        """(entries, bytes) one read of everything dirty would return now:
        the fd's own view of the table (record_hpte's, no side effects)."""
        res = fd.pending()
        return res.reported, len(res)

    def converged(self, p: PassResult) -> bool:
        """migration_iteration_run's test: nothing pending, or less than the threshold."""
        return p.pending_bytes == 0 or p.pending_bytes < self.link.threshold_bytes

    def run(self, result: MigrationResult) -> MigrationResult:
        with self.hpt.htab_fd(0, 0, byte_order=self.byte_order) as fd:
            number = 1
            while True:
                p = self._read_pass(fd, number, stopped=False)
                result.passes.append(p)
                if self.converged(p):
                    result.converged = True
                    break
                if number >= self.link.max_passes:
                    break
                number += 1
            # migration_completion: the guest stops right after the test, and
            # htab_save_complete reads what changed since
            self.hpt.stop()
            result.passes.append(self._read_pass(fd, number + 1, stopped=True))
            result.left_dirty = self.pending(fd)[0]
        return result


# -- the operation ----------------------------------------------------------------


def migrate(image: str, *, bandwidth, downtime_limit=DEFAULT_DOWNTIME_LIMIT, ram_share: float = 0.0,
            max_passes: int = DEFAULT_MAX_PASSES, ops_per_second: float | None = None, ram_round=0.0,
            seed: int | None = None, snapshot: str | None = None, to: str | None = None, byte_order: str = "little",
            options: WriteOptions | None = None) -> MigrationResult:
    """Simulate a live migration of the HPT of the VM image ``image``.

    ``bandwidth`` in bits per second and ``downtime_limit`` in seconds
    (numbers, or text such as ``"10G"`` and ``"30ms"``).  The image is only
    read.  ``snapshot``: write every pass as a pass of a snapshot file (``-``:
    standard output); ``to``: create a VM image there holding what was sent
    (loaded as ``load --vm --create`` loads), compared with the source's
    final table (``result.destination_equal``).  ``seed``: draw the guest's
    events from a new generator (default: the image's own, so a rerun
    gives the same figures).  The snapshot is written with ``options``.
    Existing files are replaced (the CLI refuses them without --force)."""
    import tempfile

    from htabtool.atomic import atomic_write
    from htabtool.sim.vmimage import open_vm
    from htabtool.units import parse_bandwidth, parse_duration

    link = Link(parse_bandwidth(bandwidth), parse_duration(downtime_limit), float(ram_share), int(max_passes),
                ram_round=parse_duration(ram_round))
    with open_vm(image, writable=False) as vm:
        hpt, guest = scratch_copy(vm)
    if seed is not None:  # the same guest, another future: its events drawn afresh
        guest.rng = np.random.Generator(np.random.PCG64(int(seed)))
    result = MigrationResult(
        source=image, profile=guest.profile.name, order=hpt.order, entries=hpt.npte,
        valid_at_start=hpt.count_valid(), link=link,
        ops_per_second=guest.profile.rate if ops_per_second is None else float(ops_per_second),
    )
    migration = Migration(hpt, guest, link, ops_per_second=ops_per_second, byte_order=byte_order)

    def simulate(out) -> None:
        if out is None:
            migration.run(result)
            return
        from htabtool import container

        header = container.SnapshotHeader(
            byte_order=byte_order, order=hpt.order,
            source={"kind": "migrate", "image": os.path.basename(image), "profile": result.profile,
                    "bandwidth": link.bandwidth, "downtime_limit": link.downtime_limit},
        )
        with (options or WriteOptions()).writer(out, header) as writer:
            migration.sink = lambda number, data, stats: writer.write_records(data, number, stats)
            migration.run(result)

    if snapshot not in (None, "-"):
        with atomic_write(snapshot) as out:
            simulate(out)
        if to is not None:
            result.destination_equal = _make_destination(snapshot, to, hpt)
    elif snapshot == "-" or to is not None:
        with tempfile.NamedTemporaryFile(prefix="htabtool-migrate-", suffix=".htab") as tmp:
            simulate(tmp)
            tmp.flush()
            if to is not None:
                result.destination_equal = _make_destination(tmp.name, to, hpt)
            if snapshot == "-":
                _copy_to_stdout(tmp)
    else:
        simulate(None)
    result.snapshot, result.destination = snapshot, to
    return result


def _copy_to_stdout(f, block: int = 1 << 20) -> None:
    from htabtool.sources import open_output, read_blocks

    f.seek(0)
    with open_output("-") as out:
        for data in read_blocks(f, block):
            out.write(data)


def _make_destination(snapshot_path: str, to: str, source_hpt) -> bool:
    """Create the VM image ``to`` from the snapshot (as ``load --vm
    --create``: a new empty VM, every record through its write fd), replace
    whatever ``to`` named, and compare its table with the source's."""
    from htabtool.atomic import staged
    from htabtool.ops.load import load_vm
    from htabtool.sim.vmimage import open_vm
    from htabtool.sources import open_snapshot

    with staged(to, final=False) as staging:
        with open_snapshot(snapshot_path) as snap:
            load_vm(snap, staging, create=True, buffer_size=1 << 16)
        with open_vm(staging, writable=False) as dst:
            equal = same_table(source_hpt, dst.hpt)
    return equal


def same_table(a, b, window: int = 1 << 20) -> bool:
    """Two HPTs hold the same table, as a read reports it."""
    if a.npte != b.npte:
        return False
    for lo in range(0, a.npte, window):
        hi = min(a.npte, lo + window)
        if not np.array_equal(a.guest_view(lo, hi), b.guest_view(lo, hi)):
            return False
    return True


__all__ = ["Link", "Migration", "MigrationResult", "PassResult", "migrate", "scratch_copy", "same_table",
           "MAX_ITERATION_NS", "MAX_KVM_BUF_SIZE", "DEFAULT_DOWNTIME_LIMIT", "INDEX_ENTRY_SIZE"]
