"""Word helpers shared by the simulated kernel's modules: uint64 masks,
constants as they read from big-endian doublewords taken as little-endian
ones, the entry dtypes, and the kernel's errno errors.
"""

from __future__ import annotations

import os

import numpy as np

from htabtool.hpte import HPTE_GR_MODIFIED, HPTE_R_C, HPTE_R_R, HPTE_V_ABSENT, HPTE_V_HVLOCK
from htabtool.sim.mmu import M64

#: the R and C bits the hardware sets in an entry's second doubleword
RC_BITS = HPTE_R_R | HPTE_R_C
_U = np.uint64


def not_mask(x: int) -> np.uint64:
    """~x as a uint64 mask."""
    return _U(~x & M64)


def swapped(x: int) -> np.uint64:
    """The constant x as it reads when a big-endian doubleword holding it is
    read as a little-endian one."""
    return _U(int.from_bytes((x & M64).to_bytes(8, "big"), "little"))


ENTRY_BYTES = np.dtype("V16")  # one entry, as bytes
LE_U64 = np.dtype("<u8")
SW_ABSENT = swapped(HPTE_V_ABSENT)
SW_HVLOCK = swapped(HPTE_V_HVLOCK)
SW_RC = swapped(RC_BITS)
SW_NOT_MODIFIED = swapped(~HPTE_GR_MODIFIED)


def oserror(code: int, detail: str = "") -> OSError:
    text = os.strerror(code)
    return OSError(code, f"{text}: {detail}" if detail else text)
