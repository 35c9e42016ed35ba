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
    "vm": ("htabtool.cli.vm", "vm", "Create, run and inspect simulated VMs."),
}

EXIT_OK = 0
EXIT_DIFFERENT = 1
EXIT_TROUBLE = 2


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used."""

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


def _module_exists(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def plain_output() -> bool:
    """True when output must be plain: NO_COLOR set, TERM=dumb, or not a terminal."""
    return bool(os.environ.get("NO_COLOR")) or os.environ.get("TERM") == "dumb"


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
    """The console script: run the group, mapping errors to one line and exit 2."""
    from htabtool.errors import HtabError

    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        rv = cli.main(args=argv, prog_name="htabtool", standalone_mode=False)
    except click.exceptions.Abort:
        _die("interrupted", debug)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        # usage errors: click's own message, exit 2
        exc.show()
        sys.exit(EXIT_TROUBLE)
    except BrokenPipeError:
        # a reader of our stdout went away (| head): not an error of ours
        try:
            sys.stdout = None
        finally:
            os._exit(EXIT_TROUBLE if False else 0)
    except (HtabError, OSError, MemoryError) as exc:
        _die(_describe(exc), debug)
    except KeyboardInterrupt:
        _die("interrupted", debug)
    sys.exit(rv if isinstance(rv, int) else EXIT_OK)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, BlockingIOError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc) or type(exc).__name__


def _die(message: str, debug: bool) -> None:
    if debug:
        import traceback

        traceback.print_exc()
    click.echo(f"htabtool: error: {message}", err=True)
    sys.exit(EXIT_TROUBLE)
