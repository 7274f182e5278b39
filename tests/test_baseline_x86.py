"""scripts/as-baseline-x86.sh does what CI's second pass relies on: every numeric library
on its baseline code path (README, "Tests must not depend on the CPU")."""
from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import torch
import numpy
umath = (getattr(numpy, "_core", None) or numpy.core)._multiarray_umath  # numpy 2.x, 1.x
print(torch.backends.cpu.get_cpu_capability())
print(sorted(k for k in umath.__cpu_dispatch__ if umath.__cpu_features__.get(k)))  # dispatch targets left on
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="an x86-64 code-path switch")
def test_script_selects_baseline_code_paths():
    r = subprocess.run(["bash", str(REPO / "scripts" / "as-baseline-x86.sh"), sys.executable, "-c", PROBE],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    capability, numpy_targets = r.stdout.split("\n")[:2]
    assert capability in ("DEFAULT", "NO AVX"), r.stdout  # torch 2.13 calls the baseline DEFAULT, 2.4 "NO AVX"
    assert numpy_targets == "[]", r.stdout
