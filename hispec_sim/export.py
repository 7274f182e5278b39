"""Export a plan as something that runs.

* `exec`: the plan file `hispec-exec run --plan FILE` reads: the same Plan JSON that
  schema.save_plan writes (load -> export -> load is the identity, and the bytes are stable).
* `hf`: keyword arguments of Hugging Face transformers' `model.generate(...)` for the
  plans transformers can run: autoregressive, and single-level self-speculation through
  `assistant_early_exit` (transformers' EarlyExitCandidateGenerator runs the first E layers
  of the same model as the assistant: our exit E). 3+-level chains have no transformers
  equivalent. A single-level plan's draft_confidence is transformers'
  `assistant_confidence_threshold` (the same rule: the assistant stops the round when its
  token's probability is < the threshold, that token kept as a candidate; for the early-exit
  assistant transformers does not re-tune it, its ROC update runs only for a separate
  assistant model); a fixed plan exports 0.0 (transformers' default is 0.4). In transformers
  5.x the early-exit assistant reads num_assistant_tokens, its schedule and the threshold
  from `model.generation_config`, not from generate()'s kwargs (checked on 5.24.0 in
  tests/report/test_export.py): the notes say to set them there (ASSISTANT_FIELDS).
* `json`: the plan with its predicted figures on a profile (when --profile is given).
"""
from __future__ import annotations

import json

from . import schema
from .schema import Plan


def exec_text(plan: Plan) -> str:
    """Exactly what schema.save_plan writes."""
    return plan.model_dump_json(indent=2) + "\n"


def hf_kwargs(plan: Plan) -> dict:
    """transformers `generate` kwargs; ValueError naming `to` for chains it cannot express."""
    sample = plan.mode == "sampling"
    if plan.depth == 1:
        return {"do_sample": sample}
    if plan.depth == 2:
        return {"assistant_early_exit": plan.levels[0], "num_assistant_tokens": plan.propose,
                "num_assistant_tokens_schedule": "constant", "assistant_confidence_threshold": float(plan.draft_confidence or 0.0),
                "do_sample": sample}
    raise ValueError(f"to: transformers cannot express a {plan.depth}-level chain; use --to exec")


ASSISTANT_FIELDS = ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")


def hf_notes(plan: Plan) -> list[str]:
    notes = []
    if plan.batch != 1:
        notes.append(f"transformers' assisted generation runs batch 1 only; the plan's batch {plan.batch} is not exported")
    if plan.depth == 2:
        notes.append("assistant_early_exit needs a checkpoint trained for early exit (e.g. facebook/layerskip-*)")
        kw = hf_kwargs(plan)
        assistant = ", ".join(f"{k}={kw[k]!r}" for k in ASSISTANT_FIELDS)
        notes.append("transformers 5.x: the early-exit assistant reads num_assistant_tokens, its schedule and "
                     "assistant_confidence_threshold from model.generation_config, not from generate() kwargs: "
                     f"model.generation_config.update({assistant}) before generate(**kwargs) "
                     "(not assistant_early_exit there: the assistant would recurse)")
        notes.append(f"draft_confidence {plan.draft_confidence:g} -> assistant_confidence_threshold" if plan.draft_confidence
                     else "fixed plan: assistant_confidence_threshold 0.0 (transformers' default 0.4 would stop rounds early)")
    return notes


def json_payload(plan: Plan, profile: str | None = None, workload: str | None = None, tp: int | None = None,
                 stack: str | None = None, context: int | None = None) -> dict:
    out = {"plan": plan.model_dump(), "family": plan.family, "describe": plan.describe()}
    if profile is not None:
        from .evaluate import Setting, score

        setting = Setting(schema.load_profile(profile), workload, tp, stack, plan.batch, context)
        setting.profile.check_plan(plan, setting.workload)
        if plan.adaptive:  # confidence thresholds: as evaluate predicts them (the fixed-plan model ignores them)
            from .adaptive import predict_adaptive

            figures = predict_adaptive(setting, plan)
        else:
            ar, s = score(setting, [schema.autoregressive_plan(setting.num_layers, plan.batch), plan])
            figures = s.as_dict(ar.tokens_per_second)
        out["prediction"] = {**setting.describe(), **{k: v for k, v in figures.items()
                                                       if k not in ("plan", "family", "describe")}}
    return out


def check_runs_on(profile: str, plan: Plan, workload: str | None) -> None:
    """The plan runs on the profile's model: its exits within the model's layers (and the
    workload, if named, is the profile's). Not what the simulator can predict: the executor
    and transformers run sampling and adaptive plans too."""
    p = schema.load_profile(profile)
    p.workload(workload)
    plan.check_depth(p.model.num_layers)


def export(plan_path: str, to: str, profile: str | None = None, workload: str | None = None, tp: int | None = None,
           stack: str | None = None, context: int | None = None) -> tuple[str, list[str]]:
    """Returns (text to write or print, notes for stderr)."""
    if to not in ("exec", "hf", "json"):
        raise ValueError(f"to: must be exec, hf or json, got {to!r}")
    plan = schema.load_plan(plan_path)  # a plan file, or what evaluate / optimize --json print
    notes: list[str] = []
    if to == "exec":
        if profile is not None:
            check_runs_on(profile, plan, workload)
        if plan.batch != 1:  # the executor's file: `run` decodes one sequence, `serve` batches by its --max-batch
            notes.append(f"the plan's batch {plan.batch} is written as 1: `hispec-exec run` decodes one sequence at a "
                         "time, and `hispec-exec serve` batches up to its --max-batch sequences as they arrive")
            plan = plan.model_copy(update={"batch": 1})
        return exec_text(plan), notes
    if to == "hf":
        kw = hf_kwargs(plan)
        if profile is not None:
            check_runs_on(profile, plan, workload)
        return json.dumps(kw, indent=2) + "\n", hf_notes(plan)
    return json.dumps(json_payload(plan, profile, workload, tp, stack, context), indent=2) + "\n", notes
