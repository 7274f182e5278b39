"""Optuna search: valid trials by construction, determinism, continuation, bad input, CLI."""
from __future__ import annotations

import json
import math
import sqlite3

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from factories import make_profile, resolve_depth_traces
from hispec_sim.cli import main
from hispec_sim.evaluate import Setting, exhaustive, score
from hispec_sim.schema import Plan, load_plan, load_profile, save_profile
from hispec_sim.search import Space, depth_cycle, optuna_search

ENTRY_KEYS = {"plan", "tokens_per_second", "speedup_vs_autoregressive", "tokens_per_full_forward"}


@pytest.fixture
def setting16():
    return Setting(make_profile(layers=16))


def _plans(study):
    return [(Plan.model_validate(t.user_attrs["plan"]), t.values) for t in study.trials]


# ----------------------------------------------------------------------------- space


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n=st.integers(1, 40), depth=st.integers(1, 4))
def test_every_parameter_vector_is_a_valid_plan(data, n, depth):
    """Whatever values the sampler draws, the chain is increasing and uses measured exits."""
    exits = tuple(sorted(data.draw(st.sets(st.integers(1, 99), min_size=n, max_size=n))))
    if depth - 1 > n:
        return
    space = Space(exits, 100, 1, 4, 8, 16)
    k = f"k{depth}_"
    params = {"depth": depth, k + "exit_top": data.draw(st.integers(0, n - 1)), k + "propose": data.draw(st.integers(1, 8))}
    for j in range(1, depth - 1):
        params[f"{k}gap_{j}"] = data.draw(st.integers(1, max(n - 1, 1)))
        params[f"{k}window_{j}"] = data.draw(st.integers(1, 16))
    plan, _ = space.suggest(optuna.trial.FixedTrial(params))
    assert plan.depth == depth and plan.levels[-1] == 100
    assert all(e in exits for e in plan.levels[:-1])
    assert all(b > a for a, b in zip(plan.levels, plan.levels[1:]))
    # and every plan is reachable: its own parameters give it back
    back, _ = space.suggest(optuna.trial.FixedTrial(space.params(plan, None)))
    assert back == plan


def test_all_trials_valid_and_scores_match_the_analytic_model(setting16):
    r = optuna_search(setting16, trials=120, sampler="random", storage=None, seed=3, depth=(1, 4))
    assert r.study["trials"] == 120 and r.study["trials_failed"] == 0
    trials = r.optuna_study.trials
    plans = [Plan.model_validate(t.user_attrs["plan"]) for t in trials]
    for p in plans:
        setting16.profile.check_plan(p, setting16.workload)  # valid on the profile, never rejected
    assert {p.depth for p in plans} == {1, 2, 3, 4}
    values = [t.values[0] for t in trials]
    assert values == pytest.approx([score(setting16, [p])[0].tokens_per_second for p in plans], rel=1e-12)
    assert r.best.tokens_per_second >= r.best_single_level.tokens_per_second * (1 - 1e-9)


def test_depth_cycle_shares():
    assert depth_cycle(1, 4) == [4, 3, 4, 2, 3, 4]  # depth k gets k-1 slots, interleaved
    assert sorted(depth_cycle(1, 3)) == [2, 3, 3] and depth_cycle(3, 3) == [3]


def test_finds_the_exhaustive_optimum_on_a_small_profile(setting16):
    ex = exhaustive(setting16).best.tokens_per_second
    r = optuna_search(setting16, trials=150, storage=None, seed=0, depth=(1, 3), seed_exhaustive=False)  # TPE alone
    assert r.best.tokens_per_second >= 0.98 * ex
    assert r.best.tokens_per_second <= ex * (1 + 1e-9)  # never beats the exact optimum of the same space


@pytest.mark.parametrize("trials", [1, 12])
def test_seeded_with_the_exhaustive_optimum_never_worse_than_default_search(setting16, trials):
    """A depth 1-4 study's first trial is the exhaustive optimum of depth 1-3, so even one
    trial returns the default search's plan, and more trials can only improve on it."""
    ex = exhaustive(setting16).best
    r = optuna_search(setting16, trials=trials, storage=None, seed=0, depth=(1, 4))
    assert r.study["seeded_with"][0] == ex.plan.describe()
    assert r.best.tokens_per_second >= ex.tokens_per_second * (1 - 1e-12)
    if trials == 1:
        assert r.best.plan == ex.plan


def test_a_space_without_hierarchy_is_seeded_with_the_best_single_level_plan():
    """--depth 1-2 holds none of the exhaustive top ten (all 3-level on a100_llama70b): its
    first trial is the best single-level plan, not autoregressive (docs check 20: `--trials 1`
    answered 1.000x where [23,80] propose=3 gives 1.702x)."""
    s = Setting(load_profile("a100_llama70b"))
    ex = exhaustive(s)
    assert all(x.plan.depth == 3 for x in ex.top)
    r = optuna_search(s, trials=1, storage=None, seed=0, depth=(1, 2))
    assert r.study["seeded_with"][0] == ex.best_single_level.plan.describe() and r.best.plan == ex.best_single_level.plan


def test_the_paper_default_outside_the_bounds_is_a_baseline_not_an_answer():
    """At --max-propose 1 --max-window 1 the paper default (propose 2, window 4) was ranked
    first on h100_llama2_70b / sharegpt_high and written by --out (round 23, D3); it stays
    the baseline row, and within the default bounds it is still ranked."""
    s = Setting(load_profile("h100_llama2_70b"), "sharegpt_high")
    tight = exhaustive(s, max_propose=1, max_window=1)
    assert tight.paper_default.tokens_per_second > tight.best.tokens_per_second
    assert all(x.plan.propose == 1 and max(x.plan.windows or [1]) == 1 for x in tight.top)
    wide = exhaustive(s, top=100_000)
    assert wide.paper_default.plan in [x.plan for x in wide.top]
    # nor the best single-level baseline, which capacity's candidates start from (review 23)
    own = load_profile("h100_llama2_7b")
    own = own.model_copy(update={"paper_default": Plan(levels=[13, 32], propose=3)})
    single = exhaustive(Setting(own), max_propose=1, max_window=1).best_single_level.plan
    assert single.depth == 2 and single.propose == 1


def test_the_first_seed_is_at_the_profiles_default_tp_and_batch_one():
    """--tp 2,4 --batch 8,1 on a100_llama70b (default tp 4): trial 0 is the optimum at tp 4,
    batch 1, what optimize without the lists answers (docs check 20: the lists' first, tp 2
    and 35.74 tokens/s, where the default search gives 66.82)."""
    p = load_profile("a100_llama70b")
    ex = exhaustive(Setting(p)).best
    r = optuna_search(Setting(p, tp=2, batch=8), trials=1, storage=None, seed=0, tps=[2, 4], batches=[8, 1])
    assert r.study["seeded_with"][0] == f"{ex.plan.describe()} tp 4 batch 1" and r.best.plan == ex.plan


def test_a_search_over_tp_and_batch_is_seeded_with_each_pairs_optimum():
    """--tp 1,2,4,8 --batch 1,8 seeds the exhaustive optimum at every pair of tp and batch,
    so the study never answers worse than `optimize --tp T --batch B` at any pair it searched
    once its trials cover the seeds (rounds 18 and 19, M4 and D2: 94.26 tok/s at tp 8 where
    optimize --tp 8 finds 99.13; 370 tok/s at tp 4 / batch 8 where the default search gives 427)."""
    p = load_profile("a100_llama2_7b")
    pairs = [(t, b) for t in (1, 2, 4, 8) for b in (1, 8)]
    best = {(t, b): exhaustive(Setting(p, tp=t, batch=b)).best for t, b in pairs}
    r = optuna_search(Setting(p), trials=len(pairs), storage=None, seed=1, tps=[1, 2, 4, 8], batches=[1, 8])
    assert r.study["seeded_with"][:len(pairs)] == [f"{best[t, b].plan.describe()} tp {t} batch {b}" for t, b in pairs]
    assert r.best.tokens_per_second >= max(x.tokens_per_second for x in best.values()) * (1 - 1e-12)


# ----------------------------------------------------------------------------- determinism, storage


def test_same_seed_same_result(setting16, tmp_path):
    a = optuna_search(setting16, trials=15, seed=7, storage=f"sqlite:///{tmp_path}/a.db", study_name="s")
    b = optuna_search(setting16, trials=15, seed=7, storage=f"sqlite:///{tmp_path}/b.db", study_name="s")
    c = optuna_search(setting16, trials=15, seed=7, storage=None)
    sa = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/a.db")
    sb = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/b.db")
    assert [t.params for t in sa.trials] == [t.params for t in sb.trials]
    assert a.as_dict()["best"] == b.as_dict()["best"] == c.as_dict()["best"]
    d = optuna_search(setting16, trials=12, seed=8, storage=None)
    assert d.study["trials"] == 12  # another seed runs too (and usually differs)


def test_second_call_continues_the_study(setting16, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    first = optuna_search(setting16, trials=14, seed=1, storage=url, study_name="x")
    before = _plans(optuna.load_study(study_name="x", storage=url))
    second = optuna_search(setting16, trials=6, seed=1, storage=url, study_name="x")
    after = optuna.load_study(study_name="x", storage=url)
    assert first.study["continued"] is False and second.study["continued"] is True
    assert second.study["trials"] == 20 and second.study["trials_this_run"] == 6
    assert _plans(after)[:14] == before  # nothing lost or changed
    assert second.best.tokens_per_second >= first.best.tokens_per_second
    # a continuation does not replay the first run's draws (after the 4 seeded trials)
    n_seeded = len(first.study["seeded_with"])
    new = [t.params for t in after.trials[14:]]
    assert new != [t.params for t in after.trials[n_seeded:n_seeded + 6]]


def _count(db):
    with sqlite3.connect(db) as c:
        return c.execute("select count(*) from trials").fetchone()[0], c.execute("select count(*) from studies").fetchone()[0]


@pytest.mark.parametrize("kwargs, message", [
    ({"sampler": "annealing"}, "sampler: unknown"),
    ({"trials": 0}, "trials: must be >= 1"),
    ({"objectives": ("throughput", "speed")}, "objectives:"),
    ({"objective": "exact"}, "objective: unknown"),
    ({"sampler": "cmaes", "objectives": ("throughput", "latency")}, "sampler: cmaes is single-objective"),
    ({"depth": (0, 3)}, "depth:"),
    ({"tps": [1, 8]}, "latency: no table for tp=8"),
    ({"workers": 0}, "workers:"),
])
def test_bad_input_writes_nothing(setting16, tmp_path, kwargs, message):
    url = f"sqlite:///{tmp_path}/s.db"
    optuna_search(setting16, trials=2, storage=url, study_name="x")
    before = _count(tmp_path / "s.db")
    with pytest.raises(ValueError, match=message):
        optuna_search(setting16, **{"trials": 5, "storage": url, "study_name": "x", **kwargs})
    assert _count(tmp_path / "s.db") == before


def test_study_of_another_profile_is_refused(setting16, tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    optuna_search(setting16, trials=5, storage=url, study_name="x")
    before = _count(tmp_path / "s.db")
    other = Setting(make_profile(layers=16, layer_ms=2.0, name="other"))
    with pytest.raises(ValueError, match="study-name: study 'x' belongs to another profile"):
        optuna_search(other, trials=5, storage=url, study_name="x")
    changed = Setting(make_profile(layers=16, layer_ms=2.0))  # same name, other numbers
    with pytest.raises(ValueError, match="another profile version"):
        optuna_search(changed, trials=5, storage=url, study_name="x")
    with pytest.raises(ValueError, match="study-name: study 'x' was made with objectives"):
        optuna_search(setting16, trials=5, storage=url, study_name="x", objectives=("throughput", "latency"))
    assert _count(tmp_path / "s.db") == before


@pytest.mark.parametrize("url, message", [
    ("nonsense.db", "storage: expected an Optuna RDB URL"),
    ("sqlite:////no/such/dir/s.db", "storage: folder /no/such/dir"),
    ("postgresql://u:secret@127.0.0.1:9/db", "storage: cannot open"),
    ("mysql+nosuchdriver://u@localhost/db", "storage: cannot open"),
])
def test_bad_storage(setting16, url, message):
    with pytest.raises(ValueError, match=message) as e:
        optuna_search(setting16, trials=5, storage=url, study_name="x")
    assert "secret" not in str(e.value)


def test_commands_that_open_no_study_leave_no_side_files(tmp_path, monkeypatch, capsys):
    """An exhaustive optimize, or one refused, next to an Optuna study (a WAL-mode SQLite
    file) leaves no -shm / -wal files beside it (docs check 20: every optimize in that folder
    left both); a foreign database is still refused."""
    import sqlite3

    monkeypatch.chdir(tmp_path)
    assert main(["optimize", "--profile", "cpu_hispec_tiny", "--search", "optuna", "--trials", "1"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hispec-studies.db"]
    assert main(["optimize", "--profile", "cpu_hispec_tiny", "--mc-streams", "10"]) == 2
    assert main(["optimize", "--profile", "cpu_hispec_tiny", "--rescore", "0"]) == 0
    assert main(["optimize", "--profile", "cpu_hispec_tiny", "--search", "optuna", "--trials", "1",
                 "--study-name", "x", "--objective", "nosuch"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hispec-studies.db"]
    con = sqlite3.connect(tmp_path / "other.db")
    con.execute("CREATE TABLE foo (a)")
    con.commit()
    con.close()
    capsys.readouterr()
    assert main(["optimize", "--profile", "cpu_hispec_tiny", "--search", "optuna", "--storage", "sqlite:///other.db"]) == 2
    assert "is a SQLite database of something else (tables foo)" in capsys.readouterr().err
    # a WAL-mode database whose table is still in its write-ahead log (its writer gone without a checkpoint)
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", "import os, sqlite3; c = sqlite3.connect('wal.db'); "
                    "c.execute('pragma journal_mode=wal'); c.execute('create table users (name)'); c.commit(); "
                    "os._exit(0)"], cwd=tmp_path, check=True)
    assert (tmp_path / "wal.db-wal").stat().st_size > 0
    assert main(["optimize", "--profile", "cpu_hispec_tiny", "--search", "optuna", "--storage", "sqlite:///wal.db"]) == 2
    assert "(tables users)" in capsys.readouterr().err  # round 22, D5: the immutable look saw no table


# ----------------------------------------------------------------------------- objectives and choices


def test_pareto_front_is_non_dominated(setting16):
    r = optuna_search(setting16, trials=60, storage=None, objectives=("throughput", "latency"), seed=2)
    front = r.as_dict()["pareto"]
    assert front and front == sorted(front, key=lambda e: -e["tokens_per_second"])
    for a in front:
        assert not any(b["throughput"] >= a["throughput"] and b["latency"] <= a["latency"]
                       and (b["throughput"], b["latency"]) != (a["throughput"], a["latency"]) for b in front)
    assert r.as_dict()["best"]["tokens_per_second"] == max(e["tokens_per_second"] for e in front)


def test_mc_objective_with_trace_replay_and_p99():
    s = Setting(make_profile(layers=12, traces=resolve_depth_traces(12, 3000, 0)))
    r = optuna_search(s, trials=15, storage=None, objective="mc", objectives=("throughput", "p99"), mc_streams=128,
                      mc_cycles=8, seed=0)
    d = r.as_dict()
    assert d["objective"] == "mc" and d["best"]["trial_metrics"]["trace_replay"] is True
    assert all("latency_ms_p99" in e for e in d["pareto"])
    again = optuna_search(s, trials=15, storage=None, objective="mc", objectives=("throughput", "p99"), mc_streams=128,
                          mc_cycles=8, seed=0)
    assert again.as_dict()["pareto"] == d["pareto"]  # fixed Monte-Carlo seed
    # every figure printed is the one the trials were ranked by, the analytic one beside it
    # (eighteenth round, D4: the table was ranked by replay and printed the analytic figures)
    for e in d["pareto"]:
        assert e["tokens_per_second"] == e["throughput"] and "analytic_tokens_per_second" in e
    assert d["rescored"]["by"] == "trace replay" and d["best"]["tokens_per_second"] == pytest.approx(
        d["best"]["trial_metrics"]["mc_tokens_per_second"], rel=1e-4)
    single = optuna_search(s, trials=15, storage=None, objective="mc", mc_streams=128, mc_cycles=8, seed=0).as_dict()
    tps = [r["tokens_per_second"] for r in single["top"]]
    assert tps == sorted(tps, reverse=True) and all("analytic_tokens_per_second" in r for r in single["top"])
    assert "analytic_tokens_per_second" in single["baselines"]["autoregressive"]


def test_plans_too_long_to_simulate_are_left_out_not_the_search(monkeypatch):
    """With --objective mc, a trial whose simulation could walk more than MAX_MC_DRAFTS drafts
    (montecarlo.check_simulation_size) is pruned and counted; the search goes on and reports the rest."""
    from hispec_sim import montecarlo

    s = Setting(make_profile(layers=12))
    streams, cycles = 16, 4
    monkeypatch.setattr(montecarlo, "MAX_MC_DRAFTS", streams * cycles * 40)  # propose x windows <= 40 per check
    r = optuna_search(s, trials=30, storage=None, objective="mc", mc_streams=streams, mc_cycles=cycles, seed=0,
                      depth=(3, 4), sampler="random")
    d = r.as_dict()
    long = d["study"]["trials_too_long_to_simulate"]
    assert 0 < long < 30 and d["study"]["trials"] == 30 - long
    for t in r.optuna_study.trials:
        plan = Plan.model_validate(t.user_attrs["plan"]) if "plan" in t.user_attrs else None
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert plan.propose * math.prod(plan.windows) <= 40
    with pytest.raises(montecarlo.SimulationTooLarge, match=r"mc: plan \[1, 2, 12\] \(propose 8, windows \[6\]\) drafts up to 48 tokens"):
        montecarlo.simulate(s.cost(32), s.agreement, Plan(levels=[1, 2, 12], propose=8, windows=[6]), streams, cycles)


def test_batch_and_tp_choices():
    s = Setting(load_profile("a100_llama70b"))
    r = optuna_search(s, trials=40, storage=None, depth=(1, 3), batches=[1, 8], tps=[1, 8], seed=0)
    d = r.as_dict()
    assert d["tp"] in (1, 8) and d["batch"] in (1, 8) and d["best"]["plan"]["batch"] == d["batch"]
    # the reported numbers are the analytic model's on the best plan's own setting
    again = score(Setting(s.profile, tp=d["tp"], batch=d["batch"]), [Plan.model_validate(d["best"]["plan"])])[0]
    assert again.tokens_per_second == pytest.approx(d["best"]["tokens_per_second"], abs=1e-3)


def test_cmaes_and_random_samplers_run(setting16):
    for sampler in ("cmaes", "random"):
        r = optuna_search(setting16, trials=20, storage=None, sampler=sampler, depth=(3, 3))
        assert r.study["trials"] == 20 and r.best.plan.depth == 3


# ----------------------------------------------------------------------------- CLI


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_json_contract_and_continuation(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_profile(make_profile(layers=16), tmp_path / "p.json")
    args = ["optimize", "--profile", "p.json", "--search", "optuna", "--trials", "6", "--seed", "1",
            "--storage", "sqlite:///s.db", "--study-name", "x", "--json"]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    res = json.loads(out)
    assert ENTRY_KEYS <= set(res["best"]) and set(res["baselines"]) == {"autoregressive", "best_single_level", "paper_default"}
    assert res["study"]["name"] == "x" and res["study"]["trials"] == 6 and res["study"]["storage"] == "sqlite:///s.db"
    assert "pareto" not in res and err == ""  # no progress bar when not on a terminal
    code, out, _ = run(capsys, *args)
    assert code == 0 and json.loads(out)["study"]["trials"] == 12
    # several objectives print the Pareto front
    code, out, err = run(capsys, "optimize", "--profile", "p.json", "--objectives", "throughput,latency",
                         "--trials", "6", "--study-name", "y")
    assert code == 0, err
    assert "Pareto front" in out and "hispec-studies.db" in out and (tmp_path / "hispec-studies.db").exists()


def test_cli_auto_keeps_exhaustive_by_default(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_profile(make_profile(layers=16), tmp_path / "p.json")
    code, out, _ = run(capsys, "optimize", "--profile", "p.json", "--json")
    assert code == 0 and "study" not in json.loads(out) and not (tmp_path / "hispec-studies.db").exists()
    code, out, _ = run(capsys, "optimize", "--profile", "p.json", "--depth", "1-4", "--trials", "10", "--json")
    assert code == 0 and json.loads(out)["study"]["space"]["depth"] == [1, 4]


@pytest.mark.parametrize("depth, most", [("1-1", 1), ("1-2", 2)])
def test_cli_a_depth_below_three_is_searched_within_it(capsys, tmp_path, monkeypatch, depth, most):
    """The exhaustive grid spans 1..3 levels: a narrower --depth goes to Optuna, whose answer
    lies within it (the fourteenth fuzz round: --depth 1-1 wrote a 3-level plan)."""
    monkeypatch.chdir(tmp_path)
    save_profile(make_profile(layers=16), tmp_path / "p.json")
    code, out, _ = run(capsys, "optimize", "--profile", "p.json", "--depth", depth, "--trials", "8", "--out", "o.json",
                       "--json")
    assert code == 0 and json.loads(out)["study"]["space"]["depth"] == [1, most]
    assert len(load_plan(tmp_path / "o.json").levels) <= most
    code, _, err = run(capsys, "optimize", "--profile", "p.json", "--depth", depth, "--search", "exhaustive")
    assert code == 2 and "search: exhaustive covers 1..3 levels (--depth 1-3)" in err


@pytest.mark.parametrize("extra, message", [
    (["--search", "optuna", "--sampler", "foo"], "sampler: unknown"),
    (["--search", "optuna", "--trials", "0"], "trials: must be in [1, 100000]"),
    (["--search", "optuna", "--storage", "postgresql://u@127.0.0.1:9/db"], "storage: cannot open"),
    (["--search", "exhaustive", "--batch", "1,8"], "search: exhaustive covers"),
    (["--search", "sideways"], "search: unknown"),
    (["--depth", "a-b"], "depth: expected"),
    (["--batch", "1,x"], "batch: expected"),
    (["--batch", "0"], "batch"),
])
def test_cli_bad_input_one_line_exit_2(capsys, tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    save_profile(make_profile(layers=16), tmp_path / "p.json")
    storage = [] if "--storage" in extra else ["--storage", "sqlite:///s.db"]  # a flag is given once
    code, out, err = run(capsys, "optimize", "--profile", "p.json", *storage, *extra)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err
    if (tmp_path / "s.db").exists():
        assert _count(tmp_path / "s.db")[0] == 0


def test_cli_other_profile_study(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_profile(make_profile(layers=16), tmp_path / "p.json")
    save_profile(make_profile(layers=16, name="q"), tmp_path / "q.json")
    assert run(capsys, "optimize", "--profile", "p.json", "--search", "optuna", "--trials", "5", "--study-name", "x")[0] == 0
    before = _count(tmp_path / "hispec-studies.db")
    code, out, err = run(capsys, "optimize", "--profile", "q.json", "--search", "optuna", "--trials", "5", "--study-name", "x")
    assert code == 2 and "belongs to another profile" in err and err.count("\n") == 1
    assert _count(tmp_path / "hispec-studies.db") == before


def test_monte_carlo_flags_the_trials_would_not_read_are_refused(capsys, tmp_path):
    """A workload with a per-request spread draws one request per stream (no --mc-cycles); a
    traced one replays its requests (neither flag), as `evaluate --mc` / `--replay` refuse
    them; the study is not created (nineteenth round, D3: --mc-cycles changed nothing but
    the study's name)."""
    db = tmp_path / "s.db"
    for profile, flags, unread in (("a100_llama70b", ["--mc-cycles", "8"], "mc_cycles"),
                                   ("cpu_hispec_tiny", ["--mc-streams", "64"], "mc_streams")):
        code, out, err = run(capsys, "optimize", "--profile", profile, "--search", "optuna", "--objective", "mc",
                             *flags, "--trials", "2", "--storage", f"sqlite:///{db}")
        assert code == 2 and err.count("\n") == 1 and err.startswith(f"hispec-sim: error: {unread}:"), err
        assert not db.exists()
    code, out, err = run(capsys, "optimize", "--profile", "a100_llama70b", "--search", "optuna", "--objective", "mc",
                         "--mc-streams", "64", "--trials", "2", "--storage", f"sqlite:///{db}")
    assert code == 0 and "64 streams of one 256-token request each" in out
