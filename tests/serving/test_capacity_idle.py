"""capacity.idle_run: a nearly idle replica serves one sequence at a time, where a
3+-level synchronous plan runs its batch-1 schedule exactly as ragged does."""
import numpy as np
import pytest

from hispec_sim import capacity, schema
from hispec_sim.evaluate import Setting
from hispec_sim.synthetic import synthetic_profile


def _spec(requests=12):
    p = synthetic_profile(16, 0.5, 0.75, head_ms=0.2, overhead_ms=0.3, name="idle_test")
    tr = schema.Traffic(qps=1.0, requests=requests, prompt_len=schema.LengthDist.parse("uniform:8:64", "p"),
                        output_len=schema.LengthDist.parse("uniform:4:48", "o"), seed=0)
    lim = schema.ServeLimits(max_batch=8, slo_ttft_ms=200, slo_tbt_ms=25)
    return capacity.Spec(Setting(p, None, None, None, 1, None), tr, lim, "auto", 1)


def test_idle_run_of_a_synchronous_chain_is_the_ragged_run_at_the_same_load():
    spec = _spec()
    sync = schema.Plan(levels=[2, 6, 16], propose=2, windows=[3], batching="synchronous")
    rag = sync.model_copy(update={"batching": "ragged"})
    q = capacity.IDLE_FRACTION * capacity._saturation_qps(spec, sync)
    got = capacity.idle_run(spec, sync, 1)  # seed 1: no two requests overlap (seed 0's two 30-50 ms gaps do)
    assert not capacity._requests_overlap(capacity._seeded_run(spec, rag, q, 1, 12))
    assert got == capacity.run_load(spec, rag, q, 1, 12)
    # one sequence at a time, the step-by-step synchronous engine agrees on everything the
    # batch-1 schedule fixes: every request's tokens, and time per token in distribution
    step = capacity.run_load(spec, sync, q, 1, 12)
    assert got["output_tokens"] == step["output_tokens"] and got["requests"] == step["requests"]
    assert abs(got["tpot_ms"]["mean"] / step["tpot_ms"]["mean"] - 1) < 0.35


def test_bursty_idle_requests_overlap_and_run_on_the_synchronous_engine():
    """Gamma arrivals of cv 4 clump at any mean rate: "idle" requests overlap, where the two
    engines differ, so the synchronous plan is simulated as it is (eighteenth round, D5: a
    hierarchical family was reported at 0 req/s by the ragged engine's p99 TBT)."""
    spec = _spec()
    spec = capacity.Spec(spec.setting, spec.traffic.model_copy(update={"arrival": "gamma", "cv": 4.0}), spec.limits,
                         spec.batching, spec.seeds)
    sync = schema.Plan(levels=[2, 6, 16], propose=2, windows=[3], batching="synchronous")
    q = capacity.IDLE_FRACTION * capacity._saturation_qps(spec, sync)
    rag = capacity._seeded_run(spec, sync.model_copy(update={"batching": "ragged"}), q, 0, 12)
    assert capacity._requests_overlap(rag)
    assert capacity.idle_run(spec, sync, 0) == capacity.run_load(spec, sync, q, 0, 12)


def test_idle_run_keeps_other_plans_as_they_are():
    spec = _spec()
    for plan in (schema.Plan(levels=[16]), schema.Plan(levels=[4, 16], propose=3, batching="synchronous")):
        q = capacity.IDLE_FRACTION * capacity._saturation_qps(spec, plan)
        assert capacity.idle_run(spec, plan, 0) == capacity.run_load(spec, plan, q, 0, 12)


def test_no_plan_saturates_above_autoregressive_on_one_token_requests():
    """A full-model check costs at least an autoregressive step and commits no token past a
    request's end: on 1-token outputs speculation's saturation load is not above
    autoregressive's (the fourteenth fuzz round: it was, and capacity recommended it on
    those caps alone), while on long outputs it is."""
    ar, spec_plan = schema.Plan(levels=[16]), schema.Plan(levels=[4, 16], propose=3)
    one = _spec()
    one = capacity.Spec(one.setting, one.traffic.model_copy(update={"output_len": schema.LengthDist.parse("1", "o")}),
                        one.limits, one.batching, one.seeds)
    assert capacity._saturation_qps(one, spec_plan) <= capacity._saturation_qps(one, ar)
    assert capacity._saturation_qps(_spec(), spec_plan) > capacity._saturation_qps(_spec(), ar)


def test_by_load_marks_no_family_above_its_saturation_load():
    """A run of finitely many requests can meet loose SLOs above a plan's saturation load;
    the by-load table does not mark it, as the capacities beside it are capped there
    (eighteenth round, M3)."""
    spec = _spec()
    loose = capacity.Spec(spec.setting, spec.traffic, spec.limits.model_copy(update={"slo_ttft_ms": 1e6,
                                                                                     "slo_tbt_ms": 1e6}),
                          spec.batching, spec.seeds)
    ar = schema.Plan(levels=[16])
    sat = capacity._saturation_qps(loose, ar)
    below, above = capacity.by_load(loose, {"autoregressive": [ar]}, [0.5 * sat, 1.5 * sat])
    assert below["families"]["autoregressive"]["meets_slo"] and not below["families"]["autoregressive"]["above_saturation"]
    a = above["families"]["autoregressive"]
    assert a["violation"] <= 1.0 and a["above_saturation"] and not a["meets_slo"]


def test_a_seed_capped_at_saturation_does_not_size_the_family(monkeypatch):
    """A seed stopped at the cap is an upper bound: with other seeds that found their limit,
    the capacity is their mean (round 23, D2: the mean of 1143 and 4.2 req/s sized 1 replica
    that the second seed's traffic failed); where every seed is capped, the cap."""
    spec = _spec()
    spec = capacity.Spec(spec.setting, spec.traffic, spec.limits, spec.batching, 3)
    plan = schema.Plan(levels=[16])
    sat = capacity._saturation_qps(spec, plan)
    for answers, want, used in (([sat, 0.01 * sat, 0.03 * sat], 0.02 * sat, 2), ([sat] * 3, sat, 3),
                                ([0.01 * sat, 0.02 * sat, 0.03 * sat], 0.02 * sat, 3)):
        monkeypatch.setattr(capacity, "max_qps", lambda s, p, seed, cap, a=answers: (a[seed], min(a[seed] * 1.1, cap), {}))
        c = capacity.family_capacity(spec, [plan], None)
        assert np.isclose(c["max_qps"], want) and c["seeds_used"] == used
        assert c["seeds_capped"] == sum(a >= sat for a in answers)


def test_the_saturation_load_is_priced_at_the_traffics_context():
    """Short requests run faster than the profile's context says: the cap is priced at the
    traffic's mean context (round 24, D2: 2-token prompts with 4-token outputs were capped at
    the workload's context of 128, below the load one replica was seen to sustain)."""
    from hispec_sim.evaluate import score

    base = _spec()
    measured = Setting(schema.load_profile("cpu_hispec_tiny"), None, None, None, 1, None)  # context 128
    ar = schema.Plan(levels=[16])
    caps = []
    for prompt, out, ctx in (("2", "4", 4), ("uniform:8:64", "uniform:4:48", 49), ("300", "100", 350)):
        tr = base.traffic.model_copy(update={"prompt_len": schema.LengthDist.parse(prompt, "p"),
                                             "output_len": schema.LengthDist.parse(out, "o")})
        spec = capacity.Spec(measured, tr, base.limits, "auto", 1)
        s = Setting(measured.profile, None, None, None, base.limits.max_batch, ctx)
        want = score(s, [ar.model_copy(update={"batch": base.limits.max_batch})])[0].tokens_per_second
        caps.append(capacity._saturation_qps(spec, ar) * capacity.traffic.mean_length(tr.output_len))
        assert caps[-1] == pytest.approx(want, rel=1e-12)
    assert caps[0] > caps[1] > caps[2]  # tokens/s fall with the context
