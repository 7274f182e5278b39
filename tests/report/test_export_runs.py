"""The plan that leaves the planner runs in the executor: optimize -> export --to exec ->
hispec-exec run --plan, on the shipped model and the profile measured for it."""
from __future__ import annotations

import json
import subprocess
import sys


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from hispec_sim.cli import main; sys.exit(main())", *argv],
                          capture_output=True, text=True)


def test_exported_plan_runs_in_the_executor(tmp_path):
    best = tmp_path / "best.json"
    run_plan = tmp_path / "run.json"
    assert _cli("optimize", "--profile", "cpu_hispec_tiny", "--out", str(best)).returncode == 0
    r = _cli("export", "--plan", str(best), "--to", "exec", "--out", str(run_plan))
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-c", "import sys; from hispec_exec.cli import main; sys.exit(main())",
                        "run", "--plan", str(run_plan), "--prompts", "1", "--max-new-tokens", "24", "--check", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["plan"] == json.loads(best.read_text())
    assert out["identical_to_autoregressive"] is True
