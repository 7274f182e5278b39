"""A Llama-style early-exit decoder (RMSNorm, RoPE, GQA, SwiGLU) in plain PyTorch.

Every layer can exit through the shared final norm + LM head. Two code paths share the
weights:

* `forward_train` -- ordinary batched training forward (SDPA, nn.Linear), returns the
  hidden state after every layer so the LayerSkip early-exit loss can read every exit;
* `run` / `head` -- the decoding path over a `Cache`: run layers a+1..b over the positions
  that layer a has produced and layer a+1 has not consumed yet (LayerSkip's exit-query
  cache, at every exit boundary), reusing the KV cache of every layer.

The decoding path is *row invariant*: the result for a position does not depend on how
many other tokens share the forward. BLAS picks its kernel (and so its reduction order)
by shape, so every product on the decoding path is a stack of one-row products
(`mm`: one row per batch entry, the weight broadcast), whose shape per entry never
changes with the number of rows: the linear layers, the exit head, and attention (each
query against its kv head's whole cache capacity, masked). Elementwise ops and softmax
see contiguous rows. So speculative decoding reproduces autoregressive greedy decoding
bit for bit, even on near-ties.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelArgs:
    vocab_size: int = 256
    dim: int = 160
    n_layers: int = 16
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_dim: int = 448
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    max_seq_len: int = 512
    tie_embeddings: bool = True
    rope_scaling: dict | None = None  # Llama-3 style {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelArgs":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config: unknown keys {unknown}")
        args = cls(**d)
        for f in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq_len"):
            v = getattr(args, f)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"config.{f}: must be a positive integer, got {v!r}")
        if args.dim % args.n_heads or args.n_heads % args.n_kv_heads:
            raise ValueError("config.n_heads: dim must divide by n_heads and n_heads by n_kv_heads")
        return args


def mm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.T, row invariant: every row is computed exactly as a one-row F.linear would
    (several rows go through a batched product with the weight broadcast, one row per
    batch entry, which takes the same BLAS path as a single row)."""
    n = x.shape[0]
    if n == 1:
        return F.linear(x, w)
    return torch.bmm(x[:, None, :], w.t().expand(n, w.shape[1], w.shape[0]))[:, 0]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(args: ModelArgs, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    hd = args.head_dim
    inv = 1.0 / (args.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64, device=device) / hd))
    if args.rope_scaling:
        inv = _llama3_scaling(inv, args.rope_scaling)
    t = torch.arange(args.max_seq_len, dtype=torch.float64, device=device)
    ang = torch.outer(t, inv)
    ang = torch.cat([ang, ang], dim=-1)  # HF "rotate_half" layout
    return ang.cos().float(), ang.sin().float()


def _llama3_scaling(inv: torch.Tensor, sc: dict) -> torch.Tensor:
    factor = float(sc["factor"])
    lo, hi = float(sc.get("low_freq_factor", 1.0)), float(sc.get("high_freq_factor", 4.0))
    old = float(sc.get("original_max_position_embeddings", 8192))
    wavelen = 2 * math.pi / inv
    out = torch.where(wavelen > old / lo, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
    return torch.where(medium, smoothed, out)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x (..., T, H, hd); cos/sin (T, hd)
    h = x.shape[-1] // 2
    rot = torch.cat([-x[..., h:], x[..., :h]], dim=-1)
    return x * cos[:, None, :] + rot * sin[:, None, :]


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        hd, kv = args.head_dim, args.n_kv_heads
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.wqkv = nn.Linear(args.dim, (args.n_heads + 2 * kv) * hd, bias=False)
        self.wo = nn.Linear(args.n_heads * hd, args.dim, bias=False)
        self.w13 = nn.Linear(args.dim, 2 * args.ffn_dim, bias=False)
        self.w2 = nn.Linear(args.ffn_dim, args.dim, bias=False)

    # -- training path ------------------------------------------------------------
    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        a = self.args
        B, T, _ = x.shape
        hd, H, KV = a.head_dim, a.n_heads, a.n_kv_heads
        q, k, v = self.wqkv(self.attention_norm(x)).split([H * hd, KV * hd, KV * hd], dim=-1)
        q = apply_rope(q.view(B, T, H, hd), cos, sin).transpose(1, 2)
        k = apply_rope(k.view(B, T, KV, hd), cos, sin).transpose(1, 2)
        v = v.view(B, T, KV, hd).transpose(1, 2)
        k = k.repeat_interleave(H // KV, dim=1)
        v = v.repeat_interleave(H // KV, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.wo(y.transpose(1, 2).reshape(B, T, H * hd))
        g, u = self.w13(self.ffn_norm(x)).chunk(2, dim=-1)
        return x + self.w2(F.silu(g) * u)

    # -- decoding path (row invariant, one sequence) --------------------------------
    def step(self, x: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, pos0: int,
             cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (n, dim) at positions pos0..pos0+n-1; kc/vc (KV, C, hd) this layer's cache.
        Attention spans the whole capacity C with a mask, one query per row of one-row
        products (the shape of a column-stacked product would change the BLAS kernel)."""
        a = self.args
        n = x.shape[0]
        hd, H, KV = a.head_dim, a.n_heads, a.n_kv_heads
        G = H // KV
        qkv = mm(self.attention_norm(x), self.wqkv.weight)
        qk = apply_rope(qkv[:, : (H + KV) * hd].reshape(n, H + KV, hd), cos, sin)
        kc[:, pos0:pos0 + n] = qk[:, H:].transpose(0, 1)
        vc[:, pos0:pos0 + n] = qkv[:, (H + KV) * hd:].reshape(n, KV, hd).transpose(0, 1)
        q = (qk[:, :H] * (1.0 / math.sqrt(hd))).view(n, KV, G, hd)
        o = torch.empty(n, KV, G, hd, dtype=x.dtype, device=x.device)
        for h in range(KV):  # every query is a one-row product against its kv head's whole cache
            s = mm(q[:, h].reshape(n * G, hd), kc[h])  # (n*G, C)
            p = torch.softmax(s + mask, dim=-1)
            o[:, h] = mm(p, vc[h].t()).view(n, G, hd)
        o = o.reshape(n, H * hd)
        x = x + mm(o, self.wo.weight)
        g, u = mm(self.ffn_norm(x), self.w13.weight).chunk(2, dim=-1)
        return x + mm(F.silu(g) * u, self.w2.weight)

    # -- decoding path, several sequences in one call (row invariant) ----------------
    def step_rows(self, x: torch.Tensor, layer: int, parts: list, cos: torch.Tensor, sin: torch.Tensor,
                  masks: list) -> torch.Tensor:
        """x (R, dim): the rows of several sequences, concatenated; parts[i] = (cache, row0,
        n, pos0): rows row0..row0+n-1 are that cache's positions pos0..pos0+n-1; cos/sin per
        row. Linear layers see all rows at once (`mm` is row invariant); attention is per
        sequence, each query a one-row product against its kv head's whole cache, as in
        `step` -- batched over sequences in consecutive pool slots when they carry as many
        rows each. Every row's result is bit-identical to running its sequence alone."""
        a = self.args
        R = x.shape[0]
        hd, H, KV = a.head_dim, a.n_heads, a.n_kv_heads
        G = H // KV
        l = layer
        qkv = mm(self.attention_norm(x), self.wqkv.weight)
        qk = apply_rope(qkv[:, : (H + KV) * hd].reshape(R, H + KV, hd), cos, sin)
        vv = qkv[:, (H + KV) * hd:].reshape(R, KV, hd)
        pool = parts[0][0].pool
        if pool is not None and all(c.pool is pool for c, *_ in parts):
            slots = torch.tensor([c.slot for c, _, n, _ in parts for _ in range(n)], device=x.device)
            pos = torch.tensor([p for _, _, n, p0 in parts for p in range(p0, p0 + n)], device=x.device)
            pool.k[l][:, slots, pos] = qk[:, H:].transpose(0, 1)
            pool.v[l][:, slots, pos] = vv.transpose(0, 1)
        else:
            for c, r0, n, p0 in parts:
                c.k[l][:, p0:p0 + n] = qk[r0:r0 + n, H:].transpose(0, 1)
                c.v[l][:, p0:p0 + n] = vv[r0:r0 + n].transpose(0, 1)
        q = (qk[:, :H] * (1.0 / math.sqrt(hd))).view(R, KV, G, hd)
        o = torch.empty(R, KV, G, hd, dtype=x.dtype, device=x.device)
        n0 = parts[0][2]
        sl = [c.slot for c, *_ in parts] if pool is not None else []
        if (pool is not None and len(parts) > 1 and all(n == n0 for _, _, n, _ in parts)
                and all(a < b for a, b in zip(sl, sl[1:])) and sl[-1] - sl[0] < 2 * len(parts)):
            # sequences in slots first..last (a few unused slots in between compute discarded rows)
            k, first, span = len(parts), sl[0], sl[-1] - sl[0] + 1
            rows = torch.tensor([s_ - first for s_ in sl], device=x.device)
            mask = torch.zeros(span, n0 * G, masks[0].shape[-1], dtype=x.dtype, device=x.device)
            mask[rows] = torch.stack(masks)
            for h in range(KV):
                qh = q[:, h].reshape(k, n0 * G, hd)
                if span != k:
                    qh = torch.zeros(span, n0 * G, hd, dtype=x.dtype, device=x.device).index_copy_(0, rows, qh)
                kt = pool.k[l, h, first:first + span].transpose(1, 2)  # (span, hd, C)
                s = torch.cat([torch.bmm(qh[:, i:i + 1], kt) for i in range(n0 * G)], dim=1)
                p = torch.softmax(s + mask, dim=-1)
                vh = pool.v[l, h, first:first + span]  # (span, C, hd)
                oh = torch.cat([torch.bmm(p[:, i:i + 1], vh) for i in range(n0 * G)], dim=1)
                o[:, h] = (oh if span == k else oh[rows]).reshape(R, G, hd)
        else:
            for (c, r0, n, p0), m in zip(parts, masks):
                for h in range(KV):
                    s = mm(q[r0:r0 + n, h].reshape(n * G, hd), c.k[l][h])
                    p = torch.softmax(s + m, dim=-1)
                    o[r0:r0 + n, h] = mm(p, c.v[l][h].t()).view(n, G, hd)
        o = o.reshape(R, H * hd)
        x = x + mm(o, self.wo.weight)
        g, u = mm(self.ffn_norm(x), self.w13.weight).chunk(2, dim=-1)
        return x + mm(F.silu(g) * u, self.w2.weight)


class Cache:
    """KV cache of every layer + hidden states waiting at exit boundaries, one sequence.

    lens[l] (1-based layer l) = number of positions layer l has processed. Lower layers
    run ahead of deeper ones; hid[b][lens[b+1]:lens[b]] are the outputs of layer b that
    layer b+1 has not consumed yet. Cropping is exact: it only moves lengths back.
    """

    def __init__(self, args: ModelArgs, device=None, dtype=torch.float32, capacity: int | None = None,
                 pool: "CachePool | None" = None, slot: int | None = None):
        self.args = args
        C = capacity or args.max_seq_len
        if C > args.max_seq_len:
            raise ValueError(f"capacity: {C} exceeds the model's max_seq_len {args.max_seq_len}")
        self.capacity = C
        self.pool, self.slot = pool, slot
        if pool is not None:  # a view of one slot of a pool (stale values past lens are masked)
            self.k, self.v = pool.k[:, :, slot], pool.v[:, :, slot]
        else:
            shape = (args.n_layers, args.n_kv_heads, C, args.head_dim)
            self.k = torch.zeros(shape, device=device, dtype=dtype)
            self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.lens = [0] * (args.n_layers + 1)  # index 0 unused
        self.hid: dict[int, torch.Tensor] = {}
        self.device, self.dtype = device, dtype

    def hidden(self, b: int) -> torch.Tensor:
        if b not in self.hid:
            self.hid[b] = torch.zeros(self.capacity, self.args.dim, device=self.device, dtype=self.dtype)
        return self.hid[b]

    def crop(self, layers: range | tuple[int, int] | None, length: int) -> None:
        """Forget every position >= length in the given 1-based layers (all when None)."""
        if layers is None:
            layers = range(1, self.args.n_layers + 1)
        elif isinstance(layers, tuple):
            layers = range(layers[0], layers[1] + 1)
        for l in layers:
            if self.lens[l] > length:
                self.lens[l] = length


class CachePool:
    """The KV caches of `slots` sequences in one tensor per K and V, (layers, KV, slots,
    C, hd), so that one step can write every sequence's keys in one indexed copy and run
    the attention of sequences with as many rows each as one batched product per query
    row (each batch entry one row against one sequence's cache: the same one-row product
    as a lone sequence's). `cache(slot)` hands out a fresh Cache viewing that slot."""

    def __init__(self, args: ModelArgs, slots: int, device=None, dtype=torch.float32, capacity: int | None = None):
        C = capacity or args.max_seq_len
        if C > args.max_seq_len:
            raise ValueError(f"capacity: {C} exceeds the model's max_seq_len {args.max_seq_len}")
        if slots < 1:
            raise ValueError("slots: must be >= 1")
        self.args, self.slots, self.capacity = args, slots, C
        shape = (args.n_layers, args.n_kv_heads, slots, C, args.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.device, self.dtype = device, dtype

    def cache(self, slot: int) -> Cache:
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot: must be in [0, {self.slots})")
        return Cache(self.args, self.device, self.dtype, self.capacity, pool=self, slot=slot)


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.apply(self._init)
        for layer in self.layers:  # GPT-2 style scaled init of the residual projections
            for w in (layer.wo.weight, layer.w2.weight):
                nn.init.normal_(w, std=0.02 / math.sqrt(2 * args.n_layers))
        cos, sin = rope_tables(args)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._mask_cache: dict = {}

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def num_layers(self) -> int:
        return self.args.n_layers

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- training -------------------------------------------------------------------
    def forward_train(self, idx: torch.Tensor, skip: set[int] | None = None) -> list[torch.Tensor]:
        """Hidden state after each layer (list of L tensors (B, T, dim)); layers in `skip`
        (0-based) are dropped (identity)."""
        T = idx.shape[1]
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.tok_embeddings(idx)
        hs = []
        for i, layer in enumerate(self.layers):
            if not skip or i not in skip:
                x = layer(x, cos, sin)
            hs.append(x)
        return hs

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.output(self.norm(h))

    # -- decoding -------------------------------------------------------------------
    def new_cache(self, capacity: int | None = None) -> Cache:
        p = self.tok_embeddings.weight
        return Cache(self.args, device=p.device, dtype=p.dtype, capacity=capacity)

    def _mask(self, cache: Cache, pos0: int, n: int) -> torch.Tensor:
        key = (cache.capacity, pos0, n, str(cache.device), cache.dtype)
        m = self._mask_cache.get(key)
        if m is None:
            G = self.args.n_heads // self.args.n_kv_heads
            pos = torch.arange(pos0, pos0 + n, device=cache.device).repeat_interleave(G)  # (n*G,) token-major
            m = torch.arange(cache.capacity, device=cache.device)[None, :] > pos[:, None]
            m = torch.zeros(m.shape, device=cache.device, dtype=cache.dtype).masked_fill(m, float("-inf"))  # additive
            if len(self._mask_cache) > 4096:
                self._mask_cache.clear()
            self._mask_cache[key] = m
        return m

    @torch.no_grad()
    def run(self, cache: Cache, a: int, b: int, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Run layers a+1..b (1-based, inclusive). a == 0: over the new `tokens` (1-D ids);
        a > 0: over every position layer a produced that layer a+1 has not consumed.
        Returns the hidden states after layer b (n, dim) and keeps them at boundary b."""
        L = self.args.n_layers
        if not 0 <= a < b <= L:
            raise ValueError(f"layers: need 0 <= a < b <= {L}, got a={a} b={b}")
        pos0 = cache.lens[a + 1]
        if any(cache.lens[l] != pos0 for l in range(a + 1, b + 1)):
            raise RuntimeError(f"cache: layers {a + 1}..{b} are at different lengths {cache.lens[a + 1:b + 1]}")
        if a == 0:
            if tokens is None or tokens.numel() == 0:
                raise ValueError("tokens: nothing to run")
            x = self.tok_embeddings(tokens.reshape(-1))
        else:
            end = cache.lens[a]
            if end <= pos0:
                raise RuntimeError(f"cache: no hidden states waiting after layer {a}")
            x = cache.hid[a][pos0:end]
        n = x.shape[0]
        if pos0 + n > cache.capacity:
            raise ValueError(f"capacity: sequence of {pos0 + n} tokens exceeds the cache capacity {cache.capacity}")
        cos, sin = self.rope_cos[pos0:pos0 + n], self.rope_sin[pos0:pos0 + n]
        mask = self._mask(cache, pos0, n)
        for l in range(a, b):
            x = self.layers[l].step(x, cache.k[l], cache.v[l], pos0, cos, sin, mask)
            cache.lens[l + 1] = pos0 + n
        if b < L:
            cache.hidden(b)[pos0:pos0 + n] = x
        return x


    def new_pool(self, slots: int, capacity: int | None = None) -> CachePool:
        p = self.tok_embeddings.weight
        return CachePool(self.args, slots, device=p.device, dtype=p.dtype, capacity=capacity)

    @torch.no_grad()
    def run_jobs(self, jobs: list[tuple[Cache, int, torch.Tensor | None]]) -> list[torch.Tensor]:
        """One forward over several sequences (layer-range batching). Job (cache, b, tokens):
        in that sequence, run everything waiting below layer b+1 through layers up to b --
        at layer 1 the new `tokens`, at layer l > 1 every position layer l-1 has produced
        (in this forward or an earlier one) and layer l has not consumed. At each layer the
        rows of every job that reaches it are concatenated (one sequence per cache). Returns
        each job's rows after its layer b, (n_i, dim), kept at boundary b (when b < L).
        Each sequence's results are bit-identical to running it alone with `run`."""
        L = self.args.n_layers
        state = []  # per job: [x or None, pos0]
        for c, b, tokens in jobs:
            if not 1 <= b <= L:
                raise ValueError(f"layers: need 1 <= b <= {L}, got b={b}")
            if tokens is not None and tokens.numel():
                x = self.tok_embeddings(tokens.reshape(-1))
                if c.lens[1] + x.shape[0] > c.capacity:
                    raise ValueError(f"capacity: sequence of {c.lens[1] + x.shape[0]} tokens exceeds the cache "
                                     f"capacity {c.capacity}")
                state.append([x, c.lens[1]])
            else:
                state.append([None, c.lens[1]])
        if len({id(c) for c, _, _ in jobs}) != len(jobs):
            raise ValueError("jobs: one job per sequence")
        top = max(b for _, b, _ in jobs)
        for l in range(1, top + 1):
            parts, xs, masks, poss, idx = [], [], [], [], []
            r = 0
            for i, (c, b, _) in enumerate(jobs):
                if l > b:
                    continue
                x, pos0 = state[i]
                if l > 1:
                    end = c.lens[l - 1]
                    if c.lens[l] < (pos0 if x is not None else end):  # rows waiting at boundary l-1
                        w = c.hid[l - 1][c.lens[l]:pos0 if x is not None else end]
                        x = w if x is None else torch.cat([w, x])
                        pos0 = c.lens[l]
                if x is None:
                    continue
                if pos0 != c.lens[l]:
                    raise RuntimeError(f"cache: layer {l} is at {c.lens[l]}, rows start at {pos0}")
                n = x.shape[0]
                state[i] = [x, pos0]
                parts.append((c, r, n, pos0))
                idx.append(i)
                xs.append(x)
                masks.append(self._mask(c, pos0, n))
                poss.extend(range(pos0, pos0 + n))
                r += n
            if not parts:
                continue
            X = torch.cat(xs) if len(xs) > 1 else xs[0]
            pos = torch.tensor(poss, device=X.device)
            X = self.layers[l - 1].step_rows(X, l - 1, parts, self.rope_cos[pos], self.rope_sin[pos], masks)
            for i, (c, r0, n, pos0) in zip(idx, parts):
                state[i] = [X[r0:r0 + n], pos0]
                c.lens[l] = pos0 + n
        out = []
        for (c, b, _), (x, pos0) in zip(jobs, state):
            if x is None:
                raise RuntimeError(f"cache: nothing waiting to run up to layer {b}")
            if b < L:
                c.hidden(b)[pos0:pos0 + x.shape[0]] = x
            out.append(x)
        return out

    @torch.no_grad()
    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Exit head (shared final norm + LM head), row invariant; logits (n, vocab)."""
        return mm(self.norm(x), self.output.weight)
