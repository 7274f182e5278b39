#!/usr/bin/env bash
# Run a command as it would run on an x86-64 CPU without AVX, AVX2 or AVX-512 (SSE4.2 only):
# every numeric library is told to take its baseline code path, so a test that passes only
# with one vector unit's rounding shows up on the developers' machine. Usage:
#   bash scripts/as-baseline-x86.sh python -m pytest -q -n 2
set -euo pipefail
export ATEN_CPU_CAPABILITY=default                                   # torch's own kernels
export MKL_ENABLE_INSTRUCTIONS=SSE4_2 MKL_CBWR=COMPATIBLE            # torch's matmuls (MKL)
export ONEDNN_MAX_CPU_ISA=SSE41                                      # torch's oneDNN kernels
# numpy's dispatched loops: every target this numpy build dispatches to (the names differ between numpy 1.x and 2.x)
py=python; case "$(basename "${1:-}")" in python*) py=$1 ;; esac  # the command's own interpreter where it names one
NPY_DISABLE_CPU_FEATURES=$("$py" -c 'import numpy as n; c = getattr(n, "_core", None) or n.core
print(" ".join(c._multiarray_umath.__cpu_dispatch__))' 2>/dev/null || true)
export NPY_DISABLE_CPU_FEATURES
export OPENBLAS_CORETYPE=Nehalem                                     # numpy/scipy's OpenBLAS
exec "$@"
