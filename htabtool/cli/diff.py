"""htabtool diff: compare the final tables of two snapshots."""

from __future__ import annotations

import click

from htabtool.cli.common import (
    PATH,
    Command,
    check_files,
    echo_summary,
    emit_json,
    force_option,
    json_option,
    level_option,
    plural,
    progress,
    progress_option,
)


@click.command(cls=Command)
@click.argument("a", metavar="A", type=PATH)
@click.argument("b", metavar="B", type=PATH)
@click.option("--ignore-rc", is_flag=True, help="Changes of only the R and C bits do not count as differences.")
@click.option("--strict", is_flag=True, help="Compare KVM's software bits (HPTE_V_HVLOCK, HPTE_V_ABSENT, bit 62) too.")
@click.option("--limit", type=click.IntRange(0, 1_000_000), default=10, show_default=True,
              help="How many differences to show decoded.")
@click.option("--delta", metavar="OUT|-", type=PATH,
              help="Write a snapshot of the records that turn A's table into B's.")
@level_option
@force_option
@progress_option
@json_option
@click.option("-q", "--quiet", is_flag=True, help="Print nothing; the exit status says it (as cmp -s).")
@click.pass_context
def diff(ctx, a, b, ignore_rc, strict, limit, delta, level, force, as_json, quiet):
    """Compare the final tables of snapshots A and B (all passes applied).
    Exit 0: identical; 1: different; 2: trouble (as cmp(1)).

    Added, removed and changed entries are counted; changes of only R/C are
    counted apart.  The first differences are decoded field by field.  With
    --delta - the delta goes to standard output and the report to standard
    error.

    \b
    Examples:
      htabtool diff before.htab after.htab
      htabtool diff -q a.htab b.htab || echo differ
      htabtool diff --json --limit 0 a.htab b.htab
      htabtool diff a.htab b.htab --delta a-to-b.htab
      htabtool diff a.htab b.htab --delta - | htabtool load - --vm a.img
    """
    from htabtool import ops
    from htabtool.sources import WriteOptions, open_snapshot

    if a == "-" and b == "-":
        raise click.UsageError("only one of A and B can be standard input")
    check_files({"A": a, "B": b}, {"--delta": delta}, force=force)
    with open_snapshot(a) as sa, open_snapshot(b) as sb:
        with progress(lambda: sa.entries, "diff") as advance:
            if delta is None:
                result = ops.diff(sa, sb, ignore_rc=ignore_rc, ignore_software=not strict, limit=limit,
                                  progress=advance)
            else:
                result = ops.diff_with_delta(sa, sb, delta, ignore_rc=ignore_rc, ignore_software=not strict,
                                             limit=limit, options=WriteOptions(level=level), progress=advance)
        names = (sa.name, sb.name)
    on_stdout = delta == "-"
    if as_json:
        emit_json(result.to_json(), err=on_stdout)
    elif not quiet:
        for line in _lines(result, names):
            echo_summary(line, on_stdout)
    from htabtool.cli import EXIT_DIFFERENT, EXIT_OK

    ctx.exit(EXIT_DIFFERENT if result.different else EXIT_OK)


def _lines(result, names):
    s = result.summary
    if not result.different:
        rc = f"; {plural(s.rc_only, 'entry', 'entries')} with only R/C changed (ignored)" if s.rc_only else ""
        yield f"{names[0]} and {names[1]} are identical ({s.entries:,} entries compared{rc})"
    else:
        counted = s.added + s.removed + s.changed + (0 if s.ignore_rc else s.rc_only)
        yield (f"{names[0]} and {names[1]} differ in {counted:,} of {s.entries:,} entries: "
               f"{s.added:,} added, {s.removed:,} removed, {s.changed:,} changed, "
               f"{s.rc_only:,} with only R/C changed{' (ignored)' if s.ignore_rc else ''}")
    for c in result.first:
        yield (f"  entry {c.index:#x} ({c.index:,}) {c.kind}: "
               f"v {c.a[0]:#018x} -> {c.b[0]:#018x}, r {c.a[1]:#018x} -> {c.b[1]:#018x}")
        if c.kind in ("added", "removed"):
            whole = {k: (y if c.kind == "added" else x) for k, (x, y) in c.fields.items()}
            yield "      " + ", ".join(k if v is True else f"{k} {v}" for k, v in whole.items() if v is not False)
        else:
            for name, (x, y) in c.fields.items():
                yield f"      {name}: {x} -> {y}"
    more = result.shown_of - len(result.first)
    if more > 0:
        yield f"  ... and {more:,} more (--limit {len(result.first)} shown)"
    if result.delta_path:
        yield f"delta: {plural(result.delta_records, 'record')} written to {result.delta_path}"
