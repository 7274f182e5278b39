"""Can a few speed scales re-price a machine whose state moved? (no timing; reads a probe)

cross_machine_probe.py measured, on the Xeon host of an H200 machine, every kind of forward
(the k-th draft of a round, each level's checks, autoregressive steps) over its price from a
profile of that host measured 30 minutes earlier: x0.58-0.76, unevenly. If the state change
were a few scales -- the fixed per-forward overheads F, the layers' one-token cost W (weights
streamed once per forward), the cost of the extra tokens of a multi-token check C -- then
measured = s_F F + s_W W + s_C C would fit every kind, and validate could re-fit those scales
in its own state from a few calibration runs. This fits them (least squares on measured /
priced) and prints what each family of scales leaves.

    python studies/fidelity/state_scales.py [--probe P]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PROBE = HERE / "machines" / "intel-xeon-h200-host" / "probe-2309" / "probe.json"


def parts(probe: dict):
    """(kind, measured ms, priced ms, F, W, C) for every forward kind the probe timed."""
    from hispec_sim.latency import CostModel
    from hispec_sim.schema import load_profile

    kinds = probe["forward_kinds"]
    table = load_profile(str(HERE.parent.parent / kinds["profile"])).table(None, None)
    cost = CostModel(table, 1, 96, 64)
    one_token = lambda layers: layers * float(cost.layer[1]) + float(cost.head[1])
    ar = cost.autoregressive_ms(16)
    rows = [("[16] step", ar * kinds["autoregressive_measured_over_priced"], ar, table.overhead_ms,
             ar - table.overhead_ms, 0.0)]
    for plan, forwards in kinds["plans"].items():
        levels = [int(x) for x in plan[1:plan.index("]")].split(",")]
        for kind, v in forwards.items():
            check = kind.startswith("level")
            depth = levels[int(kind.split()[1]) - 1] if check else levels[0]
            F = table.overhead_ms + (table.verify_overhead_ms if check else 0.0)
            W = one_token(depth)
            rows.append((f"{plan} {kind}", v["measured_ms"], v["priced_ms"], F, W, v["priced_ms"] - F - W))
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe", default=str(PROBE))
    rows = parts(json.loads(Path(ap.parse_args(argv).probe).read_text()))
    M, P, F, W, C = (np.array([r[i] for r in rows]) for i in range(1, 6))
    y = M / P
    print(f"{len(rows)} forward kinds, measured / priced {y.min():.3f}-{y.max():.3f}")
    for name, cols in [("one scale", [P]), ("fixed F, layers W + C", [F, W + C]), ("F, W, C", [F, W, C])]:
        A = np.stack([c / P for c in cols], 1)
        coef, *_ = np.linalg.lstsq(A, y, rcond=None)
        miss = np.abs(y / (A @ coef) - 1)
        worst = rows[int(np.argmax(miss))][0]
        print(f"{name:24s} scales {np.round(coef, 3).tolist()}: left median {100 * np.median(miss):.1f} %, "
              f"worst {100 * miss.max():.1f} % ({worst})")


if __name__ == "__main__":
    main()
