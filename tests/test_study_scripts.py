"""Every study and benchmark script answers --help with its usage and writes nothing.

Most of them rewrite a committed record when run; one without an argument parser once took
`--help` for a run and rewrote studies/paper_inputs/AUDIT.md (docs check 24).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# attention_kernel.py takes a data folder and prints; vidur_driver.py runs inside Vidur's own venv
NOT_CLI = {"attention_kernel.py", "vidur_driver.py"}
SCRIPTS = sorted(p for p in [*ROOT.glob("studies/*/*.py"), *ROOT.glob("tests/bench/*.py")]
                 if p.name not in NOT_CLI and 'if __name__ == "__main__"' in p.read_text(encoding="utf-8"))


def _tree(folder: Path) -> dict:
    """Every file's size and modification time but Python's bytecode cache (running a script
    writes it): a write shows without reading the folders' 37 MB twice per script."""
    return {p: (s.st_size, s.st_mtime_ns) for p in folder.rglob("*")
            if "__pycache__" not in p.parts and p.is_file() and (s := p.stat())}


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_help_prints_usage_and_writes_nothing(script):
    watched = (script.parent, ROOT / "profiles")  # the profile builders write the shipped profiles
    before = [_tree(f) for f in watched]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("usage:"), r.stdout[:500]
    assert [_tree(f) for f in watched] == before, "--help wrote a file"
