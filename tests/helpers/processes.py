"""The CLI as a real process (``python -m htabtool``) running this tree:
for signals, pipes, terminals, locks and kills, which a CliRunner in the
test's own process cannot show."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers.paths import env_with_root

#: the command line that runs htabtool
HTABTOOL = [sys.executable, "-m", "htabtool"]
#: the environment of a child that must import this tree's htabtool
ENV = env_with_root()


def run_htabtool(*args, cwd=None, env=None, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run ``htabtool ARGS...`` to its end, output captured (pass
    ``text=True`` for str); ``env`` defaults to :data:`ENV`."""
    return subprocess.run(HTABTOOL + [str(a) for a in args], cwd=cwd, env=ENV if env is None else env,
                          capture_output=True, timeout=timeout, **kw)


def spawn_htabtool(*args, cwd=None, env=None, **kw) -> subprocess.Popen:
    """Start ``htabtool ARGS...``; standard output and error are text pipes
    unless ``kw`` says otherwise; ``env`` defaults to :data:`ENV`."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("text", True)
    return subprocess.Popen(HTABTOOL + [str(a) for a in args], cwd=cwd, env=ENV if env is None else env, **kw)
