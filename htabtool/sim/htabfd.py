"""The htab fd of the simulated kernel: what KVM_PPC_GET_HTAB_FD returns
(:class:`HtabFd`), kvm_htab_read over :class:`~htabtool.sim.readview.HptSource`
and kvm_htab_write's parse of a write() and its records applied pass by
pass (arch/powerpc/kvm/book3s_64_mmu_hv.c).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

import numpy as np

from htabtool import records
from htabtool.errors import UsageError
from htabtool.hpte import HPTE_V_ABSENT, HPTE_V_VALID, page_shift_pair, page_shift_pair_array, vrma_array
from htabtool.sim.bits import RC_BITS, oserror
from htabtool.sim.papr import H_SUCCESS, HCALL_NAMES, KVM_GET_HTAB_BOLTED_ONLY, KVM_GET_HTAB_WRITE
from htabtool.sim.readview import HptSource

if TYPE_CHECKING:
    from htabtool.sim.hpt import SimulatedHPT

_U = np.uint64


#: a burst of reads applies its side effects this many entries at a time
HARVEST_BATCH = 1 << 20


class HtabFd:
    """What KVM_PPC_GET_HTAB_FD returns: ``read(size)`` or ``write(data)``
    as kvm_htab_read and kvm_htab_write behave; ``close()`` (also as a
    context manager).  Errors are OSError with the kernel's errno."""

    def __init__(self, hpt: SimulatedHPT, flags: int, start_index: int, byte_order: str):
        self.hpt = hpt
        self.flags = flags
        self.byte_order = byte_order
        self.index = start_index  # ctx->index
        self.first_pass = True  # ctx->first_pass
        self.closed = False
        self._source = HptSource(hpt, bool(flags & KVM_GET_HTAB_BOLTED_ONLY))
        self.last_read: records.ReadResult | None = None
        self.write_calls = 0  # write() calls made (write_records: one per record)
        self._unsettled: tuple[int, int] | None = None  # a burst's first-pass side effects not yet applied
        if not self.writable():
            hpt.hpte_mod_interest += 1

    def readable(self) -> bool:
        return not self.flags & KVM_GET_HTAB_WRITE

    def writable(self) -> bool:
        return bool(self.flags & KVM_GET_HTAB_WRITE)

    def close(self) -> None:
        """kvm_htab_release: a read fd no longer asks for modification marks."""
        if not self.closed:
            self._settle()
            self.closed = True
            if self.readable():
                self.hpt.hpte_mod_interest -= 1

    def __enter__(self) -> HtabFd:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _check(self, want_read: bool) -> None:
        if self.closed or self.readable() != want_read:
            raise oserror(errno.EBADF)

    # -- read ----------------------------------------------------------------

    def read(self, size: int) -> bytes:
        """One read(2) of ``size`` bytes: whole records, never split; b"" when
        nothing changed since the last read (on an incremental pass)."""
        self._check(want_read=True)
        size = int(size)
        if size < 0:
            raise oserror(errno.EINVAL, "negative size")
        self.hpt.settle_reads()
        start = self.index
        res = records.encode_read(self._source, start, self.first_pass, size, self.byte_order)
        self.hpt.generation += 1  # the fd moved on: a suspended burst of it must not go on
        self._source.consume(res, start, self.first_pass)
        if res.wrapped:
            self.first_pass = False
        self.index = res.next_index
        self.last_read = res
        return res.data

    def pending(self) -> records.ReadResult:
        """What one unbounded read of a later pass from entry 0 would return
        now (every dirty entry, in its records), without a read's side
        effects: the fd stays where it is and the table as it is.  Costs
        what is dirty once reads have gone over the whole table."""
        self._check(want_read=True)
        self.hpt.settle_reads()
        return records.encode_read(self._source, 0, False, records.UNBOUNDED_READ, self.byte_order)

    def reads(self, size: int):
        """``read(size)`` again and again until a read reaches the end of the
        table (or returns nothing), yielding each read's bytes: exactly what
        that many read() calls return, with the table planned once for the
        whole burst.  Nothing may change the table until it ends (its plan
        is made ahead): a read() or close() of the fd while it is suspended
        first applies the side effects of the reads it made, and the burst
        then stops (UsageError if it is resumed), as it does when anything
        else changed the table meanwhile (a hypercall, hardware R/C, a write
        fd, another fd's reads)."""
        self._check(want_read=True)
        size = int(size)
        if size < 0:
            raise oserror(errno.EINVAL, "negative size")
        self.hpt.settle_reads()
        source = self._source
        first_pass = self.first_pass  # a burst ends where a pass ends
        done = self.index  # a first pass's side effects are applied up to here
        try:
            for res in records.encode_reads(source, self.index, first_pass, size, self.byte_order):
                if first_pass:
                    # a read's side effects touch only entries before the
                    # next read's start: they are applied a million entries
                    # at a time, every entry gone over
                    end = self.hpt.npte if res.wrapped else res.next_index
                    self._unsettled = (done, end)
                    self.hpt._unsettled.add(self)
                    if res.wrapped or end - done >= HARVEST_BATCH:
                        self._settle()
                        done = end
                else:
                    # a later pass: only the entries of its records (the
                    # dirty ones), not a scan of all it skipped
                    source.consume(res, self.index, False)
                if res.wrapped:
                    self.first_pass = False
                self.index = res.next_index
                self.last_read = res
                generation = self.hpt.generation
                yield res.data
                if self.closed or self.hpt.generation != generation:
                    # the rest of the burst was planned before the change (or
                    # the fd moved on): stop, a read() now sees what the plan does not
                    raise UsageError("the table or its fd changed while a burst of reads was suspended: read it again")
        finally:
            self._settle()  # the exact range its reads went over, whoever settles it

    def _settle(self) -> None:
        """Apply the side effects a burst's first-pass reads deferred."""
        self.hpt._unsettled.discard(self)
        if self._unsettled is not None:
            lo, hi = self._unsettled
            self._unsettled = None
            self._source.harvest(lo, hi)

    # -- write ---------------------------------------------------------------

    def write(self, data) -> int:
        """One write(2), parsed exactly as kvm_htab_write parses it.

        Quirk included, on purpose: the kernel moves its input pointer past
        each header (``buf += sizeof(hdr)``) but never past the header's
        entries (they are read through a copy, ``lbuf``), while its byte
        count ``nb`` does count them.  So only the first record of a write()
        is read right: the second "header" is read from the 8 bytes after
        the first header (the first record's first entry), the third from
        the 8 after that, and so on, each with its "entries" right after
        it, until ``nb`` runs past the count.  Records with n_valid = 0
        happen to chain correctly.  A simulator kinder than the kernel
        would let a client that writes many records per write() pass its
        tests and then corrupt a real guest's table; use
        :meth:`write_records` (one record per write(), as QEMU writes) to
        put many records in.

        The return value is the kernel's ``nb``; a trailing record whose
        entries do not fit is left (0 when none fits).  EBUSY while the
        vCPUs run; EINVAL for a record past the table, a valid-run entry
        without HPTE_V_VALID or with a page size that does not decode; EIO
        when H_ENTER refuses an entry.  What was applied before the error
        stays applied, as in the kernel."""
        self._check(want_read=False)
        self.write_calls += 1
        return self._write(_kernel_parse(memoryview(data).cast("B"), self.byte_order))

    def write_records(self, data) -> int:
        """write() of each record of ``data`` in turn, one record per call
        (the way to write several records into the kernel), vectorised: the
        result that many write() calls give.  Returns the bytes of the whole
        records consumed (a trailing partial record is left); the first
        error is raised, the records before it stay applied."""
        self._check(want_read=False)
        batch, used = records.decode_batch(memoryview(data).cast("B"), self.byte_order, scan_bound=self.hpt.npte)
        self.write_calls += len(batch)
        return self._write((batch, used))

    def _write(self, parsed) -> int:
        self._check(want_read=False)
        e = self.hpt
        if e.mmu_ready and e.vcpus_running:
            raise oserror(errno.EBUSY, "the VM's vCPUs are running")
        e.settle_reads()
        batch, used = parsed
        if not len(batch):
            return used
        e._suspects.add_ranges(batch.index, batch.n_valid + batch.n_invalid)
        err = _apply_records(e, batch)
        if err is not None:
            raise err
        return used


def _kernel_parse(mv: memoryview, byte_order: str) -> tuple[records.RecordBatch, int]:
    """The records kvm_htab_write reads from one write() of ``mv`` and its
    ``nb`` (see :meth:`HtabFd.write`), without a loop per record: the k-th
    header it reads lies at byte 8*k, its entries right after it, and the
    loop goes on while ``nb + 8 <= count`` and ``nb + 16*n_valid <= count``
    (``nb`` summing 8 + 16*n_valid over the records before).  The one
    departure: a record whose entries would be read from past the buffer
    (the kernel's check forgets the header: by up to 8 bytes) ends the
    loop here."""
    count = len(mv)
    n_hdr = count // 8
    if not n_hdr:
        return records.RecordBatch.empty(), 0
    heads = np.frombuffer(mv, dtype=records.header_dtype(byte_order), count=n_hdr)
    nv = heads["n_valid"].astype(np.int64)
    nb = np.concatenate(([0], np.cumsum(8 + 16 * nv)))  # nb before each record, and after the last
    at = 8 * np.arange(n_hdr, dtype=np.int64)
    go = (nb[:-1] + 8 <= count) & (nb[:-1] + 16 * nv <= count) & (at + 8 + 16 * nv <= count)
    k = int(np.argmin(go)) if not go.all() else n_hdr
    nv = nv[:k]
    words = np.frombuffer(mv, dtype=records.ENTRY_DTYPE, count=n_hdr)
    first = np.repeat(np.arange(1, k + 1, dtype=np.int64), nv)  # word of each record's first entry
    within = np.arange(len(first), dtype=np.int64) - np.repeat(np.cumsum(nv) - nv, nv)
    v_word = first + 2 * within
    entries = np.stack((words[v_word], words[v_word + 1]), axis=1) if len(v_word) else np.zeros((0, 2), ">u8")
    batch = records.RecordBatch(
        offset=at[:k],
        index=heads["index"][:k].astype(np.int64),
        n_valid=nv,
        n_invalid=heads["n_invalid"][:k].astype(np.int64),
        entries=np.ascontiguousarray(entries, dtype=records.ENTRY_DTYPE),
    )
    return batch, int(nb[k])


def _apply_records(e: SimulatedHPT, batch: records.RecordBatch) -> OSError | None:
    """kvm_htab_write's loop over whole records, vectorised: find where it
    would fail, apply everything before that point (pass by pass), and
    return the error (or None)."""
    e.generation += 1
    idx, nv, ni = batch.index.copy(), batch.n_valid.copy(), batch.n_invalid.copy()
    nrec = len(idx)
    bad_rec = (idx >= e.npte) | (idx + nv + ni > e.npte)
    first_bad = int(np.argmax(bad_rec)) if bad_rec.any() else nrec
    v = batch.entries[:, 0].astype(np.uint64)
    r = batch.entries[:, 1].astype(np.uint64)
    ent_rec = batch.entry_record()
    base, _ = page_shift_pair_array(v, r)
    einval = ((v & _U(HPTE_V_VALID)) == 0) | (base == 0)
    rc, hw_v, hw_r, g = e._prepare_enter_array(v, r)
    eio = rc != H_SUCCESS
    failing = np.flatnonzero((einval | eio) & (ent_rec < first_bad))
    err = None
    extra = None
    cut = np.cumsum(nv) - nv  # first entry of each record
    if len(failing):
        f = int(failing[0])
        k = int(ent_rec[f])
        j = f - int(cut[k])
        where = f"record {batch.first_record + k} (index {int(idx[k])}), entry {int(idx[k]) + j}"
        if einval[f]:
            why = "lacks HPTE_V_VALID" if not int(v[f]) & HPTE_V_VALID else "has a page size that does not decode"
            err = oserror(errno.EINVAL, f"{where} {why}")
        else:
            err = oserror(errno.EIO, f"{where}: H_ENTER returned {HCALL_NAMES.get(int(rc[f]), int(rc[f]))}")
            extra = int(idx[k]) + j  # the kernel removed the old entry before H_ENTER failed
        nrec_ok = k + 1
        nv[k] = j
        ni[k] = 0
        n_ent = f
    else:
        if first_bad < nrec:
            k = first_bad
            what = "starts past" if idx[k] >= e.npte else "runs past"
            err = oserror(
                errno.EINVAL,
                f"record {batch.first_record + k} (index {int(idx[k])}, {int(nv[k])} valid, "
                f"{int(ni[k])} invalid) {what} the table of {e.npte} entries",
            )
        nrec_ok = first_bad
        n_ent = int(nv[:first_bad].sum())
    idx, nv, ni = idx[:nrec_ok], nv[:nrec_ok], ni[:nrec_ok]
    if extra is not None:
        idx = np.append(idx, extra)
        nv = np.append(nv, 0)
        ni = np.append(ni, 1)
    ents = slice(0, n_ent)
    _apply_passes(e, idx, nv, ni, v[ents], hw_v[ents], hw_r[ents], g[ents])
    return err


def _apply_passes(e, idx, nv, ni, v, hw_v, hw_r, g) -> None:
    """Apply records in order; runs of ascending, disjoint records (a pass)
    touch every slot at most once, so each run is applied at once."""
    if not len(idx):
        return
    ends = idx + nv + ni
    breaks = records.wrap_starts(idx, ends)  # the one pass rule of the record layer
    bounds = np.concatenate(([0], breaks, [len(idx)]))
    ebounds = np.concatenate(([0], np.cumsum(nv)))
    mod = e._mod_bits()
    for a, b in zip(bounds[:-1], bounds[1:]):
        ea, eb = int(ebounds[a]), int(ebounds[b])
        # valid runs: remove what is there (its side effects are overwritten) and enter
        slots = records.expand_ranges(idx[a:b], nv[a:b])
        if len(slots):
            e.rev[slots] = g[ea:eb] | mod
            e.hpt[slots, 1] = hw_r[ea:eb]
            e.hpt[slots, 0] = hw_v[ea:eb]
            if not e.mmu_ready:
                vr = np.flatnonzero(vrma_array(v[ea:eb]))
                if len(vr):
                    k = int(vr[0]) + ea
                    vv = int(v[k])
                    base, _ = page_shift_pair(vv, int(g[k]))
                    e._setup_vrma_from(vv, base)
        # invalid runs: remove valid or absent entries
        has = ni[a:b] > 0
        if has.any():
            inv = records.expand_ranges((idx[a:b] + nv[a:b])[has], ni[a:b][has])
            hv = e.hpt[inv, 0].astype(np.uint64)
            occ = (hv & _U(HPTE_V_VALID | HPTE_V_ABSENT)) != 0
            if occ.any():
                s = inv[occ]
                gr = e.rev[s].astype(np.uint64)
                valid = (hv[occ] & _U(HPTE_V_VALID)) != 0
                gr = np.where(valid, gr | (e.hpt[s, 1].astype(np.uint64) & _U(RC_BITS)), gr)
                e.rev[s] = gr | mod
                e.hpt[s, 0] = 0
    e.hcalls["H_ENTER"] += int(nv.sum())

