#!/usr/bin/env bash
# The timing-sensitive steps, in order, on a quiet machine (1-minute load average < 1.2):
#   1. re-measure the shipped model's profile on THIS machine (with its fingerprint and its self-check),
#   2. validate it on 12 plans (run_fidelity.py = `hispec-sim validate` + the write-up): speed-ups over
#      autoregressive measured side by side, the noise floor, the verdict against the bar,
#   3. the generalisation study's timed part (set A -> set B, executor on 128 prompts of B x 48 tokens; the exit
#      traces of both sets come from the committed studies/fidelity/generalisation_traces.npz),
#   4. the serving study (studies/serving/run_serving.py): the profile's serving calibration re-measured,
#      the executor's serving latencies against the simulator's, then that profile installed as the shipped one,
#   5. the adaptive study (studies/adaptive/run_adaptive.py), on the installed profile.
# It rewrites profiles/cpu_hispec_tiny.json, studies/fidelity/RESULTS.md (machine, load, commands,
# verdict), results.json, plot.svg, GENERALISATION.md, generalisation.json and curve.svg, and the
# serving and adaptive studies' RESULTS.md / results.json (/ plot.svg).
# Steps 1-3 measured 605 s on the AVX-512 EPYC VM (autoregressive ~320 tokens/s: measure 67 s, validation
# 201 s, generalisation 337 s), the serving study 398 s and the adaptive one 186 s there: ~20 min in all;
# estimated ~48 min on the AVX2 EPYC VM (~95 tokens/s; there measure 195 s, validation 685 s, the
# generalisation ~2x its 24-prompt x 128-token part's 501 s, serving 479 s, adaptive 389 s).
# When the machine moves during the timing, `profile measure` times up to 3 times (137-153 s instead of 67 s
# on the AVX-512 VM; the whole chain 1,215-1,230 s).
#
#   studies/fidelity/remeasure.sh            # refuses when the machine is busy
#   FORCE=1 studies/fidelity/remeasure.sh    # measure anyway (the figures will say the load)
#   studies/fidelity/remeasure.sh --quick    # smoke test in a temporary folder (~75 s; touches nothing)
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's code and profiles, whatever is installed
quick=0
case "${1:-}" in
  --quick) quick=1 ;;
  "") ;;
  *) echo "remeasure: unknown option '$1' (allowed: --quick)" >&2; exit 2 ;;
esac
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
load=$(cut -d' ' -f1 /proc/loadavg)
if [ "$quick" = 0 ] && [ -z "${FORCE:-}" ] && awk -v l="$load" 'BEGIN { exit !(l >= 1.2) }'; then
  echo "remeasure: load average $load >= 1.2; wait for a quiet machine (or FORCE=1)" >&2
  exit 2
fi

steps=$(mktemp)
trap 'rm -f "$steps"' EXIT
step() {  # step NAME COMMAND...: run it, log its wall time and the load around it
  local name=$1; shift
  local before; before=$(loadavg)
  local t0; t0=$(date +%s)
  echo "== $name (load average $before): $*"
  "$@"
  local secs=$(( $(date +%s) - t0 ))
  echo "== $name: ${secs} s (load average after: $(loadavg))"
  printf '| %s | `%s` | %s s | %s | %s |\n' "$name" "$*" "$secs" "$before" "$(loadavg)" >> "$steps"
}

start=$(date +%s)
load_measure=$(loadavg)
if [ "$quick" = 1 ]; then
  out=$(mktemp -d)
  echo "remeasure --quick: everything goes to $out"
  step "profile measure" hispec-sim profile measure --prompts 2 --max-new-tokens 16 --repeats 1 \
    --out "$out/p.json" --name quick
  step "validate" hispec-sim validate --profile "$out/p.json" --plans 3 --seed 7 --out "$out/validate.json"
  step "fidelity" python studies/fidelity/run_fidelity.py --profile "$out/p.json" --plans 4 --ar-every 2 \
    --load-measure "$load_measure" --out-dir "$out"
  step "generalisation" python studies/fidelity/run_generalisation.py --profile "$out/p.json" --plans 4 \
    --prompts 4 --timed-prompts 2 --max-new-tokens 16 --cache "$out/traces.npz" --out-dir "$out"
  step "serving" python studies/serving/run_serving.py --quick --profile "$out/p.json"
  step "adaptive" python studies/adaptive/run_adaptive.py --quick
  results=$out/RESULTS.md
else
  step "profile measure" hispec-sim profile measure --out profiles/cpu_hispec_tiny.json --name cpu_hispec_tiny
  step "fidelity (validate, 12 plans)" python studies/fidelity/run_fidelity.py --plans 12 --rounds 2 --ar-every 4 \
    --load-measure "$load_measure"
  step "generalisation (timed)" python studies/fidelity/run_generalisation.py --plans 12 --timed-prompts 128 \
    --max-new-tokens 48 --ar-every 4
  step "serving (calibration re-measured, then installed)" python studies/serving/run_serving.py \
    --remeasure serving --profile profiles/cpu_hispec_tiny.json --install profiles/cpu_hispec_tiny.json \
    --acceptance heldout
  step "adaptive" python studies/adaptive/run_adaptive.py
  results=studies/fidelity/RESULTS.md
fi
total=$(( $(date +%s) - start ))
{
  cat "$results"
  echo
  echo "## How this was produced: \`studies/fidelity/remeasure.sh$([ "$quick" = 1 ] && echo ' --quick')\`"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), ${total} s in all$([ -n "${FORCE:-}" ] && echo ', FORCE=1 (the machine was busy)')."
  echo
  echo "| step | command | wall time | load average before (1, 5, 15 min) | after |"
  echo "|---|---|---:|---|---|"
  cat "$steps"
} > "$results.tmp"
mv "$results.tmp" "$results"
echo "remeasure: done in ${total} s; $results"
