"""What the commands share: options that mean one thing everywhere, output
for people (rich, only on a terminal) and for scripts (--json), progress,
and the safety rules every command follows.  A new command uses these and
nothing of its own:

- :func:`force_option` (``-f/--force``) and :func:`check_files`: call it
  with the command's inputs and outputs (option name -> path) before
  anything is opened.  An output that exists is refused (exit 2) without
  ``-f``; an output that is one of the inputs (same device and inode,
  through symlinks and hard links) is refused even with it; binary data to
  standard output (``-``) that is a terminal is refused without ``-f``;
  ``-`` as an input with a terminal on standard input is refused, and so is
  ``-`` named by two inputs.  The path rules are
  :func:`htabtool.atomic.check_destination`.
- Standard output carries one thing: when a command's data goes to ``-``,
  its report and messages go to standard error (:func:`echo_summary`).
- Signals: :func:`handle_signals` (used by :func:`htabtool.cli.main`)
  makes SIGTERM, SIGHUP and SIGINT raise
  :class:`htabtool.atomic.Interrupted`, so that every cleanup runs; the
  command then prints ``htabtool: interrupted`` and dies by the signal
  (exit status 128 + N).  A signal after the command's commit point
  (:func:`htabtool.atomic.committed`) lets it finish and report success.
- A broken pipe ends the command quietly with exit status 141
  (:data:`EXIT_BROKEN_PIPE`, what a shell reports for SIGPIPE); a closed
  standard stream (``>&-``) is an error naming it (:func:`guard_streams`).
- :func:`progress_option` (``--progress/--no-progress``) and
  :func:`progress`: a bar on standard error when it is a terminal, or
  forced; ``NO_COLOR`` takes its colour, not the bar.
- :data:`SIZE` (a click type) and :func:`parse_size`: every size option
  takes ``64K``, ``1M``, ``4G``, ``4GiB`` or plain bytes.
- :class:`Command` (every command's class, ``@click.command(cls=Command)``)
  and :class:`Group`: a library error that names a parameter of the call
  (``HtabError.param``, by its Python name) is said with the option's name
  in its place (:func:`flag_message`, one mapping: :data:`FLAGS`).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import sys
from collections.abc import Iterator, Sequence

import click

from htabtool.errors import HtabError

BYTE_ORDER = click.Choice(["little", "big"])
#: a file argument or option (``-`` for a standard stream): click completes file names for it
PATH = click.Path(allow_dash=True, readable=False)  # the commands say what is wrong with a file
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a process killed by SIGPIPE
HANDLED_SIGNALS = ("SIGTERM", "SIGHUP", "SIGINT")


# -- the library's parameter names, said as the options' -----------------------------

#: a library parameter whose option is not the parameter's name with dashes (``start_index``: ``--start-index``)
FLAGS = {"pass_number": "--pass"}


def flag_name(param: str) -> str:
    """The command-line option of the library parameter ``param``."""
    return FLAGS.get(param, "--" + param.replace("_", "-"))


def flag_message(exc: HtabError) -> str:
    """The message of a library error with its parameters (``exc.param``)
    named as the options that set them: the first mention of each."""
    import re

    message = str(exc)
    params = exc.param
    for param in (params,) if isinstance(params, str) else (params or ()):
        message = re.sub(rf"(?<![\w-]){re.escape(param)}(?![\w-])", flag_name(param), message, count=1)
    return message


@contextlib.contextmanager
def flag_names():
    """Library errors raised in the block that name a parameter name its
    option instead (:func:`flag_message`)."""
    from htabtool.errors import HtabError

    try:
        yield
    except HtabError as exc:
        if exc.param is not None and exc.args:
            exc.args = (flag_message(exc), *exc.args[1:])
            exc.param = None  # said once
        raise


class Command(click.Command):
    """A command whose library errors name the options (:func:`flag_names`)."""

    def invoke(self, ctx: click.Context):
        with flag_names():
            return super().invoke(ctx)


class Group(click.Group):
    """A group of :class:`Command` s."""

    command_class = Command


# -- sizes -------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """'64K', '4G', '512M', '4GiB', '1T' or plain bytes; binary multiples
    (the one size parser; :func:`htabtool.sim.vmformat.parse_size`)."""
    from htabtool.sim.vmimage import parse_size as parse

    return parse(text)


class SizeType(click.ParamType):
    """A size with a suffix (64K, 1M, 4G), within ``lo``..``hi`` bytes."""

    name = "size"

    def __init__(self, lo: int | None = None, hi: int | None = None):
        self.lo, self.hi = lo, hi

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            n = value
        else:
            from htabtool.errors import UsageError

            try:
                n = parse_size(value)
            except UsageError as exc:
                self.fail(str(exc), param, ctx)
        if (self.lo is not None and n < self.lo) or (self.hi is not None and n > self.hi):
            self.fail(f"{value} is outside {self.lo:,}..{self.hi:,} bytes", param, ctx)
        return n


SIZE = SizeType()


# -- -f, inputs and outputs ----------------------------------------------------------------


def force_option(f):
    """``-f/--force``: replace an output that exists, write binary data to a terminal."""
    return click.option("-f", "--force", is_flag=True,
                        help="Replace an output file that exists; write binary data to a terminal.")(f)


def given(ctx: click.Context, *names: str) -> list[str]:
    """Which of the parameters ``names`` the user gave (on the command line
    or in the environment), as their option names (``--churn``)."""
    from click.core import ParameterSource

    out = []
    for name in names:
        if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            param = next(p for p in ctx.command.params if p.name == name)
            out.append(max(param.opts, key=len))
    return out


def refuse_options(ctx: click.Context, names, where: str) -> None:
    """A usage error naming the options of ``names`` that were given but do
    not apply (``where`` says what they go with): never silently ignored."""
    got = given(ctx, *names)
    if got:
        raise click.UsageError(f"{' and '.join(got)} {'goes' if len(got) == 1 else 'go'} with {where}")


class StreamClosed(OSError):
    """A standard stream that was closed when the command started."""


_CLOSED: set[int] = set()


def check_files(inputs: dict | None = None, outputs: dict | None = None, *, force: bool = False,
                binary: bool = True) -> None:
    """The rules of every command's files (see the module's notes);
    ``inputs`` and ``outputs`` map option names to paths (None: not given).
    Raises :class:`htabtool.atomic.OutputRefused` (exit 2)."""
    from htabtool.atomic import OutputRefused, check_destination

    inputs = {k: v for k, v in (inputs or {}).items() if v is not None}
    outputs = {k: v for k, v in (outputs or {}).items() if v is not None}
    stdin = [k for k, v in inputs.items() if v == "-"]
    if len(stdin) > 1:
        raise OutputRefused(f"only one input can be standard input (-): {' and '.join(stdin)} both are")
    stdout = [k for k, v in outputs.items() if v == "-"]
    if len(stdout) > 1:
        raise OutputRefused(f"only one output can be standard output (-): {' and '.join(stdout)} both are")
    files = [(k, v) for k, v in outputs.items() if v != "-"]
    for k, (name, path) in enumerate(files):
        for other, earlier in files[:k]:
            if _same_file(path, earlier):
                raise OutputRefused(f"{path}: is also the output of {other}; give {name} another name")
    if stdin:
        check_stdin(stdin[0])
    for name, path in outputs.items():
        if path == "-":
            check_stdout(name, force=force, binary=binary)
        else:
            check_destination(path, inputs.values(), force=force)


def _same_file(a: str, b: str) -> bool:
    """The same name, or two names of one file (symlinks, hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_stdin(name: str = "-") -> None:
    """``-`` as an input: standard input must be open and not a terminal."""
    from htabtool.atomic import OutputRefused

    if 0 in _CLOSED or sys.stdin is None:
        raise OutputRefused(f"{name} -: standard input is closed")
    if _isatty(sys.stdin):
        raise OutputRefused(f"{name} -: standard input is a terminal; give a file, or pipe the data in")


def check_stdout(name: str = "-o", *, force: bool = False, binary: bool = True) -> None:
    """``-`` as an output: standard output must be open, and binary data
    goes to a terminal only with ``force`` (as gzip and zstd)."""
    from htabtool.atomic import OutputRefused

    if 1 in _CLOSED or sys.stdout is None:
        raise OutputRefused(f"{name} -: standard output is closed")
    if binary and not force and _isatty(sys.stdout):
        raise OutputRefused(f"{name} -: binary data not written to a terminal (redirect it, or use -f)")


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def echo_summary(text: str, data_on_stdout: bool = False) -> None:
    """A report for people: on standard output, unless the command's data
    go there (``-``): then on standard error, so that standard output
    carries one thing."""
    click.echo(text, err=data_on_stdout)


# -- the standard streams, signals and broken pipes -----------------------------------------


class _ClosedRaw(io.RawIOBase):
    def __init__(self, fd: int, what: str):
        self._fd, self._what = fd, what

    def fileno(self):
        return self._fd

    def readable(self):
        return self._fd == 0

    def writable(self):
        return self._fd != 0

    def readinto(self, b):
        raise StreamClosed(errno.EBADF, f"{self._what} is closed")

    def write(self, b):
        raise StreamClosed(errno.EBADF, f"{self._what} is closed")


def guard_streams() -> None:
    """Standard streams closed when the command started (``>&-``,
    ``<&-``): their descriptors are taken by /dev/null (opened so that any
    use fails), so that no file the command opens becomes its standard
    output, and using them is an error that names them (never a
    traceback, never a report silently lost)."""
    _CLOSED.clear()
    for fd, name in ((0, "standard input"), (1, "standard output"), (2, "standard error")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        _CLOSED.add(fd)
        null = os.open(os.devnull, os.O_WRONLY if fd == 0 else os.O_RDONLY)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if fd == 2:  # nowhere to say anything: say it to nobody
            sys.stderr = open(os.devnull, "w")
        elif fd == 0:
            sys.stdin = io.TextIOWrapper(io.BufferedReader(_ClosedRaw(fd, name)))
        else:
            sys.stdout = io.TextIOWrapper(io.BufferedWriter(_ClosedRaw(fd, name)), write_through=True)


@contextlib.contextmanager
def handle_signals(restore: bool = True):
    """SIGTERM, SIGHUP and SIGINT raise :class:`htabtool.atomic.Interrupted`
    in this block (a signal ignored when the command started stays
    ignored, as nohup wants); the previous handlers are put back after
    (``restore``; a process that exits right after keeps them, so that a
    signal while it exits is held, not its death)."""
    from htabtool.atomic import SIGNALS, on_signal

    SIGNALS.reset()
    previous = {}
    import threading

    if threading.current_thread() is threading.main_thread():
        for name in HANDLED_SIGNALS:
            num = getattr(signal, name, None)
            if num is None:
                continue
            old = signal.getsignal(num)
            if old is signal.SIG_IGN:
                continue
            previous[num] = old
            signal.signal(num, on_signal)
    try:
        yield
    finally:
        if restore:
            for num, old in previous.items():
                signal.signal(num, old)
        elif previous and hasattr(signal, "pthread_sigmask"):
            # the interpreter's shutdown puts the default actions back: a signal
            # then would kill a command that has done its work; blocked, it is
            # dropped when the process exits with its status
            signal.pthread_sigmask(signal.SIG_BLOCK, set(previous))


def die_by_signal(signum: int) -> None:
    """End the process by ``signum`` (its default action), so that the
    shell sees 128 + N and a loop around the command stops on Ctrl-C."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    signal.signal(signum, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    os.kill(os.getpid(), signum)
    sys.exit(128 + signum)  # if it did not end us (it should have)


def quiet_stdout() -> None:
    """Standard output to /dev/null (its reader went away): nothing more is
    written there, not even at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    except (OSError, ValueError):
        pass


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (schema in the man page).")(f)


def buffer_size_option(default: int = 65536,
                       help_text: str = "The read(2)/write(2) size on the htab fd (64K, 1M, ...)."):
    return click.option(
        "--buffer-size",
        type=SizeType(25, 1 << 30),
        default=default,
        show_default=True,
        metavar="SIZE",
        help=help_text,
    )


def plain(stream=None) -> bool:
    """Plain text: NO_COLOR set, TERM=dumb, or the stream is not a terminal."""
    stream = stream or sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return True
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return True


def emit_json(obj, err: bool = False) -> None:
    import json  # here: --help and the commands without --json never pay for it

    click.echo(json.dumps(obj, indent=2), err=err)


def console(stderr: bool = False):
    """A rich Console for a terminal (imported only when one is used)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def progress_option(f):
    """``--progress/--no-progress``: force the progress bar on or off."""

    def remember(ctx, param, value):
        ctx.meta["htabtool.progress"] = value
        return value

    return click.option("--progress/--no-progress", "show_progress", default=None, expose_value=False,
                        callback=remember, is_eager=True,
                        help="Show a progress bar on standard error, or not (default: when it is a terminal).")(f)


def progress_wanted() -> bool:
    """Is a bar to be shown?  --progress/--no-progress when given, else
    when standard error is a terminal (not TERM=dumb).  NO_COLOR takes the
    bar's colour, not the bar."""
    ctx = click.get_current_context(silent=True)
    forced = None if ctx is None else ctx.meta.get("htabtool.progress")
    if forced is not None:
        return forced
    return os.environ.get("TERM") != "dumb" and _isatty(sys.stderr)


class Advance:
    """What :func:`progress` yields: ``advance(n)`` counts ``n`` more,
    ``advance.label(text)`` changes the label (dump's pass counter),
    ``advance.total(n)`` the total (None: not known).  This one, without a
    bar, does nothing."""

    def __call__(self, n: int) -> None:
        return None

    def label(self, text: str) -> None:
        return None

    def total(self, n: int | None) -> None:
        return None


class _BarAdvance(Advance):
    def __init__(self, bar, task):
        self._bar, self._task = bar, task

    def __call__(self, n: int) -> None:
        self._bar.advance(self._task, n)

    def label(self, text: str) -> None:
        self._bar.update(self._task, description=text)

    def total(self, n: int | None) -> None:
        self._bar.update(self._task, total=n or None, completed=0)


@contextlib.contextmanager
def progress(total, label: str) -> Iterator[Advance]:
    """A progress bar on stderr (see :func:`progress_wanted`); otherwise
    nothing.  Yields an :class:`Advance`.  ``total`` may be a callable: it
    is asked only when a bar is shown."""
    if not progress_wanted():
        yield Advance()
        return
    if callable(total):
        total = total()
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    con = Console(stderr=True, highlight=False, force_terminal=True, no_color=bool(os.environ.get("NO_COLOR")))
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeRemainingColumn(),
        console=con, transient=True,
    ) as bar:
        yield _BarAdvance(bar, bar.add_task(label, total=total or None))


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 record``, ``2 records``, ``1,024 entries``: thousands
    separators and the right number everywhere."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def table_lines(rows: Sequence[tuple[str, object]]) -> str:
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def printable(value: object) -> str:
    """Text safe for a terminal: control characters (from a file's metadata,
    say) shown as escapes, never sent."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def show(rows: list[tuple[str, object]], title: str | None = None) -> None:
    """Key/value rows: a rich table on a terminal, aligned text otherwise."""
    text = [(k, printable(v)) for k, v in rows]
    if plain():
        if title:
            click.echo(title)
        click.echo(table_lines(text))
        return
    from rich.table import Table

    t = Table(title=title, show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    from rich.markup import escape

    for k, v in text:
        t.add_row(k, escape(v))
    console().print(t)


def level_option(f):
    return click.option(
        "--level",
        type=click.IntRange(-7, 22),
        default=None,
        metavar="N",
        help="zstd compression level (default 1: fast; 3-19 smaller, slower).",
    )(f)


# -- labelled bars (stat's histograms, map) -------------------------------------------

_EIGHTHS = " ▏▎▍▌▋▊▉█"


def bar(fraction: float, width: int, plain_text: bool) -> str:
    """A horizontal bar ``width`` characters at most: '#' in plain text,
    block characters (to an eighth of a cell) on a terminal; a count above
    zero shows at least a sliver."""
    fraction = min(max(fraction, 0.0), 1.0)
    if plain_text:
        n = round(fraction * width)
        return "#" * (n or (1 if fraction > 0 else 0))
    eighths = round(fraction * width * 8) or (1 if fraction > 0 else 0)
    return "█" * (eighths // 8) + (_EIGHTHS[eighths % 8] if eighths % 8 else "")


def labelled_bars(counts: dict, width: int = 30, plain_text: bool | None = None) -> list[tuple[str, str]]:
    """(label, "bar  count  percent") rows, one per bucket of ``counts``
    (label -> count), bars scaled to the largest bucket."""
    plain_text = plain() if plain_text is None else plain_text
    total = sum(counts.values()) or 1
    top = max(counts.values(), default=0) or 1
    cw = max((len(f"{c:,}") for c in counts.values()), default=1)
    return [
        (str(label), f"{bar(c / top, width, plain_text):<{width}} {c:>{cw},} {100 * c / total:5.1f} %")
        for label, c in counts.items()
    ]
