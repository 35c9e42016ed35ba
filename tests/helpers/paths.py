"""Where the tests find the repository's files: one place, so that a test
file may sit at any depth of the tests package."""

from __future__ import annotations

import os
from pathlib import Path

#: the repository: the directory holding htabtool/ and tests/
ROOT = Path(__file__).resolve().parent.parent.parent
FIXTURES = ROOT / "fixtures"
QEMU_FIXTURES = FIXTURES / "qemu"
RECORD_FIXTURES = FIXTURES / "records"
MAN = ROOT / "man"


def env_with_root(base: dict | None = None, **extra: str) -> dict:
    """``base`` (default: this process's environment) and ``extra`` with the
    repository first on PYTHONPATH, so that a child ``python -m htabtool``
    (or a child script importing htabtool or tests.helpers) runs this tree."""
    env = dict(os.environ if base is None else base, **extra)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
