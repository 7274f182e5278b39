"""Close the loop: predict plans from a measured profile, run them in the executor, report
the error. torch is imported only when a plan is actually run."""
from __future__ import annotations

import random

import numpy as np

from .evaluate import Setting, exhaustive, score
from .montecarlo import simulate
from .schema import Plan, Profile


def draw_plans(setting: Setting, n: int, seed: int) -> list[Plan]:
    """n plans across the families: the optimizer's best, the paper default,
    autoregressive and the best single-level plan first, then single-level, 3-level and
    4-level plans drawn in turn (exits, propose 1..6, windows 1..8)."""
    L = setting.num_layers
    exits = [e for e in setting.acceptance.exits if e < L]
    rng = random.Random(seed)
    found = exhaustive(setting)
    plans = []
    for p in (found.best.plan, found.paper_default.plan, Plan(levels=[L]), found.best_single_level.plan):
        if p not in plans:
            plans.append(p)
    depths = [d for d in (2, 3, 4) if len(exits) >= d - 1]
    for i in range(10_000):
        if len(plans) >= n or not depths:
            break
        depth = depths[i % len(depths)]
        levels = sorted(rng.sample(exits, depth - 1)) + [L]
        plan = Plan(levels=levels, propose=rng.randint(1, 6), windows=[rng.randint(1, 8) for _ in range(depth - 2)])
        if plan not in plans:
            plans.append(plan)
    return plans[:n]


def check_model_matches(profile: Profile, model, model_name: str) -> None:
    a = model.args
    shape = (profile.model.num_layers, profile.model.hidden, profile.model.vocab)
    if shape != (model.num_layers, a.dim, a.vocab_size) or profile.model.name != model_name:
        raise ValueError(f"profile: measured for model {profile.model.name!r} ({shape[0]} layers, hidden {shape[1]}, "
                         f"vocab {shape[2]}), but the model run is {model_name!r} ({model.num_layers} layers, "
                         f"hidden {a.dim}, vocab {a.vocab_size})")


def machine_check(profile: Profile, device: str, allow_other: bool) -> str | None:
    """Refuse (ValueError, one line) unless this machine is the one the profile was
    measured on; with allow_other, the warning line instead. Call after setting threads."""
    from .machine import check_same_machine, fingerprint

    return check_same_machine(profile.provenance.get("machine"), fingerprint(device), allow_other,
                              f"profile {profile.name}")


def profile_noise_floor(profile: Profile) -> float | None:
    m = profile.provenance.get("measurement")
    v = m.get("noise_floor") if isinstance(m, dict) else None
    return float(v) if isinstance(v, (int, float)) and np.isfinite(v) else None


def machine_drift(profile: Profile, model) -> dict | None:
    """Re-run the profile's own calibration runs (autoregressive on its calibration prompts,
    twice) and compare their tokens/s with what was recorded when the profile was measured:
    how much this machine's speed moved since (None when the profile records no calibration)."""
    m = profile.provenance.get("measurement")
    cal = m.get("calibration") if isinstance(m, dict) else None
    if not isinstance(cal, dict) or not cal.get("autoregressive_tokens_per_second"):
        return None
    from hispec_exec import decode
    from hispec_exec.measure import calibration_prompts
    from hispec_sim.schema import autoregressive_plan

    ar = autoregressive_plan(model.num_layers)
    prompts = calibration_prompts(model, int(cal["prompts"]), int(cal["prompt_len"]))
    n = int(cal["max_new_tokens"])
    decode(model, ar, prompts[0], min(8, n))  # warm-up
    now = float(np.median([_tally(ar, [decode(model, ar, p, n) for p in prompts])[0] for _ in range(2)]))
    then = float(cal["autoregressive_tokens_per_second"])
    return {"then_tokens_per_second": then, "now_tokens_per_second": now, "drift": abs(now - then) / then}


def _tally(plan: Plan, results) -> tuple[float, list]:
    tokens, wall = 0, 0.0
    proposed = np.zeros(plan.depth)
    accepted = np.zeros(plan.depth)
    for r in results:
        full_checks = r.forwards_per_level()[-1]
        tokens += full_checks + (r.accepted[-1] if plan.depth > 1 else 0)  # every full forward commits accepted + 1
        wall += r.wall_s
        proposed += r.proposed
        accepted += r.accepted
    acceptance = [float(a / p) if p else None for a, p in zip(accepted[1:], proposed[1:])]
    return tokens / wall, acceptance


def run_interleaved(model, plans: list[Plan], prompts, max_new_tokens: int) -> tuple[list, float]:
    """Run every plan on every prompt, interleaved: per prompt, autoregressive, then each
    plan in turn, then autoregressive again, so drift and bursts of load hit every plan
    alike. Returns [(tokens/s, acceptance per level)] per plan and the noise floor: the
    relative difference of the two identical autoregressive runs' tokens/s."""
    from hispec_exec import decode
    from hispec_sim.schema import autoregressive_plan

    ar = autoregressive_plan(model.num_layers)
    decode(model, plans[-1], prompts[0], min(8, max_new_tokens))  # warm-up
    results = [[] for _ in plans]
    first, second = [], []
    for ids in prompts:
        first.append(decode(model, ar, ids, max_new_tokens))
        for k, plan in enumerate(plans):
            results[k].append(decode(model, plan, ids, max_new_tokens))
        second.append(decode(model, ar, ids, max_new_tokens))
    a, b = _tally(ar, first)[0], _tally(ar, second)[0]
    return [_tally(p, r) for p, r in zip(plans, results)], abs(a - b) / ((a + b) / 2)


def run_measured(model, plan: Plan, prompts, max_new_tokens: int):
    """Executor tokens/s over the prompts (committed tokens / decoding wall time) and
    acceptance per level (accepted / checked, levels 2..k)."""
    from hispec_exec import decode

    return _tally(plan, [decode(model, plan, ids, max_new_tokens) for ids in prompts])


def validate(setting: Setting, plans: list[Plan], model, prompts, max_new_tokens: int, seed: int = 0,
             replay: bool = True, machine_warning: str | None = None) -> dict:
    """Predict every plan, run them interleaved in the executor, report the errors and the
    noise floor: the largest of the run-to-run spread recorded when the profile was measured,
    the one measured now (two identical autoregressive runs per prompt) and the drift of
    the profile's own calibration runs since it was measured; an error within it is
    indistinguishable from measurement noise and is reported as such."""
    scored = score(setting, plans)
    drift = machine_drift(setting.profile, model)
    runs, noise_now = run_interleaved(model, plans, prompts, max_new_tokens)
    noise_profile = profile_noise_floor(setting.profile)
    noise = max(noise_now, noise_profile or 0.0, drift["drift"] if drift else 0.0)
    rows = []
    cost = setting.cost(max(p.propose + sum(p.windows) for p in plans) + 8)
    for plan, s in zip(plans, scored):
        mc = simulate(cost, setting.agreement, plan, streams=4096, cycles=32, seed=seed)
        rep = (simulate(cost, setting.agreement, plan, streams=1024, cycles=24, seed=seed, replay=True)
               if replay and setting.agreement.traces is not None else None)
        measured, acceptance = runs[len(rows)]
        row = {"plan": plan.model_dump(), "describe": plan.describe(), "family": plan.family,
               "predicted_tokens_per_second": s.tokens_per_second,
               "predicted_mc_tokens_per_second": mc.tokens_per_second,
               "predicted_replay_tokens_per_second": rep.tokens_per_second if rep else None,
               "measured_tokens_per_second": measured,
               "relative_error": (s.tokens_per_second - measured) / measured,
               "relative_error_mc": (mc.tokens_per_second - measured) / measured,
               "relative_error_replay": (rep.tokens_per_second - measured) / measured if rep else None,
               "predicted_acceptance_per_level": s.acceptance,
               "measured_acceptance_per_level": acceptance,
               "within_noise_floor": abs((s.tokens_per_second - measured) / measured) <= noise}
        rows.append(row)
    err = np.abs([r["relative_error"] for r in rows])
    out = {**setting.describe(), "plans": rows, "median_abs_relative_error": float(np.median(err)),
           "max_abs_relative_error": float(err.max()), "prompts": len(prompts), "max_new_tokens": max_new_tokens,
           "noise_floor": noise, "noise_floor_now": noise_now, "noise_floor_profile": noise_profile,
           "machine_drift": drift,
           "plans_within_noise_floor": int(sum(r["within_noise_floor"] for r in rows))}
    if machine_warning:
        out["machine_warning"] = machine_warning
    rep_err = [abs(r["relative_error_replay"]) for r in rows if r["relative_error_replay"] is not None]
    if rep_err:
        out["median_abs_relative_error_replay"] = float(np.median(rep_err))
        out["max_abs_relative_error_replay"] = float(np.max(rep_err))
    return out
