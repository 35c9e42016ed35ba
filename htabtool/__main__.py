"""``python -m htabtool`` and the ``htabtool`` console script.

Strategy: nothing is imported here before two checks that must not need
memory of their own: an address-space limit (``ulimit -v``) too small for
the interpreter's libraries to load (numpy's OpenBLAS would otherwise end
the process with exit status 1, which means "different" to a script), and
a MemoryError while the command line itself is imported.  Either is one
line ``htabtool: error: out of memory ...`` and exit status 2.  A bare
``htabtool --help`` is answered before either, from
:mod:`htabtool.quickhelp` (click's import is most of its time).
"""

import os

#: below this address-space limit numpy's import cannot succeed (its BLAS
#: maps a buffer at load; measured: about 72 MiB for the smallest command)
MIN_ADDRESS_SPACE = 96 << 20


def _out_of_memory(detail: str) -> None:
    os.write(2, f"htabtool: error: out of memory ({detail})\n".encode())
    os._exit(2)  # no exit handlers: they may need memory too


def _check_address_space() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and soft < MIN_ADDRESS_SPACE:
        _out_of_memory(f"the address space is limited to {soft >> 20} MiB (ulimit -v); "
                       f"htabtool needs at least {MIN_ADDRESS_SPACE >> 20} MiB")


#: the commands that move tables (the others read a header or print help:
#: they do not pay the 5 ms of ctypes' import)
TABLE_COMMANDS = {"dump", "load", "diff", "stat", "verify", "show", "map", "migrate", "vm create", "vm run"}

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)
TRIM_THRESHOLD = 1 << 30


def _keep_freed_memory() -> bool:
    """Ask glibc's malloc to reuse freed memory rather than hand it back
    and map it again: the chunks, batches and windows of a command are
    allocated and freed hundreds of times, and each fresh mapping is page
    faults (verify of an order-30 snapshot: 112,000 minor faults and 0.5-0.6 s
    of system time, 9,000 and 0.2 s with these settings; peak RSS the same).
    By default glibc maps every block above a threshold that it raises
    only as such blocks are freed, and trims the heap's top above 128 KiB.
    False where there is no glibc mallopt (another libc: nothing changes)."""
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (ImportError, OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def _moves_tables(argv: list) -> bool:
    words = [a for a in argv[:2] if not a.startswith("-")]
    return bool(words) and (words[0] in TABLE_COMMANDS or " ".join(words[:2]) in TABLE_COMMANDS)


def main() -> None:
    import sys

    from htabtool import quickhelp

    if quickhelp.answer(sys.argv[1:]):  # htabtool --help, without importing click
        return
    try:
        _check_address_space()
        if _moves_tables(sys.argv[1:]):
            _keep_freed_memory()
        from htabtool.cli import main as cli_main
    except MemoryError:
        _out_of_memory("is the address space limited? see ulimit -v")
    cli_main()


if __name__ == "__main__":
    main()
