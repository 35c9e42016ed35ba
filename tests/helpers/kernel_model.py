"""A plain, slow, independent model of today's kvm_htab_read and of the
write side's placement, over Python lists, for the codec tests.

Written from the kernel's loops (arch/powerpc/kvm/book3s_64_mmu_hv.c,
kvm_htab_read / kvm_htab_write), one entry at a time, without numpy and
without calling htabtool's encoder: the encoder must agree with it byte for
byte.  A table entry here is (v, r) as ints; an entry is valid when
HPTE_V_VALID is set; ``changed`` marks what an incremental pass reports.
"""

import struct

HPTE_V_VALID = 0x1
HPTE_V_BOLTED = 0x10


class ModelFd:
    def __init__(self, table, changed=None, bolted_only=False, start_index=0, byte_order="little"):
        self.table = table
        self.changed = list(changed) if changed is not None else [False] * len(table)
        self.bolted_only = bolted_only
        self.index = start_index
        self.first_pass = True
        self.hdr = ("<" if byte_order == "little" else ">") + "IHH"

    def _dirty(self, i):
        return self.changed[i]

    def _record(self, i, want_valid):
        """record_hpte: 1 when entry i belongs to the run being built."""
        dirty = self._dirty(i)
        if not self.first_pass and not dirty:
            return False
        v = self.table[i][0]
        valid = bool(v & HPTE_V_VALID)
        if self.bolted_only and not v & HPTE_V_BOLTED:
            valid = False
        return valid == want_valid

    def read(self, count):
        n = len(self.table)
        out = bytearray()
        i = self.index
        nb = 0
        while nb + 8 + 16 < count:
            hdr_at = len(out)
            out += b"\0" * 8
            nw = nb
            nb += 8
            if not self.first_pass:
                while i < n and not self._dirty(i):
                    i += 1
            index = i
            n_valid = n_invalid = 0
            while i < n and n_valid < 0xFFFF and nb + 16 < count and self._record(i, True):
                n_valid += 1
                out += struct.pack(">QQ", *self.table[i])
                self.changed[i] = False
                nb += 16
                i += 1
            while i < n and n_invalid < 0xFFFF and self._record(i, False):
                n_invalid += 1
                self.changed[i] = False
                i += 1
            if n_valid or n_invalid:
                out[hdr_at : hdr_at + 8] = struct.pack(self.hdr, index, n_valid, n_invalid)
            else:
                del out[hdr_at:]
                nb = nw
            if i >= n:
                i = 0
                self.first_pass = False
                break
        self.index = i
        return bytes(out)


def model_apply(table, stream, byte_order="little"):
    """Place records as kvm_htab_write does (valid runs written, invalid
    runs cleared), one entry at a time."""
    fmt = ("<" if byte_order == "little" else ">") + "IHH"
    pos = 0
    while pos < len(stream):
        index, nv, ni = struct.unpack_from(fmt, stream, pos)
        pos += 8
        for j in range(nv):
            table[index + j] = struct.unpack_from(">QQ", stream, pos)
            pos += 16
        for j in range(ni):
            table[index + nv + j] = (0, 0)
    return table
