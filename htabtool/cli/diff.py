"""htabtool diff: compare the final tables of two snapshots."""

from __future__ import annotations

import click

from htabtool.cli.common import emit_json, json_option, level_option


@click.command()
@click.argument("a", metavar="A")
@click.argument("b", metavar="B")
@click.option("--ignore-rc", is_flag=True, help="Changes of only the R and C bits do not count as differences.")
@click.option("--strict", is_flag=True, help="Compare KVM's software bits (HPTE_V_HVLOCK, HPTE_V_ABSENT, bit 62) too.")
@click.option("--limit", type=click.IntRange(0, 1_000_000), default=10, show_default=True, help="How many differences to show decoded.")
@click.option("--delta", metavar="OUT|-", help="Write a snapshot of the records that turn A's table into B's.")
@level_option
@json_option
@click.pass_context
def diff(ctx, a, b, ignore_rc, strict, limit, delta, level, as_json):
    """Compare the final tables of snapshots A and B (all passes applied).
    Exit 0: identical; 1: different; 2: trouble (as cmp(1)).

    Added, removed and changed entries are counted; changes of only R/C are
    counted apart.  The first differences are decoded field by field.

    \b
    Examples:
      htabtool diff before.htab after.htab
      htabtool diff --json --limit 0 a.htab b.htab
      htabtool diff a.htab b.htab --delta a-to-b.htab
    """
    from htabtool import ops
    from htabtool.sources import open_snapshot

    if a == "-" and b == "-":
        raise click.UsageError("only one of A and B can be standard input")
    with open_snapshot(a) as sa, open_snapshot(b) as sb:
        if delta is None:
            result = ops.diff(sa, sb, ignore_rc=ignore_rc, ignore_software=not strict, limit=limit)
        else:
            result = ops.diff_with_delta(sa, sb, delta, ignore_rc=ignore_rc, ignore_software=not strict, limit=limit, level=level)
        names = (sa.name, sb.name)
    if as_json:
        emit_json({"schema": "htabtool-diff/1", "a": names[0], "b": names[1], **result.to_dict()})
    else:
        _print(result, names)
    from htabtool.cli import EXIT_DIFFERENT, EXIT_OK

    ctx.exit(EXIT_DIFFERENT if result.different else EXIT_OK)


def _print(result, names) -> None:
    s = result.summary
    verdict = "differ" if result.different else "are identical"
    click.echo(f"{names[0]} and {names[1]} {verdict}: {s.entries:,} entries; "
               f"{s.added:,} added, {s.removed:,} removed, {s.changed:,} changed, "
               f"{s.rc_only:,} with only R/C changed{' (ignored)' if s.ignore_rc else ''}")
    for c in result.first:
        click.echo(f"  entry {c.index:#x} ({c.index}) {c.kind}: "
                   f"v {c.a[0]:#018x} -> {c.b[0]:#018x}, r {c.a[1]:#018x} -> {c.b[1]:#018x}")
        for name, (x, y) in c.fields.items():
            click.echo(f"      {name}: {x} -> {y}")
    if result.delta_path:
        click.echo(f"delta: {result.delta_records:,} records written to {result.delta_path}")
