"""Rates and durations as people write them: ``1G`` bit/s, ``30ms``.

Strategy: one small home for the two parsers the migration simulation
needs, so that a command line, a library caller and a test read ``10G`` and
``0.3s`` the same way.  Rates are in bits per second with decimal suffixes,
as links are sold (``1G`` = 10**9 bit/s, ``25G``, ``100M``; ``k`` is 10**3;
an optional ``b``, ``bit``, ``bps`` or ``bit/s`` after the suffix); bytes
and their binary multiples (``64K`` = 65536 bytes) are
:func:`htabtool.sim.vmformat.parse_size`'s business, not this module's.
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
_RATE_SCALE = {"": 1, None: 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_TIME_SCALE = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, None: 1.0}


def _scaled(text, pattern: re.Pattern, scale: dict, what: str, examples: str) -> float:
    """A number times the scale of its unit (group 3 of ``pattern``)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    m = pattern.match(str(text))
    if not m:
        raise UsageError(f"not a {what}: {text!r} ({examples})")
    unit = m.group(3)
    return float(m.group(1)) * scale[unit.lower() if unit else unit]


def parse_bandwidth(text) -> float:
    """A link rate in bits per second: ``1G`` (10**9), ``10G``, ``2.5G``,
    ``100M``, ``1e9``; decimal multiples, as network rates are written."""
    value = _scaled(text, _RATE_RE, _RATE_SCALE, "bandwidth", "bits per second, e.g. 1G, 10G, 100M")
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"a bandwidth must be a positive number of bits per second, not {text!r}")
    return value


def parse_duration(text) -> float:
    """A duration in seconds: ``30ms``, ``0.3s``, ``300ms``, ``5us``, ``2``
    (seconds)."""
    value = _scaled(text, _DURATION_RE, _TIME_SCALE, "duration", "e.g. 30ms, 0.3s, 500us")
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
