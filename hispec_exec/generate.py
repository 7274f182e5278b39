"""One decoder for every plan of the shared schema: autoregressive [L], single-level
self-speculation [E, L], HiSpec [d, i, L] and deeper chains; greedy or sampling.

Semantics (what the simulator's analytic model assumes):
* level 1 drafts `propose` tokens, one forward over layers 1..l_1 per token, the first
  input being the pending token (which has run through no layer);
* level j+1 checks level j's buffer (n tokens) in ONE forward: the buffer's last token
  runs through layers 1..l_j, then the n+1 positions waiting above l_j (the last token
  level j+1 emitted + the buffer) run through l_j+1..l_{j+1}, exit head over them;
  it keeps the matching prefix, adds one token of its own (correction or bonus),
  crops every cache back exactly, and passes the result to its own buffer;
* after each level-2 check the checks cascade upward while buffer j >= window j;
  the full model's check commits.
Sampling: rejection sampling at every level, each level proposing with its own
distribution (TriForce style), so the output is distributed as the full model's.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from hispec_sim.schema import Plan

from .model import Transformer


@dataclass
class Forward:
    level: int  # plan level that ran it (1 = drafter); 0 = prefill
    segments: list[tuple[int, int, int]]  # (first layer, last layer, tokens), 1-based inclusive
    head_layer: int
    head_tokens: int
    ms: float
    kept: int | None = None  # checks: how many of the checked tokens this level kept
    context: int | None = None  # tokens cached before its first new token (the prompt's included)


@dataclass
class DecodeResult:
    plan: Plan
    mode: str
    prompt_len: int
    tokens: list[int]  # the generated tokens (max_new_tokens, or up to and with the first stop token)
    forwards: list[Forward]  # decoding forwards (prefill excluded)
    proposed: list[int]  # per level (index 0 = level 1): tokens this level checked (level 1: drafted)
    accepted: list[int]  # per level: of those, kept
    wall_s: float  # decoding time (prefill excluded)
    prefill_s: float
    num_layers: int
    committed: int = 0  # tokens the full model committed (>= len(tokens): the last check may overshoot)

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.wall_s if self.wall_s > 0 else float("inf")

    def forwards_per_level(self) -> list[int]:
        out = [0] * self.plan.depth
        for f in self.forwards:
            out[f.level - 1] += 1
        return out

    def layer_tokens(self) -> list[int]:
        """Tokens processed by each layer (index 0 = layer 1) during decoding."""
        out = [0] * self.num_layers
        for f in self.forwards:
            for a, b, n in f.segments:
                for l in range(a, b + 1):
                    out[l - 1] += n
        return out

    def acceptance(self) -> list[float | None]:
        """Per level j >= 2: accepted / proposed of level j's checks (None when it never checked)."""
        return [a / p if p else None for p, a in zip(self.proposed[1:], self.accepted[1:])]

    def tokens_per_full_forward(self) -> float:
        """Tokens committed per full-model forward (counting the last check's overshoot)."""
        n = self.forwards_per_level()[-1]
        return (self.committed or len(self.tokens)) / n if n else 0.0

    def summary(self) -> dict:
        return {
            "plan": self.plan.describe(),
            "mode": self.mode,
            "prompt_len": self.prompt_len,
            "new_tokens": len(self.tokens),
            "committed": self.committed,
            "wall_s": self.wall_s,
            "tokens_per_s": self.tokens_per_s,
            "forwards_per_level": self.forwards_per_level(),
            "proposed_per_level": self.proposed,
            "accepted_per_level": self.accepted,
            "acceptance_per_level": self.acceptance(),
            "tokens_per_full_forward": self.tokens_per_full_forward(),
        }

    def to_dict(self) -> dict:
        d = self.summary()
        d["tokens"] = self.tokens
        d["plan"] = self.plan.model_dump()
        d["forwards"] = [asdict(f) for f in self.forwards]
        d["layer_tokens"] = self.layer_tokens()
        return d


def check_plan(model: Transformer, plan: Plan, batch_ok: bool = False) -> None:
    """The plan fits the model (and, unless batch_ok, asks for batch 1: batches of
    sequences run through `Batch` / `decode_batch` / `hispec-exec serve`)."""
    if plan.batch != 1 and not batch_ok:
        raise ValueError("batch: this command decodes one sequence (batch 1); batches run with hispec-exec serve")
    L = model.num_layers
    bad = [l for l in plan.levels if l > L]
    if bad:
        raise ValueError(f"levels: exits {bad} exceed the model's depth {L}")
    plan.check_depth(L)


def check_fits(plan: Plan, prompt_len: int, max_new_tokens: int, capacity: int) -> None:
    if prompt_len + max_new_tokens + plan.max_overshoot > capacity:
        raise ValueError(f"max_new_tokens: prompt ({prompt_len}) + max_new_tokens ({max_new_tokens}) + tokens in flight "
                         f"beyond them ({plan.max_overshoot}: {'the row of the next step' if plan.depth == 1 else 'speculation'}) "
                         f"exceeds the context capacity {capacity}")


def _validate(model: Transformer, plan: Plan, prompt_ids, max_new_tokens: int, mode: str | None,
              temperature: float, capacity: int | None) -> tuple[str, list[int], int]:
    mode = mode or plan.mode
    if mode not in ("greedy", "sampling"):
        raise ValueError(f"mode: must be greedy or sampling, got {mode!r}")
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise ValueError("prompt: empty prompt")
    V = model.args.vocab_size
    if any(not 0 <= t < V for t in prompt):
        raise ValueError(f"prompt: token ids must be in [0, {V})")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens: must be >= 1")
    if not temperature > 0 or temperature == float("inf"):
        raise ValueError("temperature: must be a finite number > 0")
    cap = capacity or model.args.max_seq_len
    check_fits(plan, len(prompt), max_new_tokens, cap)
    return mode, prompt, cap


class SequenceDecoder:
    """One sequence's speculative state under a plan: buffers, counters, its next
    operation, the job that operation adds to a forward, and what it does with the
    logits. Operations: 0 = draft (level 1, 1 row, head at l_1; for an autoregressive
    plan: the full forward, which commits); j >= 1 = level j+1 checks buffer j (the
    newest token through 1..l_j, the n+1 rows waiting above l_j through l_j+1..l_{j+1}).
    `_count` is the one place that counts proposals and acceptances, `_commit` the one
    place that counts committed tokens; batch 1 (`decode`) and batch B (`Batch`) alike
    drive this object through `run_step`."""

    def __init__(self, model: Transformer, plan: Plan, prompt_ids, max_new_tokens: int, mode: str | None = None,
                 seed: int = 0, temperature: float = 1.0, cache=None, capacity: int | None = None,
                 stop: frozenset[int] = frozenset()):
        check_plan(model, plan, batch_ok=True)
        self.mode, self.prompt, cap = _validate(model, plan, prompt_ids, max_new_tokens, mode, temperature,
                                                 capacity or (cache.capacity if cache is not None else None))
        self.model, self.plan = model, plan
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.stop, self.limit = stop, max_new_tokens  # limit: up to and with the first stop token committed
        self.greedy = self.mode == "greedy"
        self.cache = cache if cache is not None else model.new_cache(cap)
        self.gen = torch.Generator().manual_seed(seed)
        self.lv = list(plan.levels)
        self.k = len(self.lv)
        self.P = len(self.prompt)
        self.seq = list(self.prompt)
        self.bufs: list[list] = [[] for _ in range(self.k + 1)]  # bufs[j], j = 1..k-1: (token, its level's distribution)
        self.proposed = [0] * self.k
        self.accepted = [0] * self.k
        self.committed = self.P  # seq[:committed] is final; the rest sits in level buffers
        self.prefilled = 0  # prompt tokens in the cache (prefill_job)
        self.cascade: int | None = None  # a check that falls due right after the last one
        self.unsure = False  # adaptive: the last draft's top-1 probability fell below plan.draft_confidence
        self.forwards: list[Forward] = []
        self.dev = model.tok_embeddings.weight.device

    # -- schedule -------------------------------------------------------------------
    @property
    def emitted(self) -> int:
        """Generated tokens committed so far (capped at max_new_tokens or the first stop token)."""
        return min(self.committed - self.P, self.limit)

    @property
    def done(self) -> bool:
        return self.committed - self.P >= self.limit

    def next_op(self) -> int:
        """The batch-1 schedule: `propose` drafts, the level-2 check, then the cascade."""
        if self.k == 1:
            return 0
        if self.cascade is not None:
            return self.cascade
        return 0 if len(self.bufs[1]) < self.plan.propose and not self.unsure else 1

    @property
    def prefill_left(self) -> int:
        """Prompt tokens but the last not prefilled yet."""
        return max(self.P - 1, 0) - self.prefilled

    def prefill_job(self, tokens: int | None = None):
        """Every prompt token but the last runs through every layer; the last is pending.
        tokens: only the next this many of them (chunked prefill; None: all left)."""
        n = self.prefill_left if tokens is None else min(tokens, self.prefill_left)
        if n <= 0:
            return None
        ids = self.prompt[self.prefilled:self.prefilled + n]
        self.prefilled += n
        return (self.cache, self.model.num_layers, self._tensor(ids))

    # -- results ---------------------------------------------------------------------
    def apply(self, op: int, lg: torch.Tensor, ms: float, picks: list[int] | None = None) -> None:
        """Take the logits of `op`'s head rows (and, greedy, their argmax if already
        taken: `picks`) and advance the state."""
        if op == 0:
            self._draft(lg, ms, picks)
        else:
            self._check(op, lg, ms, picks)

    def _tensor(self, ids):
        return torch.tensor(ids, dtype=torch.long, device=self.dev)

    def _probs(self, lg: torch.Tensor) -> torch.Tensor:
        return torch.softmax(lg.double() / self.temperature, dim=-1).cpu()

    def _sample(self, p: torch.Tensor) -> int:
        return int(torch.multinomial(p, 1, generator=self.gen))

    def _count(self, level: int, proposed: int, kept: int) -> None:
        self.proposed[level] += proposed
        self.accepted[level] += kept

    def _commit(self) -> None:
        if self.stop:  # the first stop token among those committed now ends the output (with it)
            at = next((i for i in range(self.committed, len(self.seq)) if self.seq[i] in self.stop), None)
            if at is not None:
                self.limit = min(self.limit, at - self.P + 1)
        self.committed = len(self.seq)

    def _draft(self, lg: torch.Tensor, ms: float, picks: list[int] | None = None) -> None:
        lg = lg[0]
        l1 = self.lv[0]
        self.forwards.append(Forward(1, [(1, l1, 1)], l1, 1, ms, context=len(self.seq) - 1))
        if self.greedy:
            d, dist = (picks[0] if picks is not None else int(lg.argmax())), None
        else:
            dist = self._probs(lg)
            d = self._sample(dist)
        self.seq.append(d)
        if self.k == 1:  # autoregressive: the full model's token is final
            self._commit()
            return
        self.bufs[1].append((d, dist))
        self._count(0, 1, 0)
        if self.plan.draft_confidence:  # depends on the drafter's own distribution only: sampling stays lossless
            self.unsure = _top1(lg, dist) < self.plan.draft_confidence

    def _check(self, j: int, lg: torch.Tensor, ms: float, picks: list[int] | None = None) -> None:
        """Level j+1 checks level j's buffer."""
        buf = self.bufs[j]
        n = len(buf)
        lo, hi = self.lv[j - 1], self.lv[j]
        if lg.shape[0] != n + 1:
            raise RuntimeError(f"internal: level {j + 1} check saw {lg.shape[0]} positions, expected {n + 1}")
        fwd = Forward(j + 1, [(1, lo, 1), (lo + 1, hi, n + 1)], hi, n + 1, ms, context=len(self.seq) - n - 1)
        self.forwards.append(fwd)
        seq = self.seq
        start = len(seq) - n - 1
        if self.greedy:
            am = picks if picks is not None else lg.argmax(-1).tolist()
            m = 0
            while m < n and buf[m][0] == am[m]:
                m += 1
            t = am[m]
            kept = [(buf[i][0], None) for i in range(m)] + [(t, None)]
        else:
            p = self._probs(lg)
            m = 0
            t = None
            while m < n:
                x, q = buf[m]
                r = float(torch.rand((), generator=self.gen, dtype=torch.float64))
                if r * float(q[x]) < float(p[m, x]):  # accept with prob min(1, p/q)
                    m += 1
                    continue
                res = (p[m] - q).clamp_min(0)
                s = float(res.sum())
                t = self._sample(res / s) if s > 0 else self._sample(p[m])
                break
            if t is None:
                t = self._sample(p[n])
            kept = [(buf[i][0], p[i]) for i in range(m)] + [(t, p[m])]
        fwd.kept = m
        self.cache.crop(None, start + m + 1)
        del seq[start + m + 1:]
        seq.append(t)
        self.bufs[j] = []
        self._count(j, n, m)
        self.cascade = None
        self.unsure = False
        if j + 1 < self.k:
            self.bufs[j + 1].extend(kept)
            tau = self.plan.escalate_confidence[j - 1] if self.plan.escalate_confidence else 0.0
            if len(self.bufs[j + 1]) >= self.plan.windows[j - 1] or (tau and _top1(lg[m], kept[-1][1]) < tau):
                self.cascade = j + 1
        else:
            self._commit()

    def result(self, wall_s: float, prefill_s: float) -> DecodeResult:
        return DecodeResult(plan=self.plan, mode=self.mode, prompt_len=self.P,
                            tokens=self.seq[self.P:self.P + self.limit], forwards=self.forwards,
                            proposed=self.proposed, accepted=self.accepted, wall_s=wall_s, prefill_s=prefill_s,
                            num_layers=self.model.num_layers, committed=self.committed - self.P)


def _top1(lg: torch.Tensor, dist: torch.Tensor | None) -> float:
    """Top-1 probability of one row: the sampling distribution when there is one, else
    softmax of the logits at temperature 1 (what Acceptance.confidence measures)."""
    return float(dist.max()) if dist is not None else float(torch.softmax(lg.double(), -1).max())


def _sync(model: Transformer, on: bool) -> None:
    if on and model.tok_embeddings.weight.device.type == "cuda":
        torch.cuda.synchronize()


def run_prefill(model: Transformer, decoders: list[SequenceDecoder], tokens: list[int] | None = None) -> float:
    """One prefill forward (`prefill=True`: see `Transformer.run`) over every
    decoder's prompt but its last token (concatenated rows), or over the next tokens[i]
    of them (chunked prefill); returns ms."""
    jobs = [j for j in (d.prefill_job(n) for d, n in zip(decoders, tokens or [None] * len(decoders))) if j is not None]
    _sync(model, True)
    t = time.perf_counter()
    if jobs:
        model.run_jobs(jobs, prefill=True)
    _sync(model, True)
    return (time.perf_counter() - t) * 1e3


def run_step(model: Transformer, ops: list[tuple[SequenceDecoder, int]], sync: bool = False) -> float:
    """One forward carrying every (decoder, operation) pair (layer-range batching), one
    exit-head call over every head row, then each decoder applies its logits. Returns the
    forward + head time in ms (shared by every operation of the step)."""
    # every operation runs its sequence's newest token through its level's layers: one
    # tensor for all of them, each job a view of it (at B = 32, 32 small tensors cost ~0.3 ms)
    toks = torch.tensor([d.seq[-1] for d, _ in ops], dtype=torch.long, device=model.tok_embeddings.weight.device)
    jobs = [(d.cache, d.lv[op], toks[i:i + 1]) for i, (d, op) in enumerate(ops)]
    _sync(model, sync)
    t = time.perf_counter()
    outs = model.run_jobs(jobs)
    lg = model.head(torch.cat(outs) if len(outs) > 1 else outs[0])
    _sync(model, sync)
    ms = (time.perf_counter() - t) * 1e3
    # greedy picks of every head row at once (argmax compares, no arithmetic: each row's
    # pick is the one it gets alone, ties to the first index either way)
    am = lg.argmax(-1).tolist() if any(d.greedy for d, _ in ops) else None
    r = 0
    for (d, op), x in zip(ops, outs):
        n = x.shape[0]
        d.apply(op, lg[r:r + n], ms, am[r:r + n] if am is not None else None)
        r += n
    return ms


class Batch:
    """The running batch under a batching policy (see hispec_exec.serve for the spec).

    ragged: each step, every sequence performs its own next operation (`next_op`);
    synchronous: common rounds -- `propose` draft steps, one level-2 check step, then
    level-(j+1) check steps while any sequence's buffer j has reached its window; new
    sequences join at round boundaries only (`at_boundary`). Adaptive plans under
    `synchronous`: a sequence whose last draft was unsure (top-1 < draft_confidence) sits
    out the round's remaining draft steps (it is not in those forwards: per-sequence
    stops, no padding rows); the level-2 check step comes when every sequence has stopped
    or holds `propose` drafts; a level-(j+1) check step of every sequence comes when any
    sequence's buffer j reached its window or its level-j token was unsure
    (escalate_confidence) -- the sequences' own `cascade`. For fixed plans this is the
    schedule above, step for step."""

    def __init__(self, model: Transformer, plan: Plan, batching: str | None = None, sync: bool = False):
        self.model, self.plan = model, plan
        self.batching = batching or plan.batching
        if self.batching not in ("ragged", "synchronous"):
            raise ValueError(f"batching: must be ragged or synchronous, got {self.batching!r}")
        self.sync = sync
        self.running: list[SequenceDecoder] = []
        self.phase = 0  # synchronous: the operation of the next step
        self.drafts = 0  # synchronous: draft steps done in this round

    @property
    def at_boundary(self) -> bool:
        return self.batching == "ragged" or (self.phase == 0 and self.drafts == 0)

    def add(self, decoders: list[SequenceDecoder], tokens: list[int] | None = None) -> float:
        """Prefill `decoders` in one forward (the next tokens[i] prompt tokens of each:
        chunked prefill) and let those whose prompt is cached join; returns the prefill ms."""
        if not self.at_boundary:
            raise RuntimeError("internal: synchronous batches take new sequences at round boundaries only")
        ms = run_prefill(self.model, decoders, tokens)
        self.running.extend(d for d in decoders if not d.prefill_left)
        return ms

    def step(self) -> tuple[float, list[SequenceDecoder]]:
        """One decode step; returns (ms, the decoders that finished in it, now removed)."""
        if not self.running:
            return 0.0, []
        if self.batching == "ragged":
            ops = [(d, d.next_op()) for d in self.running]
        else:
            ops = [(d, self.phase) for d in self.running if self.phase or _drafting(d)]
        ms = run_step(self.model, ops, self.sync)
        finished = [d for d in self.running if d.done]
        self.running = [d for d in self.running if not d.done]
        if self.batching == "synchronous":
            self._advance()
            if not self.running:
                self.phase, self.drafts = 0, 0
        return ms, finished

    def _advance(self) -> None:
        plan, k = self.plan, self.plan.depth
        if k == 1:
            return
        if self.phase == 0:
            self.drafts += 1
            if not any(_drafting(d) for d in self.running):  # fixed plans: after `propose` draft steps
                self.phase = 1
            return
        j = self.phase + 1  # the check just done filled buffer j
        if self.running and j < k and any(d.cascade == j for d in self.running):  # window reached or escalation
            self.phase = j
        else:
            self.phase, self.drafts = 0, 0


def _drafting(d: SequenceDecoder) -> bool:
    """Whether a sequence drafts in a synchronous round's next draft step."""
    return len(d.bufs[1]) < d.plan.propose and not d.unsure


def decode(model: Transformer, plan: Plan, prompt_ids, max_new_tokens: int, mode: str | None = None,
           seed: int = 0, temperature: float = 1.0, capacity: int | None = None, sync: bool = False,
           on_step=None, stop: frozenset[int] = frozenset()) -> DecodeResult:
    """Decode one prompt with a plan. Greedy output equals autoregressive greedy decoding
    token for token; sampling output is distributed as the full model's samples.
    on_step(tokens committed so far), if given, is called after every forward. stop: token
    ids (the model's end of sequence) that end the output, with them, once committed."""
    check_plan(model, plan)
    d = SequenceDecoder(model, plan, prompt_ids, max_new_tokens, mode, seed, temperature, capacity=capacity,
                        stop=stop)
    prefill_s = run_prefill(model, [d]) / 1e3
    t0 = time.perf_counter()
    while not d.done:
        run_step(model, [(d, d.next_op())], sync)
        if on_step is not None:
            on_step(d.committed - d.P)
    _sync(model, True)
    return d.result(time.perf_counter() - t0, prefill_s)


def decode_batch(model: Transformer, plan: Plan, prompts, max_new_tokens: int | list[int],
                 mode: str | None = None, seed: int = 0, temperature: float = 1.0, batching: str | None = None,
                 sync: bool = False) -> list[DecodeResult]:
    """Decode several prompts together as one batch (all start at once; each leaves when
    it has its tokens) under `batching` (default: the plan's). Sequence i samples with
    seed + i. Each sequence's greedy output equals its autoregressive greedy decoding
    alone; under `ragged` its sampled output equals decode(..., seed=seed + i) alone
    (under `synchronous` it is distributed as the full model's). wall_s is the
    whole batch's decoding time."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts: at least one")
    news = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    if len(news) != len(prompts):
        raise ValueError("max_new_tokens: one per prompt")
    pool = model.new_pool(len(prompts))
    decs = [SequenceDecoder(model, plan, p, n, mode, seed + i, temperature, cache=pool.cache(i))
            for i, (p, n) in enumerate(zip(prompts, news))]
    b = Batch(model, plan, batching, sync)
    prefill_s = b.add(decs) / 1e3
    t0 = time.perf_counter()
    while b.running:
        b.step()
    wall = time.perf_counter() - t0
    return [d.result(wall, prefill_s) for d in decs]


def autoregressive(model: Transformer, prompt_ids, max_new_tokens: int, **kw) -> DecodeResult:
    return decode(model, Plan(levels=[model.num_layers]), prompt_ids, max_new_tokens, **kw)


# --------------------------------------------------------------------------- measurement API


@torch.no_grad()
def exit_traces(model: Transformer, prompt_ids, max_new_tokens: int, exits: list[int] | None = None,
                capacity: int | None = None) -> torch.Tensor:
    """Argmax of every exit at every position of the full model's greedy trajectory.

    Returns a LongTensor (max_new_tokens, len(exits)): row i = what each exit predicts for
    generated token i given the committed prefix; the last column is the trajectory itself.
    """
    from .confidence import exit_confidence  # one walk over the exits; it also records top-1 probabilities

    return exit_confidence(model, prompt_ids, max_new_tokens, exits, capacity)[0]


def heldout_exit_traces(model: Transformer, n_prompts: int, prompt_len: int = 64, max_new_tokens: int = 128,
                        seed: int = 0, exits: list[int] | None = None) -> tuple[torch.Tensor, list[int]]:
    """exit_traces over held-out prompts, stacked: (n_prompts * max_new_tokens, exits) and
    the row where each prompt's positions start (the profile's `trace_starts`)."""
    from .data import heldout_prompts

    rows, starts = [], []
    for p in heldout_prompts(n_prompts, prompt_len, seed):
        starts.append(sum(r.shape[0] for r in rows))
        rows.append(exit_traces(model, p, max_new_tokens, exits))
    return torch.cat(rows), starts
