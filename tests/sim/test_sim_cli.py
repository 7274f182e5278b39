"""Golden cases for the hispec-sim command line: JSON contracts and bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from factories import make_profile
from hispec_sim.cli import EXPORT_FORMATS as CLI_EXPORT_FORMATS
from hispec_sim.cli import main, profile_table
from hispec_sim.schema import save_profile

ENTRY_KEYS = {"plan", "tokens_per_second", "speedup_vs_autoregressive", "tokens_per_full_forward"}


@pytest.fixture
def profile_file(tmp_path):
    path = tmp_path / "p.json"
    save_profile(make_profile(layers=16), path)
    return str(path)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_optimize_json_contract(capsys, profile_file, tmp_path):
    out_plan = tmp_path / "best.json"
    code, out, err = run(capsys, "optimize", "--profile", profile_file, "--json", "--out", str(out_plan), "--top", "3")
    assert code == 0, err
    res = json.loads(out)
    assert ENTRY_KEYS <= set(res["best"])
    assert set(res["baselines"]) == {"autoregressive", "best_single_level", "paper_default"}
    for b in res["baselines"].values():
        assert ENTRY_KEYS <= set(b)
    assert res["baselines"]["autoregressive"]["speedup_vs_autoregressive"] == 1.0
    assert res["best"]["tokens_per_second"] >= res["baselines"]["best_single_level"]["tokens_per_second"]
    assert res["best"]["tokens_per_second"] >= res["baselines"]["paper_default"]["tokens_per_second"]
    assert res["plans_evaluated"] == 1 + 15 * 8 + 105 * 8 * 16
    assert res["seconds"] >= 0 and len(res["top"]) == 3
    assert json.loads(out_plan.read_text(encoding="utf-8")) == res["best"]["plan"]
    # the written plan evaluates to the same number
    code, out, _ = run(capsys, "evaluate", "--profile", profile_file, "--plan", str(out_plan), "--json")
    assert code == 0 and json.loads(out)["tokens_per_second"] == res["best"]["tokens_per_second"]


def test_evaluate_json_and_monte_carlo(capsys, profile_file):
    code, out, err = run(capsys, "evaluate", "--profile", profile_file, "--levels", "2,4,16", "--propose", "2",
                         "--window", "4", "--mc", "--streams", "512", "--cycles", "16", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert ENTRY_KEYS <= set(res) and res["plan"]["levels"] == [2, 4, 16]
    mc = res["monte_carlo"]
    assert mc["ci95"][0] <= mc["tokens_per_second"] <= mc["ci95"][1]
    assert mc["latency_ms_p50"] <= mc["latency_ms_p99"]


def test_human_output_is_a_table(capsys, profile_file):
    code, out, _ = run(capsys, "optimize", "--profile", profile_file, "--top", "2")
    assert code == 0
    assert "autoregressive" in out and "best single-level" in out and "paper default" in out and "tokens/s" in out


@pytest.mark.parametrize("argv,field", [
    (["optimize", "--profile", "no_such_profile"], "profile: unknown"),
    (["evaluate", "--profile", "@P", "--levels", "4,2,16", "--window", "3"], "levels"),
    (["evaluate", "--profile", "@P", "--levels", "2,4,17", "--window", "3"], "levels"),
    (["evaluate", "--profile", "@P", "--levels", "2,4,16", "--window", "0"], "window"),
    (["evaluate", "--profile", "@P", "--levels", "2,16", "--propose", "0"], "propose"),
    (["evaluate", "--profile", "@P", "--levels", "2,16", "--workload", "nope"], "workload: unknown 'nope'; known: w"),
    (["optimize", "--profile", "@P", "--batch", "0"], "batch"),
    (["optimize", "--profile", "@P", "--tp", "8"], "latency: no table for tp=8"),
    (["evaluate", "--profile", "@P", "--levels", "x,16"], "levels"),
    (["optimize", "--profile", "@BAD"], "bad.json: malformed JSON"),
    (["optimize", "--profile", "@NEG"], "latency.0"),
    (["optimize", "--profile", "@ACC"], "agreement"),
    (["optimize", "--profile", "@P", "--out", "/no/such/dir/plan.json"], "out: folder"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2(capsys, profile_file, tmp_path, argv, field):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    data = json.loads(open(profile_file).read())
    data["latency"][0]["layer_ms"][0][0] = -1.0
    (tmp_path / "neg.json").write_text(json.dumps(data))
    data = json.loads(open(profile_file).read())
    data["workloads"]["w"]["agreement"][0][1] = 1.5
    (tmp_path / "acc.json").write_text(json.dumps(data))
    subst = {"@P": profile_file, "@BAD": str(bad), "@NEG": str(tmp_path / "neg.json"), "@ACC": str(tmp_path / "acc.json")}
    code, out, err = run(capsys, *[subst.get(a, a) for a in argv])
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and field in err, err


def test_failed_optimize_leaves_no_plan_file(capsys, tmp_path):
    target = tmp_path / "plan.json"
    code, _, _ = run(capsys, "optimize", "--profile", "no_such_profile", "--out", str(target))
    assert code == 2 and not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_schema_and_profiles_commands(capsys):
    code, out, _ = run(capsys, "schema")
    assert code == 0 and {"plan", "profile"} == set(json.loads(out))
    plan = json.loads(out)["plan"]  # the ranges the loader checks, stated: a plan the schema accepts loads
    assert plan["$schema"].endswith("/draft/2020-12/schema")
    assert plan["properties"]["levels"]["items"] == {"type": "integer", "minimum": 1, "maximum": 1024}
    assert plan["properties"]["windows"]["items"]["maximum"] == 256
    assert (plan["properties"]["draft_confidence"]["minimum"], plan["properties"]["draft_confidence"]["maximum"]) == (0, 1)
    assert plan["properties"]["escalate_confidence"]["items"]["maximum"] == 1
    code, out, _ = run(capsys, "profiles", "--json")
    assert code == 0 and isinstance(json.loads(out), list)


def test_simulator_does_not_import_torch():
    code = "import sys, hispec_sim.cli, hispec_sim.evaluate, hispec_sim.montecarlo; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_optimize_output_is_accepted_as_a_plan_file(capsys, profile_file, tmp_path):
    code, out, _ = run(capsys, "optimize", "--profile", profile_file, "--json", "--top", "1")
    saved = tmp_path / "optimize.json"
    saved.write_text(out)
    code, out2, err = run(capsys, "evaluate", "--profile", profile_file, "--plan", str(saved), "--json")
    assert code == 0, err
    assert json.loads(out2)["plan"] == json.loads(out)["best"]["plan"]


def test_profile_with_only_the_full_model(capsys, tmp_path):
    from hispec_sim.schema import Acceptance

    prof = make_profile(layers=4)
    prof.workloads["w"] = Acceptance(exits=[4], agreement=[[1.0]], source=prof.workloads["w"].source)
    path = tmp_path / "ar.json"
    save_profile(prof, path)
    code, out, err = run(capsys, "optimize", "--profile", str(path), "--json")
    assert code == 0, err
    assert json.loads(out)["best"]["plan"]["levels"] == [4]


@pytest.mark.parametrize("form", [["--batch", "8"], ["--batch=8"]])
def test_batch_flag_overrides_the_plan_file_in_both_forms(capsys, profile_file, tmp_path, form):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"levels": [2, 16], "propose": 2}))
    code, out, err = run(capsys, "evaluate", "--profile", profile_file, "--plan", str(plan), *form, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["batch"] == 8 and res["plan"]["batch"] == 8


def test_plan_flags_share_defaults_with_the_executor():
    """One plan-from-arguments for both programs: same default propose, same window rules."""
    import argparse

    from hispec_exec.cli import build_parser as exec_parser
    from hispec_sim.cli import build_parser as sim_parser
    from hispec_sim.cli_common import plan_from_args

    sim = sim_parser().parse_args(["evaluate", "--profile", "x", "--levels", "2,4,8,16", "--window", "3"])
    ex = exec_parser().parse_args(["run", "--levels", "2,4,8,16", "--window", "3"])
    assert plan_from_args(sim) == plan_from_args(ex)
    assert plan_from_args(sim).propose == 2 and plan_from_args(sim).windows == [3, 3]
    assert plan_from_args(argparse.Namespace(plan=None, levels="16", propose=None, window=None)).levels == [16]


def test_profiles_lines_fit_100_characters(capsys):
    code, out, _ = run(capsys, "profiles")
    assert code == 0 and len(out.splitlines()) >= 2
    assert max(len(l) for l in out.splitlines()) <= 100
    assert all(name in out for name in ("a100_llama70b", "cpu_hispec_tiny"))
    empty, = profile_table([])  # no profiles found: the header alone, no crash
    assert empty.split() == out.splitlines()[0].split()


@pytest.mark.parametrize("to,what", [("exec", "plan file for hispec-exec"), ("hf", "transformers"), ("json", "predicted")])
def test_export_says_what_it_wrote(capsys, tmp_path, to, what):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"levels": [2, 16], "propose": 2}))
    out_file = tmp_path / f"x.{to}"
    code, out, err = run(capsys, "export", "--plan", str(plan), "--to", to, "--out", str(out_file),
                         "--profile", "cpu_hispec_tiny")
    assert code == 0, err
    assert out.strip() == f"exported {plan} as {to} ({CLI_EXPORT_FORMATS[to]}) to {out_file}" and what in out
    assert out_file.is_file()
    if to == "json":
        assert "prediction" in json.loads(out_file.read_text())
        code, out, err = run(capsys, "export", "--plan", str(plan), "--to", to, "--out", str(out_file))
        assert code == 0, err
        assert "the plan alone: --profile adds its predicted figures" in out
        assert "prediction" not in json.loads(out_file.read_text())


def test_rescore_ranks_by_trace_replay(capsys, tmp_path):
    """--rescore N: the analytic search's N best plans re-scored by trace replay and ranked by
    it; each row's figure is that plan's replay, next to its analytic figure."""
    from factories import resolve_depth_traces
    from hispec_sim.evaluate import Setting
    from hispec_sim.montecarlo import simulate
    from hispec_sim.schema import Plan, load_profile

    path = tmp_path / "traced.json"
    traces = resolve_depth_traces(8, 600, seed=3)
    save_profile(make_profile(layers=8, traces=traces, trace_starts=[0, 200, 400]), path)
    code, out, err = run(capsys, "optimize", "--profile", str(path), "--json", "--rescore", "12", "--top", "4",
                         "--max-propose", "4", "--max-window", "4")
    assert code == 0, err
    res = json.loads(out)
    assert res["rescored"]["by"] == "trace replay" and res["rescored"]["candidates"] >= 12
    assert res["rescored"]["requests"] == 3
    tps = [r["tokens_per_second"] for r in res["top"]]
    assert tps == sorted(tps, reverse=True) and len(tps) == 4
    setting = Setting(load_profile(str(path)))
    cost = setting.cost(4 + 4 + 8)
    for r in res["top"] + [res["baselines"]["paper_default"]]:
        plan = Plan.model_validate(r["plan"])
        assert r["tokens_per_second"] == pytest.approx(simulate(cost, setting.agreement, plan, replay=True).tokens_per_second,
                                                       rel=1e-3)
        assert "analytic_tokens_per_second" in r
    # the i.i.d. analytic model and the walk differ on these correlated traces: the re-ranking is not a copy
    assert any(abs(r["tokens_per_second"] / r["analytic_tokens_per_second"] - 1) > 1e-3 for r in res["top"])
    ar = res["baselines"]["autoregressive"]
    assert ar["tokens_per_second"] == pytest.approx(ar["analytic_tokens_per_second"])
    assert res["best"] == res["top"][0] | {"speedup_vs_best_single_level": res["best"]["speedup_vs_best_single_level"]}
    code, out, _ = run(capsys, "optimize", "--profile", str(path), "--rescore", "12", "--top", "2",
                       "--max-propose", "4", "--max-window", "4")
    assert code == 0 and "ranked by trace replay" in out
    assert any("tokens/s" in line and line.rstrip().endswith("analytic") for line in out.splitlines())
    save_profile(make_profile(layers=8, traces=traces), path)  # no trace_starts: one request
    code, out, err = run(capsys, "optimize", "--profile", str(path), "--json", "--rescore", "3", "--max-propose", "2",
                         "--max-window", "2")
    assert code == 0 and json.loads(out)["rescored"]["requests"] == 1, err


def test_rescore_is_the_default_where_the_workload_has_traces(capsys, tmp_path, profile_file):
    """Without --rescore, optimize ranks by trace replay when the workload has measured requests
    (its DEFAULT_RESCORE best), and by the analytic model alone otherwise or with --rescore 0."""
    from factories import resolve_depth_traces
    from hispec_sim.evaluate import DEFAULT_RESCORE

    path = tmp_path / "traced.json"
    save_profile(make_profile(layers=8, traces=resolve_depth_traces(8, 600, seed=3), trace_starts=[0, 300]), path)
    small = ["--json", "--top", "3", "--max-propose", "3", "--max-window", "3"]
    code, out, err = run(capsys, "optimize", "--profile", str(path), *small)
    assert code == 0, err
    res = json.loads(out)
    assert res["rescored"]["candidates"] == DEFAULT_RESCORE and res["rescored"]["requests"] == 2
    code, out, err = run(capsys, "optimize", "--profile", str(path), *small, "--rescore", "0")
    assert code == 0 and "rescored" not in json.loads(out), err
    code, out, _ = run(capsys, "optimize", "--profile", str(path), "--top", "2", "--max-propose", "3", "--max-window", "3")
    assert "(--rescore 0: analytic only)" in out
    study = ["--storage", f"sqlite:///{tmp_path / 's.db'}"]  # not the working folder's default study
    for extra in ([], ["--search", "optuna", "--trials", "5", *study]):  # no traces, or a search replay does not re-rank
        code, out, err = run(capsys, "optimize", "--profile", profile_file, *small, *extra)
        assert code == 0 and "rescored" not in json.loads(out), err


@pytest.mark.parametrize("extra,field", [([], "rescore: workload 'w' has no per-position traces"),
                                         (["--search", "optuna"], "rescore: re-scores the exhaustive"),
                                         (["--rescore", "1001"], "rescore: must be in [0, 1000]")])
def test_rescore_bad_input(capsys, profile_file, extra, field):
    code, out, err = run(capsys, "optimize", "--profile", profile_file, "--rescore", "5", *extra)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and field in err, err


def test_optimize_adaptive_without_confidence_fails_before_the_search(monkeypatch, capsys):
    """The adaptive model needs the workload's confidence statistics: without them
    `optimize --adaptive` says so at once, not after the fixed search (17 s on a100_llama70b
    with --max-propose 16 --max-window 64)."""
    import hispec_sim.cli

    def searched(*a, **k):
        raise AssertionError("the search ran")

    monkeypatch.setattr(hispec_sim.cli, "optimized", searched)
    assert main(["optimize", "--profile", "a100_llama70b", "--adaptive"]) == 2
    assert "draft_confidence: this workload has no confidence statistics" in capsys.readouterr().err


def test_optimize_rescores_a_paper_default_beyond_the_searched_sizes(tmp_path, capsys):
    """Re-scoring by trace replay walks the baselines too: the cost tables are sized for the
    published configuration even when its propose is beyond --max-propose (IndexError before)."""
    from hispec_sim.schema import PROFILES_DIR

    d = json.loads((PROFILES_DIR / "cpu_hispec_tiny.json").read_text(encoding="utf-8"))
    d["paper_default"] = {"levels": [2, 16], "propose": 64}
    f = tmp_path / "p.json"
    f.write_text(json.dumps(d), encoding="utf-8")
    assert main(["optimize", "--profile", str(f), "--rescore", "5", "--json"]) == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    assert out["baselines"]["paper_default"]["plan"]["propose"] == 64


def test_a_replay_of_one_request_has_no_interval(capsys, tmp_path):
    """One measured request gives a figure but no 95 % interval (it printed one of zero width)."""
    from hispec_sim.schema import load_profile

    p = load_profile("cpu_hispec_tiny")
    w = p.workloads["heldout"]
    row = w.traces[0]  # one position: its agreement matrix is that row's
    agree = [[float(a == b) for b in row] for a in row]
    one = w.model_copy(update={"traces": [row], "trace_starts": [0], "agreement": agree, "confidence": None,
                               "spread": None})
    path = tmp_path / "one.json"
    save_profile(p.model_copy(update={"workloads": {"heldout": one}}), path)
    code, out, _ = run(capsys, "evaluate", "--profile", str(path), "--levels", "2,8,16", "--window", "4", "--replay", "--json")
    mc = json.loads(out)["monte_carlo"]
    assert code == 0 and mc["ci95"] is None and mc["tokens_per_second"] > 0
    code, out, _ = run(capsys, "evaluate", "--profile", str(path), "--levels", "2,8,16", "--window", "4", "--replay")
    assert "95% CI: none from one request" in out


def test_a_shipped_name_is_not_hidden_by_the_working_folder(capsys, tmp_path, monkeypatch):
    """A folder named after a shipped profile (an output folder, say) once hid it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cpu_hispec_tiny").mkdir()
    (tmp_path / "a100_llama70b").write_text("{}")
    for name, levels in (("cpu_hispec_tiny", "2,16"), ("a100_llama70b", "20,80")):
        code, out, err = run(capsys, "evaluate", "--profile", name, "--levels", levels, "--json")
        assert code == 0 and json.loads(out)["profile"] == name, err
    code, _, err = run(capsys, "evaluate", "--profile", "./a100_llama70b", "--levels", "20,80")
    assert code == 2 and "a100_llama70b" in err  # the path, when asked for: not a profile


def test_optimize_prints_its_ratios_rounded_once(capsys):
    # a100_llama70b gsm8k_per_position: the best 3-level plan is 1.008544x the best single-level
    # one; stored to 4 decimals (1.0085) and printed to 3 it read 1.008 where the report said 1.009
    code, out, err = run(capsys, "optimize", "--profile", "a100_llama70b", "--workload", "gsm8k_per_position",
                         "--rescore", "0", "--json")
    assert code == 0, err
    best = json.loads(out)["best"]
    code, text, err = run(capsys, "optimize", "--profile", "a100_llama70b", "--workload", "gsm8k_per_position",
                          "--rescore", "0")
    assert code == 0, err
    assert abs(best["speedup_vs_best_single_level"] - 1.008544) < 2e-6
    assert "1.009x the best single-level plan" in text
