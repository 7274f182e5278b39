"""A worker killed with SIGKILL mid-trial loses no completed trial; the study continues."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

WORKER = Path(__file__).resolve().parent / "_worker.py"


def _states(url, name):
    try:
        return optuna.load_study(study_name=name, storage=url).trials
    except KeyError:
        return []


def test_sigkill_mid_trial_then_resume(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    marker = tmp_path / "in_trial"
    # 4 trials complete, then the 5th waits inside its objective (RUNNING) until killed
    proc = subprocess.Popen([sys.executable, str(WORKER), url, "k", "200", "5", f"hang=4,{marker}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300  # only a bound on a slow machine; no timing decides the outcome
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the worker never reached its 5th trial"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None and not marker.exists():
            proc.kill()
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    before = _states(url, "k")
    done_before = {t.number: (t.params, t.values) for t in before if t.state == TrialState.COMPLETE}
    assert len(done_before) == 4 and [t.state for t in before][-1] == TrialState.RUNNING  # killed mid-trial

    time.sleep(2.5)  # past the heartbeat grace period (2 s): the orphan is stale
    out = subprocess.run([sys.executable, str(WORKER), url, "k", "6", "5"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    study = json.loads(out.stdout.splitlines()[-1])
    after = _states(url, "k")
    for n, (params, values) in done_before.items():  # every completed trial is still there, unchanged
        assert after[n].state == TrialState.COMPLETE and (after[n].params, after[n].values) == (params, values)
    assert not any(t.state == TrialState.RUNNING for t in after)  # the orphan was failed ...
    orphan = [t for t in after if t.state == TrialState.FAIL]
    assert len(orphan) == 1
    retried = [t for t in after if t.system_attrs.get("failed_trial") == orphan[0].number]
    assert retried and retried[0].params == orphan[0].params  # ... and retried with its parameters
    assert study["continued"] is True and study["trials"] == len(done_before) + 6
    assert sum(t.state == TrialState.COMPLETE for t in after) == len(done_before) + 6


def test_two_commands_on_one_new_storage_at_once(tmp_path):
    """Two processes that create the same study storage at the same moment and then share the
    study: both finish, every trial is stored once and COMPLETE (SQLite's set-up was raced, a
    WAITING seed trial was run by both, and one process died on it)."""
    url = f"sqlite:///{tmp_path / 'both.db'}"
    procs = [subprocess.Popen([sys.executable, str(WORKER), url, "shared", "40", str(seed)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        assert json.loads(out)["trials_this_run"] == 40  # its own, not the other's too
    trials = _states(url, "shared")
    assert len(trials) == 80 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.number for t in trials}) == 80


def test_a_signal_to_the_command_stops_its_workers(tmp_path):
    """SIGTERM to the command's PID alone (`kill PID`, `docker stop`) with --workers 2: the
    workers stop after their running trial, the command exits 143 in one line; it used to
    wait for every trial of theirs, and a Ctrl-C sent so was lost."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    url = f"sqlite:///{tmp_path / 's.db'}"
    proc = subprocess.Popen([sys.executable, "-m", "hispec_sim.cli", "optimize", "--profile", "cpu_hispec_tiny",
                             "--search", "optuna", "--trials", "5000", "--workers", "2", "--storage", url,
                             "--study-name", "w", "--out", str(tmp_path / "p.json")], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    deadline = time.time() + 120
    while sum(t.state == TrialState.COMPLETE for t in _states(url, "w")) < 20:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and err.strip().splitlines() == [
        "hispec-sim: terminated by SIGTERM (the study keeps its finished trials in its --storage; nothing else written)"]
    trials = _states(url, "w")
    assert 20 <= len(trials) < 5000 and not (tmp_path / "p.json").exists()
    time.sleep(1)  # the workers are gone: nothing more is added
    assert len(_states(url, "w")) == len(trials)
