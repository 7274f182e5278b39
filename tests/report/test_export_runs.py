"""The plan that leaves the planner runs in the executor: optimize -> export --to exec ->
hispec-exec run --plan, on the shipped model and the profile measured for it. In-process
through both programs' `main(argv)` (what the console scripts call); the README test runs
the same chain as real processes."""
from __future__ import annotations

import json

from hispec_exec.cli import main as exec_main
from hispec_sim.cli import main as sim_main


def test_exported_plan_runs_in_the_executor(tmp_path, capsys):
    best = tmp_path / "best.json"
    run_plan = tmp_path / "run.json"
    assert sim_main(["optimize", "--profile", "cpu_hispec_tiny", "--out", str(best)]) == 0, capsys.readouterr().err
    assert sim_main(["export", "--plan", str(best), "--to", "exec", "--out", str(run_plan)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    code = exec_main(["run", "--plan", str(run_plan), "--prompts", "1", "--max-new-tokens", "24", "--check", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    out = json.loads(out)
    assert out["plan"] == json.loads(best.read_text(encoding="utf-8"))
    assert out["identical_to_autoregressive"] is True
