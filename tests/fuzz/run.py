"""A bounded fuzzing run of htabtool's three parsers, for CI and for people.

    python -m tests.fuzz.run                     # 60 s per harness, atheris if installed
    python tests/fuzz/run.py --seconds 10 container # one harness, 10 s
    python tests/fuzz/run.py --engine random        # without atheris
    python tests/fuzz/run.py --reproduce container crash-0123abcd

Harnesses: records (the kernel record decoder), container (the snapshot
reader), qemu (the migration stream walker); each is ``fuzz_<name>.py``
beside this file (the module ``tests.fuzz.fuzz_<name>``), with a libFuzzer
dictionary ``<name>.dict``.  The seed corpus is built by corpus.py into
``--work/<name>/corpus`` (new inputs the fuzzer finds are kept there, so a
second run with the same ``--work`` goes on from where the first stopped).

Engines: ``atheris`` (coverage-guided, libFuzzer; ``pip install atheris``)
runs each harness in its own process for ``--seconds`` with an RSS limit of
``--rss-limit-mb``; ``random`` (no dependency) mutates the seeds in this
process (bit flips, bytes and integers set, pieces cut, copied and
inserted); ``auto`` is atheris when it can be imported, random otherwise.

A failure (an exception that is not one of htabtool's own errors, a
broken invariant, a blown memory limit) is saved as ``--work/<name>/crash-*``
and the run exits with status 1 after the other harnesses have run; each
crash is named with the command that reproduces it.  Exit 0: nothing found.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import pathlib
import random
import struct
import subprocess
import sys
import tempfile
import time
import traceback

from tests.fuzz import corpus
from tests.helpers.paths import env_with_root

HERE = pathlib.Path(__file__).resolve().parent
HARNESSES = ("records", "container", "qemu")


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def write_seeds(work: pathlib.Path, name: str) -> pathlib.Path:
    directory = work / name / "corpus"
    directory.mkdir(parents=True, exist_ok=True)
    for file_name, data in corpus.seeds()[name].items():
        (directory / f"seed-{file_name}").write_bytes(data)
    return directory


# -- atheris ---------------------------------------------------------------------


def run_atheris(name: str, work: pathlib.Path, seconds: float, rss_limit_mb: int) -> bool:
    corpus_dir = write_seeds(work, name)
    artifacts = work / name
    cmd = [
        sys.executable, "-m", f"tests.fuzz.fuzz_{name}",
        f"-max_total_time={max(1, int(seconds))}", f"-rss_limit_mb={rss_limit_mb}", "-timeout=20",
        f"-artifact_prefix={artifacts}{os.sep}", "-print_final_stats=1",
    ]
    dictionary = HERE / f"{name}.dict"
    if dictionary.exists():
        cmd.append(f"-dict={dictionary}")
    cmd.append(str(corpus_dir))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env_with_root())
    stats = [line for line in done.stderr.splitlines() if line.startswith(("Done ", "stat::number_of_executed_units"))]
    if done.returncode == 0:
        print(f"{name}: atheris, {seconds:g} s: nothing found ({'; '.join(stats) or 'no stats'})")
        return True
    crashes = sorted(artifacts.glob("crash-*")) + sorted(artifacts.glob("oom-*")) + sorted(artifacts.glob("timeout-*"))
    print(f"{name}: atheris found a failure (exit status {done.returncode}):")
    print("\n".join(done.stderr.splitlines()[-40:]))
    for crash in crashes:
        print(f"  reproduce: python -m tests.fuzz.run --reproduce {name} {crash}")
    return False


# -- the random engine ----------------------------------------------------------------

INTERESTING = (0, 1, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               0xFFFFFFFFFFFFFFFF, 0x184D2A5B, 0x184D2A5E, 0xFD2FB528, 0x5145564D)


def mutate(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 5))):
        if not out:
            out += bytes([rng.randrange(256)])
            continue
        at = rng.randrange(len(out))
        kind = rng.randrange(9)
        if kind == 0:
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out[at] = rng.randrange(256)
        elif kind == 2:
            del out[at : at + rng.choice((1, 4, 8, 16, 64, 512))]
        elif kind == 3:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.choice((1, 4, 8, 16))))
        elif kind == 4:
            del out[at:]
        elif kind == 5:
            src = rng.randrange(len(out))
            n = rng.choice((4, 8, 16, 64))
            out[at : at + n] = out[src : src + n]
        elif kind == 6:
            size, fmt = rng.choice(((1, "B"), (2, "H"), (4, "I"), (8, "Q")))
            value = rng.choice(INTERESTING) & ((1 << 8 * size) - 1)
            endian = rng.choice("<>")
            at -= at % size
            out[at : at + size] = struct.pack(endian + fmt, value)
        elif kind == 7:
            other = rng.choice(pool)
            if other:
                src = rng.randrange(len(other))
                out[at:at] = other[src : src + rng.choice((8, 64, 512))]
        else:
            out[0] = rng.randrange(256)  # the harness's control byte
    return bytes(out[:65536])


def run_random(name: str, work: pathlib.Path, seconds: float, seed: int) -> bool:
    harness = _harness(name)
    seeds = [p.read_bytes() for p in sorted(write_seeds(work, name).iterdir())]
    rng = random.Random(seed)
    found: dict[str, pathlib.Path] = {}
    runs = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        data = mutate(rng.choice(seeds), rng, seeds)
        runs += 1
        try:
            harness.one_input(data)
        except Exception as exc:  # the harness lets out only what is a failure
            tb = traceback.extract_tb(exc.__traceback__)
            key = f"{type(exc).__name__}:{tb[-1].filename}:{tb[-1].lineno}" if tb else type(exc).__name__
            if key not in found:
                path = work / name / f"crash-{hashlib.sha1(data).hexdigest()[:16]}"
                path.write_bytes(data)
                found[key] = path
                print(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
                print(f"  reproduce: python -m tests.fuzz.run --reproduce {name} {path}")
    if found:
        print(f"{name}: random engine, {seconds:g} s, {runs} inputs: {len(found)} distinct failure(s)")
        return False
    print(f"{name}: random engine, {seconds:g} s, {runs} inputs: nothing found")
    return True


def _harness(name: str):
    return importlib.import_module(f"tests.fuzz.fuzz_{name}")


def reproduce(name: str, path: str) -> int:
    data = pathlib.Path(path).read_bytes()
    _harness(name).one_input(data)  # a failure raises, with its traceback
    print(f"{name}: {path}: no failure")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("harnesses", nargs="*", metavar="HARNESS",
                        help=f"which to run: {', '.join(HARNESSES)} (default: all)")
    parser.add_argument("--seconds", type=float, default=60.0, help="time per harness (default 60)")
    parser.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    parser.add_argument("--work", type=pathlib.Path, default=None,
                        help="corpus and crash directory (default: a new temporary directory)")
    parser.add_argument("--seed", type=int, default=None, help="random engine: the seed (default: from the clock)")
    parser.add_argument("--rss-limit-mb", type=int, default=2048, help="atheris: the memory limit (default 2048)")
    parser.add_argument("--reproduce", nargs=2, metavar=("HARNESS", "FILE"), help="run one input and show what fails")
    args = parser.parse_args(argv)
    unknown = [h for h in args.harnesses + ([args.reproduce[0]] if args.reproduce else []) if h not in HARNESSES]
    if unknown:
        parser.error(f"unknown harness {unknown[0]!r}: choose from {', '.join(HARNESSES)}")
    if args.reproduce:
        return reproduce(*args.reproduce)
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if have_atheris() else "random"
    elif engine == "atheris" and not have_atheris():
        parser.error("atheris is not installed (pip install atheris), or use --engine random")
    seed = args.seed if args.seed is not None else int(time.time())
    work = args.work or pathlib.Path(tempfile.mkdtemp(prefix="htabtool-fuzz-"))
    print(f"fuzzing with {engine} for {args.seconds:g} s per harness; corpus and crashes in {work}"
          + (f"; seed {seed}" if engine == "random" else ""))
    ok = True
    for name in args.harnesses or HARNESSES:
        if engine == "atheris":
            ok &= run_atheris(name, work, args.seconds, args.rss_limit_mb)
        else:
            ok &= run_random(name, work, args.seconds, seed)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
