import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hispec_sim.schema import LengthDist, RequestMetrics, ServeLimits, Traffic
from hispec_sim.traffic import (DEFAULT_LENGTHS, draw_lengths, mean_length, fit_default_lengths, generate, load_trace, slo_lines,
                                 summarize, trace_lines)


def test_generate_is_seeded_and_has_the_stated_rate():
    t = Traffic(qps=4.0, requests=4000, seed=3, prompt_len=LengthDist.parse("uniform:10:20", "p"))
    a, b = generate(t), generate(t)
    assert a == b
    arr = np.array([r.arrival_s for r in a])
    assert arr[0] == 0 and np.all(np.diff(arr) >= 0)
    assert abs((len(arr) - 1) / arr[-1] - 4.0) < 0.3
    lens = np.array([r.prompt_len for r in a])
    assert lens.min() >= 10 and lens.max() <= 20
    g = Traffic(qps=4.0, requests=4000, arrival="gamma", cv=3.0, seed=3)
    gaps = np.diff([r.arrival_s for r in generate(g)])
    assert abs(gaps.std() / gaps.mean() - 3.0) < 0.6


@pytest.mark.parametrize("text", ["0", "uniform:5", "uniform:9:3", "lognormal:-1:0.5", "zipf:3", "empirical:", "12:foo=3",
                                  "2_56", "\uff12\uff15\uff16", "lognormal:2_0:0.5"])
def test_length_dist_rejects(text):
    with pytest.raises(ValueError, match="^prompt_len: "):
        LengthDist.parse(text, "prompt_len")


def test_trace_errors_name_the_line(tmp_path):
    f = tmp_path / "t.jsonl"
    for text, match in [
        ('{"arrival_s": 0, "prompt": "a", "max_new_tokens": 3}\n\n{"arrival_s": 1, "prompt_tokens": 5}\n',
         "line 3: max_new_tokens"),
        ('{"arrival_s": 2, "prompt": "a", "max_new_tokens": 3}\n{"arrival_s": 1, "prompt": "b", "max_new_tokens": 3}\n',
         "line 2: arrival_s"),
        ('{"arrival_s": 0, "prompt": "a", "max_new_tokens": 3}\n{oops\n', "line 2: malformed JSON"),
        # not the last kept
        ('{"arrival_s": 0, "arrival_s": 1, "prompt_tokens": 8, "max_new_tokens": 4}\n',
         "line 1: key 'arrival_s' appears twice"),
        # as generate and a prompts file judge a prompt (twenty-first fuzz round: served, or Python's codec message)
        ('{"arrival_s": 0, "prompt": " \\t ", "max_new_tokens": 3}\n', "line 1: prompt: empty \\(or whitespace only\\)"),
        ('{"arrival_s": 0, "prompt": "a\\ud800b", "max_new_tokens": 3}\n', "line 1: prompt: not valid Unicode"),
    ]:
        f.write_text(text)
        with pytest.raises(ValueError, match=match):
            load_trace(f)
    f.write_text(json.dumps({"arrival_s": 0, "prompt_tokens": [1, 2], "max_new_tokens": 2}) + "\n\n \n"
                 + json.dumps({"arrival_s": 1, "prompt_tokens": 3, "max_new_tokens": 2}) + "\n")
    assert load_trace(f)[0].prompt_len == 2
    assert trace_lines(f) == [1, 4]  # the line of each request, for errors that name one


def test_a_byte_order_mark_is_not_content(tmp_path):
    """Files saved by Windows editors start with a BOM: traces and JSON inputs read past it."""
    from hispec_sim.schema import load_plan

    f = tmp_path / "t.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + b'{"arrival_s": 0, "prompt_tokens": 5, "max_new_tokens": 3}\n')
    assert load_trace(f)[0].prompt_len == 5
    p = tmp_path / "plan.json"
    p.write_bytes(b"\xef\xbb\xbf" + b'{"levels": [2, 8], "propose": 3}')
    assert load_plan(p).propose == 3


def test_summarize_counts_goodput():
    ms = [RequestMetrics(id=0, arrival_s=0.0, prompt_tokens=4, output_tokens=3, queue_ms=0, ttft_ms=10, e2e_ms=30,
                         tbt_ms=[10, 10]),
          RequestMetrics(id=1, arrival_s=1.0, prompt_tokens=4, output_tokens=3, queue_ms=5, ttft_ms=500, e2e_ms=520,
                         tbt_ms=[0, 20])]
    s = summarize(ms, ServeLimits(slo_ttft_ms=100, slo_tbt_ms=50))
    assert s["output_tokens"] == 6 and s["slo_attained"] == 0.5
    assert s["duration_s"] == pytest.approx(1.52)
    assert s["tbt_ms"]["mean"] == pytest.approx(10.0)
    assert s["p99_slos_met"] is False  # p99 TTFT ~ 500 ms > 100


def test_goodput_judges_each_requests_tpot_and_the_p99s_judge_the_pooled_gaps():
    """A speculative plan commits in bursts: gaps of 0 and of a whole cycle. Each request's
    TPOT (its mean gap) meets a 30 ms SLO, the pooled p99 TBT (a cycle, 60 ms) does not; serve
    says both, where it once called the run 100 % within a 'p99 TBT' SLO (eighteenth round, D1)."""
    bursty = [RequestMetrics(id=i, arrival_s=float(i), prompt_tokens=4, output_tokens=9, queue_ms=0, ttft_ms=10,
                             e2e_ms=10 + 4 * 60, tbt_ms=[0, 60] * 4) for i in range(4)]
    s = summarize(bursty, ServeLimits(slo_ttft_ms=100, slo_tbt_ms=40))
    assert s["slo_attained"] == 1.0 and s["slo_tpot_ms"] == 40 and s["tpot_ms"]["p99"] == pytest.approx(30.0)
    assert s["tbt_ms"]["p99"] == pytest.approx(60.0) and s["p99_slos_met"] is False
    tight = summarize(bursty, ServeLimits(slo_ttft_ms=100, slo_tbt_ms=80, slo_tpot_ms=20))  # a TPOT SLO of its own
    assert tight["slo_attained"] == 0.0 and tight["p99_slos_met"] is True
    assert summarize(bursty, ServeLimits())["p99_slos_met"] is None  # no SLO: nothing to judge
    attained, p99 = slo_lines([s, tight], "50.0")
    assert attained == "(SLO attained 50.0 % of requests: TTFT <= 100 ms, TPOT <= 40 ms each)"
    assert p99 == "p99 SLOs (TTFT <= 100 ms, TBT <= 40 ms, as capacity judges a load): met in 1 of 2 seeds"


@given(context=st.integers(2, 10_000), reserved=st.integers(1, 40), prompt=st.sampled_from([None, "64", "uniform:8:900"]))
@settings(max_examples=200, deadline=None)
def test_default_lengths_fit_the_context(context, reserved, prompt):
    """A given length is kept; the defaults are scaled to fit the context whenever the given
    ones leave a token for each, and left alone when they fit already."""
    lengths = dict(DEFAULT_LENGTHS, **({"prompt_len": prompt} if prompt else {}))
    out = fit_default_lengths(lengths, context, reserved)
    upper = lambda d: sum(LengthDist.parse(v, k).upper for k, v in d.items())  # noqa: E731
    if prompt:
        assert out["prompt_len"] == prompt
    if upper(lengths) + reserved <= context:
        assert out == lengths
    room = context - reserved - (LengthDist.parse(prompt, "p").upper if prompt else 0)
    if room >= (1 if prompt else 2):
        assert upper(out) + reserved <= context
    assert fit_default_lengths(lengths, None, reserved) == lengths


@pytest.mark.parametrize("text", ["lognormal:192:0.8:max=1024", "lognormal:5:2:min=3:max=40", "lognormal:256:0",
                                  "lognormal:4.5:1e-17:max=9", "lognormal:100.5:1e-16:max=200",
                                  "uniform:3:9:max=6", "empirical:1,5,900:min=2", "7"])
@pytest.mark.parametrize("per", [1, 3])
def test_mean_length_is_the_mean_of_the_draws(text, per):
    """Capacity's $/M and saturation load divide by these: exact, where a 4,000-draw sample
    was 0.8 % low for the default output length (round 23)."""
    d = LengthDist.parse(text, "output_len")
    x = np.ceil(draw_lengths(d, 400_000, np.random.default_rng(0)) / per)
    assert mean_length(d, per) == pytest.approx(x.mean(), abs=4 * x.std() / np.sqrt(x.size) + 1e-9)


@given(median=st.floats(1.0, 5000.0), sigma=st.one_of(st.floats(0.0, 3.0), st.floats(0.0, 1e-9)),
       seed=st.integers(0, 2**16))
@settings(max_examples=100, deadline=None)
def test_a_lengths_upper_bound_is_the_longest_it_draws(median, sigma, seed):
    """`upper` (what the context checks read) bounds every draw, and a lognormal of sigma 0
    (or below TINY_SIGMA, which draws alike) draws its median alone (docs check 21:
    `lognormal:256:0` was refused as drawing up to 1,000,000 tokens; a review, 2026-12-03:
    `lognormal:20:1e-12` too)."""
    d = LengthDist.parse(f"lognormal:{median!r}:{sigma!r}", "prompt_len")
    x = draw_lengths(d, 500, np.random.default_rng(seed))
    assert x.max() <= d.upper
    if sigma < 1e-9:
        assert d.upper == x.max() == x.min()


@pytest.mark.parametrize("text", ["32:max=10", "uniform:200:300:max=100", "empirical:600,700:max=100",
                                  "uniform:1:5:min=6", "empirical:1,2:min=3", "lognormal:5000:0:max=100",
                                  "lognormal:20:1e-12:min=30"])
def test_a_length_wholly_outside_its_own_bounds_is_refused(text):
    """Every draw would be clipped to one bound: refused for every family, as for a fixed
    length (round 24, M7: uniform and empirical were accepted and clipped silently)."""
    with pytest.raises(ValueError, match="outside its own min..max"):
        LengthDist.parse(text, "prompt_len")


@pytest.mark.parametrize("text", ["uniform:3:9:max=6", "empirical:5,600:max=100", "lognormal:5000:0.5:max=100"])
def test_a_length_partly_inside_its_bounds_is_clipped(text):
    assert LengthDist.parse(text, "prompt_len").upper <= 100
