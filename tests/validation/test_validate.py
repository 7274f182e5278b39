"""Close the loop on a small random model: measure a profile, predict, run, compare."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hispec_exec.measure import calibration_plans, measure_profile
from hispec_exec.model import ModelArgs, Transformer
from hispec_exec.data import heldout_prompts
from hispec_sim.cli import main
from hispec_sim.cli_measure import noise_line, state_line
from hispec_sim.evaluate import Setting
from hispec_sim.schema import Plan, save_profile
from hispec_exec.checkpoint import weights_digest
from hispec_sim.validate import check_model_matches, draw_plans, machine_drift, timing_noise, validate, verdict


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = Transformer(ModelArgs(n_layers=8, dim=48, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=256)).eval()
    profile = measure_profile(model, "rand8", "cpu", "heldout", n_prompts=3, prompt_len=32, max_new_tokens=24,
                              repeats=3, tokens=SMALL_TOKENS, calibration_rounds=2, attempts=1, command="pytest")
    return model, profile


SMALL_TOKENS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256]


def test_measured_profile_is_complete(small):
    model, profile = small
    table = profile.table()
    assert profile.model.num_layers == 8 and table.stack == "hispec_exec"
    assert all(v > 0 for row in table.layer_ms for v in row) and all(v > 0 for v in table.head_ms)
    # the prompt, the middle and the end of the decoding, and a long context for serving:
    # min(capacity - 64, 4 x (prompt + new tokens)) = min(192, 224)
    assert table.tokens == SMALL_TOKENS and table.contexts == [0, 32, 44, 56, 192]
    layer = np.array(table.layer_ms)  # monotone: more tokens or more context never take less time
    assert (np.diff(layer, axis=0) >= 0).all() and (np.diff(layer, axis=1) >= 0).all()
    assert (np.diff(table.head_ms) >= 0).all()
    assert "(256, 32)" in table.notes["extrapolated"]  # 256 tokens after 32 cached exceed the capacity 256
    se = json.loads(table.notes["overheads_se_ms"])
    assert set(se) == {"overhead_ms", "layer_overhead_ms", "verify_overhead_ms", "row_overhead_ms"}
    assert all(v >= 0 for v in se.values()) and table.row_overhead_ms >= 0
    # a per-layer credit at most half the smallest layer (the table timed slower than the decode loop)
    assert table.layer_overhead_ms >= -0.5 * layer.min() - 1e-12
    meas = profile.provenance["measurement"]
    assert meas["noise_floor"] >= 0 and meas["overhead_ms_se"] == se["overhead_ms"]
    lo, hi = meas["block_speed_range"]  # each calibration block's speed, median 1
    assert 0 < lo <= 1 <= hi and "one speed factor per block" in table.notes["calibration"]
    check = meas["self_check"]  # the cost model's autoregressive time against the calibration runs'
    assert check["autoregressive_error"] == pytest.approx(
        check["autoregressive_ms_per_token_predicted"] / check["autoregressive_ms_per_token_measured"] - 1, abs=1e-5)
    assert check["forward_fixed_ms_microbenchmark"] is not None and len(check["fit_error_by_plan"]) == len(calibration_plans(8))
    speedups = meas["calibration"]["speedups"]  # what validate re-measures to see the machine's state move
    assert list(speedups) == [p.describe() for p in calibration_plans(8)] and speedups["[8]"] == 1.0
    assert all(v > 0 for v in speedups.values())
    assert table.notes["self_check"].startswith("self-check: autoregressive")
    fp = profile.provenance["machine"]
    assert {"cpu_model", "isa", "torch", "blas", "onednn", "threads", "logical_cpus"} <= set(fp) and fp["threads"] == 1
    acc = profile.workload()
    assert acc.joint == "traces" and len(acc.traces) == 3 * 24 and acc.trace_starts == [0, 24, 48]
    assert all(acc.agreement[i][i] == 1.0 for i in range(8))
    # per-prompt agreement: one matrix per prompt, weighted by positions, pooling to the workload's matrix
    sp = acc.spread
    assert sp.family == "empirical" and len(sp.per_request) == 3 and sp.weights == [24.0, 24.0, 24.0]
    traces = np.array(acc.traces)
    for k, m in enumerate(sp.per_request):
        block = traces[24 * k:24 * (k + 1)]
        assert np.allclose(m, (block[:, :, None] == block[:, None, :]).mean(0), atol=1e-6)
    assert np.allclose(np.average(sp.per_request, axis=0, weights=sp.weights), acc.agreement, atol=1e-5)
    assert [row[-1] for row in acc.traces[:24]]  # the full model's own trajectory is the last column
    for src in (table.source, acc.source, profile.hardware.source):
        assert src.kind == "measured" and "torch" in src.detail


def test_validate_reports_predicted_and_measured(small):
    model, profile = small
    setting = Setting(profile)
    plans = draw_plans(setting, 7, seed=7)
    assert {p.depth for p in plans} == {1, 2, 3, 4} and len(set(map(str, plans))) == 7
    assert Plan(levels=[8]) in plans[:4]
    assert draw_plans(setting, 7, seed=7) == plans
    out = validate(setting, plans[:5], model, heldout_prompts(1, 32, 1), 16, seed=0, rounds=2)
    assert len(out["plans"]) == 5 and out["rounds"] == 2
    for row in out["plans"]:
        assert row["measured_tokens_per_second"] > 0 and row["predicted_tokens_per_second"] > 0
        assert row["relative_error"] == pytest.approx(
            (row["predicted_tokens_per_second"] - row["measured_tokens_per_second"]) / row["measured_tokens_per_second"])
        assert row["speedup_error"] == pytest.approx(row["predicted_speedup"] / row["measured_speedup"] - 1)
        assert len(row["measured_speedup_by_round"]) == 2
        assert row["measured_speedup"] == pytest.approx(float(np.median(row["measured_speedup_by_round"])))
    ar = next(r for r in out["plans"] if r["plan"]["levels"] == [8])
    assert ar["predicted_speedup"] == pytest.approx(1.0)
    assert all(isinstance(r["predicted_acceptance_per_level"], list) for r in out["plans"])  # null: adaptive plans only
    assert out["max_abs_speedup_error"] >= out["median_abs_speedup_error"] >= 0
    assert out["max_abs_relative_error"] >= out["median_abs_relative_error"] >= 0
    drift = out["machine_drift"]  # the profile's calibration runs, re-run now
    assert drift["then_tokens_per_second"] == profile.provenance["measurement"]["calibration"]["autoregressive_tokens_per_second"]
    assert drift["drift"] == pytest.approx(abs(drift["now_tokens_per_second"] / drift["then_tokens_per_second"] - 1))
    assert out["noise_floor_absolute"] == max(out["noise_floor"], out["noise_floor_profile"], drift["drift"])
    assert len(out["noise_floor_slots"]) == 4  # one prompt: the 4 interior places of 6 autoregressive runs
    tn = out["timing_noise"]  # two rounds: the plans' own timing noise raises the floors
    # approx: numpy's SIMD sums may differ in the last bit between array layouts (AVX-512 vs AVX2)
    assert tn == pytest.approx(timing_noise([r["measured_speedup_by_round"] for r in out["plans"]], seed=0), rel=1e-12)
    # the machine's state: the first two speculative calibration plans, re-run beside autoregressive on their
    # prompts, against the speed-ups the profile recorded; what they moved raises the floors
    su, then = drift["speedups"], profile.provenance["measurement"]["calibration"]["speedups"]
    assert list(su) == [p.describe() for p in calibration_plans(8, spread=False)[1:]]
    for d, v in su.items():
        assert v["then"] == then[d] and v["now"] > 0 and v["change"] == pytest.approx(v["now"] / v["then"] - 1)
    moved = [abs(v["change"]) for v in su.values()]
    assert drift["speedup_drift"] == max(moved)
    assert out["noise_floor_plan"] == max(out["noise_floor"], tn["plan"], max(moved))
    assert out["noise_floor_median"] == max(out["noise_floor"], tn["median"], float(np.median(moved)))
    assert out["noise_floor_worst"] == max(out["noise_floor"], tn["worst"], max(moved))
    assert state_line(out).startswith("the machine's state: the profile's calibration plans")
    assert out["plans_within_noise_floor"] == sum(abs(r["speedup_error"]) <= out["noise_floor_plan"] for r in out["plans"])
    spread = [abs(a - b) / np.median([a, b]) for a, b in (r["measured_speedup_by_round"] for r in out["plans"])]
    assert out["round_spread"] == pytest.approx({"median": float(np.median(spread)), "worst": max(spread)})
    assert f"the plans' own rounds differ by median {100 * out['round_spread']['median']:.2f} %" in noise_line(out)
    assert out["verdict"] in ("met", "within_noise", "not_met") and out["verdict_line"]
    rep = [abs(r["speedup_error_replay"]) for r in out["plans"]]  # the profile has traces: every plan replayed
    assert out["max_abs_speedup_error_replay"] == pytest.approx(max(rep))
    assert out["verdict_replay"] == verdict(rep, out["noise_floor_median"], out["noise_floor_worst"])["status"]
    assert out["verdict"] == verdict([r["speedup_error"] for r in out["plans"]], out["noise_floor_median"],
                                     out["noise_floor_worst"])["status"]


def test_validate_predicts_an_adaptive_plan_by_the_adaptive_models(small):
    """The executor runs the thresholds, so the prediction must too: not the fixed plan's."""
    from hispec_sim.adaptive import adaptive_tokens_per_second, walked, with_thresholds
    from hispec_sim.evaluate import score

    model, profile = small
    setting = Setting(profile)
    plan = Plan(levels=[2, 8], propose=6, draft_confidence=0.7)
    out = validate(setting, [plan], model, heldout_prompts(1, 32, 1), 12, seed=0)
    row = out["plans"][0]
    adaptive, fixed = adaptive_tokens_per_second(setting, plan)[0], score(setting, [with_thresholds(plan, None)])[0]
    assert adaptive != pytest.approx(fixed.tokens_per_second, rel=1e-3)  # the thresholds matter here
    assert row["predicted_tokens_per_second"] == pytest.approx(adaptive, rel=1e-12)
    assert row["predicted_replay_tokens_per_second"] == pytest.approx(walked(setting, plan).tokens_per_second, rel=1e-12)
    assert row["predicted_mc_tokens_per_second"] is None and row["relative_error_mc"] is None  # no i.i.d. MC of thresholds
    assert row["predicted_acceptance_per_level"] is None and row["describe"] == plan.describe()
    json.dumps(out, allow_nan=False)


def test_validate_says_where_the_error_comes_from(small):
    """On the prompts the profile was measured on, trace replay's tokens per full-model
    check are the executor's (up to each request's last check: rows past its end are
    stand-ins); the time split covers every level of every plan."""
    model, profile = small
    setting = Setting(profile)
    plans = [Plan(levels=[8]), Plan(levels=[3, 8], propose=3), Plan(levels=[2, 5, 8], propose=2, windows=[3])]
    out = validate(setting, plans, model, heldout_prompts(3, 32, 0), 24, seed=0)
    assert "round_spread" not in out and "own rounds" not in noise_line(out)  # one round: nothing to compare
    assert "plans' own timing noise is not measured (--rounds 2 measures it)" in noise_line(out)
    moved = max(abs(v["change"]) for v in out["machine_drift"]["speedups"].values())
    assert out["timing_noise"] is None and out["noise_floor_worst"] == max(out["noise_floor"], moved)
    for plan, row in zip(plans, out["plans"]):
        t = row["time_split"]
        assert set(t["levels"]) == {str(j) for j in range(1, plan.depth + 1)}
        assert all(v["vs_cost_model"] > 0 and 0 < v["share_of_wall"] <= 1 for v in t["levels"].values())
        assert sum(v["share_of_wall"] for v in t["levels"].values()) == pytest.approx(1 - t["outside_forwards"])
        assert 0 <= t["outside_forwards"] < 1 and 0 <= t["outside_forwards_autoregressive"] < 1
        measured, replayed = t["tokens_per_full_check"], row["replay_tokens_per_full_check"]
        checks = round(3 * 24 / measured) if plan.depth > 1 else 3 * 24
        last = plan.propose + sum(plan.windows) + 1  # the most one check commits
        assert abs(replayed - measured) * checks <= 3 * last, (plan, replayed, measured)
        assert row["predicted_tokens_per_full_check"] > 0
    assert out["plans"][0]["time_split"]["tokens_per_full_check"] == 1.0


def test_profile_of_another_model_is_refused(small):
    model, profile = small
    other = Transformer(ModelArgs(n_layers=6, dim=48, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=256))
    with pytest.raises(ValueError, match="profile: measured for model"):
        check_model_matches(profile, other, "rand6")
    check_model_matches(profile, model, "another-name")  # its weights, in a folder of another name (round 19, M1)
    unsigned = profile.model_copy(update={"model": profile.model.model_copy(update={"weights": None})})
    with pytest.raises(ValueError, match="profile: measured for model"):  # no digest: the name tells
        check_model_matches(unsigned, model, "another-name")
    # the same name, layers, width and vocab, other heads and FFN: another model (sixteenth fuzz round)
    a = model.args
    twin = Transformer(ModelArgs(n_layers=a.n_layers, dim=a.dim, n_heads=a.n_kv_heads, n_kv_heads=a.n_kv_heads,
                                 ffn_dim=a.ffn_dim + 2, vocab_size=a.vocab_size, max_seq_len=a.max_seq_len))
    with pytest.raises(ValueError, match="heads .* FFN"):
        check_model_matches(profile, twin, profile.model.name)
    # the same name and shape, other weights (a retrained checkpoint): the digest tells them apart
    assert profile.model.weights == weights_digest(model)
    check_model_matches(profile, model, profile.model.name)
    retrained = Transformer(model.args).eval()
    with pytest.raises(ValueError, match=r"with weights sha256:[0-9a-f]{12}\.\.\., but the model run \('rand8'\) has weights"):
        check_model_matches(profile, retrained, profile.model.name)
    # a profile that records no digest (a published one, or one measured before digests) compares the shape only
    check_model_matches(profile.model_copy(update={"model": profile.model.model_copy(update={"weights": None})}),
                        retrained, profile.model.name)


def test_validate_cli_bad_input(small, tmp_path, capsys):
    _, profile = small
    path = tmp_path / "p.json"
    save_profile(profile, path)
    for argv, field in [(["--prompts", "0"], "prompts"), (["--plans", "0"], "plans"),
                        ([], "profile: measured for model 'rand8'")]:
        code = main(["validate", "--profile", str(path), *argv])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and field in err, err
    plan = tmp_path / "deep.json"
    plan.write_text(json.dumps(Plan(levels=[4, 12]).model_dump()))
    assert main(["validate", "--profile", str(path), "--plan", str(plan)]) == 2
    assert "levels" in capsys.readouterr().err


def _doctored_shipped_profile(tmp_path, **change):
    """The shipped model's profile, its fingerprint replaced by this machine's with `change`."""
    from hispec_sim.machine import fingerprint
    from hispec_sim.schema import load_profile

    torch.set_num_threads(1)
    p = load_profile("cpu_hispec_tiny")
    prov = {**p.provenance, "machine": {**fingerprint("cpu"), **change}}
    prov.pop("measurement", None)  # no calibration runs to repeat (drift is tested on the small model): a quick test
    path = tmp_path / "doctored.json"
    save_profile(p.model_copy(update={"provenance": prov}), path)
    return path


def test_validate_refuses_a_profile_of_another_machine(tmp_path, capsys):
    path = _doctored_shipped_profile(tmp_path, cpu_model="Doctored CPU 9000", isa=["avx512f"])
    out = tmp_path / "v.json"
    small = ["--plans", "1", "--prompts", "1", "--max-new-tokens", "4"]
    assert main(["validate", "--profile", str(path), *small, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "machine:" in err and "Doctored CPU 9000" in err
    assert "--allow-other-machine" in err and not out.exists()
    assert main(["validate", "--profile", str(path), *small, "--allow-other-machine", "--out", str(out),
                 "--progress"]) == 0
    text = capsys.readouterr()
    assert "WARNING" in text.out and "cpu_model" in text.out and "noise floor" in text.out and "verdict: " in text.out
    progress = [ln for ln in text.err.splitlines() if ln.startswith("[validate ")]  # --progress: each stage and block
    assert "calibration plans" in progress[0] and "round 1/1, prompt 1/1: 3 runs done" in progress[-2]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert "not measured on this machine" in result["machine_warning"]
    # priced at the context these runs decode at (a 64-token prompt + 4 / 2), not the workload's 128
    assert result["context"] == 66 and result["max_new_tokens"] == 4


def test_machine_differences_name_each_field():
    from hispec_sim.machine import check_same_machine, differences

    here = {"device": "cpu", "cpu_model": "X", "logical_cpus": 2, "isa": ["avx2"], "torch": "2.13.0", "threads": 1,
            "blas": "mkl", "onednn": "oneDNN v3", "torch_cpu_capability": "AVX2", "hostname": "a"}
    assert differences(dict(here, hostname="b"), here) == []  # the host name is recorded, not compared
    assert differences(dict(here, threads=2, torch="2.12.0"), here) == ["torch: profile '2.12.0', this machine '2.13.0'",
                                                                        "threads: profile 2, this machine 1"]
    assert "no machine fingerprint" in differences(None, here)[0]
    assert check_same_machine(here, here, False) is None
    with pytest.raises(ValueError, match="^machine: .*cpu_model"):
        check_same_machine(dict(here, cpu_model="Y"), here, False)
    assert check_same_machine(dict(here, cpu_model="Y"), here, True).startswith("WARNING")


def test_shipped_measured_profile_matches_the_shipped_model():
    from hispec_exec import load_model
    from hispec_sim.schema import load_profile

    profile = load_profile("cpu_hispec_tiny")
    check_model_matches(profile, load_model(), "hispec-tiny")
    acc = profile.workload()
    assert acc.joint == "traces" and len(acc.traces) == 16 * 128
    assert profile.provenance["prompts"] == {"n": 16, "seed": 0, "prompt_len": 64, "max_new_tokens": 128}
    for src in (profile.table().source, acc.source, profile.hardware.source, profile.model.source):
        assert src.kind == "measured" and "torch" in src.detail
    assert {"cpu_model", "isa", "torch", "blas", "threads"} <= set(profile.provenance["machine"])
    assert len(acc.spread.per_request) == 16 and "noise_floor" in profile.provenance["measurement"]
    assert max(profile.table().tokens) == 512  # the table covers prefill up to the context


def test_forward_prices_charge_the_working_set_once():
    """validate.forward_ms charges each forward the working set its layers' history gives,
    instead of the cost model's charge by depth -- not on top of it (it did until 2026-11-29:
    the time split then put speculative forwards at x1.01-1.13 of their price). Over whole cycles, from one
    full-model forward to the next, the two charges agree."""
    from types import SimpleNamespace

    from factories import make_profile
    from hispec_exec.generate import Forward
    from hispec_sim.latency import working_set_history
    from hispec_sim.validate import forward_ms

    ws = ([1, 2, 8, 16], [-0.05, -0.04, -0.02, 0.0])
    cost = Setting(make_profile(layers=16, working_set=ws)).cost()
    draft = Forward(level=1, segments=[(1, 2, 1)], head_layer=2, head_tokens=1, ms=0.0)
    check = Forward(level=2, segments=[(1, 2, 1), (3, 16, 4)], head_layer=16, head_tokens=4, ms=0.0)
    run = SimpleNamespace(plan=Plan(levels=[2, 16], propose=3), forwards=([draft] * 3 + [check]) * 2)
    priced = forward_ms(cost, run)
    price = lambda f, **kw: float(cost.forward([(b - a + 1, n) for a, b, n in f.segments], f.head_tokens,
                                               verify=f.level > 1, **kw))
    by_depth = [price(f) for f in run.forwards]
    no_ws = [price(f, working_set=False) for f in run.forwards]
    history = working_set_history(cost.table, [f.head_layer for f in run.forwards], 16)
    assert priced == pytest.approx(np.array(no_ws) + history)
    assert priced.sum() == pytest.approx(sum(by_depth)) and history.sum() < 0


def test_machine_drift_of_a_profile_without_calibration_speedups(small):
    model, profile = small
    prov = json.loads(json.dumps(profile.provenance))
    del prov["measurement"]["calibration"]["speedups"]
    drift = machine_drift(profile.model_copy(update={"provenance": prov}), model)
    assert set(drift) == {"then_tokens_per_second", "now_tokens_per_second", "drift"} and drift["now_tokens_per_second"] > 0
    assert state_line({"machine_drift": drift}) == ""


def test_tools_that_add_to_a_profile_refuse_other_weights(tmp_path):
    """The confidence and serving-calibration tools add to a profile only with its own model:
    a profile recording other weights (a retrained checkpoint) is refused before any timing."""
    from hispec_exec.checkpoint import load_model
    from hispec_exec.confidence import add_confidence
    from hispec_exec.measure_serving import add_to_profile
    from hispec_sim.schema import load_profile

    shipped = load_profile("cpu_hispec_tiny")
    other = shipped.model_copy(update={"model": shipped.model.model_copy(update={"weights": "sha256:" + "1" * 64})})
    with pytest.raises(ValueError, match="with weights sha256:111111111111"):
        add_confidence(other, load_model())
    path = tmp_path / "other.json"
    save_profile(other, path)
    with pytest.raises(ValueError, match="with weights sha256:111111111111"):
        add_to_profile(str(path), str(tmp_path / "out.json"))
    assert not (tmp_path / "out.json").exists()


def test_validate_defaults_to_the_validated_workloads_own_prompts(tmp_path, monkeypatch, capsys):
    """A workload added with --acceptance-only is validated on its own held-out prompts (its
    n, seed and length, recorded with it), and a workload of a prompts file says that held-out
    prompts stand in for it (round 22, D6: the profile's first workload's prompts, silently)."""
    import shutil

    import hispec_sim.validate as validate_module
    from hispec_exec.checkpoint import load_model
    from hispec_exec.prompts import heldout_token_prompts, text_codec

    prof = tmp_path / "p.json"
    from hispec_sim.schema import resolve_profile_path

    shutil.copy(resolve_profile_path("cpu_hispec_tiny"), prof)
    assert main(["profile", "measure", "--acceptance-only", "--workload", "held", "--prompts", "3", "--seed", "7",
                 "--max-new-tokens", "8", "--out", str(prof)]) == 0
    (tmp_path / "mine.txt").write_text("def f(x):\n")
    assert main(["profile", "measure", "--acceptance-only", "--workload", "mine", "--prompts-file",
                 str(tmp_path / "mine.txt"), "--max-new-tokens", "8", "--out", str(prof)]) == 0
    capsys.readouterr()
    seen = {}

    def stop(setting, plans, model, prompts, max_new_tokens, **k):
        seen.update(prompts=prompts, max_new_tokens=max_new_tokens)
        raise ValueError("stub: stopped before the runs")
    monkeypatch.setattr(validate_module, "validate", stop)
    assert main(["validate", "--profile", str(prof), "--workload", "held", "--plans", "1", "--allow-other-machine"]) == 2
    codec = text_codec(load_model(), None)
    assert seen == {"prompts": heldout_token_prompts(codec, 3, 64, 7), "max_new_tokens": 8}
    assert main(["validate", "--profile", str(prof), "--workload", "mine", "--plans", "1", "--allow-other-machine"]) == 2
    assert "note: workload mine was measured on 1 prompt of mine.txt" in capsys.readouterr().err


def test_validate_refuses_a_plan_the_prompts_cannot_fit_before_any_run(monkeypatch, capsys):
    """64-token prompts + 446 new tokens + 6 of speculation overflow the 512-token context:
    refused before validate re-runs the calibration plans (fuzz round 25, M1: after 13 s)."""
    import hispec_sim.validate as validate_module

    def ran(*a, **k):
        raise AssertionError("validate ran")
    monkeypatch.setattr(validate_module, "validate", ran)
    argv = ["validate", "--profile", "cpu_hispec_tiny", "--plans", "1", "--prompts", "1",
            "--allow-other-machine"]
    assert main([*argv, "--max-new-tokens", "446"]) == 2
    assert "max_new_tokens: prompt (64) + max_new_tokens (446) + tokens in flight beyond them (6" in capsys.readouterr().err
