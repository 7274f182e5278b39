"""A regular (non-editable) install works away from the checkout: the wheel carries the
shipped profiles with their sources' licenses, the trained checkpoint and the held-out
corpus, and both programs find them there (README, "Quick start")."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # builds a 20 MB wheel
def test_the_wheel_carries_what_the_programs_read(tmp_path):
    src = tmp_path / "src"  # only what the wheel is built from: no build/ left in the checkout
    src.mkdir()
    shutil.copy2(REPO / "pyproject.toml", src)
    for name in ("hispec_sim", "hispec_exec", "profiles"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel, = (tmp_path / "dist").glob("hispec-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = [p.relative_to(REPO).as_posix() for p in (REPO / "profiles").rglob("*") if p.is_file()
               and "__pycache__" not in p.parts]
    assert {"profiles/a100_llama70b.json", "profiles/sources/vidur/LICENSE"} <= set(shipped)
    assert {"hispec_sim/" + p for p in shipped} <= names
    for package in ("checkpoints", "corpus"):
        files = [p.relative_to(REPO).as_posix() for p in (REPO / "hispec_exec" / package).iterdir() if p.is_file()]
        assert files and set(files) <= names, package

    site = tmp_path / "site"  # a pure wheel installed is its archive unpacked
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the checkout's editable install

    def run(program: str, *args: str) -> subprocess.CompletedProcess:
        code = f"import sys, {program}.cli as c; assert c.__file__.startswith({str(site)!r}), c.__file__; " \
               f"sys.exit(c.main(sys.argv[1:]))"
        r = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        return r

    listed = {row["name"] for row in json.loads(run("hispec_sim", "profiles", "--json").stdout)}
    assert listed == {Path(p).stem for p in shipped if p.count("/") == 1 and p.endswith(".json")}
    assert "best: [" in run("hispec_sim", "optimize", "--profile", "a100_llama70b", "--top", "1").stdout
    assert "tokens/s" in run("hispec_exec", "generate", "--prompt", "def f(", "--max-new-tokens", "4",
                             "--levels", "2,16", "--propose", "2").stderr  # its speed goes to stderr


_INTERRUPTED_IMPORT = """
import importlib.abc, os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a shell (xdist workers may ignore it)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
class Interrupt(importlib.abc.MetaPathFinder):  # a real signal while the program's modules import (torch: a second)
    def find_spec(self, name, path=None, target=None):
        if name == sys.argv[1] + ".cli":
            os.kill(os.getpid(), getattr(signal, sys.argv[2]))
sys.meta_path.insert(0, Interrupt())
from hispec_sim import entry
sys.exit(entry.sim() if sys.argv[1] == "hispec_sim" else entry.exec_main())
"""

_LATE_INTERRUPT = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from hispec_sim import entry
sig = sys.argv[1]
sys.argv[1:] = ["profiles"]
code = entry.sim()
os.kill(os.getpid(), getattr(signal, sig))  # after the command returned: the teardown is not cut short
print("exit", code)
sys.exit(code)
"""


@pytest.mark.parametrize("sig,code,said", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated by SIGTERM")])
@pytest.mark.parametrize("package,prog", [("hispec_sim", "hispec-sim"), ("hispec_exec", "hispec-exec")])
def test_console_scripts_end_an_interrupt_during_import_in_one_line(package, prog, sig, code, said):
    r = subprocess.run([sys.executable, "-c", _INTERRUPTED_IMPORT, package, sig], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == code and r.stderr == f"{prog}: {said} (nothing written)\n", r.stderr[-2000:]


def test_an_interrupt_during_import_with_stderr_closed_writes_nothing_to_stdout():
    """With stderr closed (`2>&-`: sys.stderr is None) the line is dropped, not printed to stdout."""
    r = subprocess.run([sys.executable, "-c", _INTERRUPTED_IMPORT, "hispec_sim", "SIGINT"], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL, text=True, timeout=120, preexec_fn=lambda: os.close(2))
    assert r.returncode == 130 and r.stdout == ""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_late_interrupt_does_not_change_a_finished_run(sig):
    r = subprocess.run([sys.executable, "-c", _LATE_INTERRUPT, sig], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.endswith("exit 0\n") and r.stderr == "", (r.stdout[-500:], r.stderr[-2000:])
