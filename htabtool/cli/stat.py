"""htabtool stat: what a snapshot holds."""

from __future__ import annotations

import click

from htabtool.cli.common import PATH, check_files, emit_json, human_bytes, json_option, plural, progress, progress_option, show


@click.command()
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
            report = ops.stat_report(snap, progress=advance)
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
            ("table", f"order {report['order']}: {report['entries']:,} entries ({human_bytes(report['entries'] * 16)})"),
            ("read flags", f"bolted-only {'yes' if report['bolted_only'] else 'no'}, start index {report['start_index']}"),
            ("valid", f"{report['valid']:,} ({100 * report['valid'] / report['entries']:.2f} %)"),
            ("invalid", f"{report['invalid']:,}"),
            ("bolted", f"{report['bolted']:,}"),
            ("secondary hash", f"{report['secondary']:,}"),
            ("R set / C set", f"{report['referenced']:,} / {report['changed']:,}"),
            ("VRMA entries", f"{report['vrma']:,}"),
            ("HPTE_V_HVLOCK", f"{report['hvlock']:,}"),
            ("page sizes", _mix(report["page_sizes"])),
            ("segment sizes", _mix(report["segment_sizes"])),
            ("PTEG fill 0..8", " ".join(f"{n:,}" for n in report["pteg_fill"])),
            ("records", f"{report['records']:,}, mean n_valid {report['mean_n_valid']}, mean n_invalid {report['mean_n_invalid']}"),
            ("n_valid", _mix(report["n_valid_distribution"])),
            ("n_invalid", _mix(report["n_invalid_distribution"])),
            ("passes", report["passes"]),
            *[
                (f"  pass {p['pass']}", f"{p['records']:,} records, {p['valid']:,} valid + {p['invalid']:,} invalid entries, "
                 f"{human_bytes(p['raw_bytes'])} raw, {human_bytes(p['compressed_bytes'])} compressed")
                for p in report["per_pass"]
            ],
            ("size", f"{human_bytes(report['raw_bytes'])} of records in {plural(report['chunks'], 'chunk')}, "
                     f"file {human_bytes(report['file_bytes'])} (ratio {report['ratio']})"),
        ]
    )


def _mix(d: dict) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in d.items() if v) or "none"
