"""htabtool verify: is a snapshot sound?"""

from __future__ import annotations

import click

from htabtool.cli.common import emit_json, json_option


@click.command()
@click.argument("snapshot", metavar="SNAP|-")
@json_option
@click.pass_context
def verify(ctx, snapshot, as_json):
    """Check a snapshot's integrity (checksums, sizes, trailer) and meaning
    (records inside the table, valid bits on valid runs, each pass
    ascending).  Exit 0: sound; 1: problems found (listed); 2: unreadable.

    \b
    Examples:
      htabtool verify guest.htab && echo sound
      htabtool verify --json guest.htab
    """
    from htabtool import ops
    from htabtool.sources import open_snapshot

    with open_snapshot(snapshot) as snap:
        result = ops.verify(snap)
        name = snap.name
    if as_json:
        emit_json({**result.to_dict(), "file": name})
    elif result.sound:
        click.echo(f"{name}: sound ({result.chunks} chunks, {result.records:,} records)")
    else:
        for p in result.problems:
            click.echo(f"{name}: {p}")
    from htabtool.cli import EXIT_DIFFERENT, EXIT_OK

    ctx.exit(EXIT_OK if result.sound else EXIT_DIFFERENT)
