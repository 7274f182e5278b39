"""A search worker for the subprocess tests: `python _worker.py URL STUDY TRIALS SEED [SLEEP | hang=N,MARKER]`.

SLEEP slows every trial down (seconds). hang=N,MARKER completes N trials, then inside trial
N+1 (RUNNING in the study, its first heartbeat recorded) writes the file MARKER and waits to
be killed: a kill after the marker appears lands mid-trial, deterministically."""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from factories import make_profile  # noqa: E402

import hispec_sim.search as search  # noqa: E402
from hispec_sim.evaluate import Setting  # noqa: E402

url, name, trials, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
arg = sys.argv[5] if len(sys.argv) > 5 else "0"
if arg.startswith("hang="):
    after, marker = arg[len("hang="):].split(",", 1)
    real_hang, calls = search.evaluate_trial, [0]

    def heartbeat_recorded() -> bool:
        """The RUNNING trial's first heartbeat is in the storage: Optuna writes it from a thread,
        and a trial killed before it never goes stale (a marker written earlier would race it)."""
        import sqlite3

        con = sqlite3.connect(url[len("sqlite:///"):], timeout=30)
        try:
            return con.execute("SELECT COUNT(*) FROM trial_heartbeats WHERE trial_id = "
                               "(SELECT MAX(trial_id) FROM trials WHERE state = 'RUNNING')").fetchone()[0] > 0
        finally:
            con.close()

    def hang(ev, plan, tp):
        calls[0] += 1
        if calls[0] > int(after):
            while not heartbeat_recorded():
                time.sleep(0.05)
            Path(marker).write_text("in trial\n")
            while True:  # inside a RUNNING trial until SIGKILL (heartbeats continue meanwhile)
                time.sleep(60)
        return real_hang(ev, plan, tp)

    search.evaluate_trial = hang
    arg = "0"
pause = float(arg)
if pause:
    real = search.evaluate_trial

    def slow(ev, plan, tp):
        time.sleep(pause)
        return real(ev, plan, tp)

    search.evaluate_trial = slow
r = search.optuna_search(Setting(make_profile(layers=16)), trials=trials, seed=seed, storage=url, study_name=name,
                         depth=(1, 4), heartbeat=1, grace=2)
print(json.dumps(r.study))
