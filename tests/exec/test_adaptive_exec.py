"""Adaptive plans in the executor: greedy output equals autoregressive greedy decoding,
the thresholds really change the schedule, sampling stays lossless, and the confidence
statistics equal what the decoder sees."""
import numpy as np
import pytest
import torch

from exec_helpers import exact_distribution, pooled_chisquare, random_model
from hispec_exec import autoregressive, decode, exit_traces, heldout_prompts
from hispec_exec.confidence import confidence_stats, exit_confidence
from hispec_sim.schema import Plan

ADAPTIVE = [
    Plan(levels=[2, 16], propose=6, draft_confidence=0.5),
    Plan(levels=[4, 16], propose=8, draft_confidence=0.9),
    Plan(levels=[2, 6, 16], propose=3, windows=[6], draft_confidence=0.3, escalate_confidence=[0.5]),
    Plan(levels=[1, 4, 16], propose=4, windows=[8], escalate_confidence=[0.9]),
    Plan(levels=[2, 4, 8, 16], propose=2, windows=[3, 6], draft_confidence=0.7, escalate_confidence=[0.4, 0.8]),
]


def test_shipped_model_adaptive_plans_equal_autoregressive(shipped):
    for prompt in heldout_prompts(2, 64, seed=3):
        ar = autoregressive(shipped, prompt, 48)
        for plan in ADAPTIVE:
            r = decode(shipped, plan, prompt, 48)
            assert r.tokens == ar.tokens, plan.describe()


def test_tiny_model_adaptive_plans_equal_autoregressive(tiny):
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    ar = autoregressive(tiny, prompt, 40)
    for plan in [Plan(levels=[1, 8], propose=5, draft_confidence=0.02),
                 Plan(levels=[1, 3, 8], propose=3, windows=[5], draft_confidence=0.02, escalate_confidence=[0.03])]:
        assert decode(tiny, plan, prompt, 40).tokens == ar.tokens


def test_thresholds_change_the_schedule(shipped):
    prompt = heldout_prompts(1, 64, seed=4)[0]
    fixed = decode(shipped, Plan(levels=[2, 16], propose=8), prompt, 64)
    always = decode(shipped, Plan(levels=[2, 16], propose=8, draft_confidence=1.0), prompt, 64)
    some = decode(shipped, Plan(levels=[2, 16], propose=8, draft_confidence=0.6), prompt, 64)
    # tau = 1 stops after every draft: one draft per level-2 check
    assert always.forwards_per_level()[0] == always.forwards_per_level()[1]
    drafts_per_round = lambda r: r.forwards_per_level()[0] / r.forwards_per_level()[1]
    assert drafts_per_round(always) < drafts_per_round(some) < drafts_per_round(fixed)
    h = decode(shipped, Plan(levels=[2, 4, 16], propose=2, windows=[16], escalate_confidence=[1.0]), prompt, 64)
    n = h.forwards_per_level()
    assert n[1] == n[2]  # every level-2 check escalates at once


def test_ragged_batch_adaptive_equals_autoregressive(tiny):
    from hispec_exec.generate import decode_batch

    prompts = [[3, 1, 4, 1, 5], [9, 2, 6, 5, 3, 5, 8], [2, 7]]
    plan = Plan(levels=[1, 3, 8], propose=3, windows=[5], draft_confidence=0.02, escalate_confidence=[0.03])
    for p, r in zip(prompts, decode_batch(tiny, plan, prompts, 24, batching="ragged")):
        assert r.tokens == autoregressive(tiny, p, 24).tokens


def test_synchronous_batch_adaptive_equals_autoregressive(shipped):
    """Synchronous batching of adaptive plans (generate.Batch): greedy output equals
    autoregressive decoding alone; a single-level plan's per-sequence stops make every
    sequence's operations its own batch-1 schedule (it sits out draft steps after an unsure
    draft); the thresholds change the batch's schedule."""
    from hispec_exec.generate import decode_batch
    from hispec_sim.adaptive import with_thresholds

    prompts = heldout_prompts(2, 32, seed=7)
    ops = lambda r: [f.level for f in r.forwards]
    for plan in [Plan(levels=[2, 16], propose=6, draft_confidence=0.5),
                 Plan(levels=[2, 6, 16], propose=3, windows=[6], draft_confidence=0.3, escalate_confidence=[0.5])]:
        rs = decode_batch(shipped, plan, prompts, 24, batching="synchronous")
        alone = [decode(shipped, plan, p, 24) for p in prompts]
        for p, r, a in zip(prompts, rs, alone):
            assert r.tokens == a.tokens == autoregressive(shipped, p, 24).tokens, plan.describe()
        if plan.depth == 2:
            assert [ops(r) for r in rs] == [ops(a) for a in alone]
        fixed = decode_batch(shipped, with_thresholds(plan, None, None), prompts, 24, batching="synchronous")
        assert [ops(r) for r in rs] != [ops(r) for r in fixed]


def test_synchronous_fixed_plan_rounds_unchanged(shipped):
    """Fixed plans under synchronous batching: `propose` draft steps for every sequence,
    then the check (the schedule before adaptive plans joined)."""
    from hispec_exec.generate import decode_batch

    plan = Plan(levels=[2, 16], propose=3)
    for r in decode_batch(shipped, plan, heldout_prompts(3, 32, seed=7), 24, batching="synchronous"):
        lv = [f.level for f in r.forwards]
        rounds = "".join(map(str, lv)).split("2")
        assert all(x == "111" for x in rounds[:-1]) and rounds[-1] in ("", "1", "11", "111")


def test_confidence_traces_match_exit_traces_and_stats(shipped):
    prompt = heldout_prompts(1, 64, seed=5)[0]
    arg, top = exit_confidence(shipped, prompt, 32)
    assert torch.equal(arg, exit_traces(shipped, prompt, 32))
    assert ((top > 0) & (top <= 1)).all()
    st = confidence_stats(arg.numpy(), top.numpy())
    share = np.asarray(st.share)
    assert np.allclose(share.sum(1), 1.0)
    # agreement of an exit with itself is 1 in every non-empty bucket
    for a in range(arg.shape[1]):
        assert all(v == 1.0 for v in st.agreement_given_bucket[a][a] if v is not None)


PROMPT = [1, 2, 3]
T = 3
RUNS = 1500


@pytest.mark.slow  # statistical: 1,500 seeded runs per plan
@pytest.mark.parametrize("plan", [
    Plan(levels=[1, 4], propose=3, draft_confidence=0.6),
    Plan(levels=[1, 2, 4], propose=2, windows=[3], draft_confidence=0.5, escalate_confidence=[0.6]),
], ids=lambda p: p.describe())
def test_adaptive_sampling_matches_full_model_distribution(plan):
    m = random_model(seed=0, vocab=4, layers=4, dim=32, heads=2, kv=1, ffn=64, ctx=64, scale=5)
    exact = exact_distribution(m, PROMPT, T)
    counts = dict.fromkeys(exact, 0)
    drafts = checks = 0
    for s in range(RUNS):
        r = decode(m, plan, PROMPT, T, mode="sampling", seed=s)
        counts[tuple(r.tokens)] += 1
        drafts += r.forwards_per_level()[0]
        checks += r.forwards_per_level()[1]
    assert drafts < plan.propose * checks  # the threshold did stop rounds early
    assert pooled_chisquare(counts, exact, RUNS).pvalue > 1e-3


def test_profile_measure_records_confidence(tmp_path, capsys):
    """`hispec-sim profile measure` records every exit's top-1 probabilities with the traces
    (one walk): an adaptive plan can be evaluated on the new workload at once, and the
    statistics are what the separate `python -m hispec_exec.confidence` step computes."""
    import json

    from hispec_sim.cli import main
    from hispec_sim.schema import load_profile, save_profile

    out = tmp_path / "tiny.json"
    save_profile(load_profile("cpu_hispec_tiny"), out)
    f = tmp_path / "mine.jsonl"
    f.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in ["def main():\n    ", "for i in range(10):\n"]))
    assert main(["profile", "measure", "--prompts-file", str(f), "--workload", "mine", "--acceptance-only",
                 "--max-new-tokens", "12", "--out", str(out)]) == 0
    acc = load_profile(str(out)).workload("mine")
    c = acc.confidence
    assert c is not None and len(c.top1) == len(acc.traces) == 24 and "recorded with the traces" in c.source.detail
    # 24 positions: said, with the width it leaves (round 23, D4: 2 positions, agreement 1.0, unremarked)
    assert ("note: workload mine rests on 24 measured positions: each agreement rate is uncertain by up to +/-0.20"
            in capsys.readouterr().out)
    again = confidence_stats(np.asarray(acc.traces), np.asarray(c.top1))
    assert again.share == c.share and again.agreement_given_bucket == c.agreement_given_bucket
    capsys.readouterr()
    plan = tmp_path / "plan.json"
    plan.write_text(Plan(levels=[2, 16], propose=4, draft_confidence=0.5).model_dump_json())
    assert main(["evaluate", "--profile", str(out), "--workload", "mine", "--plan", str(plan), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["gain_over_fixed"] > 0
    rep = ev["trace_replay"]  # the two measured prompts walked
    lo, hi = rep["ci95_over_requests"]
    assert lo <= rep["tokens_per_second"] <= hi and rep["gain_over_fixed"] > 0
