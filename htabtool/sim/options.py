"""How a simulated VM's table is read: :class:`VMReadOptions`, made once at
the edge (``dump --vm``'s options) and handed to the reader whole, instead
of keyword arguments threaded through every layer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from htabtool.errors import UsageError


@dataclass(frozen=True)
class VMReadOptions:
    """The reads of a VM image's htab fd, as :class:`htabtool.sources.VMSource`
    makes them: ``buffer_size``-byte reads, the first pass from
    ``start_index``; ``passes`` passes with the guest running ``churn``
    operations between them, or (``until_dirty``) passes until one reports
    at most that many changed entries, at most ``max_passes``."""

    byte_order: str = "little"
    bolted_only: bool = False
    start_index: int = 0
    buffer_size: int = 65536
    passes: int = 1
    churn: int = 1000
    until_dirty: int | None = None
    max_passes: int = 30

    def __post_init__(self) -> None:
        from htabtool.records import check_byte_order

        check_byte_order(self.byte_order)
        for name in ("start_index", "buffer_size", "passes", "churn", "max_passes"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must not be negative, not {getattr(self, name)}")
        if self.until_dirty is not None and self.until_dirty < 0:
            raise UsageError(f"until_dirty must not be negative, not {self.until_dirty}")

    @classmethod
    def of(cls, options: VMReadOptions | None = None, **keywords) -> VMReadOptions:
        """``options``, or the options the old keywords give (both: the
        keywords replace those fields of ``options``)."""
        unknown = set(keywords) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown VM read option(s): {', '.join(sorted(unknown))}")
        if options is None:
            return cls(**keywords)
        return dataclasses.replace(options, **keywords) if keywords else options

    @property
    def pass_limit(self) -> int:
        """How many passes at most: ``max_passes`` with ``until_dirty``, else ``passes``."""
        return self.max_passes if self.until_dirty is not None else self.passes

    @property
    def changes_the_guest(self) -> bool:
        """More than one pass (the guest runs between them): the image is
        changed all or nothing (:func:`htabtool.sim.vmimage.transaction`)."""
        return self.passes > 1 or self.until_dirty is not None

    def check_start(self, entries: int) -> None:
        if self.start_index >= entries:
            raise UsageError(f"--start-index {self.start_index} is past the table of {entries} entries")


__all__ = ["VMReadOptions"]
