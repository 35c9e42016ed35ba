"""The old name of the simulated kernel, kept so that ``from htabtool.engine
import SimulatedHPT, KVM_GET_HTAB_WRITE`` (the README's example) and every
public name this module had keep working.  Its home is :mod:`htabtool.sim`:
nothing is defined here, only re-exported.
"""

from __future__ import annotations

from htabtool.hpte import page_shift_pair_array as page_shifts_array  # (base, actual), as this module had it
from htabtool.sim.hpt import SimulatedHPT
from htabtool.sim.htabfd import HARVEST_BATCH, HtabFd
from htabtool.sim.mmu import (
    CPUS,
    DEFAULT_BACKING_PAGE_SHIFT,
    DEFAULT_CPU,
    HOST_PAGE_SHIFT,
    HOST_RAM_BASE,
    ISA300_V_KEPT,
    LPCR_VRMASD,
    LPCR_VRMASD_SH,
    M64,
    PP_RWXX,
    PP_RXRX,
    PP_RXXX,
    SLB_VSID_B_1T,
    SLB_VSID_L,
    SLB_VSID_LP_01,
    SLB_VSID_SHIFT_1T,
)
from htabtool.sim.papr import (
    H_ANDCOND,
    H_AVPN,
    H_BAD_MODE,
    H_BULK_REMOVE_ABSOLUTE,
    H_BULK_REMOVE_ANDCOND,
    H_BULK_REMOVE_AVPN,
    H_BULK_REMOVE_CODE,
    H_BULK_REMOVE_END,
    H_BULK_REMOVE_FLAGS,
    H_BULK_REMOVE_NOT_FOUND,
    H_BULK_REMOVE_PARM,
    H_BULK_REMOVE_PTEX,
    H_BULK_REMOVE_RC,
    H_BULK_REMOVE_REQUEST,
    H_BULK_REMOVE_RESPONSE,
    H_BULK_REMOVE_SUCCESS,
    H_BULK_REMOVE_TYPE,
    H_EXACT,
    H_FUNCTION,
    H_HARDWARE,
    H_NOT_FOUND,
    H_PARAMETER,
    H_PRIVILEGE,
    H_PTEG_FULL,
    H_R_XLATE,
    H_READ_4,
    H_SUCCESS,
    HCALL_NAMES,
    KVM_GET_HTAB_BOLTED_ONLY,
    KVM_GET_HTAB_WRITE,
    PPC_MAX_HPT_ORDER,
    PPC_MIN_HPT_ORDER,
)

__all__ = [
    "SimulatedHPT", "HtabFd", "HARVEST_BATCH", "page_shifts_array",
    "H_SUCCESS", "H_HARDWARE", "H_FUNCTION", "H_PRIVILEGE", "H_PARAMETER", "H_BAD_MODE", "H_PTEG_FULL",
    "H_NOT_FOUND", "H_EXACT", "H_R_XLATE", "H_READ_4", "H_AVPN", "H_ANDCOND", "H_BULK_REMOVE_TYPE",
    "H_BULK_REMOVE_REQUEST", "H_BULK_REMOVE_RESPONSE", "H_BULK_REMOVE_END", "H_BULK_REMOVE_CODE",
    "H_BULK_REMOVE_SUCCESS", "H_BULK_REMOVE_NOT_FOUND", "H_BULK_REMOVE_PARM", "H_BULK_REMOVE_RC",
    "H_BULK_REMOVE_FLAGS", "H_BULK_REMOVE_ABSOLUTE", "H_BULK_REMOVE_ANDCOND", "H_BULK_REMOVE_AVPN",
    "H_BULK_REMOVE_PTEX", "HCALL_NAMES", "KVM_GET_HTAB_BOLTED_ONLY", "KVM_GET_HTAB_WRITE", "PPC_MIN_HPT_ORDER",
    "PPC_MAX_HPT_ORDER", "CPUS", "DEFAULT_CPU", "ISA300_V_KEPT", "SLB_VSID_B_1T", "SLB_VSID_SHIFT_1T", "SLB_VSID_L",
    "SLB_VSID_LP_01", "LPCR_VRMASD_SH", "LPCR_VRMASD", "PP_RWXX", "PP_RXRX", "PP_RXXX", "HOST_RAM_BASE",
    "HOST_PAGE_SHIFT", "DEFAULT_BACKING_PAGE_SHIFT", "M64",
]
