"""The command line: thin click commands over the library.

Strategy: every command module under :mod:`htabtool.cli` is imported only
when its command runs (``htabtool --help`` stays fast: numpy, rich and
zstandard are imported by the commands that need them).  Each command opens
its inputs, makes one library call, and prints; the library owns the
messages.  Every :class:`~htabtool.errors.HtabError` and OSError becomes one
line ``htabtool: error: ...`` on stderr and exit status 2 (1 is kept for
"different" and "problems found", as cmp(1) does); ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from htabtool import __version__

# command name -> (module, attribute, one-line help)
COMMANDS = {
    "dump": ("htabtool.cli.dump", "dump", "Snapshot an HPT into a compressed snapshot file."),
    "load": ("htabtool.cli.load", "load", "Replay a snapshot into a VM, raw records or QEMU."),
    "diff": ("htabtool.cli.diff", "diff", "Compare the final tables of two snapshots."),
    "stat": ("htabtool.cli.stat", "stat", "Show what a snapshot holds."),
    "verify": ("htabtool.cli.verify", "verify", "Check a snapshot's integrity and meaning."),
    "show": ("htabtool.cli.show", "show", "Print a snapshot's entries, decoded and filtered."),
    "map": ("htabtool.cli.map", "map", "Draw the table: occupancy, PTEG fill, page sizes."),
    "migrate": ("htabtool.cli.migrate", "migrate", "Simulate a live migration of a VM's HPT, pass by pass."),
    "vm": ("htabtool.cli.vm", "vm", "Create, run and inspect simulated VMs."),
}

EXIT_OK = 0
EXIT_DIFFERENT = 1  # diff: the tables differ; verify: problems found
EXIT_TROUBLE = 2


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used, and which
    turns every error into one line and exit status 2."""

    def main(self, args=None, prog_name=None, **extra):
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(args=argv, prog_name=prog_name, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            _fail("interrupted", argv)
        except click.exceptions.UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                exc.show()
            else:
                hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
                click.echo(f"htabtool: error: {exc.format_message()}{hint}", err=True)
            sys.exit(EXIT_TROUBLE)
        except click.ClickException as exc:
            click.echo(f"htabtool: error: {exc.format_message()}", err=True)
            sys.exit(EXIT_TROUBLE)
        except BrokenPipeError:
            # the reader of our output went away (| head): stop quietly
            _quiet_stdout()
            sys.exit(EXIT_TROUBLE)
        except KeyboardInterrupt:
            _fail("interrupted", argv)
        except Exception as exc:
            from htabtool.errors import HtabError

            if not isinstance(exc, (HtabError, OSError, MemoryError)):
                raise
            _fail(_describe(exc), argv)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)

    def list_commands(self, ctx):
        return [name for name, (mod, _, _) in COMMANDS.items() if _module_exists(mod)]

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        if not _module_exists(module):
            return None
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _fail(message: str, argv) -> None:
    if "--debug" in argv:
        import traceback

        traceback.print_exc()
    click.echo(f"htabtool: error: {message}", err=True)
    sys.exit(EXIT_TROUBLE)


def _quiet_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _module_exists(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="htabtool")
@click.option("--debug", is_flag=True, help="Show a traceback instead of a one-line error.")
@click.pass_context
def cli(ctx, debug):
    """Save, restore, inspect and compare the hashed page table (HPT) of
    POWER KVM guests.

    \b
    Exit status: 0 success (or "same"), 1 "different" or "problems found",
    2 trouble (bad input, I/O error); errors are one line on stderr.

    \b
    Example:
      htabtool vm create guest.img --ram 4G --profile idle --seed 1
      htabtool dump --vm guest.img -o guest.htab
      htabtool stat guest.htab
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv=None) -> None:
    """The console script."""
    cli.main(args=argv, prog_name="htabtool")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, BlockingIOError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc) or type(exc).__name__
