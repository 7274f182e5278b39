"""What serialising SQLite transactions costs a study: Optuna on cpu_hispec_tiny, 200 trials,
one process, with BEGIN IMMEDIATE (search._sqlite_wal, which two commands sharing a study
need) and with the driver's deferred BEGIN (before), interleaved, 3 runs each.

    python tests/bench/bench_sqlite_begin.py      # 2026-12-01, 2-core Xeon VM: x1.064 (8.70 vs 8.17 s)
"""
import tempfile
import time

import hispec_sim.search as search
from hispec_sim.evaluate import Setting
from hispec_sim.schema import load_profile

new = search._sqlite_wal


def old(engine):
    """The WAL set-up without BEGIN IMMEDIATE."""
    from sqlalchemy import event

    def on_connect(c, _r):
        cur = c.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    event.listen(engine, "connect", on_connect)
    engine.dispose()


setting = Setting(load_profile("cpu_hispec_tiny"))
res = {"immediate": [], "deferred": []}
for rep in range(3):
    for name, fn in (("immediate", new), ("deferred", old)):
        search._sqlite_wal = fn
        d = tempfile.mkdtemp()
        t = time.perf_counter()
        search.optuna_search(setting, trials=200, seed=rep, storage=f"sqlite:///{d}/s.db", study_name="b")
        res[name].append(time.perf_counter() - t)
        search.close_storages()
for k, v in res.items():
    print(k, " ".join(f"{x:.2f}" for x in v), f"median {sorted(v)[1]:.2f} s")
print("ratio immediate/deferred (medians):", f"{sorted(res['immediate'])[1] / sorted(res['deferred'])[1]:.3f}")
