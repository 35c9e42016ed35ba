"""htabtool: save, restore, inspect and compare the hashed page table of POWER KVM guests.

Layers, one module each:

- :mod:`htabtool.hpte`       the HPTE model: bit layout, constants, decoding
- :mod:`htabtool.records`    the kernel record codec (sans I/O): encoder, decoder, apply
- :mod:`htabtool.sim`        the simulated kernel: the HPT, hypercalls, htab fd, guest, VM images
                              (:mod:`htabtool.engine` is its old name, an alias)
- :mod:`htabtool.container`  snapshot files: zstd frames of kernel records
- :mod:`htabtool.cli`        the click commands, thin over the library
"""

__version__ = "0.1.0"
