"""Benchmark: the serving simulator's prefill cache (StepCost.prefill_linear_at), side by side.

Runs `serving.simulate_arrays` on cpu_hispec_tiny (10,000 Poisson requests at 30 req/s,
max batch 64, synchronous; two adaptive plans and a fixed 3-level one) with the cache
disabled and enabled, alternately, twice each, and prints the CPU seconds and whether
the runs are identical.

    python tests/bench/bench_prefill_cache.py
"""
import sys
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))  # this folder's sibling bench_serve_sim
from bench_serve_sim import poisson_requests
from hispec_sim import schema, serving

class NoCache(dict):
    def get(self, k, d=None):
        return None
    def __setitem__(self, k, v):
        pass

prof = schema.load_profile("cpu_hispec_tiny")
table, acc, L = prof.table(), prof.workload(), prof.model.num_layers
arr, pl, ol = poisson_requests(30.0, 10000, "uniform:64:512")
lim = schema.ServeLimits(max_batch=64)
orig = serving.StepCost.__init__
def patched(self, *a, **k):
    orig(self, *a, **k)
    if CACHE_OFF[0]:
        self.prefill_linear_at = NoCache()
serving.StepCost.__init__ = patched
CACHE_OFF = [False]
for kw in (dict(levels=[2, 16], propose=6, draft_confidence=0.3), dict(levels=[1, 4, 16], propose=3, windows=[4], draft_confidence=0.5, escalate_confidence=[0.5]), dict(levels=[2, 8, 16], propose=2, windows=[3])):
    plan = schema.Plan(**kw, batching="synchronous")
    res = {}
    for off in (True, False, True, False):
        CACHE_OFF[0] = off
        c = time.process_time()
        run = serving.simulate_arrays(table, L, acc, plan, arr, pl, ol, lim, seed=0)
        res.setdefault(off, []).append((time.process_time() - c, float(run.last_ms.sum())))
    print(plan.describe(), "CPU s without cache", [round(x[0], 2) for x in res[True]], "with", [round(x[0], 2) for x in res[False]],
          "identical:", res[True][0][1] == res[False][0][1], flush=True)
