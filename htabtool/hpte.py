"""The HPTE model: the two doublewords of a hashed page table entry.

Strategy: constants carry the names the Linux kernel gives them, with the
values of

- arch/powerpc/include/asm/book3s/64/mmu-hash.h (HPTE_V_*, HPTE_R_*),
- arch/powerpc/include/asm/kvm_book3s_64.h (HPTE_V_HVLOCK, HPTE_V_ABSENT,
  HPTE_GR_MODIFIED, VRMA_VSID, kvmppc_hpte_page_shifts, is_vrma_hpte).

Entries are decoded in the pre-ISA-3.0 layout, the one the htab fd reports
(on POWER9 and later the kernel converts with hpte_new_to_old_v/r before it
reports an entry).  :func:`decode` handles one entry for people; the
``*_array`` functions take numpy arrays of native doublewords for the hot
paths (statistics, comparisons) and never loop per entry.

Software bits: today's kernel reports every entry with HPTE_V_HVLOCK set
(record_hpte reads the first doubleword while it holds that lock and does
not mask it) and kvmppc_do_h_enter strips HVLOCK, ABSENT and VALID from the
first doubleword and HPTE_GR_RESERVED from the second on the way in.  They
are KVM's bookkeeping, not architecture: :data:`SOFTWARE_V_BITS` and
:data:`SOFTWARE_R_BITS` name them so that comparisons can ignore them.
"""

from __future__ import annotations

from dataclasses import dataclass

# -- first doubleword (v), arch/powerpc/include/asm/book3s/64/mmu-hash.h ----
HPTE_V_SSIZE_SHIFT = 62
HPTE_V_AVPN_SHIFT = 7
HPTE_V_1TB_SEG = 0x4000000000000000
HPTE_V_VRMA_MASK = 0x4001FFFFFF000000
HPTE_V_AVPN = 0x3FFFFFFFFFFFFF80
HPTE_V_BOLTED = 0x0000000000000010
HPTE_V_LOCK = 0x0000000000000008
HPTE_V_LARGE = 0x0000000000000004
HPTE_V_SECONDARY = 0x0000000000000002
HPTE_V_VALID = 0x0000000000000001
#: the bits below the AVPN: the hypercalls compare ``v & ~AVPN_IGNORED_BITS``
#: with an AVPN they are given (kvmppc_do_h_remove, kvmppc_h_protect, ...)
AVPN_IGNORED_BITS = 0x7F
#: ISA 3.0 (POWER9, POWER10) keeps only these bits of the first doubleword;
#: the segment size moves to the second (hpte_old_to_new_v/hpte_new_to_old_v)
HPTE_V_COMMON_BITS = 0x000FFFFFFFFFFFFF
HPTE_V_SSIZE_MASK = 0xC000000000000000

# -- KVM's software bits, arch/powerpc/include/asm/kvm_book3s_64.h ---------
HPTE_V_HVLOCK = 0x40
HPTE_V_ABSENT = 0x20
HPTE_GR_MODIFIED = 1 << 62
HPTE_GR_RESERVED = HPTE_GR_MODIFIED
VRMA_VSID = 0x1FFFFFF

# -- second doubleword (r), arch/powerpc/include/asm/book3s/64/mmu-hash.h ---
HPTE_R_PP0 = 0x8000000000000000
HPTE_R_TS = 0x4000000000000000
HPTE_R_KEY_HI = 0x3000000000000000
HPTE_R_RPN_SHIFT = 12
HPTE_R_RPN = 0x0FFFFFFFFFFFF000
HPTE_R_PP = 0x0000000000000003
HPTE_R_N = 0x0000000000000004
HPTE_R_G = 0x0000000000000008
HPTE_R_M = 0x0000000000000010
HPTE_R_I = 0x0000000000000020
HPTE_R_W = 0x0000000000000040
HPTE_R_WIMG = 0x0000000000000078
HPTE_R_C = 0x0000000000000080
HPTE_R_R = 0x0000000000000100
HPTE_R_KEY_LO = 0x0000000000000E00
LP_SHIFT = 12
LP_BITS = 8

MMU_SEGSIZE_256M = 0
MMU_SEGSIZE_1T = 1

#: bits of the first doubleword that are KVM's bookkeeping, not architecture
SOFTWARE_V_BITS = HPTE_V_HVLOCK | HPTE_V_ABSENT
#: bits of the second doubleword that are KVM's bookkeeping
SOFTWARE_R_BITS = HPTE_GR_RESERVED

HPTE_SIZE = 16


def table_entries(order: int) -> int:
    """The HPTEs of a hashed page table of ``2**order`` bytes (the HPT order,
    as KVM_PPC_ALLOCATE_HTAB and QEMU's htab_shift give it)."""
    return (1 << order) // HPTE_SIZE
ENTRIES_PER_PTEG = 8

SEGMENT_SIZE_NAMES = {0: "256M", 1: "1T", 2: "reserved(2)", 3: "reserved(3)"}
PAGE_SIZE_NAMES = {12: "4K", 16: "64K", 24: "16M", 34: "16G", 0: "invalid"}


#: kvmppc_hpte_page_shifts's large-page encodings, in its order: (LP, the LP
#: field's high nibble or None for any, base page shift, actual page shift).
#: LP is r's bits 12..15, its high nibble bits 16..19; an entry without
#: HPTE_V_LARGE is a 4K page, a large one matching no row does not decode.
LARGE_PAGE_ENCODINGS = (
    (0, 0, 24, 24),  # 16M
    (1, None, 16, 16),  # 64K
    (3, 0, 34, 34),  # 16G
    (7, None, 12, 16),  # 64K in 4K (MPSS)
    (8, 0, 16, 24),  # 16M in 64K
    (8, 3, 12, 24),  # 16M in 4K
)
LP_HI_SHIFT = 16
LP_NIBBLE = 0xF
SMALL_PAGE_SHIFT = 12


def page_shift_pair(v: int, r: int) -> tuple[int, int]:
    """kvmppc_hpte_page_shifts as (base, actual) page shift; (0, 0) when the
    large-page encoding does not decode."""
    if not v & HPTE_V_LARGE:
        return SMALL_PAGE_SHIFT, SMALL_PAGE_SHIFT
    lp = (r >> LP_SHIFT) & LP_NIBBLE
    lphi = (r >> LP_HI_SHIFT) & LP_NIBBLE
    for code, hi, base, actual in LARGE_PAGE_ENCODINGS:
        if lp == code and (hi is None or lphi == hi):
            return base, actual
    return 0, 0


def _packed(base, actual):
    """The kernel's packing: the base shift, and for a mixed page size the
    actual shift in the next byte up."""
    return base if actual == base else (actual << 8) + base


def page_shifts(v: int, r: int) -> int:
    """kvmppc_hpte_page_shifts: the base page shift, and for a mixed page
    size (MPSS) entry the actual page shift in the next byte up; 0 when the
    large-page encoding does not decode."""
    return _packed(*page_shift_pair(v, r))


def base_page_shift(v: int, r: int) -> int:
    """kvmppc_hpte_base_page_shift: 12, 16, 24, 34, or 0 (does not decode)."""
    return page_shift_pair(v, r)[0]


def actual_page_shift(v: int, r: int) -> int:
    """kvmppc_hpte_actual_page_shift."""
    return page_shift_pair(v, r)[1]


#: is_vrma_hpte: the first doubleword of a VRMA entry above its low 24 bits
#: (a 1T segment of VRMA_VSID), and those bits, which it ignores
VRMA_HPTE_V = HPTE_V_1TB_SEG | (VRMA_VSID << (40 - 16))
VRMA_IGNORED_BITS = 0xFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF


def is_vrma_hpte(v: int) -> bool:
    """is_vrma_hpte: an entry of the virtual real-mode area (VRMA_VSID, 1T)."""
    return (v & ~VRMA_IGNORED_BITS & _M64) == VRMA_HPTE_V


# -- fields: each works on a Python int or on a numpy uint64 array alike ------
# (one decoder per field: HPTE's properties and the vectorised paths of show
# and map both call these)


def segment_size_code(v):
    """B, the segment size field: MMU_SEGSIZE_256M (0) or MMU_SEGSIZE_1T (1)."""
    return v >> HPTE_V_SSIZE_SHIFT


def avpn(v):
    """The abbreviated virtual page number (bits 7..61 of the first doubleword)."""
    return (v & HPTE_V_AVPN) >> HPTE_V_AVPN_SHIFT


def rpn(r):
    """The real page number field, in 4K units (LP bits of a large page included)."""
    return (r & HPTE_R_RPN) >> HPTE_R_RPN_SHIFT


def real_address(r, actual_shift):
    """The real address the entry maps: the RPN field with the bits below
    the actual page size (where a large page keeps its LP encoding) cleared."""
    return r & HPTE_R_RPN & ~((1 << actual_shift) - 1)


def wimg(r):
    """W, I, M, G as a 4-bit number (W the highest)."""
    return (r & HPTE_R_WIMG) >> 3


def pp(r):
    """The page protection bits PP0 || PP (0 to 7)."""
    return ((r & HPTE_R_PP0) >> 61) | (r & HPTE_R_PP)


def key(r):
    """The 5-bit storage key: KEY_HI (bits 60-61) above KEY_LO (bits 9-11)."""
    return ((r & HPTE_R_KEY_HI) >> 57) | ((r & HPTE_R_KEY_LO) >> 9)


@dataclass(frozen=True)
class HPTE:
    """One entry, decoded field by field (pre-ISA-3.0 layout)."""

    v: int
    r: int

    # -- first doubleword
    @property
    def valid(self) -> bool:
        return bool(self.v & HPTE_V_VALID)

    @property
    def secondary(self) -> bool:
        return bool(self.v & HPTE_V_SECONDARY)

    @property
    def large(self) -> bool:
        return bool(self.v & HPTE_V_LARGE)

    @property
    def bolted(self) -> bool:
        return bool(self.v & HPTE_V_BOLTED)

    @property
    def hvlock(self) -> bool:
        return bool(self.v & HPTE_V_HVLOCK)

    @property
    def absent(self) -> bool:
        return bool(self.v & HPTE_V_ABSENT)

    @property
    def segment_size(self) -> str:
        return SEGMENT_SIZE_NAMES[segment_size_code(self.v)]

    @property
    def avpn(self) -> int:
        return avpn(self.v)

    @property
    def vrma(self) -> bool:
        return is_vrma_hpte(self.v)

    # -- second doubleword
    @property
    def rpn(self) -> int:
        return rpn(self.r)

    @property
    def real_address(self) -> int:
        return real_address(self.r, actual_page_shift(self.v, self.r) or 12)

    @property
    def referenced(self) -> bool:
        return bool(self.r & HPTE_R_R)

    @property
    def changed(self) -> bool:
        return bool(self.r & HPTE_R_C)

    @property
    def wimg(self) -> int:
        return wimg(self.r)

    @property
    def pp(self) -> int:
        """The page protection bits PP0 || PP (0 to 7)."""
        return pp(self.r)

    @property
    def no_execute(self) -> bool:
        return bool(self.r & HPTE_R_N)

    @property
    def key(self) -> int:
        return key(self.r)

    @property
    def base_page_shift(self) -> int:
        return base_page_shift(self.v, self.r)

    @property
    def actual_page_shift(self) -> int:
        return actual_page_shift(self.v, self.r)

    @property
    def page_size(self) -> str:
        return PAGE_SIZE_NAMES.get(self.base_page_shift, f"2^{self.base_page_shift}")

    def fields(self) -> dict:
        """Every decoded field, for people and for --json."""
        return {
            "v": f"0x{self.v:016x}",
            "r": f"0x{self.r:016x}",
            "valid": self.valid,
            "secondary": self.secondary,
            "large": self.large,
            "bolted": self.bolted,
            "segment_size": self.segment_size,
            "avpn": f"0x{self.avpn:x}",
            "page_size": self.page_size,
            "actual_page_shift": self.actual_page_shift,
            "rpn": f"0x{self.rpn:x}",
            "referenced": self.referenced,
            "changed": self.changed,
            "wimg": self.wimg,
            "pp": self.pp,
            "no_execute": self.no_execute,
            "key": self.key,
            "vrma": self.vrma,
            "hvlock": self.hvlock,
            "absent": self.absent,
        }


def decode(v: int, r: int) -> HPTE:
    return HPTE(v, r)


# -- vectorised forms, for numpy arrays of native uint64 doublewords ---------

_LP_TABLES: tuple | None = None


def _lp_tables():
    """:data:`LARGE_PAGE_ENCODINGS` as lookup tables indexed by r's bits
    12..19 (LP | its high nibble << 4): base, actual and packed page shifts
    of a large-page entry, one lookup per entry instead of a mask per
    encoding (the rule stays the rows above, in their order)."""
    global _LP_TABLES
    if _LP_TABLES is None:
        import numpy as np

        base = np.zeros(256, dtype=np.uint8)
        actual = np.zeros(256, dtype=np.uint8)
        packed = np.zeros(256, dtype=np.uint16)
        for byte in range(256):
            b, a = page_shift_pair(HPTE_V_LARGE, byte << LP_SHIFT)
            base[byte], actual[byte], packed[byte] = b, a, _packed(b, a)
        _LP_TABLES = (base, actual, packed)
    return _LP_TABLES


def _lp_bytes(r):
    import numpy as np

    return ((np.asarray(r, dtype=np.uint64) >> np.uint64(LP_SHIFT)) & np.uint64(0xFF)).astype(np.uint8)


def page_shift_pair_array(v, r):
    """:func:`page_shift_pair` over arrays of native doublewords: (base,
    actual) page shifts as uint8 arrays, 0 where they do not decode."""
    import numpy as np

    base_of, actual_of, _ = _lp_tables()
    large = (np.asarray(v, dtype=np.uint64) & np.uint64(HPTE_V_LARGE)) != 0
    lp = _lp_bytes(r)
    small = np.uint8(SMALL_PAGE_SHIFT)
    return np.where(large, base_of[lp], small), np.where(large, actual_of[lp], small)


def page_shifts_array(v, r):
    """kvmppc_hpte_page_shifts over arrays (uint16): the base page shift, and
    for a mixed page size entry the actual shift in the next byte up; 0
    where the large-page encoding does not decode."""
    import numpy as np

    packed_of = _lp_tables()[2]
    large = (np.asarray(v, dtype=np.uint64) & np.uint64(HPTE_V_LARGE)) != 0
    return np.where(large, packed_of[_lp_bytes(r)], np.uint16(SMALL_PAGE_SHIFT))


def base_page_shift_array(v, r):
    """kvmppc_hpte_base_page_shift over arrays; 0 where it does not decode."""
    return page_shift_pair_array(v, r)[0]


def actual_page_shift_array(v, r):
    """kvmppc_hpte_actual_page_shift over arrays."""
    return page_shift_pair_array(v, r)[1]


def vrma_array(v):
    """:func:`is_vrma_hpte` over an array of native first doublewords."""
    import numpy as np

    v = np.asarray(v, dtype=np.uint64)
    return (v & np.uint64(~VRMA_IGNORED_BITS & _M64)) == np.uint64(VRMA_HPTE_V)


# -- entries as the table holds them: two big-endian doublewords, 16 bytes ----

#: the byte of a big-endian entry that holds v's lowest 8 bits (HPTE_V_VALID,
#: HPTE_V_SECONDARY, HPTE_V_LARGE, HPTE_V_LOCK, HPTE_V_BOLTED and KVM's
#: HPTE_V_ABSENT and HPTE_V_HVLOCK): enough to tell an entry's kind
V_LOW_BYTE = 7


def v_low_bytes(entries):
    """The lowest byte of each entry's v, from entries as they lie in the
    table: an (N, 2) '>u8' array or (N, 16) bytes (a view, no copy)."""
    import numpy as np

    return entries.view(np.uint8).reshape(-1, HPTE_SIZE)[:, V_LOW_BYTE]
