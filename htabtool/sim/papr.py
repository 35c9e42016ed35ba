"""PAPR hypercall numbers, flags and return codes, and the KVM ioctl constants.

Named as the kernel names them: arch/powerpc/include/asm/hvcall.h (H_*),
include/uapi/linux/kvm.h and arch/powerpc/include/asm/kvm_book3s_64.h
(KVM_GET_HTAB_*, the HPT order limits).  Plain integers: imports nothing.
"""

from __future__ import annotations

# -- PAPR, arch/powerpc/include/asm/hvcall.h --------------------------------
H_SUCCESS = 0
H_HARDWARE = -1
H_FUNCTION = -2
H_PRIVILEGE = -3
H_PARAMETER = -4
H_BAD_MODE = -5
H_PTEG_FULL = -6
H_NOT_FOUND = -7

H_EXACT = 1 << (63 - 24)  # use the exact slot or return H_PTEG_FULL
H_R_XLATE = 1 << (63 - 25)
H_READ_4 = 1 << (63 - 26)  # return 4 entries
H_AVPN = 1 << (63 - 32)  # an AVPN is given as a sanity test
H_ANDCOND = 1 << (63 - 33)

# H_BULK_REMOVE translation-specifier high bytes (kvmppc_h_bulk_remove)
H_BULK_REMOVE_TYPE = 0xC000000000000000
H_BULK_REMOVE_REQUEST = 0x4000000000000000
H_BULK_REMOVE_RESPONSE = 0x8000000000000000
H_BULK_REMOVE_END = 0xC000000000000000
H_BULK_REMOVE_CODE = 0x3000000000000000
H_BULK_REMOVE_SUCCESS = 0x0000000000000000
H_BULK_REMOVE_NOT_FOUND = 0x1000000000000000
H_BULK_REMOVE_PARM = 0x2000000000000000
H_BULK_REMOVE_RC = 0x0C00000000000000
H_BULK_REMOVE_FLAGS = 0x0300000000000000
H_BULK_REMOVE_ABSOLUTE = 0x0000000000000000
H_BULK_REMOVE_ANDCOND = 0x0100000000000000
H_BULK_REMOVE_AVPN = 0x0200000000000000
H_BULK_REMOVE_PTEX = 0x00FFFFFFFFFFFFFF

HCALL_NAMES = {
    H_SUCCESS: "H_SUCCESS",
    H_HARDWARE: "H_HARDWARE",
    H_FUNCTION: "H_FUNCTION",
    H_PRIVILEGE: "H_PRIVILEGE",
    H_PARAMETER: "H_PARAMETER",
    H_BAD_MODE: "H_BAD_MODE",
    H_PTEG_FULL: "H_PTEG_FULL",
    H_NOT_FOUND: "H_NOT_FOUND",
}

# -- KVM, include/uapi/linux/kvm.h and arch/powerpc/include/asm/kvm_book3s_64.h
KVM_GET_HTAB_BOLTED_ONLY = 0x1
KVM_GET_HTAB_WRITE = 0x2
PPC_MIN_HPT_ORDER = 18
PPC_MAX_HPT_ORDER = 46
