"""What if the working-set gain had another scale? (no timing, a second)

Re-prices a stored validation's plans with the profile's working-set times scaled by f (every
other fitted cost kept, so this is a what-if, not a refit) and prints the analytic median /
worst |speed-up error| against the measured speed-ups. Default: the baseline-x86 profile
(studies/fidelity/machines/amd-epyc-baseline-x86/), whose kept attempt fitted the scale at
0.47 while its first attempt fitted 1.07 (f = 2.27).

    python studies/fidelity/working_set_whatif.py
    python studies/fidelity/working_set_whatif.py --profile P.json --results R.json [R2.json] --f 1,1.5
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hispec_sim.evaluate import Setting, score
from hispec_sim.schema import Plan, load_profile

MACHINE = Path(__file__).resolve().parent / "machines" / "amd-epyc-baseline-x86"


def errors(profile, runs: list[dict], f: float) -> list[np.ndarray]:
    """Per run: |predicted / measured speed-up - 1| of each plan, working-set times x f."""
    t0 = profile.latency[0]
    table = t0.model_copy(update={"working_set_ms": [f * v for v in t0.working_set_ms or []] or None})
    scaled = profile.model_copy(update={"latency": [table, *profile.latency[1:]]})
    out = []
    for r in runs:
        plans = [Plan.model_validate(p["plan"]) for p in r["plans"]]
        s = Setting(scaled, r["workload"], context=r["context"])
        sc = score(s, [Plan(levels=[profile.model.num_layers]), *plans])
        predicted = np.array([x.tokens_per_second / sc[0].tokens_per_second for x in sc[1:]])
        out.append(np.abs(predicted / np.array([p["measured_speedup"] for p in r["plans"]]) - 1))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(MACHINE / "profile.json"))
    ap.add_argument("--results", nargs="+", default=[str(MACHINE / "results.json"), str(MACHINE / "results-rerun.json")])
    ap.add_argument("--f", default="1,1.5,2,2.27")
    a = ap.parse_args(argv)
    profile = load_profile(a.profile)
    runs = [json.loads(Path(r).read_text(encoding="utf-8")) for r in a.results]
    print(f"working-set scale fitted {profile.provenance.get('measurement', {}).get('working_set_scale')}; "
          "analytic median / worst |speed-up error| per validation run (* = the bar met)")
    for f in (float(x) for x in a.f.split(",")):
        cells = [f"{100 * np.median(e):.1f} / {100 * e.max():.1f} %{'*' if np.median(e) <= 0.03 and e.max() <= 0.08 else ' '}"
                 for e in errors(profile, runs, f)]
        print(f"  x{f:<5.2f} " + "   ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
