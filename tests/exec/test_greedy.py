"""Greedy decoding with any plan equals autoregressive greedy decoding token for token,
and the work each layer does follows the plan's semantics exactly."""
import pytest
import torch

from exec_helpers import random_model
from hispec_exec import autoregressive, decode, exit_traces, heldout_prompts
from hispec_sim.schema import Plan

TINY_PLANS = (
    [Plan(levels=[e, 8], propose=g) for e, g in [(1, 1), (1, 4), (2, 2), (4, 3), (7, 5)]]
    + [Plan(levels=[a, b, 8], propose=g, windows=[w]) for a, b, g, w in
       [(1, 2, 1, 1), (1, 2, 2, 4), (2, 4, 2, 4), (1, 6, 4, 3), (3, 5, 1, 6)]]
    + [Plan(levels=[1, 2, 4, 8], propose=2, windows=[2, 4]), Plan(levels=[1, 3, 5, 8], propose=3, windows=[5, 2]),
       Plan(levels=[1, 2, 3, 4, 8], propose=1, windows=[1, 2, 3])]
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tiny_model_every_family_equals_autoregressive(tiny, seed):
    prompt = torch.randint(0, 64, (8 + seed,), generator=torch.Generator().manual_seed(seed)).tolist()
    ar = autoregressive(tiny, prompt, 40)
    assert len(ar.tokens) == 40
    for plan in TINY_PLANS:
        r = decode(tiny, plan, prompt, 40)
        assert r.tokens == ar.tokens, plan.describe()


SHIPPED_PLANS = [
    Plan(levels=[2, 16], propose=3),
    Plan(levels=[4, 16], propose=5),
    Plan(levels=[2, 4, 16], propose=2, windows=[4]),
    Plan(levels=[1, 6, 16], propose=3, windows=[6]),
    Plan(levels=[2, 4, 8, 16], propose=2, windows=[3, 6]),
]


def test_shipped_model_every_family_equals_autoregressive(shipped):
    for prompt in heldout_prompts(2, 64, seed=0):
        ar = autoregressive(shipped, prompt, 64)
        for plan in SHIPPED_PLANS:
            r = decode(shipped, plan, prompt, 64)
            assert r.tokens == ar.tokens, plan.describe()


def identity_layers_model():
    """Every layer is the identity (zero output projections): all exits agree, so every
    draft is accepted and the work per layer can be computed by hand."""
    m = random_model(layers=16)
    with torch.no_grad():
        for layer in m.layers:
            layer.wo.weight.zero_()
            layer.w2.weight.zero_()
    return m


def test_accounting_all_accepted_hispec():
    m = identity_layers_model()
    plan = Plan(levels=[2, 4, 16], propose=2, windows=[4])
    r = decode(m, plan, [5, 6, 7], 14)
    # one cycle: 2 drafts; level 2 checks 2 (buffer 3); 2 drafts; level 2 checks 2 (buffer 6 >= 4);
    # the full model checks 6 and commits 7: every layer processed exactly the 7 committed tokens
    assert r.forwards_per_level() == [8, 4, 2]
    assert r.layer_tokens() == [14] * 16
    assert r.proposed == [8, 8, 12] and r.accepted == [0, 8, 12]
    assert r.tokens_per_full_forward() == 7.0 and r.committed == 14
    r = decode(m, plan, [5, 6, 7], 10)  # stops after the check that passes 10: 14 committed, 10 returned
    assert len(r.tokens) == 10 and r.committed == 14 and r.tokens_per_full_forward() == 7.0
    segs = [(f.level, f.segments) for f in r.forwards[:7]]
    assert segs == [(1, [(1, 2, 1)]), (1, [(1, 2, 1)]), (2, [(1, 2, 1), (3, 4, 3)]),
                    (1, [(1, 2, 1)]), (1, [(1, 2, 1)]), (2, [(1, 2, 1), (3, 4, 3)]),
                    (3, [(1, 4, 1), (5, 16, 7)])]


def replay_counts(plan, forwards, L):
    """Independent count of the work the semantics prescribe, given each check's kept count."""
    kept = iter(f.kept for f in forwards if f.level > 1)
    lv, k = plan.levels, plan.depth
    tokens = [0] * L
    fwd = [0] * k
    buf = [0] * (k + 1)
    n_forwards = sum(1 for f in forwards)

    def add(a, b, n):
        for l in range(a, b + 1):
            tokens[l - 1] += n

    while sum(fwd) < n_forwards:
        for _ in range(plan.propose):
            add(1, lv[0], 1)
            fwd[0] += 1
        buf[1] = plan.propose
        j = 1
        while True:
            n = buf[j]
            add(1, lv[j - 1], 1)
            add(lv[j - 1] + 1, lv[j], n + 1)
            fwd[j] += 1
            buf[j] = 0
            buf[j + 1] += next(kept) + 1
            j += 1
            if j >= k or buf[j] < plan.windows[j - 2]:
                break
        if j == k:
            buf[k] = 0
    return tokens, fwd


@pytest.mark.parametrize("plan", [Plan(levels=[2, 4, 16], propose=2, windows=[4]),
                                  Plan(levels=[1, 3, 8, 16], propose=3, windows=[2, 5]),
                                  Plan(levels=[3, 16], propose=4)], ids=lambda p: p.describe())
def test_accounting_with_rejections_follows_semantics(shipped, plan):
    prompt = heldout_prompts(1, 64, seed=3)[0]
    r = decode(shipped, plan, prompt, 80)
    assert any(f.kept is not None and f.kept < f.head_tokens - 1 for f in r.forwards)  # some rejections
    tokens, fwd = replay_counts(plan, r.forwards, 16)
    assert r.layer_tokens() == tokens
    assert r.forwards_per_level() == fwd
    for f in r.forwards:  # each forward: one token below the checked range, n+1 in it
        if f.level > 1:
            assert f.segments[0][2] == 1 and f.segments[1][2] == f.head_tokens


def test_autoregressive_accounting(tiny):
    r = autoregressive(tiny, [1, 2, 3], 10)
    assert r.forwards_per_level() == [10] and r.layer_tokens() == [10] * 8


def test_exit_traces_follow_greedy_trajectory(tiny):
    prompt = [3, 1, 4, 1, 5]
    tr = exit_traces(tiny, prompt, 20, exits=[1, 4, 8])
    assert tr.shape == (20, 3)
    assert tr[:, -1].tolist() == autoregressive(tiny, prompt, 20).tokens
    full = exit_traces(tiny, prompt, 20)
    assert full.shape == (20, 8) and torch.equal(full[:, [0, 3, 7]], tr)
    # a shorter run's traces are the longer run's prefix (the generalisation study slices its cache so)
    assert torch.equal(exit_traces(tiny, prompt, 7), full[:7])


def test_plan_errors(tiny):
    with pytest.raises(ValueError, match="levels"):
        decode(tiny, Plan(levels=[2, 9], propose=2), [1], 5)
    with pytest.raises(ValueError, match="levels"):
        decode(tiny, Plan(levels=[2, 4], propose=2), [1], 5)
    with pytest.raises(ValueError, match="batch"):
        decode(tiny, Plan(levels=[2, 8], propose=2, batch=4), [1], 5)
    with pytest.raises(ValueError, match="prompt"):
        decode(tiny, Plan(levels=[8]), [], 5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        decode(tiny, Plan(levels=[8]), [1] * 10, 1000)


def test_heldout_exit_traces(shipped):
    from hispec_exec import heldout_exit_traces

    tr, starts = heldout_exit_traces(shipped, 2, 64, 16, seed=0, exits=[2, 4, 16])
    assert tr.shape == (32, 3) and starts == [0, 16]
    assert tr[:16, -1].tolist() == autoregressive(shipped, heldout_prompts(2, 64, 0)[0], 16).tokens
    assert heldout_prompts(5, 64, 0, prompt_set="B")[:2] == heldout_prompts(2, 64, 0, prompt_set="B")  # n more: a prefix


def test_timing_api(tiny):
    from hispec_exec.measure import forward_timings, head_timings

    t1 = forward_timings(tiny, 3, 1, 10, repeats=5)
    t8 = forward_timings(tiny, 3, 8, 10, repeats=5)
    assert len(t1) == 5 and (0 < t1).all() and (t1 < 100).all() and (0 < t8).all()
    assert (0 < head_timings(tiny, 4, repeats=5)).all()
    with pytest.raises(ValueError, match="context"):
        forward_timings(tiny, 1, 8, 10_000, repeats=1)
