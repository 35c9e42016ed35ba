"""One small exception tree, rooted in :class:`HtabError`.

Strategy: the library raises these and only these for bad input; messages
carry the numbers a user needs (record number, byte offset, sizes).  The CLI
maps every HtabError to one line ``htabtool: error: ...`` and exit status 2.
Errors of the simulated kernel side are :class:`OSError` with the kernel's
errno instead (see :mod:`htabtool.sim`), as a real htab fd raises them.
"""

from __future__ import annotations


class HtabError(Exception):
    """Base of every error htabtool reports about its input.

    ``param``: the parameter (or parameters, a tuple) of the library call
    the message names, by its Python name (``order``, ``start_index``); the
    message writes it so, and the CLI puts its option's name in its place
    (:func:`htabtool.cli.common.flag_message`).  None: no parameter named."""

    param: str | tuple[str, ...] | None = None

    def __init__(self, *args: object, param: str | tuple[str, ...] | None = None):
        super().__init__(*args)
        if param is not None:
            self.param = param


class UsageError(HtabError):
    """A call whose arguments cannot work (a bad byte order, a bad order)."""


class StreamError(HtabError):
    """A kernel record stream that cannot be decoded."""

    def __init__(self, message: str, *, offset: int | None = None, record: int | None = None,
                 param: str | None = None):
        super().__init__(message, param=param)
        self.offset = offset
        self.record = record


class TruncatedStream(StreamError):
    """The stream ended inside a record."""


class RecordError(StreamError):
    """A record the kernel's write side would refuse (EINVAL)."""


class ContainerError(HtabError):
    """A snapshot file that is not sound: bad magic, version, checksum, size."""

    def __init__(self, message: str, *, offset: int | None = None, chunk: int | None = None,
                 param: str | None = None):
        super().__init__(message, param=param)
        self.offset = offset
        self.chunk = chunk


class TruncatedContainer(ContainerError):
    """A snapshot file cut short (its trailer or a frame is missing)."""


class UnsupportedFeature(ContainerError):
    """A snapshot that needs a feature (or version) this reader lacks."""


class VMImageError(HtabError):
    """A simulated VM image that cannot be opened or used."""


class QemuStreamError(HtabError):
    """A QEMU migration stream that cannot be walked."""

    def __init__(self, message: str, *, offset: int | None = None, param: str | None = None):
        super().__init__(message, param=param)
        self.offset = offset


class KVMError(HtabError):
    """The real kernel's KVM refused, or cannot serve, what was asked (no
    rights over the process, no VM fd, no htab fd capability, a radix
    guest, a write the htab fd refused)."""
