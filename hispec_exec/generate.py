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


@dataclass
class DecodeResult:
    plan: Plan
    mode: str
    prompt_len: int
    tokens: list[int]  # the generated tokens (exactly max_new_tokens)
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
        return [None] + [a / p if p else None for p, a in zip(self.proposed[1:], self.accepted[1:])]

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


def check_plan(model: Transformer, plan: Plan) -> None:
    if plan.batch != 1:
        raise ValueError("batch: the executor runs batch 1")
    L = model.num_layers
    bad = [l for l in plan.levels if l > L]
    if bad:
        raise ValueError(f"levels: exits {bad} exceed the model's depth {L}")
    plan.check_depth(L)


def max_overshoot(plan: Plan) -> int:
    """Upper bound on tentative (uncommitted) tokens beyond the committed sequence."""
    if plan.depth == 1:
        return 1
    return plan.propose + sum(plan.windows) + plan.depth + 1


def check_fits(plan: Plan, prompt_len: int, max_new_tokens: int, capacity: int) -> None:
    if prompt_len + max_new_tokens + max_overshoot(plan) > capacity:
        raise ValueError(f"max_new_tokens: prompt ({prompt_len}) + max_new_tokens ({max_new_tokens}) + speculation "
                         f"({max_overshoot(plan)}) exceeds the context capacity {capacity}")


def decode(model: Transformer, plan: Plan, prompt_ids, max_new_tokens: int, mode: str | None = None,
           seed: int = 0, temperature: float = 1.0, capacity: int | None = None, sync: bool = False) -> DecodeResult:
    """Decode one prompt with a plan. Greedy output equals autoregressive greedy decoding
    token for token; sampling output is distributed as the full model's samples."""
    mode = mode or plan.mode
    if mode not in ("greedy", "sampling"):
        raise ValueError(f"mode: must be greedy or sampling, got {mode!r}")
    check_plan(model, plan)
    prompt = [int(t) for t in prompt_ids]
    if not prompt:
        raise ValueError("prompt: empty prompt")
    V = model.args.vocab_size
    if any(not 0 <= t < V for t in prompt):
        raise ValueError(f"prompt: token ids must be in [0, {V})")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens: must be >= 1")
    if temperature <= 0:
        raise ValueError("temperature: must be > 0")
    cap = capacity or model.args.max_seq_len
    P = len(prompt)
    check_fits(plan, P, max_new_tokens, cap)

    dev = model.tok_embeddings.weight.device
    cuda = dev.type == "cuda"
    cache = model.new_cache(cap)
    gen = torch.Generator().manual_seed(seed)
    greedy = mode == "greedy"
    lv = list(plan.levels)
    k = len(lv)
    L = model.num_layers
    forwards: list[Forward] = []
    proposed = [0] * k
    accepted = [0] * k
    seq = list(prompt)
    bufs: list[list] = [[] for _ in range(k + 1)]  # bufs[j], j = 1..k-1: (token, its level's distribution)

    def tensor(ids):
        return torch.tensor(ids, dtype=torch.long, device=dev)

    def probs(lg: torch.Tensor) -> torch.Tensor:
        return torch.softmax(lg.double() / temperature, dim=-1).cpu()

    def sample(p: torch.Tensor) -> int:
        return int(torch.multinomial(p, 1, generator=gen))

    def timed(fn):
        if sync and cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if sync and cuda:
            torch.cuda.synchronize()
        return out, (time.perf_counter() - t) * 1e3

    # prefill: every prompt token but the last runs through every layer; the last is pending
    t0 = time.perf_counter()
    if P > 1:
        model.run(cache, 0, L, tensor(prompt[:-1]))
    if cuda:
        torch.cuda.synchronize()
    prefill_s = time.perf_counter() - t0

    def draft() -> None:
        def f():
            x = model.run(cache, 0, lv[0], tensor([seq[-1]]))
            return model.head(x)[0]
        lg, ms = timed(f)
        if greedy:
            d, dist = int(lg.argmax()), None
        else:
            dist = probs(lg)
            d = sample(dist)
        forwards.append(Forward(1, [(1, lv[0], 1)], lv[0], 1, ms))
        seq.append(d)
        bufs[1].append((d, dist))
        proposed[0] += 1

    def check(j: int) -> None:
        """Level j+1 checks level j's buffer."""
        buf = bufs[j]
        n = len(buf)
        lo, hi = lv[j - 1], lv[j]

        def f():
            model.run(cache, 0, lo, tensor([seq[-1]]))
            x = model.run(cache, lo, hi)
            return model.head(x)
        lg, ms = timed(f)
        if lg.shape[0] != n + 1:
            raise RuntimeError(f"internal: level {j + 1} check saw {lg.shape[0]} positions, expected {n + 1}")
        fwd = Forward(j + 1, [(1, lo, 1), (lo + 1, hi, n + 1)], hi, n + 1, ms)
        forwards.append(fwd)
        start = len(seq) - n - 1
        if greedy:
            am = lg.argmax(-1).tolist()
            m = 0
            while m < n and buf[m][0] == am[m]:
                m += 1
            t = am[m]
            kept = [(buf[i][0], None) for i in range(m)] + [(t, None)]
        else:
            p = probs(lg)
            m = 0
            t = None
            while m < n:
                x, q = buf[m]
                r = float(torch.rand((), generator=gen, dtype=torch.float64))
                if r * float(q[x]) < float(p[m, x]):  # accept with prob min(1, p/q)
                    m += 1
                    continue
                res = (p[m] - q).clamp_min(0)
                s = float(res.sum())
                t = sample(res / s) if s > 0 else sample(p[m])
                break
            if t is None:
                t = sample(p[n])
            kept = [(buf[i][0], p[i]) for i in range(m)] + [(t, p[m])]
        fwd.kept = m
        cache.crop(None, start + m + 1)
        del seq[start + m + 1:]
        seq.append(t)
        bufs[j] = []
        proposed[j] += n
        accepted[j] += m
        if j + 1 < k:
            bufs[j + 1].extend(kept)
        else:
            committed[0] = len(seq)

    committed = [len(seq)]  # seq[:committed] is final; the rest sits in level buffers
    t0 = time.perf_counter()
    while committed[0] - P < max_new_tokens:
        if k == 1:
            def f():
                return model.head(model.run(cache, 0, L, tensor([seq[-1]])))[0]
            lg, ms = timed(f)
            forwards.append(Forward(1, [(1, L, 1)], L, 1, ms))
            seq.append(int(lg.argmax()) if greedy else sample(probs(lg)))
            committed[0] = len(seq)
            continue
        for _ in range(plan.propose):
            draft()
        check(1)
        j = 2
        while j < k and len(bufs[j]) >= plan.windows[j - 2]:
            check(j)
            j += 1
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    return DecodeResult(plan=plan, mode=mode, prompt_len=P, tokens=seq[P:P + max_new_tokens], forwards=forwards,
                        proposed=proposed, accepted=accepted, wall_s=wall, prefill_s=prefill_s, num_layers=L,
                        committed=committed[0] - P)


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
    L = model.num_layers
    exits = list(exits or range(1, L + 1))
    if exits[-1] != L:
        raise ValueError(f"exits: must end at the last layer {L}")
    traj = autoregressive(model, prompt_ids, max_new_tokens, capacity=capacity).tokens
    full = list(prompt_ids) + traj
    P = len(prompt_ids)
    cache = model.new_cache(capacity)
    x = None
    cols = []
    prev = 0
    dev = model.tok_embeddings.weight.device
    for e in exits:
        x = model.run(cache, prev, e, torch.tensor(full[:-1], device=dev) if prev == 0 else None)
        cols.append(model.head(x[P - 1:]).argmax(-1).cpu())
        prev = e
    out = torch.stack(cols, dim=1)
    if out[:, -1].tolist() != traj:
        raise RuntimeError("internal: the full model's trace differs from its greedy trajectory")
    return out


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
