"""A search worker for the subprocess tests: `python _worker.py URL STUDY TRIALS SEED [SLEEP]`.

SLEEP slows every trial down (seconds) so that a kill lands mid-trial."""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from factories import make_profile  # noqa: E402

import hispec_sim.search as search  # noqa: E402
from hispec_sim.evaluate import Setting  # noqa: E402

url, name, trials, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
if pause:
    real = search.evaluate_trial

    def slow(ev, plan, tp):
        time.sleep(pause)
        return real(ev, plan, tp)

    search.evaluate_trial = slow
r = search.optuna_search(Setting(make_profile(layers=16)), trials=trials, seed=seed, storage=url, study_name=name,
                         depth=(1, 4), heartbeat=1, grace=2)
print(json.dumps(r.study))
