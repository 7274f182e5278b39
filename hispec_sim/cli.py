"""`hispec-sim`: the command line. I/O and argument checking live here, nothing else.

Shared plumbing (parser, typed flags, plan flags, output checks, one-line errors, SIGINT)
is in cli_common; the limits are in schema. A new subcommand: a `cmd_x(args)` here and
three lines in build_parser().
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import cli_measure, schema
from .cli_common import (SEED, Parser, UsageError, add_model_args, add_plan_args, add_search_bounds, check_output,  # noqa: F401
                         check_storage, float_in, given, int_in, load_model_from_args, name_text, note_plan_setting,
                         note_weights, one_line, plan_from_args, refuse_unread, run_main, shown, sqlite_files,
                         unheld_setting)
from .evaluate import DEFAULT_RESCORE, Setting, optimized, score
from .schema import decimals, rounded

CONTEXT = int_in(0, schema.MAX_CONTEXT)
TP = int_in(1, schema.MAX_TP)
BATCH = int_in(1, schema.MAX_BATCH)


def _setting_args(p: argparse.ArgumentParser, batch=True, plan_file=True,
                  context_default: str = "the workload's", json_help: str = "print one JSON object") -> None:
    p.add_argument("--profile", required=True, help="shipped profile name or path to a profile JSON")
    p.add_argument("--workload", type=name_text, help="workload name (default: the profile's)")
    p.add_argument("--tp", type=TP, help="tensor-parallel degree (default: the profile's)")
    p.add_argument("--stack", type=name_text, help="serving stack, e.g. compiled or hf_eager (default: the profile's)")
    if batch:
        p.add_argument("--batch", type=BATCH, default=None,
                       help="sequences in lockstep (default 1" + (", or the plan file's)" if plan_file else ")"))
    p.add_argument("--context", type=CONTEXT, help=f"mean context length (default: {context_default})")
    p.add_argument("--json", action="store_true", help=json_help)


def _setting(args, batch: int | None = None, profile: schema.Profile | None = None) -> Setting:
    b = batch if batch is not None else (getattr(args, "batch", None) or 1)
    profile = profile or schema.load_profile(args.profile)
    return note_weights(Setting(profile, args.workload, args.tp, args.stack, b, args.context))


def _profile_path(args):
    """The profile's file (an input no output may overwrite), or None for a bad name."""
    try:
        return schema.resolve_profile_path(args.profile)
    except ValueError:
        return None


def cmd_evaluate(args) -> int:
    profile = schema.load_profile(args.profile)
    plan = plan_from_args(args, batch=args.batch)  # --batch (either form) overrides the plan file's
    setting = _setting(args, plan.batch, profile)
    setting.profile.check_plan(plan, setting.workload)
    note_plan_setting(args, setting)
    if plan.adaptive:  # confidence thresholds: hispec_sim.adaptive (the fixed-plan models ignore them)
        from .adaptive import gain_text, predict_adaptive, replay_text

        refuse_unread(args, ("--mc", "--replay", "--streams", "--cycles", "--seed"),
                      "plans without confidence thresholds (an adaptive plan's output holds its own trace replay)")
        out = {**setting.describe(), **predict_adaptive(setting, plan)}
        if not args.json:
            print(setting.header())
        print(json.dumps(out, indent=2) if args.json else f"plan {out['describe']}  {_tps(out['tokens_per_second'])} tokens/s  "
              f"x{decimals(out['speedup_vs_autoregressive'], 3)} vs autoregressive  {gain_text(out['gain_over_fixed'])}  "
              f"({out['model']}; {out['rates'].split(':')[0]})" + replay_text(out.get("trace_replay")))
        return 0
    if not (args.mc or args.replay):
        refuse_unread(args, ("--streams", "--cycles", "--seed"), "the i.i.d. Monte-Carlo estimate; add --mc")
    if args.replay:  # replay walks every measured request once: no streams, cycles or randomness to set
        if args.mc:
            raise ValueError("mc: --mc (i.i.d. streams) and --replay (the measured requests) are two estimates; give one")
        refuse_unread(args, ("--streams", "--cycles", "--seed"),
                      "the i.i.d. Monte-Carlo estimate (--mc); trace replay walks each measured request once, deterministically")
    if args.mc and setting.agreement.scenarios is not None:  # montecarlo.simulate: one whole request per stream
        from .montecarlo import REQUEST_TOKENS

        refuse_unread(args, ("--cycles",), f"workloads without a per-request spread; workload {setting.workload!r} has "
                      f"one, so every stream is one request of {REQUEST_TOKENS} tokens (--streams sets how many)")
    if args.streams * args.cycles > schema.MAX_STREAM_CYCLES:
        raise ValueError(f"streams: --streams x --cycles must be <= {schema.MAX_STREAM_CYCLES}, "
                         f"got {args.streams} x {args.cycles}")
    ar, s = score(setting, [schema.autoregressive_plan(setting.num_layers, plan.batch), plan])
    out = {**setting.describe(), **s.as_dict(ar.tokens_per_second)}
    if args.mc or args.replay:
        from .montecarlo import simulate

        r = simulate(setting.cost_for([plan]), setting.agreement, plan,
                     streams=args.streams, cycles=args.cycles, seed=args.seed, replay=args.replay)
        out["monte_carlo"] = {"tokens_per_second": rounded(r.tokens_per_second, 4),
                              "ci95": None if r.ci95 is None else [rounded(r.ci95[0], 4), rounded(r.ci95[1], 4)],
                              "latency_ms_p50": rounded(r.latency_ms_p50, 4), "latency_ms_p99": rounded(r.latency_ms_p99, 4),
                              "tokens_per_full_forward": rounded(r.tokens_per_full_forward, 4),
                              "acceptance_per_level": [rounded(a, 4) for a in r.acceptance],
                              "streams": r.streams, "cycles": r.cycles, "trace_replay": r.replay,
                              "seed": None if r.replay else args.seed}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(setting.header())
    print(f"plan {plan.describe()}  ({plan.family})")
    print(f"  analytic:    {_tps(out['tokens_per_second']):>10s} tokens/s  x{decimals(out['speedup_vs_autoregressive'], 3)} "
          f"vs autoregressive  {out['tokens_per_full_forward']:.3f} tokens/full forward  "
          f"{decimals(out['latency_ms_per_token'], 3)} ms/token")
    if out["acceptance_per_level"]:
        print("  acceptance per level: " + ", ".join(f"L{lv}: {a:.3f}" for lv, a in zip(plan.levels[1:], out["acceptance_per_level"])))
    if "monte_carlo" in out:
        m = out["monte_carlo"]
        ci = "95% CI: none from one request" if m["ci95"] is None else f"95% CI [{_tps(m['ci95'][0])}, {_tps(m['ci95'][1])}]"
        print(f"  monte-carlo: {_tps(m['tokens_per_second']):>10s} tokens/s  {ci}"
              f"  per-token latency p50 {decimals(m['latency_ms_p50'], 3)} ms  p99 {decimals(m['latency_ms_p99'], 3)} ms"
              f"  ({m['cycles']} cycles, {'trace replay' if m['trace_replay'] else 'i.i.d.'})")
    return 0


def _tps(x: float) -> str:
    return decimals(x, 2)


def _table(rows: list[tuple[str, dict]]) -> str:
    analytic = any("analytic_tokens_per_second" in r for _, r in rows)
    head = (f"{'':22s} {'plan':34s} {'tokens/s':>10s} {'speedup':>8s} {'tok/full':>8s} {'ms/token':>9s}"
            + (f" {'analytic':>10s}" if analytic else ""))
    lines = [head, "-" * len(head)]
    for label, r in rows:
        lines.append(f"{label:22s} {r['describe']:34s} {_tps(r['tokens_per_second']):>10s} "
                     f"{decimals(r['speedup_vs_autoregressive'], 3):>7s}x {r['tokens_per_full_forward']:8.3f} "
                     f"{decimals(r['latency_ms_per_token'], 3):>9s}"
                     + (f" {_tps(r['analytic_tokens_per_second']):>10s}" if analytic else ""))
    return "\n".join(lines)


def cmd_optimize(args) -> int:
    from . import search

    opts = search.cli_prepare(args)  # --batch/--tp choices, --search/--depth/--objectives (search.py)
    _check_search_args(args, opts)
    if args.out:  # before the search: never overwrite the profile or the study database
        check_output(args.out, inputs=[_profile_path(args), *sqlite_files(args.storage)])
    setting = _setting(args)
    if opts["optuna"] and (args.objective == "mc" or "p99" in opts["objectives"]):
        _refuse_unread_mc(args, setting)
    if getattr(args, "adaptive", False):  # before the search: the adaptive model needs confidence statistics
        from .adaptive import _top1, check_batch_one

        _top1(setting.acceptance)
        check_batch_one(max(opts["batches"] or [setting.batch]))
    if opts["optuna"]:
        args._interrupted = "the study keeps its finished trials in its --storage; nothing else written"
        result = search.cli_optuna(args, setting, opts)
    else:
        result = optimized(setting, args.top, args.max_propose, args.max_window, rescore=args.rescore)
    setting = result.setting  # with --batch/--tp choices: the best plan's
    out = result.as_dict()
    if getattr(args, "adaptive", False):
        from .adaptive import cli_adaptive

        out["adaptive"] = cli_adaptive(setting, result, args.max_propose, args.max_window)
    if args.out:  # with --adaptive: the best adaptive plan
        schema.save_plan(schema.Plan.model_validate(out["adaptive"]["best"]["plan"]) if "adaptive" in out
                         else result.best.plan, args.out)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(setting.header())
    if opts["optuna"]:
        print(search.cli_summary(out) + "\n")
    else:
        print(f"searched {out['plans_evaluated']} plans (exhaustive: single-level and 3-level, propose 1..{args.max_propose}, "
              f"window 1..{args.max_window}) in {out['seconds']:.3f} s\n")
    if "rescored" in out:
        hint = "" if opts["optuna"] or args.rescore else " (--rescore 0: analytic only)"
        print(f"ranked by {out['rescored']['by']}: {out['rescored']['note']} ({out['rescored']['seconds']:.2f} s); "
              f"analytic tokens/s in the last column{hint}\n")
    rows = [(f"#{i + 1}", r) for i, r in enumerate(out["top"])]
    rows += [("autoregressive", out["baselines"]["autoregressive"]),
             ("best single-level", out["baselines"]["best_single_level"]),
             ("paper default", out["baselines"]["paper_default"])]
    print(_table(rows))
    b = out["best"]
    print(f"\nbest: {b['describe']}  {decimals(b['speedup_vs_autoregressive'], 3)}x autoregressive, "
          f"{decimals(b['speedup_vs_best_single_level'], 3)}x the best single-level plan")
    if "adaptive" in out:
        from .adaptive import cli_adaptive_text

        print(cli_adaptive_text(out["adaptive"]))
    if args.out:
        unheld = unheld_setting(setting)  # a plan file holds none of these: say which to give
        where = "evaluate, serve or capacity" if "context" not in unheld else "evaluate (serve and capacity: all but --context)"
        print(f"plan written to {shown(args.out)}" + (
            f" (at {', '.join(f'{k} {v}' for k, v in unheld.items())}, which a plan file does not hold: give "
            f"{' '.join(f'--{k} {v}' for k, v in unheld.items())} to {where})" if unheld else ""))
    return 0


def _check_search_args(args, opts: dict) -> None:
    """Bounds of the flags search.add_cli_args declares (the limits are the schema's)."""
    from .search import MAX_SEARCH_DEPTH

    for field, values, hi in (("batch", opts["batches"] or [args.batch], schema.MAX_BATCH),
                              ("tp", opts["tps"] or ([args.tp] if args.tp is not None else []), schema.MAX_TP)):
        bad = [v for v in values if not 1 <= v <= hi]
        if bad:
            raise ValueError(f"{field}: values must be in [1, {hi}], got {bad[0]}")
    if args.rescore and opts["optuna"]:
        raise ValueError("rescore: re-scores the exhaustive search's ranking; with --search optuna use --objective mc "
                         "(trace replay where the workload has traces)")
    if opts["depth"] is not None:
        lo, hi = opts["depth"]
        if not 1 <= lo <= hi <= MAX_SEARCH_DEPTH:
            raise ValueError(f"depth: expected N or MIN-MAX with 1 <= MIN <= MAX <= {MAX_SEARCH_DEPTH}, "
                             f"got {args.depth!r}")
    if args.mc_streams * args.mc_cycles > schema.MAX_STREAM_CYCLES:
        raise ValueError(f"mc_streams: --mc-streams x --mc-cycles must be <= {schema.MAX_STREAM_CYCLES}")
    if not opts["optuna"]:
        refuse_unread(args, ("--trials", "--timeout", "--sampler", "--storage", "--study-name", "--workers", "--seed",
                             "--mc-streams", "--mc-cycles"),
                      "the Optuna search, and this one is exhaustive; add --search optuna")
    else:  # an exhaustive search opens no study, so it does not look at the default storage either
        check_storage(args.storage)
        if args.objective != "mc" and "p99" not in opts["objectives"]:
            refuse_unread(args, ("--mc-streams", "--mc-cycles"), "the Monte-Carlo objectives: --objective mc or p99")


def _refuse_unread_mc(args, setting) -> None:
    """The trials' Monte-Carlo (search.Evaluator.simulate) reads no --mc-streams or
    --mc-cycles when it replays the measured requests, and no --mc-cycles on a workload with
    a per-request spread (one request per stream), as `evaluate --mc` / `--replay`."""
    from .montecarlo import REQUEST_TOKENS

    if setting.acceptance.traces is not None:
        refuse_unread(args, ("--mc-streams", "--mc-cycles"), "an i.i.d. Monte-Carlo; on this workload the trials "
                      "replay its measured requests (each walked once, deterministically)")
    elif setting.agreement.scenarios is not None:
        refuse_unread(args, ("--mc-cycles",), f"workloads without a per-request spread; workload {setting.workload!r} "
                      f"has one, so every stream is one request of {REQUEST_TOKENS} tokens (--mc-streams sets how many)")


def cmd_profiles(args) -> int:
    rows = []
    for name in schema.known_profiles():
        p = schema.load_profile(name)
        rows.append({"name": name, "model": p.model.name, "layers": p.model.num_layers, "hardware": p.hardware.name,
                     "tp": sorted({t.tp for t in p.latency}), "stacks": sorted({t.stack for t in p.latency}),
                     "workloads": sorted(p.workloads), "description": p.description})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("\n".join(profile_table(rows)))
    return 0


def profile_table(rows: list[dict], width: int = 100) -> list[str]:
    """The `profiles` table, every line at most `width` characters: workloads are listed
    when they fit, counted otherwise (`profiles --json` has everything)."""
    cols = ["name", "model", "layers", "hardware", "tp", "stacks"]
    cells = [[r["name"], r["model"], str(r["layers"]), r["hardware"], ",".join(map(str, r["tp"])), ",".join(r["stacks"])]
             for r in rows]
    w = [max([len(c)] + [len(x[i]) for x in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(cols)) + "  workloads"]
    for r, x in zip(rows, cells):
        head = "  ".join(v.ljust(w[i]) for i, v in enumerate(x)) + "  "
        line = head + ",".join(r["workloads"])
        if len(line) > width:
            line = head + str(len(r["workloads"]))
        lines.append(line if len(line) <= width else line[:width - 3] + "...")
    return lines


def cmd_schema(args) -> int:
    dialect = {"$schema": "https://json-schema.org/draft/2020-12/schema"}  # what pydantic writes
    print(json.dumps({"plan": {**dialect, **schema.Plan.model_json_schema()},
                      "profile": {**dialect, **schema.Profile.model_json_schema()}}, indent=2))
    return 0


def cmd_report(args) -> int:
    from .report import FAMILY_LABEL, build_report
    from .report_format import _fmt

    if args.serving_requests == 0:
        refuse_unread(args, ("--slo-ttft-ms", "--slo-tbt-ms"), "the serving curves, which --serving-requests 0 skips")
    suffix = {".md": "md", ".markdown": "md", ".html": "html", ".htm": "html"}.get(Path(args.out or "").suffix.lower())
    if args.format and suffix and args.format != suffix:
        raise ValueError(f"format: --format {args.format} but --out {args.out} names {'a Markdown' if suffix == 'md' else 'an HTML'} file; give one or the other")
    args.format = args.format or suffix or "html"  # --out r.md alone writes Markdown
    out = args.out or ("report.html" if args.format == "html" else "report.md")
    check_output(out, inputs=[_profile_path(args), args.validation])
    data, _, path = build_report(args.profile, out, args.format, workload=args.workload, tp=args.tp,
                                 stack=args.stack, batch=args.batch or 1, context=args.context, target_tps=args.target_tps,
                                 slo_ms=args.slo_ms, gpu_hour_usd=args.gpu_hour_usd, validation=args.validation,
                                 max_batch=args.max_batch, max_propose=args.max_propose, max_window=args.max_window,
                                 slo_ttft_ms=args.slo_ttft_ms, slo_tbt_ms=args.slo_tbt_ms,
                                 serving_requests=args.serving_requests)
    for w in data["capacity"]["warnings"]:
        print(f"hispec-sim: warning: {w}", file=sys.stderr)
    if data["serving"] is None and args.serving_requests:  # known only once the plans (their speculation) are found
        for flag in ("--slo-ttft-ms", "--slo-tbt-ms"):
            if given(getattr(args, "_argv", []), flag):
                print(f"hispec-sim: warning: {flag} not used: the serving section is skipped "
                      f"({data['serving_skipped']})", file=sys.stderr)
    if args.json:  # the report's data; the report itself is written all the same, and said so off stdout
        from .report import _jsonable

        print(f"hispec-sim: report written to {shown(path)}", file=sys.stderr)
        print(json.dumps(_jsonable(data), indent=2))
        return 0
    fam = data["best"]["families"]
    best = fam[data["best"]["best_family"]]
    print(f"report written to {shown(path)}")
    print(f"best plan {best['describe']}: {_fmt(best['tokens_per_second'], 2)} tokens/s "
          f"({decimals(best['tokens_per_second'] / fam['autoregressive']['tokens_per_second'], 3)}x autoregressive)")
    cap = data["capacity"]
    for r in cap["rows"]:
        if r["meets_slo"]:
            print(f"  {FAMILY_LABEL[r['family']]:28s} batch {r['batch']:4d}  {r['replicas']} replica(s), {r['gpus']} GPU(s), "
                  f"${decimals(r['usd_per_million_tokens'], 3)}/M tokens")
    return 0


def cmd_export(args) -> int:
    from .export import export

    if not args.profile:
        for flag in ("workload", "tp", "stack", "context"):
            if getattr(args, flag) is not None:
                raise ValueError(f"{flag}: applies to a profile's predictions; give --profile too")
    elif args.to != "json":  # exec and hf read the profile's model only (export.check_runs_on)
        refuse_unread(args, ("--tp", "--stack", "--context"), "--to json's predicted figures")
    if args.out:
        check_output(args.out, inputs=[args.plan, _profile_path(args) if args.profile else None])
    text, notes = export(args.plan, args.to, args.profile, args.workload, args.tp, args.stack, args.context)
    if args.out:
        schema.write_atomic(args.out, text)
        what = EXPORT_FORMATS[args.to] if args.profile or args.to != "json" else "the plan alone: --profile adds its predicted figures"
        print(f"exported {shown(args.plan)} as {args.to} ({what}) to {shown(args.out)}")
    else:
        sys.stdout.write(text)
    for n in notes:
        print(f"hispec-sim: note: {n}", file=sys.stderr)
    return 0


EXPORT_FORMATS = {"exec": "plan file for hispec-exec run --plan", "hf": "transformers generate() kwargs",
                  "json": "plan with its predicted figures"}


def build_parser() -> Parser:
    parser = Parser(prog="hispec-sim", description="Simulate, search and plan hierarchical speculative decoding.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("schema", help="print the JSON Schemas of plans and profiles")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("profiles", help="list shipped profiles")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_profiles)

    p = sub.add_parser("evaluate", help="predict one plan's throughput")
    _setting_args(p)
    add_plan_args(p)
    p.add_argument("--mc", action="store_true", help="also run the Monte-Carlo simulator (i.i.d.)")
    p.add_argument("--replay", action="store_true", help="Monte-Carlo with trace replay (profiles with traces)")
    p.add_argument("--streams", type=int_in(2, schema.MAX_STREAMS), default=4096)  # its CI needs two
    p.add_argument("--cycles", type=int_in(1, schema.MAX_CYCLES), default=64, help="full-model checks simulated per stream")
    p.add_argument("--seed", type=SEED, default=0)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("optimize", help="search the best plan", conflict_handler="resolve")
    _setting_args(p)
    p.add_argument("--top", type=int_in(1, 1000), default=10, help="plans listed, 1-1000 (default 10)")
    add_search_bounds(p)
    p.add_argument("--out", help="write the best plan to this plan file")
    p.add_argument("--rescore", type=int_in(0, 1000), default=None, metavar="N",
                   help="exhaustive search: re-score its N best plans (never fewer than --top; and the baselines) by trace replay of the "
                        f"workload's measured requests and rank by that (default {DEFAULT_RESCORE} where the workload "
                        "has traces, else 0; 0: analytic only)")
    p.add_argument("--adaptive", action="store_true", help="also search confidence thresholds (draft_confidence, "
                   "escalate_confidence) around the best plans; profiles with confidence statistics only")
    from .search import add_cli_args

    add_cli_args(p)  # --search, --trials, --storage, ... and --batch/--tp as choices (search.py)
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser("report", help="capacity-planning report: one self-contained HTML file (or Markdown)")
    _setting_args(p, plan_file=False, json_help="print the report's figures as one JSON object (the file is still written)")
    p.add_argument("--out", help="output file (default report.html / report.md)")
    p.add_argument("--format", choices=["html", "md"], default=None, help="default: by --out's suffix (.md), else html")
    p.add_argument("--target-tps", type=float_in(1e-6, 1e12), help="aggregate tokens/s the deployment must serve (default 10000)")
    p.add_argument("--slo-ms", type=float_in(1e-6, schema.MAX_MS), help="per-token latency SLO in ms (default 50)")
    p.add_argument("--gpu-hour-usd", type=float_in(1e-6, 1e6), help="price of one GPU-hour in USD (default 2.0)")
    p.add_argument("--validation", help="JSON of `hispec-sim validate --json` (fidelity figures)")
    p.add_argument("--slo-ttft-ms", type=float_in(1e-6, schema.MAX_MS), help="serving curves: p99 TTFT SLO in ms (default 2000)")
    p.add_argument("--slo-tbt-ms", type=float_in(1e-6, schema.MAX_MS), help="serving curves: p99 TBT SLO in ms (default: --slo-ms)")
    p.add_argument("--serving-requests", type=int_in(0, 100_000), default=60,
                   help="serving curves: requests simulated per load (default 60; 0 skips the section)")
    p.add_argument("--max-batch", type=BATCH, default=256, help="largest batch of the batch sweep (default 256)")
    add_search_bounds(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="export a plan: exec (plan file for hispec-exec), hf (transformers kwargs), json")
    p.add_argument("--plan", required=True, help="plan JSON file (or the JSON optimize prints)")
    p.add_argument("--to", required=True, choices=["exec", "hf", "json"])
    p.add_argument("--out", help="write here instead of stdout")
    p.add_argument("--profile", help="check the plan against this profile (json: add its predicted figures)")
    p.add_argument("--workload", type=name_text)
    p.add_argument("--tp", type=TP)
    p.add_argument("--stack", type=name_text)
    p.add_argument("--context", type=CONTEXT)
    p.set_defaults(func=cmd_export)

    from . import cli_profile

    prof_sub = cli_profile.add_parsers(sub)  # `profile import-vidur | synthetic`, and measure:
    cli_measure.add_measure_parser(prof_sub)
    cli_measure.add_validate_parser(sub, _setting_args)
    from . import audit

    audit.add_parser(sub)  # `hispec-sim audit` (audit.py)

    from . import cli_serving

    cli_serving.add_parsers(sub)  # serve, capacity
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_main("hispec-sim", build_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
