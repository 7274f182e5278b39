"""What-if: where does adaptivity pay? The shipped model's measured acceptance and
confidence statistics (cpu_hispec_tiny) under two latency profiles:

* measured: the profile's own CPU table (a check of n tokens costs ~n times a draft);
* flat (GPU-like, memory-bound): every forward costs what one token costs
  (layer_ms and head_ms of tokens=1 for every token count), overheads unchanged.

Prints, per latency profile, the best fixed plan and the best adaptive plan of
`optimize --adaptive` (simulation only; no timing is measured here).

usage: PYTHONPATH=. python studies/adaptive/whatif.py [--out FILE]
"""
from __future__ import annotations

import argparse
import json

from hispec_sim.adaptive import cli_adaptive
from hispec_sim.evaluate import Setting, exhaustive
from hispec_sim.schema import Profile, load_profile


def flat(profile: Profile) -> Profile:
    t = profile.table()
    row, head = t.layer_ms[0], t.head_ms[0]
    table = t.model_copy(update={"layer_ms": [list(row) for _ in t.tokens], "head_ms": [head for _ in t.tokens]})
    return profile.model_copy(update={"latency": [table]})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    a = ap.parse_args()
    base = load_profile("cpu_hispec_tiny")
    out = {}
    for name, prof in (("measured CPU latency", base), ("flat (GPU-like) latency", flat(base))):
        s = Setting(prof, None, None, None, 1, None)
        res = exhaustive(s)
        ad = cli_adaptive(s, res)
        out[name] = {"best_fixed": ad["best_fixed"], "best_adaptive": {k: ad["best"][k] for k in ("describe", "tokens_per_second", "model")},
                     "predicted_gain": ad["predicted_gain_over_best_fixed"],
                     "best_single_level": ad["best_single_level"], "best_hierarchical": ad["best_hierarchical"]}
        print(f"{name}: best fixed {ad['best_fixed']['describe']} {ad['best_fixed']['tokens_per_second']:.1f} tok/s; "
              f"best adaptive {ad['best']['describe']} {ad['best']['tokens_per_second']:.1f} tok/s; "
              f"predicted gain x{ad['predicted_gain_over_best_fixed']:.3f}")
    if a.out:
        open(a.out, "w").write(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
