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


def main() -> None:
    import sys

    from htabtool import quickhelp

    if quickhelp.answer(sys.argv[1:]):  # htabtool --help, without importing click
        return
    try:
        _check_address_space()
        from htabtool.cli import main as cli_main
    except MemoryError:
        _out_of_memory("is the address space limited? see ulimit -v")
    cli_main()


if __name__ == "__main__":
    main()
