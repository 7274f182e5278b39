"""`hispec-exec serve`: continuous batching of real requests under any plan.

THE SERVING PROCESS (the simulator's `hispec-sim serve` models exactly this)
============================================================================

Time is the wall clock; request i arrives at t0 + arrival_s[i] (t0 = start of serving).
Before t0 the CLI serves the first request once, alone, untimed, and discards it: a fresh
process's first forwards pay one-time costs (allocations, kernel setup; ~130 ms of the
first request's TTFT on a 2-core AVX-512 VM, against ~16 ms warm), which a server pays
before it takes traffic and the simulator does not model (`--no-warmup` keeps them).
The engine repeats one *iteration* until every request has finished:

1. **Admission** (FIFO, head-of-line): the oldest waiting request that has arrived is
   admitted while (a) fewer than `max_batch` sequences run and (b) its KV reservation fits
   in `kv_tokens` beside the running ones' reservations; the first request that does not
   fit blocks the ones behind it. Reservation = prompt_len + max_new_tokens +
   `plan.max_overshoot` tokens (speculation overshoot: autoregressive 1; otherwise
   propose + sum(windows) + depth + 1), held until the request leaves. Under `synchronous`
   admission happens only at round boundaries (see below); under `ragged` at every
   iteration. When nothing runs and nobody has arrived, the engine sleeps until the next
   arrival. queue_ms = admission time - arrival time.
2. **Prefill** (`ServeLimits.prefill = 'separate'`): every request admitted in this
   iteration is prefilled in ONE forward, before the decode step: the prompts' tokens but
   the last (P_i - 1 rows each, concatenated; attention per sequence) run through all L
   layers. Running sequences wait (prefill stalls decoding). A prompt's last token is
   pending: it enters the first decode operation. (A one-token prompt needs no prefill.)
   **Chunked** (`prefill = 'chunked'`, `prefill_chunk = C`; ragged batching and
   autoregressive plans): admitted requests wait in a prefill queue (FIFO) and hold their
   slot of max_batch and their KV reservation. Each iteration runs at most ONE prefill
   forward, before the decode step, of at most C prompt tokens: each queued request in
   turn puts in min(its tokens left, the budget left) (`hispec_sim.serving.chunk_takes`),
   so a long prompt is split over iterations and short ones share a forward; a piece
   after c cached tokens attends to them. A request whose P - 1 tokens are cached joins
   the batch in that iteration (a one-token prompt: at once). The decode step waits for
   one chunk at most; the engine does not sleep while a prompt is being prefilled.
3. **One decode step**: ONE forward over the running sequences (newly prefilled ones
   included), as the policy says (below), then ONE exit-head call over every sequence's
   head rows (heads at different exits share the final norm + LM head), then each
   sequence's acceptance and commits (host work, no forward).
4. **Emission**: a token is emitted at the end of the step that commits it: an
   autoregressive forward, or a full-model (level-k) check. All tokens one check commits
   share that time (their gaps are 0). TTFT = first emission - arrival; TBT = the gaps
   between consecutive emissions; e2e = last emission - arrival. Tokens committed beyond
   max_new_tokens are discarded; a request that has max_new_tokens leaves at once (its
   slot and KV reservation are free for the next admission).

Every sequence keeps its own KV cache (per-sequence lengths: no padding in the cache),
its own buffers and its own acceptance; rejected positions are cropped per sequence.

What each decode-step forward carries (plan levels l_1 < ... < l_k = L; a sequence's
*operation* is one of: draft, or level-(j+1) check of its level-j buffer):

* autoregressive ([L]; both policies alike): every running sequence, 1 row through
  layers 1..L, exit head at L on 1 row.
* a sequence's operations follow the batch-1 schedule: `propose` drafts (each: its newest
  token, 1 row through 1..l_1, head at l_1), then the level-2 check of the level-1 buffer,
  then while j < k and buffer j holds >= windows[j-2] tokens the level-(j+1) check. A
  level-(j+1) check of an n-token buffer carries the sequence's newest token (1 row)
  through 1..l_j, then the n+1 rows waiting above l_j through l_j+1..l_{j+1}, head at
  l_{j+1} on those n+1 rows.
* `ragged` (per-sequence triggers, layer-range batching): in one step EVERY running
  sequence performs its own next operation, all in one forward built layer range by
  layer range: the segment l_{i-1}+1..l_i carries, concatenated, the rows of every
  sequence whose operation reaches l_i (1 row each for drafters and for the newest token
  of checks above; n+1 rows for each sequence whose level-i check this is). Each
  sequence's head runs at its operation's exit. So all drafting sequences share layers
  1..l_1, and only the sequences whose level-j check falls due go on through
  l_{j-1}+1..l_j.
* `synchronous`: the batch runs common *rounds*; every running sequence does the same
  operation in each step: `propose` draft steps (all sequences, 1 row each through
  1..l_1), then one level-2 check step (all sequences, each carrying its own buffer), then
  for j = 2..k-1, while ANY sequence's level-j buffer holds >= windows[j-2] tokens, a
  level-(j+1) check step of every sequence (each carrying its own buffer j, which holds at
  least 1 token). Rows are concatenated, not padded: a sequence whose buffer is shorter
  carries fewer rows (on a CPU a padding row would be discarded work; the simulator
  charges each sequence its own rows). New requests join at round boundaries only.
* Greedy: every sequence's output equals its autoregressive greedy decoding alone, token
  for token (the decoding path is row invariant: `hispec_exec.model`). Sampling: request
  i uses its own generator seeded `seed + i`; under `ragged` its operations are its
  batch-1 schedule, so its output equals `decode(..., seed=seed + i)` run alone, whatever
  shared its batch; under `synchronous` its checks fall at other steps, so its output is
  distributed as the full model's (rejection sampling) but not identical to alone.

Output per request (RequestMetrics): queue_ms, TTFT, every TBT gap, e2e; totals from
`hispec_sim.traffic.summarize` (throughput, goodput under the SLOs, mean/p50/p90/p99).
"""
from __future__ import annotations


import functools
import json
import sys
import time
from collections import deque
from dataclasses import dataclass, field

MAX_POOL_BYTES = 16 * 2**30
LONG_WAIT_S = 600.0  # a trace whose last request arrives later than this is said to wait that long in wall time


class CpuClock:
    """A clock that counts this process's CPU time, and whose sleep advances it without
    waiting: serving timed as if the process had the CPU to itself (`--clock cpu`, for
    shared machines where other processes' load inflates wall times). Single-threaded
    torch: CPU time is the compute time; idle waits for arrivals are added exactly."""

    def __init__(self):
        self.offset = 0.0

    def __call__(self) -> float:
        return time.process_time() + self.offset

    def sleep(self, seconds: float) -> None:
        self.offset += max(0.0, seconds)


@dataclass
class _Served:
    id: int
    arrival_s: float
    prompt: list[int]
    max_new_tokens: int
    need: int  # KV tokens reserved
    decoder: object = None
    slot: int = -1
    admitted_s: float = 0.0
    emitted: int = 0
    times: list[float] = field(default_factory=list)  # emission time of every generated token


def kv_need(plan, prompt_len: int, max_new_tokens: int) -> int:
    return prompt_len + max_new_tokens + plan.max_overshoot


def check_requests(plan, prompts: list[list[int]], news: list[int], capacity: int, limits, where) -> list[int]:
    """KV reservation of every request; one-line errors for requests that can never run."""
    needs = []
    for i, (p, n) in enumerate(zip(prompts, news)):
        need = kv_need(plan, len(p), n)
        if need > capacity:
            raise ValueError(f"{where(i)}: prompt ({len(p)}) + max_new_tokens ({n}) + speculation "
                             f"({need - len(p) - n}) = {need} tokens exceeds the KV capacity of a sequence ({capacity})")
        needs.append(need)
    if limits.kv_tokens is not None and needs and max(needs) > limits.kv_tokens:
        i = next(i for i, need in enumerate(needs) if need > limits.kv_tokens)  # the first that does not fit, named
        raise ValueError(f"kv_tokens: {limits.kv_tokens} is fewer than the {needs[i]} tokens {where(i).split(': ', 1)[-1]} needs; "
                         f"allowed: >= {max(needs)} (the most any of these requests needs)")
    return needs


def serve(model, plan, arrivals: list[float], prompts: list[list[int]], news: list[int], limits,
          mode: str | None = None, seed: int = 0, temperature: float = 1.0, batching: str | None = None,
          progress=None, clock=time.perf_counter, sleep=None, step_log: list | None = None,
          ops_of=None) -> dict:
    """Serve the requests as the module docstring specifies; returns the per-request
    metrics (RequestMetrics), tokens and totals. Request i samples with seed + i.
    `sleep` waits for arrivals: by default the clock's own (CpuClock) or time.sleep.
    step_log (instrumentation, hispec_exec.measure_serving): when a list, one entry per
    iteration that ran a step: its wall time without prefill and waiting ("step_ms"), the
    prefill's ("prefill_ms") and its (new tokens, cached tokens) per prompt ("pieces"),
    ops_of(batch) taken before the step ("ops", untimed), and whether the loop slept for an
    arrival just before it ("woke")."""
    from hispec_sim.schema import RequestMetrics

    from hispec_sim.serving import check_prefill, chunk_takes

    from .generate import Batch, SequenceDecoder, check_plan
    sleep = sleep or getattr(clock, "sleep", time.sleep)

    check_plan(model, plan, batch_ok=True)
    batch = Batch(model, plan, batching)
    check_prefill(plan, batch.batching, limits)
    chunk = limits.prefill_chunk
    cap = model.args.max_seq_len
    needs = check_requests(plan, prompts, news, cap, limits, lambda i: f"request {i}")
    slots = min(limits.max_batch, len(prompts))
    a = model.args
    per_slot = 2 * a.n_layers * a.n_kv_heads * cap * a.head_dim * model.tok_embeddings.weight.element_size()
    if slots * per_slot > MAX_POOL_BYTES:
        raise ValueError(f"max_batch: {slots} sequences need {slots * per_slot / 2**30:.1f} GiB of KV cache; "
                         f"allowed: <= {MAX_POOL_BYTES // per_slot}")
    pool = model.new_pool(slots)
    free = list(range(slots))
    queue = deque(_Served(i, float(t), p, n, need) for i, (t, p, n, need) in enumerate(zip(arrivals, prompts, news, needs)))
    reserved = 0
    prefilling: list[_Served] = []  # chunked prefill: admitted, prompt not all cached yet (FIFO)
    done: list[_Served] = []
    live: dict[int, _Served] = {}
    steps = prefills = 0
    batch_sizes = []
    woke = False  # the loop slept before this iteration (step_log: the first forward after an idle spell)
    t0 = clock()
    while queue or batch.running or prefilling:
        it0 = clock()
        now = it0 - t0
        admit = []
        if batch.at_boundary:
            while (queue and queue[0].arrival_s <= now
                   and len(batch.running) + len(prefilling) + len(admit) < limits.max_batch
                   and (limits.kv_tokens is None or reserved + queue[0].need <= limits.kv_tokens)):
                r = queue.popleft()
                r.slot = free.pop(0)
                r.admitted_s = now
                r.decoder = SequenceDecoder(model, plan, r.prompt, r.max_new_tokens, mode, seed + r.id, temperature,
                                            cache=pool.cache(r.slot))
                reserved += r.need
                live[id(r.decoder)] = r
                admit.append(r)
        pf_ms, pieces = 0.0, []
        prefilling += admit  # separate: prefilled whole now; chunked: the next chunk of the queue
        if prefilling:
            left = [r.decoder.prefill_left for r in prefilling]
            takes = chunk_takes(left, chunk) if chunk is not None else left
            pieces = [(n, r.decoder.prefilled) for r, n in zip(prefilling, takes) if n]
            pf0 = clock()
            batch.add([r.decoder for r in prefilling], takes)  # separate: every prompt's all
            pf_ms = (clock() - pf0) * 1e3  # on the loop's own clock (it may not be the wall's)
            prefills += any(left)  # one-token prompts run no prefill forward (prefill_job)
            prefilling = [r for r in prefilling if r.decoder.prefill_left]
        if not batch.running:
            if queue and not prefilling:
                sleep(max(0.0, queue[0].arrival_s - (clock() - t0)))
                woke = True
            continue
        if step_log is not None:
            u0 = clock()
            ops = ops_of(batch)
            it0 += clock() - u0  # the instrumentation's own time is not the iteration's
        batch.running.sort(key=lambda d: d.cache.slot)  # consecutive slots batch their attention
        running = list(batch.running)
        batch_sizes.append(len(running))
        _, finished = batch.step()
        steps += 1
        t = clock() - t0
        for d in running:
            r = live[id(d)]
            new = d.emitted - r.emitted
            if new > 0:
                r.times.extend([t] * new)
                r.emitted = d.emitted
        for d in finished:
            r = live.pop(id(d))
            free.append(r.slot)
            free.sort()
            reserved -= r.need
            done.append(r)
        if progress:
            progress(len(done), len(prompts), sum(r.emitted for r in done) + sum(live[id(d)].emitted for d in batch.running), t)
        if step_log is not None:
            step_log.append({"step_ms": (clock() - it0) * 1e3 - pf_ms, "prefill_ms": pf_ms, "pieces": pieces, "ops": ops,
                             "woke": woke})
        woke = False
    done.sort(key=lambda r: r.id)
    metrics = []
    for r in done:
        ts = r.times
        metrics.append(RequestMetrics(
            id=r.id, arrival_s=r.arrival_s, prompt_tokens=len(r.prompt), output_tokens=len(ts),
            queue_ms=(r.admitted_s - r.arrival_s) * 1e3, ttft_ms=(ts[0] - r.arrival_s) * 1e3,
            e2e_ms=(ts[-1] - r.arrival_s) * 1e3, tbt_ms=[(b - a) * 1e3 for a, b in zip(ts, ts[1:])]))
    k = plan.depth
    proposed = [sum(r.decoder.proposed[j] for r in done) for j in range(k)]
    accepted = [sum(r.decoder.accepted[j] for r in done) for j in range(k)]
    return {
        "metrics": metrics,
        "tokens": [r.decoder.seq[r.decoder.P:r.decoder.P + r.decoder.limit] for r in done],
        "steps": steps, "prefill_forwards": prefills,
        "mean_batch": sum(batch_sizes) / len(batch_sizes) if batch_sizes else 0.0,
        "acceptance_per_level": [x / p if p else None for p, x in zip(proposed[1:], accepted[1:])],  # levels 2..k
    }


# --------------------------------------------------------------------------- CLI


def add_parser(sub) -> None:
    """`hispec-exec serve` (wired into hispec_exec.cli); flags typed by the shared plumbing."""
    from hispec_sim import schema
    from hispec_sim.cli_common import SEED, add_model_args, add_plan_args, float_in, int_in

    q = sub.add_parser("serve", help="serve a request trace or generated traffic with continuous batching")
    add_model_args(q)
    src = q.add_argument_group("traffic (--trace, or generated with --qps)")
    src.add_argument("--trace", help="JSONL: one request per line (arrival_s, prompt | prompt_tokens, max_new_tokens)")
    src.add_argument("--qps", type=float_in(1e-6, 1e6), help="mean arrival rate of generated traffic (requests per second)")
    src.add_argument("--arrival", default="poisson", choices=["poisson", "gamma"])
    src.add_argument("--cv", type=float_in(1e-3, 100.0), default=1.0, help="gamma arrivals: coefficient of variation")
    src.add_argument("--requests", type=int_in(1, schema.MAX_REQUESTS), default=64,
                     help="generated requests (default 64; hispec-sim serve's default is 1000)")
    src.add_argument("--prompt-len", default="64", help="prompt lengths in tokens: N, uniform:LO:HI, lognormal:MEDIAN:SIGMA, "
                     "empirical:N,N (default 64; hispec-sim serve's default is lognormal, scaled to the model)")
    src.add_argument("--output-len", default="64", help="output lengths, same forms (default 64)")
    src.add_argument("--seed", type=SEED, default=0, help="traffic, prompts and sampling (request i: seed + i)")
    add_plan_args(q, "plan JSON file (hispec-sim optimize --out / export --to exec)")
    q.add_argument("--mode", choices=["greedy", "sampling"])
    q.add_argument("--temperature", type=float_in(1e-3, 100.0), default=1.0)
    q.add_argument("--batching", choices=["ragged", "synchronous"], help="default: the plan's (ragged)")
    q.add_argument("--max-batch", type=int_in(1, schema.MAX_BATCH), default=16,
                   help="sequences decoded together (default 16; hispec-sim serve's default is 64)")
    q.add_argument("--kv-tokens", type=int_in(1, 10**9), help="KV capacity in tokens over all sequences (default: unbounded)")
    q.add_argument("--prefill-chunk", type=int_in(1, 10**6), help="chunked prefill: at most this many prompt tokens per "
                   "iteration's prefill forward (ragged batching; default: the prompts admitted in an iteration in one "
                   "forward)")
    q.add_argument("--slo-ttft-ms", type=float_in(1e-6, schema.MAX_MS),
                   help="p99 time-to-first-token SLO, ms; also each request's TTFT SLO of goodput")
    q.add_argument("--slo-tbt-ms", type=float_in(1e-6, schema.MAX_MS),
                   help="p99 time-between-tokens SLO, ms, pooled over every token gap; also each request's TPOT SLO "
                   "of goodput, unless --slo-tpot-ms")
    q.add_argument("--slo-tpot-ms", type=float_in(1e-6, schema.MAX_MS),
                   help="each request's mean time-per-output-token SLO of goodput, ms (default: --slo-tbt-ms)")
    q.add_argument("--check", action="store_true", help="greedy: compare every output with its request decoded alone")
    q.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall (default) or cpu: this process's CPU time, idle waits added (shared, loaded machines)")
    q.add_argument("--no-warmup", action="store_true",
                   help="time the cold start too (default: the first request is served once, untimed, before the clock starts)")
    q.add_argument("--json", action="store_true")
    q.add_argument("--out", help="also write the JSON report to this file")
    q.set_defaults(func=run)


def _pyd(fn, *args, **kw):
    from pydantic import ValidationError

    try:
        return fn(*args, **kw)
    except ValidationError as e:
        from hispec_sim.schema import validation_message

        raise ValueError(validation_message(e)) from None


def _requests(a, model, codec):
    """(arrivals, prompts, max_new_tokens, a function naming request i) from the trace or the
    generator; codec() gives the checkpoint's text codec, asked for only where a request
    needs text (a trace of token ids runs on a checkpoint without a tokenizer)."""
    from hispec_sim.schema import LengthDist, Traffic
    from hispec_sim.traffic import generate, load_trace, trace_lines

    from .prompts import heldout_token_prompts

    V = model.args.vocab_size
    if a.trace:
        if a.qps is not None:
            raise ValueError("trace: give --trace or --qps, not both")
        reqs = load_trace(a.trace)
        lines = trace_lines(a.trace)
        where = lambda i: f"trace: request {i} (line {lines[i]})"  # noqa: E731
    else:
        if a.qps is None:
            raise ValueError("qps: give --qps X (> 0) or --trace FILE")
        traffic = _pyd(Traffic, arrival=a.arrival, qps=a.qps, cv=a.cv, requests=a.requests,
                       prompt_len=LengthDist.parse(a.prompt_len, "prompt_len"),
                       output_len=LengthDist.parse(a.output_len, "output_len"), seed=a.seed)
        reqs = generate(traffic)
        where = lambda i: f"prompt_len: request {i} (generated by --prompt-len and --output-len)"  # noqa: E731
    prompts: list = [None] * len(reqs)
    by_len: dict[int, list[int]] = {}
    for i, r in enumerate(reqs):
        if isinstance(r.prompt_tokens, list):
            if max(r.prompt_tokens) >= V:
                raise ValueError(f"{where(i)}: prompt_tokens: token ids must be in [0, {V})")
            prompts[i] = list(r.prompt_tokens)
        elif r.prompt is not None:
            prompts[i] = list(codec().encode(r.prompt))
            if not prompts[i]:
                raise ValueError(f"{where(i)}: prompt: encodes to no tokens")
        else:
            if r.prompt_tokens > model.args.max_seq_len:
                raise ValueError(f"{where(i)}: prompt_tokens {r.prompt_tokens} exceeds the KV capacity of a sequence "
                                 f"({model.args.max_seq_len})")
            by_len.setdefault(r.prompt_tokens, []).append(i)
    for n, idx in by_len.items():  # held-out prompts of the drawn lengths, in the checkpoint's tokens
        for i, p in zip(idx, heldout_token_prompts(codec(), len(idx), n, a.seed, exact=True)):
            prompts[i] = p
    return [r.arrival_s for r in reqs], prompts, [r.max_new_tokens for r in reqs], where


def _progress_bar():
    if not sys.stderr.isatty():
        return None
    last = [0.0]

    def show(done, total, tokens, t):
        if t - last[0] < 0.1 and done < total:
            return
        last[0] = t
        w = 30
        fill = int(w * done / total)
        sys.stderr.write(f"\r[{'#' * fill}{'.' * (w - fill)}] {done}/{total} requests  {tokens} tokens  {t:.1f}s")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return show


def run(a) -> int:
    from hispec_sim.schema import ServeLimits, decimals, write_atomic
    from hispec_sim.traffic import slo_lines, summarize

    from hispec_sim.cli_common import check_output, model_files
    from hispec_sim.cli_serving import note_plan_batch, refuse_unread_traffic

    from .cli import _load, _plan_args, _plan_for_model, _refuse_mode_flags
    from .generate import autoregressive, check_plan
    from .prompts import text_codec

    limits = _pyd(ServeLimits, max_batch=a.max_batch, kv_tokens=a.kv_tokens, slo_ttft_ms=a.slo_ttft_ms,
                  slo_tbt_ms=a.slo_tbt_ms, slo_tpot_ms=a.slo_tpot_ms, prefill="chunked" if a.prefill_chunk else "separate",
                  prefill_chunk=a.prefill_chunk)
    refuse_unread_traffic(a)
    if a.out:
        check_output(a.out, inputs=[a.trace, a.plan, *model_files(a)])
    plan = _plan_args(a)
    _refuse_mode_flags(a, plan)
    model = _load(a)
    plan = _plan_for_model(a, model, plan, batch_ok=True)
    if a.batching:
        plan = plan.model_copy(update={"batching": a.batching})
    check_plan(model, plan, batch_ok=True)
    note_plan_batch("hispec-exec", plan, a.max_batch)
    arrivals, prompts, news, where = _requests(a, model, functools.cache(lambda: text_codec(model, a.model)))
    check_requests(plan, prompts, news, model.args.max_seq_len, limits, where)
    if a.clock == "wall" and arrivals[-1] > LONG_WAIT_S:  # a trace's arrivals are waited for in real time
        print(f"hispec-exec: note: the last request arrives at {arrivals[-1]:.4g} s: the wall clock waits for it (Ctrl-C stops; "
              "--clock cpu adds idle waits without sleeping)", file=sys.stderr)
    mode = a.mode or plan.mode
    if not a.no_warmup:  # untimed, discarded: a fresh process's first forwards pay one-time costs
        serve(model, plan, [0.0], prompts[:1], news[:1], limits, mode=mode, seed=a.seed, temperature=a.temperature)
    res = serve(model, plan, arrivals, prompts, news, limits, mode=mode, seed=a.seed, temperature=a.temperature,
                progress=_progress_bar(), clock=CpuClock() if a.clock == "cpu" else time.perf_counter)
    summary = summarize(res["metrics"], limits)
    out = {
        "plan": plan.model_dump(), "plan_text": plan.describe(), "family": plan.family, "mode": mode,
        "batching": plan.batching, "limits": limits.model_dump(),
        "source": {"trace": a.trace} if a.trace else {"qps": a.qps, "arrival": a.arrival, "cv": a.cv,
                                                       "requests": a.requests, "prompt_len": a.prompt_len,
                                                       "output_len": a.output_len, "seed": a.seed},
        "device": str(model.tok_embeddings.weight.device), "clock": a.clock,
        "summary": summary,
        "decode_steps": res["steps"], "prefill_forwards": res["prefill_forwards"],
        "mean_batch": res["mean_batch"], "acceptance_per_level": res["acceptance_per_level"],
        "requests": [m.model_dump() for m in res["metrics"]],
    }
    if a.check:  # greedy: the CLI refuses --check when sampling
        out["identical_to_autoregressive"] = all(
            autoregressive(model, p, n).tokens == t for p, n, t in zip(prompts, news, res["tokens"]))
    text = json.dumps(out, indent=1) + "\n"
    if a.out:
        write_atomic(a.out, text)
    if a.json:
        sys.stdout.write(text)
    else:
        s = summary
        f = lambda d: "-" if d["mean"] is None else "  ".join(f"{k} {decimals(d[k], 1)}" for k in ("mean", "p50", "p90", "p99"))  # noqa: E731
        print(f"plan {out['plan_text']} ({out['family']}, {mode}, {plan.batching}); {s['requests']} requests, "
              f"max batch {limits.max_batch}, mean batch {res['mean_batch']:.1f}, {limits.prefill_words()}")
        attained, *p99 = slo_lines([s], f"{100 * s['slo_attained']:.1f}")
        print(f"throughput {decimals(s['throughput_tokens_per_s'], 1)} tokens/s   goodput "
              f"{decimals(s['goodput_requests_per_s'], 2)} requests/s {attained}", *p99, sep="\n")
        for key in ("ttft_ms", "tbt_ms", "tpot_ms", "e2e_ms", "queue_ms"):
            print(f"{key:9s} {f(s[key])}")
        if "identical_to_autoregressive" in out:
            print(f"identical_to_autoregressive {out['identical_to_autoregressive']}")
    return 0
