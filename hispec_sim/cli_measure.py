"""`hispec-sim profile measure` and `hispec-sim validate`: the commands that run the executor
(torch is imported only when they run). Bad input raises ValueError("field: ...") before
any long work; the main CLI prints it on one line, exit status 2."""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

from . import schema
from .cli_common import (SEED, add_model_args, add_progress_arg, check_output, given, int_in, load_model_from_args,
                         model_files, name_text, progress_log, refuse_unread, shown)

MAX_PROMPTS = 10_000
MAX_NEW_TOKENS = 65_536
FEW_POSITIONS = 400  # measured positions below which an agreement's 95 % interval is wider than +/-0.05


def executor_args(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """defaults=False: prompts and lengths default to what the profile was measured on."""
    add_model_args(p)
    recorded = "the workload's recorded"
    p.add_argument("--prompts", type=int_in(1, MAX_PROMPTS), default=16 if defaults else None,
                   help=f"held-out prompts (default {16 if defaults else recorded + ' count'})")
    p.add_argument("--max-new-tokens", type=int_in(1, MAX_NEW_TOKENS), default=128 if defaults else None,
                   help=f"tokens generated per prompt (default {128 if defaults else recorded + ' length'})")


def load_executor_model(args):
    """The executor's model (lazy torch import) and the name a profile records for it."""
    from hispec_exec import DEFAULT_CHECKPOINT

    model = load_model_from_args(args)
    folder = Path(args.model or DEFAULT_CHECKPOINT).resolve()
    return model, "hispec-tiny" if folder == Path(DEFAULT_CHECKPOINT).resolve() else folder.name


def add_measure_parser(prof_sub) -> None:
    m = prof_sub.add_parser("measure", help="measure a profile with the executor (latency, overheads, acceptance)")
    executor_args(m)
    m.add_argument("--workload", type=name_text, help="workload name to record (default heldout; required with --prompts-file)")
    m.add_argument("--prompts-file", metavar="FILE", help="measure acceptance on your own prompts")
    m.add_argument("--format", choices=["jsonl", "text", "sharegpt"],
                   help="prompts file format (default from the suffix: .jsonl, .txt, .json = ShareGPT; else jsonl)")
    m.add_argument("--field", help="JSONL field holding the prompt (default prompt); "
                   "ShareGPT: the conversation list (default conversations)")
    m.add_argument("--acceptance-only", action="store_true",
                   help="add the workload to the existing profile --out without timing (timing may come from another machine)")
    m.add_argument("--repeats", type=int_in(1, 1000), default=12, help="interleaved timing rounds (default 12)")
    m.add_argument("--attempts", type=int_in(1, 10), default=3,
                   help="time again, up to this many times, while the machine's speed moves during the timing; "
                        "the calmest attempt is kept (default 3)")
    m.add_argument("--seed", type=SEED, default=0, help="seed of the held-out prompts and of the timing order")
    m.add_argument("--name", type=name_text, help="profile name")
    m.add_argument("--out", required=True, metavar="FILE",
                   help="profile to write; an existing profile of the same model keeps its other workloads")
    add_progress_arg(m, "each stage")
    m.set_defaults(func=cmd_measure)


def _identity(path: Path) -> tuple | None:
    """What changes when a file is replaced or written (an atomic write makes a new inode)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _existing_profile(path: Path) -> schema.Profile | None:
    if not path.exists():
        return None
    try:
        return schema.load_profile(str(path))
    except Exception as e:
        raise ValueError(f"out: {path} exists and is not a readable profile ({' '.join(str(e).split())[:120]}); "
                         f"choose another path") from None


def _refuse_unread_prompt_flags(args) -> None:
    """--format and --field read a prompts file, and --field only one of JSON records."""
    from hispec_exec.prompts import _format_for

    if args.prompts_file is None:
        refuse_unread(args, ("--format", "--field"), "a --prompts-file")
    elif _format_for(Path(args.prompts_file), args.format) == "text":
        refuse_unread(args, ("--field",), "a jsonl or sharegpt prompts file (a text file is one prompt per line)")


def cmd_measure(args) -> int:
    from hispec_exec.prompts import encode_prompts, heldout_token_prompts, read_prompts, text_codec

    _refuse_unread_prompt_flags(args)
    if args.prompts_file is not None and not args.workload:
        raise ValueError("workload: name the workload of the prompts file with --workload NAME")
    workload = args.workload or "heldout"
    if any(c in workload for c in "/\\"):
        raise ValueError(f"workload: a name, not a path (no / or \\), got {workload!r}")
    from pydantic import TypeAdapter, ValidationError

    for field, value in (("workload", workload), ("name", args.name)):  # now, not after minutes of measuring
        try:
            if value is not None:
                TypeAdapter(schema.Name).validate_python(value)
        except ValidationError as e:
            raise ValueError(f"{field}: {schema.validation_message(e)}") from None
    if args.acceptance_only:
        refuse_unread(args, ("--repeats", "--attempts", "--progress"), "the timing, which --acceptance-only skips")
        refuse_unread(args, ("--name",), "a profile being measured; --acceptance-only adds a workload to an existing "
                      "profile, whose name stays")
    if args.prompts_file is not None:
        refuse_unread(args, ("--prompts",), "the held-out prompts; a --prompts-file brings its own")
        if args.acceptance_only:
            refuse_unread(args, ("--seed",), "the held-out prompts and the timing; a --prompts-file with "
                          "--acceptance-only reads neither")
    out = check_output(args.out, inputs=[args.prompts_file, *model_files(args)])  # now, not after minutes of measuring
    read_as = _identity(out)
    existing = _existing_profile(out)
    if args.acceptance_only and existing is None:
        raise ValueError(f"out: --acceptance-only adds a workload to an existing profile, and {out} does not exist")
    prompts_text = read_prompts(args.prompts_file, args.format, args.field) if args.prompts_file else None

    model, name = load_executor_model(args)
    codec = text_codec(model, args.model)
    if existing is not None:  # one model and one codec per profile: its workloads compare
        from .validate import check_model_matches

        check_model_matches(existing, model, name, codec)
    command = "hispec-sim " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    reads = "bytes" if codec.is_bytes else "tokenizer"
    if prompts_text is not None:
        prompts = encode_prompts(prompts_text, codec.encode, args.max_new_tokens, model.args.max_seq_len)
        detail = f"{len(prompts)} prompt{'s' if len(prompts) != 1 else ''} of {shown(Path(args.prompts_file).name)} (tokenized with {codec.how})"
    else:
        if 64 + args.max_new_tokens + 1 > model.args.max_seq_len:
            raise ValueError(f"max_new_tokens: 64-byte prompts + {args.max_new_tokens} exceed the model's context "
                             f"{model.args.max_seq_len}")
        prompts = heldout_token_prompts(codec, args.prompts, 64, args.seed)
        detail = f"{args.prompts} held-out prompts (seed {args.seed})"

    if args.acceptance_only:
        from hispec_exec.measure import add_workload, heldout_spec

        heldout = None if prompts_text is not None else heldout_spec(args.prompts, args.seed, 64, args.max_new_tokens)
        profile = add_workload(existing, model, name, workload, prompts, detail, args.max_new_tokens, args.device,
                               command, heldout=heldout)
        verb = "replaced" if workload in existing.workloads else "added"
    else:
        from hispec_exec.measure import measure_profile
        from hispec_exec.measure_serving import MIN_CONTEXT

        if model.args.max_seq_len < MIN_CONTEXT:  # the serving calibration's attention grid needs a context above 0
            raise ValueError(f"model: timing needs a context of at least {MIN_CONTEXT} tokens, this model's is "
                             f"{model.args.max_seq_len}; --acceptance-only measures acceptance without timing")
        log = progress_log("measure", args.progress)
        profile = measure_profile(model, name, args.device, workload, args.prompts, 64, args.max_new_tokens, args.seed,
                                  repeats=args.repeats, attempts=args.attempts, command=command,
                                  prompts=prompts, prompts_detail=detail if prompts_text is not None else None,
                                  log=log, text=reads, tokenizer=codec.digest)
        verb = "measured"
    with schema.folder_locked(out.parent, f"hispec-sim: waiting for the lock on {shown(out.parent)} (another command "
                              "is writing a profile there)"):
        if _identity(out) != read_as:  # another command wrote the file meanwhile: merge into what it holds now
            existing = _existing_profile(out)
            if existing is not None:
                from .validate import check_model_matches

                check_model_matches(existing, model, name, codec)
                if args.acceptance_only:
                    from hispec_exec.measure import with_workload

                    profile = with_workload(existing, workload, profile.workloads[workload],
                                            profile.provenance["workloads_added"][workload])
        if existing is not None and not args.acceptance_only:  # keep the other workloads measured into this file,
            others = {k: v for k, v in existing.workloads.items() if k != workload}  # their records and its name
            added = {k: v for k, v in (existing.provenance.get("workloads_added") or {}).items() if k in others}
            first = [k for k in others if k not in added]  # the workload the old provenance.prompts records
            if len(first) == 1 and isinstance(existing.provenance.get("prompts"), dict):
                added[first[0]] = existing.provenance["prompts"]  # provenance.prompts is now this measure's
            provenance = {**profile.provenance, **({"workloads_added": added} if added else {})}
            profile = profile.model_copy(update={"workloads": {**others, **profile.workloads}, "provenance": provenance,
                                                 "name": existing.name})
        if args.name:
            profile = profile.model_copy(update={"name": args.name})
        profile = schema.Profile.model_validate(profile.model_dump())
        schema.save_profile(profile, out)
    print(f"profile {profile.name} written to {shown(out)}: workload {workload} {verb} ({detail}); "
          f"workloads {', '.join(sorted(profile.workloads))}")
    positions = len(profile.workloads[workload].traces or [])  # one trace row per measured position
    if 0 < positions < FEW_POSITIONS:  # 2 one-token prompts once gave agreement 1.0 everywhere and x4.65, unremarked
        print(f"note: workload {workload} rests on {positions} measured position{'s' if positions != 1 else ''}: "
              f"each agreement rate is uncertain by up to +/-{min(1.96 * 0.5 / math.sqrt(positions), 1):.2f} "
              f"(95 %); measure more prompts or a larger --max-new-tokens (at least {FEW_POSITIONS} positions "
              "for +/-0.05)")
    if not args.acceptance_only:
        notes = profile.table().notes
        print(notes.get("self_check", ""))
        if profile.provenance["measurement"]["attempts"][1:]:
            print(notes["attempts"])
    return 0


def add_validate_parser(sub, setting_args) -> None:
    p = sub.add_parser("validate", help="predict plans, run them in the executor, report the error")
    setting_args(p, batch=False, context_default="the mean prompt length + half of --max-new-tokens, the context "
                 "the runs decode at")
    executor_args(p, defaults=False)
    p.add_argument("--plan", help="validate this plan file")
    p.add_argument("--plans", type=int_in(1, 200), default=6, help="plans drawn across families (default 6)")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the plan draw and the Monte-Carlo")
    p.add_argument("--prompt-seed", type=SEED, help="seed of the held-out prompts (default: the seed the workload was measured with)")
    add_progress_arg(p, "each stage and block of runs")
    p.add_argument("--allow-other-machine", action="store_true",
                   help="validate a profile measured on another machine (the output carries a warning)")
    p.add_argument("--prompts-file", metavar="FILE", help="run the plans on your own prompts (as for profile measure)")
    p.add_argument("--format", choices=["jsonl", "text", "sharegpt"])
    p.add_argument("--field", help="JSONL: the prompt field (default prompt); ShareGPT: the conversation list (default conversations)")
    p.add_argument("--rounds", type=int_in(1, 100), default=1,
                   help="passes over the prompts; the measured speed-up is the median over rounds (default 1)")
    p.add_argument("--ar-every", type=int_in(1, 200), default=1,
                   help="an autoregressive reference run after every N plan runs (default 1: ABAB...)")
    p.add_argument("--out", help="also write the JSON result here")
    p.set_defaults(func=cmd_validate)


def cmd_validate(args) -> int:
    from .cli import _profile_path, _setting
    from .validate import check_model_matches, draw_plans, machine_check, validate

    from hispec_exec.measure import prompts_of

    setting = _setting(args)
    measured_on, where = prompts_of(setting.profile, setting.workload)
    for field, key, default, lo, hi in (("prompts", "n", 16, 1, MAX_PROMPTS), ("prompt_seed", "seed", 0, 0, schema.MAX_SEED),
                                        ("max_new_tokens", "max_new_tokens", 128, 1, MAX_NEW_TOKENS)):
        name = field
        if getattr(args, field) is None:  # default: the prompts the profile was measured on (input too)
            setattr(args, field, measured_on.get(key, default))
            name = f"{where}.{key} (the default of --{field.replace('_', '-')})"
        v = getattr(args, field)
        if not (isinstance(v, int) and lo <= v <= hi):
            raise ValueError(f"{name}: must be an integer in [{lo}, {hi}], got {v!r}")
    if args.out:
        check_output(args.out, inputs=[_profile_path(args), args.plan, args.prompts_file, *model_files(args)])
    _refuse_unread_prompt_flags(args)
    if not args.prompts_file and measured_on and "seed" not in measured_on:  # not held-out prompts
        print(f"hispec-sim: note: workload {setting.workload} was measured on "
              f"{measured_on.get('source') or measured_on.get('prompts')}; these runs use {args.prompts} held-out "
              f"prompts (seed {args.prompt_seed}): give --prompts-file to validate on its own prompts", file=sys.stderr)
    prompts_text = None
    if args.prompts_file:
        refuse_unread(args, ("--prompts", "--prompt-seed"), "the held-out prompts; a --prompts-file brings its own")
        from hispec_exec.prompts import read_prompts

        prompts_text = read_prompts(args.prompts_file, args.format, args.field)
    if args.plan:
        if given(args._argv, "--plans"):
            raise ValueError("plans: give --plan FILE or --plans N, not both")
        plans = [schema.load_plan(args.plan)]
        setting.profile.check_plan(plans[0], setting.workload)
    else:
        plans = draw_plans(setting, args.plans, args.seed)
    model, name = load_executor_model(args)
    from hispec_exec.generate import check_fits, check_plan
    from hispec_exec.prompts import encode_prompts, heldout_token_prompts, text_codec

    codec = text_codec(model, args.model)
    check_model_matches(setting.profile, model, name, codec)
    if prompts_text is not None:
        prompts = encode_prompts(prompts_text, codec.encode, args.max_new_tokens, model.args.max_seq_len)
    else:
        prompts = heldout_token_prompts(codec, args.prompts, 64, args.prompt_seed)
    for plan in plans:  # before any run or warning: a plan the executor cannot run on these prompts is bad input
        check_plan(model, plan)
        check_fits(plan, max(map(len, prompts)), args.max_new_tokens, model.args.max_seq_len)
    warning = machine_check(setting.profile, args.device, args.allow_other_machine)
    if warning:
        print(f"hispec-sim: {warning}", file=sys.stderr)
    if args.context is None:  # price the plans at the context these runs decode at (other prompts or lengths)
        setting.context = round(sum(map(len, prompts)) / len(prompts) + args.max_new_tokens / 2)
    out = validate(setting, plans, model, prompts, args.max_new_tokens, seed=args.seed, machine_warning=warning,
                   rounds=args.rounds, ar_every=args.ar_every, log=progress_log("validate", args.progress))
    if args.out:
        schema.write_atomic(args.out, json.dumps(out, indent=2) + "\n")
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if warning:
        print(warning)
    print(validate_text(out))
    return 0


def validate_text(out: dict) -> str:
    """The table (speed-up over autoregressive first, then absolute tokens/s), the verdict
    line and the absolute error's line with the drift it inherits."""
    lines = [f"{'plan':34s} {'speed-up':>9s} {'measured':>9s} {'error':>8s}   {'tokens/s':>9s} {'measured':>9s} {'error':>8s}",
             f"{'':34s} {'predicted':>9s} {'':>9s} {'':>8s}   {'predicted':>9s}"]
    for r in out["plans"]:
        note = "  (within noise)" if r["within_noise_floor"] else ""
        lines.append(f"{r['describe']:34s} {r['predicted_speedup']:9.3f} {r['measured_speedup']:9.3f} "
                     f"{100 * r['speedup_error']:7.2f}%   {r['predicted_tokens_per_second']:9.1f} "
                     f"{r['measured_tokens_per_second']:9.1f} {100 * r['relative_error']:7.2f}%{note}")
    lines.append(f"speed-up over autoregressive, measured side by side ({out['rounds']} round(s), autoregressive after "
                 f"every {out['autoregressive_every']} plan run(s), median over rounds): "
                 f"median |error| {100 * out['median_abs_speedup_error']:.2f} %, "
                 f"max {100 * out['max_abs_speedup_error']:.2f} % over {len(out['plans'])} plan(s)")
    lines += [line for line in (noise_line(out), state_line(out)) if line]
    lines.append(f"verdict: {out['verdict_line']}")
    if "verdict_line_replay" in out:
        lines.append(f"verdict with trace replay (optimize's ranking where the workload has traces): {out['verdict_line_replay']}")
    lines.append(absolute_line(out))
    lines += split_lines(out)
    return "\n".join(lines)


def split_lines(out: dict) -> list[str]:
    """Where each plan's error comes from: tokens per full-model check (analytic / trace
    replay / measured: acceptance) and each level's forwards' time against the cost model
    relative to autoregressive's (timing; validate.time_split)."""
    rows = [r for r in out["plans"] if r.get("time_split")]
    if not rows:
        return []
    lines = ["where the error comes from: tokens per full-model check (analytic / replay / measured); measured / "
             "predicted time of each level's forwards relative to autoregressive's (L1 = drafts); wall time outside "
             "forwards (autoregressive's)"]
    for r in rows:
        t = r["time_split"]
        pred, rep = r["predicted_tokens_per_full_check"], r.get("replay_tokens_per_full_check")
        lv = " ".join(f"L{k} x{v['vs_cost_model']:.3f}" for k, v in t["levels"].items())
        lines.append(f"  {r['describe']:34s} {_opt(pred)} / {_opt(rep)} / {t['tokens_per_full_check']:.3f}   {lv}   "
                     f"outside {100 * t['outside_forwards']:.1f} % ({100 * t['outside_forwards_autoregressive']:.1f} %)")
    return lines


def _opt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def noise_line(out: dict) -> str:
    slots = ", ".join(f"{s:.4f}" for s in out.get("noise_floor_slots") or [])
    return (f"noise floor {100 * out['noise_floor']:.2f} % (identical autoregressive runs measured as plans: "
            f"{out['noise_floor_method']}" + (f"; their speed-ups {slots}" if slots else "") + ")"
            + plan_noise_text(out))


def state_line(out: dict) -> str:
    """How far the machine's state moved speed-ups since the profile (validate.machine_drift);
    empty where the profile recorded no calibration speed-ups."""
    su = (out.get("machine_drift") or {}).get("speedups")
    if not su:
        return ""
    moved = ", ".join(f"{d} {v['then']:.3f} -> {v['now']:.3f} ({100 * v['change']:+.1f} %)" for d, v in su.items())
    return (f"the machine's state: the profile's calibration plans, re-run on their prompts, moved their speed-ups over "
            f"autoregressive {moved} since the profile was measured: a prediction from the profile cannot be closer "
            f"than that (their own timing noise included), and the verdict's floors include it")


def plan_noise_text(out: dict) -> str:
    """The plans' own rounds: how far they differ, the timing noise they imply and how many
    plans' errors are within it (validate.timing_noise)."""
    floor = out.get("noise_floor_plan", out["noise_floor"])
    within = (f"; {out['plans_within_noise_floor']} of {len(out['plans'])} plans' errors within the per-plan floor "
              f"{100 * floor:.2f} %")
    rs, tn = out.get("round_spread"), out.get("timing_noise")
    if not (rs and tn):  # the floor above is autoregressive's: a plan's speed relative to it drifts on its own
        return within + ("; with one round the plans' own timing noise is not measured (--rounds 2 measures it)"
                         if out.get("rounds", 1) == 1 else "")
    return (f"; the plans' own rounds differ by median {100 * rs['median']:.2f} %, worst {100 * rs['worst']:.2f} % "
            f"({out['rounds']} rounds): timing noise {100 * tn['sigma_per_round']:.2f} % per round, so a perfect "
            f"prediction would be measured off by up to {100 * tn['plan']:.2f} % per plan, median "
            f"{100 * tn['median']:.2f} %, worst {100 * tn['worst']:.2f} % over the plans ({100 * tn['level']:.0f} % "
            f"quantiles)" + within)


def absolute_line(out: dict) -> str:
    prof = out.get("noise_floor_profile")
    prof_s = "not recorded" if prof is None else f"{100 * prof:.2f} %"
    d = out.get("machine_drift")
    drift_s = (f"the profile's calibration runs moved {100 * d['drift']:.2f} % since it was measured "
               f"({d['then_tokens_per_second']:.1f} -> {d['now_tokens_per_second']:.1f} tokens/s)") if d else \
        "no calibration runs recorded to measure the drift"
    return (f"absolute tokens/s (inherits the machine's drift since the profile was measured): median |error| "
            f"{100 * out['median_abs_relative_error']:.2f} %, max {100 * out['max_abs_relative_error']:.2f} %; "
            f"autoregressive predicted {out['predicted_autoregressive_tokens_per_second']:.1f}, measured "
            f"{out['measured_autoregressive_tokens_per_second']:.1f} tokens/s; {drift_s}; run-to-run spread when the "
            f"profile was measured {prof_s}; absolute noise floor {100 * out['noise_floor_absolute']:.2f} %")
