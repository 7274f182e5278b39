"""Close the loop on a small random model: measure a profile, predict, run, compare."""
from __future__ import annotations

import json

import pytest
import torch

from hispec_exec.measure import measure_profile
from hispec_exec.model import ModelArgs, Transformer
from hispec_exec.data import heldout_prompts
from hispec_sim.cli import main
from hispec_sim.evaluate import Setting
from hispec_sim.schema import Plan, save_profile
from hispec_sim.validate import check_model_matches, draw_plans, validate


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = Transformer(ModelArgs(n_layers=8, dim=48, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=256)).eval()
    profile = measure_profile(model, "rand8", "cpu", "heldout", n_prompts=3, prompt_len=32, max_new_tokens=24,
                              repeats=5, command="pytest")
    return model, profile


def test_measured_profile_is_complete(small):
    model, profile = small
    table = profile.table()
    assert profile.model.num_layers == 8 and table.stack == "hispec_exec"
    assert all(v > 0 for row in table.layer_ms for v in row) and all(v > 0 for v in table.head_ms)
    assert min(table.tokens) == 1 and max(table.tokens) == 64
    acc = profile.workload()
    assert acc.joint == "traces" and len(acc.traces) == 3 * 24 and acc.trace_starts == [0, 24, 48]
    assert all(acc.agreement[i][i] == 1.0 for i in range(8))
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
    out = validate(setting, plans[:5], model, heldout_prompts(2, 32, 1), 16, seed=0)
    assert len(out["plans"]) == 5
    for row in out["plans"]:
        assert row["measured_tokens_per_second"] > 0 and row["predicted_tokens_per_second"] > 0
        assert row["relative_error"] == pytest.approx(
            (row["predicted_tokens_per_second"] - row["measured_tokens_per_second"]) / row["measured_tokens_per_second"])
    assert out["max_abs_relative_error"] >= out["median_abs_relative_error"] >= 0


def test_profile_of_another_model_is_refused(small):
    model, profile = small
    other = Transformer(ModelArgs(n_layers=6, dim=48, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=256))
    with pytest.raises(ValueError, match="profile: measured for model"):
        check_model_matches(profile, other, "rand6")
    with pytest.raises(ValueError, match="profile: measured for model"):
        check_model_matches(profile, model, "another-name")


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
