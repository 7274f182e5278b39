"""Cross-machine probe, sized for one short call on another machine (about a minute).

1. Acceptance across machines: does this machine's executor decode the shipped held-out
   prompts exactly as the shipped profile recorded them on the developers' CPU (greedy
   argmax of every exit at every position), on the CPU and, where there is one, on CUDA?
2. Where time goes per forward kind: for the plans that a Xeon host predicted too fast
   (studies/fidelity/machines/intel-xeon-h200-host/), each kind of forward (the k-th draft
   after a check, each level's checks) measured over its price from a profile of this CPU
   type, divided by the same ratio of the autoregressive steps run beside them.

    python studies/fidelity/cross_machine_probe.py [--profile P] [--out probe.json]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PLANS = [([16], 1, []), ([2, 16], 3, []), ([2, 16], 6, []), ([2, 4, 16], 2, [4]), ([14, 16], 4, [])]


def trace_agreement(model, prompts, recorded: np.ndarray) -> dict:
    """This machine's exit traces against the recorded ones (prompts, positions, exits)."""
    from hispec_exec import exit_traces

    mine = np.stack([exit_traces(model, p, recorded.shape[1]).cpu().numpy() for p in prompts])
    same = mine == recorded[:len(prompts)]
    first = [int(np.argmin(s[:, -1])) if not s[:, -1].all() else None for s in same]
    return {"positions_x_exits_equal": float(same.mean()), "per_exit_equal": same.mean(axis=(0, 1)).round(4).tolist(),
            "trajectories_identical": sum(f is None for f in first), "prompts": len(prompts),
            "first_divergence": first}


def forward_kinds(model, setting, prompts, n_new: int, rounds: int) -> dict:
    """Measured / priced ms per forward kind and plan, over `rounds` passes of the plans
    in turn on each prompt; the autoregressive plan's ratio is the reference."""
    from hispec_exec import decode
    from hispec_sim.schema import Plan
    from hispec_sim.validate import forward_ms

    plans = [Plan(levels=lv, propose=g, windows=w) for lv, g, w in PLANS]
    cost = setting.cost_for(plans)
    acc: dict = {}
    for _ in range(rounds):
        for ids in prompts:
            for plan in plans:
                run = decode(model, plan, ids, n_new)
                drafts = 0
                for f, price in zip(run.forwards, forward_ms(cost, run)):
                    drafts = drafts + 1 if f.level == 1 else 0
                    kind = f"draft {drafts}" if f.level == 1 and plan.depth > 1 else f"level {f.level}"
                    m, p, n = acc.setdefault(plan.describe(), {}).get(kind, (0.0, 0.0, 0))
                    acc[plan.describe()][kind] = (m + f.ms, p + float(price), n + 1)
    ar = acc.pop(plans[0].describe())["level 1"]
    base = ar[0] / ar[1]
    return {"autoregressive_measured_over_priced": base,
            "plans": {d: {k: {"vs_cost_model": m / p / base, "measured_ms": m / n, "priced_ms": p / n, "n": n}
                          for k, (m, p, n) in kinds.items()} for d, kinds in acc.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(HERE / "machines" / "intel-xeon-h200-host" / "alone-2241" / "profile.json"),
                    help="prices for part 2: a profile of this CPU type")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--timed-prompts", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="probe.json")
    args = ap.parse_args()

    import torch

    from hispec_exec import heldout_prompts, load_model
    from hispec_sim.evaluate import Setting
    from hispec_sim.machine import describe, fingerprint
    from hispec_sim.schema import load_profile

    torch.set_num_threads(1)
    shipped = load_profile(str(ROOT / "profiles" / "cpu_hispec_tiny.json"))
    measured_on = shipped.provenance["prompts"]
    recorded = np.asarray(shipped.workload("heldout").traces).reshape(measured_on["n"], measured_on["max_new_tokens"], -1)
    prompts = heldout_prompts(args.prompts, measured_on["prompt_len"], measured_on["seed"])
    out: dict = {"machine": describe(fingerprint("cpu")), "torch": torch.__version__, "started": time.time()}
    t = time.time()
    model = load_model()
    out["traces_cpu"] = trace_agreement(model, prompts, recorded)
    print(f"traces, cpu ({time.time() - t:.0f} s): {json.dumps(out['traces_cpu'])}", flush=True)
    if torch.cuda.is_available():
        t = time.time()
        out["cuda"] = torch.cuda.get_device_name()
        out["traces_cuda"] = trace_agreement(load_model(device="cuda"), prompts, recorded)
        print(f"traces, cuda ({time.time() - t:.0f} s): {json.dumps(out['traces_cuda'])}", flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    t = time.time()
    setting = Setting(load_profile(args.profile))
    out["forward_kinds"] = forward_kinds(model, setting, prompts[:args.timed_prompts],
                                         measured_on["max_new_tokens"], args.rounds)
    out["forward_kinds"]["profile"] = os.path.relpath(args.profile, ROOT)
    print(f"forward kinds ({time.time() - t:.0f} s), measured / priced relative to autoregressive "
          f"(autoregressive itself x{out['forward_kinds']['autoregressive_measured_over_priced']:.3f}):")
    for plan, kinds in out["forward_kinds"]["plans"].items():
        print(f"  {plan:30s} " + ", ".join(f"{k} x{v['vs_cost_model']:.3f} ({v['measured_ms']:.2f} ms)"
                                          for k, v in sorted(kinds.items())))
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
