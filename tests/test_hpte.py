"""The HPTE model: constants, field decoding, page sizes."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from htabtool import hpte
from htabtool.hpte import (
    HPTE,
    HPTE_GR_MODIFIED,
    HPTE_V_ABSENT,
    HPTE_V_BOLTED,
    HPTE_V_HVLOCK,
    HPTE_V_VALID,
    base_page_shift,
    base_page_shift_array,
    is_vrma_hpte,
    vrma_array,
)


def test_constants_are_the_kernels():
    # arch/powerpc/include/asm/book3s/64/mmu-hash.h and kvm_book3s_64.h
    assert HPTE_V_VALID == 0x1 and HPTE_V_BOLTED == 0x10
    assert HPTE_V_HVLOCK == 0x40 and HPTE_V_ABSENT == 0x20
    assert HPTE_GR_MODIFIED == 1 << 62
    assert hpte.HPTE_R_R == 0x100 and hpte.HPTE_R_C == 0x80
    assert hpte.HPTE_V_AVPN == 0x3FFFFFFFFFFFFF80


def test_a_bolted_64k_linear_map_entry():
    # a 64K page in a 1T segment, as Linux's bolted linear mapping makes them
    v = hpte.HPTE_V_1TB_SEG | (0x123456 << 7) | HPTE_V_BOLTED | hpte.HPTE_V_LARGE | HPTE_V_VALID
    r = (0x4321 << 16) | 0x1000 | hpte.HPTE_R_R | hpte.HPTE_R_C | hpte.HPTE_R_M | 0x2
    e = HPTE(v, r)
    assert e.valid and e.bolted and e.large and not e.secondary
    assert e.segment_size == "1T"
    assert e.avpn == 0x123456
    assert e.page_size == "64K" and e.base_page_shift == 16
    assert e.referenced and e.changed
    assert e.wimg == 0b0010  # M
    assert e.pp == 2
    assert e.real_address == 0x4321 << 16
    assert not e.hvlock and not e.vrma


def test_page_size_encodings():
    L = hpte.HPTE_V_LARGE
    cases = [
        (0, 0, 12),  # 4K
        (L, 0x1000, 16),  # LP 1: 64K
        (L, 0x0000, 24),  # LP 0: 16M
        (L, 0x3000, 34),  # LP 3: 16G
        (L, 0x7000, 12),  # 64K in 4K base
        (L, 0x8000, 16),  # 16M in 64K base
        (L, 0x38000, 12),  # 16M in 4K base
        (L, 0x2000, 0),  # does not decode
        (L, 0x10000, 0),  # 16M with lphi set: does not decode
    ]
    for v, r, shift in cases:
        assert base_page_shift(v | 1, r) == shift, (v, r)


@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)), max_size=50))
def test_vectorised_forms_agree_with_the_scalar_ones(pairs):
    v = np.array([p[0] for p in pairs], dtype=np.uint64)
    r = np.array([p[1] for p in pairs], dtype=np.uint64)
    assert base_page_shift_array(v, r).tolist() == [base_page_shift(a, b) for a, b in pairs]
    assert vrma_array(v).tolist() == [is_vrma_hpte(a) for a, _ in pairs]


def test_vrma_entry():
    v = hpte.HPTE_V_1TB_SEG | (hpte.VRMA_VSID << (40 - 16)) | HPTE_V_BOLTED | HPTE_V_VALID
    assert HPTE(v, 0).vrma


def test_fields_are_json_ready():
    import json

    json.dumps(HPTE(0x4000000000012381 | HPTE_V_HVLOCK, 0x12340190).fields())
