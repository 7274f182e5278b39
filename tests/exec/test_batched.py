"""Batched decoding (hispec_exec.generate.Batch / decode_batch): every sequence's greedy
output equals its autoregressive decoding alone, token for token, whatever shares its
batch -- every plan family, both batching policies, mixed prompt and output lengths; the
multi-sequence forward is bit-identical per row; sampling at batch > 1 is exact per
request and distributed as the full model's."""
import itertools

import pytest
import torch

from exec_helpers import exact_distribution, pooled_chisquare, random_model
from hispec_exec import autoregressive, decode, heldout_prompts
from hispec_exec.generate import decode_batch
from hispec_sim.schema import Plan

FAMILIES = [
    Plan(levels=[8]),
    Plan(levels=[2, 8], propose=3),
    Plan(levels=[1, 3, 8], propose=2, windows=[3]),
    Plan(levels=[1, 2, 4, 8], propose=2, windows=[2, 3]),
    Plan(levels=[1, 2, 3, 5, 8], propose=1, windows=[1, 2, 2]),
]


def test_run_jobs_rows_are_bit_identical_to_alone(tiny, row_mode):
    """Layer-range batching: jobs of different depths and row counts in one forward give
    each sequence exactly what `run` gives it alone, in pooled and in separate caches."""
    L = tiny.num_layers
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 64, (n,), generator=g) for n in (7, 1, 12, 4, 9)]
    drafters = (0, 2)  # draft twice then check 2 drafts; the others check 1 draft
    t = torch.tensor

    def alone(i, p):
        c = tiny.new_cache()
        out = [tiny.run(c, 0, L, p), tiny.run(c, 0, 2, t([3]))]
        if i in drafters:
            out.append(tiny.run(c, 0, 2, t([4])))
            tiny.run(c, 0, 2, t([5]))
        else:
            tiny.run(c, 0, 2, t([4]))
        out.append(tiny.run(c, 2, 5))
        return out

    ref = [alone(i, p) for i, p in enumerate(prompts)]
    for pooled in (True, False):
        pool = tiny.new_pool(len(prompts))
        cs = [pool.cache(i) if pooled else tiny.new_cache() for i in range(len(prompts))]
        got = [[x] for x in tiny.run_jobs([(c, L, p) for c, p in zip(cs, prompts)])]
        for x, gg in zip(tiny.run_jobs([(c, 2, t([3])) for c in cs]), got):
            gg.append(x)
        # one forward: drafters run 1..2, the others check (1 row through 1..2, 2 rows through 3..5)
        for i, x in enumerate(tiny.run_jobs([(c, 2 if i in drafters else 5, t([4])) for i, c in enumerate(cs)])):
            got[i].append(x)
        for i, x in zip(drafters, tiny.run_jobs([(cs[i], 5, t([5])) for i in drafters])):
            got[i].append(x)
        for i in range(len(prompts)):
            assert len(got[i]) == len(ref[i])
            assert all(torch.equal(a, b) for a, b in zip(got[i], ref[i])), (pooled, i)
        assert [got[i][-1].shape[0] for i in range(5)] == [3, 2, 3, 2, 2]


@pytest.mark.parametrize("batching", ["ragged", "synchronous"])
def test_tiny_every_family_batched_equals_autoregressive(tiny, batching, row_mode):
    g = torch.Generator().manual_seed(5)
    lens = [3, 11, 1, 7, 16, 5]
    news = [30, 12, 25, 40, 8, 33]
    prompts = [torch.randint(0, 64, (n,), generator=g).tolist() for n in lens]
    ars = [autoregressive(tiny, p, n).tokens for p, n in zip(prompts, news)]
    for plan in FAMILIES:
        res = decode_batch(tiny, plan, prompts, news, batching=batching)
        for r, ar in zip(res, ars):
            assert r.tokens == ar, (plan.describe(), batching)


def test_ragged_follows_each_sequence_batch1_schedule(tiny):
    """Under `ragged` every sequence performs exactly the operations it performs alone."""
    plan = Plan(levels=[1, 3, 8], propose=2, windows=[3])
    prompts = [[1, 2, 3], [9, 8, 7, 6, 5, 4], [42]]
    res = decode_batch(tiny, plan, prompts, 20, batching="ragged")
    for p, r in zip(prompts, res):
        alone = decode(tiny, plan, p, 20)
        assert [(f.level, f.segments, f.kept) for f in r.forwards] == \
               [(f.level, f.segments, f.kept) for f in alone.forwards]
        assert r.proposed == alone.proposed and r.accepted == alone.accepted and r.committed == alone.committed


def test_synchronous_runs_common_operations(tiny):
    plan = Plan(levels=[1, 3, 8], propose=2, windows=[3])
    res = decode_batch(tiny, plan, [[1, 2, 3], [9, 8, 7, 6, 5, 4]], 16, batching="synchronous")
    n = min(len(r.forwards) for r in res)
    assert [f.level for f in res[0].forwards[:n]] == [f.level for f in res[1].forwards[:n]]


SHIPPED_PLANS = [Plan(levels=[16]), Plan(levels=[2, 16], propose=3), Plan(levels=[2, 4, 16], propose=2, windows=[4]),
                 Plan(levels=[2, 4, 8, 16], propose=2, windows=[3, 6])]


def test_shipped_every_family_batched_equals_autoregressive(shipped):
    prompts = [p[:n] for p, n in zip(heldout_prompts(4, 64, seed=2), (64, 20, 41, 7))]
    news = [40, 24, 48, 16]
    ars = [autoregressive(shipped, p, n).tokens for p, n in zip(prompts, news)]
    for plan, batching in itertools.product(SHIPPED_PLANS, ["ragged", "synchronous"]):
        if plan.depth <= 2 and batching == "synchronous":
            continue  # identical schedule to ragged for depth <= 2
        for r, ar in zip(decode_batch(shipped, plan, prompts, news, batching=batching), ars):
            assert r.tokens == ar, (plan.describe(), batching)


@pytest.fixture(scope="module")
def small():
    return random_model(seed=0, vocab=4, layers=4, dim=32, heads=2, kv=1, ffn=64, ctx=64, scale=5)


def test_sampling_ragged_equals_each_request_alone(small):
    """Under `ragged` a sequence's schedule (so its random draws) is its batch-1 schedule:
    its sampled output is exactly decode(..., seed + i) alone. (Under `synchronous` checks
    fall at other times: equal in distribution only -- the chi-square test below.)"""
    plan = Plan(levels=[1, 2, 4], propose=2, windows=[2])
    prompts = [[1, 2, 3], [0], [3, 3, 1, 2, 0]]
    res = decode_batch(small, plan, prompts, [12, 7, 9], mode="sampling", seed=11, batching="ragged")
    for i, (p, r) in enumerate(zip(prompts, res)):
        assert r.tokens == decode(small, plan, p, len(r.tokens), mode="sampling", seed=11 + i).tokens


@pytest.mark.slow  # statistical: seeded runs against the enumerated distribution (kept in CI)
def test_sampling_at_batch_matches_full_model_distribution(small):
    """`synchronous` (checks at other times than alone): chi-square over 1200
    continuations decoded 40 at a time beside 40 distractors of another prompt and length.
    (`ragged` sampling equals batch-1 sampling exactly: the test above + test_sampling.)"""
    batching = "synchronous"
    prompt, T, runs, B = [1, 2, 3], 3, 1200, 40
    plan = Plan(levels=[1, 2, 4], propose=2, windows=[2])
    exact = exact_distribution(small, prompt, T)
    counts = dict.fromkeys(exact, 0)
    acc = pro = 0
    for b in range(runs // B):
        # every other sequence is a distractor with another prompt and length
        prompts = [prompt if i % 2 == 0 else [0, 1] for i in range(2 * B)]
        res = decode_batch(small, plan, prompts, [T if i % 2 == 0 else 5 for i in range(2 * B)],
                           mode="sampling", seed=100_000 * b, batching=batching)
        for r in res[::2]:
            counts[tuple(r.tokens)] += 1
            acc += r.accepted[1]
            pro += r.proposed[1]
    assert 0.3 < acc / pro < 0.97
    assert pooled_chisquare(counts, exact, runs).pvalue > 1e-3


def test_pooled_attention_with_unused_slots_is_bit_identical(tiny):
    """Sequences in non-consecutive pool slots (the batched attention then spans unused
    slots, whose rows are discarded) still get exactly their lone results."""
    L = tiny.num_layers
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 64, (n,), generator=g) for n in (5, 9, 3, 12)]
    ref = []
    for p in prompts:
        c = tiny.new_cache()
        tiny.run(c, 0, L, p)
        ref.append([tiny.run(c, 0, L, torch.tensor([t])) for t in (7, 8, 9)])
    pool = tiny.new_pool(7)
    cs = [pool.cache(s) for s in (0, 2, 3, 6)]
    pool.k.normal_()  # stale values in unused slots and past every length must not matter
    pool.v.normal_()
    tiny.run_jobs([(c, L, p) for c, p in zip(cs, prompts)])
    got = [tiny.run_jobs([(c, L, torch.tensor([t])) for c in cs]) for t in (7, 8, 9)]
    for i in range(4):
        assert all(torch.equal(got[s][i], ref[i][s]) for s in range(3))


def test_a_prefill_reads_a_pool_in_place_only_when_no_slot_is_idle(tiny, monkeypatch):
    """An idle slot computes every query tile of the forward: one in a decode step, the
    longest prompt's many in a prefill. So a prefill of 4 prompts in a pool of 8 gathers
    their blocks (a decode step of 4 reads the pool in place), a prefill of every slot reads
    it in place; the rows are bit-identical to each prompt prefilled alone either way."""
    L = tiny.num_layers
    layouts = []
    row_plan = type(tiny)._row_plan

    def spy(self, key):
        plan = row_plan(self, key)
        layouts.append((len(key[3]), key[4], plan["in_place"]))
        return plan
    monkeypatch.setattr(type(tiny), "_row_plan", spy)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 64, (n,), generator=g) for n in (5, 30, 3, 12, 9, 17, 4, 21)]
    ref = []
    for p in prompts:
        c = tiny.new_cache()
        ref.append(tiny.run(c, 0, L, p, prefill=True))
    for k in (4, 8):
        pool = tiny.new_pool(8)
        cs = [pool.cache(s) for s in range(k)]
        got = tiny.run_jobs([(c, L, p) for c, p in zip(cs, prompts)], prefill=True)
        assert all(torch.equal(a, b) for a, b in zip(got, ref[:k]))
        tiny.run_jobs([(c, L, torch.tensor([7])) for c in cs])
    assert {(4, True, False), (4, False, True), (8, True, True), (8, False, True)} <= set(layouts)
