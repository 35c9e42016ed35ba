"""htabtool load: replay a snapshot into a target."""

from __future__ import annotations

import contextlib

import click

from htabtool.cli.common import (
    BYTE_ORDER,
    PATH,
    Command,
    buffer_size_option,
    check_files,
    emit_json,
    force_option,
    human_bytes,
    json_option,
    plural,
    progress,
    progress_option,
    refuse_options,
)


@click.command(cls=Command)
@click.argument("snapshot", metavar="SNAP|-", type=PATH)
@click.option("--vm", "vm_image", metavar="IMAGE", type=PATH,
              help="Target: a simulated VM image, through its htab write fd.")
@click.option("--create", is_flag=True,
              help="--vm: create the image (of the snapshot's table size) if it does not exist.")
@click.option("--stop", is_flag=True,
              help="--vm: stop a running VM first (the kernel refuses writes while vCPUs run: EBUSY).")
@click.option("--verify", "verify_after", is_flag=True,
              help="--vm: dump the VM again after loading and compare with the snapshot.")
@buffer_size_option(help_text="--vm: the most bytes of records handed to the htab fd at a time "
                               "(each record is its own write(2)).")
@click.option("--kvm", "kvm_pid", metavar="PID[:FD]",
              help="Target: the real KVM guest of process PID (QEMU, stopped), one record per write(2) of "
                   "the kernel's htab fd.")
@click.option("--kvm-fd", "kvm_fd", type=click.IntRange(0), metavar="N",
              help="Target: the KVM VM fd N this process was given.")
@click.option("--raw-out", metavar="FILE|-", type=PATH,
              help="Target: the exact kernel records (all passes), for a kernel write fd.")
@click.option("--byte-order", type=BYTE_ORDER, default=None,
              help="--raw-out: turn the record headers to this byte order (default: the snapshot's).")
@click.option("--qemu-section", metavar="OUT|-", type=PATH,
              help="Target: QEMU spapr/htab section payloads (START, then one part per pass).")
@click.option("--qemu-splice", metavar="MIG", type=PATH,
              help="Target: a copy of the QEMU migration stream MIG with its htab replaced (needs -o).")
@click.option("-o", "--output", metavar="NEW|-", type=PATH, help="--qemu-splice: the new migration stream.")
@force_option
@progress_option
@json_option
@click.option("-q", "--quiet", is_flag=True, help="No summary.")
@click.pass_context
def load(ctx, snapshot, vm_image, create, stop, verify_after, buffer_size, kvm_pid, kvm_fd, raw_out, byte_order,
         qemu_section, qemu_splice,
         output, force, as_json, quiet):
    """Replay a snapshot into a target: a simulated VM, a raw record stream,
    or QEMU.  The whole snapshot is checked before the first write, so a
    damaged snapshot leaves the target as it was.  An output file that
    exists is replaced only with -f; --vm IMAGE is changed in place (all or
    nothing).

    \b
    Examples:
      htabtool load guest.htab --vm guest.img
      htabtool load guest.htab --vm new.img --create
      htabtool dump --vm a.img -o - | htabtool load - --vm b.img --create
      htabtool load guest.htab --raw-out records.bin
      htabtool load guest.htab --qemu-splice saved.mig -o restored.mig
      htabtool load guest.htab --kvm "$(pgrep -f qemu-system-ppc64)"
    """
    from htabtool import ops
    from htabtool.errors import HtabError
    from htabtool.sources import open_snapshot

    chosen = [n for n, v in (("--vm", vm_image), ("--raw-out", raw_out), ("--qemu-section", qemu_section),
                             ("--qemu-splice", qemu_splice), ("--kvm", kvm_pid), ("--kvm-fd", kvm_fd)) if v is not None]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one target: --vm IMAGE, --raw-out FILE, --qemu-section OUT, "
                               "--qemu-splice MIG -o NEW, --kvm PID or --kvm-fd N"
                               + (f" (got {' '.join(chosen)})" if chosen else ""))
    if (output is not None) != (qemu_splice is not None):
        raise click.UsageError("-o NEW goes with --qemu-splice MIG (and --qemu-splice needs it)")
    if vm_image is None:
        refuse_options(ctx, ("create", "stop", "verify_after", "buffer_size"), "--vm")
    if raw_out is None:
        refuse_options(ctx, ("byte_order",), "--raw-out")
    check_files({"SNAP": snapshot, "--qemu-splice": qemu_splice},
                {"--raw-out": raw_out, "--qemu-section": qemu_section, "-o": output}, force=force)
    target: ops.Target
    if kvm_pid is not None or kvm_fd is not None:
        target = ops.KVMTarget(kvm_pid, kvm_fd)
    elif vm_image is not None:
        target = ops.VMTarget(vm_image, create=create, stop=stop, verify=verify_after, buffer_size=buffer_size)
    elif raw_out is not None:
        target = ops.RawTarget(raw_out, byte_order)
    elif qemu_section is not None:
        target = ops.QemuSectionTarget(qemu_section)
    else:
        target = ops.QemuSpliceTarget(qemu_splice, output)
    with open_snapshot(snapshot) as snap:
        ops.check_sound(snap)
        bar = progress(lambda: snap.trailer().raw_size, "load") if vm_image is not None else contextlib.nullcontext()
        with bar as advance:
            report = ops.load(snap, target, progress=advance, checked=True)
    to_stderr = "-" in (raw_out, qemu_section, output)
    if as_json:
        emit_json(report.to_json(), err=to_stderr)
    elif not quiet:
        click.echo(_summary(report.to_json()), err=True)
    if report.verified is False:
        raise HtabError(f"--verify: the VM's table differs from the snapshot "
                        f"({report.to_json().get('differences')} entries)")


def _summary(r: dict) -> str:
    if r["target"] == "vm":
        extra = "; verified: identical" if r.get("verified") else ""
        return (f"{r['snapshot']} -> {r['image']}: {plural(r['records'], 'record')} in {plural(r['writes'], 'write')} "
                f"(one record each){extra}")
    if r["target"] == "kvm":
        return (f"{r['snapshot']} -> process {r['pid']} (VM fd {r['vm_fd']}): {plural(r['records'], 'record')} in "
                f"{plural(r['writes'], 'write')}")
    if r["target"] == "raw":
        return f"{r['snapshot']} -> {r['output']}: {human_bytes(r['bytes'])} of records"
    if r["target"] == "qemu-section":
        return f"{r['snapshot']} -> {r['output']}: {plural(r['parts'], 'part')}, {plural(r['records'], 'record')}"
    return (f"{r['snapshot']} -> {r['output']}: {plural(r['records'], 'record')} in {plural(r['parts'], 'htab part')}, "
            f"one per pass; QEMU's {plural(r['dropped_parts'], 'htab PART')} left out")
