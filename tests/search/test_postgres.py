"""Two workers on one PostgreSQL-backed study: a REAL local server in a temp dir.

Skipped only where PostgreSQL's binaries are absent AND not in CI (CI=true fails instead)."""
from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from factories import make_profile
from hispec_sim.evaluate import Setting, score
from hispec_sim.schema import Plan, save_profile

REPO = Path(__file__).resolve().parents[2]


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    bindir = _bindir()
    if bindir is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("PostgreSQL binaries not found (run scripts/test-deps.sh); CI must run this test")
        pytest.skip("PostgreSQL binaries not found (scripts/test-deps.sh installs them)")
    root = tempfile.mkdtemp(prefix="hispec-pg-", dir="/tmp")
    as_user = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as nobody in a dir nobody owns
        import pwd

        nobody = pwd.getpwnam("nobody")
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
        as_user = ["runuser", "-u", "nobody", "--"]
    data, port = os.path.join(root, "data"), _free_port()
    run = lambda *cmd: subprocess.run(as_user + list(cmd), check=True, capture_output=True, text=True, timeout=120)
    started = False
    try:
        run(str(bindir / "initdb"), "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8",
            "--locale=C")  # not the shell's: a locale the machine lacks would stop initdb
        run(str(bindir / "pg_ctl"), "-D", data, "-l", os.path.join(root, "log"), "-w", "-t", "60", "start",
            "-o", f"-h 127.0.0.1 -p {port} -k {root} -F")
        started = True
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "studies")
        yield f"postgresql://postgres@127.0.0.1:{port}/studies"
    finally:
        if started:
            subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow  # end to end: a real PostgreSQL server and five worker processes
def test_two_workers_share_one_postgres_study(postgres_url, tmp_path):
    profile = make_profile(layers=16)
    save_profile(profile, tmp_path / "p.json")
    cmd = [sys.executable, "-m", "hispec_sim.cli", "optimize", "--profile", str(tmp_path / "p.json"), "--search", "optuna",
           "--depth", "1-4", "--storage", postgres_url, "--study-name", "shared", "--json"]
    # the study is created by a first short run, then two machines' worth of workers join it at once
    # the checkout under test, whatever is installed (the workers run in tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    first = subprocess.run(cmd + ["--trials", "4", "--seed", "0"], capture_output=True, text=True, timeout=120, env=env)
    assert first.returncode == 0, first.stderr
    procs = [subprocess.Popen(cmd + ["--trials", "8", "--seed", str(i + 1)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=tmp_path, env=env) for i in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    # and one call with two worker processes
    both = subprocess.run(cmd + ["--trials", "6", "--workers", "2"], capture_output=True, text=True, timeout=180,
                          env=env)
    assert both.returncode == 0, both.stderr
    assert json.loads(both.stdout)["study"]["trials"] == 4 + 16 + 6

    trials = optuna.load_study(study_name="shared", storage=postgres_url.replace("postgresql://", "postgresql+psycopg2://")).trials
    assert len(trials) == 26 and [t.number for t in trials] == list(range(26))  # each trial exactly once
    assert all(t.state == TrialState.COMPLETE for t in trials)
    setting = Setting(profile)
    for t in trials:  # every stored number is the analytic model's
        plan = Plan.model_validate(t.user_attrs["plan"])
        assert t.values[0] == pytest.approx(score(setting, [plan])[0].tokens_per_second, rel=1e-12)
