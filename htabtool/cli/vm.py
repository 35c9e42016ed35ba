"""``htabtool vm``: create, run and inspect simulated VMs (thin over htabtool.sim.vmimage)."""

from __future__ import annotations

import click

from htabtool.cli.common import (
    SIZE,
    Group,
    check_files,
    emit_json,
    force_option,
    json_option,
    plural,
    printable,
    progress,
    progress_option,
)
from htabtool.sim.papr import PPC_MAX_HPT_ORDER, PPC_MIN_HPT_ORDER


def _emit(data: dict, as_json: bool, lines, kind: str) -> None:
    if as_json:
        from htabtool.ops.results import VMReport

        emit_json(VMReport(kind, data).to_json())
    else:
        for line in lines(data):
            click.echo(printable(line))  # names and strings from the image's state: no escapes to the terminal


@click.group("vm", cls=Group)
def vm():
    """Create, run and inspect simulated VMs.

    A VM image is one file holding a simulated POWER KVM guest: its hashed
    page table, the kernel's reverse map and a Linux-like guest that keeps
    changing the table.  dump and load work on it as on a real VM.

    \b
    Example:
      htabtool vm create guest.img --ram 4G --profile idle --seed 1
      htabtool vm run guest.img --seconds 10
      htabtool vm info guest.img
      htabtool vm stop guest.img
    """


@vm.command("create")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--ram", type=SIZE, metavar="SIZE",
              help="Guest RAM, e.g. 4G (sets the table size as QEMU does: 1/128 of RAM).")
@click.option("--order", type=click.IntRange(PPC_MIN_HPT_ORDER, PPC_MAX_HPT_ORDER),
              help="log2 of the table's bytes (18..46); RAM defaults to 128 times the table.")
@click.option(
    "--profile",
    type=click.Choice(["idle", "kernel-build", "database", "empty"]),
    default="idle",
    show_default=True,
    help="What the guest runs; 'empty' is an incoming VM (stopped, nothing mapped) to load into.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the guest model (same seed, same table).")
@click.option("--vrma", is_flag=True, help="Map the real-mode area on the first run, as KVM on POWER8/9 does.")
@click.option("--backing-page-size", "backing", type=SIZE, default="16M", show_default=True, metavar="SIZE",
              help="Host pages backing guest RAM (guest pages larger than this are refused).")
@click.option("--cpu", type=click.Choice(["POWER8", "POWER9", "POWER10"]), default="POWER8", show_default=True,
              help="The host CPU: POWER9 and POWER10 keep only v bits 0..51 and the segment size of an "
                   "entry (ISA 3.0).")
@force_option
@progress_option
@json_option
def create(image, ram, order, profile, seed, vrma, backing, cpu, force, as_json):
    """Create a VM image and boot its guest.  An IMAGE that exists is
    replaced only with -f.

    \b
    Example:
      htabtool vm create guest.img --ram 4G --profile idle --seed 1
      htabtool vm create dest.img --ram 4G --profile empty
      htabtool vm create -f guest.img --ram 4G     # replace guest.img
      htabtool vm create p9.img --ram 4G --cpu POWER9
    """
    from htabtool.sim.vmimage import create_image

    if ram is None and order is None:
        raise click.UsageError("give --ram SIZE or --order N")
    if backing & (backing - 1) or not (1 << 12) <= backing <= (1 << 34):
        raise click.BadParameter("must be a power of two from 4K to 16G", param_hint="--backing-page-size")
    check_files(outputs={"IMAGE": image}, force=force)
    with progress(None, "vm create"):
        info = create_image(
            image, ram=ram, order=order, profile=profile, seed=seed,
            backing_page_shift=backing.bit_length() - 1, vrma=vrma, force=force, cpu=cpu,
        )
    _emit(info, as_json, _create_lines, "info")


def _create_lines(info):
    from htabtool.sim.vmimage import format_size

    g = info["guest"]
    yield (
        f"created {info['path']}: order {info['order']} ({plural(info['entries'], 'entry', 'entries')}), "
        f"{format_size(info['ram_bytes'])} RAM, {info['cpu']} host, profile {g['profile']}, seed {g['seed']}: "
        f"{plural(info['valid'], 'valid entry', 'valid entries')} ({info['bolted']:,} bolted), vCPUs {info['vcpus']}"
    )


@vm.command("run")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--ops", type=click.IntRange(min=0),
              help="Run this many guest events (fork, exec, exit, mmap, faults, ...).")
@click.option("--seconds", type=click.FloatRange(min=0), help="Run this much guest time at the profile's rate.")
@progress_option
@json_option
def run(image, ops, seconds, as_json):
    """Let the guest run: it churns its page table.

    \b
    Example:
      htabtool vm run guest.img --ops 1000
      htabtool vm run guest.img --seconds 30 --json
    """
    from htabtool.sim.vmimage import run_image

    if (ops is None) == (seconds is None):
        raise click.UsageError("give exactly one of --ops N or --seconds S")
    with progress(None, "vm run"):
        stats = run_image(image, ops=ops, seconds=seconds)
    _emit(stats, as_json, _run_lines, "run")


def _run_lines(s):
    events = ", ".join(f"{k} {v:,}" for k, v in s["events"].items()) or "none"
    yield f"events: {events}"
    yield (
        f"entries: {s['entered']:,} entered, {s['removed']:,} removed, {s['protected']:,} re-protected, "
        f"{s['evicted']:,} evicted, {s['touched']:,} touched"
    )
    yield f"valid entries: {s['valid_before']:,} -> {s['valid_after']:,}; guest clock {s['clock_seconds']} s"


@vm.command("info")
@click.argument("image", type=click.Path(dir_okay=False))
@json_option
def info(image, as_json):
    """Show what a VM image holds.

    \b
    Example:
      htabtool vm info guest.img --json
    """
    from htabtool.sim.vmimage import image_info

    _emit(image_info(image), as_json, _info_lines, "info")


def _info_lines(i):
    from htabtool.sim.vmimage import format_size

    g = i["guest"]
    yield f"image:        {i['path']} (format {i['format_version']}, generation {i['generation']})"
    yield (f"table:        order {i['order']}, {plural(i['entries'], 'entry', 'entries')}, "
           f"{format_size(i['table_bytes'])}")
    yield f"RAM:          {format_size(i['ram_bytes'])}, backed by {format_size(1 << i['backing_page_shift'])} pages"
    yield f"host CPU:     {i['cpu']}"
    yield f"vCPUs:        {i['vcpus']}; MMU {'ready' if i['mmu_ready'] else 'not ready'}"
    yield (
        f"entries:      {i['valid']:,} valid ({i['bolted']:,} bolted, {i['absent']:,} absent, "
        f"{i['secondary']:,} secondary)"
    )
    progs = ", ".join(f"{k} {v:,}" for k, v in sorted(g["programs"].items())) or "none"
    yield (f"guest:        profile {g['profile']}, seed {g['seed']}, "
           f"{plural(g['processes'], 'process', 'processes')} ({progs})")
    yield f"clock:        {g['clock_seconds']} s, {plural(g['events'], 'event')}"
    hc = ", ".join(f"{k} {v:,}" for k, v in i["hcalls"].items()) or "none"
    yield f"hypercalls:   {hc}"
    yield f"file:         {plural(i['file_bytes'], 'byte')} ({i['disk_bytes']:,} on disk)"


@vm.command("stop")
@click.argument("image", type=click.Path(dir_okay=False))
@json_option
def stop(image, as_json):
    """Stop the vCPUs (loading into the VM works only while stopped).

    \b
    Example:
      htabtool vm stop guest.img
      htabtool vm stop guest.img --json
    """
    from htabtool.sim.vmimage import set_running

    _emit(set_running(image, False), as_json, _state_lines, "state")


@vm.command("cont")
@click.argument("image", type=click.Path(dir_okay=False))
@json_option
def cont(image, as_json):
    """Run the vCPUs again (writes through the htab fd then fail with EBUSY).

    \b
    Example:
      htabtool vm cont guest.img
      htabtool vm cont guest.img --json
    """
    from htabtool.sim.vmimage import set_running

    _emit(set_running(image, True), as_json, _state_lines, "state")


def _state_lines(r):
    yield f"{r['path']}: vCPUs {r['vcpus']}"
