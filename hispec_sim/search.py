"""Optuna search over chain plans: deep chains, batch and tensor-parallel choices,
Monte-Carlo objectives, persistent and distributed studies.

Everything Optuna-specific lives in this file and stays small: a `Space` that turns a
trial into a plan, an objective, a sampler factory, and `optuna_search`, which opens the
storage, checks the study belongs to this profile, runs the worker(s) and builds a
`SearchResult` (the `optimize --json` contract) with `study` and, for several
objectives, `pareto` added.

Search space (every trial is a valid plan, no trial is ever pruned or rejected); the plan
parameters carry the depth in their name (k3_exit_top, k3_gap_1, k3_propose, k3_window_1):
  depth      int in [min_depth, max_depth]      chain length k (1 = autoregressive)
  exit_top   int in [0, n-1]                    index of the exit right below the full model
                                                among the n measured exits below the last layer
  gap_j      int in [1, n-1], j = k-2..1        index distance down to the next lower exit
  propose    int in [1, max_propose], log scale (k >= 2)
  window_j   int in [1, max_window], j=1..k-2   (k >= 3)
  batch, tp  categorical                        only when several choices are given
  draft_confidence  float in [0, 1]             (k >= 2, adaptive only: `optimize --search optuna --adaptive`)
  escalate_j float in [0, 1], j=1..k-2          (k >= 3, adaptive only) the intermediate levels' thresholds
An adaptive study scores every plan by hispec_sim.adaptive over the workload's request distribution
(adaptive_tokens_per_second: exact analytic for depth 2 to 4, trace replay deeper).
With m = k-1 exits below the full model, idx_m = max(exit_top, m-1) and idx_j =
max(idx_{j+1} - gap_j, j-1). Since idx_{j+1} >= j, the clip never lifts idx_j above
idx_{j+1}-1: exits are strictly increasing and inside the measured set for EVERY parameter
value, and every valid chain is reachable (exit_top = idx_m, gap_j = idx_{j+1} - idx_j).
Each depth has its own parameters: the best single-level exit and the best 3-level
intermediate exit are different layers, and TPE sharing one density across depths lands
between them (median at 100 trials 0.9896 of the optimum with shared names, 0.9921 per
depth, 10 seeds, tests/bench/bench_search.py). Several parameter vectors can map to one plan (the clip); that
costs a duplicate trial, never an invalid one. The depth itself is assigned by trial
number (DepthScheduled), not sampled.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cli_common import SEED, float_in, int_in, name_text
from .evaluate import Scored, SearchResult, Setting, exhaustive, exhaustive_arrays, paper_default, ranked_plans, score
from .schema import (MAX_CYCLES, MAX_NAME, MAX_STREAMS, MAX_TRIALS, Plan, Profile, autoregressive_plan, check_name,
                     decimals, first_repeat, rounded, strict_int)

DEFAULT_STORAGE = "sqlite:///hispec-studies.db"
SAMPLERS = ("tpe", "cmaes", "random", "nsga2")
OBJECTIVES = {"throughput": "maximize", "latency": "minimize", "p99": "minimize"}
OBJECTIVE_KINDS = ("analytic", "mc")
HEARTBEAT_S = 2  # a worker's RUNNING trial refreshes its heartbeat this often ...
GRACE_S = 10  # ... and is failed (then retried once) by the next worker after this long without one


# --------------------------------------------------------------------------- space


@dataclass(frozen=True)
class Space:
    exits: tuple[int, ...]  # measured exits below the full model, increasing
    num_layers: int
    min_depth: int = 1
    max_depth: int = 4
    max_propose: int = 8
    max_window: int = 16
    batches: tuple[int, ...] = (1,)
    tps: tuple[int | None, ...] = (None,)
    adaptive: bool = False  # confidence thresholds join the space (continuous, [0, 1])

    def suggest(self, trial) -> tuple[Plan, int | None]:
        n = len(self.exits)
        k = trial.suggest_int("depth", self.min_depth, self.max_depth) if self.max_depth > self.min_depth else self.min_depth
        batch = trial.suggest_categorical("batch", list(self.batches)) if len(self.batches) > 1 else self.batches[0]
        tp = trial.suggest_categorical("tp", list(self.tps)) if len(self.tps) > 1 else self.tps[0]
        if k == 1:
            return autoregressive_plan(self.num_layers, batch), tp
        m = k - 1
        name = lambda p: f"k{k}_{p}"  # per depth: a 2-level chain's best exit is not a 3-level chain's
        idx = [max(trial.suggest_int(name("exit_top"), 0, n - 1), m - 1)]  # the exit right below the full model
        for j in range(m - 1, 0, -1):  # then downwards: idx_j = max(idx_{j+1} - gap_j, j - 1)
            idx.insert(0, max(idx[0] - trial.suggest_int(name(f"gap_{j}"), 1, max(n - 1, 1)), j - 1))
        propose = trial.suggest_int(name("propose"), 1, self.max_propose, log=True)
        windows = [trial.suggest_int(name(f"window_{j}"), 1, self.max_window) for j in range(1, k - 1)]
        levels = [self.exits[i] for i in idx] + [self.num_layers]
        thresholds = {}
        if self.adaptive:
            thresholds["draft_confidence"] = trial.suggest_float(name("draft_confidence"), 0.0, 1.0) or None
            if k >= 3:
                thresholds["escalate_confidence"] = [trial.suggest_float(name(f"escalate_{j}"), 0.0, 1.0) for j in range(1, k - 1)]
        return Plan(levels=levels, propose=propose, windows=windows, batch=batch, **thresholds), tp

    def params(self, plan: Plan, tp: int | None) -> dict | None:
        """The trial parameters that give `plan` (for enqueueing), None if outside the space."""
        k = plan.depth
        if not (self.min_depth <= k <= self.max_depth) or plan.batch not in self.batches or tp not in self.tps:
            return None
        if plan.propose > self.max_propose or any(w > self.max_window for w in plan.windows):
            return None
        if plan.adaptive and not self.adaptive:
            return None
        if any(e not in self.exits for e in plan.levels[:-1]) or plan.levels[-1] != self.num_layers:
            return None
        out: dict = {}
        if self.max_depth > self.min_depth:
            out["depth"] = k
        if len(self.batches) > 1:
            out["batch"] = plan.batch
        if len(self.tps) > 1:
            out["tp"] = tp
        if k == 1:
            return out
        idx = [self.exits.index(e) for e in plan.levels[:-1]]
        out[f"k{k}_exit_top"] = idx[-1]
        out.update({f"k{k}_gap_{j}": idx[j] - idx[j - 1] for j in range(1, k - 1)})
        out[f"k{k}_propose"] = plan.propose
        out.update({f"k{k}_window_{j}": w for j, w in enumerate(plan.windows, 1)})
        if self.adaptive:
            out[f"k{k}_draft_confidence"] = float(plan.draft_confidence or 0.0)
            out.update({f"k{k}_escalate_{j}": float(t) for j, t in enumerate(plan.escalate_confidence or [0.0] * (k - 2), 1)})
        return out

    def as_dict(self) -> dict:
        return {"depth": [self.min_depth, self.max_depth], "max_propose": self.max_propose, "max_window": self.max_window,
                "batch": list(self.batches), "tp": list(self.tps), **({"adaptive": True} if self.adaptive else {})}


MAX_SEARCH_DEPTH = 8  # levels of the deepest chain the Optuna space holds


def make_space(setting: Setting, depth: tuple[int, int] = (1, 4), max_propose: int = 8, max_window: int = 16,
               batches=None, tps=None, adaptive: bool = False) -> Space:
    lo, hi = depth
    if not (1 <= lo <= hi <= MAX_SEARCH_DEPTH):
        raise ValueError(f"depth: need 1 <= min <= max <= {MAX_SEARCH_DEPTH}, got {lo}..{hi}")
    if not (1 <= max_propose <= 64 and 1 <= max_window <= 256):
        raise ValueError("max_propose must be in [1, 64] and max_window in [1, 256]")
    exits = tuple(e for e in setting.acceptance.exits if e < setting.num_layers)
    if lo - 1 > len(exits):
        raise ValueError(f"depth: a {lo}-level chain needs {lo - 1} exits below the full model; the workload measured {len(exits)}")
    hi = min(hi, len(exits) + 1)
    batches = tuple(batches) if batches else (setting.batch,)
    for b in batches:
        if not isinstance(b, int) or not 1 <= b <= 4096:
            raise ValueError(f"batch: must be in [1, 4096], got {b}")
    tps = tuple(tps) if tps else (setting.tp,)
    for tp in tps:
        setting.profile.table(tp, setting.stack)  # raises "latency: no table for tp=..."
    for field, xs in (("batch", batches), ("tp", tps)):
        repeat = first_repeat(xs)
        if repeat is not None:
            raise ValueError(f"{field}: choices must be distinct, {repeat} is given twice")
    return Space(exits, setting.num_layers, lo, hi, max_propose, max_window, batches, tps, adaptive)


# --------------------------------------------------------------------------- objective


def single_level_sweep(setting: Setting, max_propose: int = 8) -> Scored:
    """Best single-level plan (every measured exit x propose 1..max_propose): the sweep
    evaluate.exhaustive makes, re-scored through score()."""
    best = ranked_plans(setting, exhaustive_arrays(setting, max_propose, 1), 1)["single_level"]
    return score(setting, best or [autoregressive_plan(setting.num_layers, setting.batch)])[0]


@dataclass
class Evaluator:
    """Scores one plan for a trial: analytic, or Monte-Carlo with a fixed seed (the same
    seed for every trial: common random numbers, so plans are compared on equal draws)."""

    profile: Profile
    workload: str
    stack: str
    context: int | None
    objective: str = "analytic"
    objectives: tuple[str, ...] = ("throughput",)
    seed: int = 0
    streams: int = 1024
    cycles: int = 32
    adaptive: bool = False  # score by hispec_sim.adaptive (over the request distribution)
    _settings: dict = field(default_factory=dict)

    def setting(self, tp, batch) -> Setting:
        key = (tp, batch)
        if key not in self._settings:
            self._settings[key] = Setting(self.profile, self.workload, tp, self.stack, batch, self.context)
        return self._settings[key]

    def metrics(self, plan: Plan, tp) -> dict:
        s = self.setting(tp, plan.batch)
        if self.adaptive:
            import optuna

            from .adaptive import adaptive_scored
            from .montecarlo import SimulationTooLarge

            try:
                sc = adaptive_scored(s, plan)
            except SimulationTooLarge as e:  # as the Monte-Carlo below
                raise optuna.TrialPruned(str(e)) from None
            return {"tokens_per_second": sc.tokens_per_second, "latency_ms_per_token": sc.latency_ms}
        sc = score(s, [plan])[0]
        out = {"tokens_per_second": sc.tokens_per_second, "latency_ms_per_token": sc.latency_ms}
        if self.objective == "mc" or "p99" in self.objectives:
            import optuna

            from .montecarlo import SimulationTooLarge

            try:
                r = self.simulate(s, plan)
            except SimulationTooLarge as e:  # a plan too long to simulate is left out of the search, not its end
                raise optuna.TrialPruned(str(e)) from None
            out.update({"mc_tokens_per_second": r.tokens_per_second, "latency_ms_p99": r.latency_ms_p99,
                        "latency_ms_p50": r.latency_ms_p50, "trace_replay": s.acceptance.traces is not None})
            if self.objective == "mc":
                out["latency_ms_per_token_mc"] = 1000.0 * plan.batch / r.tokens_per_second
        return out

    def simulate(self, s: Setting, plan: Plan):
        """The trials' Monte-Carlo of one plan: trace replay where the workload has traces,
        the same seed for every plan (common random numbers)."""
        from .montecarlo import simulate

        return simulate(s.cost_for([plan]), s.agreement, plan, streams=self.streams, cycles=self.cycles,
                        seed=self.seed, replay=s.acceptance.traces is not None)

    def simulated(self, sc: Scored, tp) -> Scored:
        """sc scored by the trials' Monte-Carlo (simulate), its analytic figure kept beside."""
        r = self.simulate(self.setting(tp, sc.plan.batch), sc.plan)
        return Scored(sc.plan, r.tokens_per_second, 1000.0 * sc.plan.batch / r.tokens_per_second,
                      r.tokens_per_full_forward, r.acceptance or sc.acceptance, sc.tokens_per_second)

    def values(self, m: dict) -> list[float]:
        mc = self.objective == "mc"
        pick = {"throughput": m["mc_tokens_per_second"] if mc else m["tokens_per_second"],
                "latency": m["latency_ms_per_token_mc"] if mc else m["latency_ms_per_token"],
                "p99": m.get("latency_ms_p99")}
        return [float(pick[o]) for o in self.objectives]


# --------------------------------------------------------------------------- storage


def _redact(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def normalise_url(url: str) -> str:
    """postgresql:// means psycopg (3) to SQLAlchemy 2.1; use psycopg2 where only it is installed."""
    if isinstance(url, str) and url.startswith(("postgresql://", "postgres://")):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def open_storage(url: str, heartbeat: int = HEARTBEAT_S, grace: int = GRACE_S):
    """An Optuna RDB storage with heartbeats: a trial left RUNNING by a killed worker is
    failed by the next worker after `grace` seconds and retried once; completed trials
    are committed one by one, so none is lost."""
    import optuna
    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"storage: expected an Optuna RDB URL such as {DEFAULT_STORAGE} or "
                         f"postgresql://user:pass@host/db, got {url!r}")
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    engine_kwargs: dict = {"pool_pre_ping": True}
    files = []  # a SQLite storage's database and journals
    if scheme == "sqlite":
        from .cli_common import sqlite_files

        files = sqlite_files(url)
        if files and not files[0].parent.exists():
            raise ValueError(f"storage: folder {files[0].parent} of {url} does not exist")
        engine_kwargs["connect_args"] = {"timeout": 60}
    elif scheme == "postgresql":
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    with warnings.catch_warnings(), _setting_up(files[0] if files else None) as created:
        warnings.simplefilter("ignore")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            storage = RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat, grace_period=grace,
                                 failed_trial_callback=RetryFailedTrialCallback(max_retry=1))
        except Exception as e:  # bad dialect, driver missing, unreachable server, bad credentials, disk full
            if created:  # nothing half-written: no empty database left behind
                for f in files:
                    with contextlib.suppress(OSError):  # (a read-only mount refuses even a missing file's unlink)
                        f.unlink(missing_ok=True)
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"storage: cannot open {_redact(url)} ({type(e).__name__}: {msg})") from None
    if files and "mode=memory" not in url:
        _sqlite_wal(storage.engine)  # a file (an in-memory database would not survive the reconnect)
    _OPEN.append(storage)
    return storage


_OPEN: list = []  # storages this process opened: closed when the command ends, however it ends


def close_storages() -> None:
    """Close every storage this process opened: the last SQLite connection to close folds
    the write-ahead log back into the file and removes its -wal/-shm side files."""
    while _OPEN:
        _OPEN.pop().engine.dispose()


@contextlib.contextmanager
def _setting_up(db: Path | None):
    """Around the set-up of a storage: for a SQLite file, an exclusive lock on it, so that
    two commands opening one new file at once do not both create its tables (one failed,
    and removed the file the other had just made). Yields whether this call created the
    file. Without flock (not POSIX) or a file it cannot open, no lock: SQLite says why."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        fcntl = None
    if db is None or fcntl is None:
        yield db is not None and not db.exists()
        return
    try:
        fd, created = os.open(db, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        try:
            fd, created = os.open(db, os.O_RDONLY), False
        except OSError:
            yield False
            return
    except OSError:  # a read-only folder, ...: SQLite's own message
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield created
    finally:
        os.close(fd)  # and with it the lock


def _sqlite_wal(engine) -> None:
    """SQLite in WAL mode with synchronous=NORMAL: a commit no longer waits for an fsync
    (2x faster studies here), and a committed trial still survives a killed worker (the
    write-ahead log is in the OS cache; only a power loss can drop the last commits, never
    corrupt the file). Transactions are serialised across processes (BEGIN IMMEDIATE)."""
    from sqlalchemy import event

    def on_connect(dbapi_connection, _record):
        cur = dbapi_connection.cursor()
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        finally:
            cur.close()
        dbapi_connection.isolation_level = None  # the driver's own deferred BEGIN off: on_begin's instead

    def on_begin(connection):
        # Every transaction takes the write lock when it starts: with a deferred BEGIN two
        # processes on one study both read a trial WAITING and both ran it (Optuna then fails
        # to store the second), or one failed on a snapshot gone stale before its write.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)
    engine.dispose()  # connections opened while the storage was set up reconnect with the pragmas


def _study_key(ev: Evaluator, space: Space) -> dict:
    prof = ev.profile.model_dump_json(exclude_none=True).encode()
    return {"profile": ev.profile.name, "profile_sha256": hashlib.sha256(prof).hexdigest()[:16],
            "workload": ev.workload, "stack": ev.stack, "context": ev.context, "objective": ev.objective,
            "objectives": list(ev.objectives), "space": space.as_dict(),
            **({"mc": {"streams": ev.streams, "cycles": ev.cycles, "seed": ev.seed}} if ev.objective == "mc" or "p99" in ev.objectives else {})}


def default_study_name(key: dict) -> str:
    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    return f"{key['profile']}-{key['workload']}-{h}"


def _check_existing(storage, name: str, key: dict) -> bool:
    """True if the study exists (and belongs to this search); raises ValueError otherwise.
    Reads only: nothing is written when the study belongs to something else."""
    try:
        sid = storage.get_study_id_from_name(name)
    except KeyError:
        return False
    attrs = storage.get_study_user_attrs(sid).get("hispec")
    if attrs is None:
        raise ValueError(f"study-name: study {name!r} exists but was not made by hispec-sim; choose another --study-name")
    if attrs.get("profile") != key["profile"] or attrs.get("profile_sha256") != key["profile_sha256"]:
        what = "profile" if attrs.get("profile") != key["profile"] else "profile version"
        raise ValueError(f"study-name: study {name!r} belongs to another {what} ({attrs.get('profile')!r}, "
                         f"{attrs.get('profile_sha256')}); choose another --study-name")
    for f in key:
        if attrs.get(f) != key[f]:
            raise ValueError(f"study-name: study {name!r} was made with {f}={json.dumps(attrs.get(f))}, this run has "
                             f"{f}={json.dumps(key[f])}; choose another --study-name")
    return True


# --------------------------------------------------------------------------- samplers and workers


def make_sampler(name: str, seed: int | None, n_objectives: int):
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _make_sampler(optuna, name, seed, n_objectives)


def _make_sampler(optuna, name: str, seed: int | None, n_objectives: int):
    if name == "tpe":
        if n_objectives > 1:
            return optuna.samplers.NSGAIISampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        if n_objectives > 1:
            raise ValueError("sampler: cmaes is single-objective; use tpe (NSGA-II), nsga2 or random with several objectives")
        try:
            import cmaes  # noqa: F401  (Optuna's CmaEsSampler needs it)
        except ImportError:
            raise ValueError("sampler: cmaes needs the 'cmaes' package (pip install cmaes)") from None
        # CMA-ES steers the numeric parameters present in every trial: with one depth
        # (--depth K-K) all plan parameters; with several, the per-depth ones and the
        # categorical ones fall back to the independent (random) sampler.
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False,
                                            independent_sampler=optuna.samplers.RandomSampler(seed=seed))
    raise ValueError(f"sampler: unknown {name!r}; known: {', '.join(SAMPLERS)}")


def depth_cycle(lo: int, hi: int) -> list[int]:
    """The repeating order in which trials get their chain depth: depth k >= 2 has 2(k-1)
    free parameters and gets a share of trials proportional to it (depth 2: 1, 3: 2, 4: 3,
    interleaved); depth 1 is a single plan and only runs as a seed trial."""
    ds = [d for d in range(max(lo, 2), hi + 1)] or [lo]
    if len(ds) == 1:
        return ds
    slots = sorted(((i + 0.5) / max(d - 1, 1), -d, d) for d in ds for i in range(max(d - 1, 1)))
    return [d for _, _, d in slots]


class DepthScheduled:
    """Wraps any Optuna sampler: a trial's `depth` is fixed by its number (depth_cycle), the
    base sampler draws everything else. Left to itself, TPE locks onto the first depth that
    scores well (2 levels: a quarter of random single-level plans are near their optimum,
    about one in a thousand 3-level plans beats them), so stratifying the depth is what lets
    it find deeper optima; see tests/bench/bench_search.py."""

    def __init__(self, base, cycle: list[int]):
        self.base, self.cycle = base, cycle

    def __getattr__(self, name):
        return getattr(self.base, name)

    def infer_relative_search_space(self, study, trial):
        return {k: v for k, v in self.base.infer_relative_search_space(study, trial).items() if k != "depth"}

    def sample_relative(self, study, trial, search_space):
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        if param_name == "depth":
            return self.cycle[trial.number % len(self.cycle)]
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self.base.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self):
        self.base.reseed_rng()


def _worker_seed(seed: int, worker: int, existing: int) -> int:
    """Sampler seed of one worker: differs per worker and per continuation (a continued
    study must not replay the random draws of the first run), reproducible otherwise."""
    return int(np.random.SeedSequence([seed, worker, existing]).generate_state(1)[0])


def _run_worker(spec: dict, worker: int, n_trials: int | None, timeout: float | None, progress: bool, storage=None) -> int:
    """Run trials on the study until n_trials or timeout; returns how many this worker
    completed (other processes may add trials to the same study meanwhile)."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ev = Evaluator(Profile.model_validate_json(spec["profile"]), spec["workload"], spec["stack"], spec["context"],
                   spec["objective"], tuple(spec["objectives"]), spec["seed"], spec["streams"], spec["cycles"],
                   spec.get("adaptive", False))
    space = Space(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["space"].items()})
    storage = storage or open_storage(spec["storage"], spec["heartbeat"], spec["grace"])
    existing = len(storage.get_all_trials(storage.get_study_id_from_name(spec["study_name"]), deepcopy=False))
    sampler = make_sampler(spec["sampler"], _worker_seed(spec["seed"], worker, existing), len(ev.objectives))
    if space.max_depth > space.min_depth:
        sampler = DepthScheduled(sampler, depth_cycle(space.min_depth, space.max_depth))
    study = optuna.load_study(study_name=spec["study_name"], storage=storage, sampler=sampler)

    def objective(trial):
        plan, tp = space.suggest(trial)
        m = evaluate_trial(ev, plan, tp)
        trial.set_user_attr("plan", plan.model_dump())
        trial.set_user_attr("tp", tp)
        trial.set_user_attr("metrics", m)
        vals = ev.values(m)
        return vals[0] if len(vals) == 1 else vals

    completed = []
    quiet_aborted_trials()
    _STORAGE_ERRORS.clear()  # only this search's
    with warnings.catch_warnings(), stop_on_interrupt(study):
        warnings.simplefilter("ignore")
        try:
            study.optimize(objective, n_trials=n_trials, timeout=timeout, show_progress_bar=progress,
                           gc_after_trial=False, callbacks=[lambda _s, t: completed.append(t.number)
                                                            if t.state == optuna.trial.TrialState.COMPLETE else None])
        except Exception as e:
            cause = _storage_failure(e) or (_STORAGE_ERRORS[-1] if _STORAGE_ERRORS else None)
            if cause is None:
                raise
            raise ValueError(f"storage: writing to {_redact(spec['storage'])} failed ({cause}); "
                             "the trials stored before it are kept") from None
    return len(completed)


_STORAGE_ERRORS: list[str] = []  # failed storage writes this process saw outside the main thread's own error


class _QuietAbortedTrials:
    """logging filter: Optuna logs a trial that an interrupt or a failed storage write stopped
    as a failure with its traceback (and then "failed with value None"); the command says
    `interrupted`, or names the storage's error, in one line instead."""

    def __init__(self):
        self.aborted = False

    def filter(self, record) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        message = record.getMessage()
        cause = _storage_failure(exc) if exc is not None else None
        if cause:
            _STORAGE_ERRORS.append(cause)
        if isinstance(exc, KeyboardInterrupt) or "KeyboardInterrupt" in message or "StorageInternalError" in message \
                or cause:
            self.aborted = True
            return False
        return not (self.aborted and "failed with value None" in message)


def quiet_aborted_trials() -> None:
    """Install _QuietAbortedTrials on Optuna's trial logger, and keep a failed storage write in
    Optuna's heartbeat thread from printing a traceback (the search itself then fails on the
    storage and says so in one line); once per process: every worker."""
    import logging

    logger = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _QuietAbortedTrials) for f in logger.filters):
        logger.addFilter(_QuietAbortedTrials())
    if getattr(threading.excepthook, "__name__", "") != "_quiet_storage_thread":
        previous = threading.excepthook

        def _quiet_storage_thread(args):
            cause = _storage_failure(args.exc_value) if args.exc_value is not None else None
            if cause is None:
                return previous(args)
            _STORAGE_ERRORS.append(cause)

        threading.excepthook = _quiet_storage_thread


def _storage_failure(e: BaseException) -> str | None:
    """The database's own error (disk full, connection lost, ...) when a search failed in a
    storage write, else None. Optuna may replace it on the way out (an AssertionError from
    its clean-up of a trial it could not store), so the whole chain is searched."""
    from sqlalchemy.exc import SQLAlchemyError

    seen, db = set(), None
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, SQLAlchemyError):
            db = e
        e = e.__cause__ or e.__context__
    if db is None:
        return None
    orig = getattr(db, "orig", None) or db
    text = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {text[0]}" if text else type(orig).__name__


@contextlib.contextmanager
def _forwarding_signals(pool):
    """Within: SIGINT, SIGTERM and SIGHUP to this process are passed on to the pool's worker
    processes (each stops after its running trial; a second signal at once: stop_on_interrupt);
    yields the list of signals received."""
    from .entry import TERMINATING, handling, not_ignored

    hit: list[int] = []

    def forward(signum, frame):
        hit.append(signum)
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                os.kill(proc.pid, signum)

    with handling(not_ignored((signal.SIGINT, *TERMINATING)), forward):
        yield hit


@contextlib.contextmanager
def stop_on_interrupt(study):
    """SIGINT (or SIGTERM / SIGHUP) during study.optimize stops the study after the running
    trial, then raises KeyboardInterrupt (entry.Terminated). Raised where it lands, it could
    interrupt the storage mid-write (a SQLite transaction half done: Optuna's clean-up then
    failed or waited on its own lock); this way every trial's state is stored whole. A
    second signal interrupts at once."""
    from .entry import TERMINATING, handling, interrupt, not_ignored

    hit = []

    def handler(signum, frame):
        if hit:
            raise interrupt(signum)
        hit.append(signum)
        try:
            study.stop()
        except RuntimeError:  # not inside a trial or its callbacks yet: nothing to finish
            raise interrupt(signum) from None

    with handling([signal.SIGINT, *not_ignored(TERMINATING)], handler):
        yield
    if hit:
        raise interrupt(hit[0])


def _first_pair(setting: Setting, space: Space) -> tuple[int | None, int]:
    """The (tp, batch) seeded first, so that even one trial answers what `optimize` without
    --tp / --batch lists would: the profile's default tp and batch 1 where the space holds
    them, else the setting's (the lists' first), else the space's first."""
    def pick(preferred, given, choices):
        return preferred if preferred in choices else given if given in choices else choices[0]
    return (pick(setting.profile.default_tp, setting.tp, space.tps), pick(1, setting.batch, space.batches))


def exhaustive_seed(ev: Evaluator, space: Space, setting: Setting) -> list[tuple[Plan, int | None]]:
    """The exhaustive optimum over depth 1-3 (evaluate.exhaustive: what `optimize` returns
    without --search optuna; within a narrower --depth, the best of its ranking and
    baselines the space holds) at _first_pair's tp and batch first, then at every other (tp,
    batch) of the space, as [(plan, tp)]; each the best of its ranking that the space can
    express. A search over tp or batch so starts from each one's optimum (about a second
    each on a100_llama70b)."""
    tp0, b0 = _first_pair(setting, space)
    out = []
    for tp, batch in [(tp0, b0), *((t, b) for t in space.tps for b in space.batches if (t, b) != (tp0, b0))]:
        res = exhaustive(ev.setting(tp, batch), top=10, max_propose=space.max_propose, max_window=space.max_window)
        # the baselines too: a space without 3-level plans (--depth 1-2) starts from the best single-level plan
        ranked = sorted([*res.top, res.best_single_level, res.autoregressive], key=lambda s: -s.tokens_per_second)
        out += [(s.plan, tp) for s in ranked if space.params(s.plan, tp) is not None][:1]
    return out


def evaluate_trial(ev: Evaluator, plan: Plan, tp) -> dict:
    """One trial's metrics (a module-level hook so tests can slow a trial down)."""
    return ev.metrics(plan, tp)


# --------------------------------------------------------------------------- result


@dataclass
class OptunaResult(SearchResult):
    study: dict = field(default_factory=dict)
    pareto: list | None = None
    objective: str = "analytic"
    objectives: tuple[str, ...] = ("throughput",)
    best_metrics: dict = field(default_factory=dict)
    optuna_study: object = field(default=None, repr=False)  # the optuna.Study, for library use

    def as_dict(self) -> dict:
        d = super().as_dict()
        d["search"] = "optuna"
        d["objective"] = self.objective
        d["objectives"] = list(self.objectives)
        d["best"]["trial_metrics"] = _round(self.best_metrics)
        d["study"] = self.study
        if self.pareto is not None:
            d["pareto"] = self.pareto
        return d


def _round(m: dict) -> dict:
    return {k: rounded(v, 4) if isinstance(v, float) else v for k, v in m.items()}


def _plan_of(t) -> tuple[Plan, int | None]:
    return Plan.model_validate(t.user_attrs["plan"]), t.user_attrs.get("tp")


def _build_result(study, ev: Evaluator, space: Space, info: dict, top: int, t0: float) -> OptunaResult:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    if not done:
        raise ValueError("trials: no trial completed (is --timeout too short?)")
    multi = len(ev.objectives) > 1
    if multi:
        front = study.best_trials
        key = lambda t: -t.user_attrs["metrics"]["mc_tokens_per_second" if ev.objective == "mc" else "tokens_per_second"]
        ranked = sorted(front, key=key)
    else:
        sign = -1.0 if OBJECTIVES[ev.objectives[0]] == "maximize" else 1.0
        ranked = sorted(done, key=lambda t: (sign * t.values[0], t.number))
    best_t = ranked[0]
    best_plan, best_tp = _plan_of(best_t)
    setting = ev.setting(best_tp, best_plan.batch)
    unique: dict[str, Plan] = {}
    for t in (ranked if multi else ranked):
        p, tp = _plan_of(t)
        if tp == best_tp and p.batch == best_plan.batch:
            unique.setdefault(p.model_dump_json(), p)
        if len(unique) >= top:
            break
    if space.adaptive:
        from .adaptive import adaptive_scored

        top_scored = [adaptive_scored(setting, p) for p in unique.values()]
    else:
        top_scored = [score(setting, [p])[0] for p in unique.values()]  # one by one: plans of mixed shapes
    ar = score(setting, [autoregressive_plan(setting.num_layers, setting.batch)])[0]
    single = single_level_sweep(setting, space.max_propose)
    paper = score(setting, [paper_default(setting).model_copy(update={"batch": setting.batch})])[0]
    rescored = None
    if ev.objective == "mc" and not space.adaptive:  # the table in the figures the trials were ranked by
        t1 = time.perf_counter()
        top_scored, ar, single, paper = ([ev.simulated(s, best_tp) for s in top_scored],
                                         *(ev.simulated(s, best_tp) for s in (ar, single, paper)))
        from .montecarlo import REQUEST_TOKENS

        replay = setting.acceptance.traces is not None
        by = "trace replay" if replay else "Monte-Carlo"
        how = ("every measured request walked" if replay else
               f"{ev.streams} streams of one {REQUEST_TOKENS}-token request each, seed {ev.seed}"
               if setting.agreement.scenarios is not None else f"{ev.streams} streams x {ev.cycles} cycles, seed {ev.seed}")
        rescored = {"by": by, "seconds": round(time.perf_counter() - t1, 4),
                    "note": f"the objective mc ({by}: {how}) for the ranked plans and the baselines"}
    pareto = None
    if multi:
        pareto = []
        for t in ranked:
            p, tp = _plan_of(t)
            m = t.user_attrs["metrics"]
            mc = ev.objective == "mc" and "mc_tokens_per_second" in m  # the figures the front was drawn in
            entry = {"plan": p.model_dump(), "describe": p.describe(), "family": p.family, "tp": tp, "batch": p.batch,
                     "trial": t.number, **{o: rounded(v, 4) for o, v in zip(ev.objectives, t.values)},
                     "tokens_per_second": rounded(m["mc_tokens_per_second" if mc else "tokens_per_second"], 4),
                     "latency_ms_per_token": rounded(m["latency_ms_per_token_mc" if mc else "latency_ms_per_token"], 4)}
            if mc:
                entry["analytic_tokens_per_second"] = rounded(m["tokens_per_second"], 4)
            if "latency_ms_p99" in m:
                entry["latency_ms_p99"] = rounded(m["latency_ms_p99"], 4)
            pareto.append(entry)
    failed = sum(t.state == TrialState.FAIL for t in trials)
    pruned = sum(t.state == TrialState.PRUNED for t in trials)  # Monte-Carlo too long (montecarlo.check_simulation_size)
    study_info = {"storage": _redact(info["storage"]), "name": study.study_name, "trials": len(done),
                  "trials_failed": failed, "trials_too_long_to_simulate": pruned,
                  "trials_this_run": info["ran"],
                  "sampler": info["sampler"], "seed": info["seed"], "workers": info["workers"],
                  "continued": info["continued"], "space": space.as_dict(), "best_trial": best_t.number,
                  "seeded_with": info.get("seeded", []),
                  "seeds_waiting": sum(t.state == TrialState.WAITING for t in trials)}  # enqueued, not yet run
    return OptunaResult(setting, top_scored, ar, single, paper, len(done), time.perf_counter() - t0, rescored,
                        study=study_info, pareto=pareto, objective=ev.objective, objectives=tuple(ev.objectives),
                        best_metrics=dict(best_t.user_attrs["metrics"]), optuna_study=study)


# --------------------------------------------------------------------------- entry point


def optuna_search(setting: Setting, trials: int | None = 100, timeout: float | None = None, seed: int = 0,
                  sampler: str = "tpe", objectives=("throughput",), storage: str = DEFAULT_STORAGE,
                  study_name: str | None = None, workers: int = 1, depth: tuple[int, int] = (1, 4),
                  batches=None, tps=None, objective: str = "analytic", max_propose: int = 8, max_window: int = 16,
                  top: int = 10, seed_trials: bool = True, progress: bool | None = None, mc_streams: int = 1024,
                  mc_cycles: int = 32, heartbeat: int = HEARTBEAT_S, grace: int = GRACE_S,
                  seed_exhaustive: bool = True, adaptive: bool = False) -> OptunaResult:
    """Search plans with Optuna on `setting` (its tp/batch are the defaults of the tp/batch
    choices). `trials` is the number of trials THIS call adds (split over `workers`); a study
    with the same name continues. Raises ValueError("field: message") on bad input, before
    anything is written to the study.

    A new study's first trial is the exhaustive optimum of depth 1-3 (the default search's
    answer, at the setting's tp and batch) when the space holds it, so the result is never
    worse than the default search on the analytic objective; then autoregressive, the
    published configuration and the best single-level plan. `seed_exhaustive=False` leaves
    the first one out (to benchmark the sampler itself).

    `adaptive=True`: the confidence thresholds join the space (continuous in [0, 1]); every
    plan, fixed ones included, is scored by hispec_sim.adaptive over the workload's request
    distribution (adaptive.over_requests; the fixed plans with the same spread), and the first trial is the exhaustive adaptive optimum (adaptive.exhaustive_adaptive:
    what `optimize --adaptive` finds with its threshold grid) when the space holds it."""
    t0 = time.perf_counter()
    objectives = tuple(objectives)
    if not objectives or any(o not in OBJECTIVES for o in objectives) or len(set(objectives)) != len(objectives):
        raise ValueError(f"objectives: expected distinct names among {', '.join(OBJECTIVES)}, got {','.join(objectives)}")
    if objective not in OBJECTIVE_KINDS:
        raise ValueError(f"objective: unknown {objective!r}; known: {', '.join(OBJECTIVE_KINDS)}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler: unknown {sampler!r}; known: {', '.join(SAMPLERS)}")
    if trials is not None and (not isinstance(trials, int) or trials < 1):
        raise ValueError(f"trials: must be >= 1, got {trials}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout: must be > 0 seconds, got {timeout}")
    if trials is None and timeout is None:
        raise ValueError("trials: give --trials or --timeout")
    if not isinstance(workers, int) or not 1 <= workers <= 256:
        raise ValueError(f"workers: must be in [1, 256], got {workers}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: must be an integer >= 0, got {seed}")
    if mc_streams < 2 or mc_cycles < 1:
        raise ValueError("mc: streams must be >= 2 and cycles >= 1")
    make_sampler(sampler, seed, len(objectives))  # unknown / unusable sampler fails here, before the storage
    if adaptive:
        from .adaptive import _top1

        if objective != "analytic" or "p99" in objectives:
            raise ValueError("objective: an adaptive search scores plans with the adaptive model; "
                             "--objective mc and the p99 objective are not available with --adaptive")
        _top1(setting.acceptance)  # "draft_confidence: this workload has no confidence statistics ..."
    space = make_space(setting, depth, max_propose, max_window, batches, tps, adaptive)
    ev = Evaluator(setting.profile, setting.workload, setting.stack, setting.context, objective, objectives, seed,
                   mc_streams, mc_cycles, adaptive)
    ev._settings[(setting.tp, setting.batch)] = setting
    key = _study_key(ev, space)
    if study_name is not None and (not isinstance(study_name, str) or not study_name.strip()
                                   or len(study_name) > MAX_NAME):
        raise ValueError(f"study-name: must be a name of 1 to {MAX_NAME} characters, not blank")
    name = study_name or default_study_name(key)  # the default joins a profile's and a workload's names: longer
    try:
        check_name(name)  # it is printed, and stored for every later run to print
    except ValueError as e:
        raise ValueError(f"study-name: {e}") from None

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage is None:  # in-memory, one process (benchmarks, library use): nothing persists
        if workers > 1:
            raise ValueError("storage: several workers need a persistent storage URL")
        store = optuna.storages.InMemoryStorage()
        storage = "memory"
    else:
        storage = normalise_url(storage)
        store = open_storage(storage, heartbeat, grace)
    continued = _check_existing(store, name, key)
    directions = [OBJECTIVES[o] for o in objectives]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(storage=store, study_name=name, directions=directions, load_if_exists=True)
    if not continued:
        study.set_user_attr("hispec", key)
        study.set_user_attr("created_by", "hispec-sim optimize --search optuna")
    seeded = []
    if seed_trials and not continued:
        # seed the search with the exhaustive optimum of depth 1-3 (first: it runs even at --trials 1),
        # autoregressive, the published configuration and the best single-level plan
        seeds = exhaustive_seed(ev, space, setting) if seed_exhaustive else []
        if adaptive and seed_exhaustive:  # the exhaustive adaptive optimum first
            from .adaptive import exhaustive_adaptive

            tp0, b0 = _first_pair(setting, space)
            best = exhaustive_adaptive(ev.setting(tp0, b0), max_propose, max_window,
                                       depths=(space.min_depth, space.max_depth))["best"]
            if best:  # the best of the grid in the space's depths
                seeds.insert(0, (best[1], tp0))
        seeds += [(autoregressive_plan(setting.num_layers, space.batches[0]), space.tps[0]),
                 (paper_default(setting).model_copy(update={"batch": space.batches[0]}), space.tps[0]),
                 (single_level_sweep(ev.setting(space.tps[0], space.batches[0]), max_propose).plan, space.tps[0])]
        for p, tp in seeds:
            params = space.params(p, tp)
            said = p.describe() + (f" tp {tp}" if len(space.tps) > 1 else "") + (
                f" batch {p.batch}" if len(space.batches) > 1 else "")
            if params is not None and said not in seeded:  # one plan can be two seeds (--depth 2-2)
                study.enqueue_trial(params, skip_if_exists=True)
                seeded.append(said)

    spec = {"profile": setting.profile.model_dump_json(), "workload": setting.workload, "stack": setting.stack,
            "context": setting.context, "objective": objective, "objectives": list(objectives), "seed": seed,
            "streams": mc_streams, "cycles": mc_cycles, "space": {**space.__dict__}, "storage": storage,
            "heartbeat": heartbeat, "grace": grace, "study_name": name, "sampler": sampler, "adaptive": adaptive}
    progress = sys.stderr.isatty() if progress is None else progress
    if workers == 1:
        ran = _run_worker(spec, 0, trials, timeout, progress, store)
    else:
        if storage.endswith(":memory:"):
            raise ValueError("storage: an in-memory SQLite database cannot be shared by several workers")
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        share = None if trials is None else [trials // workers + (i < trials % workers) for i in range(workers)]
        # the workers in their own process group: a signal reaches them once, from here (a
        # terminal's Ctrl-C hit them and this process; `kill PID` only this one, which waited
        # for every trial of theirs)
        setpgrp = getattr(os, "setpgrp", None)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=setpgrp) as pool, \
                _forwarding_signals(pool) as hit:
            futs = [pool.submit(_run_worker, spec, i, None if share is None else share[i], timeout, progress and i == 0)
                    for i in range(workers) if share is None or share[i] > 0]
            errors = [f.exception() for f in futs]
        if hit:
            from .entry import interrupt

            raise interrupt(hit[0])
        # a failed storage write can surface in another worker as Optuna's own complaint
        # (the trial it could not store); the storage's error is the one to report
        failed = [e for e in errors if e is not None]
        if failed:
            raise next((e for e in failed if str(e).startswith("storage: ")), failed[0])
        ran = sum(f.result() for f in futs)
    ran_as = "nsga2" if sampler == "tpe" and len(objectives) > 1 else sampler  # _make_sampler's choice
    info = {"storage": storage, "ran": ran, "sampler": ran_as, "seed": seed,
            "workers": workers, "continued": continued, "seeded": seeded}
    return _build_result(study, ev, space, info, top, t0)


def auto_uses_exhaustive(depth: tuple[int, int] | None, batches, tps, objective: str, objectives) -> bool:
    """`--search auto`: exhaustive where it covers the space exactly (chains of 1 to 3 levels,
    one batch, one tp, analytic throughput), else Optuna."""
    return (tuple(depth or (1, 3)) == (1, 3) and len(batches or [1]) <= 1 and len(tps or [1]) <= 1 and objective == "analytic"
            and tuple(objectives) == ("throughput",))


# --------------------------------------------------------------------------- command line (optimize)


def add_cli_args(p) -> None:
    """The optimize flags of this module; --batch and --tp become comma-separated choices
    (the optimize parser resolves the conflict with the generic single-value flags)."""
    p.add_argument("--batch", default="1", help="batch size, or choices for Optuna, e.g. 1,8,32 (default 1)")
    p.add_argument("--tp", help="tensor-parallel degree, or choices for Optuna, e.g. 1,2,4,8 (default: the profile's)")
    p.add_argument("--search", default="auto", help="exhaustive, optuna or auto (default: exhaustive where it covers the space)")
    p.add_argument("--depth", help="chain depth range for Optuna, e.g. 1-4 or 3 (default 1-4; auto uses exhaustive for 1-3)")
    p.add_argument("--trials", type=int_in(1, MAX_TRIALS), help="trials this run adds to the study (default 100 unless --timeout)")
    p.add_argument("--timeout", type=float_in(1e-3, 7 * 86400), help="stop each worker after this many seconds")
    p.add_argument("--seed", type=SEED, default=0, help="sampler seed; same seed + settings = same result with 1 worker")
    p.add_argument("--sampler", default="tpe", help="tpe (default; NSGA-II with several objectives), cmaes, random, nsga2")
    p.add_argument("--objectives", default="throughput", help="comma-separated: throughput, latency (mean ms/token), p99 (Monte-Carlo)")
    p.add_argument("--objective", default="analytic", help="analytic (default) or mc (Monte-Carlo; trace replay where the workload has traces)")
    p.add_argument("--mc-streams", type=int_in(2, MAX_STREAMS), default=1024, help="Monte-Carlo streams per trial")
    p.add_argument("--mc-cycles", type=int_in(1, MAX_CYCLES), default=32, help="Monte-Carlo full-model checks per stream")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"Optuna RDB storage URL (default {DEFAULT_STORAGE})")
    p.add_argument("--study-name", type=name_text, help="study to create or continue (default: profile-workload-<hash of the settings>)")
    p.add_argument("--workers", type=int_in(1, 256), default=1, help="worker processes on the storage")


def _int_list(text, field: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [strict_int(x.strip()) for x in str(text).split(",")]
    except ValueError:
        raise ValueError(f"{field}: expected an integer or comma-separated integers, got {text!r}") from None


def cli_prepare(args) -> dict:
    """Parse the choice flags; leave args.batch / args.tp as the first choice (so the
    generic setting code sees one value). Returns the parsed search options."""
    batches = _int_list(args.batch, "batch")
    tps = _int_list(args.tp, "tp")
    args.batch = batches[0]
    args.tp = tps[0] if tps else None
    depth = None
    if args.depth:
        parts = args.depth.replace("..", "-").split("-")
        try:
            lo, hi = (strict_int(parts[0]), strict_int(parts[-1])) if len(parts) <= 2 else (None, None)
        except ValueError:
            lo = hi = None
        if lo is None:
            raise ValueError(f"depth: expected N or MIN-MAX, got {args.depth!r}")
        depth = (lo, hi)
    objectives = tuple(o.strip() for o in args.objectives.split(","))
    if not all(objectives):
        raise ValueError(f"objectives: comma-separated names, each given, got {args.objectives!r}")
    if args.search not in ("exhaustive", "optuna", "auto"):
        raise ValueError(f"search: unknown {args.search!r}; known: exhaustive, optuna, auto")
    opts = {"batches": batches if len(batches) > 1 else None, "tps": tps if tps and len(tps) > 1 else None,
            "depth": depth, "objectives": objectives}
    exhaustive_ok = auto_uses_exhaustive(depth, opts["batches"], opts["tps"], args.objective, objectives)
    if args.search == "exhaustive" and not exhaustive_ok:
        raise ValueError("search: exhaustive covers 1..3 levels (--depth 1-3), one batch, one tp and analytic throughput; "
                         "use --search optuna")
    opts["optuna"] = args.search == "optuna" or (args.search == "auto" and not exhaustive_ok)
    return opts


def cli_optuna(args, setting: Setting, opts: dict) -> OptunaResult:
    trials = args.trials if (args.trials is not None or args.timeout is not None) else 100
    batches = opts["batches"] or [setting.batch]
    tps = opts["tps"] or [setting.tp]
    try:
        return optuna_search(setting, trials=trials, timeout=args.timeout, seed=args.seed, sampler=args.sampler,
                             objectives=opts["objectives"], storage=args.storage, study_name=args.study_name,
                             workers=args.workers, depth=opts["depth"] or (1, 4), batches=batches, tps=tps,
                             objective=args.objective, max_propose=args.max_propose, max_window=args.max_window,
                             top=args.top, mc_streams=args.mc_streams, mc_cycles=args.mc_cycles,
                             adaptive=bool(getattr(args, "adaptive", False)))
    except ValueError:
        raise
    except Exception as e:  # the database refused before any trial (a read-only file creating the study)
        cause = _storage_failure(e)
        if cause is None:
            raise
        raise ValueError(f"storage: writing to {_redact(normalise_url(args.storage))} failed ({cause})") from None
    finally:
        close_storages()


def cli_summary(out: dict) -> str:
    """The text lines optimize prints for an Optuna search: the study, then the Pareto front."""
    st = out["study"]
    long = st["trials_too_long_to_simulate"]
    lines = [f"optuna: study {st['name']!r} in {st['storage']}: {st['trials']} completed trials "
             f"({st['trials_this_run']} this run{', continued' if st['continued'] else ''}; {st['trials_failed']} failed"
             f"{f', {long} too long to simulate' if long else ''}), "
             f"sampler {st['sampler']}, seed {st['seed']}, workers {st['workers']}, depth {st['space']['depth'][0]}..{st['space']['depth'][1]}, "
             f"objective {out['objective']} {','.join(out['objectives'])}, {out['seconds']:.1f} s"]
    if st.get("seeds_waiting"):
        lines.append(f"{st['seeds_waiting']} of its {len(st['seeded_with'])} seed plans (study.seeded_with) not yet run: "
                     "more --trials, or continue the study")
    if out.get("pareto"):
        lines.append(f"\nPareto front ({len(out['pareto'])} plans):")
        lines.append(f"{'plan':34s} {'tp':>3s} {'batch':>5s} {'tokens/s':>10s} {'ms/token':>9s} {'p99 ms':>9s}")
        for e in out["pareto"]:
            p99 = decimals(e["latency_ms_p99"], 3) if "latency_ms_p99" in e else "-"
            lines.append(f"{e['describe']:34s} {e['tp']!s:>3s} {e['batch']:5d} {decimals(e['tokens_per_second'], 2):>10s} "
                         f"{decimals(e['latency_ms_per_token'], 3):>9s} {p99:>9s}")
    return "\n".join(lines)
