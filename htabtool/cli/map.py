"""htabtool map: pictures of the table (a terminal map, or a PNG/SVG file).

matplotlib is imported only when a picture file is asked for (it is the
``plot`` extra: ``pip install 'htabtool[plot]'``), so that no other command,
nor the terminal map, pays for it.
"""

from __future__ import annotations

import os
import shutil
import textwrap

import click

from htabtool.cli.common import PATH, Command, check_files, force_option, human_bytes, labelled_bars, plain

#: shades of a strip's cell by the fraction of its entries counted: none, up
#: to 1/8, ..., all (a cell with one entry shows)
SHADES = " ▁▂▃▄▅▆▇█"
PLAIN_SHADES = " .:-=+*#@"
LABEL_WIDTH = 11
#: picture files: inches at 100 dots per inch
FIGURE_SIZE = (10, 8)
DPI = 100
FORMATS = ("png", "svg")
INSTALL_PLOT = "pip install 'htabtool[plot]'"


@click.command(name="map", cls=Command)
@click.argument("snapshot", metavar="SNAP|-", type=PATH)
@click.option("-o", "--output", metavar="FILE|-", type=PATH,
              help="Write a picture file (PNG or SVG, by its suffix or --format) instead of drawing on the terminal.")
@click.option("--format", "fmt", type=click.Choice(FORMATS, case_sensitive=False), default=None,
              help="The picture's format (default: from the suffix of -o; needed with -o -).")
@force_option
@click.option("--width", type=click.IntRange(LABEL_WIDTH + 10, 10000), default=None, metavar="COLUMNS",
              help="Width of the terminal map (default: the terminal's, or COLUMNS, or 80).")
@click.option("--json", "as_json", is_flag=True, help="Print the map's arrays as JSON (schema in the man page).")
def map_command(snapshot, output, fmt, force, width, as_json):
    """Draw the table: an occupancy strip of the whole table (valid, bolted,
    non-bolted entries, and the entries each later pass wrote), the PTEG
    fill histogram and the page-size mix; with -o, the same as a PNG or SVG
    picture (a heat map of the table's groups, the histograms, the churn of
    each pass).

    \b
    Examples:
      htabtool map guest.htab
      NO_COLOR=1 htabtool map guest.htab | less
      htabtool map live.htab -o live.png
      htabtool map live.htab -o map.svg --force
      htabtool map --json --width 64 guest.htab | jq .strips.valid
    """
    from htabtool import ops
    from htabtool.sources import open_snapshot

    if output is not None and as_json:
        raise click.UsageError("give at most one of -o and --json")
    if output is not None:
        fmt = _picture_format(output, fmt)
        check_files({"SNAP": snapshot}, {"-o": output}, force=force)
        figure_module, rc_context = _plotting()
    elif fmt is not None:
        raise click.UsageError("--format goes with -o")
    with open_snapshot(snapshot) as snap:
        m = ops.table_map(snap)
        header = snap.header
        name = snap.name
    if output is not None:
        from htabtool.sources import open_output

        fig = _figure(figure_module, m, f"{name}: order {header.order}, {m.entries:,} entries")
        # a fixed salt for the SVG's ids: the same snapshot draws the same bytes
        with rc_context({"svg.hashsalt": "htabtool"}), open_output(output) as f:
            fig.savefig(f, format=fmt, dpi=DPI, metadata=_metadata(fmt))
        return
    columns = width or shutil.get_terminal_size((80, 24)).columns
    if as_json:
        from htabtool.cli.common import emit_json

        emit_json(m.report(columns - LABEL_WIDTH - 2).to_json())
        return
    _draw_terminal(m, name, header.order, columns)


def _picture_format(output: str, fmt: str | None) -> str:
    if fmt is not None:
        return fmt.lower()
    suffix = os.path.splitext(output)[1].lower().lstrip(".")
    if suffix not in FORMATS:
        raise click.UsageError(f"-o {output}: the picture's format comes from its suffix, .png or .svg "
                               f"(or give --format)")
    return suffix


def _plotting():
    """matplotlib's Figure (no pyplot: no global state, no display) and rc_context."""
    from htabtool.errors import HtabError

    try:
        from matplotlib import rc_context
        from matplotlib.figure import Figure
    except ImportError:
        raise HtabError(f"picture files need matplotlib, which is not installed: {INSTALL_PLOT}") from None
    return Figure, rc_context


def _metadata(fmt: str) -> dict:
    # no creation date or tool version in the file: the same snapshot draws the same bytes
    return {"Date": None} if fmt == "svg" else {"Software": None}


# -- the terminal ---------------------------------------------------------------------


def shade(fractions, plain_text: bool) -> str:
    import numpy as np

    ramp = PLAIN_SHADES if plain_text else SHADES
    levels = np.ceil(np.clip(fractions, 0, 1) * (len(ramp) - 1)).astype(int)
    return "".join(ramp[k] for k in levels)


def _draw_terminal(m, name: str, order: int, width: int) -> None:
    plain_text = plain()
    cells = width - LABEL_WIDTH - 2
    lines: list[tuple[str, str | None]] = []
    per_cell = m.entries / cells
    lines.append((f"{name}: order {order}, {m.entries:,} entries ({human_bytes(m.entries * 16)}), "
                  f"{int(m.valid.sum()):,} valid; a cell is {per_cell:,.0f} entries", "bold"))
    styles = {"valid": "green", "bolted": "yellow", "non-bolted": "cyan"}
    peaks = []
    for label, fractions in m.strips(cells):
        peak = float(fractions.max()) if len(fractions) else 0.0
        peaks.append(f"{label} {100 * peak:.3g} %")
        lines.append((f"{label:<{LABEL_WIDTH}}│{shade(fractions / (peak or 1), plain_text)}│",
                      styles.get(label, "magenta")))
    last = f"{m.entries - 1:,}"
    lines.append((" " * (LABEL_WIDTH + 1) + "0" + last.rjust(cells - 1), None))
    ramp = PLAIN_SHADES if plain_text else SHADES
    lines.append((f"shade: a cell's share of entries, '{ramp[-1]}' as in the strip's fullest cell, "
                  f"'{ramp[1]}' any", None))
    for part in textwrap.wrap("fullest cells: " + ", ".join(peaks), width, subsequent_indent="  "):
        lines.append((part, None))
    lines.append(("", None))
    bars_width = max(10, min(40, width - 40))
    lines.append(("PTEG fill: 8-entry groups by valid entries", "bold"))
    for label, text in labelled_bars({f"{k} valid": int(n) for k, n in enumerate(m.pteg_fill)}, bars_width, plain_text):
        lines.append((f"  {label:<9}{text}", None))
    lines.append(("page sizes: valid entries by base page size", "bold"))
    for label, text in labelled_bars(m.page_sizes or {"none": 0}, bars_width, plain_text):
        lines.append((f"  {label:<9}{text}", None))
    if m.passes:
        lines.append(("passes after the first: entries each wrote", "bold"))
        for label, text in labelled_bars({f"pass {p}": m.pass_entries[p] for p in m.passes}, bars_width, plain_text):
            lines.append((f"  {label:<9}{text}", None))
    if plain_text:
        click.echo("\n".join(line for line, _ in lines))
        return
    from rich.text import Text

    from htabtool.cli.common import console

    con = console()
    for line, style in lines:
        con.print(Text(line, style=style or ""), no_wrap=True, overflow="crop", crop=False)


# -- picture files -------------------------------------------------------------------


def _figure(Figure, m, title: str):
    import numpy as np

    fig = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
    fig.suptitle(title)
    grid = fig.add_gridspec(3, 2, height_ratios=(3.2, 1.6, 1.4))
    heat = fig.add_subplot(grid[0, :])
    image = m.image()
    top = max(1.0, float(image.max()))
    shown = heat.imshow(image, aspect="auto", cmap="viridis", vmin=0, vmax=top, interpolation="nearest")
    groups = m.bin_entries // 8
    heat.set_title(f"valid entries per PTEG ({image.shape[0]} rows of {image.shape[1]} slices of {groups:,} "
                   f"PTEG{'s' if groups != 1 else ''}, in index order)", fontsize=9)
    heat.set_xticks([])
    heat.set_yticks([0, image.shape[0] - 1], ["0", f"{m.entries - 1:,}"])
    fig.colorbar(shown, ax=heat, label="valid of 8")
    fill = fig.add_subplot(grid[1, 0])
    fill.bar(range(9), m.pteg_fill, color="tab:green")
    fill.set_yscale("symlog")
    fill.set_xticks(range(9))
    fill.set_xlabel("valid entries in a PTEG")
    fill.set_ylabel("PTEGs")
    fill.set_title("PTEG fill", fontsize=9)
    sizes = fig.add_subplot(grid[1, 1])
    mix = m.page_sizes or {"none": 0}
    sizes.bar(list(mix), list(mix.values()), color="tab:blue")
    sizes.set_ylabel("valid entries")
    sizes.set_title("page sizes (base)", fontsize=9)
    churn = fig.add_subplot(grid[2, :])
    rows = m.strips(min(m.bins, 1000))
    peaks = [float(f.max()) or 1.0 for _, f in rows]
    churn.imshow(np.vstack([f / p for (_, f), p in zip(rows, peaks)]), aspect="auto", cmap="magma", vmin=0, vmax=1,
                 interpolation="nearest")
    churn.set_yticks(range(len(rows)), [f"{label} (max {100 * p:.2g} %)" for (label, _), p in zip(rows, peaks)])
    churn.set_xticks([])
    churn.set_title("share of each slice's entries (each strip against its fullest slice): valid, bolted, "
                    "non-bolted, written by each later pass", fontsize=9)
    return fig


map = map_command  # noqa: A001  (the name htabtool.cli.COMMANDS looks up)
