"""htabtool dump: snapshot an HPT from a source into a snapshot file."""

from __future__ import annotations

import contextlib

import click

from htabtool.cli.common import BYTE_ORDER, buffer_size_option, emit_json, human_bytes, json_option, level_option, progress


@click.command()
@click.option("-o", "--output", required=True, metavar="OUT|-", help="The snapshot file to write (- for standard output).")
@click.option("--vm", "vm_image", metavar="IMAGE", help="Source: a simulated VM image (htabtool vm create).")
@click.option("--raw", "raw_input", metavar="FILE|-", help="Source: a raw kernel record stream captured from an htab fd.")
@click.option("--qemu", "qemu_input", metavar="FILE|-", help="Source: a QEMU migration stream (its spapr/htab section).")
@click.option("--qemu-section", "qemu_section", metavar="FILE|-", help="Source: a bare spapr/htab section payload.")
@click.option("--byte-order", type=BYTE_ORDER, default=None,
              help="Header byte order: of the raw stream (--raw, required), of the snapshot (--qemu: default little), "
                   "of the simulated host (--vm: default little).")
@click.option("--order", type=int, default=None, metavar="N", help="--raw: the table's order (log2 of its bytes).")
@click.option("--entries", type=int, default=None, metavar="N", help="--raw: the table's size in entries.")
@click.option("--bolted-only", is_flag=True, help="--vm: read only bolted entries (KVM_GET_HTAB_BOLTED_ONLY).")
@click.option("--start-index", type=click.IntRange(0), default=0, show_default=True, help="--vm: the first entry to read.")
@buffer_size_option()
@click.option("--passes", type=click.IntRange(1, 1_000_000), default=1, show_default=True,
              help="--vm: passes to read; the guest keeps running --churn operations between them (a live snapshot).")
@click.option("--churn", type=click.IntRange(0), default=1000, show_default=True, metavar="N",
              help="--vm: guest operations between passes.")
@click.option("--until-dirty", type=click.IntRange(0), default=None, metavar="N",
              help="--vm: keep making passes until one returns at most N changed entries (at most --max-passes).")
@click.option("--max-passes", type=click.IntRange(1, 1_000_000), default=30, show_default=True, help="--vm: the cap for --until-dirty.")
@level_option
@click.option("-T", "--threads", type=click.IntRange(0, 64), default=0, show_default=True, metavar="N",
              help="Compression threads, as zstd -T: 0 one per CPU; the records are read and laid out meanwhile.")
@json_option
@click.option("-q", "--quiet", is_flag=True, help="No summary.")
def dump(output, vm_image, raw_input, qemu_input, qemu_section, byte_order, order, entries, bolted_only, start_index,
         buffer_size, passes, churn, until_dirty, max_passes, level, threads, as_json, quiet):
    """Snapshot an HPT into a compressed snapshot file whose chunks are the
    exact kernel records (zstd -dc prints them).  Give exactly one source.

    \b
    Examples:
      htabtool dump --vm guest.img -o guest.htab
      htabtool dump --vm guest.img --passes 3 --churn 5000 -o live.htab
      htabtool dump --raw capture.bin --byte-order little --order 24 -o cap.htab
      htabtool dump --qemu migration.bin -o guest.htab
      htabtool dump --vm guest.img -o - | htabtool stat -
      htabtool dump --raw capture.bin --byte-order little --order 28 -T 1 -o cap.htab
    """
    from htabtool import ops
    from htabtool.sources import open_output

    chosen = [n for n, v in (("--vm", vm_image), ("--raw", raw_input), ("--qemu", qemu_input), ("--qemu-section", qemu_section)) if v]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one source: --vm IMAGE, --raw FILE, --qemu FILE or --qemu-section FILE"
                               + (f" (got {' '.join(chosen)})" if chosen else ""))
    if raw_input is None and (order is not None or entries is not None):
        raise click.UsageError("--order and --entries go with --raw")
    if vm_image is None and (bolted_only or start_index or passes != 1 or until_dirty is not None):
        raise click.UsageError("--bolted-only, --start-index, --passes and --until-dirty go with --vm")
    with _source(vm_image, raw_input, qemu_input, qemu_section, byte_order, order, entries, bolted_only, start_index,
                 buffer_size, passes, churn, until_dirty, max_passes) as source:
        with open_output(output) as out, progress(getattr(source, "progress_total", None), "dump") as advance:
            summary = ops.dump(source, out, level=level, threads=threads or _cpus(), progress=advance, output=output)
    if as_json:
        emit_json(summary.to_dict(), err=output == "-")
    elif not quiet:
        click.echo(
            f"{output}: {summary.passes} pass{'es' if summary.passes != 1 else ''}, {summary.records:,} records, "
            f"{summary.valid:,} valid entries, {human_bytes(summary.raw_bytes)} of records in "
            f"{human_bytes(summary.file_bytes)} ({summary.seconds:.2f} s)",
            err=True,
        )


def _cpus() -> int:
    """The CPUs this process may run on (-T 0)."""
    import os

    try:
        return max(1, min(64, len(os.sched_getaffinity(0))))
    except (AttributeError, OSError):
        return max(1, min(64, os.cpu_count() or 1))


@contextlib.contextmanager
def _source(vm_image, raw_input, qemu_input, qemu_section, byte_order, order, entries, bolted_only, start_index,
            buffer_size, passes, churn, until_dirty, max_passes):
    """The one source the options name, open for the dump."""
    from htabtool.sources import RawStreamSource, open_input, order_for

    if vm_image is not None:
        from htabtool.sources import VMSource

        with VMSource.open(vm_image, byte_order=byte_order or "little", bolted_only=bolted_only,
                           start_index=start_index, buffer_size=buffer_size, passes=passes, churn=churn,
                           until_dirty=until_dirty, max_passes=max_passes) as src:
            yield src
        return
    if raw_input is not None:
        if byte_order is None:
            raise click.UsageError("--raw needs --byte-order little|big (the byte order of the record headers)")
        size = order_for(order, entries)
        with open_input(raw_input) as f:
            yield RawStreamSource(f, byte_order=byte_order, order=size, name=raw_input)
        return
    from htabtool.qemu import QemuSource

    path = qemu_input if qemu_input is not None else qemu_section
    with open_input(path) as f:
        yield QemuSource(f, byte_order=byte_order or "little", section_only=qemu_section is not None, name=path)
