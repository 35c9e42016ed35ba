"""The real kernel's htab fd: a KVM source and target at the I/O edge.

Strategy: beside the simulated VM image (:class:`htabtool.sources.VMSource`)
this module reads and writes the hashed page table of a real KVM-HV guest
through the fd the kernel's ``KVM_PPC_GET_HTAB_FD`` ioctl returns
(arch/powerpc/kvm/book3s_64_mmu_hv.c: kvm_htab_read, kvm_htab_write).
Standard library only: ``fcntl.ioctl``, ``os.read``/``os.write``,
``os.pidfd_open``, and through ctypes the ``pidfd_getfd`` system call
(Linux 5.6) and ``ptrace``.

- The VM fd: a process (QEMU) holding one is named by its PID; its
  ``/proc/PID/fd/*`` links to ``anon_inode:kvm-vm`` are found.  KVM serves
  a VM's ioctls only to the process that made the VM (kvm_vm_ioctl:
  ``kvm->mm != current->mm`` is EIO, so a copy of the VM fd is of no use
  here): the process itself is made to call them (:class:`RemoteCalls`,
  ptrace), and each htab fd it gets is copied into this process with
  pidfd_open + pidfd_getfd and closed there again.  The htab fd is served
  to any process that holds it.  A VM fd of this process may be given
  instead (``--kvm-fd N``).
- The guard: every read fd of a VM clears the modified marks that every
  other reader of the same VM needs (QEMU's live migration reads one), so
  a dump refuses to start when PID already holds an ``anon_inode:kvm-htab``
  fd, unless forced.
- The table's size is not told by the kernel: it is found with read fds
  opened at start indexes 2**k (a first read returns records exactly when
  the start index is inside the table), a handful of one-record reads
  before the dump's own first pass.  A VM whose fd reads nothing at index
  0 is a radix guest (kvm_htab_read returns 0 for one) or has no HPT yet.
- Passes: the kernel does not say where a pass ends.  The first pass ends
  with the read whose last record reaches the end of the table; a later
  one with a read that returns 0 bytes, a read too short to have stopped
  for room (it returned fewer than count - 24 bytes: the loop only stops
  early when it wraps), a record reaching the end, or a read whose first
  record lies below the end of the one before (it belongs to the next
  pass).
- Writes: one record per write(), since kvm_htab_write parses only the
  first record of a write() right (see :meth:`htabtool.sim.htabfd.HtabFd.write`),
  every return value checked; EBUSY, EINVAL and EIO become one-line errors
  naming the record.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import platform
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from htabtool.errors import KVMError, UsageError
from htabtool.records import HEADER_SIZE, RecordHeader, begins_pass, check_byte_order, decode_batch
from htabtool.sources import SourceBase, StreamInfo, VMReadOptions

# -- ioctl numbers: include/uapi/asm-generic/ioctl.h and its powerpc override --


@dataclass(frozen=True)
class IoctlEncoding:
    """_IOC() of an architecture: direction values and field widths."""

    none: int
    write: int
    read: int
    size_bits: int

    def ioc(self, direction: int, kind: int, nr: int, size: int) -> int:
        if size >> self.size_bits:
            raise ValueError(f"ioctl argument of {size} bytes does not fit {self.size_bits} bits")
        dir_shift = 16 + self.size_bits
        return (direction << dir_shift) | (size << 16) | (kind << 8) | nr

    def io(self, kind: int, nr: int) -> int:
        return self.ioc(self.none, kind, nr, 0)

    def iow(self, kind: int, nr: int, size: int) -> int:
        return self.ioc(self.write, kind, nr, size)


#: powerpc (arch/powerpc/include/uapi/asm/ioctl.h: _IOC_NONE 1, _IOC_READ 2,
#: _IOC_WRITE 4, 13 size bits) and the generic one (x86_64 and most others)
IOCTL_ENCODINGS = {
    "powerpc": IoctlEncoding(none=1, write=4, read=2, size_bits=13),
    "generic": IoctlEncoding(none=0, write=1, read=2, size_bits=14),
}


def ioctl_encoding(machine: str | None = None) -> IoctlEncoding:
    machine = machine or platform.machine()
    return IOCTL_ENCODINGS["powerpc" if machine.startswith("ppc") else "generic"]


KVMIO = 0xAE
#: struct kvm_get_htab_fd: u64 flags, u64 start_index, u64 reserved[2]
HTAB_FD_ARG = struct.Struct("=QQ2Q")
KVM_CAP_PPC_HTAB_FD = 84
KVM_GET_HTAB_BOLTED_ONLY = 0x1
KVM_GET_HTAB_WRITE = 0x2
PPC_MIN_HPT_ORDER = 18
PPC_MAX_HPT_ORDER = 46


def kvm_ioctls(machine: str | None = None) -> dict[str, int]:
    """The ioctl numbers this module uses, for ``machine`` (default: this one)."""
    enc = ioctl_encoding(machine)
    return {
        "KVM_CHECK_EXTENSION": enc.io(KVMIO, 0x03),
        "KVM_PPC_GET_HTAB_FD": enc.iow(KVMIO, 0xAA, HTAB_FD_ARG.size),
    }


# -- pidfd_getfd (Linux 5.6): the same number on x86_64 and powerpc ---------

SYS_PIDFD_GETFD = {"x86_64": 438, "ppc64le": 438, "ppc64": 438, "aarch64": 438}


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    """A copy of the process's fd ``targetfd`` in this process (close-on-exec)."""
    number = SYS_PIDFD_GETFD.get(platform.machine())
    if number is None:
        raise KVMError(f"pidfd_getfd: no system call number known for {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(number), ctypes.c_int(pidfd), ctypes.c_int(targetfd), ctypes.c_uint(0))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return int(fd)


# -- system calls made by another process (ptrace) ----------------------------

PTRACE_SYSCALL = 24
PTRACE_DETACH = 17
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
NT_PRSTATUS = 1
WALL = 0x40000000  # __WALL


@dataclass(frozen=True)
class SyscallABI:
    """How a system call is made on an architecture, in ptrace's register
    set (NT_PRSTATUS): the instruction, where the number, the arguments and
    the result go, and how a restart of an interrupted call is kept off."""

    words: int  # 64-bit words in the register set
    instruction: bytes
    ip: int
    sp: int
    number: int
    args: tuple
    result: int
    red_zone: int
    numbers: dict  # ioctl, close

    def prepare(self, regs: list, nr: int, args) -> None:
        regs[self.number] = nr
        for slot, value in zip(self.args, args):
            regs[slot] = value & ((1 << 64) - 1)
        self.no_restart(regs)

    def no_restart(self, regs: list) -> None:
        raise NotImplementedError

    def outcome(self, regs: list) -> int:
        """The call's return value, or -errno."""
        raise NotImplementedError

    def restarted(self, regs: list) -> list:
        """The registers a thread stopped in an interrupted system call
        resumes with: the call restarted, as the kernel's signal code would
        have done on the way out of the stop (the calls made in between kept
        it from doing so)."""
        raise NotImplementedError


_RESTART = {512, 513, 514}  # ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND
_RESTART_BLOCK = 516  # ERESTART_RESTARTBLOCK


class _X86_64(SyscallABI):
    def no_restart(self, regs):
        regs[15] = (1 << 64) - 1  # orig_rax = -1: not in a system call, nothing to restart

    def outcome(self, regs):
        r = regs[self.result]
        return r - (1 << 64) if r >> 63 else r

    def restarted(self, regs):
        regs = list(regs)
        if regs[15] >> 63:  # orig_rax < 0: not in a system call
            return regs
        err = -self.outcome(regs)
        if err in _RESTART:
            regs[10] = regs[15]
        elif err == _RESTART_BLOCK:
            regs[10] = 219  # __NR_restart_syscall
        else:
            return regs
        regs[16] -= 2  # back onto the syscall instruction
        self.no_restart(regs)
        return regs


class _PPC64(SyscallABI):
    def no_restart(self, regs):
        regs[40] = 0  # trap: not a system call interrupt

    def outcome(self, regs):
        if regs[38] & 0x10000000:  # CR0[SO]: r3 is an errno
            return -regs[3]
        return regs[3]

    def restarted(self, regs):
        regs = list(regs)
        trap = regs[40] & ~0xF
        if trap == 0xC00 and regs[38] & 0x10000000:  # sc: an error in r3, SO set
            err = regs[3]
        elif trap == 0x3000:  # scv: -errno in r3
            err = (1 << 64) - regs[3]
        else:
            return regs
        if err in _RESTART:
            regs[3] = regs[34]  # orig_gpr3
        elif err == _RESTART_BLOCK:
            regs[0] = 0  # __NR_restart_syscall
        else:
            return regs
        regs[38] &= ~0x10000000
        regs[32] -= 4  # back onto the sc instruction
        self.no_restart(regs)
        return regs


SYSCALL_ABIS = {
    # user_regs_struct: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ...
    "x86_64": _X86_64(27, b"\x0f\x05", ip=16, sp=19, number=10, args=(14, 13, 12, 7, 9, 8), result=10,
                      red_zone=128, numbers={"ioctl": 16, "close": 3}),
    # user_pt_regs: gpr[32] nip msr orig_gpr3 ctr link xer ccr softe trap dar dsisr result
    "ppc64le": _PPC64(44, (0x44000002).to_bytes(4, "little"), ip=32, sp=1, number=0, args=(3, 4, 5, 6, 7, 8),
                      result=3, red_zone=288, numbers={"ioctl": 54, "close": 6}),
}


class RemoteCalls:
    """System calls made by the main thread of process ``pid``, through
    ptrace: the thread is stopped (PTRACE_SEIZE + PTRACE_INTERRUPT), a
    system call instruction is written where it stands, its registers set
    for the call, run to the call's exit stop, and everything put back
    (code, registers: an interrupted call of its own restarts) when the
    block ends.  KVM takes VM ioctls only from the process that made the
    VM (kvm_vm_ioctl: ``kvm->mm != current->mm`` is EIO), so the VM's own
    process has to make them."""

    def __init__(self, pid: int):
        self.pid = pid
        abi = SYSCALL_ABIS.get(platform.machine())
        if abi is None:
            raise KVMError(f"making system calls in another process is not supported on {platform.machine()}")
        self.abi: SyscallABI = abi
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.ptrace.restype = ctypes.c_long
        self.libc.ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)
        self.mem: int | None = None  # /proc/PID/mem while attached
        self.saved: list[int] = []  # the thread's registers while attached
        self.code: tuple[int, bytes] | None = None  # (address, the bytes the instruction replaced)

    def _ptrace(self, request, addr=None, data=None) -> int:
        r = self.libc.ptrace(request, self.pid, addr, data)
        if r == -1:
            code = ctypes.get_errno()
            if code:
                raise OSError(code, os.strerror(code))
        return r

    def _wait(self) -> None:
        _, status = os.waitpid(self.pid, WALL)
        if not os.WIFSTOPPED(status):
            raise KVMError(f"process {self.pid} ended while htabtool was making a call in it")

    def _regs(self) -> list:
        buf = (ctypes.c_uint64 * self.abi.words)()
        iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), ctypes.sizeof(buf))
        self._ptrace(PTRACE_GETREGSET, NT_PRSTATUS, ctypes.addressof(iov))
        return list(buf)

    def _set_regs(self, regs: list) -> None:
        buf = (ctypes.c_uint64 * self.abi.words)(*regs)
        iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), ctypes.sizeof(buf))
        self._ptrace(PTRACE_SETREGSET, NT_PRSTATUS, ctypes.addressof(iov))

    def __enter__(self) -> RemoteCalls:
        try:
            self._ptrace(PTRACE_SEIZE)
        except OSError as exc:
            raise KVMError(ptrace_refusal(self.pid, exc)) from None
        try:
            self._ptrace(PTRACE_INTERRUPT)
            self._wait()
            self.saved = self._regs()
            self.mem = mem = os.open(f"/proc/{self.pid}/mem", os.O_RDWR | os.O_CLOEXEC)
            ip = self.saved[self.abi.ip]
            self.code = (ip, os.pread(mem, len(self.abi.instruction), ip))
            os.pwrite(mem, self.abi.instruction, ip)
        except BaseException:
            self._detach()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._detach()

    def _detach(self) -> None:
        try:
            if self.code is not None and self.mem is not None:
                os.pwrite(self.mem, self.code[1], self.code[0])
            if self.saved:
                self._set_regs(self.abi.restarted(self.saved))
        finally:
            if self.mem is not None:
                os.close(self.mem)
                self.mem = None
            try:
                self._ptrace(PTRACE_DETACH, None, None)
            except OSError:
                pass

    def scratch(self, data: bytes) -> int:
        """``data`` put below the thread's stack (past the ABI's red zone): its address there."""
        addr = (self.saved[self.abi.sp] - self.abi.red_zone - 256 - len(data)) & ~15
        os.pwrite(self._mem(), data, addr)
        return addr

    def read(self, addr: int, size: int) -> bytes:
        return os.pread(self._mem(), size, addr)

    def _mem(self) -> int:
        if self.mem is None:
            raise KVMError(f"process {self.pid}: not attached (RemoteCalls used outside its with block)")
        return self.mem

    def call(self, name: str, *args) -> int:
        """The system call ``name`` made by the process: its return value, or -errno."""
        if self.code is None:
            raise KVMError(f"process {self.pid}: not attached (RemoteCalls used outside its with block)")
        regs = list(self.saved)
        regs[self.abi.ip] = self.code[0]
        self.abi.prepare(regs, self.abi.numbers[name], args)
        self._set_regs(regs)
        self._ptrace(PTRACE_SYSCALL, None, None)  # to the call's entry
        self._wait()
        self._ptrace(PTRACE_SYSCALL, None, None)  # to its exit
        self._wait()
        return self.abi.outcome(self._regs())


def ptrace_refusal(pid, exc: OSError) -> str:
    if exc.errno in (errno.EPERM, errno.EACCES):
        return (f"process {pid}: not allowed to trace it (ptrace: {exc.strerror}): KVM takes VM ioctls only "
                f"from the VM's own process, so htabtool makes them there; that needs ptrace rights over it "
                f"(its user with kernel.yama.ptrace_scope 0, or root / CAP_SYS_PTRACE), and no other tracer (gdb)")
    if exc.errno == errno.ESRCH:
        return f"process {pid}: exited"
    return f"process {pid}: ptrace failed: {exc.strerror}"


# -- finding the fds ---------------------------------------------------------

VM_LINK = "anon_inode:kvm-vm"
HTAB_LINK = "anon_inode:kvm-htab"


def fd_links(pid: int | str) -> dict[int, str]:
    """fd number -> what /proc/PID/fd/N links to (fds that vanish meanwhile are left out)."""
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        raise KVMError(f"process {pid}: no such process") from None
    except PermissionError:
        raise KVMError(f"process {pid}: cannot list its fds ({base}: permission denied); "
                       f"run as its user or as root") from None
    links = {}
    for name in names:
        if not name.isdigit():
            continue
        try:
            links[int(name)] = os.readlink(f"{base}/{name}")
        except OSError:
            continue
    return links


def fds_linking(links: dict[int, str], target: str) -> list[int]:
    """The fds among ``links`` that link to ``target``, ascending."""
    return sorted(fd for fd, link in links.items() if link == target)


def fd_access_mode(pid: int | str, fd: int) -> str:
    """"read", "write" or "read/write" from /proc/PID/fdinfo/FD ("?" when unreadable)."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("flags:"):
                    return {os.O_RDONLY: "read", os.O_WRONLY: "write"}.get(
                        int(line.split()[1], 8) & os.O_ACCMODE, "read/write")
    except (OSError, ValueError, IndexError):
        pass
    return "?"


def parse_target(text: str) -> tuple[int, int | None]:
    """``PID`` or ``PID:FD`` (which of PID's VM fds to take)."""
    pid, _, fd = str(text).partition(":")
    try:
        return int(pid), (int(fd) if fd else None)
    except ValueError:
        raise UsageError(f"kvm takes PID or PID:FD, not {text!r}", param="kvm") from None


def choose_vm_fd(pid, links: dict[int, str], wanted: int | None) -> int:
    """The VM fd of ``pid`` to take: the one there is, or ``wanted``."""
    vms = fds_linking(links, VM_LINK)
    if wanted is not None:
        if wanted not in vms:
            raise KVMError(f"process {pid}: fd {wanted} is not a KVM VM fd ({VM_LINK})"
                           + (f"; its VM fds: {', '.join(map(str, vms))}" if vms else ""))
        return wanted
    if not vms:
        raise KVMError(f"process {pid}: holds no KVM VM fd ({VM_LINK} in /proc/{pid}/fd)")
    if len(vms) > 1:
        raise KVMError(f"process {pid}: holds {len(vms)} KVM VM fds ({', '.join(map(str, vms))}): "
                       f"say which with --kvm {pid}:FD")
    return vms[0]


def check_no_reader(pid, links: dict[int, str]) -> None:
    """The migration guard: no htab fd already open in ``pid``."""
    held = fds_linking(links, HTAB_LINK)
    if held:
        modes = ", ".join(f"fd {fd} ({fd_access_mode(pid, fd)})" for fd in held)
        raise KVMError(
            f"process {pid} already holds an htab fd ({modes}): a migration or another dump may be running, "
            f"and every reader clears the modified marks the others need; --ignore-readers reads anyway"
        )


# -- the VM ----------------------------------------------------------------------


class _Closing:
    """``with obj:`` closes it at the end."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class KVMVM(_Closing):
    """A KVM VM: a VM fd of this process (``--kvm-fd``), or one of another
    process (``--kvm PID``), whose ioctls that process makes
    (:class:`RemoteCalls`) and whose htab fds are copied into this one
    (pidfd_getfd)."""

    def __init__(self, fd: int, *, pid: int | None = None, remote: bool = False, machine: str | None = None):
        self.fd = fd  # in this process, or in pid's when remote
        self.pid = pid
        self.remote = remote
        self.ioctls = kvm_ioctls(machine)
        self._entries: int | None = None
        self._calls: RemoteCalls | None = None
        self._pidfd: int | None = None
        if remote:
            if pid is None:
                raise UsageError("a remote VM needs the pid of its process")
            try:
                self._pidfd = os.pidfd_open(pid)
            except OSError as exc:
                raise KVMError(f"process {pid}: pidfd_open failed: {exc.strerror}") from None

    @classmethod
    def from_pid(cls, target, *, ignore_readers: bool = False, guard: bool = True) -> KVMVM:
        """The VM fd of a process (``PID`` or ``PID:FD``)."""
        pid, wanted = parse_target(target)
        links = fd_links(pid)
        fd = choose_vm_fd(pid, links, wanted)
        if guard and not ignore_readers:
            check_no_reader(pid, links)
        return cls(fd, pid=pid, remote=True)

    @classmethod
    def from_fd(cls, fd: int, *, ignore_readers: bool = False, guard: bool = True) -> KVMVM:
        """A VM fd this process holds (KVM serves it only to the process that made the VM)."""
        links = fd_links("self")
        if links.get(fd) != VM_LINK:
            raise KVMError(f"kvm_fd {fd}: not a KVM VM fd ({links.get(fd, 'not open')}, not {VM_LINK})",
                           param="kvm_fd")
        if guard and not ignore_readers:
            check_no_reader("self", links)
        return cls(fd, pid=None)

    def close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    # -- ioctls ------------------------------------------------------------------

    @contextlib.contextmanager
    def calls(self):
        """One stop of the VM's process for all the ioctls made inside the
        block (nothing to do for a VM fd of this process)."""
        if not self.remote or self._calls is not None:
            yield
            return
        with RemoteCalls(self._remote_pid()) as calls:
            self._calls = calls
            try:
                yield
            finally:
                self._calls = None

    def _remote_pid(self) -> int:
        if self.pid is None:
            raise UsageError("a remote VM needs the pid of its process")
        return self.pid

    def _remote_pidfd(self) -> int:
        if self._pidfd is None:
            raise KVMError(f"process {self.pid}: its pidfd is closed (the VM was closed)")
        return self._pidfd

    def _remote_calls(self) -> RemoteCalls:
        """The process's calls, inside :meth:`calls`."""
        if self._calls is None:
            raise KVMError(f"process {self.pid}: a remote call outside VM.calls()")
        return self._calls

    def _ioctl(self, name: str, arg) -> int:
        """The VM ioctl ``name`` with an int or a bytes argument: its return value."""
        request = self.ioctls[name]
        if not self.remote:
            return fcntl.ioctl(self.fd, request, arg if isinstance(arg, int) else bytearray(arg), True)
        with self.calls():
            calls = self._remote_calls()
            where = arg if isinstance(arg, int) else calls.scratch(arg)
            r = calls.call("ioctl", self.fd, request, where)
        if r < 0:
            raise OSError(-r, os.strerror(-r))
        return r

    def check_htab_capability(self) -> None:
        try:
            have = self._ioctl("KVM_CHECK_EXTENSION", KVM_CAP_PPC_HTAB_FD)
        except OSError as exc:
            raise KVMError(f"KVM_CHECK_EXTENSION(KVM_CAP_PPC_HTAB_FD) failed: {exc.strerror}") from None
        if have <= 0:
            raise KVMError("this VM has no htab fd: KVM_CHECK_EXTENSION(KVM_CAP_PPC_HTAB_FD) is 0 "
                           "(not a POWER KVM-HV guest, or a kernel without it)")

    def htab_fd(self, flags: int = 0, start_index: int = 0) -> int:
        """KVM_PPC_GET_HTAB_FD: a new fd in this process (closed by the caller)."""
        with self.calls():
            try:
                fd = self._ioctl("KVM_PPC_GET_HTAB_FD", HTAB_FD_ARG.pack(flags, start_index, 0, 0))
            except OSError as exc:
                raise KVMError(f"KVM_PPC_GET_HTAB_FD(flags {flags}, start index {start_index}) failed: "
                               f"{exc.strerror}") from None
            if not self.remote:
                return fd
            try:
                return pidfd_getfd(self._remote_pidfd(), fd)
            except OSError as exc:
                raise KVMError(getfd_refusal(self.pid, fd, exc)) from None
            finally:
                self._remote_calls().call("close", fd)

    def _reads_at(self, start_index: int) -> bool:
        """Whether a first read from ``start_index`` returns a record."""
        fd = self.htab_fd(0, start_index)
        try:
            return len(os.read(fd, 32)) > 0
        finally:
            os.close(fd)

    def entries(self) -> int:
        """The HPT's size in entries, found with one-record first reads at
        start indexes 2**k: a read returns a record exactly when its start
        index is inside the table.  Radix guests (and VMs without an HPT)
        read nothing at all."""
        if self._entries is None:
            with self.calls():
                self._entries = self._find_entries()
        return self._entries

    def _find_entries(self) -> int:
        if not self._reads_at(0):
            raise KVMError("the VM's htab fd reads nothing: a radix guest (its HPT is not used; "
                           "htabtool handles hash guests only), or no HPT allocated yet")
        lo, hi = PPC_MIN_HPT_ORDER - 4, PPC_MAX_HPT_ORDER - 4
        if self._reads_at(1 << hi):
            raise KVMError(f"the VM's HPT reads past {1 << hi} entries, more than order {PPC_MAX_HPT_ORDER}")
        while lo < hi:  # more than 2**(lo-1) entries, at most 2**hi
            mid = (lo + hi) // 2
            if self._reads_at(1 << mid):
                lo = mid + 1
            else:
                hi = mid
        return 1 << lo

    def order(self) -> int:
        return self.entries().bit_length() - 1 + 4

    def host(self) -> dict:
        """What the snapshot records of the host and the process."""
        pid = self.pid if self.pid is not None else os.getpid()
        return {"kernel": os.uname().release, "machine": os.uname().machine, "cpu": host_cpu(), "pid": pid,
                "vm_fd": self.fd, "cmdline": process_cmdline(pid)}


def host_cpu(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The ``cpu`` line of /proc/cpuinfo (POWER8, POWER9 ...), else the model name."""
    try:
        with open(cpuinfo) as f:
            text = f.read()
    except OSError:
        return None
    return parse_cpuinfo(text)


def parse_cpuinfo(text: str) -> str | None:
    for key in ("cpu", "model name"):
        for line in text.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key:
                return value.strip()
    return None


def process_cmdline(pid) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode("utf-8", "backslashreplace") for a in raw.split(b"\0")[:-1]] if raw else []


def getfd_refusal(pid, fd, exc: OSError) -> str:
    if exc.errno in (errno.EPERM, errno.EACCES):
        return (f"process {pid}: not allowed to copy its VM fd {fd} (pidfd_getfd: {exc.strerror}): it needs "
                f"ptrace rights over the process (its user with kernel.yama.ptrace_scope 0, or root / CAP_SYS_PTRACE)")
    if exc.errno == errno.ENOSYS:
        return "pidfd_getfd: not in this kernel (Linux 5.6 or later needed); pass the VM fd with --kvm-fd instead"
    if exc.errno == errno.ESRCH:
        return f"process {pid}: exited"
    return f"process {pid}: pidfd_getfd of fd {fd} failed: {exc.strerror}"


@contextlib.contextmanager
def open_vm(pid=None, fd: int | None = None, *, ignore_readers: bool = False, guard: bool = True) -> Iterator[KVMVM]:
    """The VM of ``--kvm PID[:FD]`` or ``--kvm-fd N``, its capability checked."""
    if (pid is None) == (fd is None):
        raise UsageError("give exactly one of --kvm PID and --kvm-fd N")
    if fd is not None:
        vm = KVMVM.from_fd(fd, ignore_readers=ignore_readers, guard=guard)
    else:
        vm = KVMVM.from_pid(pid, ignore_readers=ignore_readers, guard=guard)
    with vm:
        with vm.calls():
            vm.check_htab_capability()
            vm.entries()
        yield vm


# -- the source ---------------------------------------------------------------------


class KVMSource(SourceBase):
    """A real guest's HPT read through its htab fd, as ``dump --vm`` reads a
    simulated one: ``buffer_size``-byte reads, the first pass from
    ``start_index`` to the end, then incremental passes (the guest runs on
    by itself between them)."""

    def __init__(self, vm: KVMVM, options: VMReadOptions | None = None, *, byte_order: str | None = None,
                 **keywords):
        # the options' byte order is the simulated host's: the kernel's headers are this host's own
        options = VMReadOptions.of(options, **keywords)
        self.vm = vm
        self.options = options
        self.byte_order = check_byte_order(byte_order or sys.byteorder)
        self.entries = vm.entries()
        options.check_start(self.entries)
        self.buffer_size = options.buffer_size
        self.passes = options.pass_count
        self.flags = KVM_GET_HTAB_BOLTED_ONLY if options.bolted_only else 0
        self.info = StreamInfo(self.byte_order, vm.order(), bolted_only=options.bolted_only,
                               start_index=options.start_index, source={"kind": "kvm", **vm.host()})
        self.pass_changes: list[int] = []

    def pieces(self) -> Iterator[tuple[int, bytes]]:
        fd = self.vm.htab_fd(self.flags, self.info.start_index)
        carry = [None]
        try:
            for number in range(1, self.passes + 1):
                changed = 0
                for data, batch in self._one_pass(fd, number == 1, carry):
                    changed += int(batch.n_valid.sum() + batch.n_invalid.sum())
                    yield number, data
                self.pass_changes.append(changed)
                if self.options.last_pass(number, changed):
                    break
        finally:
            os.close(fd)

    def _read(self, fd: int):
        try:
            data = os.read(fd, self.buffer_size)
        except OSError as exc:
            raise KVMError(f"read of the htab fd failed: {exc.strerror}") from None
        batch, used = decode_batch(data, self.byte_order, n_entries=self.entries)
        if used != len(data):
            raise KVMError(f"a read of the htab fd returned {len(data)} bytes, {len(data) - used} of them "
                           f"not a whole record")
        return data, batch

    def _one_pass(self, fd: int, first: bool, carry: list):
        """(bytes, records) of each read of one pass; a read that begins the
        next pass is kept in ``carry``."""
        previous_end = None
        while True:
            if carry[0] is not None:
                data, batch = carry[0]
                carry[0] = None
            else:
                data, batch = self._read(fd)
            if not data:
                if first:
                    raise KVMError("the htab fd's first pass ended before the end of the table")
                return
            if previous_end is not None and begins_pass(int(batch.index[0]), previous_end):
                carry[0] = (data, batch)  # the table wrapped: the next pass
                return
            yield data, batch
            previous_end = int(batch.end[-1])
            if previous_end >= self.entries:
                return
            if not first and len(data) + HEADER_SIZE + 16 < self.buffer_size:
                return  # the read stopped without running out of room: it wrapped


@contextlib.contextmanager
def open_source(pid=None, fd: int | None = None, *, ignore_readers: bool = False,
                options: VMReadOptions | None = None, **keywords) -> Iterator[KVMSource]:
    """``dump --kvm PID`` / ``--kvm-fd N``: the guard, the capability, the
    table's size, then the source (its read fd opened when it is read)."""
    with open_vm(pid, fd, ignore_readers=ignore_readers) as vm:
        yield KVMSource(vm, options, **keywords)


# -- the target ------------------------------------------------------------------


class KernelWriteFd(_Closing):
    """An htab write fd of the real kernel, written one record per write()
    with every return value checked (the interface of
    :meth:`htabtool.sim.htabfd.HtabFd.write_records`)."""

    def __init__(self, vm: KVMVM, byte_order: str | None = None):
        self.vm = vm
        self.byte_order = check_byte_order(byte_order or sys.byteorder)
        self.entries = vm.entries()
        self.fd: int | None = vm.htab_fd(KVM_GET_HTAB_WRITE)
        self.write_calls = 0
        self.records = 0  # records written, for messages
        self._check_not_running()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _open_fd(self) -> int:
        if self.fd is None:
            raise KVMError("the htab fd was closed before the write")
        return self.fd

    def _check_not_running(self) -> None:
        """A header-only record (index 0, no entries) changes nothing, but
        the kernel answers EBUSY to it while vCPUs run: asked before the first
        real write."""
        try:
            n = os.write(self._open_fd(), RecordHeader(0, 0, 0).pack(self.byte_order))
        except OSError as exc:
            raise KVMError(self._refusal(exc, None)) from None
        if n != HEADER_SIZE:
            raise KVMError(f"the htab fd took {n} of the {HEADER_SIZE} bytes of an empty record")

    def write_records(self, data) -> int:
        mv = memoryview(data).cast("B")
        batch, used = decode_batch(mv, self.byte_order, n_entries=self.entries)
        starts = batch.offset.tolist()
        ends = (batch.offset + HEADER_SIZE + 16 * batch.n_valid).tolist()
        write, fd = os.write, self._open_fd()
        done = n = 0  # records the kernel took whole
        try:
            for start, end in zip(starts, ends):  # the hot loop: a write() a record and nothing else
                n = write(fd, mv[start:end])
                if n != end - start:
                    break
                done += 1
        except OSError as exc:
            self.write_calls += done
            self.records += done
            raise KVMError(self._refusal(exc, (batch, done))) from None
        self.write_calls += done
        self.records += done
        if done < len(starts):  # a short write
            self.write_calls += 1
            raise KVMError(f"record {self.records} (index {int(batch.index[done])}): the kernel took {n} of "
                           f"its {ends[done] - starts[done]} bytes")
        return used

    def _refusal(self, exc: OSError, where) -> str:
        if exc.errno == errno.EBUSY:
            return ("the VM's vCPUs are running and the kernel refuses htab writes (EBUSY): "
                    "stop the guest first (QEMU monitor: stop), then load")
        if where is None:
            if exc.errno == errno.EINVAL:
                return "the VM's htab fd refused an empty record at index 0 (EINVAL): a radix guest?"
            return f"the htab fd refused a write: {exc.strerror}"
        batch, k = where
        index, nv, ni = int(batch.index[k]), int(batch.n_valid[k]), int(batch.n_invalid[k])
        what = f"record {self.records} (index {index}, {nv} valid, {ni} invalid)"
        if exc.errno == errno.EINVAL:
            return f"{what}: the kernel refused it (EINVAL): {explain_einval(batch, k, self.entries)}"
        if exc.errno == errno.EIO:
            return (f"{what}: the kernel's H_ENTER refused an entry (EIO: a reserved segment size, or a page "
                    f"larger than the host pages backing guest memory; dmesg shows 'kvm_htab_write ret ...'); "
                    f"the records before it are applied")
        return f"{what}: write failed: {exc.strerror}"


def explain_einval(batch, k: int, entries: int) -> str:
    """Which of kvm_htab_write's EINVAL checks record ``k`` fails."""
    from htabtool.hpte import page_shift_pair_array as page_shifts_array

    index, nv, ni = int(batch.index[k]), int(batch.n_valid[k]), int(batch.n_invalid[k])
    if index >= entries or index + nv + ni > entries:
        return f"it runs past the table of {entries} entries"
    first = int(np.sum(batch.n_valid[:k]))
    ents = batch.entries[first : first + nv].astype(np.uint64)
    base, _ = page_shifts_array(ents[:, 0], ents[:, 1])
    for j in range(nv):
        if not int(ents[j, 0]) & 1:
            return f"entry {index + j} lacks HPTE_V_VALID"
        if not base[j]:
            return f"entry {index + j} has a page size that does not decode"
    return "for a reason this htabtool does not know"


def load(snap, vm: KVMVM) -> dict:
    """Write a (checked) snapshot into a real VM through its htab write fd,
    one record per write().  Its table must be the snapshot's size."""
    from htabtool.ops import write_records

    if vm.entries() != snap.entries:
        raise KVMError(f"the VM's HPT has {vm.entries():,} entries (order {vm.order()}), the snapshot's "
                       f"{snap.entries:,} (order {snap.header.order})")
    with KernelWriteFd(vm, snap.byte_order) as fd:
        nbytes, writes = write_records(fd, snap.pieces())
    return {"target": "kvm", "pid": vm.pid, "vm_fd": vm.fd, "records": fd.records, "bytes": nbytes,
            "writes": writes}


__all__ = [
    "KVMVM",
    "KVMSource",
    "KernelWriteFd",
    "IoctlEncoding",
    "ioctl_encoding",
    "kvm_ioctls",
    "fd_links",
    "fds_linking",
    "choose_vm_fd",
    "check_no_reader",
    "parse_target",
    "parse_cpuinfo",
    "explain_einval",
    "open_vm",
    "open_source",
    "load",
]
