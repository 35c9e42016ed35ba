"""Rates and durations as people write them: ``1G`` bit/s, ``30ms``.

Strategy: one small home for the two parsers the migration simulation
needs, so that a command line, a library caller and a test read ``10G`` and
``0.3s`` the same way.  Rates are in bits per second with decimal suffixes,
as links are sold (``1G`` = 10**9 bit/s, ``25G``, ``100M``; ``k`` is 10**3;
an optional ``b``, ``bit``, ``bps`` or ``bit/s`` after the suffix); bytes
and their binary multiples (``64K`` = 65536 bytes) are
:func:`htabtool.vmimage.parse_size`'s business, not this module's.
Durations take ``ns``, ``us``, ``ms``, ``s`` (a bare number is seconds).
Both refuse what they cannot read with one :class:`UsageError` line.
"""

from __future__ import annotations

import math
import re

from htabtool.errors import UsageError

__all__ = ["parse_bandwidth", "parse_duration", "format_bandwidth", "format_duration"]

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_RATE_RE = re.compile(rf"^\s*({_NUMBER})\s*([kKmMgGtT]?)\s*(?:b|bit|bits|bps|bit/s|b/s)?\s*$")
_DURATION_RE = re.compile(rf"^\s*({_NUMBER})\s*(ns|us|µs|ms|s)?\s*$")
_RATE_SCALE = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_TIME_SCALE = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, None: 1.0}


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def parse_bandwidth(text) -> float:
    """A link rate in bits per second: ``1G`` (10**9), ``10G``, ``2.5G``,
    ``100M``, ``1e9``; decimal multiples, as network rates are written."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _RATE_RE.match(str(text))
        if not m:
            raise UsageError(f"not a bandwidth: {text!r} (bits per second, e.g. 1G, 10G, 100M)")
        value = _number(m.group(1)) * _RATE_SCALE[m.group(3).lower()]
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"a bandwidth must be a positive number of bits per second, not {text!r}")
    return value


def parse_duration(text) -> float:
    """A duration in seconds: ``30ms``, ``0.3s``, ``300ms``, ``5us``, ``2``
    (seconds)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _DURATION_RE.match(str(text))
        if not m:
            raise UsageError(f"not a duration: {text!r} (e.g. 30ms, 0.3s, 500us)")
        value = _number(m.group(1)) * _TIME_SCALE[m.group(3)]
    if not (math.isfinite(value) and value >= 0):
        raise UsageError(f"a duration must not be negative: {text!r}")
    return value


def format_bandwidth(bits_per_second: float) -> str:
    """``1G``, ``10G``, ``2.5G``, ``100M`` (decimal)."""
    for suffix, scale in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if bits_per_second >= scale:
            return f"{bits_per_second / scale:g}{suffix}"
    return f"{bits_per_second:g}"


def format_duration(seconds: float) -> str:
    """Milliseconds below 10 s, with enough digits to tell small ones apart."""
    if seconds >= 10:
        return f"{seconds:.2f} s"
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 1:
        return f"{ms:.2f} ms"
    return f"{ms * 1e3:.1f} us"
