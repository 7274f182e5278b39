"""Sampling mode is lossless: over many seeded runs the decoded continuations follow the
full model's exact distribution (enumerated), for single-level and deeper chains."""

import pytest

from exec_helpers import exact_distribution, pooled_chisquare, random_model
from hispec_exec.generate import decode
from hispec_sim.schema import Plan

PROMPT = [1, 2, 3]
T = 3
RUNS = 1500


@pytest.fixture(scope="module")
def small():
    # vocabulary 4, exits that disagree often (acceptance ~0.7-0.8 per level)
    return random_model(seed=0, vocab=4, layers=4, dim=32, heads=2, kv=1, ffn=64, ctx=64, scale=5)


@pytest.mark.slow  # statistical: 1,500 seeded runs per plan (kept in CI)
@pytest.mark.parametrize("plan", [
    Plan(levels=[1, 4], propose=3),
    Plan(levels=[1, 2, 4], propose=2, windows=[2]),
    Plan(levels=[1, 2, 3, 4], propose=2, windows=[2, 2]),
], ids=lambda p: p.describe())
def test_sampling_matches_full_model_distribution(small, plan):
    exact = exact_distribution(small, PROMPT, T)
    assert abs(sum(exact.values()) - 1) < 1e-9
    counts = dict.fromkeys(exact, 0)
    acc = [0] * plan.depth
    pro = [0] * plan.depth
    for s in range(RUNS):
        r = decode(small, plan, PROMPT, T, mode="sampling", seed=s)
        counts[tuple(r.tokens)] += 1
        for j in range(plan.depth):
            acc[j] += r.accepted[j]
            pro[j] += r.proposed[j]
    # the test means something only if every level rejects sometimes
    assert all(0.3 < a / p < 0.97 for a, p in zip(acc[1:], pro[1:]))
    stat, pval = pooled_chisquare(counts, exact, RUNS)
    assert pval > 1e-3, (stat, pval)


def test_sampling_is_seeded(small):
    plan = Plan(levels=[1, 2, 4], propose=2, windows=[2])
    a = decode(small, plan, PROMPT, 20, mode="sampling", seed=7).tokens
    assert a == decode(small, plan, PROMPT, 20, mode="sampling", seed=7).tokens
