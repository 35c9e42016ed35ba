"""The real-kernel backend without a kernel, and the engine's host CPUs and
write() quirk: what can be checked on any machine (the kernel's own word is
tests/kvm/test_kvm.py, opt-in)."""

from __future__ import annotations

import errno
import json
import os
import platform
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from htabtool import kvm
from htabtool.errors import KVMError, UsageError, VMImageError
from htabtool.records import decode_batch
from htabtool.sim import H_AVPN, H_EXACT, H_NOT_FOUND, H_SUCCESS, KVM_GET_HTAB_WRITE, SimulatedHPT
from tests.helpers import cli_run, record

VALID, LARGE, BOLTED = 0x1, 0x4, 0x10
HVLOCK = 0x40


# -- ioctl numbers ---------------------------------------------------------------


def test_ioctl_numbers_on_powerpc_are_the_kernels():
    # the kit's table: _IOC_NONE is 1 on powerpc, the argument of
    # KVM_PPC_GET_HTAB_FD is 32 bytes (flags, start_index, reserved[2])
    n = kvm.kvm_ioctls("ppc64le")
    assert n["KVM_CHECK_EXTENSION"] == 0x2000AE03
    assert n["KVM_PPC_GET_HTAB_FD"] == 0x8020AEAA
    enc = kvm.ioctl_encoding("ppc64le")
    assert enc.io(0xAE, 0x01) == 0x2000AE01  # KVM_CREATE_VM
    assert enc.iow(0xAE, 0x46, 32) == 0x8020AE46  # KVM_SET_USER_MEMORY_REGION
    assert enc.ioc(enc.read | enc.write, 0xAE, 0xA7, 4) == 0xC004AEA7  # KVM_PPC_ALLOCATE_HTAB


def test_ioctl_numbers_on_x86_64_use_the_generic_encoding():
    n = kvm.kvm_ioctls("x86_64")
    assert n["KVM_CHECK_EXTENSION"] == 0xAE03
    assert n["KVM_PPC_GET_HTAB_FD"] == 0x4020AEAA
    assert kvm.HTAB_FD_ARG.size == 32
    with pytest.raises(ValueError):
        kvm.ioctl_encoding("ppc64le").iow(0xAE, 1, 1 << 13)


# -- finding the fds -------------------------------------------------------------------


LINKS = {0: "/dev/null", 3: "anon_inode:kvm-vm", 7: "anon_inode:kvm-vcpu:0", 9: "anon_inode:kvm-htab",
         11: "anon_inode:kvm-vm", 12: "socket:[1234]"}


def test_vm_and_htab_fds_are_found_by_their_links():
    assert kvm.fds_linking(LINKS, kvm.VM_LINK) == [3, 11]
    assert kvm.fds_linking(LINKS, kvm.HTAB_LINK) == [9]
    one = {k: v for k, v in LINKS.items() if k != 11}
    assert kvm.choose_vm_fd(42, one, None) == 3
    assert kvm.choose_vm_fd(42, LINKS, 11) == 11


@pytest.mark.parametrize("links, wanted, message", [
    ({0: "/dev/null"}, None, "holds no KVM VM fd"),
    (LINKS, None, "holds 2 KVM VM fds (3, 11): say which with --kvm 42:FD"),
    (LINKS, 7, "fd 7 is not a KVM VM fd"),
])
def test_which_vm_fd_refusals(links, wanted, message):
    with pytest.raises(KVMError, match=message.replace("(", r"\(").replace(")", r"\)")):
        kvm.choose_vm_fd(42, links, wanted)


def test_the_migration_guard_names_the_htab_fd():
    kvm.check_no_reader(42, {3: "anon_inode:kvm-vm"})
    with pytest.raises(KVMError,
                       match=r"already holds an htab fd \(fd 9 .*migration or another dump.*--ignore-readers"):
        kvm.check_no_reader(42, LINKS)


def test_parse_target_and_cpuinfo():
    assert kvm.parse_target("123") == (123, None)
    assert kvm.parse_target("123:14") == (123, 14)
    with pytest.raises(UsageError, match="PID or PID:FD"):
        kvm.parse_target("qemu")
    assert kvm.parse_cpuinfo("processor\t: 0\ncpu\t\t: POWER9, altivec supported\n") == "POWER9, altivec supported"
    assert kvm.parse_cpuinfo("model name\t: AMD EPYC\n") == "AMD EPYC"


def test_fd_links_of_a_live_process():
    r, w = os.pipe()
    try:
        links = kvm.fd_links("self")
        assert links[r].startswith("pipe:") and links[w] == links[r]
        assert kvm.fd_access_mode("self", r) == "read" and kvm.fd_access_mode("self", w) == "write"
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(KVMError, match="no such process"):
        kvm.fd_links(2**22 + 12345)


# -- errors, by name ---------------------------------------------------------------------


def test_refusals_name_what_to_do():
    msg = kvm.getfd_refusal(42, 5, OSError(errno.EPERM, "Operation not permitted"))
    assert "ptrace rights" in msg and "42" in msg
    assert "Linux 5.6" in kvm.getfd_refusal(42, 5, OSError(errno.ENOSYS, "x"))
    assert "ptrace rights" in kvm.ptrace_refusal(42, OSError(errno.EPERM, "Operation not permitted"))
    fd = kvm.KernelWriteFd.__new__(kvm.KernelWriteFd)
    fd.entries, fd.records = 1 << 14, 3
    batch, _ = decode_batch(record(5, [(0x91A10, 0x10012)]) + record(16383, [], 2), "little")
    assert "stop the guest first (QEMU monitor: stop)" in fd._refusal(OSError(errno.EBUSY, "x"), (batch, 0))
    einval = fd._refusal(OSError(errno.EINVAL, "x"), (batch, 0))
    assert einval.startswith("record 3 (index 5, 1 valid, 0 invalid)") and "entry 5 lacks HPTE_V_VALID" in einval
    assert "runs past the table of 16384 entries" in fd._refusal(OSError(errno.EINVAL, "x"), (batch, 1))
    eio = fd._refusal(OSError(errno.EIO, "x"), (batch, 0))
    assert "H_ENTER refused" in eio and "kvm_htab_write ret" in eio
    batch, _ = decode_batch(record(5, [(0x91A15, 0x12012)]), "little")
    assert "page size that does not decode" in kvm.explain_einval(batch, 0, 1 << 14)


def test_cli_refuses_kvm_option_mixes(tmp_path):
    r = cli_run("dump", "--kvm", "1", "--vm", "x.img", "-o", "a.htab", cwd=tmp_path)
    assert r.exit_code == 2 and "exactly one source" in r.output
    r = cli_run("dump", "--vm", "x.img", "--ignore-readers", "-o", "a.htab", cwd=tmp_path)
    assert r.exit_code == 2 and "--ignore-readers goes with --kvm" in r.output
    r = cli_run("dump", "--kvm", "1", "--byte-order", "big", "-o", "a.htab", cwd=tmp_path)
    assert r.exit_code == 2 and "host's byte order" in r.output
    r = cli_run("dump", "--kvm-fd", "0", "-o", "a.htab", cwd=tmp_path)  # stdin is no VM fd
    assert r.exit_code == 2 and "not a KVM VM fd" in r.output
    assert not (tmp_path / "a.htab").exists()


def test_cli_dump_kvm_of_a_process_without_a_vm(tmp_path):
    r = cli_run("dump", "--kvm", os.getpid(), "-o", "a.htab", cwd=tmp_path)
    assert r.exit_code == 2 and "holds no KVM VM fd" in r.output and "Traceback" not in r.output


# -- system calls made by another process ---------------------------------------------------


CHILD = ("import os, sys\n"
         "f = open(os.devnull)\n"
         "print(f.fileno(), flush=True)\n"
         "line = sys.stdin.readline()\n"
         "print(line.strip(), os.path.exists('/proc/self/fd/%d' % f.fileno()), flush=True)\n")


@pytest.mark.skipif(platform.machine() not in kvm.SYSCALL_ABIS, reason=f"no system call ABI for {platform.machine()}")
def test_remote_calls_run_in_the_process_and_its_blocked_read_goes_on():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        fd = int(child.stdout.readline())
        time.sleep(0.3)  # in its read() of stdin
        try:
            calls = kvm.RemoteCalls(child.pid).__enter__()
        except KVMError as exc:
            pytest.skip(f"ptrace is not allowed here: {exc}")
        try:
            assert calls.call("close", 99999) == -errno.EBADF
            assert calls.call("close", fd) == 0
            addr = calls.scratch(b"\xff" * 8)
            assert calls.read(addr, 8) == b"\xff" * 8
        finally:
            calls.__exit__(None, None, None)
        child.stdin.write("hello\n")
        child.stdin.flush()
        assert child.stdout.readline().split() == ["hello", "False"]  # its read restarted; the fd was closed
    finally:
        child.kill()
        child.wait()


def test_a_restart_is_put_back_as_the_kernel_would():
    x86 = kvm.SYSCALL_ABIS["x86_64"]
    regs = [0] * 27
    regs[10], regs[15], regs[16] = (-512) & (2**64 - 1), 0, 0x1002  # read() interrupted: -ERESTARTSYS
    out = x86.restarted(regs)
    assert (out[10], out[16], out[15]) == (0, 0x1000, 2**64 - 1)
    regs[10] = (-4) & (2**64 - 1)  # -EINTR: returned as it is
    assert x86.restarted(regs) == regs
    ppc = kvm.SYSCALL_ABIS["ppc64le"]
    regs = [0] * 44
    regs[3], regs[34], regs[38], regs[40], regs[32] = 512, 7, 0x10000000, 0xC00, 0x2004
    out = ppc.restarted(regs)
    assert (out[3], out[32], out[38], out[40]) == (7, 0x2000, 0, 0)


# -- the engine's host CPUs ------------------------------------------------------------------


def test_power9_drops_v_bits_52_to_61_and_keeps_the_segment_size():
    high = (1 << 62) | (0x3FF << 52) | (0x1234 << 7) | LARGE | VALID  # 1T segment, AVPN top bits set
    r = 0x10000 | 0x1000 | 0x12
    for cpu, kept in (("POWER8", high), ("POWER9", high & ~(0x3FF << 52)), ("POWER10", high & ~(0x3FF << 52))):
        e = SimulatedHPT(18, ram_size=64 << 20, cpu=cpu)
        assert e.h_enter(H_EXACT, 8, high, r) == (H_SUCCESS, 8)
        assert e.h_read(0, 8) == (H_SUCCESS, [kept, r])
        with e.htab_fd() as fd:
            batch, _ = decode_batch(fd.read(1 << 16), sys.byteorder)
        assert int(batch.entries[0, 0]) == kept | HVLOCK and int(batch.entries[0, 1]) == r
        # an AVPN compare sees what the table kept
        want = H_SUCCESS if cpu == "POWER8" else H_NOT_FOUND
        assert e.h_remove(H_AVPN, 8, high & ~0x7F)[0] == want


def test_an_unknown_cpu_is_refused():
    with pytest.raises(UsageError, match="POWER8, POWER9, POWER10"):
        SimulatedHPT(18, cpu="POWER7")


def test_vm_create_cpu_is_kept_in_the_image(tmp_path):
    r = cli_run("vm", "create", "p9.img", "--order", 18, "--cpu", "POWER9", "--json", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["cpu"] == "POWER9"
    from htabtool.sim.vmimage import open_vm

    with open_vm(tmp_path / "p9.img", writable=False) as vm:
        assert vm.hpt.cpu == "POWER9" and vm.hpt.isa300
    r = cli_run("vm", "info", "p9.img", cwd=tmp_path)
    assert "host CPU:     POWER9" in r.output
    assert cli_run("vm", "create", "p8.img", "--order", 18, cwd=tmp_path).exit_code == 0
    with open_vm(tmp_path / "p8.img", writable=False) as vm:
        assert vm.hpt.cpu == "POWER8"  # the default, and what the field's 0 meant before it was used
    raw = bytearray((tmp_path / "p8.img").read_bytes()[:4096])
    assert raw[44:48] == bytes(4)
    import zlib

    with open(tmp_path / "p8.img", "r+b") as f:  # a code no htabtool writes
        raw[44:48] = struct.pack("<I", 7)
        raw[136:140] = struct.pack("<I", zlib.crc32(bytes(raw[:136])))
        f.write(raw)
    with pytest.raises(VMImageError, match="unknown host CPU code 7"):
        open_vm(tmp_path / "p8.img").__enter__()


# -- the engine's write(): the kernel's parse, quirk included ----------------------------------


def test_several_records_in_one_write_are_parsed_as_the_kernel_does():
    e = SimulatedHPT(18, ram_size=64 << 20)
    one = record(8, [((0x1234 << 7) | VALID, 0x10012)])
    two = record(20, [((0x1235 << 7) | VALID, 0x20012)])
    with e.htab_fd(KVM_GET_HTAB_WRITE, byte_order="little") as fd:
        # the second "header" is the first entry's v, 00 00 00 00 00 09 1a 01:
        # n_valid 0x0900, too many for the buffer, so the loop ends there
        assert fd.write(one + two) == 24
        assert fd.write_calls == 1
    assert e.h_read(0, 8)[1][0] == (0x1234 << 7) | VALID
    assert e.h_read(0, 20)[1][0] == 0  # never written
    with e.htab_fd(KVM_GET_HTAB_WRITE, byte_order="little") as fd:
        assert fd.write_records(one + two) == 48 and fd.write_calls == 2
    assert e.h_read(0, 20)[1][0] == (0x1235 << 7) | VALID


def test_a_second_header_read_from_an_entry_can_remove_what_the_first_wrote():
    e = SimulatedHPT(18, ram_size=64 << 20)
    # v = 1: as a little-endian header, index 0, n_valid 0, n_invalid 0x0100
    first = record(8, [(VALID | (0 << 7), 0x10012)])
    with e.htab_fd(KVM_GET_HTAB_WRITE, byte_order="little") as fd:
        n = fd.write(first + record(300, [], 1))
    assert n == 24 + 8  # the first record, then a "record" of 8 bytes: entries 0..255 removed
    assert e.count_valid() == 0


def test_records_without_entries_chain_right():
    e = SimulatedHPT(18, ram_size=64 << 20)
    e.h_enter(H_EXACT, 3, (0x99 << 7) | VALID, 0x10012)
    e.h_enter(H_EXACT, 40, (0x98 << 7) | VALID, 0x10012)
    with e.htab_fd(KVM_GET_HTAB_WRITE, byte_order="little") as fd:
        assert fd.write(record(0, [], 10) + record(30, [], 20)) == 16
    assert e.count_valid() == 0


def test_load_vm_writes_one_record_per_write(tmp_path):
    assert cli_run("vm", "create", "a.img", "--order", 18, "--seed", 2, cwd=tmp_path).exit_code == 0
    assert cli_run("dump", "--vm", "a.img", "-o", "a.htab", cwd=tmp_path).exit_code == 0
    r = cli_run("load", "a.htab", "--vm", "b.img", "--create", "--verify", "--json", cwd=tmp_path)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["writes"] == out["records"] > 1 and out["verified"]


# -- the KVM source's passes, against the engine's own -----------------------------------------


class _ReadsVM:
    """A stand-in for a KVMVM whose htab fd returns, read by read, what the
    engine's fd returned: a SOCK_SEQPACKET socket keeps each message whole,
    as each read(2) of the kernel's fd is whole records."""

    def __init__(self, npte, reads):
        import socket
        import threading

        self.npte = npte
        self.a, self.b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

        def feed():  # (the socket holds only so many messages at once)
            for data in reads:
                self.a.send(data)
            self.a.close()  # then reads return 0: the end of whatever pass was being read

        threading.Thread(target=feed, daemon=True).start()

    def entries(self):
        return self.npte

    def order(self):
        return self.npte.bit_length() - 1 + 4

    def host(self):
        return {}

    def htab_fd(self, flags=0, start_index=0):
        return os.dup(self.b.fileno())


@pytest.mark.parametrize("size", [25, 300, 4096, 65536])
def test_kvm_source_finds_where_each_pass_ends(size):
    """The engine knows where its passes end; the source, reading the same
    bytes read by read, must cut them at the same places (later passes
    included: one that ends with a short read, one that ends empty, one
    whose first record lies below where the pass before ended)."""
    e = SimulatedHPT(18, ram_size=64 << 20)
    rng = np.random.default_rng(size)
    for i in rng.choice(e.npte, 600, replace=False):
        e.h_enter(H_EXACT, int(i), (int(i) << 7) | VALID, 0x10012 | (int(i) % 4 << 16))
    fd = e.htab_fd(byte_order=sys.byteorder)
    reads, want = [], []
    for number in range(1, 5):
        if number in (2, 4):  # changes before passes 2 and 4; pass 3 finds nothing
            for i in rng.choice(e.npte, 40, replace=False):
                e.h_remove(0, int(i))
        while True:
            data = fd.read(size)
            reads.append(data)  # an empty one too: the kernel's read of an empty pass returns 0
            if data:
                want.append(number)
            if fd.last_read.wrapped:
                break
        if number == 3:
            assert not [n for n in want if n == 3]  # an empty pass
    src = kvm.KVMSource(_ReadsVM(e.npte, reads), buffer_size=size, passes=4)
    pieces = list(src.pieces())
    assert b"".join(d for _, d in pieces) == b"".join(reads)
    # an empty pass shows as a pass with no reads: the numbers after it agree
    assert [number for number, _ in pieces] == want
    assert src.pass_changes[2] == 0


def test_a_bad_kvm_target_is_named_by_its_option():
    r = cli_run("dump", "--kvm", "12x", "-o", "-")
    assert r.exit_code == 2 and "--kvm takes PID or PID:FD, not '12x'" in r.output
    with pytest.raises(UsageError) as refused:
        kvm.parse_target("12x")
    assert refused.value.param == "kvm"
