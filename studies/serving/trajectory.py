"""One serving scenario of the study replayed in this process: `hispec_exec.serve.serve` on
the study's trace with every iteration logged, each iteration priced as the simulator prices
it (measure_serving.step_features and the calibration's fitted terms), and the same trace
simulated (hispec_sim.serving.simulate_arrays) with the same profile.

    python studies/serving/trajectory.py --profile P [--plan single_level] [--qps 1.5]
        [--prompt-len uniform:100:400] [--acceptance served|heldout] [--requests 48] [--prefill-chunk C]

It separates the cost model's error (measured / priced ms of the executor's own steps, by
kind and batch) from the schedule's (steps, TPOT, TTFT of the executor against the
simulator's), within a minute on one machine, where run_serving.py's executor runs lie a
quarter of an hour from the calibration. A last column reads each step against the median
measured / priced of the steps around it (LOCAL iterations either side): the kinds' prices
relative to one another, free of the machine's speed moving within the run. With `--acceptance served` the profile must carry
the workload `served` measured on this trace's prompts (run_serving.py adds it: the same
--requests, --prompt-len, --output-len and --seed draw the same prompts); `heldout`
simulates the profile's default workload on the same prompts. Prints; writes nothing but
the trace, in a temporary folder. One CPU thread.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run_serving  # noqa: E402  (puts the checkout on the path)


LOCAL = 30  # iterations either side: the neighbourhood a step's ratio is read against


def plan_of(family: str):
    from hispec_sim.schema import Plan

    a = dict(zip(run_serving.PLANS[family][::2], run_serving.PLANS[family][1::2]))
    return Plan(levels=[int(x) for x in a["--levels"].split(",")], propose=int(a.get("--propose", 1)),
                windows=[int(a["--window"])] if "--window" in a else [])


def tpot_ms(metrics) -> float:
    return float(np.mean([(m.e2e_ms - m.ttft_ms) / (m.output_tokens - 1) for m in metrics if m.output_tokens > 1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(HERE / "long_prompts" / "profile.json"))
    ap.add_argument("--plan", choices=sorted(run_serving.PLANS), default="single_level")
    ap.add_argument("--qps", type=float, default=1.5)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--prompt-len", default="uniform:100:400")
    ap.add_argument("--output-len", default="uniform:16:64")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--acceptance", choices=["served", "heldout"], default="served")
    ap.add_argument("--prefill-chunk", type=int, help="chunked prefill, as run_serving.py --prefill-chunk")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import torch

    from hispec_exec.checkpoint import load_model
    from hispec_exec.measure_serving import _ops_of, step_features
    from hispec_exec.serve import serve
    from hispec_sim.schema import RequestMetrics, ServeLimits, load_profile
    from hispec_sim.serving import StepCost, simulate_arrays

    torch.set_num_threads(1)
    prof = load_profile(args.profile)
    table, plan = prof.table(), plan_of(args.plan)
    cal = table.serving
    if cal is None:
        print("error: --profile: needs a serving calibration (profile measure)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:  # texts either way (what hispec-exec serve draws for lengths)
        trace = run_serving.make_trace(args.plan, args.qps, argparse.Namespace(**{**vars(args), "acceptance": "served"}),
                                       Path(tmp))
        reqs = [json.loads(line) for line in trace.read_text().splitlines()]
    prompts = [list(r["prompt"].encode("utf-8")) for r in reqs]
    arrivals = [r["arrival_s"] for r in reqs]
    news = [r["max_new_tokens"] for r in reqs]
    limits = ServeLimits(max_batch=args.max_batch, prefill="chunked" if args.prefill_chunk else "separate",
                         prefill_chunk=args.prefill_chunk)
    log: list = []
    res = serve(load_model(), plan, arrivals, prompts, news, limits, mode="greedy", seed=args.seed,
                step_log=log, ops_of=_ops_of)
    slots = min(args.max_batch, len(prompts))
    measured, priced, keys = np.array([it["step_ms"] for it in log]), np.zeros(len(log)), []
    for i, it in enumerate(log):
        fwd, head, nseq, nchk = step_features(plan.levels, it["ops"], table, slots)
        priced[i] = cal.forward_scale * fwd + cal.step_ms + cal.sequence_ms * nseq + cal.check_ms * nchk + head
        keys.append(("with a check" if nchk else "decode" if plan.depth == 1 else "drafts only", min(nseq, 3)))
    # the machine's speed moves in spells of seconds (+-30 % on the AVX2 VM): each step against
    # the median ratio of its neighbours tells the kinds of step apart without that drift
    ratio = measured / priced
    local = np.array([np.median(ratio[max(0, i - LOCAL):i + LOCAL + 1]) for i in range(len(log))])
    kinds: dict = defaultdict(list)
    for i, key in enumerate(keys):
        kinds[key].append(i)
    # the prefill forwards of the iterations that ran a step, priced as the simulator prices
    # them (StepCost.prefill_pieces: whole prompts, or chunks after their cached part), by
    # the number of prompts in the forward, each read against its iteration's neighbours
    cost = StepCost(table, plan, prof.model.num_layers, args.max_batch, max(map(len, prompts)) + max(news),
                    np.array([len(p) for p in prompts]))
    pf = [i for i, it in enumerate(log) if it["pieces"]]
    for k, i in enumerate(pf):
        kinds[("prefill", min(len(log[i]["pieces"]), 3))].append(len(log) + k)
    measured = np.concatenate([measured, [log[i]["prefill_ms"] for i in pf]])
    priced = np.concatenate([priced, [cost.prefill_pieces(*np.array(log[i]["pieces"]).T) for i in pf]])
    local = np.concatenate([local, local[pf]])
    print(f"{args.plan} at {args.qps:g} req/s, {len(reqs)} requests, profile {args.profile}")
    print("executor steps by kind and batch, and prefill forwards by prompts (3: 3 or more): count, measured ms, "
          "priced ms, measured / priced, "
          f"the same against the steps within {LOCAL} iterations")
    for (kind, b), idx in sorted(kinds.items()):
        m, p = measured[idx].sum(), priced[idx].sum()
        print(f"  {kind:13s} {b}  {len(idx):6d} {m:9.0f} {p:9.0f}  {m / p:.3f}  {m / (priced * local)[idx].sum():.3f}")
    workload = "served" if args.acceptance == "served" else None
    run = simulate_arrays(table, prof.model.num_layers, prof.workload(workload), plan, np.array(arrivals),
                          np.array([len(p) for p in prompts]), np.array(news), limits, seed=args.seed)
    exe = [RequestMetrics.model_validate(m) if isinstance(m, dict) else m for m in res["metrics"]]
    sim = run.metrics()
    print(f"steps: executor {len(log)}, simulator {run.steps}; mean batch executor {res['mean_batch']:.2f}")
    print(f"TPOT mean ms: executor {tpot_ms(exe):.2f}, simulator {tpot_ms(sim):.2f}")
    for q in (50, 99):
        e, s = (float(np.percentile([m.ttft_ms for m in x], q)) for x in (exe, sim))
        print(f"TTFT p{q} ms: executor {e:.1f}, simulator {s:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
