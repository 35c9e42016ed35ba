"""htabtool verify: is a snapshot sound?"""

from __future__ import annotations

import click

from htabtool.cli.common import PATH, Command, check_files, emit_json, json_option, plural, progress, progress_option


@click.command(cls=Command)
@click.argument("snapshot", metavar="SNAP|-", type=PATH)
@progress_option
@json_option
@click.pass_context
def verify(ctx, snapshot, as_json):
    """Check a snapshot's integrity (checksums, sizes, trailer) and meaning
    (records inside the table, valid bits on valid runs, each pass
    ascending).  Exit 0: sound; 1: problems found (listed); 2: unreadable.

    \b
    Examples:
      htabtool verify guest.htab && echo sound
      htabtool verify --json guest.htab    # JSON even when unreadable (exit 2)
    """
    from htabtool import ops
    from htabtool.errors import HtabError
    from htabtool.sources import open_snapshot

    check_files({"SNAP": snapshot})
    try:
        with open_snapshot(snapshot) as snap:
            with progress(lambda: snap.file_size, "verify") as advance:
                result = ops.verify(snap, progress=advance)
            name = snap.name
    except (HtabError, OSError) as exc:
        if not as_json:
            raise
        from htabtool.cli import EXIT_TROUBLE, _describe

        # a script still gets its JSON: unreadable, and why
        emit_json(ops.Unreadable("<stdin>" if snapshot == "-" else snapshot, _describe(exc)).to_json())
        ctx.exit(EXIT_TROUBLE)
    if as_json:
        emit_json(result.to_json())
    elif result.sound:
        click.echo(f"{name}: sound ({plural(result.chunks, 'chunk')}, {plural(result.records, 'record')})")
    else:
        for p in result.problems:
            click.echo(f"{name}: {p}")
    from htabtool.cli import EXIT_DIFFERENT, EXIT_OK

    ctx.exit(EXIT_OK if result.sound else EXIT_DIFFERENT)
