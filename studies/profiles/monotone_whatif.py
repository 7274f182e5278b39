"""What-if: the published (Vidur-built) latency tables made non-decreasing in tokens.

Within their grid the published tables keep Vidur's per-operator medians as measured, and a
cell can lie below the cell one token step before (a kernel chosen per shape, or noise).
This prints, per shipped GPU profile, how many cells do, the largest drop, and what the
exhaustive search answers when every table is replaced by its running maximum over tokens
(the one-token cells, the autoregressive step, unchanged). No timing; about ten seconds.

    python studies/profiles/monotone_whatif.py
"""
from __future__ import annotations

import argparse

import numpy as np

from hispec_sim import schema
from hispec_sim.evaluate import Setting, exhaustive

PROFILES = ["a100_llama70b", "a100_llama2_7b", "h100_llama70b", "h100_llama2_70b", "h100_llama3_8b", "h100_llama2_7b",
            "h100_llama2_13b", "h100_codellama_7b", "h100_codellama_34b"]


def monotone(profile: schema.Profile) -> schema.Profile:
    """The profile with every latency table's layer times a running maximum over tokens."""
    tables = [t.model_copy(update={"layer_ms": np.maximum.accumulate(np.asarray(t.layer_ms, float), axis=0).tolist()})
              for t in profile.latency]
    return profile.model_copy(update={"latency": tables})


def main() -> None:
    # --help prints the docstring and writes nothing (a docs check once ran it with --help and it wrote)
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    for name in PROFILES:
        p = schema.load_profile(name)
        falls = [np.asarray(t.layer_ms, float) for t in p.latency]
        below = sum(int((a[1:] < a[:-1]).sum()) for a in falls)
        cells = sum(a.size for a in falls)
        worst = max(float(np.max(1 - a[1:] / a[:-1], initial=0.0)) for a in falls)
        was, now = exhaustive(Setting(p)), exhaustive(Setting(monotone(p)))

        def speedup(r, s):
            return s.tokens_per_second / r.autoregressive.tokens_per_second

        print(f"{name:20s} cells below the previous token step {below:,}/{cells:,} (largest drop {100 * worst:.1f} %); "
              f"best {was.best.plan.describe()} {speedup(was, was.best):.4f}x -> {now.best.plan.describe()} "
              f"{speedup(now, now.best):.4f}x ({100 * (speedup(now, now.best) / speedup(was, was.best) - 1):+.2f} %); "
              f"single-level {was.best_single_level.plan.describe()} -> {now.best_single_level.plan.describe()}")


if __name__ == "__main__":
    main()
