"""Trace replay against the executor: for greedy plans, walking the measured traces of the
prompts the executor decodes commits exactly the executor's tokens at every full-model
check (montecarlo's module docstring says why), fixed and adaptive plans of every depth,
both replay implementations. Only the last check of a request may differ (rows past a
request's end are stand-ins), so the number of full-model checks is equal and the
committed tokens differ by at most one check's worth per request."""
from __future__ import annotations

import pytest

from hispec_exec import decode, heldout_prompts
from hispec_exec.measure import acceptance_workload
from hispec_sim.acceptance import AgreementModel
from hispec_sim.adaptive import replay
from hispec_sim.evaluate import Setting
from hispec_sim.montecarlo import simulate
from hispec_sim.schema import Plan, load_profile

NEW = 48
PLANS = [Plan(levels=[2, 16], propose=3),
         Plan(levels=[4, 16], propose=6, draft_confidence=0.5),
         Plan(levels=[2, 6, 16], propose=2, windows=[3]),
         Plan(levels=[2, 6, 16], propose=3, windows=[4], draft_confidence=0.4, escalate_confidence=[0.6]),
         Plan(levels=[1, 5, 9, 16], propose=2, windows=[2, 3])]


@pytest.fixture(scope="module")
def measured(shipped):
    prompts = heldout_prompts(3, 48, seed=5)
    acc = acceptance_workload(shipped, prompts, NEW, "3 held-out prompts (seed 5)", "test")
    return prompts, acc, Setting(load_profile("cpu_hispec_tiny")).cost(64)


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.describe())
def test_replay_commits_what_the_executor_commits(shipped, measured, plan):
    prompts, acc, cost = measured
    runs = [decode(shipped, plan, p, NEW) for p in prompts]
    checks = sum(r.forwards_per_level()[-1] for r in runs)
    committed = sum(r.committed for r in runs)
    last = plan.propose + sum(plan.windows) + 1  # the most one check can commit
    walk = replay(cost, acc, plan)
    assert walk.checks == checks
    if plan.depth == 2 and not plan.adaptive:  # exact only here: elsewhere what follows a rejection uses stand-ins
        assert walk.forwards == sum(len(r.forwards) for r in runs)
    assert abs(walk.tokens_per_full_forward * walk.checks - committed) < len(prompts) * last
    if not plan.adaptive:
        mc = simulate(cost, AgreementModel(acc), plan, replay=True)
        assert mc.cycles == checks and mc.streams == len(prompts)
        assert mc.tokens_per_full_forward == pytest.approx(walk.tokens_per_full_forward, rel=1e-12)
