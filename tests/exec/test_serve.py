"""Continuous batching (hispec_exec.serve): outputs equal each request decoded alone,
admission respects max batch and KV tokens, metrics are consistent; `hispec-exec serve`
runs a trace and rejects bad input with one line and exit 2, writing nothing.

The engine runs on a virtual clock here (every reading advances 1 ms, sleeping advances
by the time asked) so that no test depends on timing."""
import json

import pytest
import torch

from exec_helpers import VirtualClock
from hispec_exec import autoregressive
from hispec_exec.cli import main
from hispec_exec.serve import kv_need, serve
from hispec_sim.schema import Plan, ServeLimits


def run(model, plan, arrivals, prompts, news, limits, **kw):
    c = VirtualClock()
    return serve(model, plan, arrivals, prompts, news, limits, clock=c, **kw)


def workload(n=7, seed=3):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 14, (n,), generator=g).tolist()
    prompts = [torch.randint(0, 64, (k,), generator=g).tolist() for k in lens]
    news = torch.randint(4, 30, (n,), generator=g).tolist()
    arrivals = [0.0, 0.0, 0.004, 0.01, 0.05, 0.051, 2.0][:n]
    return arrivals, prompts, news


PLANS = [Plan(levels=[8]), Plan(levels=[2, 8], propose=3), Plan(levels=[1, 3, 8], propose=2, windows=[3]),
         Plan(levels=[1, 2, 4, 8], propose=2, windows=[2, 3])]


@pytest.mark.parametrize("batching", ["ragged", "synchronous"])
def test_served_outputs_equal_autoregressive_alone(tiny, batching):
    arrivals, prompts, news = workload()
    ars = [autoregressive(tiny, p, n).tokens for p, n in zip(prompts, news)]
    for plan in PLANS:
        res = run(tiny, plan, arrivals, prompts, news, ServeLimits(max_batch=3), batching=batching)
        assert res["tokens"] == ars, (plan.describe(), batching)
        for m, p, n, a in zip(res["metrics"], prompts, news, arrivals):
            assert m.output_tokens == n and m.prompt_tokens == len(p) and len(m.tbt_ms) == n - 1
            assert 0 <= m.queue_ms < m.ttft_ms <= m.e2e_ms and m.arrival_s == a
            assert abs(m.ttft_ms + sum(m.tbt_ms) - m.e2e_ms) < 1e-6
        assert res["mean_batch"] <= 3


@pytest.mark.parametrize("chunk", [1, 5, 16])
def test_chunked_prefill_outputs_equal_autoregressive_alone(tiny, chunk):
    """A prompt cached chunk by chunk (pieces of several prompts in one prefill forward)
    decodes exactly the tokens of its whole-prompt prefill alone; every request is served."""
    arrivals, prompts, news = workload()
    ars = [autoregressive(tiny, p, n).tokens for p, n in zip(prompts, news)]
    limits = ServeLimits(max_batch=3, prefill="chunked", prefill_chunk=chunk)
    for plan in PLANS:
        res = run(tiny, plan, arrivals, prompts, news, limits)
        assert res["tokens"] == ars, (plan.describe(), chunk)
        assert res["mean_batch"] <= 3
        whole = run(tiny, plan, arrivals, prompts, news, ServeLimits(max_batch=3))
        if chunk == 16:  # every admitted prompt fits one chunk: the separate policy's forwards
            assert res["prefill_forwards"] == whole["prefill_forwards"]
        else:  # more prefill forwards, at most one per iteration
            assert res["prefill_forwards"] > whole["prefill_forwards"]


def test_chunked_prefill_forwards_carry_at_most_the_chunk(tiny, monkeypatch):
    """Each prefill forward carries <= prefill_chunk prompt tokens, in FIFO order, and a
    running sequence's decode step follows each chunk (the spec, hispec_exec.serve); the
    step log names each forward's pieces as (new tokens, cached tokens) per prompt."""
    from hispec_exec import generate

    seen, pieces = [], []
    real = generate.run_prefill

    def spy(model, decoders, tokens=None):
        before = [d.prefilled for d in decoders]
        ms = real(model, decoders, tokens)
        seen.append([d.prefilled - b for d, b in zip(decoders, before)])
        pieces.append([(d.prefilled - b, b) for d, b in zip(decoders, before) if d.prefilled > b])
        return ms
    monkeypatch.setattr(generate, "run_prefill", spy)
    prompts = [[3] * 11, [4] * 2, [5] * 9]
    log = []
    run(tiny, Plan(levels=[2, 8], propose=2), [0.0] * 3, prompts, [6] * 3,
        ServeLimits(max_batch=4, prefill="chunked", prefill_chunk=4), step_log=log, ops_of=lambda batch: None)
    taken = [sum(x) for x in seen]
    assert max(taken) <= 4 and sum(taken) == 10 + 1 + 8
    assert seen[:3] == [[4, 0, 0], [4, 0, 0], [2, 1, 1]]  # FIFO: the first prompt, then the next ones
    logged = [it["pieces"] for it in log if it["pieces"]]  # iterations that ran a step (the first two ran none)
    assert logged == pieces[2:] == [[(2, 8), (1, 0), (1, 0)], [(4, 1)], [(3, 5)]]


def test_chunked_prefill_is_refused_where_it_is_not_built(tiny):
    limits = ServeLimits(prefill="chunked", prefill_chunk=8)
    for plan, batching in [(Plan(levels=[2, 8], propose=2), "synchronous"),
                           (Plan(levels=[2, 8], propose=2, draft_confidence=0.5), "ragged")]:
        with pytest.raises(ValueError, match="prefill_chunk"):
            run(tiny, plan, [0.0], [[1] * 5], [4], limits, batching=batching)
    run(tiny, Plan(levels=[8]), [0.0], [[1] * 5], [4], limits, batching="synchronous")  # autoregressive: built


def test_admission_limits(tiny):
    arrivals, prompts, news = workload()
    plan = Plan(levels=[2, 8], propose=2)
    same = [p[:1] + [5] * 4 for p in prompts]
    one = kv_need(plan, 5, 20)
    # the KV budget holds one request at a time (not two): requests run one after another, FIFO
    res = run(tiny, plan, [0.0] * 7, same, [20] * 7, ServeLimits(max_batch=8, kv_tokens=2 * one - 1))
    assert res["mean_batch"] == 1.0
    ms = res["metrics"]
    for a, b in zip(ms, ms[1:]):
        assert b.queue_ms >= a.e2e_ms  # b is admitted only after a left
    res = run(tiny, plan, [0.0] * 7, prompts, news, ServeLimits(max_batch=2))
    assert 1 < res["mean_batch"] <= 2
    # an idle server waits for the next arrival: the late request is not queued
    res = run(tiny, plan, *workload(), ServeLimits(max_batch=8))
    assert res["metrics"][-1].queue_ms < 5


def test_request_that_never_fits(tiny):
    plan = Plan(levels=[2, 8], propose=2)
    with pytest.raises(ValueError, match="exceeds the KV capacity"):
        run(tiny, plan, [0.0], [[1] * 200], [60], ServeLimits())
    with pytest.raises(ValueError, match="kv_tokens"):
        run(tiny, plan, [0.0], [[1] * 10], [20], ServeLimits(kv_tokens=30))
    # the bound it names is the most any request needs, not the first misfit's (a review: 60, then 70, then 103)
    with pytest.raises(ValueError, match=r"kv_tokens: 30 is fewer than the 35 tokens request 0 needs; allowed: >= 75 "):
        run(tiny, plan, [0.0, 0.0, 0.0], [[1] * 10, [1] * 20, [1] * 50], [20] * 3, ServeLimits(kv_tokens=30))


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_cli_trace_json(tmp_path, capsys):
    trace = write(tmp_path / "t.jsonl", [
        json.dumps({"arrival_s": 0, "prompt": "def main(", "max_new_tokens": 12}),
        json.dumps({"arrival_s": 0.01, "prompt_tokens": [100, 101, 102], "max_new_tokens": 8}),
        "",
        json.dumps({"arrival_s": 0.02, "prompt_tokens": 20, "max_new_tokens": 10}),
    ])
    out = tmp_path / "o.json"
    assert main(["serve", "--trace", trace, "--levels", "2,4,16", "--propose", "2", "--window", "4",
                 "--max-batch", "2", "--slo-ttft-ms", "100000", "--slo-tbt-ms", "100000", "--check", "--json",
                 "--out", str(out), "--batching", "synchronous"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d == json.loads(out.read_text(encoding="utf-8"))
    assert d["identical_to_autoregressive"] is True and d["batching"] == "synchronous"
    assert [r["output_tokens"] for r in d["requests"]] == [12, 8, 10]
    assert [r["prompt_tokens"] for r in d["requests"]] == [9, 3, 20]
    s = d["summary"]
    assert s["requests"] == 3 and s["output_tokens"] == 30 and s["slo_attained"] == 1.0
    assert set(s["ttft_ms"]) == {"mean", "p50", "p90", "p99"}


def test_cli_says_a_trace_waits_long_in_wall_time(tmp_path, capsys, monkeypatch):
    """Arrivals are waited for in real time: a trace whose last request comes later than
    LONG_WAIT_S says so on stderr at the start (how to stop, and --clock cpu, which does not
    sleep); with --clock cpu nothing is said."""
    import hispec_exec.serve

    monkeypatch.setattr(hispec_exec.serve, "LONG_WAIT_S", 0.01)
    trace = write(tmp_path / "t.jsonl", [json.dumps({"arrival_s": 0, "prompt_tokens": 8, "max_new_tokens": 2}),
                                         json.dumps({"arrival_s": 0.05, "prompt_tokens": 8, "max_new_tokens": 2})])
    for clock, said in (("wall", True), ("cpu", False)):
        assert main(["serve", "--trace", trace, "--levels", "16", "--no-warmup", "--json", "--clock", clock]) == 0
        err = capsys.readouterr().err
        assert ("the last request arrives at 0.05 s: the wall clock waits for it" in err) is said, err


def test_cli_warms_up_untimed_and_discards_it(tmp_path, capsys, monkeypatch):
    import hispec_exec.serve as srv

    calls, real = [], srv.serve
    monkeypatch.setattr(srv, "serve", lambda *a, **k: calls.append(len(a[3])) or real(*a, **k))
    # all arrive at once: the schedule, and so the step counts, do not depend on timing
    trace = write(tmp_path / "t.jsonl", [json.dumps({"arrival_s": 0.0, "prompt_tokens": 20 + i, "max_new_tokens": 6})
                                         for i in range(3)])
    outs = []
    for extra in ([], ["--no-warmup"]):
        assert main(["serve", "--trace", trace, "--levels", "2,16", "--propose", "3", "--json", *extra]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert calls == [1, 3, 3]  # the first request alone, then the trace; --no-warmup: the trace only
    for k in ("decode_steps", "prefill_forwards", "acceptance_per_level"):
        assert outs[0][k] == outs[1][k]
    assert [r["output_tokens"] for r in outs[0]["requests"]] == [6, 6, 6]


def test_one_token_prompts_count_no_prefill_forward(tmp_path, capsys):
    """A one-token prompt's only token is the first decode step's row: its admission runs
    no prefill forward, and the count says so, as the simulator's does (twenty-first fuzz
    round: 3 counted where none ran)."""
    from hispec_sim.cli import main as sim_main

    trace = write(tmp_path / "t.jsonl", [json.dumps({"arrival_s": 0.05 * i, "prompt_tokens": p, "max_new_tokens": 3})
                                         for i, p in enumerate([1, 1, 5])])
    assert main(["serve", "--trace", trace, "--levels", "16", "--no-warmup", "--clock", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prefill_forwards"] == 1
    assert sim_main(["serve", "--profile", "cpu_hispec_tiny", "--levels", "16", "--trace", trace, "--seeds", "1",
                     "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prefill_forwards"] == [1]


def test_chunked_prefill_runs_the_simulators_forwards_and_steps(tmp_path, capsys):
    """The executor and the simulator run the same chunked process: on a trace whose
    requests all arrive at once (admission does not depend on timing) with autoregressive
    decoding (steps do not depend on acceptance), the same prefill forwards and decode steps."""
    from hispec_sim.cli import main as sim_main

    trace = write(tmp_path / "t.jsonl", [json.dumps({"arrival_s": 0, "prompt_tokens": p, "max_new_tokens": m})
                                         for p, m in [(30, 4), (1, 9), (12, 3), (25, 6)]])
    common = ["--trace", trace, "--levels", "16", "--prefill-chunk", "7", "--max-batch", "4", "--json"]
    assert main(["serve", *common, "--no-warmup", "--clock", "cpu"]) == 0
    ex = json.loads(capsys.readouterr().out)
    assert sim_main(["serve", "--profile", "cpu_hispec_tiny", *common, "--seeds", "1"]) == 0
    sim = json.loads(capsys.readouterr().out)
    assert ex["limits"]["prefill_chunk"] == sim["limits"]["prefill_chunk"] == 7
    assert [ex["prefill_forwards"]] == sim["prefill_forwards"] == [-(-(29 + 11 + 24) // 7)]
    assert [ex["decode_steps"]] == sim["steps"]


BAD = [
    (["--qps", "0"], "qps"),
    (["--qps", "-1"], "qps"),
    (["--qps", "2", "--requests", "0"], "requests"),
    (["--qps", "2", "--max-batch", "0"], "max_batch"),
    (["--qps", "2", "--kv-tokens", "10"], "kv_tokens"),
    (["--qps", "2", "--prompt-len", "0"], "prompt_len"),
    (["--qps", "2", "--output-len", "uniform:5:2"], "output_len"),
    (["--qps", "2", "--prompt-len", "600"], "prompt_len: request 0 (generated by --prompt-len and --output-len): "
                                             "prompt_tokens 600 exceeds the KV capacity"),
    (["--qps", "2", "--arrival", "weibull"], "arrival"),
    (["--qps", "2", "--batching", "lockstep"], "batching"),
    (["--qps", "2", "--prefill-chunk", "0"], "prefill_chunk"),
    (["--qps", "2", "--levels", "2,16", "--batching", "synchronous", "--prefill-chunk", "8"], "prefill_chunk"),
    (["--qps", "2", "--cv", "0", "--arrival", "gamma"], "cv"),
    (["--qps", "2", "--slo-ttft-ms", "-5"], "slo_ttft_ms"),
    (["--qps", "2", "--temperature", "nan"], "temperature"),
    (["--qps", "2", "--levels", "2,17"], "levels"),
    ([], "qps"),
]
BAD_TRACES = [
    ([json.dumps({"arrival_s": 1, "prompt_tokens": 5, "max_new_tokens": 3}),
      json.dumps({"arrival_s": 0.5, "prompt_tokens": 5, "max_new_tokens": 3})], "line 2"),
    ([json.dumps({"arrival_s": 0, "prompt_tokens": 0, "max_new_tokens": 3})], "line 1"),
    ([json.dumps({"arrival_s": 0, "prompt_tokens": 5, "max_new_tokens": 0})], "max_new_tokens"),
    ([json.dumps({"arrival_s": 0, "prompt_tokens": 5, "max_new_tokens": 3}), "{oops"], "line 2"),
    ([json.dumps({"arrival_s": 0, "prompt_tokens": 300, "max_new_tokens": 300})], "line 1"),
    ([json.dumps({"arrival_s": 0, "prompt_tokens": [1, 999], "max_new_tokens": 3})], "prompt_tokens"),
]


def test_cli_says_a_plan_batch_is_not_read(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"levels": [2, 16], "propose": 2, "batch": 8}))
    assert main(["serve", "--plan", str(plan), "--qps", "100", "--requests", "2", "--prompt-len", "8", "--output-len",
                 "4", "--no-warmup", "--max-batch", "4", "--clock", "cpu", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["requests"] and "the plan's batch 8 is not read" in out.err


@pytest.mark.parametrize("args,field", BAD, ids=[" ".join(a) or "none" for a, _ in BAD])
def test_cli_bad_input(tmp_path, capsys, args, field):
    out = tmp_path / "o.json"
    rc = main(["serve", *args, "--requests" if "--requests" not in args else "--seed", "4" if "--requests" not in args else "0",
               "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and field in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("lines,field", BAD_TRACES, ids=range(len(BAD_TRACES)))
def test_cli_bad_trace(tmp_path, capsys, lines, field):
    out = tmp_path / "o.json"
    assert main(["serve", "--trace", write(tmp_path / "t.jsonl", lines), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and field in err
    assert not out.exists()


def test_cli_generated_traffic(capsys):
    assert main(["serve", "--qps", "50", "--requests", "4", "--prompt-len", "uniform:5:20", "--output-len", "6",
                 "--levels", "1,3,16", "--propose", "2", "--window", "2", "--max-batch", "3", "--seed", "2",
                 "--check", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["identical_to_autoregressive"] is True and d["family"] == "3_level" and d["batching"] == "ragged"
    assert len(d["requests"]) == 4 and all(5 <= r["prompt_tokens"] <= 20 for r in d["requests"])
    assert d["source"]["qps"] == 50 and d["summary"]["output_tokens"] == 24


def test_served_sampling_ragged_equals_each_request_alone(tiny):
    """Request i samples with seed + i; under `ragged` its draws follow its batch-1 schedule."""
    from hispec_exec import decode

    arrivals, prompts, news = workload(n=5, seed=8)
    plan = Plan(levels=[1, 3, 8], propose=2, windows=[3])
    res = run(tiny, plan, arrivals, prompts, news, ServeLimits(max_batch=3), mode="sampling", seed=40)
    for i, (p, n, toks) in enumerate(zip(prompts, news, res["tokens"])):
        assert toks == decode(tiny, plan, p, n, mode="sampling", seed=40 + i).tokens


def test_serve_takes_the_batch_plans_optimize_writes(tmp_path, capsys):
    """A plan of batch > 1 (optimize --batch 4 --out) is a serving plan: serve runs it (it
    refused it with decode's one-sequence message), and run still says to use serve."""
    plan = tmp_path / "b4.json"
    plan.write_text(json.dumps({"levels": [2, 16], "propose": 2, "batch": 4}))
    trace = write(tmp_path / "t.jsonl", [json.dumps({"arrival_s": 0.0, "prompt_tokens": 8, "max_new_tokens": 4})
                                         for _ in range(2)])
    assert main(["serve", "--plan", str(plan), "--trace", trace, "--no-warmup", "--json"]) == 0, capsys.readouterr().err
    assert [r["output_tokens"] for r in json.loads(capsys.readouterr().out)["requests"]] == [4, 4]
    assert main(["run", "--plan", str(plan), "--prompts", "1", "--max-new-tokens", "4"]) == 2
    assert "hispec-exec serve" in capsys.readouterr().err
