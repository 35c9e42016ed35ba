"""MMU arithmetic of the simulated host: SLB and LPCR bits of the VRMA setup,
page protection, the host CPUs and where the host keeps guest RAM.

Names from arch/powerpc/include/asm/book3s/64/mmu-hash.h and reg.h; the
functions are the kernel's small helpers (hpte_is_writable,
hpte_make_readonly, slb_pgsize_encoding).  Plain integers: imports only
:mod:`htabtool.hpte`.
"""

from __future__ import annotations

from htabtool.hpte import HPTE_R_PP, HPTE_R_PP0, HPTE_V_COMMON_BITS, HPTE_V_SSIZE_MASK, VRMA_VSID

M64 = (1 << 64) - 1

#: host CPUs: POWER8 stores the old HPTE format, POWER9 and POWER10 the
#: ISA 3.0 one (CPU_FTR_ARCH_300)
CPUS = ("POWER8", "POWER9", "POWER10")
DEFAULT_CPU = "POWER8"
#: what an ISA 3.0 host keeps of a written v: hpte_new_to_old_v(hpte_old_to_new_v(v))
ISA300_V_KEPT = HPTE_V_COMMON_BITS | HPTE_V_SSIZE_MASK

# -- SLB and LPCR bits used by the VRMA setup (mmu-hash.h, reg.h) ----------
SLB_VSID_B_1T = 0x4000000000000000
SLB_VSID_SHIFT_1T = 24
SLB_VSID_L = 0x100
SLB_VSID_LP_01 = 0x10
LPCR_VRMASD_SH = 63 - 16
LPCR_VRMASD = 0x1F << LPCR_VRMASD_SH

PP_RWXX = 0
PP_RXRX = 3
PP_RXXX = HPTE_R_PP0 | 2

#: where the simulated host keeps guest RAM (host real address of gpa 0)
HOST_RAM_BASE = 1 << 40
#: the host kernel's base page size (ppc64le: 64K); memslot alignment unit
HOST_PAGE_SHIFT = 16
DEFAULT_BACKING_PAGE_SHIFT = 24
#: kvmppc_map_vrma's hash of the VRMA's VSID (xored with the page number)
VRMA_HASH = (VRMA_VSID ^ (VRMA_VSID << 25)) & M64


def hpte_is_writable(r: int) -> bool:
    pp = r & (HPTE_R_PP0 | HPTE_R_PP)
    return pp != PP_RXRX and pp != PP_RXXX


def hpte_make_readonly(r: int) -> int:
    if (r & HPTE_R_PP0) or (r & HPTE_R_PP) == PP_RWXX:
        return (r & ~HPTE_R_PP & M64) | PP_RXXX
    return r | PP_RXRX


def slb_pgsize_encoding(psize: int) -> int:
    senc = 0
    if psize > 0x1000:
        senc = SLB_VSID_L
        if psize == 0x10000:
            senc |= SLB_VSID_LP_01
    return senc


def vrma_slb_v(pshift: int) -> int:
    """The VRMA's SLB word for pages of ``2**pshift`` bytes (kvmppc_hv_setup_htab_rma)."""
    return slb_pgsize_encoding(1 << pshift) | SLB_VSID_B_1T | (VRMA_VSID << SLB_VSID_SHIFT_1T)


def lpcr_with_vrmasd(lpcr: int, pshift: int) -> int:
    """``lpcr`` with its VRMASD field set for pages of ``2**pshift`` bytes."""
    return (lpcr & ~LPCR_VRMASD) | (slb_pgsize_encoding(1 << pshift) << (LPCR_VRMASD_SH - 4))


#: the guest's base page size (64K pages, CONFIG_PPC_64K_PAGES): the unit of its kernel's linear map
GUEST_PAGE_SHIFT = 16


def ram_order(ram_size: int) -> int:
    """QEMU's default HPT size for a RAM size (spapr_hpt_shift_for_ramsize):
    1/128 of RAM rounded up to a power of two, 18 to 46."""
    shift = max(0, (int(ram_size) - 1).bit_length()) - 7
    return max(18, min(46, shift))
