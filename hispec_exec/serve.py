"""`hispec-exec serve`: continuous batching of real requests under any plan.

THE SERVING PROCESS (the simulator's `hispec-sim serve` models exactly this)
============================================================================

Time is the wall clock; request i arrives at t0 + arrival_s[i] (t0 = start of serving).
The engine repeats one *iteration* until every request has finished:

1. **Admission** (FIFO, head-of-line): the oldest waiting request that has arrived is
   admitted while (a) fewer than `max_batch` sequences run and (b) its KV reservation fits
   in `kv_tokens` beside the running ones' reservations; the first request that does not
   fit blocks the ones behind it. Reservation = prompt_len + max_new_tokens +
   `max_overshoot(plan)` tokens (speculation overshoot: autoregressive 1; otherwise
   propose + sum(windows) + depth + 1), held until the request leaves. Under `synchronous`
   admission happens only at round boundaries (see below); under `ragged` at every
   iteration. When nothing runs and nobody has arrived, the engine sleeps until the next
   arrival. queue_ms = admission time - arrival time.
2. **Prefill** (`ServeLimits.prefill = 'separate'`): every request admitted in this
   iteration is prefilled in ONE forward, before the decode step: the prompts' tokens but
   the last (P_i - 1 rows each, concatenated; attention per sequence) run through all L
   layers. Running sequences wait (prefill stalls decoding). A prompt's last token is
   pending: it enters the first decode operation. (A one-token prompt needs no prefill.)
3. **One decode step**: ONE forward over the running sequences (newly prefilled ones
   included), as the policy says (below), then each sequence's exit heads, acceptance
   and commits.
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
  i uses its own generator seeded `seed + i`, so its output equals `decode(...,
  seed=seed + i)` run alone, whatever shared its batch.

Output per request (RequestMetrics): queue_ms, TTFT, every TBT gap, e2e; totals from
`hispec_sim.traffic.summarize` (throughput, goodput under the SLOs, mean/p50/p90/p99).
"""
