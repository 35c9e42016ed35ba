"""htabtool migrate: a simulated live migration of a VM's HPT, pass by pass."""

from __future__ import annotations

import click

from htabtool.cli.common import (
    PATH,
    Command,
    check_files,
    emit_json,
    force_option,
    human_bytes,
    json_option,
    level_option,
    plain,
)


class _Parsed(click.ParamType):
    """A click type over one of htabtool.units' parsers (one line on error)."""

    def __init__(self, name: str, parse):
        self.name = name
        self._parse = parse

    def convert(self, value, param, ctx):
        from htabtool.errors import UsageError

        if not isinstance(value, str):
            return value
        try:
            return self._parse(value)
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


def _bandwidth(text):
    from htabtool.units import parse_bandwidth

    return parse_bandwidth(text)


def _duration(text):
    from htabtool.units import parse_duration

    return parse_duration(text)


BANDWIDTH = _Parsed("bandwidth", _bandwidth)
DURATION = _Parsed("duration", _duration)


@click.command(cls=Command)
@click.argument("image", metavar="SRC.img", type=PATH)
@click.option("--bandwidth", type=BANDWIDTH, default="1G", show_default=True, metavar="BITS/S",
              help="The link, in bits per second with decimal suffixes: 1G = 10^9 bit/s, 10G, 25G, 100M.")
@click.option("--downtime-limit", type=DURATION, default="300ms", show_default=True, metavar="TIME",
              help="QEMU's downtime-limit (30ms, 0.3s): the HPT converges when its dirty data fits in it.")
@click.option("--ram-share", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              metavar="FRACTION", help="The part of the bandwidth (and of the downtime) kept for RAM, 0 to below 1.")
@click.option("--ram-round", type=DURATION, default="0", show_default=True, metavar="TIME",
              help="RAM's own iteration between two of the HPT's lasts at least this long (QEMU iterates "
                   "the htab once per RAM round).")
@click.option("--max-passes", type=click.IntRange(1, 100_000), default=30, show_default=True,
              help="Live passes at most; reached without converging: exit 1.")
@click.option("--ops-per-second", type=click.FloatRange(0), default=None, metavar="RATE",
              help="Guest events per simulated second (default: the profile's rate).")
@click.option("--seed", type=click.IntRange(0), default=None,
              help="Draw the guest's events from this seed (default: the image's own generator).")
@click.option("--snapshot", metavar="OUT.htab|-", type=PATH, help="Write every pass as a pass of a snapshot file.")
@click.option("--to", "to", metavar="DST.img", type=PATH,
              help="Create a destination VM holding what was sent (as load --vm --create).")
@click.option("-o", "--output", "plot", metavar="PLOT.png|PLOT.svg", type=PATH,
              help="Draw the passes (needs matplotlib).")
@force_option
@level_option
@json_option
@click.pass_context
def migrate(ctx, image, bandwidth, downtime_limit, ram_share, ram_round, max_passes, ops_per_second, seed, snapshot,
            to, plot,
            force, level, as_json):
    """Simulate a live migration of SRC.img's HPT as QEMU drives the
    kernel's htab fd, in simulated time: the guest runs its profile while
    the passes are read (2048-byte reads, 5 ms iterations), until the
    dirty data fits the downtime limit (converged) or --max-passes is
    reached; then the guest stops and the last pass is sent.  Per pass: the
    bytes in the kernel's record format and in a per-entry-index format (20
    bytes an entry).  SRC.img is only read.

    Exit status: 0 converged, 1 not converged within --max-passes, 2 trouble.

    \b
    Examples:
      htabtool migrate guest.img --bandwidth 1G --downtime-limit 30ms
      htabtool migrate guest.img --bandwidth 10G --ram-share 0.9 --json
      htabtool migrate guest.img --snapshot mig.htab --to dst.img
      htabtool migrate guest.img --ops-per-second 5000 --max-passes 10 -o passes.png
    """
    from htabtool.ops.migrate import migrate as run_migration
    from htabtool.sources import WriteOptions

    check_files({"SRC.img": image}, {"--snapshot": snapshot, "--to": to, "-o": plot}, force=force)
    if plot is not None:
        from htabtool.ops.migrate_plot import check_format, pyplot

        check_format(plot)
        pyplot()  # matplotlib missing: said before anything runs or is written
    result = run_migration(image, bandwidth=bandwidth, downtime_limit=downtime_limit, ram_share=ram_share,
                           ram_round=ram_round, max_passes=max_passes, ops_per_second=ops_per_second,
                           seed=seed, snapshot=snapshot, to=to,
                           options=WriteOptions(level=level))
    if plot is not None:
        from htabtool.ops.migrate_plot import plot_migration

        plot_migration(result, plot)
    to_stderr = snapshot == "-"
    if as_json:
        emit_json(result.to_json(), err=to_stderr)
    else:
        _show(result, err=to_stderr)
    if result.destination_equal is False:
        from htabtool.errors import HtabError

        raise HtabError(f"{to}: the destination's table differs from the source's final table")
    if not result.converged:
        if not as_json:
            click.echo(f"htabtool: not converged: {max_passes} live passes and the dirty data still does not fit "
                       f"the downtime limit", err=True)
        ctx.exit(1)


def _show(result, err: bool) -> None:
    from htabtool.units import format_bandwidth, format_duration

    d = result.to_dict()
    link = result.link
    head = (f"{d['source']}: profile {d['profile']}, order {d['order']} ({d['entries']:,} entries, "
            f"{d['valid_at_start']:,} valid); link {format_bandwidth(link.bandwidth)}bit/s"
            + (f", RAM's share {link.ram_share:g}" if link.ram_share else "")
            + f"; downtime limit {format_duration(link.downtime_limit)} "
              f"(the HPT's threshold {human_bytes(int(link.threshold_bytes))})")
    cols = ("pass", "start", "time", "records", "valid", "inval.", "entries", "record bytes", "index bytes", "ratio",
            "dirty after")
    rows = []
    for p in result.passes:
        rows.append((
            f"{p.number}{' (stopped)' if p.stopped else ''}",
            format_duration(p.start),
            format_duration(p.seconds),
            f"{p.records:,}",
            f"{p.valid:,}",
            f"{p.invalidated:,}",
            f"{p.entries:,}",
            f"{p.record_bytes:,}",
            f"{p.index_bytes:,}",
            "-" if p.ratio is None else f"{p.ratio:.3f}",
            f"{p.dirty_after:,}",
        ))
    verdict = (f"converged after {len(result.live)} live pass{'es' if len(result.live) != 1 else ''}"
               if result.converged
               else f"NOT converged within {link.max_passes} live pass{'es' if link.max_passes != 1 else ''}")
    last = result.stopped
    tail = (f"{verdict}; stopped phase: {last.entries:,} entries, {last.record_bytes:,} bytes "
            f"({last.index_bytes:,} with an index per entry); the HPT's downtime {format_duration(result.hpt_downtime)}"
            + (f"; destination {result.destination}: "
               f"{'equal to the source' if result.destination_equal else 'DIFFERENT'}" if result.destination else ""))
    if plain(click.get_text_stream("stderr" if err else "stdout")):
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
        lines = [head, "  ".join(c.rjust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
        lines.append(tail)
        click.echo("\n".join(lines), err=err)
        return
    from rich.table import Table

    from htabtool.cli.common import console

    t = Table(title=head, title_justify="left", caption=tail, caption_justify="left")
    for c in cols:
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(*r)
    console(stderr=err).print(t)
