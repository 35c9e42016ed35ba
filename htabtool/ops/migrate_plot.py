"""A picture of a simulated migration: ``htabtool migrate -o passes.png``.

Strategy: matplotlib is imported here and only when a picture is drawn (it
is not a dependency of the rest of htabtool; a missing matplotlib is one
error line).  Two panels over simulated time: the bytes of each pass in the
kernel's record format and in the per-entry-index format (bars at each
pass's start, the stopped phase apart), and the dirty entries left when each
pass ended, with the HPT's threshold (its share of the downtime limit) as a
line.  The file is written atomically (htabtool.atomic).
"""

from __future__ import annotations

import os

from htabtool.errors import HtabError, UsageError

FORMATS = {".png": "png", ".svg": "svg"}


def check_format(path: str) -> str:
    """The image format a path's extension names (png or svg)."""
    fmt = FORMATS.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise UsageError(f"-o {path}: the picture must be a .png or .svg file")
    return fmt


def pyplot():
    """matplotlib.pyplot on the Agg backend (HtabError when it is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise HtabError("drawing a picture needs matplotlib, which is not installed (pip install matplotlib)") from None
    return plt


def plot_migration(result, path: str) -> None:
    """Draw ``result`` (a MigrationResult) into ``path`` (.png or .svg)."""
    from htabtool.atomic import atomic_write

    fmt = check_format(path)
    plt = pyplot()
    passes = result.passes
    numbers = [p.number for p in passes]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), constrained_layout=True)
    x = range(len(passes))
    width = 0.4
    top.bar([i - width / 2 for i in x], [p.record_bytes for p in passes], width, label="kernel records")
    top.bar([i + width / 2 for i in x], [p.index_bytes for p in passes], width, label="index per entry (20 B)")
    top.set_xticks(list(x), [f"{n}{' stop' if p.stopped else ''}" for n, p in zip(numbers, passes)])
    top.set_xlabel("pass")
    top.set_ylabel("bytes")
    top.set_yscale("symlog", linthresh=1000)
    top.legend()
    top.set_title(f"{os.path.basename(result.source)}: {result.profile}, order {result.order}, "
                  f"{result.link.bandwidth / 1e9:g} Gbit/s, downtime limit {result.link.downtime_limit * 1e3:g} ms")
    ends = [p.start + p.seconds for p in passes]
    bottom.plot([0.0] + ends, [result.valid_at_start] + [p.dirty_after for p in passes], marker="o",
                label="entries to send (dirty)")
    per_entry = HPTE_BYTES_PER_RECORD_ENTRY
    bottom.axhline(result.link.threshold_bytes / per_entry, color="red", linestyle="--",
                   label=f"downtime limit ({per_entry} B an entry)")
    bottom.set_xlabel("simulated time (s)")
    bottom.set_ylabel("entries")
    bottom.set_yscale("symlog", linthresh=10)
    bottom.legend()
    with atomic_write(path) as out:
        fig.savefig(out, format=fmt)
    plt.close(fig)


#: a one-entry record: what the downtime line counts an entry as
HPTE_BYTES_PER_RECORD_ENTRY = 24
