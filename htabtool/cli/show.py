"""htabtool show: a snapshot's entries, decoded field by field and filtered."""

from __future__ import annotations

import sys

import click

from htabtool.cli.common import PATH, Command, plain

#: rows written between flushes (so that ``| head`` stops the command early)
FLUSH_ROWS = 4096


@click.command(cls=Command)
@click.argument("snapshot", metavar="SNAP|-", type=PATH)
@click.option("--pass", "pass_number", type=int, default=None, metavar="N",
              help="Show pass N's records as the kernel sent them (headers, then their entries) instead of "
                   "the final table.")
@click.option("--index", "index_range", metavar="A..B",
              help="Entries A to B (inclusive; A.., ..B or one index; 0x... allowed).")
@click.option("--valid", "validity", flag_value="valid", default=True, help="Valid entries only (the default).")
@click.option("--invalid", "validity", flag_value="invalid",
              help="Invalid entries only (--pass: records with an invalid run).")
@click.option("--all", "validity", flag_value="all", help="Valid and invalid entries.")
@click.option("--bolted/--not-bolted", default=None,
              help="Bolted entries only, or non-bolted ones only (HPTE_V_BOLTED).")
@click.option("--page-size", type=click.Choice(["4K", "64K", "16M", "16G"], case_sensitive=False), default=None,
              help="Entries of this base page size.")
@click.option("--segment", type=click.Choice(["256M", "1T"], case_sensitive=False), default=None,
              help="Entries of this segment size (the B field).")
@click.option("--avpn", metavar="HEX[/MASK]", help="Entries whose AVPN, ANDed with MASK, is HEX.")
@click.option("--rpn", metavar="HEX[/MASK]", help="Entries whose RPN field (4K units), ANDed with MASK, is HEX.")
@click.option("--vrma", is_flag=True, help="Entries of the virtual real-mode area only (VRMA_VSID, 1T).")
@click.option("--changed-in", type=int, default=None, metavar="PASS",
              help="Entries a later pass PASS wrote (sent valid or counted invalid).")
@click.option("--limit", type=click.IntRange(0), default=None, metavar="N",
              help="At most N lines (entries; records too with --pass).")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines: one object per entry (schema in the man page).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header line (the JSON keys as columns).")
def show(snapshot, pass_number, index_range, validity, bolted, page_size, segment, avpn, rpn, vrma, changed_in, limit,
         as_json, as_csv):
    """Print a snapshot's final table, one line per entry, decoded field by
    field with the kernel's names (or one pass's records with --pass).
    Filters combine: an entry is shown when it passes every one given.

    \b
    Examples:
      htabtool show guest.htab | head
      htabtool show --bolted --page-size 16M guest.htab
      htabtool show --index 0..1023 --all guest.htab
      htabtool show --avpn 0x4000/0xffff --segment 1T guest.htab
      htabtool show --changed-in 2 --json live.htab | jq .index
      htabtool show --pass 2 --limit 20 live.htab
      htabtool show --csv guest.htab > entries.csv
    """
    from htabtool import ops
    from htabtool.ops.show import parse_index_range, parse_masked_hex
    from htabtool.sources import open_snapshot

    if as_json and as_csv:
        raise click.UsageError("give at most one of --json and --csv")
    filters = ops.Filters(
        index=parse_index_range(index_range) if index_range is not None else None,
        valid={"valid": True, "invalid": False, "all": None}[validity if validity is not True else "valid"],
        bolted=bolted,
        page_size=page_size.upper() if page_size else None,
        segment=segment.upper() if segment else None,
        avpn=parse_masked_hex(avpn, "--avpn") if avpn is not None else None,
        rpn=parse_masked_hex(rpn, "--rpn") if rpn is not None else None,
        vrma=vrma,
        changed_in=changed_in,
    )
    with open_snapshot(snapshot) as snap:
        rows = ops.show(snap, filters, limit=limit, pass_number=pass_number)
        if as_json:
            _write_json(rows)
        elif as_csv:
            _write_csv(rows, pass_number is not None)
        else:
            _write_text(rows, snap.entries, pass_number is not None)
    sys.stdout.flush()


def _write_json(rows) -> None:
    import json

    out = sys.stdout
    lines = []
    for row in rows:
        lines.append(json.dumps(row, separators=(",", ":")))
        if len(lines) >= FLUSH_ROWS:
            _flush(out, lines)
    _flush(out, lines)


def _write_csv(rows, with_records: bool) -> None:
    import csv

    from htabtool.ops.show import ENTRY_KEYS, RECORD_KEYS

    keys = list(RECORD_KEYS) + [k for k in ENTRY_KEYS if k not in RECORD_KEYS] if with_records else list(ENTRY_KEYS)
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(keys)
    for n, row in enumerate(rows, 1):
        writer.writerow([_csv_value(row.get(k, "")) for k in keys])
        if n % FLUSH_ROWS == 0:
            sys.stdout.flush()


def _csv_value(x):
    return int(x) if isinstance(x, bool) else x


def _flush(out, lines: list) -> None:
    if lines:
        out.write("\n".join(lines) + "\n")
        out.flush()
        lines.clear()


# -- text for people -------------------------------------------------------------


def _letters(*names: str) -> list[str]:
    """The 2**len(names) flag strings: name k shown when bit k is set, '-' else."""
    return ["".join(n if bits >> k & 1 else "-" for k, n in enumerate(names)) for bits in range(1 << len(names))]


_FLAGS = _letters("V", "B", "H", "L")
_RC = _letters("R", "C")
_SW = ["-", "HVLOCK", "ABSENT", "HVLOCK,ABSENT"]


class _Columns:
    """Fixed-width columns (so that lines stream, aligned, without a pass
    over the table to measure them)."""

    def __init__(self, entries: int):
        self.iw = max(len("INDEX"), len(str(max(entries - 1, 0))))
        self.gw = len(str(max(entries // 8 - 1, 0)))

    def header(self) -> str:
        return (f"{'INDEX':>{self.iw}} {'PTEG:S':>{self.gw + 2}} VBHL SEG  {'AVPN':<16} {'PAGE':<7} "
                f"{'RPN':<14} {'REAL ADDRESS':<18} WIMG PP  N KEY RC SW")

    def entry(self, e: dict) -> str:
        flags = _FLAGS[e["valid"] | e["bolted"] << 1 | e["secondary"] << 2 | e["large"] << 3]
        page = (e["page_size"] if e["page_size"] == e["actual_page_size"]
                else f"{e['page_size']}/{e['actual_page_size']}")
        return (f"{e['index']:>{self.iw}} {e['pteg']:>{self.gw}}:{e['slot']} {flags} {e['segment_size']:<4} "
                f"{e['avpn']:#016x} {page:<7} {e['rpn']:#014x} {e['real_address']:#018x} {e['wimg']:04b} "
                f"{e['pp'] >> 2}:{e['pp'] & 3} {e['no_execute']:d} {e['key']:>3} "
                f"{_RC[e['referenced'] | e['changed'] << 1]} {_SW[e['hvlock'] | e['absent'] << 1]}")

    def record(self, rec: dict) -> str:
        return (f"record {rec['record']} (pass {rec['pass']}, offset {rec['offset']:#x}): index {rec['index']}, "
                f"n_valid {rec['n_valid']}, n_invalid {rec['n_invalid']}")


def _write_text(rows, entries: int, with_records: bool) -> None:
    cols = _Columns(entries)
    indent = "  " if with_records else ""
    if plain():
        out = sys.stdout
        lines = [indent + cols.header()]
        for row in rows:
            lines.append(cols.record(row) if row["kind"] == "record" else indent + cols.entry(row))
            if len(lines) >= FLUSH_ROWS:
                _flush(out, lines)
        _flush(out, lines)
        return
    from rich.text import Text

    from htabtool.cli.common import console

    con = console()
    con.print(Text(indent + cols.header(), style="bold"), no_wrap=True, overflow="ignore", crop=False)
    for row in rows:
        if row["kind"] == "record":
            con.print(Text(cols.record(row), style="cyan"), no_wrap=True, overflow="ignore", crop=False)
        else:
            con.print(Text(indent + cols.entry(row), style="" if row["valid"] else "dim"),
                      no_wrap=True, overflow="ignore", crop=False)
