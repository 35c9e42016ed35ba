"""htabtool dump: snapshot an HPT from a source into a snapshot file."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from htabtool.cli.common import (
    BYTE_ORDER,
    PATH,
    Command,
    buffer_size_option,
    check_files,
    emit_json,
    force_option,
    given,
    human_bytes,
    json_option,
    level_option,
    plural,
    progress,
    progress_option,
    refuse_options,
)

if TYPE_CHECKING:
    from htabtool.sources import RecordSource


@click.command(cls=Command)
@click.option("-o", "--output", required=True, metavar="OUT|-", type=PATH,
              help="The snapshot file to write (- for standard output).")
@click.option("--vm", "vm_image", metavar="IMAGE", type=PATH, help="Source: a simulated VM image (htabtool vm create).")
@click.option("--raw", "raw_input", metavar="FILE|-", type=PATH,
              help="Source: a raw kernel record stream captured from an htab fd.")
@click.option("--qemu", "qemu_input", metavar="FILE|-", type=PATH,
              help="Source: a QEMU migration stream (its spapr/htab section).")
@click.option("--qemu-section", "qemu_section", metavar="FILE|-", type=PATH,
              help="Source: a bare spapr/htab section payload.")
@click.option("--kvm", "kvm_pid", metavar="PID[:FD]",
              help="Source: the real KVM guest of process PID (QEMU), through the kernel's htab fd (PID:FD "
                   "picks its VM fd).")
@click.option("--kvm-fd", "kvm_fd", type=click.IntRange(0), metavar="N",
              help="Source: the KVM VM fd N this process was given.")
@click.option("--ignore-readers", is_flag=True,
              help="--kvm/--kvm-fd: read even though the process already holds an htab fd (a migration may be running, "
                   "and this read takes the modified marks it needs).")
@click.option("--byte-order", type=BYTE_ORDER, default=None,
              help="Header byte order: of the raw stream (--raw, required), of the snapshot (--qemu: default little), "
                   "of the simulated host (--vm: default little).")
@click.option("--order", type=int, default=None, metavar="N", help="--raw: the table's order (log2 of its bytes).")
@click.option("--entries", type=int, default=None, metavar="N", help="--raw: the table's size in entries.")
@click.option("--bolted-only", is_flag=True, help="--vm, --kvm: read only bolted entries (KVM_GET_HTAB_BOLTED_ONLY).")
@click.option("--start-index", type=click.IntRange(0), default=0, show_default=True,
              help="--vm, --kvm: the first entry to read.")
@buffer_size_option()
@click.option("--passes", type=click.IntRange(1, 1_000_000), default=1, show_default=True,
              help="--vm, --kvm: passes to read; the guest keeps running (--vm: --churn operations) between "
                   "them (a live snapshot).")
@click.option("--churn", type=click.IntRange(0), default=1000, show_default=True, metavar="N",
              help="--vm: guest operations between passes.")
@click.option("--until-dirty", type=click.IntRange(0), default=None, metavar="N",
              help="--vm, --kvm: keep making passes until one returns at most N changed entries (at most "
                   "--max-passes).")
@click.option("--max-passes", type=click.IntRange(1, 1_000_000), default=30, show_default=True,
              help="--vm, --kvm: the cap for --until-dirty.")
@level_option
@click.option("-T", "--threads", type=click.IntRange(0, 64), default=0, show_default=True, metavar="N",
              help="Compression threads, as zstd -T: 0 one per CPU; the records are read and laid out meanwhile.")
@force_option
@progress_option
@json_option
@click.option("-q", "--quiet", is_flag=True, help="No summary.")
@click.pass_context
def dump(ctx, output, vm_image, raw_input, qemu_input, qemu_section, kvm_pid, kvm_fd, ignore_readers, byte_order, order,
         entries, bolted_only, start_index,
         buffer_size, passes, churn, until_dirty, max_passes, level, threads, force, as_json, quiet):
    """Snapshot an HPT into a compressed snapshot file whose chunks are the
    exact kernel records (zstd -dc prints them).  Give exactly one source.

    \b
    Examples:
      htabtool dump --vm guest.img -o guest.htab
      htabtool dump --vm guest.img --passes 3 --churn 5000 -o live.htab
      htabtool dump --raw capture.bin --byte-order little --order 24 -o cap.htab
      htabtool dump --qemu migration.bin -o guest.htab
      htabtool dump --vm guest.img -o - | htabtool stat -
      htabtool dump -f --vm guest.img -o guest.htab     # replace guest.htab
      htabtool dump --kvm "$(pgrep -f qemu-system-ppc64)" -o guest.htab
      htabtool dump --raw capture.bin --byte-order little --order 28 -T 1 -o cap.htab
    """
    from htabtool import ops
    from htabtool.sources import VMReadOptions, WriteOptions, named_errors, open_output

    chosen = [n for n, v in (("--vm", vm_image), ("--raw", raw_input), ("--qemu", qemu_input),
                             ("--qemu-section", qemu_section),
                             ("--kvm", kvm_pid), ("--kvm-fd", kvm_fd)) if v is not None]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one source: --vm IMAGE, --raw FILE, --qemu FILE, --qemu-section FILE, "
                               "--kvm PID or --kvm-fd N" + (f" (got {' '.join(chosen)})" if chosen else ""))
    kvm = kvm_pid is not None or kvm_fd is not None
    if raw_input is None:
        refuse_options(ctx, ("order", "entries"), "--raw")
    if vm_image is None and not kvm:
        refuse_options(ctx, ("bolted_only", "start_index", "buffer_size", "passes", "until_dirty",
                             "max_passes"), "--vm or --kvm")
    if vm_image is None:
        refuse_options(ctx, ("churn",), "--vm (the simulated guest's operations between passes)")
    if not kvm:
        refuse_options(ctx, ("ignore_readers",), "--kvm or --kvm-fd")
    else:
        if byte_order is not None:
            raise click.UsageError("--byte-order does not go with --kvm: the kernel's records are in the host's "
                                   "byte order")
    if until_dirty is None:
        refuse_options(ctx, ("max_passes",), "--until-dirty")
    elif given(ctx, "passes"):
        raise click.UsageError("--passes does not go with --until-dirty (which makes passes up to --max-passes)")
    if passes == 1 and until_dirty is None:
        refuse_options(ctx, ("churn",), "--passes N (N > 1) or --until-dirty (the guest runs between passes)")
    check_files({"--vm": vm_image, "--raw": raw_input, "--qemu": qemu_input, "--qemu-section": qemu_section},
                {"-o": output}, force=force)
    write = WriteOptions(level=level, threads=threads or _cpus())
    read = VMReadOptions(byte_order=byte_order or "little", bolted_only=bolted_only, start_index=start_index,
                         buffer_size=buffer_size, passes=passes, churn=churn, until_dirty=until_dirty,
                         max_passes=max_passes)
    if kvm:
        from htabtool import kvm as kvm_module

        given_name = None  # the kernel's errors name the process and the fd themselves
        source_cm: contextlib.AbstractContextManager[RecordSource] = kvm_module.open_source(
            kvm_pid, kvm_fd, ignore_readers=ignore_readers, options=read)
    else:
        given_name = next(v for v in (vm_image, raw_input, qemu_input, qemu_section) if v is not None)
        given_name = "<stdin>" if given_name == "-" else given_name
        source_cm = _source(vm_image, raw_input, qemu_input, qemu_section, byte_order, order, entries, read)
    with named_errors(given_name) if given_name else contextlib.nullcontext():  # a content error names the source
        with source_cm as source:
            with open_output(output) as out, progress(source.progress_total, "dump") as advance:
                summary = ops.dump(source, out, write, progress=advance, on_pass=_pass_label(advance),
                                   output=output)
    if summary.converged is False and not quiet:
        click.echo(f"htabtool: {output}: did not converge: {plural(max_passes, 'pass', 'passes')} made, the last "
                   f"with {plural(summary.last_pass_changed, 'changed entry', 'changed entries')} "
                   f"(--until-dirty {until_dirty})", err=True)
    if as_json:
        emit_json(summary.to_json(), err=output == "-")
    elif not quiet:
        click.echo(f"{output}: {_summary(summary)}", err=True)


def _summary(s) -> str:
    if s.passes <= 1:
        valid = plural(s.valid, "valid entry", "valid entries")
    elif s.final_valid is not None:
        valid = (f"{plural(s.final_valid, 'valid entry', 'valid entries')} in the final table "
                 f"({s.last_pass_changed:,} changed in the last pass)")
    else:
        valid = (f"{plural(s.valid, 'valid entry', 'valid entries')} reported over the passes "
                 f"({s.last_pass_changed:,} in the last)")
    return (f"{plural(s.passes, 'pass', 'passes')}, {plural(s.records, 'record')}, {valid}, "
            f"{human_bytes(s.raw_bytes)} of records in {human_bytes(s.file_bytes)} ({s.seconds:.2f} s)")


def _cpus() -> int:
    """The CPUs this process may run on (-T 0)."""
    import os

    try:
        return max(1, min(64, len(os.sched_getaffinity(0))))
    except (AttributeError, OSError):
        return max(1, min(64, os.cpu_count() or 1))


def _pass_label(advance):
    """The bar's pass counter: ``dump: pass N``; a pass after the first is
    incremental, its size not known."""
    def on_pass(number: int) -> None:
        advance.label(f"dump: pass {number}")
        if number > 1:
            advance.total(None)

    return on_pass


@contextlib.contextmanager
def _source(vm_image, raw_input, qemu_input, qemu_section, byte_order, order, entries, read) -> Iterator[RecordSource]:
    """The one source the options name, open for the dump (``read``: the
    VMReadOptions of a VM)."""
    from htabtool.sources import RawStreamSource, open_input, order_for

    if vm_image is not None:
        from htabtool.sources import VMSource

        with VMSource.open(vm_image, read) as src:
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
