"""Close the loop: predict plans from a measured profile, run them in the executor, report
the error. torch is imported only when a plan is actually run."""
from __future__ import annotations

import random

import numpy as np

from .adaptive import adaptive_scored, walked
from .evaluate import Setting, optimized, score
from .latency import working_set_history
from .montecarlo import simulate
from .schema import Plan, Profile


def draw_plans(setting: Setting, n: int, seed: int) -> list[Plan]:
    """n plans across the families: the optimizer's best (`optimized`), the paper default,
    autoregressive and the best single-level plan first, then single-level, 3-level and
    4-level plans drawn in turn (exits, propose 1..6, windows 1..8)."""
    L = setting.num_layers
    exits = [e for e in setting.acceptance.exits if e < L]
    rng = random.Random(seed)
    found = optimized(setting)  # optimize's answer: by trace replay where the workload has traces
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


def check_model_matches(profile: Profile, model, model_name: str, codec=None) -> None:
    """The model run is the profile's: every architecture figure the profile records
    (layers, hidden, heads, KV heads, FFN, vocab) and, where it recorded them, its weights
    (a digest: a retrained checkpoint of the same shape agrees otherwise, and a copy in a
    folder of another name is the same model); without a digest, its name. With the codec
    (hispec_exec.prompts.TextCodec) that reads text for it, that codec is the profile's too:
    the same weights read through another tokenizer see other token ids."""
    a, m = model.args, profile.model

    def shape(layers, hidden, heads, kv, ffn, vocab) -> str:
        return f"{layers} layers, hidden {hidden}, heads {heads}/{kv} KV, FFN {ffn}, vocab {vocab}"

    was = shape(m.num_layers, m.hidden, m.heads, m.kv_heads, m.ffn, m.vocab)
    now = shape(model.num_layers, a.dim, a.n_heads, a.n_kv_heads, a.ffn_dim, a.vocab_size)
    if was != now or (m.weights is None and m.name != model_name):
        raise ValueError(f"profile: measured for model {m.name!r} ({was}), but the model run is {model_name!r} ({now})")
    if m.weights is not None:
        from hispec_exec.checkpoint import weights_digest

        digest = weights_digest(model)
        if digest != m.weights:
            raise ValueError(f"profile: measured for model {m.name!r} with weights {m.weights[:19]}..., but the model run "
                             f"({model_name!r}) has weights {digest[:19]}... (another training run or checkpoint; "
                             "measure a profile for it)")
    if codec is None:
        return
    reads = "bytes" if codec.is_bytes else "tokenizer"
    if m.text not in (None, reads):
        raise ValueError(f"tokenizer: profile {profile.name} was measured reading text as {m.text}, but this model "
                         f"reads it as {reads} ({'no tokenizer.json in its folder' if codec.is_bytes else 'its tokenizer.json'}); "
                         f"allowed: the profile's, {m.text}")
    if m.tokenizer is not None and codec.digest != m.tokenizer:
        raise ValueError(f"tokenizer: profile {profile.name} was measured with a tokenizer.json of digest "
                         f"{m.tokenizer[:19]}..., but this model reads text with {codec.how}, digest "
                         f"{(codec.digest or 'none')[:19]}...; allowed: the tokenizer.json the profile was measured with")


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
    """Re-run the profile's own calibration runs on its calibration prompts, as profile
    measure ran them (the plans interleaved per prompt, two rounds): autoregressive, and the
    first two speculative calibration plans where the profile recorded their speed-ups.

    Returns how much this machine's speed moved since the profile was measured (then / now
    autoregressive tokens/s, drift), and, where recorded, how much those plans' speed-ups
    over autoregressive moved (speedups, speedup_drift: the largest |now / then - 1|): the
    machine's state, not the model. A uniform change of speed cancels in a speed-up; on a
    shared host the forwards of different kinds do not change speed together (deep one-token
    forwards move most: README, "A third CPU type"), and the cost model, priced in the
    profile's state, cannot be closer than that. None when the profile records no calibration."""
    m = profile.provenance.get("measurement")
    cal = m.get("calibration") if isinstance(m, dict) else None
    if not isinstance(cal, dict) or not cal.get("autoregressive_tokens_per_second"):
        return None
    from hispec_exec.measure import calibration_plans, calibration_prompts, calibration_runs

    then_su = cal.get("speedups") or {}
    plans = calibration_plans(model.num_layers, spread=False)
    plans = plans[:1] + [p for p in plans[1:] if p.describe() in then_su]
    prompts = calibration_prompts(model, int(cal["prompts"]), int(cal["prompt_len"]))
    n = int(cal["max_new_tokens"])
    toks, walls = np.zeros((2, len(plans))), np.zeros((2, len(plans)))
    for r, _, k, res in calibration_runs(model, plans, prompts, n, rounds=2):  # as profile measure ran them
        toks[r, k] += len(res.tokens)
        walls[r, k] += res.wall_s
    tps = toks / walls
    now = float(np.median(tps[:, 0]))
    then = float(cal["autoregressive_tokens_per_second"])
    out = {"then_tokens_per_second": then, "now_tokens_per_second": now, "drift": abs(now - then) / then}
    if len(plans) > 1:
        su = {p.describe(): {"then": float(then_su[p.describe()]), "now": float(np.median(tps[:, k] / tps[:, 0]))}
              for k, p in enumerate(plans) if k}
        for v in su.values():
            v["change"] = v["now"] / v["then"] - 1
        out["speedups"] = su
        out["speedup_drift"] = max(abs(v["change"]) for v in su.values())
    return out


def _run_tokens(plan: Plan, r) -> int:
    """Tokens one decode run committed: every full-model forward commits its accepted + 1."""
    return r.forwards_per_level()[-1] + (r.accepted[-1] if plan.depth > 1 else 0)


def _tally(plan: Plan, results) -> tuple[float, list]:
    tokens, wall = 0, 0.0
    proposed = np.zeros(plan.depth)
    accepted = np.zeros(plan.depth)
    for r in results:
        tokens += _run_tokens(plan, r)
        wall += r.wall_s
        proposed += r.proposed
        accepted += r.accepted
    acceptance = [float(a / p) if p else None for a, p in zip(accepted[1:], proposed[1:])]
    return tokens / wall, acceptance


BAR_MEDIAN, BAR_WORST = 0.03, 0.08  # the fidelity bar: median and worst |error| over the plans


def block_order(n_plans: int, ar_every: int, rng: random.Random) -> list[int]:
    """One block of runs on one prompt: the plans (0..n_plans-1) in a shuffled order with
    autoregressive (-1) first, after every `ar_every` plans, and last (ar_every=1: ABAB...A)."""
    order = list(range(n_plans))
    rng.shuffle(order)
    out = [-1]
    for i, k in enumerate(order):
        out.append(k)
        if (i + 1) % ar_every == 0 or i == n_plans - 1:
            out.append(-1)
    return out


def _reference(ar: list[tuple[float, float]], t: float) -> float:
    """Autoregressive seconds per token at time t: linear in time between the nearest
    autoregressive runs before and after t (ar: (mid time, seconds per token), sorted);
    the nearest one when t lies outside them."""
    times = [a[0] for a in ar]
    j = int(np.searchsorted(times, t))
    if j == 0:
        return ar[0][1]
    if j == len(ar):
        return ar[-1][1]
    (t0, s0), (t1, s1) = ar[j - 1], ar[j]
    return s0 + (s1 - s0) * (t - t0) / (t1 - t0) if t1 > t0 else (s0 + s1) / 2


def _median_of_three(ar: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Each interior autoregressive run's seconds per token replaced by the median of itself
    and its neighbours in time: an isolated burst of other load on one reference run is
    dropped, while any monotone drift passes unchanged (the median of three values of a
    monotone sequence is the middle one)."""
    if len(ar) < 3:
        return list(ar)
    return [ar[0]] + [(ar[j][0], float(np.median([ar[j - 1][1], ar[j][1], ar[j + 1][1]])))
                      for j in range(1, len(ar) - 1)] + [ar[-1]]


def interleaved_speedups(runs: list[dict], n_plans: int) -> dict:
    """Speed-ups over autoregressive from runs interleaved with autoregressive ones.

    runs: dicts with round, prompt, plan (-1 = autoregressive), tokens, seconds, mid (the
    run's mid time; any clock). A block = the runs of one round on one prompt. Each plan
    run's time is divided by the autoregressive seconds per token interpolated to its mid
    time from the block's autoregressive runs around it (the same prompt, seconds apart;
    each first replaced by the median of itself and its neighbours, which drops an isolated
    burst and keeps any monotone drift), so drift of the machine's speed cancels; per
    round, a plan's speed-up is its tokens over these normalised times summed over the
    prompts (aggregate: E[tokens] / E[time], not a mean of per-prompt ratios); the result
    is the median over rounds.

    Noise floor, measured the same way: every autoregressive run with another one on each
    side in its round (the neighbours may be the adjacent block's, on another prompt) is
    treated as a plan, its reference interpolated from those neighbours (itself left out);
    per slot (its place in the block) the speed-up is aggregated over prompts and rounds
    exactly as for a plan, and the noise floor is the largest |speed-up - 1| over the slots:
    how far identical runs are measured from 1. A round with two autoregressive runs only
    (one prompt, one bracket): |ratio of the second to the first - 1|.

    Returns speedup and tokens_per_second (absolute, inheriting drift) per plan, both per
    round, the noise-floor slots and the noise floor."""
    rounds = sorted({r["round"] for r in runs})
    blocks: dict = {}
    for r in runs:
        blocks.setdefault((r["round"], r["prompt"]), []).append(r)
    tok = np.zeros((len(rounds), n_plans))
    norm = np.zeros_like(tok)
    sec = np.zeros_like(tok)
    slot_tok: dict = {}
    slot_norm: dict = {}
    pair_first: dict = {}
    pair_second: dict = {}
    by_round: dict = {}
    for (rd, _), block in blocks.items():
        i = rounds.index(rd)
        block = sorted(block, key=lambda r: r["mid"])
        ar_runs = [r for r in block if r["plan"] < 0]
        ar = [(r["mid"], r["seconds"] / r["tokens"]) for r in ar_runs]
        if not ar:
            raise ValueError("runs: a block without an autoregressive run")
        ar = _median_of_three(ar)
        for r in block:
            if r["plan"] >= 0:
                k = r["plan"]
                tok[i, k] += r["tokens"]
                sec[i, k] += r["seconds"]
                norm[i, k] += r["seconds"] / _reference(ar, r["mid"])
        for j, r in enumerate(ar_runs):
            by_round.setdefault(i, []).append((r["mid"], r["seconds"] / r["tokens"], r, j))
        if len(ar) >= 2:
            pair_first[i] = pair_first.get(i, 0.0) + ar[0][1]
            pair_second[i] = pair_second.get(i, 0.0) + ar[-1][1]
    for i, seq in by_round.items():  # autoregressive runs as if they were plans, leave-one-out
        seq.sort(key=lambda a: a[0])
        for m in range(1, len(seq) - 1):
            _, _, r, j = seq[m]
            ref = _reference(_median_of_three([a[:2] for a in seq[:m] + seq[m + 1:]])[max(0, m - 1):m + 1], r["mid"])
            slot_tok[(i, j)] = slot_tok.get((i, j), 0.0) + r["tokens"]
            slot_norm[(i, j)] = slot_norm.get((i, j), 0.0) + r["seconds"] / ref
    with np.errstate(divide="ignore", invalid="ignore"):
        speedup_by_round = tok / norm
        tps_by_round = tok / sec
    slots = sorted({j for _, j in slot_tok})
    slot_speedups = [float(np.median([slot_tok[(i, j)] / slot_norm[(i, j)] for i in range(len(rounds))
                                      if (i, j) in slot_tok])) for j in slots]
    if slot_speedups:
        noise = max(abs(s - 1) for s in slot_speedups)
        how = f"the autoregressive runs at {len(slots)} places of each block treated as plans"
    elif pair_first:
        noise = float(np.median([abs(pair_second[i] / pair_first[i] - 1) for i in pair_first]))
        how = "first vs last autoregressive run of each block"
    else:
        noise, how = float("nan"), "no repeated autoregressive run"
    return {"speedup": np.median(speedup_by_round, axis=0).tolist(), "speedup_by_round": speedup_by_round.tolist(),
            "tokens_per_second": np.median(tps_by_round, axis=0).tolist(),
            "tokens_per_second_by_round": tps_by_round.tolist(),
            "autoregressive_tokens_per_second": float(np.median([
                sum(r["tokens"] for r in runs if r["plan"] < 0 and r["round"] == rd)
                / sum(r["seconds"] for r in runs if r["plan"] < 0 and r["round"] == rd) for rd in rounds])),
            "noise_floor": float(noise), "noise_floor_slots": slot_speedups, "noise_floor_method": how,
            "rounds": len(rounds)}


def round_spread(by_round: list[list[float]]) -> dict:
    """How far identical runs of one plan differ: per plan, (max - min) / median of its
    per-round measured speed-ups; the median and the worst over plans. The noise floor
    times the autoregressive plan only; a plan of short forwards can move more."""
    s = np.array([(max(v) - min(v)) / np.median(v) for v in by_round])
    return {"median": float(np.median(s)), "worst": float(s.max())}


def timing_noise(by_round: list[list[float]], level: float = 0.95, draws: int = 20_000, seed: int = 0) -> dict:
    """What a perfect prediction would be measured off by on this machine, from the plans'
    own rounds (R >= 2 rounds of the same plans on the same prompts).

    Assumes each round's measured speed-up of a plan is its true speed-up times exp(e), e
    an independent normal timing error with one sigma for all plans: the reference runs'
    noise and the plan's own, since each round has its own. sigma is pooled over the plans
    (the within-plan variance of log speed-ups, n (R - 1) degrees of freedom; its estimation
    error is drawn too). The measured speed-up is the median over the rounds, so a perfect
    prediction's error is exp(-median(e_1..e_R)) - 1; by seeded simulation of n plans, the
    `level` quantiles of one plan's |error| and of the median and the worst |error| over the n
    plans. Prompt-to-prompt variation is not in it (every round runs the same prompts)."""
    x = np.log(np.asarray(by_round, dtype=float))
    n, r = x.shape
    df = n * (r - 1)
    sigma = float(np.sqrt(((x - x.mean(1, keepdims=True)) ** 2).sum() / df))
    rng = np.random.default_rng(seed)
    # sigma is itself estimated: each draw takes one from its posterior, df s^2 / chi2(df),
    # or the quantiles would fall short with few plans and rounds
    s = sigma * np.sqrt(df / rng.chisquare(df, (draws, 1, 1)))
    e = np.abs(np.expm1(-np.median(rng.normal(0.0, 1.0, (draws, n, r)) * s, axis=2)))
    return {"sigma_per_round": sigma, "level": level, "plan": float(np.quantile(e, level)),
            "median": float(np.quantile(np.median(e, axis=1), level)), "worst": float(np.quantile(e.max(1), level))}


def verdict(errors, noise_floor: float | None, noise_worst: float | None = None, median_bar: float = BAR_MEDIAN,
            worst_bar: float = BAR_WORST) -> dict:
    """Whether |errors| meet the bar (median <= median_bar, worst <= worst_bar), else whether
    they are within the measured noise floor (the median bar raised to noise_floor, the worst
    bar to noise_worst, which defaults to noise_floor), else not."""
    e = np.abs(np.asarray(errors, dtype=float))
    med, worst = float(np.median(e)), float(e.max())

    def finite(v):
        return v if v is not None and np.isfinite(v) else 0.0
    floor = finite(noise_floor)
    floor_worst = finite(noise_worst) if noise_worst is not None else floor
    bar = f"median <= {100 * median_bar:.0f} %, worst <= {100 * worst_bar:.0f} %"
    got = f"median |error| {100 * med:.2f} %, worst {100 * worst:.2f} % over {e.size} plan{'s' * (e.size != 1)}"
    floors = (f"{100 * floor:.2f} %" if floor_worst == floor
              else f"median {100 * floor:.2f} %, worst {100 * floor_worst:.2f} %")
    if med <= median_bar and worst <= worst_bar:
        status, line = "met", f"bar met ({bar}): {got}"
    elif med <= max(median_bar, floor) and worst <= max(worst_bar, floor_worst):
        status, line = "within_noise", (f"bar not met ({bar}) but within the measured noise floor "
                                        f"{floors}: {got}; this machine is too noisy to tell")
    else:
        status, line = "not_met", f"bar NOT met ({bar}): {got}, noise floor {floors}"
    return {"status": status, "line": line, "median": med, "worst": worst, "noise_floor": floor,
            "noise_floor_worst": floor_worst}


def run_interleaved(model, plans: list[Plan], prompts, max_new_tokens: int, rounds: int = 1, ar_every: int = 1,
                    seed: int = 0, log=None) -> tuple[list, dict]:
    """Run every plan on every prompt, interleaved with autoregressive runs (per round and
    prompt: a block, autoregressive first, after every `ar_every` plans, and last; the
    plans in a seeded shuffled order), and measure speed-ups with `interleaved_speedups`.
    Returns [(tokens/s, acceptance per level)] per plan and interleaved_speedups' dict, with
    timing_noise (None with one round). log(line), if given, hears of each block."""
    import time

    from hispec_exec import decode
    from hispec_sim.schema import autoregressive_plan

    ar = autoregressive_plan(model.num_layers)
    rng = random.Random(seed)
    decode(model, plans[-1], prompts[0], min(8, max_new_tokens))  # warm-up
    results = [[] for _ in plans]
    ar_results = []
    runs = []
    for rd in range(rounds):
        for i, ids in enumerate(prompts):
            for k in block_order(len(plans), ar_every, rng):
                t = time.perf_counter()
                res = decode(model, ar if k < 0 else plans[k], ids, max_new_tokens)
                (results[k] if k >= 0 else ar_results).append(res)
                runs.append({"round": rd, "prompt": i, "plan": k, "tokens": _run_tokens(ar if k < 0 else plans[k], res),
                             "seconds": res.wall_s, "mid": (t + time.perf_counter()) / 2})
            if log:
                log(f"round {rd + 1}/{rounds}, prompt {i + 1}/{len(prompts)}: {len(runs)} runs done")
    stats = interleaved_speedups(runs, len(plans))
    # with rounds: what a perfect prediction would be measured off by (the verdict's floors)
    stats["timing_noise"] = timing_noise(np.transpose(stats["speedup_by_round"]), seed=seed) if rounds > 1 else None
    stats["decode_results"], stats["autoregressive_results"] = results, ar_results  # for time_split (not JSON)
    return [(tps, _tally(p, r)[1]) for tps, p, r in zip(stats["tokens_per_second"], plans, results)], stats


def forward_ms(cost, run) -> np.ndarray:
    """The cost model's time of each forward of one executor run: its layer segments, head
    rows and kind, and the working set its history gives (latency.working_set_history) in
    place of the cost model's own charge by depth (the two agree over whole cycles)."""
    warm = working_set_history(cost.table, [f.head_layer for f in run.forwards], run.plan.levels[-1])
    return np.array([float(cost.forward([(hi - lo + 1, n) for lo, hi, n in f.segments], f.head_tokens,
                                        verify=f.level > 1, working_set=False)) for f in run.forwards]) + warm


def _forward_times(cost, runs) -> dict[int, tuple[float, float]]:
    """(measured, predicted) ms of the runs' forwards, per plan level."""
    out: dict = {}
    for r in runs:
        for f, price in zip(r.forwards, forward_ms(cost, r)):
            measured, predicted = out.get(f.level, (0.0, 0.0))
            out[f.level] = (measured + f.ms, predicted + float(price))
    return out


def autoregressive_reference(cost, ar_results) -> tuple[float, float]:
    """The interleaved autoregressive runs' measured / predicted forward time, and their
    share of wall time outside forwards: time_split's reference, computed once."""
    measured, predicted = np.sum(list(_forward_times(cost, ar_results).values()), axis=0)
    return measured / max(predicted, 1e-12), 1 - measured / (sum(r.wall_s for r in ar_results) * 1e3)


def time_split(cost, plan: Plan, results, reference: tuple[float, float]) -> dict:
    """Where a plan's measured time went, against the cost model, per plan level (1: the
    drafts or, for [L], the decode steps; j: the level-j checks): measured / predicted time
    of the forwards that actually ran, divided by the same ratio for the autoregressive runs
    interleaved with them (`reference`, autoregressive_reference: the machine's speed
    cancels; 1.0 means the cost model prices that kind of forward right relative to an
    autoregressive step); and the share of the decoding wall time spent outside forwards
    (Python bookkeeping, which the cost model's per-forward overhead stands for), next to
    autoregressive's. Also the tokens per full-model check measured (what trace replay
    reproduces exactly in-sample)."""
    base, ar_outside = reference
    wall = sum(r.wall_s for r in results) * 1e3
    levels, fwd = {}, 0.0
    times = _forward_times(cost, results)
    for level in range(1, plan.depth + 1):
        measured, predicted = times.get(level, (0.0, 0.0))
        levels[str(level)] = {"vs_cost_model": measured / max(predicted, 1e-12) / base, "share_of_wall": measured / wall}
        fwd += measured
    fulls = sum(r.forwards_per_level()[-1] for r in results)
    return {"levels": levels, "outside_forwards": 1 - fwd / wall, "outside_forwards_autoregressive": ar_outside,
            "tokens_per_full_check": sum(_run_tokens(plan, r) for r in results) / max(fulls, 1)}


def run_measured(model, plan: Plan, prompts, max_new_tokens: int):
    """Executor tokens/s over the prompts (committed tokens / decoding wall time) and
    acceptance per level (accepted / checked, levels 2..k)."""
    from hispec_exec import decode

    return _tally(plan, [decode(model, plan, ids, max_new_tokens) for ids in prompts])


def validate(setting: Setting, plans: list[Plan], model, prompts, max_new_tokens: int, seed: int = 0,
             replay: bool = True, machine_warning: str | None = None, rounds: int = 1, ar_every: int = 1,
             log=None) -> dict:
    """Predict every plan, run them interleaved with autoregressive runs in the executor, and
    report two errors per plan:

    * speed-up over autoregressive (the verdict's metric): predicted tokens/s over the
      predicted autoregressive tokens/s, against the speed-up measured side by side with
      autoregressive in the same blocks (`interleaved_speedups`): the machine's drift
      cancels. Noise floor: identical autoregressive runs measured the same way;
    * absolute tokens/s: inherits the machine's drift since the profile was measured,
      stated as the drift of the profile's own calibration runs (re-run now) and the
      profile's recorded run-to-run spread; its noise floor is the largest of those and the
      speed-up noise floor.
    """
    from .schema import autoregressive_plan

    ar_plan = autoregressive_plan(setting.num_layers)
    scored = [adaptive_scored(setting, p) if p.adaptive else s for p, s in zip(plans, score(setting, plans))]
    predicted_ar = score(setting, [ar_plan])[0].tokens_per_second
    say = log or (lambda line: None)
    say("re-running the profile's calibration plans (the machine's drift since it was measured)")
    drift = machine_drift(setting.profile, model)
    say(f"{len(plans)} plan(s) x {len(prompts)} prompt(s) x {rounds} round(s), interleaved with autoregressive runs")
    runs, stats = run_interleaved(model, plans, prompts, max_new_tokens, rounds=rounds, ar_every=ar_every, seed=seed,
                                  log=log)
    say("predicting (analytic, Monte-Carlo, trace replay)")
    noise_speedup = stats["noise_floor"]
    noise_profile = profile_noise_floor(setting.profile)
    noise_abs = max(noise_speedup, noise_profile or 0.0, drift["drift"] if drift else 0.0)
    # the verdict's floors: the larger of the autoregressive slots' and, with rounds, what the
    # plans' own rounds say a perfect prediction would be off by
    by_plan = np.transpose(stats["speedup_by_round"]).tolist()
    timing = stats["timing_noise"]
    floor_plan, floor_median, floor_worst = (float(np.nanmax([noise_speedup, timing[k]])) if timing else noise_speedup
                                             for k in ("plan", "median", "worst"))
    if drift and drift.get("speedups"):  # and what the machine's state moved speed-ups by since the profile
        moved = drift["speedup_drift"]
        floor_plan, floor_worst = max(floor_plan, moved), max(floor_worst, moved)
        floor_median = max(floor_median, float(np.median([abs(v["change"]) for v in drift["speedups"].values()])))
    rows = []
    cost = setting.cost_for(plans)
    ar_reference = autoregressive_reference(cost, stats["autoregressive_results"])
    for k, (plan, s) in enumerate(zip(plans, scored)):
        # an adaptive plan: its own models (hispec_sim.adaptive), no i.i.d. Monte-Carlo of it
        mc = None if plan.adaptive else simulate(cost, setting.agreement, plan, streams=4096, cycles=32, seed=seed)
        rep = None
        if replay and setting.agreement.traces is not None:
            rep = walked(setting, plan) if plan.adaptive else simulate(cost, setting.agreement, plan, seed=seed, replay=True)
        measured, acceptance = runs[k]
        su_pred, su_meas = s.tokens_per_second / predicted_ar, stats["speedup"][k]
        rep_su = rep.tokens_per_second / predicted_ar if rep else None
        row = {"plan": plan.model_dump(), "describe": plan.describe(), "family": plan.family,
               "predicted_speedup": su_pred, "measured_speedup": su_meas,
               "measured_speedup_by_round": by_plan[k],
               "speedup_error": su_pred / su_meas - 1,
               "speedup_error_replay": rep_su / su_meas - 1 if rep else None,
               "within_noise_floor": abs(su_pred / su_meas - 1) <= floor_plan,
               "predicted_tokens_per_second": s.tokens_per_second,
               "predicted_mc_tokens_per_second": mc.tokens_per_second if mc else None,
               "predicted_replay_tokens_per_second": rep.tokens_per_second if rep else None,
               "measured_tokens_per_second": measured,
               "relative_error": (s.tokens_per_second - measured) / measured,
               "relative_error_mc": (mc.tokens_per_second - measured) / measured if mc else None,
               "relative_error_replay": (rep.tokens_per_second - measured) / measured if rep else None,
               "predicted_acceptance_per_level": None if plan.adaptive else s.acceptance,  # adaptive: not modelled
               "measured_acceptance_per_level": acceptance,
               "predicted_tokens_per_full_check": s.tokens_per_full_forward,
               "replay_tokens_per_full_check": rep.tokens_per_full_forward if rep else None,
               "time_split": time_split(cost, plan, stats["decode_results"][k], ar_reference)}
        rows.append(row)
    su_err = [r["speedup_error"] for r in rows]
    err = np.abs([r["relative_error"] for r in rows])
    v = verdict(su_err, floor_median, floor_worst)
    out = {**setting.describe(), "plans": rows, "prompts": len(prompts), "max_new_tokens": max_new_tokens,
           "rounds": rounds, "autoregressive_every": ar_every,
           "median_abs_speedup_error": v["median"], "max_abs_speedup_error": v["worst"],
           "noise_floor": noise_speedup, "noise_floor_method": stats["noise_floor_method"],
           "noise_floor_slots": stats["noise_floor_slots"], "timing_noise": timing,
           "noise_floor_plan": floor_plan, "noise_floor_median": floor_median, "noise_floor_worst": floor_worst,
           "plans_within_noise_floor": int(sum(r["within_noise_floor"] for r in rows)),
           "verdict": v["status"], "verdict_line": v["line"], "bar": {"median": BAR_MEDIAN, "worst": BAR_WORST},
           "predicted_autoregressive_tokens_per_second": predicted_ar,
           "measured_autoregressive_tokens_per_second": stats["autoregressive_tokens_per_second"],
           "median_abs_relative_error": float(np.median(err)), "max_abs_relative_error": float(err.max()),
           "noise_floor_absolute": noise_abs, "noise_floor_profile": noise_profile, "machine_drift": drift}
    if rounds > 1:
        out["round_spread"] = round_spread(by_plan)
    if machine_warning:
        out["machine_warning"] = machine_warning
    rep_err = [abs(r["speedup_error_replay"]) for r in rows if r["speedup_error_replay"] is not None]
    if rep_err:  # the prediction optimize ranks by where the workload has traces: the same bar, the same noise floor
        vr = verdict(rep_err, floor_median, floor_worst)
        out["median_abs_speedup_error_replay"], out["max_abs_speedup_error_replay"] = vr["median"], vr["worst"]
        out["verdict_replay"], out["verdict_line_replay"] = vr["status"], vr["line"]
    return out
