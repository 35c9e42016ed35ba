"""htabtool stat: what a snapshot holds."""

from __future__ import annotations

import click

from htabtool.cli.common import (
    PATH,
    Command,
    check_files,
    emit_json,
    human_bytes,
    json_option,
    labelled_bars,
    plural,
    progress,
    progress_option,
    show,
)


@click.command(cls=Command)
@click.argument("snapshot", metavar="SNAP|-", type=PATH)
@progress_option
@json_option
def stat(snapshot, as_json):
    """Show what a snapshot holds: the header, the final table's valid,
    bolted and page-size mix, the PTEG fill histogram, the records per pass,
    raw and compressed sizes.

    \b
    Examples:
      htabtool stat guest.htab
      htabtool stat --json guest.htab | jq .valid
      htabtool dump --vm guest.img -o - | htabtool stat -
    """
    from htabtool import ops
    from htabtool.sources import open_snapshot

    check_files({"SNAP": snapshot})
    with open_snapshot(snapshot) as snap:
        with progress(lambda: snap.entries, "stat") as advance:
            result = ops.stat_result(snap, progress=advance)
    report = result.to_json()
    if as_json:
        emit_json(report)
        return
    src = report["source"]
    show(
        [
            ("file", report["file"]),
            ("format", f"version {report['format_version']}, headers {report['byte_order']}-endian"),
            ("source", ", ".join(f"{k}={v}" for k, v in src.items())),
            ("created", f"{report['created']} by htabtool {report['tool_version']}"),
            ("table", f"order {report['order']}: {report['entries']:,} entries "
                      f"({human_bytes(report['entries'] * 16)})"),
            ("read flags", f"bolted-only {'yes' if report['bolted_only'] else 'no'}, "
                           f"start index {report['start_index']}"),
            ("valid", f"{report['valid']:,} ({100 * report['valid'] / report['entries']:.2f} %)"),
            ("invalid", f"{report['invalid']:,}"),
            ("bolted", f"{report['bolted']:,}"),
            ("secondary hash", f"{report['secondary']:,}"),
            ("R set / C set", f"{report['referenced']:,} / {report['changed']:,}"),
            ("VRMA entries", f"{report['vrma']:,}"),
            ("HPTE_V_HVLOCK", f"{report['hvlock']:,}"),
            ("page sizes", _mix(report["page_sizes"])),
            ("segment sizes", _mix(report["segment_sizes"])),
            ("PTEG fill", "8-entry groups by valid entries"),
            *_bars({f"{k} valid": n for k, n in enumerate(report["pteg_fill"])}),
            ("records", f"{report['records']:,}, mean n_valid {report['mean_n_valid']}, "
                        f"mean n_invalid {report['mean_n_invalid']}"),
            ("n_valid", "records by the entries of their valid run"),
            *_bars(report["n_valid_distribution"]),
            ("n_invalid", "records by the entries of their invalid run"),
            *_bars(report["n_invalid_distribution"]),
            ("passes", f"{report['passes']} (sweeps of the table)"),
            *[
                (f"  pass {p['pass']}", f"{p['records']:,} records, {p['valid']:,} valid + "
                 f"{p['invalid']:,} invalid entries, "
                 f"{human_bytes(p['raw_bytes'])} raw, {human_bytes(p['compressed_bytes'])} compressed"
                 + (f", QEMU parts {_numbers(p['qemu_parts'])}" if p.get("qemu_parts") else ""))
                for p in report["per_pass"]
            ],
            *_part_lines(report["qemu_parts"]),
            ("size", f"{human_bytes(report['raw_bytes'])} of records in {plural(report['chunks'], 'chunk')}, "
                     f"file {human_bytes(report['file_bytes'])} (ratio {report['ratio']})"),
        ]
    )


def _bars(counts: dict) -> list[tuple[str, str]]:
    return [(f"  {label}", text) for label, text in labelled_bars(counts)]


def _mix(d: dict) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in d.items() if v) or "none"


def _numbers(numbers: list) -> str:
    """1-4, 6: consecutive numbers as ranges."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


def _part_lines(parts: list | None) -> list:
    """QEMU's htab parts, apart from the passes: how many, then each."""
    if parts is None:
        return []
    kinds = {k: sum(p["kind"] == k for p in parts) for k in ("PART", "END")}
    empty = sum(not p["records"] for p in parts)
    lines = [("QEMU parts", f"{len(parts)} ({kinds['PART']} PART, {kinds['END']} END)"
              + (f", {empty} without records" if empty else ""))]
    for p in parts:
        lines.append((f"  part {p['part']}", f"{p['kind']} at offset {p['offset']:#x}, {p['records']:,} records"
                      + (f", pass {_numbers(p['passes'])}" if p["passes"] else "")))
    return lines
