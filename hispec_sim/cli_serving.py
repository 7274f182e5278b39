"""`hispec-sim serve` and `hispec-sim capacity`: parsers and handlers (wired in cli.py).

Bad input raises ValueError("field: ...") before anything runs; cli.main turns it into
one line and exit status 2. Nothing is written to disk by either command.
"""
from __future__ import annotations

import json
import sys

import numpy as np

from . import schema, serving, traffic
from .cli_common import (SEED, add_plan_args, add_search_bounds, float_in, given, int_in, name_text, note_plan_setting,
                         note_weights, plan_from_args, refuse_unread, shown)
from .evaluate import Setting
from .schema import decimals

DEFAULT_PROMPT, DEFAULT_OUTPUT = traffic.DEFAULT_LENGTHS.values()


def _common(p, capacity: bool) -> None:
    p.add_argument("--profile", required=True, help="shipped profile name or path to a profile JSON")
    p.add_argument("--workload", type=name_text, help="workload name (default: the profile's); its acceptance spread, if any, "
                   "gives each request its own rates")
    p.add_argument("--tp", type=int_in(1, schema.MAX_TP), help="tensor-parallel degree (default: the profile's)")
    p.add_argument("--stack", type=name_text, help="serving stack (default: the profile's)")
    p.add_argument("--qps", type=float_in(1e-6, 1e6), required=capacity, help="mean arrival rate, requests/s" +
                   (" (the target load)" if capacity else ""))
    p.add_argument("--arrival", default="poisson", help="poisson (default) or gamma")
    p.add_argument("--cv", type=float_in(1e-6, 100), default=1.0, help="gamma: coefficient of variation of inter-arrival times")
    p.add_argument("--prompt-len", default=DEFAULT_PROMPT, help=f"prompt length distribution (default {DEFAULT_PROMPT}); "
                   "N, uniform:LO:HI, lognormal:MEDIAN:SIGMA, empirical:N,N,..., with :min=/:max= (a lognormal needs :max= "
                   "on a model with a context)")
    p.add_argument("--output-len", default=DEFAULT_OUTPUT, help=f"output length distribution (default {DEFAULT_OUTPUT})")
    p.add_argument("--max-batch", type=int_in(1, schema.MAX_BATCH), default=64, help="most sequences decoded together (default 64)")
    p.add_argument("--kv-tokens", type=int_in(1, 10**9), help="KV capacity in tokens (default: unbounded)")
    p.add_argument("--prefill-chunk", type=int_in(1, 10**6), help="chunked prefill: at most this many prompt tokens per "
                   "iteration's prefill forward (ragged batching; default: the prompts admitted in an iteration in one "
                   "forward)")
    if capacity:
        p.add_argument("--batching", default="auto", help="auto (default: both policies for speculative plans), "
                       "ragged or synchronous")
    else:
        p.add_argument("--batching", default="ragged", help="ragged (default) or synchronous (speculative plans)")
    p.add_argument("--requests", type=int_in(1, schema.MAX_REQUESTS), default=1000 if not capacity else 300,
                   help="requests per simulated run (default %(default)s)")
    p.add_argument("--seeds", type=int_in(1, 100), default=3 if not capacity else 2,
                   help="independent runs (traffic and acceptance seeds); intervals over them (default %(default)s)")
    p.add_argument("--seed", type=SEED, default=0, help="first seed")
    p.add_argument("--slo-ttft-ms", type=float_in(1e-6, schema.MAX_MS), required=capacity,
                   help="p99 time-to-first-token SLO, ms" + ("" if capacity else "; also each request's TTFT SLO of goodput"))
    p.add_argument("--slo-tbt-ms", type=float_in(1e-6, schema.MAX_MS), required=capacity,
                   help="p99 time-between-tokens SLO, ms, pooled over every token gap (as capacity judges a load)" +
                   ("" if capacity else "; also each request's TPOT SLO of goodput, unless --slo-tpot-ms"))
    if not capacity:
        p.add_argument("--slo-tpot-ms", type=float_in(1e-6, schema.MAX_MS),
                       help="each request's mean time-per-output-token SLO of goodput, ms (default: --slo-tbt-ms)")
    p.add_argument("--step-noise", default="on", help="on (default): each decode step's time x a draw of the "
                   "profile's measured step noise, when its serving calibration has one; off: deterministic steps")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def add_parsers(sub) -> None:
    p = sub.add_parser("serve", help="simulate serving traffic: TTFT, TBT, end-to-end, throughput, goodput")
    _common(p, capacity=False)
    add_plan_args(p)
    p.add_argument("--trace", help="JSONL trace (arrival_s, prompt or prompt_tokens, max_new_tokens) instead of --qps")
    p.add_argument("--per-request", action="store_true", help="--json: include every request's metrics (first seed)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("capacity", help="replicas, GPUs and $ for a load under p99 TTFT/TBT SLOs, per plan family")
    _common(p, capacity=True)
    p.add_argument("--gpu-hour-usd", type=float_in(1e-6, 1e6), default=2.0, help="price of one GPU-hour in USD (default 2.0)")
    add_search_bounds(p)
    p.set_defaults(func=cmd_capacity)


# --------------------------------------------------------------------------- argument checking


def _setting(args) -> Setting:
    if args.step_noise not in ("on", "off"):
        raise ValueError(f"step-noise: must be on or off, got {args.step_noise!r}")
    profile = schema.load_profile(args.profile)
    setting = note_weights(Setting(profile, args.workload, args.tp, args.stack, 1, None))
    if args.step_noise == "off" and setting.table.serving is not None and setting.table.serving.step_noise is not None:
        # the simulators read the noise from the table: without it every step is deterministic
        setting.table = setting.table.model_copy(update={"serving": setting.table.serving.model_copy(
            update={"step_noise": None})})
    return setting


def _noise_used(args, setting: Setting) -> dict:
    """Whether the simulated steps carried the profile's step noise, and why not."""
    sv = setting.table.serving
    if sv is not None and sv.step_noise is not None:
        n = sv.step_noise
        return {"used": True, "lag1_autocorrelation": n.lag1_autocorrelation, "iterations": n.iterations}
    why = "switched off (--step-noise off)" if args.step_noise == "off" else \
        "the profile's latency table has no measured step noise (no serving calibration, or an older one)"
    return {"used": False, "why": why}


def _limits(args) -> schema.ServeLimits:
    return schema.ServeLimits(max_batch=args.max_batch, kv_tokens=args.kv_tokens, slo_ttft_ms=args.slo_ttft_ms,
                              slo_tbt_ms=args.slo_tbt_ms, slo_tpot_ms=getattr(args, "slo_tpot_ms", None),
                              prefill="chunked" if args.prefill_chunk else "separate", prefill_chunk=args.prefill_chunk)


def _traffic(args, model: schema.ModelShape, overshoot: int) -> schema.Traffic:
    """The generated traffic; on a model whose context cannot hold its longest request the
    default lengths are scaled down to fit (said on stderr), given ones refused."""
    if args.arrival not in ("poisson", "gamma"):
        raise ValueError(f"arrival: must be poisson or gamma, got {args.arrival!r}")
    generated = not getattr(args, "trace", None)
    if generated:
        lengths = {k: getattr(args, k) for k in traffic.DEFAULT_LENGTHS}
        if model.max_context is not None and lengths == traffic.DEFAULT_LENGTHS and model.max_context - overshoot < 2:
            raise ValueError(f"prompt_len: the model's context of {model.max_context} tokens cannot hold a one-token "
                             f"prompt and output besides {overshoot} tokens of speculation; plan less speculation"
                             + (" (--max-propose, --max-window)" if hasattr(args, "max_propose") else ""))
        for k, v in traffic.fit_default_lengths(lengths, model.max_context, overshoot).items():
            if v != getattr(args, k):
                print(f"hispec-sim: note: --{k.replace('_', '-')} defaults to {v} on this model (a request and its "
                      f"{overshoot} tokens of speculation fit its context of {model.max_context})", file=sys.stderr)
                setattr(args, k, v)
    tr = schema.Traffic(arrival=args.arrival, qps=args.qps or 1.0, cv=args.cv, requests=args.requests,
                        prompt_len=schema.LengthDist.parse(args.prompt_len, "prompt_len"),
                        output_len=schema.LengthDist.parse(args.output_len, "output_len"), seed=args.seed)
    if generated:
        p, o = tr.prompt_len.upper, tr.output_len.upper
        model.check_context(p + o + overshoot, "prompt_len", f"--prompt-len and --output-len draw up to {p} + {o} "
                            f"(+ {overshoot} of speculation) = {p + o + overshoot}",
                            f"shorten them or bound them with :max= so that prompt + output + speculation <= {model.max_context}")
    return tr


def _batching(args, auto: bool = False) -> str:
    allowed = ("ragged", "synchronous", "auto") if auto else ("ragged", "synchronous")
    if args.batching not in allowed:
        raise ValueError(f"batching: must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {args.batching!r}")
    return args.batching


def _plan(args, setting: Setting) -> schema.Plan:
    plan = plan_from_args(args)
    if args.levels is not None or given(getattr(args, "_argv", []), "--batching"):  # --batching V or --batching=V
        plan = plan.model_copy(update={"batching": _batching(args)})
    setting.profile.check_plan(plan, setting.workload)
    note_plan_batch("hispec-sim", plan, args.max_batch)
    return plan


def note_plan_batch(prog: str, plan: schema.Plan, max_batch: int) -> None:
    """A plan's lockstep batch (optimize --batch B) is not a serving parameter: said on stderr, not ignored."""
    if plan.batch != 1:
        print(f"{prog}: note: the plan's batch {plan.batch} is not read: serving batches up to --max-batch "
              f"({max_batch}) sequences as they arrive", file=sys.stderr)


# --------------------------------------------------------------------------- serve


def _arrays(reqs: list[schema.Request]):
    arr = np.array([r.arrival_s for r in reqs], float)
    # a text prompt's length in tokens: its bytes (_check_trace admits text for byte-level models only)
    pl = np.array([r.prompt_len if r.prompt_len is not None else len(r.prompt.encode("utf-8")) for r in reqs], np.int64)
    ol = np.array([r.max_new_tokens for r in reqs], np.int64)
    return arr, pl, ol


def _check_trace(model: schema.ModelShape, trace: list[schema.Request], overshoot: int, lines: list[int]) -> None:
    """Every request fits the model: its token ids in the vocabulary (as hispec-exec serve
    checks), its tokens in the context; a text prompt (counted in bytes) only where the model
    reads bytes (ModelShape.reads_bytes: the shipped model, those `train` makes, synthetic
    stand-ins): the simulator has no other model's tokenizer to count its tokens with. lines:
    each request's line in the file (traffic.trace_lines), as hispec-exec serve names them."""
    def where(i: int) -> str:
        return f"trace: request {i} (line {lines[i]})"

    for i, r in enumerate(trace):
        if r.prompt is not None and not model.reads_bytes:
            raise ValueError(f"{where(i)}: prompt: a text prompt's length in tokens needs the tokenizer of "
                             f"{model.name} (vocabulary {model.vocab}), which hispec-sim does not have; give "
                             "prompt_tokens (a length or the ids; hispec-exec serve --json reports each request's)")
        if isinstance(r.prompt_tokens, list) and max(r.prompt_tokens) >= model.vocab:
            raise ValueError(f"{where(i)}: prompt_tokens: token ids must be in [0, {model.vocab}) (the profile's "
                             "model.vocab)")
    _, pl, ol = _arrays(trace)
    i = int(np.argmax(pl + ol))
    model.check_context(int(pl[i] + ol[i]) + overshoot, "trace", f"request {i} (line {lines[i]}) needs {pl[i]} (prompt) + {ol[i]} "
                        f"(max_new_tokens) + {overshoot} (speculation) = {int(pl[i] + ol[i]) + overshoot}")


def refuse_unread_traffic(args) -> None:
    """With --trace the requests are the file's, so the generator's flags are refused; --cv
    shapes gamma arrivals only (both serve commands and capacity)."""
    if getattr(args, "trace", None):
        refuse_unread(args, ("--requests", "--arrival", "--cv", "--prompt-len", "--output-len"),
                      "generated traffic (--qps); a --trace brings its own requests")
    elif args.arrival != "gamma":
        refuse_unread(args, ("--cv",), "--arrival gamma")


def cmd_serve(args) -> int:
    refuse_unread_traffic(args)
    if args.per_request and not args.json:
        raise ValueError("per_request: lists every request in the JSON; add --json")
    setting = _setting(args)
    limits = _limits(args)
    batching = _batching(args)
    if args.trace and args.qps is not None:
        raise ValueError("trace: give --trace FILE or --qps, not both")
    if not args.trace and args.qps is None:
        raise ValueError("qps: give --qps X (requests/s, > 0) or --trace FILE")
    plan = _plan(args, setting)
    note_plan_setting(args, setting, ("workload", "tp", "stack"))  # a served context is the traffic's
    tr = _traffic(args, setting.profile.model, plan.max_overshoot)
    del batching
    trace = traffic.load_trace(args.trace) if args.trace else None
    if trace is not None:
        _check_trace(setting.profile.model, trace, plan.max_overshoot, traffic.trace_lines(args.trace))
    elif limits.kv_tokens is not None:  # every length the distributions allow, not one seed's draws (as capacity)
        p, o = tr.prompt_len.upper, tr.output_len.upper
        need = int(serving.reservation(plan, p, o))
        if need > limits.kv_tokens:
            raise ValueError(f"kv_tokens: {limits.kv_tokens} cannot hold the longest request these lengths allow "
                             f"(prompt up to {p} + output up to {o} + {'speculation' if plan.depth > 1 else 'the next step'} "
                             f"{plan.max_overshoot}); allowed: >= {need}")
    summaries, steps, prefills, first = [], [], [], None
    for k in range(args.seeds):
        if trace is not None:
            arr, pl, ol = _arrays(trace)
        else:
            rng = np.random.default_rng(tr.seed + k)
            t = tr.model_copy(update={"seed": tr.seed + k})
            arr = traffic.arrival_times(t, rng)
            pl = traffic.draw_lengths(t.prompt_len, t.requests, rng)
            ol = traffic.draw_lengths(t.output_len, t.requests, rng)
        if k == 0:  # the whole command's forwards, the first seed's lengths standing for every seed's
            serving.check_size(setting.acceptance, plan, ol, runs=args.seeds)
        run = serving.simulate_arrays(setting.table, setting.num_layers, setting.acceptance, plan, arr, pl, ol, limits,
                                      seed=args.seed + k)
        summaries.append(serving.quick_summary(run, limits))
        steps.append(run.steps)
        prefills.append(run.prefills)
        if k == 0 and args.per_request:
            first = [m.model_dump() for m in run.metrics()]
        del run  # one run's arrays at a time
    agg = serving.over_seeds(summaries)
    out = {**{k: v for k, v in setting.describe().items() if k not in ("batch", "context")},
           "plan": plan.model_dump(), "describe": plan.describe(), "batching": plan.batching,
           "traffic": {"trace": args.trace} if trace is not None else json.loads(tr.model_dump_json()),
           "limits": limits.model_dump(), "seeds": args.seeds, "mean_over_seeds": agg, "per_seed": summaries,
           "steps": steps, "prefill_forwards": prefills,
           "step_noise": _noise_used(args, setting)}
    if args.json:
        if args.per_request:
            out["requests"] = first
        print(json.dumps(out, indent=2))
        return 0
    src = f"trace {shown(args.trace)}" if trace is not None else (
        f"{tr.arrival} {tr.qps:g} req/s, {tr.requests} requests, prompt {args.prompt_len}, output {args.output_len}")
    print(f"profile {setting.profile.name}  workload {setting.workload}  tp {setting.tp}  plan {plan.describe()}  "
          f"batching {plan.batching}")
    print(f"traffic: {src}; max batch {limits.max_batch}, kv tokens {limits.kv_tokens or 'unbounded'}, "
          f"{limits.prefill_words()}; {args.seeds} seed(s), mean [95 % CI over seeds]")
    noise = out["step_noise"]
    print("step noise: " + (f"on (measured on {noise['iterations']} iterations, lag-1 autocorrelation "
                              f"{noise['lag1_autocorrelation']:g})" if noise["used"] else f"off: {noise['why']}"))
    print()
    print(_table(agg, summaries))
    return 0


def _fmt(e: dict, nd: int = 1) -> str:
    m = decimals(e["mean"], nd)
    if e["ci95"] is not None:
        m = f"{m} [{decimals(e['ci95'][0], nd)}, {decimals(e['ci95'][1], nd)}]"
    return m if "seeds" not in e else f"{m} ({e['seeds']} seed{'s' * (e['seeds'] != 1)})"  # only those that have it


def _table(agg: dict, summaries: list[dict]) -> str:
    slo = agg["slo_attained"]
    pct = {"mean": 100 * slo["mean"], "ci95": None if slo["ci95"] is None else [100 * x for x in slo["ci95"]]}
    attained, *p99 = traffic.slo_lines(summaries, _fmt(pct))
    lines = [f"{'throughput (tokens/s)':24s} {_fmt(agg['throughput_tokens_per_s'])}",
             f"{'goodput (requests/s)':24s} {_fmt(agg['goodput_requests_per_s'], 3)}  {attained}", *p99]
    lines.append(f"{'':24s} {'mean':>28s} {'p50':>28s} {'p90':>28s} {'p99':>28s}")
    for key, label in (("ttft_ms", "TTFT (ms)"), ("tbt_ms", "TBT (ms)"), ("tpot_ms", "TPOT (ms)"),
                       ("e2e_ms", "end-to-end (ms)"), ("queue_ms", "queueing (ms)")):
        row = agg.get(key, {})
        cells = [(_fmt(row[q]) if q in row else "-") for q in ("mean", "p50", "p90", "p99")]
        lines.append(f"{label:24s} " + " ".join(f"{c:>28s}" for c in cells))
    return "\n".join(lines)


# --------------------------------------------------------------------------- capacity


def _tbt(ms: float | None, unit: str = " ms") -> str:
    """A p99 TBT for the text output; '-' where no request had a second token."""
    return "-" if ms is None else f"{decimals(ms, 1)}{unit}"


def cmd_capacity(args) -> int:
    from .capacity import Spec, plan_capacity

    refuse_unread_traffic(args)
    setting = _setting(args)
    limits = _limits(args)
    batching = _batching(args, auto=True)
    if limits.prefill == "chunked":  # built for ragged batching (serving.check_limits)
        if batching == "synchronous":
            raise ValueError("prefill_chunk: chunked prefill is built for ragged batching; allowed with --batching "
                             "ragged or auto (which then searches ragged plans only)")
        batching = "ragged"
    widest = schema.Plan(levels=[1, 2, 3], propose=args.max_propose, windows=[args.max_window])  # of the searched plans
    tr = _traffic(args, setting.profile.model, widest.max_overshoot)
    mean_out, mean_prompt = traffic.mean_length(tr.output_len), traffic.mean_length(tr.prompt_len)
    if limits.kv_tokens is not None:  # autoregressive decoding (1 token in flight) must fit; wider plans are left out
        worst = tr.prompt_len.upper + tr.output_len.upper
        if worst + 1 > limits.kv_tokens:
            raise ValueError(f"kv_tokens: {limits.kv_tokens} cannot hold one request of these lengths (up to {worst} "
                             f"tokens + 1 in flight for autoregressive decoding); allowed: >= {worst + 1}")
    spec = Spec(setting, tr, limits, batching, args.seeds)
    res = plan_capacity(spec, args.qps, args.gpu_hour_usd, args.max_propose, args.max_window)
    res.update({"profile": setting.profile.name, "workload": setting.workload, "tp": setting.tp, "stack": setting.stack,
                "slo_ttft_ms": limits.slo_ttft_ms, "slo_tbt_ms": limits.slo_tbt_ms, "gpu_hour_usd": args.gpu_hour_usd,
                "traffic": json.loads(tr.model_dump_json(exclude={"qps", "seed"})), "mean_prompt_tokens": mean_prompt,
                "max_batch": limits.max_batch, "prefill_chunk": limits.prefill_chunk, "batching": batching,
                "seeds": args.seeds,
                "step_noise": _noise_used(args, setting)})
    if "closest" in res:
        c = res["closest"]
        raise ValueError(f"slo: no plan meets p99 TTFT <= {limits.slo_ttft_ms:g} ms and p99 TBT <= {limits.slo_tbt_ms:g} ms "
                         f"even at a nearly idle replica; closest: {c['family']} {c['plan']} (p99 TTFT "
                         f"{decimals(c['ttft_p99_ms'], 0)} ms, p99 TBT {_tbt(c['tbt_p99_ms'])})")
    if args.json:
        print(json.dumps(res, indent=2, default=str))
        return 0
    print(f"profile {res['profile']}  workload {res['workload']}  tp {res['tp']}  max batch {res['max_batch']}  "
          f"batching {batching}  {limits.prefill_words()}")
    print(f"target {args.qps:g} req/s ({tr.arrival}), prompt {args.prompt_len} (mean {mean_prompt:.4g}), output "
          f"{args.output_len} (mean {mean_out:.4g}); SLOs p99 TTFT <= {limits.slo_ttft_ms:g} ms, p99 TBT <= "
          f"{limits.slo_tbt_ms:g} ms; ${args.gpu_hour_usd:g}/GPU-hour; {tr.requests} requests x {args.seeds} seeds per load")
    noise = res["step_noise"]
    print("step noise: " + ("on (the profile's measured step noise)" if noise["used"] else f"off: {noise['why']}"))
    print()
    w = max([38] + [len(e["describe"]) for e in res["families"].values()])
    print(f"{'family':16s} {'plan':{w}s} {'req/s per replica [95% CI]':>28s} {'replicas':>9s} {'GPUs':>5s} {'$/M tok':>8s} "
          f"{'p99 TTFT':>9s} {'p99 TBT':>8s}")
    for fam, e in res["families"].items():
        q = e["max_qps_per_replica"]
        n = len(e["per_seed_bracket"])  # an interval needs 2 seeds used (capped ones are left out)
        if e["max_qps_ci95"] is not None:
            ci = f"{decimals(q, 2)} [{decimals(e['max_qps_ci95'][0], 2)}, {decimals(e['max_qps_ci95'][1], 2)}]"
        elif n > 1 and e["seeds_capped"] == n:
            ci = f"{decimals(q, 2)} (cap, {n} of {n} seeds)"
        else:
            ci = f"{decimals(q, 2)} (1 {'seed' if n == 1 else f'of {n} seeds'})"
        if q > 0:
            tail = f"{e['replicas']:9d} {e['gpus']:5d} {decimals(e['usd_per_million_tokens'], 3):>8s}"
        else:
            tail = f"{'-':>9s} {'-':>5s} {'-':>8s}"
        a = e["at_max_qps"]
        print(f"{fam:16s} {e['describe']:{w}s} {ci:>28s} {tail} {decimals(a['ttft_p99_ms'], 0):>9s} {_tbt(a['tbt_p99_ms'], ''):>8s}")
    if res["max_in_flight"] is not None and res["max_in_flight"] < widest.max_overshoot:
        n = res["max_in_flight"]
        missing = [f"no {f.replace('_', '-')} plan" for f in ("single_level", "hierarchical") if f not in res["families"]]
        print(f"note: --kv-tokens {limits.kv_tokens} holds the longest request ({limits.kv_tokens - n} tokens) with at "
              f"most {n} token{'s' * (n != 1)} in flight: only plans that speculate within that are searched"
              + (f" ({' and '.join(missing)} fits)" if missing else ""))
    for fam, e in res["families"].items():
        if e["capped_at_saturation"]:
            k, n = e["seeds_capped"], len(e["per_seed_bracket"])
            runs = f"the run of {tr.requests} requests" if n == 1 else f"{k} of the {n} seeds' runs of {tr.requests} requests"
            what = (f"{decimals(e['max_qps_per_replica'], 2)} req/s is an upper bound" if e["seeds_used"] == n else
                    f"an upper bound only, so left out: {decimals(e['max_qps_per_replica'], 2)} req/s is "
                    + (f"the mean of the other {e['seeds_used']}" if e["seeds_used"] > 1 else "the other seed's"))
            print(f"note: {fam}: {runs} met the SLOs at the saturation load, "
                  f"{decimals(e['saturation_qps'], 2)} req/s (a full batch's throughput, which no replica sustains for long), "
                  f"where the search stops: {what}; more --requests show where the queue builds up")
    for fam, e in res["families"].items():
        k, n = e["seeds_failing_idle"], len(e["per_seed_bracket"])
        if 0 < k < n:
            print(f"note: {fam}: {k} of the {n} seeds' runs missed the SLOs even at a nearly idle load: each counts as 0 "
                  f"req/s in the mean; the p99 columns are the worst other seed's at its maximum")
    if "by_load" in res:
        print()
        print("best plan per family as the load per replica grows (smallest p99/SLO ratio; * = meets both SLOs on "
              "seed 0's requests, at most at its saturation load):")
        fams = [f for f in res["families"] if f in res["by_load"][0]["families"]]
        print(f"{'req/s':>8s} " + " ".join(f"{f:>40s}" for f in fams))
        for row in res["by_load"]:
            cells = [f"{row['families'][f]['plan']}{'*' if row['families'][f]['meets_slo'] else ' '}" for f in fams]
            print(f"{decimals(row['qps'], 2):>8s} " + " ".join(f"{c:>40s}" for c in cells))
        best = res["best_family"]
        e = res["families"][best]
        print()
        print(f"best: {best} {e['describe']}: {e['replicas']} replica(s) x {res['tp']} GPUs = {e['gpus']} GPUs, "
              f"${decimals(e['usd_per_million_tokens'], 3)} per million generated tokens ({res['seconds']:.1f} s)")
    return 0
