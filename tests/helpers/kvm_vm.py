"""Real KVM-HV VMs for the kernel tests (ctypes and ioctls).

Used inside a POWER KVM-HV host (the kernel kit): creates an HV VM with an
HPT of the order asked for and, optionally, a memory slot of touched
anonymous memory at guest address 0, writes records into it one per
write(), and (as ``python3 tests/helpers/kvm_vm.py serve ...``) stays alive
holding the VM so that ``htabtool dump --kvm PID`` / ``load --kvm PID``
have a process to work on.  It prints ``READY <pid> <vm fd>`` when the VM
is there and exits when its standard input closes.

    serve --order 18 [--seed S --records N] [--ram MiB] [--reader] [--run-vcpu]

``--reader`` keeps an htab read fd open (as a live migration would);
``--run-vcpu`` creates a vCPU that loops on ``b .`` in guest real mode and
runs it in a thread (then the kernel answers htab writes with EBUSY); it
prints ``VCPU running`` just before KVM_RUN, or ``VCPU failed ...``.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import mmap
import os
import random
import struct
import sys
import threading
import time

from htabtool.kvm import HTAB_FD_ARG, KVMIO, ioctl_encoding
from tests.helpers import tables

ENC = ioctl_encoding()
KVM_CREATE_VM = ENC.io(KVMIO, 0x01)
KVM_CHECK_EXTENSION = ENC.io(KVMIO, 0x03)
KVM_CREATE_VCPU = ENC.io(KVMIO, 0x41)
KVM_RUN = ENC.io(KVMIO, 0x80)
KVM_SET_USER_MEMORY_REGION = ENC.iow(KVMIO, 0x46, 32)
KVM_PPC_ALLOCATE_HTAB = ENC.ioc(ENC.read | ENC.write, KVMIO, 0xA7, 4)
KVM_PPC_GET_HTAB_FD = ENC.iow(KVMIO, 0xAA, HTAB_FD_ARG.size)
KVM_PPC_CONFIGURE_V3_MMU = ENC.iow(KVMIO, 0xAF, 16)
KVM_REGS_SIZE = 49 * 8  # struct kvm_regs on powerpc: pc .. pid, sprg0-7, gpr[32]
KVM_GET_REGS = ENC.ioc(ENC.read, KVMIO, 0x81, KVM_REGS_SIZE)
KVM_SET_REGS = ENC.iow(KVMIO, 0x82, KVM_REGS_SIZE)
KVM_ENABLE_CAP = ENC.iow(KVMIO, 0xA3, 104)  # struct kvm_enable_cap: cap, flags, args[4], pad[64]
KVM_CAP_PPC_PAPR = 68
KVM_VM_PPC_HV = 1
KVM_GET_HTAB_WRITE = 2
KVM_PPC_MMUV3_RADIX, KVM_PPC_MMUV3_GTSE = 1, 2
MSR_SF, MSR_ME = 1 << 63, 1 << 12

VALID, LARGE, BOLTED, SECONDARY = 0x1, 0x4, 0x10, 0x2
ONE_T = 1 << 62


class VM:
    """A fresh HV VM: ``fd``, ``npte``; ``ram`` bytes of memory at guest 0."""

    def __init__(self, order: int, ram_mib: int = 0):
        self.kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        self.fd = fcntl.ioctl(self.kvm, KVM_CREATE_VM, KVM_VM_PPC_HV)
        self.ram = ram_mib << 20
        self._mem = None
        if self.ram:
            self._mem = mmap.mmap(-1, self.ram, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            # the host's own 64K pages, not transparent 16M ones: which page
            # sizes H_ENTER accepts depends on the pages backing guest memory
            self._mem.madvise(mmap.MADV_NOHUGEPAGE)
            for off in range(0, self.ram, 1 << 16):  # resident, writable host pages
                self._mem[off] = 1
            addr = ctypes.addressof(ctypes.c_char.from_buffer(self._mem))
            fcntl.ioctl(self.fd, KVM_SET_USER_MEMORY_REGION, struct.pack("=IIQQQ", 0, 0, 0, self.ram, addr))
        arg = bytearray(struct.pack("=I", order))  # never order 0: it oopses this kernel on a fresh VM
        fcntl.ioctl(self.fd, KVM_PPC_ALLOCATE_HTAB, arg, True)
        self.order = struct.unpack("=I", arg)[0]
        self.npte = 1 << (self.order - 4)
        self.vcpu = None

    def htab_fd(self, flags=0, start=0) -> int:
        return fcntl.ioctl(self.fd, KVM_PPC_GET_HTAB_FD, bytearray(HTAB_FD_ARG.pack(flags, start, 0, 0)), True)

    def write_each(self, records) -> list:
        """Each record in its own write(): the return values (or -errno)."""
        fd = self.htab_fd(KVM_GET_HTAB_WRITE)
        out = []
        try:
            for rec in records:
                try:
                    out.append(os.write(fd, rec))
                except OSError as exc:
                    out.append(-exc.errno)
        finally:
            os.close(fd)
        return out

    def start_vcpu(self, report) -> None:
        """A vCPU looping on ``b .`` at 0x100 in real mode, run in a thread."""
        code = 0x100
        self._mem[code : code + 4] = struct.pack(">I", 0x48000000)  # b .
        self.vcpu = fcntl.ioctl(self.fd, KVM_CREATE_VCPU, 0)
        # an HV vCPU runs only as a PAPR guest (kvmppc_sanity_check)
        fcntl.ioctl(self.vcpu, KVM_ENABLE_CAP, struct.pack("=II4Q64x", KVM_CAP_PPC_PAPR, 0, 0, 0, 0, 0))
        regs = bytearray(KVM_REGS_SIZE)
        fcntl.ioctl(self.vcpu, KVM_GET_REGS, regs, True)
        struct.pack_into("=Q", regs, 0, code)  # pc
        struct.pack_into("=Q", regs, 5 * 8, MSR_SF | MSR_ME)  # msr: big-endian, real mode
        fcntl.ioctl(self.vcpu, KVM_SET_REGS, bytes(regs))

        def run():
            report("VCPU running")
            try:
                fcntl.ioctl(self.vcpu, KVM_RUN, 0)
                report("VCPU exited")
            except OSError as exc:
                report(f"VCPU failed {exc.strerror}")

        threading.Thread(target=run, daemon=True).start()


def record(index, entries=(), n_invalid=0, byte_order=sys.byteorder) -> bytes:
    """One record, its header in the host's byte order (as the kernel's fd
    wants it) unless ``byte_order`` says otherwise."""
    return tables.record(index, entries, n_invalid, byte_order)


def random_entry(rng: random.Random, ram: int):
    """A valid HPTE of the kinds a Linux guest enters: 4K, 64K or 16M pages,
    256M or 1T segments, bolted or not, in RAM or beyond it (emulated
    MMIO), some with bits 52..61 of v set (ISA 3.0 hosts drop them)."""
    kind = rng.choice(["4k", "64k", "64k", "16m", "4k-in-64k"])
    seg = rng.choice([0, 0, ONE_T])
    avpn = rng.getrandbits(45) << 7
    if rng.random() < 0.3:
        avpn |= rng.getrandbits(10) << 52
    flags = VALID | (BOLTED if rng.random() < 0.2 else 0) | (SECONDARY if rng.random() < 0.3 else 0)
    if kind == "4k":
        v, lp, shift = seg | avpn | flags, 0, 12
    elif kind == "64k":
        v, lp, shift = seg | avpn | flags | LARGE, 0x1000, 16
    elif kind == "16m":
        v, lp, shift = seg | avpn | flags | LARGE, 0x0000, 24
    else:
        v, lp, shift = seg | avpn | flags | LARGE, 0x7000, 16
    if ram and kind != "16m" and rng.random() < 0.8:  # (a 16M page in 64K-backed RAM is EIO)
        page = rng.randrange(ram >> shift) << shift
    else:
        page = (rng.getrandbits(20) << 24) | (1 << 44)  # beyond RAM
    low = rng.choice([0x190, 0x192, 0x012, 0x1F2, 0x010, 0x182, 0x002])  # R, C, M, PP, N
    return v & ((1 << 64) - 1), page | lp | low


def random_records(seed: int, npte: int, count: int, ram: int, byte_order=sys.byteorder) -> list[bytes]:
    """``count`` records of a first pass's shapes: valid runs of 1..4
    entries, invalid runs of up to 500, ascending, inside the table."""
    rng = random.Random(seed)
    out = []
    i = rng.randrange(0, 64)
    while len(out) < count and i < npte:
        nv = min(rng.choice([1, 1, 1, 2, 3, 4]), npte - i)
        ni = min(rng.choice([0, 1, 3, 7, 60, 500]), npte - i - nv)
        out.append(record(i, [random_entry(rng, ram) for _ in range(nv)], ni, byte_order))
        i += nv + ni + rng.choice([0, 0, 1, 9, 200])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="kvm_vm.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--order", type=int, default=18)
    s.add_argument("--ram", type=int, default=64, help="MiB of guest memory at address 0 (0: none)")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--records", type=int, default=0)
    s.add_argument("--reader", action="store_true")
    s.add_argument("--run-vcpu", action="store_true")
    s.add_argument("--radix", action="store_true", help="make it a radix guest (KVM_PPC_CONFIGURE_V3_MMU)")
    a = ap.parse_args(argv)

    def report(line):
        print(line, flush=True)

    vm = VM(a.order, a.ram)
    if a.radix:
        fcntl.ioctl(vm.fd, KVM_PPC_CONFIGURE_V3_MMU, struct.pack("=QQ", KVM_PPC_MMUV3_RADIX | KVM_PPC_MMUV3_GTSE, 0))
    if a.records:
        got = vm.write_each(random_records(a.seed, vm.npte, a.records, vm.ram))
        if any(n < 0 for n in got):
            report(f"WRITE-FAILED {got}")
            return 1
    reader = vm.htab_fd(0) if a.reader else None
    if a.run_vcpu:
        vm.start_vcpu(report)
        time.sleep(1)
    report(f"READY {os.getpid()} {vm.fd}")
    sys.stdin.read()  # until the test closes it
    if reader is not None:
        os.close(reader)
    return 0


if __name__ == "__main__":
    sys.exit(main())
