"""Run Vidur (PyPI `vidur`, MIT) on one trace, offline, and print per-request token times.

Runs INSIDE Vidur's own virtual environment (never imported by hispec): run_vidur.py
calls it as `VENV/bin/python vidur_driver.py CONFIG.json`. CONFIG names the profiling folder (mlp.csv,
attention.csv, all_reduce.csv in Vidur's column layout), the predictor and scheduler
settings, and a list of runs, each a trace CSV (Date, Time, PromptTokenCount,
CompletionTokenCount) and an output JSON path. The predictor is trained once per
invocation and shared by its runs (its settings do not change between them).

Two adaptations, both forced by running without network access, neither changes Vidur's
model:
* vidur 0.0.26 fetches its profiling data from Hugging Face datasets
  (SklearnExecutionTimePredictor._get_input_files -> snapshot_download) and first tries
  to download ready predictions; here _get_input_files returns the local files and the
  download of predictions is made to fail, so Vidur trains its own predictors on the
  files (its documented fallback);
* token emission times are recorded by wrapping Request.on_batch_end (Vidur's own
  request state machine): one token when the prefill completes, one per decode batch.
  TTFT and TBT are then computed exactly as hispec_sim.traffic.summarize does.
"""
from __future__ import annotations

import json
import sys
import time as wallclock


def main(cfg_path: str) -> None:
    cfg = json.load(open(cfg_path))
    from vidur import config as vc
    from vidur.entities import request as req_mod
    from vidur.execution_time_predictor import sklearn_execution_time_predictor as skl
    from vidur.simulator import Simulator
    from vidur.utils.random import set_seeds

    prof = cfg["profiling_dir"]
    skl.SklearnExecutionTimePredictor._get_input_files = lambda self: (
        f"{prof}/mlp.csv", f"{prof}/attention.csv", f"{prof}/all_reduce.csv", f"{prof}/send_recv.csv")

    def _no_hub(self):
        raise RuntimeError("offline: Vidur trains its predictors on the local profiling files")
    skl.SklearnExecutionTimePredictor._load_predictions_from_hf = _no_hub

    from vidur.scheduler.global_scheduler import base_global_scheduler as bgs
    trained = {}
    registry_get = bgs.ExecutionTimePredictorRegistry.get

    def get_once(key, *args, **kwargs):
        if "p" not in trained:
            t = wallclock.perf_counter()
            trained["p"] = registry_get(key, *args, **kwargs)
            trained["train_s"] = wallclock.perf_counter() - t
        return trained["p"]
    bgs.ExecutionTimePredictorRegistry.get = staticmethod(get_once)

    emitted: dict[int, list[float]] = {}
    arrivals: dict[int, float] = {}
    restarts = []
    original = req_mod.Request.on_batch_end

    def on_batch_end(self, time, num_tokens_processed):
        original(self, time, num_tokens_processed)
        if self._is_prefill_complete:
            emitted.setdefault(self._id, []).append(time)
            arrivals[self._id] = self._arrived_at
    req_mod.Request.on_batch_end = on_batch_end
    original_restart = req_mod.Request.restart

    def restart(self):
        restarts.append(self._id)  # a preemption would re-emit tokens: counted and reported
        original_restart(self)
    req_mod.Request.restart = restart

    # Vidur rounds a batch's token count up to a multiple of 8 before reading its linear-op
    # and all-reduce predictions (entities/batch.py); a run with "exact_tokens" reads them at
    # the batch's own count, as hispec does (a test of that one cause)
    from vidur.entities import batch as batch_mod
    batch_init = batch_mod.Batch.__init__
    exact = {"on": False}

    def init(self, *a, **k):
        batch_init(self, *a, **k)
        if exact["on"]:
            self._total_num_q_tokens_rounded = self._total_num_q_tokens
    batch_mod.Batch.__init__ = init

    for run in cfg["runs"]:
        exact["on"] = bool(run.get("exact_tokens"))
        emitted.clear(); arrivals.clear(); restarts.clear()
        simulate(cfg, run, vc, Simulator, set_seeds)
        json.dump({"requests": [{"arrival_s": arrivals[i], "token_times_s": emitted[i]} for i in sorted(emitted)],
                   "restarts": len(restarts), "train_s": trained.get("train_s"), "simulate_s": run["_simulate_s"]},
                  open(run["result_json"], "w"))


def simulate(cfg, run, vc, Simulator, set_seeds) -> None:
    """One Vidur simulation of one trace (a fresh cluster; the trained predictor is reused)."""
    max_tokens = cfg["max_tokens_per_request"]
    sched = (vc.VllmSchedulerConfig(batch_size_cap=cfg["max_batch"], max_tokens_in_batch=cfg["max_tokens_in_batch"])
             if cfg["scheduler"] == "vllm" else
             vc.OrcaSchedulerConfig(batch_size_cap=cfg["max_batch"]) if cfg["scheduler"] == "orca" else
             vc.SarathiSchedulerConfig(batch_size_cap=cfg["max_batch"], chunk_size=cfg["chunk_size"]))
    predictor_cls = (vc.LinearRegressionExecutionTimePredictorConfig if cfg["predictor"] == "linear_regression"
                     else vc.RandomForrestExecutionTimePredictorConfig)
    predictor = predictor_cls(
        model_profiling_dataset="local", network_profiling_dataset="local",
        no_cache=True, cache_dir=cfg["cache_dir"],
        prediction_max_tokens_per_request=max_tokens,
        prediction_max_prefill_chunk_size=max_tokens,
        prediction_max_batch_size=cfg["max_batch"],
        kv_cache_prediction_granularity=cfg["kv_granularity"],
        attention_decode_batching_overhead_fraction=cfg["attention_decode_batching_overhead_fraction"],
        nccl_cpu_launch_overhead_ms=cfg["nccl_cpu_launch_overhead_ms"],
        num_training_job_threads=cfg["threads"], k_fold_cv_splits=cfg["k_fold"],
        **({"num_estimators": [cfg["rf_estimators"]], "max_depth": [cfg["rf_max_depth"]],
            "min_samples_split": [2]} if cfg["predictor"] == "random_forest" else {}),
    )
    sim_cfg = vc.SimulationConfig(
        seed=cfg["seed"], log_level="warning",
        cluster_config=vc.ClusterConfig(
            num_replicas=1,
            replica_config=vc.ReplicaConfig(model_name="meta-llama/Llama-2-70b-hf", num_pipeline_stages=1,
                                            tensor_parallel_size=cfg["tp"], device="a100", network_device="a100_dgx"),
            cache_config=vc.CacheConfig(block_size=16, num_blocks=cfg["kv_blocks"]),
            replica_scheduler_config=sched,
        ),
        request_generator_config=vc.TraceRequestGeneratorConfig(
            trace_file=run["trace_csv"], date="trace", prefill_scale_factor=1.0, decode_scale_factor=1.0,
            time_scale_factor=1.0, max_tokens=max_tokens),
        execution_time_predictor_config=predictor,
        metrics_config=vc.MetricsConfig(write_metrics=False, store_plots=False, output_dir=run["out_dir"],
                                        enable_chrome_trace=False, write_json_trace=False),
    )
    # entity ids are class counters (BaseEntity.generate_id) and the global scheduler
    # addresses replica 0..n-1: every run starts them afresh, as a new process would
    from vidur.entities.base_entity import BaseEntity
    stack = [BaseEntity]
    while stack:
        c = stack.pop()
        if "_id" in c.__dict__:
            c._id = -1
        stack.extend(c.__subclasses__())
    set_seeds(cfg["seed"])
    sim = Simulator(sim_cfg)
    t0 = wallclock.perf_counter()
    sim.run()
    run["_simulate_s"] = wallclock.perf_counter() - t0


if __name__ == "__main__":
    main(sys.argv[1])
