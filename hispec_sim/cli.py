"""`hispec-sim`: the command line. I/O and argument checking live here, nothing else."""
from __future__ import annotations

import argparse
import json
import sys

from pydantic import ValidationError

from . import cli_measure, schema
from .evaluate import Setting, exhaustive, score


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        raise UsageError(message)


def _ints(text: str, field: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{field}: expected comma-separated integers, got {text!r}") from None


def _setting_args(p: argparse.ArgumentParser, batch=True) -> None:
    p.add_argument("--profile", required=True, help="shipped profile name or path to a profile JSON")
    p.add_argument("--workload", help="workload name (default: the profile's)")
    p.add_argument("--tp", type=int, help="tensor-parallel degree (default: the profile's)")
    p.add_argument("--stack", help="serving stack, e.g. compiled or hf_eager (default: the profile's)")
    if batch:
        p.add_argument("--batch", type=int, default=1, help="sequences in lockstep (default 1)")
    p.add_argument("--context", type=int, help="mean context length (default: the workload's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _setting(args) -> Setting:
    if getattr(args, "batch", 1) < 1 or getattr(args, "batch", 1) > 4096:
        raise ValueError("batch: must be in [1, 4096]")
    profile = schema.load_profile(args.profile)
    return Setting(profile, args.workload, args.tp, args.stack, getattr(args, "batch", 1), args.context)


def _plan_from_args(args, setting: Setting) -> schema.Plan:
    if args.plan:
        plan = schema.load_plan(args.plan).model_copy(update={"batch": setting.batch} if args.batch_given else {})
    elif args.levels:
        levels = _ints(args.levels, "levels")
        windows = _ints(args.window, "window") if args.window else []
        plan = schema.Plan(levels=levels, propose=args.propose, windows=windows, batch=setting.batch)
    else:
        raise ValueError("plan: give --plan FILE or --levels")
    setting.profile.check_plan(plan, setting.workload)
    return plan


def cmd_evaluate(args) -> int:
    setting = _setting(args)
    plan = _plan_from_args(args, setting)
    if plan.batch != setting.batch:
        setting = Setting(setting.profile, setting.workload, setting.tp, setting.stack, plan.batch, args.context)
    ar, s = score(setting, [schema.autoregressive_plan(setting.num_layers, plan.batch), plan])
    out = {**setting.describe(), **s.as_dict(ar.tokens_per_second)}
    if args.mc or args.replay:
        from .montecarlo import simulate

        r = simulate(setting.cost(plan.propose + sum(plan.windows) + 8), setting.agreement, plan,
                     streams=args.streams, cycles=args.cycles, seed=args.seed, replay=args.replay)
        out["monte_carlo"] = {"tokens_per_second": round(r.tokens_per_second, 4),
                              "ci95": [round(r.ci95[0], 4), round(r.ci95[1], 4)],
                              "latency_ms_p50": round(r.latency_ms_p50, 4), "latency_ms_p99": round(r.latency_ms_p99, 4),
                              "tokens_per_full_forward": round(r.tokens_per_full_forward, 4),
                              "acceptance_per_level": [round(a, 4) for a in r.acceptance],
                              "streams": r.streams, "cycles": r.cycles, "trace_replay": r.replay, "seed": args.seed}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"profile {setting.profile.name}  workload {setting.workload}  tp {setting.tp}  stack {setting.stack}  "
          f"batch {setting.batch}  context {setting.context}")
    print(f"plan {plan.describe()}  ({plan.family})")
    print(f"  analytic:    {out['tokens_per_second']:10.2f} tokens/s  x{out['speedup_vs_autoregressive']:.3f} vs autoregressive"
          f"  {out['tokens_per_full_forward']:.3f} tokens/full forward  {out['latency_ms_per_token']:.3f} ms/token")
    if out["acceptance_per_level"]:
        print("  acceptance per level: " + ", ".join(f"L{lv}: {a:.3f}" for lv, a in zip(plan.levels[1:], out["acceptance_per_level"])))
    if "monte_carlo" in out:
        m = out["monte_carlo"]
        print(f"  monte-carlo: {m['tokens_per_second']:10.2f} tokens/s  95% CI [{m['ci95'][0]:.2f}, {m['ci95'][1]:.2f}]"
              f"  per-token latency p50 {m['latency_ms_p50']:.3f} ms  p99 {m['latency_ms_p99']:.3f} ms"
              f"  ({m['cycles']} cycles, {'trace replay' if m['trace_replay'] else 'i.i.d.'})")
    return 0


def _table(rows: list[tuple[str, dict]]) -> str:
    head = f"{'':22s} {'plan':34s} {'tokens/s':>10s} {'speedup':>8s} {'tok/full':>8s} {'ms/token':>9s}"
    lines = [head, "-" * len(head)]
    for label, r in rows:
        lines.append(f"{label:22s} {r['describe']:34s} {r['tokens_per_second']:10.2f} {r['speedup_vs_autoregressive']:7.3f}x "
                     f"{r['tokens_per_full_forward']:8.3f} {r['latency_ms_per_token']:9.3f}")
    return "\n".join(lines)


def cmd_optimize(args) -> int:
    from . import search

    opts = search.cli_prepare(args)  # --batch/--tp choices, --search/--depth/--objectives (search.py)
    setting = _setting(args)
    if args.top < 1:
        raise ValueError("top: must be >= 1")
    if opts["optuna"]:
        result = search.cli_optuna(args, setting, opts)
    else:
        result = exhaustive(setting, top=args.top, max_propose=args.max_propose, max_window=args.max_window)
    setting = result.setting  # with --batch/--tp choices: the best plan's
    out = result.as_dict()
    if args.out:
        schema.save_plan(result.best.plan, args.out)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"profile {setting.profile.name}  workload {setting.workload}  tp {setting.tp}  stack {setting.stack}  "
          f"batch {setting.batch}  context {setting.context}")
    if opts["optuna"]:
        print(search.cli_summary(out) + "\n")
    else:
        print(f"searched {out['plans_evaluated']} plans (exhaustive: single-level and 3-level, propose 1..{args.max_propose}, "
              f"window 1..{args.max_window}) in {out['seconds']:.3f} s\n")
    rows = [(f"#{i + 1}", r) for i, r in enumerate(out["top"])]
    rows += [("autoregressive", out["baselines"]["autoregressive"]),
             ("best single-level", out["baselines"]["best_single_level"]),
             ("paper default", out["baselines"]["paper_default"])]
    print(_table(rows))
    b = out["best"]
    print(f"\nbest: {b['describe']}  {b['speedup_vs_autoregressive']:.3f}x autoregressive, "
          f"{b['speedup_vs_best_single_level']:.3f}x the best single-level plan")
    if args.out:
        print(f"plan written to {args.out}")
    return 0


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
    for r in rows:
        print(f"{r['name']:24s} {r['model']} ({r['layers']} layers) on {r['hardware']}; tp {r['tp']}; stacks {','.join(r['stacks'])}; "
              f"workloads {','.join(r['workloads'])}")
    return 0


def cmd_schema(args) -> int:
    print(json.dumps({"plan": schema.Plan.model_json_schema(), "profile": schema.Profile.model_json_schema()}, indent=2))
    return 0


def cmd_report(args) -> int:
    from .report import FAMILY_LABEL, build_report

    data, _, path = build_report(args.profile, args.out, args.format, workload=args.workload, tp=args.tp,
                                 stack=args.stack, batch=args.batch, context=args.context, target_tps=args.target_tps,
                                 slo_ms=args.slo_ms, gpu_hour_usd=args.gpu_hour_usd, validation=args.validation,
                                 max_batch=args.max_batch, max_propose=args.max_propose, max_window=args.max_window)
    for w in data["capacity"]["warnings"]:
        print(f"hispec-sim: warning: {w}", file=sys.stderr)
    if args.json:
        from .report import _jsonable

        print(json.dumps(_jsonable(data), indent=2))
        return 0
    fam = data["best"]["families"]
    best = fam[data["best"]["best_family"]]
    print(f"report written to {path}")
    print(f"best plan {best['describe']}: {best['tokens_per_second']:.2f} tokens/s "
          f"({best['tokens_per_second'] / fam['autoregressive']['tokens_per_second']:.3f}x autoregressive)")
    cap = data["capacity"]
    for r in cap["rows"]:
        if r["meets_slo"]:
            print(f"  {FAMILY_LABEL[r['family']]:28s} batch {r['batch']:4d}  {r['replicas']} replica(s), {r['gpus']} GPU(s), "
                  f"${r['usd_per_million_tokens']:.3f}/M tokens")
    return 0


def cmd_export(args) -> int:
    from .export import export

    text, notes = export(args.plan, args.to, args.profile, args.workload, args.tp, args.stack, args.context)
    if args.out:
        from .report import check_output_path

        schema.write_atomic(check_output_path(args.out), text)
    else:
        sys.stdout.write(text)
    for n in notes:
        print(f"hispec-sim: note: {n}", file=sys.stderr)
    return 0


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
    p.add_argument("--plan", help="plan JSON file")
    p.add_argument("--levels", help="exit layers, e.g. 10,20,80")
    p.add_argument("--propose", type=int, default=1, help="drafts per round")
    p.add_argument("--window", help="window(s) of the intermediate level(s), e.g. 4 or 4,8")
    p.add_argument("--mc", action="store_true", help="also run the Monte-Carlo simulator (i.i.d.)")
    p.add_argument("--replay", action="store_true", help="Monte-Carlo with trace replay (profiles with traces)")
    p.add_argument("--streams", type=int, default=4096)
    p.add_argument("--cycles", type=int, default=64, help="full-model checks simulated per stream")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("optimize", help="search the best plan", conflict_handler="resolve")
    _setting_args(p)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--max-propose", type=int, default=8)
    p.add_argument("--max-window", type=int, default=16)
    p.add_argument("--out", help="write the best plan to this plan file")
    from .search import add_cli_args

    add_cli_args(p)  # --search, --trials, --storage, ... and --batch/--tp as choices (search.py)
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser("report", help="capacity-planning report: one self-contained HTML file (or Markdown)")
    _setting_args(p)
    p.add_argument("--out", help="output file (default report.html / report.md)")
    p.add_argument("--format", choices=["html", "md"], default="html")
    p.add_argument("--target-tps", type=float, help="aggregate tokens/s the deployment must serve (default 10000)")
    p.add_argument("--slo-ms", type=float, help="per-token latency SLO in ms (default 50)")
    p.add_argument("--gpu-hour-usd", type=float, help="price of one GPU-hour in USD (default 2.0)")
    p.add_argument("--validation", help="JSON of `hispec-sim validate --json` (fidelity figures)")
    p.add_argument("--max-batch", type=int, default=256, help="largest batch of the batch sweep (default 256)")
    p.add_argument("--max-propose", type=int, default=8)
    p.add_argument("--max-window", type=int, default=16)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="export a plan: exec (plan file for hispec-exec), hf (transformers kwargs), json")
    p.add_argument("--plan", required=True, help="plan JSON file (or the JSON optimize prints)")
    p.add_argument("--to", required=True, choices=["exec", "hf", "json"])
    p.add_argument("--out", help="write here instead of stdout")
    p.add_argument("--profile", help="check the plan against this profile (json: add its predicted figures)")
    p.add_argument("--workload")
    p.add_argument("--tp", type=int)
    p.add_argument("--stack")
    p.add_argument("--context", type=int)
    p.set_defaults(func=cmd_export)

    try:
        from . import cli_profile
    except ImportError:  # pragma: no cover - during development only
        cli_profile = None
    if cli_profile is not None:
        prof = cli_profile.add_parsers(sub)
        prof_sub = next(a for a in prof._actions if isinstance(a, argparse._SubParsersAction))
        cli_measure.add_measure_parser(prof_sub)

    cli_measure.add_validate_parser(sub, _setting_args)
    return parser


def _one_line(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
        if args.command == "evaluate":
            args.batch_given = "--batch" in argv
        return args.func(args)
    except UsageError as e:
        print(f"hispec-sim: error: {e}", file=sys.stderr)
    except ValidationError as e:
        print(f"hispec-sim: error: {_one_line(e)}", file=sys.stderr)
    except ValueError as e:
        print(f"hispec-sim: error: {str(e).splitlines()[0]}", file=sys.stderr)
    except BrokenPipeError:
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
