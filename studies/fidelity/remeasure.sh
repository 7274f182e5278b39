#!/usr/bin/env bash
# The timing-sensitive steps, in order, on a quiet machine (1-minute load average < 1.2):
# re-measure the shipped model's profile on THIS machine (with its fingerprint), validate it,
# and run both fidelity studies. About 12 minutes on a quiet 2-core Intel VM, 25 on the AMD EPYC VM.
#
#   studies/fidelity/remeasure.sh            # refuses when the machine is busy
#   FORCE=1 studies/fidelity/remeasure.sh    # measure anyway (the figures will say the load)
set -euo pipefail
cd "$(dirname "$0")/../.."
load=$(cut -d' ' -f1 /proc/loadavg)
if [ -z "${FORCE:-}" ] && awk -v l="$load" 'BEGIN { exit !(l >= 1.2) }'; then
  echo "remeasure: load average $load >= 1.2; wait for a quiet machine (or FORCE=1)" >&2
  exit 2
fi
echo "load average before: $load"
time hispec-sim profile measure --out profiles/cpu_hispec_tiny.json --name cpu_hispec_tiny
echo "load average: $(cut -d' ' -f1 /proc/loadavg)"
time hispec-sim validate --profile profiles/cpu_hispec_tiny.json --plans 6 --seed 7 --out studies/fidelity/validate_6.json
echo "load average: $(cut -d' ' -f1 /proc/loadavg)"
time python studies/fidelity/run_fidelity.py
echo "load average: $(cut -d' ' -f1 /proc/loadavg)"
time python studies/fidelity/run_generalisation.py --cache "${CACHE:-/tmp/hispec_generalisation_traces.npz}"
echo "load average after: $(cut -d' ' -f1 /proc/loadavg)"
