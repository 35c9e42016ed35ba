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

import errno
import importlib
import os
import signal
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
    turns every error into one line and exit status 2, a broken pipe into
    exit status 141 and a signal into death by that signal (see
    :mod:`htabtool.cli.common`)."""

    def main(self, args=None, prog_name=None, complete_var=None, **extra):  # type: ignore[override]
        from htabtool.atomic import SIGNALS, Interrupted
        from htabtool.cli.common import EXIT_BROKEN_PIPE, StreamClosed, guard_streams, handle_signals, quiet_stdout

        argv = list(sys.argv[1:] if args is None else args)
        argv, debug = _take_debug(argv)
        extra.pop("standalone_mode", None)
        guard_streams()
        with handle_signals(restore=not _CONSOLE_SCRIPT):
            try:
                try:
                    code = self._run(argv, prog_name or "htabtool", complete_var, extra, debug)
                finally:
                    SIGNALS.raised = True  # the command has ended: a signal from now on is held
                sys.stdout.flush()
            except (Interrupted, KeyboardInterrupt, click.exceptions.Abort) as exc:
                signum = getattr(exc, "signum", signal.SIGINT)
                if SIGNALS.committed:
                    code = EXIT_OK  # the change was made before the signal: say so, as a success
                else:
                    _say("htabtool: interrupted")
                    _die(signum)
            except click.exceptions.Exit as exc:
                code = exc.exit_code
            except click.exceptions.UsageError as exc:
                if type(exc).__name__ == "NoArgsIsHelpError":
                    exc.show()
                else:
                    hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
                    _report(f"{exc.format_message()}{hint}", False)
                code = EXIT_TROUBLE
            except click.ClickException as exc:
                _report(exc.format_message(), False)
                code = EXIT_TROUBLE
            except StreamClosed as exc:
                _report(str(exc.strerror), debug)
                sys.stdout = open(os.devnull, "w")  # nothing left to flush at exit
                code = EXIT_TROUBLE
            except Exception as exc:
                from htabtool.errors import HtabError

                if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
                    # the reader of our output went away (| head): stop quietly, as SIGPIPE would
                    quiet_stdout()
                    code = EXIT_BROKEN_PIPE
                elif isinstance(exc, (HtabError, OSError, MemoryError)) or _short_of_memory(exc):
                    _report(_describe(exc), debug)
                    code = EXIT_TROUBLE
                else:
                    raise
        sys.exit(code)

    def make_context(self, info_name, args, parent=None, **extra):
        if parent is None and "terminal_width" not in extra:
            extra["terminal_width"] = _help_width()  # inherited by every subcommand's context
        return super().make_context(info_name, args, parent, **extra)

    def _run(self, argv, prog_name, complete_var, extra, debug) -> int:
        self._main_shell_completion(extra, prog_name, complete_var)
        with self.make_context(prog_name, argv, **extra) as ctx:
            ctx.ensure_object(dict)["debug"] = debug
            rv = self.invoke(ctx)
        return rv if isinstance(rv, int) else EXIT_OK

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


def _report(message: str, debug: bool) -> None:
    """One line on standard error (control characters of file names shown
    as escapes: a newline cannot split it); the traceback first with
    --debug."""
    from htabtool.cli.common import printable

    if debug:
        import traceback

        traceback.print_exc()
    _say(f"htabtool: error: {printable(message)}")  # if standard error is gone too, the exit status says it


def _say(line: str) -> None:
    try:
        click.echo(line, err=True)
    except OSError:
        pass


def _die(signum: int) -> None:
    import threading

    from htabtool.cli.common import die_by_signal

    if threading.current_thread() is threading.main_thread():
        die_by_signal(signum)
    sys.exit(128 + signum)


def _take_debug(argv: list[str]) -> tuple[list[str], bool]:
    """--debug anywhere before ``--`` (after the subcommand too)."""
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [a for a in argv[:end] if a != "--debug"]
    return kept + argv[end:], len(kept) != end


def _module_exists(module: str) -> bool:
    """Whether a command's module is there (``htabtool.cli.NAME``), found
    by the import system's own path finder without importing it (nor
    importlib.util, a millisecond of every start)."""
    from importlib.machinery import PathFinder

    package = module.rpartition(".")[0]
    return PathFinder.find_spec(module, sys.modules[package].__path__) is not None


def _help_width() -> int:
    """The width click's help formatter picks by itself (CliRunner's forced
    width; else that of :func:`htabtool.quickhelp.terminal_columns`, the
    one rule of the prebuilt help too)."""
    from click import formatting

    from htabtool import quickhelp

    if formatting.FORCED_WIDTH is not None:
        return formatting.FORCED_WIDTH
    return quickhelp.help_width(quickhelp.terminal_columns())


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="htabtool", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True,
              help="Show a traceback instead of a one-line error (before or after the command).")
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
    ctx.obj["debug"] = ctx.obj.get("debug") or debug


_CONSOLE_SCRIPT = False  # the process is ours: the signal handlers stay until it exits


def main(argv=None) -> None:
    """The console script."""
    global _CONSOLE_SCRIPT
    _CONSOLE_SCRIPT = True
    # numpy's BLAS, never used here, would allocate a buffer per core at
    # import: one thread is what htabtool needs, and all a low ulimit -v allows
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        cli.main(args=argv, prog_name="htabtool")
    except (MemoryError, SystemError) as exc:
        # short of memory before (or while) the group's own handler could
        # speak, e.g. a C extension's import under a low ulimit -v (which
        # fails as SystemError): one line, without allocating, and no exit
        # handlers (they may need memory too)
        if not _short_of_memory(exc):
            raise
        os.write(2, b"htabtool: error: out of memory (is the address space limited? see ulimit -v)\n")
        os._exit(EXIT_TROUBLE)


def _describe(exc: BaseException) -> str:
    if _short_of_memory(exc):
        return "out of memory (is the address space limited? see ulimit -v)"
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        where = f": {exc.filename}" if exc.filename else ""
        return f"too many open files{where} (see ulimit -n)"
    if isinstance(exc, OSError) and not isinstance(exc, BlockingIOError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc) or type(exc).__name__


def _short_of_memory(error: BaseException) -> bool:
    """MemoryError, ENOMEM, or an import that failed for want of memory
    (numpy's, under a low ulimit -v), anywhere in the exception's chain."""
    exc: BaseException | None = error
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM):
            return True
        text = str(exc).lower()
        if isinstance(exc, ImportError) and any(w in text for w in ("memory", "mmap", "map segment")):
            return True
        if isinstance(exc, RuntimeError) and "can't start new thread" in text:
            return True
        if isinstance(exc, SystemError):  # a C extension's import that failed to allocate
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
