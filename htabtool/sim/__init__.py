"""The simulated kernel: a KVM-HV guest's hashed page table, its hypercalls,
its htab fd, a Linux-like guest that churns it, and VM images that keep both
between commands.

What lives where (each module imports only those above it, and
:mod:`htabtool.hpte`, :mod:`htabtool.records`, :mod:`htabtool.sansio`,
:mod:`htabtool.errors`, :mod:`htabtool.atomic`; never the container, the
QEMU streams, the sources or the CLI):

- :mod:`~htabtool.sim.papr`      PAPR hcall flags and return codes (hvcall.h), KVM ioctl constants (kvm.h)
- :mod:`~htabtool.sim.mmu`       SLB/LPCR/VRMA arithmetic, page protection, the host CPUs, QEMU's HPT sizing
- :mod:`~htabtool.sim.bits`      uint64 masks and byte-swapped constants shared by the numpy paths
- :mod:`~htabtool.sim.dirty`     change tracking: which entries may be dirty (a later pass costs what changed)
- :mod:`~htabtool.sim.readview`  record_hpte's view of the table: entry kinds, reported words, side effects
- :mod:`~htabtool.sim.bulk`      the bulk forms of the hypercalls (numpy, exactly the calls one by one)
- :mod:`~htabtool.sim.hpt`       :class:`SimulatedHPT`: the table, its single hypercalls, the VRMA setup
- :mod:`~htabtool.sim.htabfd`    :class:`HtabFd`: kvm_htab_read and kvm_htab_write
- :mod:`~htabtool.sim.profiles`  the guest profiles, as data
- :mod:`~htabtool.sim.guest`     :class:`Guest`: the guest model, its events in a dispatch table
- :mod:`~htabtool.sim.vmformat`  the VM image format (header, sections, state), no numpy
- :mod:`~htabtool.sim.vmimage`   :class:`VMImage` and the library calls behind ``htabtool vm``

The names below are re-exported lazily (PEP 562), so that ``vm info``, which
needs the image format alone, does not import numpy.
"""

from __future__ import annotations

from htabtool.lazy import lazy_exports

#: public name -> the module of this package that defines it
_HOMES = {
    "SimulatedHPT": "hpt",
    "HtabFd": "htabfd",
    "HARVEST_BATCH": "htabfd",
    "Guest": "guest",
    "RunStats": "guest",
    "EVENTS": "guest",
    "Profile": "profiles",
    "Image": "profiles",
    "PROFILES": "profiles",
    "get_profile": "profiles",
    "profile_names": "profiles",
    "VMImage": "vmimage",
    "open_vm": "vmimage",
    "transaction": "vmimage",
    "create_image": "vmimage",
    "run_image": "vmimage",
    "image_info": "vmimage",
    "set_running": "vmimage",
    "table_counts": "vmimage",
    "parse_size": "vmformat",
    "format_size": "vmformat",
    "ram_order": "mmu",
    "CPUS": "mmu",
    "DEFAULT_CPU": "mmu",
    "KVM_GET_HTAB_BOLTED_ONLY": "papr",
    "KVM_GET_HTAB_WRITE": "papr",
    "H_SUCCESS": "papr",
    "H_PARAMETER": "papr",
    "H_PTEG_FULL": "papr",
    "H_NOT_FOUND": "papr",
    "H_EXACT": "papr",
    "H_R_XLATE": "papr",
    "H_READ_4": "papr",
    "H_AVPN": "papr",
    "H_ANDCOND": "papr",
}

__all__ = sorted(_HOMES)


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
