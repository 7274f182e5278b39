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
    proc = subprocess.Popen([sys.executable, str(WORKER), url, "k", "200", "5", "0.2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 60
    try:
        while time.time() < deadline:
            trials = _states(url, "k")
            done = [t for t in trials if t.state == TrialState.COMPLETE]
            if len(done) >= 4 and trials[-1].state == TrialState.RUNNING:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the worker did not get going")
        time.sleep(0.05)  # inside the trial's 0.2 s
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    before = _states(url, "k")
    done_before = {t.number: (t.params, t.values) for t in before if t.state == TrialState.COMPLETE}
    assert len(done_before) >= 4 and any(t.state == TrialState.RUNNING for t in before)  # killed mid-trial

    time.sleep(2.5)  # past the heartbeat grace period: the orphan is stale
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
