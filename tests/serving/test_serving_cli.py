"""`hispec-sim serve` and `hispec-sim capacity`: golden cases and bad input."""
import json

import pytest

from hispec_sim import schema
from hispec_sim.cli import main
from hispec_sim.synthetic import synthetic_profile


@pytest.fixture(scope="module")
def prof(tmp_path_factory):
    p = synthetic_profile(16, 0.5, 0.75, head_ms=0.2, overhead_ms=0.3, name="serve_test")
    t = p.latency[0].model_copy(update={"tokens": [1, 64, 4096], "layer_ms": [[0.5, 0.5], [0.8, 0.8], [20.0, 20.0]],
                                        "head_ms": [0.2, 0.3, 5.0]})
    path = tmp_path_factory.mktemp("prof") / "serve_test.json"
    schema.save_profile(p.model_copy(update={"latency": [t]}), path)
    return str(path)


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_serve_says_a_plan_batch_is_not_read(prof, capsys, tmp_path):
    """A lockstep batch (optimize --batch 8 --out) is not a serving parameter: said, not ignored."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"levels": [2, 16], "propose": 2, "batch": 8}))
    assert main(["serve", "--profile", prof, "--plan", str(plan), "--qps", "5", "--requests", "10", "--seeds", "1",
                 "--max-batch", "4", "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["limits"]["max_batch"] == 4
    assert "note: the plan's batch 8 is not read: serving batches up to --max-batch (4)" in out.err


def test_serve_json_golden(prof, capsys):
    argv = ["serve", "--profile", prof, "--levels", "2,6,16", "--propose", "2", "--window", "3", "--qps", "40",
            "--requests", "80", "--seeds", "2", "--prompt-len", "uniform:8:64", "--output-len", "uniform:4:48",
            "--max-batch", "8", "--slo-ttft-ms", "100", "--slo-tbt-ms", "10", "--json"]
    a = _json(capsys, argv)
    b = _json(capsys, argv)
    assert a == b  # seeded
    m = a["mean_over_seeds"]
    for key in ("ttft_ms", "tbt_ms", "tpot_ms", "e2e_ms", "queue_ms"):  # every statistic of a seed's summary
        assert set(m[key]) == {"mean", "p50", "p90", "p99"} == set(a["per_seed"][0][key]), key
    assert len(m["ttft_ms"]["p99"]["ci95"]) == 2
    assert m["ttft_ms"]["p50"]["mean"] <= m["ttft_ms"]["p99"]["mean"]
    assert len(a["per_seed"]) == 2 and a["per_seed"][0]["requests"] == 80
    assert 0 <= m["slo_attained"]["mean"] <= 1
    assert a["describe"] == "[2,6,16] propose=2 window=3" and a["batching"] == "ragged"
    one_seed = [x if x != "2" or argv[i - 1] != "--seeds" else "1" for i, x in enumerate(argv)]  # a flag is given once
    s = _json(capsys, one_seed[:-1] + ["--batching", "synchronous", "--json", "--per-request"])
    assert s["batching"] == "synchronous" and len(s["requests"]) == 80
    assert main(argv[:-1]) == 0
    out = capsys.readouterr().out
    assert "TTFT (ms)" in out and "throughput (tokens/s)" in out


def test_serve_trace(prof, capsys, tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in [
        {"arrival_s": 0.0, "prompt_tokens": 20, "max_new_tokens": 5},
        {"arrival_s": 0.001, "prompt": "def f(x):", "max_new_tokens": 3}]) + "\n")
    a = _json(capsys, ["serve", "--profile", prof, "--levels", "16", "--trace", str(f), "--seeds", "1", "--json",
                       "--per-request"])
    r = a["requests"]
    assert [x["output_tokens"] for x in r] == [5, 3] and r[1]["prompt_tokens"] == 9  # byte length of the text
    # the second arrives during the first iteration (prefill + step) and is admitted when it ends
    assert r[0]["queue_ms"] == 0 and r[1]["queue_ms"] == pytest.approx(r[0]["ttft_ms"] - 1.0)


def test_a_text_prompt_needs_a_byte_level_model(capsys, tmp_path):
    """A text prompt counts its bytes as tokens only for byte-level models; for a model with a
    tokenizer (Llama-2-70B's 32,000 tokens) it is refused, not priced at ~4x its length
    (twenty-first fuzz round)."""
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps({"arrival_s": 0.0, "prompt": "def f(x):", "max_new_tokens": 3}) + "\n")
    assert main(["serve", "--profile", "a100_llama70b", "--levels", "80", "--trace", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trace: request 0 (line 1): prompt: a text prompt's length in tokens needs the tokenizer" in err
    assert "give prompt_tokens" in err
    r = _json(capsys, ["serve", "--profile", "cpu_hispec_tiny", "--levels", "16", "--trace", str(f), "--seeds", "1",
                       "--json", "--per-request"])["requests"]
    assert r[0]["prompt_tokens"] == 9


def test_capacity_golden(prof, capsys):
    argv = ["capacity", "--profile", prof, "--qps", "100", "--slo-ttft-ms", "200", "--slo-tbt-ms", "25",
            "--requests", "60", "--seeds", "2", "--prompt-len", "uniform:8:64", "--output-len", "uniform:4:48",
            "--max-batch", "8", "--max-propose", "4", "--max-window", "4", "--gpu-hour-usd", "3", "--batching", "ragged",
            "--json"]
    a = _json(capsys, argv)
    fams = a["families"]
    assert set(fams) == {"autoregressive", "single_level", "hierarchical"}
    ar = fams["autoregressive"]
    assert ar["max_qps_per_replica"] > 0 and ar["replicas"] * ar["max_qps_per_replica"] >= 100
    assert ar["gpus"] == ar["replicas"] * 1
    assert ar["usd_per_million_tokens"] == pytest.approx(ar["gpus"] * 3 / (100 * a["mean_output_tokens"] * 3600) * 1e6)
    lo, hi = ar["bisection_bracket"]
    assert lo <= hi and ar["max_qps_ci95"][0] <= ar["max_qps_per_replica"] <= ar["max_qps_ci95"][1]
    assert a["best_family"] in fams and len(a["by_load"]) == 2
    b = _json(capsys, argv)
    a.pop("seconds"), b.pop("seconds")
    assert a == b  # seeded


def test_capacity_with_chunked_prefill_searches_ragged_plans(prof, capsys):
    """--prefill-chunk: every load is served with chunked prefill (said in the answer),
    `auto` searches ragged plans only, `synchronous` is refused in one line."""
    argv = ["capacity", "--profile", prof, "--qps", "20", "--slo-ttft-ms", "400", "--slo-tbt-ms", "40",
            "--requests", "40", "--seeds", "1", "--prompt-len", "uniform:100:400", "--output-len", "uniform:4:32",
            "--max-batch", "8", "--max-propose", "3", "--max-window", "3", "--prefill-chunk", "64"]
    a = _json(capsys, argv + ["--json"])
    assert a["prefill_chunk"] == 64 and a["batching"] == "ragged"
    assert all(schema.Plan.model_validate(e["plan"]).batching == "ragged" for e in a["families"].values())
    assert main(argv) == 0
    assert "prefill in chunks of <= 64 tokens" in capsys.readouterr().out
    assert main(argv + ["--batching", "synchronous"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hispec-sim: error: prefill_chunk: chunked prefill is built for ragged")


def test_capacity_kv_tokens_bounds_the_plans_searched(prof, capsys):
    """--kv-tokens refuses only what autoregressive decoding cannot hold (it once added a
    fixed 64 tokens: refused 60 where every plan searched needed <= 56, accepted values the
    search then refused with a bound that moved), and keeps the search to plans whose
    longest request fits with its speculation (round 24, D1)."""
    base = ["capacity", "--profile", prof, "--qps", "5", "--slo-ttft-ms", "1000", "--slo-tbt-ms", "200",
            "--prompt-len", "32", "--output-len", "16", "--requests", "10", "--seeds", "1", "--max-batch", "4"]
    assert main(base + ["--kv-tokens", "48"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "kv_tokens: 48" in err and "allowed: >= 49" in err
    for kv, wide in ((49, "8"), (52, "8"), (54, "8"), (60, "2")):
        a = _json(capsys, base + ["--kv-tokens", str(kv), "--max-propose", wide, "--max-window", wide, "--json"])
        assert a["max_in_flight"] == kv - 48
        for fam, e in a["families"].items():
            assert schema.Plan.model_validate(e["plan"]).max_overshoot <= kv - 48, (fam, e["describe"])
        # the least each family holds in flight: [a,L] propose=1 4, [a,b,L] propose=1 window=1 6 (those that
        # fit are found however far down the unbounded ranking they lie: the review of round 24)
        assert ("single_level" in a["families"]) == (kv - 48 >= 4)
        assert ("hierarchical" in a["families"]) == (kv - 48 >= 6)
    assert main(base + ["--kv-tokens", "52", "--max-propose", "2", "--max-window", "2"]) == 0
    assert ("with at most 4 tokens in flight: only plans that speculate within that are searched (no hierarchical "
            "plan fits)") in capsys.readouterr().out
    assert main(base + ["--kv-tokens", "49", "--max-propose", "2", "--max-window", "2"]) == 0  # round 25, M9
    assert ("with at most 1 token in flight: only plans that speculate within that are searched (no single-level "
            "plan and no hierarchical plan fits)") in capsys.readouterr().out


def test_capacity_no_plan_meets(prof, capsys):
    rc = main(["capacity", "--profile", prof, "--qps", "1", "--slo-ttft-ms", "1", "--slo-tbt-ms", "1",
               "--requests", "20", "--seeds", "1", "--max-batch", "4", "--max-propose", "2", "--max-window", "2"])
    err = capsys.readouterr()
    assert rc == 2 and err.out == ""
    assert err.err.startswith("hispec-sim: error: slo: no plan meets") and "closest:" in err.err
    assert len(err.err.strip().splitlines()) == 1


@pytest.mark.parametrize("slo_ttft,rc", [(3000, 0), (1, 2)])
def test_capacity_of_one_token_requests(prof, capsys, slo_ttft, rc):
    """Every request generates one token: no gap between tokens, so the TBT SLO holds
    trivially and p99 TBT is shown as '-' (it crashed on None: the sixth fuzz round)."""
    argv = ["capacity", "--profile", prof, "--qps", "2", "--slo-ttft-ms", str(slo_ttft), "--slo-tbt-ms", "50",
            "--output-len", "1", "--requests", "20", "--seeds", "1", "--max-batch", "4", "--max-propose", "2",
            "--max-window", "2"]
    assert main(argv) == rc
    out = capsys.readouterr()
    if rc == 0:
        rows = [line for line in out.out.splitlines() if line.startswith(("autoregressive", "single_level"))]
        assert rows and all(line.split()[-1] == "-" for line in rows)
        assert all(f["at_max_qps"]["tbt_p99_ms"] is None for f in _json(capsys, argv + ["--json"])["families"].values())
    else:
        assert out.err.count("\n") == 1 and "p99 TBT -)" in out.err


def test_capacity_stops_at_the_saturation_load_and_says_so(tmp_path, capsys):
    """A short run can meet generous SLOs above what a replica sustains (its queue has no time
    to build): the load search stops at the saturation load (a full batch's analytic
    throughput) and reports it as an upper bound (it went on to 1.28x it: the eighth fuzz round)."""
    schema.save_profile(synthetic_profile(16, 1.0, 1.0), tmp_path / "one.json")
    argv = ["capacity", "--profile", str(tmp_path / "one.json"), "--qps", "1000", "--slo-ttft-ms", "2000",
            "--slo-tbt-ms", "100", "--requests", "60", "--seeds", "1", "--max-batch", "8", "--max-propose", "2",
            "--max-window", "2"]
    fams = _json(capsys, argv + ["--json"])["families"]
    capped = [e for e in fams.values() if e["capped_at_saturation"]]
    assert capped and all(e["max_qps_per_replica"] == pytest.approx(e["saturation_qps"]) for e in capped)
    assert all(e["max_qps_per_replica"] <= e["saturation_qps"] * (1 + 1e-12) for e in fams.values())
    assert all(e["seeds_capped"] == 1 for e in capped)
    assert all(e["max_qps_ci95"] is None for e in fams.values())  # one seed: no interval (round 22, D3: zero width)
    assert main(argv) == 0
    assert "the run of 60 requests met the SLOs at the saturation load" in capsys.readouterr().out
    # two seeds both at the cap: an upper bound, no interval (it printed [cap, cap]: round 24, M6)
    two = argv[:argv.index("--seeds") + 1] + ["2"] + argv[argv.index("--seeds") + 2:]
    fams = _json(capsys, two + ["--json"])["families"]
    both = [e for e in fams.values() if e["seeds_capped"] == 2]
    assert both and all(e["max_qps_ci95"] is None for e in both)
    assert main(two) == 0
    assert "(cap, 2 of 2 seeds)" in capsys.readouterr().out


@pytest.mark.parametrize("layers", [1, 2])
def test_capacity_of_a_model_too_shallow_for_a_family(tmp_path, capsys, layers):
    """A model of one or two exits has no 3-level chain (and one exit no draft at all): the
    families it has are planned, the others left out (it crashed on the empty family)."""
    schema.save_profile(synthetic_profile(layers, 1.0, 0.5), tmp_path / "p.json")
    rc = main(["capacity", "--profile", str(tmp_path / "p.json"), "--qps", "1", "--slo-ttft-ms", "1000",
               "--slo-tbt-ms", "100", "--requests", "20", "--seeds", "1", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "3_level" not in json.loads(out.out)["families"]


@pytest.mark.parametrize("extra,field", [
    (["--qps", "0"], "qps"),
    (["--qps", "-3"], "qps"),
    (["--qps", "2", "--max-batch", "0"], "max_batch"),
    (["--qps", "2", "--kv-tokens", "50"], "kv_tokens"),
    (["--qps", "2", "--prompt-len", "zipf:3"], "prompt_len"),
    (["--qps", "2", "--output-len", "lognormal:-1:0.5"], "output_len"),
    (["--qps", "2", "--slo-ttft-ms", "0"], "slo_ttft_ms"),
    (["--qps", "2", "--slo-ttft-ms", "1e300"], "slo_ttft_ms"),
    (["--qps", "2", "--slo-tbt-ms", "-5"], "slo_tbt_ms"),
    (["--qps", "1e-300"], "qps"),
    (["--qps", "2", "--seed", str(2**32)], "seed"),
    (["--qps", "2", "--batching", "lockstep"], "batching"),
    (["--qps", "2", "--arrival", "weibull"], "arrival"),
    (["--qps", "2", "--levels", "3,16", "--propose", "0"], "propose"),
    (["--qps", "2", "--levels", "1,2,4,16", "--propose", "64", "--window", "256,256"], "plan"),  # ~1e8 forwards
    ([], "qps"),
])
def test_serve_bad_input(prof, capsys, tmp_path, extra, field):
    argv = ["serve", "--profile", prof] + (["--levels", "16"] if "--levels" not in extra else []) + extra
    assert main(argv) == 2
    err = capsys.readouterr()
    assert err.out == "" and err.err.startswith(f"hispec-sim: error: {field}") and len(err.err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_bad_trace_and_capacity_input(prof, capsys, tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"arrival_s": 2, "prompt_tokens": 4, "max_new_tokens": 3}\n{"arrival_s": 1, "prompt_tokens": 4, "max_new_tokens": 3}\n')
    assert main(["serve", "--profile", prof, "--levels", "16", "--trace", str(f)]) == 2
    assert "trace: line 2: arrival_s" in capsys.readouterr().err
    f.write_text('{"arrival_s": 0, "prompt_tokens": 99999999999, "max_new_tokens": 3}\n')
    assert main(["serve", "--profile", prof, "--levels", "16", "--trace", str(f)]) == 2
    assert "trace: line 1: prompt_tokens: a prompt length must be in [1, 1000000]" in capsys.readouterr().err
    for extra, field in ((["--qps", "0"], "qps"), (["--qps", "5", "--gpu-hour-usd", "-1"], "gpu_hour_usd"),
                         (["--qps", "5", "--gpu-hour-usd", "0"], "gpu_hour_usd"), (["--qps", "5", "--seed", str(2**32)], "seed"),
                         (["--qps", "5", "--kv-tokens", "10"], "kv_tokens")):
        argv = ["capacity", "--profile", prof, "--slo-ttft-ms", "100", "--slo-tbt-ms", "10"] + extra
        assert main(argv) == 2
        assert capsys.readouterr().err.startswith(f"hispec-sim: error: {field}")
    # the longest request the lengths allow, not the longest of a sample (docs check 22)
    assert main(["capacity", "--profile", prof, "--slo-ttft-ms", "100", "--slo-tbt-ms", "10", "--qps", "5",
                 "--prompt-len", "uniform:10:20", "--output-len", "uniform:5:8", "--kv-tokens", "28"]) == 2
    assert "(up to 28 tokens + 1 in flight for autoregressive decoding); allowed: >= 29" in capsys.readouterr().err


def test_capacity_candidates_cover_both_policies(prof):
    from hispec_sim.capacity import candidates
    from hispec_sim.evaluate import Setting

    fams = candidates(Setting(schema.load_profile(prof)), 8, "auto", 25.0, 4, 4)
    assert [p.levels for p in fams["autoregressive"]] == [[16]]
    for fam in ("single_level", "hierarchical"):
        assert {p.batching for p in fams[fam]} == {"ragged", "synchronous"}
        assert {len(p.levels) for p in fams[fam]} == {2 if fam == "single_level" else 3}


@pytest.mark.parametrize("in_flight", [4, 6, 7])
def test_capacity_candidates_within_tokens_in_flight_are_found_far_down_the_ranking(in_flight):
    """On an 80-layer model the 400 best plans unbounded are all wider than 6 tokens in flight:
    the bound is applied before the ranking, so the plans that fit are candidates."""
    from hispec_sim.capacity import candidates
    from hispec_sim.evaluate import Setting

    fams = candidates(Setting(schema.load_profile("a100_llama70b")), 64, "ragged", 1e9, 8, 16, in_flight)
    assert all(p.max_overshoot <= in_flight for ps in fams.values() for p in ps)
    assert bool(fams["single_level"]) and bool(fams["hierarchical"]) == (in_flight >= 6)


def test_defaults_scaled_to_the_model_context(capsys):
    """The default lengths (up to 2,048 + 1,024 tokens) on the 512-token shipped model: scaled
    to fit, said on stderr; a given length is kept and the other fitted around it."""
    argv = ["serve", "--profile", "cpu_hispec_tiny", "--levels", "2,16", "--propose", "3", "--qps", "5", "--requests",
            "200", "--seeds", "1", "--json", "--per-request"]
    assert main(argv) == 0
    res = capsys.readouterr()
    out, err = json.loads(res.out), res.err
    assert "--prompt-len defaults to lognormal:42:0.8:max=337" in err and "--output-len defaults to" in err
    most = max(r["prompt_tokens"] + r["output_tokens"] for r in out["requests"]) + 6  # + speculation (propose 3)
    assert most <= 512
    assert out["traffic"]["prompt_len"]["max"] + out["traffic"]["output_len"]["max"] + 6 <= 512
    assert main(argv + ["--prompt-len", "300"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["traffic"]["prompt_len"]["value"] == 300 and out["traffic"]["output_len"]["max"] == 512 - 300 - 6


@pytest.mark.parametrize("extra", [["--quick"], ["--sim-seeds=1"], ["--loads", "9"]])
def test_serving_study_refuses_settings_it_would_not_read(extra):
    """--render and --resimulate take every setting from results.json: another flag is refused
    before anything is written, not recorded as if it ran (docs check 22)."""
    import subprocess
    import sys

    from factories import REPO

    study = REPO / "studies" / "serving"
    before = {p.name: p.stat().st_mtime_ns for p in study.iterdir()}
    r = subprocess.run([sys.executable, str(study / "run_serving.py"), "--resimulate", *extra],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr == (f"run_serving.py: {extra[0].split('=')[0]}: not read with --render or "
                                              "--resimulate (they reuse results.json's settings); allowed: nothing else\n")
    assert {p.name: p.stat().st_mtime_ns for p in study.iterdir()} == before


def test_a_trace_path_with_control_characters_is_shown_escaped(prof, tmp_path, capsys):
    """A file name's ESC or newline never reaches the terminal raw (round 24, M8)."""
    f = tmp_path / "t\x1b[31mred\nx.jsonl"
    f.write_text('{"arrival_s": 0, "prompt_tokens": 4, "max_new_tokens": 4}\n')
    assert main(["serve", "--profile", prof, "--levels", "16", "--trace", str(f), "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "traffic: trace '" in out and "\\x1b[31mred\\nx.jsonl'" in out
    f.write_text("")
    assert main(["serve", "--profile", prof, "--levels", "16", "--trace", str(f), "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "holds no request" in err
    d = tmp_path / "dir\x1b[31mred"  # a folder (or FIFO) of that name: refused without the raw ESC either
    d.mkdir()
    assert main(["serve", "--profile", prof, "--levels", "16", "--trace", str(d), "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "is a folder" in err


def test_capacity_interval_stays_within_what_a_replica_holds(capsys):
    """Two bursty seeds far apart (24 and 260 req/s) gave a t-interval up to 1,647 req/s
    beside a saturation cap of 275 that no search goes above: clipped to [0, cap] (fuzz round
    25, M3). Three seeds here: bursty enough that intervals reach the cap."""
    a = _json(capsys, ["capacity", "--profile", "cpu_hispec_tiny", "--qps", "3", "--slo-ttft-ms", "300",
                       "--slo-tbt-ms", "30", "--requests", "30", "--seeds", "3", "--arrival", "gamma", "--cv", "4",
                       "--prompt-len", "16", "--output-len", "16", "--max-propose", "2", "--max-window", "2", "--json"])
    clipped = 0
    for e in a["families"].values():
        if e["max_qps_ci95"] is None:  # one seed reached the cap: its answer is a bound, no interval
            continue
        lo, hi = e["max_qps_ci95"]
        assert 0.0 <= lo <= e["max_qps_per_replica"] <= hi <= e["saturation_qps"]
        clipped += hi == e["saturation_qps"]
    assert clipped  # the case the clip is for


def test_capacity_figures_are_a_seed_that_held_a_load_and_loads_print_alike(capsys):
    """A review (2026-12-03): a seed missing the SLOs even at the idle load counts as 0 in the
    mean, and its idle p99 TBT (102 ms against 100) was printed beside the mean capacity; now
    the worst seed that held a load gives the figures, and a note says what the mean holds.
    The by-load table's loads are the capacities unrounded (0.3785 printed 0.379 beside 0.378)."""
    argv = ["capacity", "--profile", "a100_llama70b", "--qps", "5", "--slo-ttft-ms", "500", "--slo-tbt-ms", "100",
            "--prompt-len", "empirical:10,20", "--output-len", "empirical:1,2,3", "--requests", "50"]
    res = _json(capsys, argv + ["--json"])
    split = [e for e in res["families"].values() if 0 < e["seeds_failing_idle"] < len(e["per_seed_bracket"])]
    assert split  # else the case below tests nothing
    for e in split:
        assert e["max_qps_per_replica"] > 0
        assert e["at_max_qps"]["ttft_p99_ms"] <= 500 and e["at_max_qps"]["tbt_p99_ms"] <= 100
    assert res["by_load"][-1]["qps"] == res["families"][res["best_family"]]["max_qps_per_replica"]
    assert main(argv) == 0
    assert "seeds' runs missed the SLOs even at a nearly idle load: each counts as 0" in capsys.readouterr().out


def test_serve_review_batching_kv_tokens_and_figures_some_seeds_lack(tmp_path, capsys):
    """A review (2026-12-03): (1) --batching=ragged (with '=') was dropped for a plan file;
    (2) --kv-tokens was checked against seed 0's draws, so the "allowed" it named failed on
    the next seed: now against the longest request the lengths allow, before any run;
    (3) a figure one seed lacks (no TBT where every request emitted one token) was left out
    of the mean over seeds: now over the seeds that have it, with their count."""
    ps = tmp_path / "ps.json"
    ps.write_text('{"levels": [2, 16], "propose": 3, "batching": "synchronous"}')
    base = ["serve", "--profile", "cpu_hispec_tiny", "--plan", str(ps), "--qps", "8", "--requests", "5", "--seeds", "1", "--json"]
    assert _json(capsys, base + ["--batching=ragged"])["batching"] == "ragged"
    assert _json(capsys, base)["batching"] == "synchronous"
    assert main(["serve", "--profile", "a100_llama70b", "--levels", "23,80", "--propose", "3", "--qps", "2",
                 "--kv-tokens", "2610"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "prompt up to 2048 + output up to 1024 + speculation 6); allowed: >= 3078" in err
    out = _json(capsys, ["serve", "--profile", "a100_llama70b", "--levels", "80", "--qps", "1", "--requests", "1",
                         "--output-len", "empirical:1,2", "--seeds", "2", "--seed", "3", "--json"])
    tbts = [s["tbt_ms"]["p50"] for s in out["per_seed"]]
    assert sum(t is None for t in tbts) == 1  # else the case tests nothing
    got = out["mean_over_seeds"]["tbt_ms"]["p50"]
    assert got["mean"] == next(t for t in tbts if t is not None) and got["seeds"] == 1 and got["ci95"] is None
    assert "seeds" not in out["mean_over_seeds"]["ttft_ms"]["p50"]
