"""The fuzzers' seed corpus and their atheris entry point.

The seeds are built with tests.helpers (tables, snapshots, QEMU streams),
imported when the seeds are asked for: a harness process imports this
module for :func:`fuzz_main` before atheris instruments htabtool, so it
must not import htabtool itself.
"""

from __future__ import annotations


def seeds() -> dict[str, dict[str, bytes]]:
    """Seed inputs for each harness (name -> file name -> bytes); the first
    byte of each is the harness's control byte (see the harnesses)."""
    from tests.helpers import qemu_section, qemu_stream, record, record_stream, snapshot, whole

    small = whole(record_stream(18, "little", 200, fill=0.01), 3000)
    big = whole(record_stream(18, "big", 200, fill=0.01), 2000, "big")
    return {
        "records": {
            "little-first-pass": b"\x00" + small,
            "big-first-pass": b"\x01" + big,
            "checked-invalid-runs": b"\x02" + record(0, [], 16) + record(16, [(0x4000000000001015, 0x190)], 3),
        },
        "container": {
            "two-passes": b"\x00" + snapshot(chunk_size=1024, pieces=[(1, small), (2, b"")]),
            "big-endian": b"\x05" + snapshot(byte_order="big", chunk_size=512, pieces=[(1, big)]),
            "empty": b"\x02" + snapshot(pieces=[]),
        },
        "qemu": {
            "stream": b"\x00" + qemu_stream(),
            "section": b"\x01" + qemu_section(),
        },
    }


def fuzz_main(module: str, one_input, argv=None) -> None:
    """A harness's entry point: instrument ``module`` and fuzz ``one_input``."""
    import importlib
    import sys

    import atheris

    with atheris.instrument_imports(include=["htabtool"]):
        importlib.import_module(module)
    atheris.Setup(list(sys.argv if argv is None else argv), one_input)
    atheris.Fuzz()
