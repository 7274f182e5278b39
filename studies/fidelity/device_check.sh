#!/usr/bin/env bash
# Measure-then-validate on a lent GPU machine, in one call (the device tool's `run`): two
# chains, each pinned to its own CPU core, one thread each; one after the other, or side by
# side with PARALLEL=1 (faster, but on 2026-11-29 the CUDA chain's host thread disturbed the
# CPU chain's timing: studies/fidelity/machines/intel-xeon-h200-host/README.md).
#   cpu:  the host CPU (another CPU type): `profile measure`, then run_fidelity.py (12 plans);
#   cuda: the same on the GPU (`--device cuda`): `profile measure`, `validate` (12 plans),
#         the CUDA-only test, and `hispec-exec serve` on the GPU.
# Every step has a time limit, so that what was measured comes back inside the call's limit.
# Seen on that machine (Intel Xeon host, ~0.45-0.6x the AVX-512 EPYC VM's speed): the CPU
# `profile measure` took 164 s for one attempt alone (2026-11-29 22:41), run_fidelity.py
# 220 s; the CUDA `profile measure` did not finish within 170 s nor 188 s. Both chains do
# not fit one call (600 s at most) and a session's 15 device minutes hold about one full
# call (the machine's start costs 1-2 min of them): run one chain per session. The CPU chain
# ran twice (studies/fidelity/machines/intel-xeon-h200-host/); next, the CUDA chain, e.g.
#   ONLY=cuda ATTEMPTS=1 MEASURE_LIMIT=380 VALIDATE_LIMIT=150 bash studies/fidelity/device_check.sh
#   ONLY=cpu ATTEMPTS=2 MEASURE_LIMIT=300 FIDELITY_LIMIT=280 bash studies/fidelity/device_check.sh
# (timeout_s 600; each chain's limits add up to < 600 s). `profile measure --progress`
# logs its stages, so a step cut by its limit says how far it got.
# Results go to $OUT (default ./out): machine.txt, cpu.log, cuda.log, results.tgz.
# The machine's image has torch, numpy, scipy, tokenizers, safetensors, pytest and hypothesis,
# not pydantic: carry its wheels in .whl (see the device tool's README).
#   run: bash studies/fidelity/device_check.sh      (carry: [".whl"])
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT/cpu" "$OUT/cuda"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
fi
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p /tmp/bin
for tool in hispec_sim hispec_exec; do
  printf '#!/bin/sh\nexec python3 -m %s.cli "$@"\n' "$tool" > "/tmp/bin/${tool/_/-}"
  chmod +x "/tmp/bin/${tool/_/-}"
done
export PATH="/tmp/bin:$PATH"

{
  date -u '+%Y-%m-%d %H:%M:%S UTC'
  lscpu
  lscpu -e=CPU,CORE,SOCKET,NODE 2>/dev/null | head -20
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  python3 -c 'import torch, numpy, scipy, pydantic; print("torch", torch.__version__, "cuda", torch.version.cuda,
"capability", torch.backends.cpu.get_cpu_capability(), "numpy", numpy.__version__, "scipy", scipy.__version__,
"pydantic", pydantic.__version__); print(torch.__config__.show())'
  cat /proc/loadavg
} > "$OUT/machine.txt" 2>&1

step() {  # step LIMIT_S CORE NAME COMMAND...: on that core alone (where taskset exists), at most LIMIT_S
  local limit=$1 core=$2 name=$3; shift 3
  local t0; t0=$(date +%s)
  echo "== $name ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg)): $*"
  if command -v taskset >/dev/null; then timeout "$limit" taskset -c "$core" "$@"; else timeout "$limit" "$@"; fi
  echo "== $name: rc $? in $(( $(date +%s) - t0 )) s"
}

# QUICK=1 GPU=cpu: a smoke test of this script on a machine without a GPU (~1 min)
GPU=${GPU:-cuda} CPU_CORE=${CPU_CORE:-2} GPU_CORE=${GPU_CORE:-6}  # cores 2 and 6: not SMT siblings whether siblings are n, n+1 or n, n+8
if [ -n "${QUICK:-}" ]; then
  small=(--prompts 2 --max-new-tokens 16); measure=("${small[@]}" --repeats 1 --attempts 1); plans=3; requests=4
else
  small=(); measure=(--attempts "${ATTEMPTS:-2}"); plans=12; requests=32
fi

cpu_chain() {
  step "${MEASURE_LIMIT:-200}" "$CPU_CORE" "profile measure (cpu)" hispec-sim profile measure --progress "${measure[@]}" --out "$OUT/cpu/profile.json" \
    --name host_cpu_hispec_tiny
  step "${FIDELITY_LIMIT:-270}" "$CPU_CORE" "fidelity (cpu, $plans plans)" python3 studies/fidelity/run_fidelity.py --profile "$OUT/cpu/profile.json" \
    --plans $plans --rounds 1 --ar-every 4 --out-dir "$OUT/cpu"
}

cuda_chain() {
  step "${MEASURE_LIMIT:-170}" "$GPU_CORE" "profile measure ($GPU)" hispec-sim profile measure --progress "${measure[@]}" --device "$GPU" \
    --out "$OUT/cuda/profile.json" --name h200_hispec_tiny
  step "${VALIDATE_LIMIT:-230}" "$GPU_CORE" "validate ($GPU, $plans plans)" hispec-sim validate "${small[@]}" --profile "$OUT/cuda/profile.json" \
    --device "$GPU" --plans $plans --seed 7 --ar-every 4 --out "$OUT/cuda/validate.json"
  step 40 "$GPU_CORE" "CUDA test" python3 -m pytest -q -p no:cacheprovider tests/exec/test_exec_cli.py -k cuda
  step 30 "$GPU_CORE" "serve ($GPU)" hispec-exec serve --device "$GPU" --qps 4 --requests $requests --levels 2,4,16 --propose 2 \
    --window 4 --max-batch 16 --check --json --out "$OUT/cuda/serve.json"
}

# ONLY=cpu or ONLY=cuda: one chain alone
if [ -n "${PARALLEL:-}" ]; then
  [ "${ONLY:-cpu}" = cpu ] && { cpu_chain > "$OUT/cpu.log" 2>&1 & }
  [ "${ONLY:-cuda}" = cuda ] && { cuda_chain > "$OUT/cuda.log" 2>&1 & }
  wait
else
  [ "${ONLY:-cpu}" = cpu ] && cpu_chain > "$OUT/cpu.log" 2>&1
  [ "${ONLY:-cuda}" = cuda ] && cuda_chain > "$OUT/cuda.log" 2>&1
fi
cat /proc/loadavg >> "$OUT/machine.txt"
tar -czf "$OUT/results.tgz" -C "$OUT" cpu cuda && rm -rf "$OUT/cpu" "$OUT/cuda"
cat "$OUT"/*.log | grep -v '^[[:space:]]*[][{}"]' | tail -n 60
