"""Both programs under a locale that is not UTF-8 (the POSIX locale with Python's coercion
off: ASCII on every stream and as the default file encoding): files are written as UTF-8,
which is what every reader here decodes, and a character the terminal cannot show is
escaped, not an error."""
from __future__ import annotations

import codecs
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hispec_sim

# PYTHONPATH: the package by its folder, because an editable install's finder holds that
# folder as text, which an ASCII locale cannot encode when the checkout's path is not ASCII
ASCII_ENV = {**os.environ, "LC_ALL": "POSIX", "LANG": "POSIX", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0",
             "PYTHONIOENCODING": "", "PYTHONPATH": str(Path(hispec_sim.__file__).resolve().parents[1])}


def run(*args, cwd):
    return subprocess.run([sys.executable, "-c", "import sys; from hispec_sim.cli import main; sys.exit(main())",
                           *args], env=ASCII_ENV, cwd=cwd, capture_output=True, timeout=300)


def test_the_locale_is_ascii():
    r = subprocess.run([sys.executable, "-c", "import locale, sys; print(locale.getpreferredencoding(), sys.stdout.encoding)"],
                       env=ASCII_ENV, capture_output=True, text=True)
    # glibc names it ANSI_X3.4-1968, others US-ASCII: the codec is what counts
    assert [codecs.lookup(name).name for name in r.stdout.split()] == ["ascii", "ascii"]  # else the cases below test nothing


@pytest.mark.slow  # a report: a few seconds of search and serving
def test_report_is_written_as_utf8(tmp_path):
    out = tmp_path / "r.md"
    r = run("report", "--profile", "a100_llama70b", "--format", "md", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "\u2605" in out.read_bytes().decode("utf-8")  # the recommended family's star


def test_a_path_the_terminal_cannot_show_is_escaped(tmp_path):
    out = os.fsencode(tmp_path) + b"/plan-\xc3\xa9.json"  # bytes: the path as given, whatever this locale is
    r = run("optimize", "--profile", "a100_llama70b", "--out", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert os.path.exists(out) and b"plan written to " in r.stdout and b"\\udcc3\\udca9" in r.stdout
