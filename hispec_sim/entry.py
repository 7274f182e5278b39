"""The console scripts' first code (pyproject.toml [project.scripts]).

An interrupt that lands while a program's modules are still importing (torch takes about a
second) ends as any other does -- one line, exit status 130 -- instead of a traceback; and
once the command has returned (its output whole), a late Ctrl-C cannot cut the
interpreter's teardown short and turn a finished run into a silent exit 130.
"""
from __future__ import annotations

import importlib
import signal
import sys


def _run(prog: str, module: str) -> int:
    try:
        main = importlib.import_module(module).main
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (nothing written)", file=sys.stderr)
        return 130
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code


def sim() -> int:
    return _run("hispec-sim", "hispec_sim.cli")


def exec_main() -> int:
    return _run("hispec-exec", "hispec_exec.cli")
