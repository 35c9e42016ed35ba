"""What the commands share: options that mean one thing everywhere, output
for people (rich, only on a terminal) and for scripts (--json), progress."""

from __future__ import annotations

import contextlib
import json
import os
import sys

import click

BYTE_ORDER = click.Choice(["little", "big"])


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (schema in the man page).")(f)


def buffer_size_option(default: int = 65536, help_text: str = "The read(2)/write(2) size on the htab fd, in bytes."):
    return click.option(
        "--buffer-size",
        type=click.IntRange(25, 1 << 30),
        default=default,
        show_default=True,
        metavar="BYTES",
        help=help_text,
    )


def plain(stream=None) -> bool:
    """Plain text: NO_COLOR set, TERM=dumb, or the stream is not a terminal."""
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return True
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return True


def emit_json(obj, err: bool = False) -> None:
    click.echo(json.dumps(obj, indent=2), err=err)


def console(stderr: bool = False):
    """A rich Console for a terminal (imported only when one is used)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


@contextlib.contextmanager
def progress(total, label: str):
    """A progress bar on stderr when stderr is a terminal (and NO_COLOR is
    unset); otherwise nothing.  Yields ``advance(n)``.  ``total`` may be a
    callable: it is asked only when a bar is shown."""
    if plain(sys.stderr):
        yield lambda n: None
        return
    if callable(total):
        total = total()
    if not total:
        yield lambda n: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeRemainingColumn(),
        console=console(stderr=True), transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def table_lines(rows: list[tuple[str, object]]) -> str:
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def printable(value: object) -> str:
    """Text safe for a terminal: control characters (from a file's metadata,
    say) shown as escapes, never sent."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def show(rows: list[tuple[str, object]], title: str | None = None) -> None:
    """Key/value rows: a rich table on a terminal, aligned text otherwise."""
    rows = [(k, printable(v)) for k, v in rows]
    if plain():
        if title:
            click.echo(title)
        click.echo(table_lines(rows))
        return
    from rich.table import Table

    t = Table(title=title, show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    from rich.markup import escape

    for k, v in rows:
        t.add_row(k, escape(v))
    console().print(t)


def level_option(f):
    return click.option(
        "--level",
        type=click.IntRange(-7, 22),
        default=None,
        metavar="N",
        help="zstd compression level (default 1: fast; 3-19 smaller, slower).",
    )(f)


# -- labelled bars (stat's histograms, map) -------------------------------------------

_EIGHTHS = " ▏▎▍▌▋▊▉█"


def bar(fraction: float, width: int, plain_text: bool) -> str:
    """A horizontal bar ``width`` characters at most: '#' in plain text,
    block characters (to an eighth of a cell) on a terminal; a count above
    zero shows at least a sliver."""
    fraction = min(max(fraction, 0.0), 1.0)
    if plain_text:
        n = round(fraction * width)
        return "#" * (n or (1 if fraction > 0 else 0))
    eighths = round(fraction * width * 8) or (1 if fraction > 0 else 0)
    return "█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")


def labelled_bars(counts: dict, width: int = 30, plain_text: bool | None = None) -> list[tuple[str, str]]:
    """(label, "bar  count  percent") rows, one per bucket of ``counts``
    (label -> count), bars scaled to the largest bucket."""
    plain_text = plain() if plain_text is None else plain_text
    total = sum(counts.values()) or 1
    top = max(counts.values(), default=0) or 1
    cw = max((len(f"{c:,}") for c in counts.values()), default=1)
    return [
        (str(label), f"{bar(c / top, width, plain_text):<{width}} {c:>{cw},} {100 * c / total:5.1f} %")
        for label, c in counts.items()
    ]
