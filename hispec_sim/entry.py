"""The console scripts' first code (pyproject.toml [project.scripts]).

An interrupt that lands while a program's modules are still importing (torch takes about a
second) ends as any other does -- one line, exit status 130 -- instead of a traceback; and
once the command has returned (its output whole), a late Ctrl-C cannot cut the
interpreter's teardown short and turn a finished run into a silent exit 130. SIGTERM and
SIGHUP (kill, timeout, a cancelled CI job, a closed terminal) end a run as Ctrl-C does --
partial files removed, one line -- with exit status 128 + the signal.
"""
from __future__ import annotations

import contextlib
import importlib
import signal
import sys
import threading

TERMINATING = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the main thread is so that the clean-up of Ctrl-C runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def interrupt(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def _terminate(signum, frame):
    signal.signal(signum, signal.SIG_IGN)  # a second one must not cut the clean-up short
    raise Terminated(signum)


def not_ignored(signals) -> list[int]:
    """Those of `signals` the parent did not leave ignored (as nohup, or a shell's background
    job, does: such a signal stays ignored)."""
    return [s for s in signals if signal.getsignal(s) is not signal.SIG_IGN]


@contextlib.contextmanager
def handling(signals, handler):
    """Within: `handler` for each of `signals` (in the main thread, where signals arrive;
    elsewhere nothing changes); the previous handlers restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            if h is not None:  # None: a handler not set from Python, which cannot be put back
                signal.signal(s, h)


def terminate_as_interrupt():
    """Within: SIGTERM and SIGHUP raise Terminated, unless ignored by the parent."""
    return handling(not_ignored(TERMINATING), _terminate)


def exit_message(prog: str, e: KeyboardInterrupt, done: str = "nothing written") -> tuple[str, int]:
    """The one line and the exit status of a run ended by a signal."""
    if isinstance(e, Terminated):
        return f"{prog}: terminated by {signal.Signals(e.signum).name} ({done})", 128 + e.signum
    return f"{prog}: interrupted ({done})", 130


def _run(prog: str, module: str) -> int:
    with terminate_as_interrupt():
        try:
            main = importlib.import_module(module).main
        except KeyboardInterrupt as e:
            line, code = exit_message(prog, e)
            with contextlib.suppress(OSError, ValueError):  # stderr closed (None: print would use stdout) or broken
                if sys.stderr is not None:
                    print(line, file=sys.stderr)
            return code
        code = main()
    for s in (signal.SIGINT, *TERMINATING):  # the output is whole: the teardown is not cut short
        signal.signal(s, signal.SIG_IGN)
    return code


def sim() -> int:
    return _run("hispec-sim", "hispec_sim.cli")


def exec_main() -> int:
    return _run("hispec-exec", "hispec_exec.cli")
