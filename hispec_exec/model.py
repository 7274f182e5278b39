"""A Llama-style early-exit decoder (RMSNorm, RoPE, GQA, SwiGLU) in plain PyTorch.

Every layer can exit through the shared final norm + LM head. Two code paths share the
weights:

* `forward_train` -- ordinary batched training forward (SDPA, nn.Linear), returns the
  hidden state after every layer so the LayerSkip early-exit loss can read every exit;
* `run` / `head` -- the decoding path over a `Cache`: run layers a+1..b over the positions
  that layer a has produced and layer a+1 has not consumed yet (LayerSkip's exit-query
  cache, at every exit boundary), reusing the KV cache of every layer.

The decoding path is *row invariant*: the result for a position does not depend on how
many other tokens or sequences share the forward, nor on how its sequence was chunked
(among forwards of one kind: ordinary forwards, or prefill forwards, below).
BLAS picks its kernel (and so its reduction order) by shape, so the products on the
decoding path either have shapes that never depend on the batch, or shapes the library
was seen to treat alike:

* linear layers and the exit head, two ways, chosen once per weight shape by a probe
  (`probe_rows`, ~0.2 s on the first forward of the shipped model):
  - *free row counts*, where the probe finds that this machine's library computes every
    row of an (M, K) x (K, N) product with the same bits for every M from some min_rows
    (<= FREE_ROWS_MIN_LIMIT) to FREE_ROWS_MAX, in any slot: a forward's rows in one
    product (chunks of FREE_ROWS_MAX rows beyond that, the last zero-padded to at least
    min_rows). MKL on the developers' AMD EPYC VM: min_rows = 4 (Intel: not checked).
    At B = 32 this is one 32-row product instead of four 8-row tiles that each re-pack
    the weight;
  - *fixed tiles* otherwise: rows in tiles of exactly ROW_TILE rows (the last one
    zero-padded), one (ROW_TILE, K) x (K, N) product per tile, all tiles in one batched
    product against the weight stored column-major (`mm`, `_tiled`, `transposed`). A
    prefill forward (`run` / `run_jobs` with prefill=True: what `generate` runs over a
    prompt's tokens but its last, batched or alone alike) takes PREFILL_TILE-row tiles
    instead (per row ~30 % cheaper than 8 on this CPU; a prefill's rows are many), so a
    prompt position's bits depend on its having been prefilled, never on what else was;
* attention (`_Rows.attend`): per (sequence, KV head), query rows in tiles of QUERY_TILE
  rows, each against KV blocks of KV_BLOCK keys: (QUERY_TILE, hd) x (hd, KV_BLOCK) and
  (QUERY_TILE, KV_BLOCK) x (KV_BLOCK, hd + 1) products; the row maximum over the blocks is
  exact in any order, the blocks are summed one after another, and a block beyond a
  sequence's length (present because a longer sequence shares the batch) adds exact
  zeros. A prefill forward takes PREFILL_QUERY_TILE-row query tiles (half as many
  products). Its cost grows with the batch's length, not with the cache capacity. When the
  batch fills at least half its cache pool (decode steps, whole-batch prefills), it reads
  the KV store in place (no copy), one batched product per tile index.

The assumption (checked in tests/exec/test_model.py for the model's shapes): a product of
a fixed shape computes a row from that row's values by the same operations whatever the
other rows hold and whatever slot the row has in its tile; with free row counts, also
whatever the row count in the probed range (what the probe checks on the machine itself).
Elementwise ops and row reductions (norm, maximum, sums) see whole rows of fixed length;
one torch thread (with several, the partitioning of elementwise work could in principle
differ). So speculative decoding and batching reproduce autoregressive greedy decoding
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
        missing = [k for k in ("vocab_size", "dim", "n_layers", "n_heads") if k not in d]
        if missing:  # defaults would stand in for a model's shape: the weights then "lack" every tensor
            raise ValueError(f"config: missing {', '.join(missing)} (a Hugging Face config.json names model_type or "
                             "architectures)")
        return cls(**d)  # types and ranges: checkpoint.check_args, which every caller runs next


ROW_TILE = 8  # linear layers and the exit head: rows in tiles of exactly this many
PREFILL_TILE = 32  # the same, in prefill forwards (a prompt's tokens but its last: `prefill=True`)
KV_BLOCK = 64  # attention: keys per block
PREFILL_QUERY_TILE = 8  # the same in a prefill forward: half as many per-tile products as 4 rows
EXP_FLOOR = -87.0  # attention: exp arguments are clamped here (ln of the least normal float is -87.3)
QUERY_TILE = 4  # attention: query rows per tile (G per token). Not fewer: MKL's batched
# (rows, KV_BLOCK) x (KV_BLOCK, hd + 1) product with 1..3 rows gives a row other bits at some
# batch counts on this machine (with 4 or 8 it does not: tests/exec/test_model.py)


FREE_ROWS = True  # free row counts where the probe finds them row invariant (False: always fixed tiles)
FREE_ROWS_MAX = 128  # free row counts: products of up to this many rows (more go in chunks of it)
FREE_ROWS_MIN_LIMIT = 16  # the probe's least invariant row count must not exceed this to be worth it
FREE_ROWS_WEIGHT_LIMIT = 1 << 20  # elements: larger weights keep fixed tiles (their probe would take seconds)


def _free_sizes(n: int, min_rows: int) -> list[int]:
    """Row counts of the products that carry n rows with free row counts: chunks of
    FREE_ROWS_MAX rows, the last one (or the only one) zero-padded to at least min_rows."""
    full, rest = divmod(n, FREE_ROWS_MAX)
    return [FREE_ROWS_MAX] * full + ([max(rest, min_rows)] if rest else [])


def _free_mm(x: torch.Tensor, w_t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """x @ w_t, x's rows (sum(sizes) of them) in products of the given row counts."""
    if len(sizes) == 1:
        return torch.mm(x, w_t)
    out = x.new_empty(x.shape[0], w_t.shape[1])
    for c, o in zip(x.split(sizes), out.split(sizes)):
        torch.mm(c, w_t, out=o)
    return out


_PROBED: dict = {}  # (device type, dtype, shape, strides, max rows) -> the probe's verdict


def probe_rows(w_t: torch.Tensor, max_rows: int = FREE_ROWS_MAX) -> int | None:
    """The least m such that every row of an (M, K) x (K, N) product against w_t, for every
    M in m..max_rows and in any slot, has the bits it has in the max_rows-row product
    (seeded random rows, each M at the first and the last offset, inputs fresh tensors as on
    the decoding path); None when that m exceeds FREE_ROWS_MIN_LIMIT, and without probing for
    a weight of more than FREE_ROWS_WEIGHT_LIMIT elements (the shipped model's: 26-72 k;
    the probe's ~250 products cost ~K N 128^2 multiply-adds). A product's arithmetic
    does not depend on the values it multiplies, only on which kernel the library picks for
    the shape, so this checks the kernel choice of this machine's library (MKL on the
    developers' AMD EPYC VM: rows 1..3 go another way, 4..128 all agree). Kept per shape,
    strides, dtype and device."""
    key = (w_t.device.type, w_t.dtype, tuple(w_t.shape), w_t.stride(), max_rows)
    if key not in _PROBED and w_t.numel() > FREE_ROWS_WEIGHT_LIMIT:
        _PROBED[key] = None
    if key not in _PROBED:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(max_rows, w_t.shape[0], generator=g).to(w_t.device, w_t.dtype)
        ref = torch.mm(x, w_t)
        least = max_rows
        for m in range(max_rows - 1, 0, -1):
            if not all(torch.equal(torch.mm(x[o:o + m].clone(), w_t), ref[o:o + m]) for o in (0, max_rows - m)):
                break
            least = m
        _PROBED[key] = least if least <= FREE_ROWS_MIN_LIMIT else None
    return _PROBED[key]


def _tiled(x: torch.Tensor, w_t: torch.Tensor, tile: int = ROW_TILE) -> torch.Tensor:
    """x @ w_t for x of a whole number of `tile`-row tiles: one batched product, one
    (tile, K) x (K, N) product per tile, the weight (K, N) broadcast."""
    nt = x.shape[0] // tile
    return torch.bmm(x.view(nt, tile, x.shape[1]), w_t.expand(nt, *w_t.shape)).view(x.shape[0], w_t.shape[1])


def mm(x: torch.Tensor, w_t: torch.Tensor, tile: int = ROW_TILE, min_rows: int | None = None) -> torch.Tensor:
    """x @ w_t (w_t: a weight transposed, (K, N)), row invariant: the rows go in tiles of
    exactly `tile` rows (the last one zero-padded), so every product has the same shape
    whatever the number of rows, and a row's result depends on nothing but its own values
    (not on the other rows, nor on its slot in a tile: tested). With min_rows (free row
    counts, `probe_rows`' verdict): products of min_rows..FREE_ROWS_MAX rows instead."""
    n = x.shape[0]
    sizes = None if min_rows is None else _free_sizes(n, min_rows)
    pad = -n % tile if sizes is None else sum(sizes) - n
    x = F.pad(x, (0, 0, 0, pad)) if pad else x
    return (_tiled(x, w_t, tile) if sizes is None else _free_mm(x, w_t, sizes))[:n]


_PARAMETER_EPOCH = [0]  # bumped whenever any module registers a parameter (replacing one included)


def _parameter_registered(module, name, param):
    _PARAMETER_EPOCH[0] += 1


torch.nn.modules.module.register_module_parameter_registration_hook(_parameter_registered)


def transposed(*weights: torch.Tensor) -> list[torch.Tensor]:
    """(K, N) contiguous views of (N, K) weights, without a copy: the first call re-lays a
    weight's storage column-major in place (same shape, same values; F.linear, optimizers,
    load_state_dict and the checkpoint writers, which make tensors contiguous, do not
    mind). The decoding path's (ROW_TILE, K) x (K, N) tiles took ~15-20% less CPU time on
    this CPU against a contiguous right operand than against the transposed view of a
    row-major weight (one layer's four products at 1 and 32 rows, measured side by side)."""
    for w in weights:
        if not w.t().is_contiguous():
            w.data = w.data.t().contiguous().t()
    return [w.t() for w in weights]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


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


def _decode_layer(x: torch.Tensor, w: tuple, layer: int, rows: "_Rows") -> torch.Tensor:
    """One layer of the decoding path. x (rows.padded, dim): the rows of one or several
    sequences, concatenated and zero-padded (to whole row tiles, or to min_rows: see
    `_Rows.linear`; `rows` says whose rows they are and where they sit); w: the layer's
    weights as `Transformer._decoding_weights` lays them out (norm weights, each product's
    weight transposed, broadcast over rows.nt tiles when tiled; w13 as its two column
    halves, gate and up: two (rows, K) x (K, ffn) products, each weight half fits this CPU's
    512 KB L2 where the whole did not: 2-5 % per decode step at B = 1..16, measured side by
    side). Every product is row invariant (module docstring), so every row's result is
    bit-identical to running its sequence alone, in any chunking (prefill forwards: among
    prefill forwards). The op sequence is kept short: on the shipped model a decode step
    is dominated by per-op dispatch, not FLOPs."""
    an, wqkv, wo, fn, w1, w3, w2, nshape, eps = w
    Rp, R, lin = rows.padded, rows.rows, rows.linear
    H, KV, hd = rows.dims
    qkv = lin(F.rms_norm(x, nshape, an, eps), wqkv).view(Rp, H + 2 * KV, hd)
    qk = qkv[:, :H + KV]  # RoPE (queries also scaled), rotate_half as a flip:
    qk = qk * rows.cos + qk.view(Rp, H + KV, 2, hd // 2).flip(2).view(Rp, H + KV, hd) * rows.sin
    rows.write(layer, qk[:R, H:], qkv[:R, H + KV:])
    x = x + lin(rows.attend(layer, qk), wo)
    h = F.rms_norm(x, nshape, fn, eps)
    g, u = lin(h, w1), lin(h, w3)  # w13's halves: each fits L2
    return x + lin(F.silu(g, inplace=True).mul_(u), w2)  # g, u: this layer's own


class _Rows:
    """Index plan of one forward's rows, built once and shared by every layer that carries
    the same rows: parts[i] = (cache, n, pos0): the next n rows are that cache's positions
    pos0..pos0+n-1. Attention is made of fixed-shape pieces. An entry is one (sequence, KV
    head): its query rows (token-major, G = n_heads / n_kv_heads per token) in tiles of
    QUERY_TILE rows, tile t = rows t*QUERY_TILE.. (t < T, the batch's most tiles; padding
    rows and a shorter entry's extra tiles repeat a real query, discarded), every tile
    against the KV blocks 0..nb-1, nb = the batch's longest need: a block past a sequence's
    own length is fully masked and adds exact zeros (see `attend`). Two ways to lay the
    entries out:

    * in place (every part in one store, at most half of its slots idle in a decode step,
      none in a prefill): one entry per (KV head, slot) of the whole store, idle slots
      included, against the store's first nb blocks as they lie (no copy);
    * gathered (caches in several stores, or few sequences in a large pool): one entry per
      (part, KV head), its blocks copied out by index once per layer.

    Both compute every (tile, block) product, maximum, sum and division by the same
    sequence of operations, so a row's bits do not depend on which way its batch went."""

    def __init__(self, model: "Transformer", parts: list[tuple["Cache", int, int]], prefill: bool = False):
        a = model.args
        Bk = KV_BLOCK
        dev = model.rope_cos.device
        self.rows = R = sum(n for _, n, _ in parts)
        # the linear products' rows and the attention's query rows per tile: a prefill forward has its own
        tile, Tq = (PREFILL_TILE, PREFILL_QUERY_TILE) if prefill else (ROW_TILE, QUERY_TILE)
        self.qtile = Tq
        views = model._weight_views()  # checked once per forward (~20 us on the shipped model)
        min_rows = model._min_rows(views)
        if min_rows is None:  # fixed tiles
            self.padded = Rp = -(-R // tile) * tile
            self.nt, self.sizes = Rp // tile, None
        else:  # free row counts
            self.sizes = _free_sizes(R, min_rows)
            self.padded = Rp = sum(self.sizes)
            self.nt = 0
        self.weights = model._decoding_weights(self.nt, views)  # per layer, broadcast over its tiles (if any)
        self.nb = nb = -(-max(p0 + n for _, n, p0 in parts) // Bk)
        self.dims = (a.n_heads, a.n_kv_heads, a.head_dim)
        runs = []  # the store of every run of consecutive parts sharing one
        for c, _, _ in parts:
            if not runs or runs[-1] is not c.store:
                runs.append(c.store)
                c.store.need(nb)
        first: dict = {}  # store -> its rank of first appearance: the layout depends on nothing else
        key = (str(dev), Rp, Tq,
               tuple((first.setdefault(id(c.store), len(first)), c.store.slots, c.slot, n) for c, n, _ in parts),
               prefill)
        plan = model._row_plan(key)
        T, E = self.tiles, self.entries = plan["T"], plan["E"]
        self.in_place = plan["in_place"]
        # the positions: the only thing that changes from one decode step to the next
        p0 = torch.tensor([p for _, _, p in parts] + [0], device=dev)  # + 0 for padding rows / idle entries
        pos = p0[plan["row_part"]] + plan["row_tok"]
        cos, sin = model._rope_rows()
        self.cos, self.sin = cos[pos], sin[pos]  # (Rp, H + KV, hd): the queries' 1/sqrt(hd) rides on the rotation
        self.groups = []  # runs of consecutive parts sharing a store: [store, write rows, blocks, entries]
        for st, (w_part, w_tok, w_c, mult, blk_c) in zip(runs, plan["groups"]):
            q = p0[w_part] + w_tok
            rows_w = torch.div(q, Bk, rounding_mode="floor").mul_(mult).add_(w_c).mul_(Bk).add_(q % Bk)
            blocks = None if blk_c is None else \
                (torch.arange(nb, device=dev)[:, None] * mult + blk_c[None, :]).reshape(-1)  # laid out (nb, entries)
            self.groups.append([st, rows_w, blocks, 0 if blk_c is None else blk_c.shape[0]])
        self.qidx = plan["qi"].view(T, 1, E, Tq).expand(T, nb, E, Tq).reshape(-1)
        self.oidx = plan["oi"]
        qp = (p0[plan["q_part"]] + plan["q_tok"]).view(T, 1, E, Tq, 1)
        hidden = plan["keys"][:, :nb] > qp
        self.mask = torch.zeros(T, nb, E, Tq, Bk, device=dev, dtype=model.rope_cos.dtype).masked_fill_(
            hidden, float("-inf"))  # additive causal mask: the row maxima see visible keys only
        self.keep = (~hidden).to(self.mask.dtype)  # 1 visible, 0 hidden: applied after the exp

    @staticmethod
    def layout(args: ModelArgs, key: tuple) -> dict:
        """The position-independent part of a plan (built once per layout `key` = (device,
        padded rows, query tile, per part: (its store's rank, the store's slots, slot,
        rows), prefill)): which part and token every row, query row and KV write belongs to, the
        query and output gathers. `__init__` adds the positions (a few tensor ops), so a
        decode step whose batch keeps its layout rebuilds no Python lists."""
        H, KV = args.n_heads, args.n_kv_heads
        G, Bk = H // KV, KV_BLOCK
        dev, Rp, Tq, parts, prefill = key
        R = sum(n for *_, n in parts)
        T = max(-(-(n * G) // Tq) for *_, n in parts)
        # an idle slot computes every query tile of the batch: one tile in a decode step, the
        # longest prompt's many in a prefill (4 prompts of 400 tokens in a pool of 8: 1.8x the time gathered)
        in_place = all(st == 0 for st, *_ in parts) and parts[0][1] <= (1 if prefill else 2) * len(parts)
        E = KV * (parts[0][1] if in_place else len(parts))
        P = len(parts)  # p0 index of the padding rows / idle entries (position 0)
        # query row j of tile (t, entry) = row qi[t][entry][j] of qk viewed (Rp * (H + KV), hd), position
        # p0[q_part] + q_tok; idle slots: any real query (row 0), key 0 visible
        qi = [[[0] * Tq for _ in range(E)] for _ in range(T)]
        q_part = [[[P] * Tq for _ in range(E)] for _ in range(T)]
        q_tok = [[[0] * Tq for _ in range(E)] for _ in range(T)]
        oi, row_part, row_tok, r = [0] * (Rp * H), [], [], 0
        groups: list = []  # per store run: [write part, write token, write (head * slots + slot), KV * slots, blocks]
        for i, (st, slots, s, n) in enumerate(parts):
            if not groups or groups[-1][5] != st:
                groups.append([[], [], [], KV * slots, None if in_place else [], st])
            grp = groups[-1]
            row_part += [i] * n
            row_tok += range(n)
            for t in range(n):
                grp[0] += [i] * KV
                grp[1] += [t] * KV
                grp[2] += [h * slots + s for h in range(KV)]
            for h in range(KV):
                ent = h * slots + s if in_place else i * KV + h
                for k in range(T * Tq):  # query row k of this entry: token k // G, head h*G + k % G
                    tok, head = (k // G, h * G + k % G) if k < n * G else (0, h * G)
                    t, j = k // Tq, k % Tq
                    qi[t][ent][j], q_part[t][ent][j], q_tok[t][ent][j] = (r + tok) * (H + KV) + head, i, tok
                    if k < n * G:
                        oi[(r + tok) * H + head] = (t * E + ent) * Tq + j
                if not in_place:
                    grp[4].append(h * slots + s)
            r += n
        row_part += [P] * (Rp - R)
        row_tok += [0] * (Rp - R)

        def t_(x):
            return torch.tensor(x, device=dev)

        return {"T": T, "E": E, "in_place": in_place, "qi": t_(qi).reshape(-1), "oi": t_(oi),
                "q_part": t_(q_part).reshape(-1), "q_tok": t_(q_tok).reshape(-1),
                "row_part": t_(row_part), "row_tok": t_(row_tok),
                "keys": torch.arange(-(-args.max_seq_len // Bk) * Bk, device=dev).view(1, -1, 1, 1, Bk),
                "groups": [(t_(g[0]), t_(g[1]), t_(g[2]), g[3], None if g[4] is None else t_(g[4])) for g in groups]}

    def linear(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x (padded, K) @ w: in nt tiles (w broadcast over them), or in products of
        self.sizes rows (free row counts)."""
        if self.nt:
            return torch.bmm(x.view(self.nt, -1, x.shape[1]), w).view(x.shape[0], w.shape[-1])
        return _free_mm(x, w, self.sizes)

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the new rows' keys and values (R, KV, hd) at their positions."""
        hd = k.shape[-1]
        k, v = k.reshape(-1, hd), v.reshape(-1, hd)
        if len(self.groups) == 1:
            st, wr = self.groups[0][:2]
            st.k_rows[layer].index_copy_(0, wr, k)
            st.v_rows[layer].index_copy_(0, wr, v)
            return
        r = 0
        for st, wr, _, _ in self.groups:
            m = wr.shape[0]
            st.k_rows[layer].index_copy_(0, wr, k[r:r + m])
            st.v_rows[layer].index_copy_(0, wr, v[r:r + m])
            r += m

    def attend(self, layer: int, qk: torch.Tensor) -> torch.Tensor:
        """qk (padded, H + KV, hd): the rows' queries (scaled) and keys -> attention output
        (padded, H*hd). Per (tile, block): scores = Q K^T + mask, (QUERY_TILE, hd) x (hd,
        KV_BLOCK); each query row's maximum over all blocks (exact in any order); P =
        exp(max(scores - max, EXP_FLOOR)) x (1 visible, 0 hidden); P [V | 1], (QUERY_TILE,
        KV_BLOCK) x (KV_BLOCK, hd + 1): numerator and row sum; summed over the blocks one
        after another, then divided. A fully masked block has P = 0 exactly, so it adds
        exact zeros: how many blocks a batch carries changes no sequence's bits."""
        H, KV, hd = self.dims
        E, nb, T, Tq, Bk = self.entries, self.nb, self.tiles, self.qtile, KV_BLOCK
        if self.in_place:
            st = self.groups[0][0]
            Kt = st.k_blocks_t[layer, :nb * E]
            V = st.v_blocks[layer, :nb * E]
        else:
            Ks, Vs = [], []
            for st, _, blocks, ne in self.groups:
                Ks.append(st.k_blocks[layer].index_select(0, blocks).view(nb, ne, Bk, hd))
                Vs.append(st.v_blocks[layer].index_select(0, blocks).view(nb, ne, Bk, hd + 1))
            Kt = (Ks[0] if len(Ks) == 1 else torch.cat(Ks, 1)).view(nb * E, Bk, hd).transpose(1, 2)
            V = (Vs[0] if len(Vs) == 1 else torch.cat(Vs, 1)).view(nb * E, Bk, hd + 1)
        Q = qk.view(-1, hd).index_select(0, self.qidx)
        if T == 1:  # decode steps: the same products without the per-tile slicing
            s = torch.bmm(Q.view(nb * E, Tq, hd), Kt)
        else:
            Q = Q.view(T, nb * E, Tq, hd)
            s = qk.new_empty(T, nb * E, Tq, Bk)
            for t in range(T):  # the blocks serve every tile index as they lie: one batched product each
                torch.bmm(Q[t], Kt, out=s[t])
        s = s.view(T, nb, E, Tq, Bk).add_(self.mask)  # + 0 or -inf: exact
        # exp(max(s - max, EXP_FLOOR)) * keep: an argument whose exp underflows (or -inf) takes
        # the CPU's slow exp path (~14x per element here); below EXP_FLOOR a weight is < 2e-38,
        # nothing next to the row's maximum (weight 1), and a hidden key's weight is exactly 0
        p = s.sub_(s.amax(dim=(1, 4), keepdim=True)).clamp_min_(EXP_FLOOR).exp_().mul_(self.keep)
        if T == 1:
            o = torch.bmm(p.view(nb * E, Tq, Bk), V)  # P [V | 1]: numerator and row sum
        else:
            p = p.view(T, nb * E, Tq, Bk)
            o = qk.new_empty(T, nb * E, Tq, hd + 1)
            for t in range(T):
                torch.bmm(p[t], V, out=o[t])
        o = o.view(T, nb, E, Tq, hd + 1)
        num = o[:, 0]
        for b in range(1, nb):  # in block order (a fixed sequence of adds)
            num = num + o[:, b]
        out = (num[..., :hd] / num[..., hd:]).view(T * E * Tq, hd)
        return out.index_select(0, self.oidx).view(-1, H * hd)


class _KVStore:
    """KV storage of `slots` sequences, block-major: K (layers, blocks, KV heads, slots,
    KV_BLOCK, hd), the capacity rounded up to whole blocks; V the same with a last column
    of ones, so that one product P [V | 1] gives attention's numerator and its row sum.
    Blocks are zeroed when a forward first reaches them (`need`), not all at creation:
    attention reads every block below the batch's longest need (masked, but 0 * NaN of
    uninitialised memory would not be 0)."""

    def __init__(self, args: ModelArgs, slots: int, capacity: int, device, dtype):
        shape = (args.n_layers, -(-capacity // KV_BLOCK), args.n_kv_heads, slots, KV_BLOCK, args.head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape[:-1] + (args.head_dim + 1,), device=device, dtype=dtype)
        self.slots, self.ready = slots, 0
        L, hd = args.n_layers, args.head_dim  # per-layer views, made once (a decode step is dispatch-bound)
        self.k_rows = self.k.view(L, -1, hd)  # every (block, head, slot, key) row
        self.v_rows = self.v.view(L, -1, hd + 1)[..., :hd]
        self.k_blocks = self.k.view(L, -1, KV_BLOCK, hd)  # (block, head, slot) stacks of KV_BLOCK keys
        self.k_blocks_t = self.k_blocks.transpose(2, 3)
        self.v_blocks = self.v.view(L, -1, KV_BLOCK, hd + 1)

    def need(self, blocks: int) -> None:
        if blocks > self.ready:
            self.k[:, self.ready:blocks].zero_()
            self.v[:, self.ready:blocks, ..., :-1].zero_()
            self.v[:, self.ready:blocks, ..., -1] = 1
            self.ready = blocks


def _pad_rows(xs: list[torch.Tensor], padded: int) -> torch.Tensor:
    """Concatenate row blocks and zero-pad to `padded` rows (whole row tiles)."""
    n = sum(x.shape[0] for x in xs)
    if n == padded and len(xs) == 1:
        return xs[0]
    return torch.cat(xs + [xs[0].new_zeros(padded - n, xs[0].shape[1])])


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
        if pool is not None:  # one slot of a pool (stale values past lens are masked)
            self.store, self.slot = pool.store, slot
        else:  # its own storage: a pool of one slot
            self.store, self.slot = _KVStore(args, 1, C, device, dtype), 0
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
    """The KV caches of `slots` sequences in one tensor per K and V, block-major: (layers,
    capacity / KV_BLOCK, KV, slots, KV_BLOCK, hd), so that one step writes every
    sequence's keys in one indexed copy, and the first nb blocks of every (KV head, slot)
    of a layer are one contiguous (nb * KV * slots, KV_BLOCK, hd) stack of blocks that a
    decode step's attention multiplies in place (see `_Rows`). `cache(slot)` hands out a
    fresh Cache on that slot."""

    def __init__(self, args: ModelArgs, slots: int, device=None, dtype=torch.float32, capacity: int | None = None):
        C = capacity or args.max_seq_len
        if C > args.max_seq_len:
            raise ValueError(f"capacity: {C} exceeds the model's max_seq_len {args.max_seq_len}")
        if slots < 1:
            raise ValueError("slots: must be >= 1")
        self.args, self.slots, self.capacity = args, slots, C
        self.store = _KVStore(args, slots, C, device, dtype)
        self.k, self.v = self.store.k, self.store.v
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
    def _decoding_weights(self, nt: int, views: tuple) -> list[tuple]:
        """Per layer: (attention norm weight, wqkv, wo, ffn norm weight, w1, w3 (w13's column
        halves), w2, norm shape, eps), each product's weight transposed (`transposed`: a view,
        no copy) and broadcast over nt row tiles (a view; nt = 0, free row counts: not
        broadcast), from `views` (`_weight_views()`, checked by the caller). Made once per
        tile count and kept: a decode step is dispatch-bound, and these are ~10 torch calls
        per layer. Remade with the views when a parameter is replaced (any parameter
        registration) or its storage moves (.to(), `.data =`)."""
        per_nt, layers = views[3:5]
        if nt not in per_nt:
            shape, eps = (self.args.dim,), self.args.norm_eps

            def b(w):
                return w.expand(nt, *w.shape) if nt else w

            per_nt[nt] = [(an, b(wqkv), b(wo), fn, *(b(w) for w in w13.chunk(2, dim=1)), b(w2), shape, eps)
                          for an, wqkv, wo, w13, w2, fn in layers]
        return per_nt[nt]

    def _min_rows(self, views: tuple) -> int | None:
        """Free row counts: the least row count from which every linear product of the
        decoding path is row invariant on this machine (`probe_rows`, per weight shape), or
        None: fixed tiles (FREE_ROWS off, or a shape the probe failed)."""
        return views[6] if FREE_ROWS else None

    def _weight_views(self) -> tuple:
        """(epoch, data pointers, weights, per tile count cache, per layer (attention norm,
        wqkv^T, wo^T, w13^T, w2^T, ffn norm), (final norm, output^T), the least free row
        count or None): kept while no parameter was registered since and no weight's
        storage moved."""
        dw = self.__dict__.get("_dw")
        if dw is not None and dw[0] == _PARAMETER_EPOCH[0] and dw[1] == [w.data_ptr() for w in dw[2]]:
            return dw
        flat, layers = [], []
        for layer in self.layers:
            an, fn = layer.attention_norm.weight, layer.ffn_norm.weight
            ws = (layer.wqkv.weight, layer.wo.weight, layer.w13.weight, layer.w2.weight)
            layers.append((an, *transposed(*ws), fn))
            flat += [an, fn, *ws]
        head = (self.norm.weight, *transposed(self.output.weight))
        flat += [self.norm.weight, self.output.weight]
        probes = [probe_rows(w) for _, wqkv, wo, w13, w2, _ in layers[:1]
                  for w in (wqkv, wo, *w13.chunk(2, dim=1), w2)] + [probe_rows(head[1])]
        min_rows = None if None in probes else max(probes)
        dw = self.__dict__["_dw"] = (_PARAMETER_EPOCH[0], [w.data_ptr() for w in flat], flat, {}, layers, head, min_rows)
        return dw

    def _row_plan(self, key: tuple) -> dict:
        """`_Rows.layout(key)`, kept: a decode step's batch keeps its layout from one step to
        the next (only the positions move). At most 256 layouts are kept."""
        plans = self.__dict__.setdefault("_plans", {})
        plan = plans.get(key)
        if plan is None:
            if len(plans) >= 256:
                plans.clear()
            plan = plans[key] = _Rows.layout(self.args, key)
        return plan

    def _rope_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE tables per position and head, (max_seq_len, H + KV, hd): cos, and sin with its
        first half negated (rotate_half as a flip), both times the queries' 1/sqrt(hd) (1 for
        the keys): the same products `_decode_layer` used to take per forward, made once."""
        tables = self.__dict__.get("_rope")
        if tables is None or tables[0] != (self.rope_cos.data_ptr(), self.rope_cos._version):
            a = self.args
            h = a.head_dim // 2
            scale = torch.tensor([1.0 / math.sqrt(a.head_dim)] * a.n_heads + [1.0] * a.n_kv_heads,
                                 device=self.rope_cos.device)[:, None]
            sin = torch.cat([-self.rope_sin[:, :h], self.rope_sin[:, h:]], -1)
            tables = self.__dict__["_rope"] = ((self.rope_cos.data_ptr(), self.rope_cos._version),
                                               self.rope_cos[:, None] * scale, sin[:, None] * scale)
        return tables[1], tables[2]

    def new_cache(self, capacity: int | None = None) -> Cache:
        p = self.tok_embeddings.weight
        return Cache(self.args, device=p.device, dtype=p.dtype, capacity=capacity)

    @torch.no_grad()
    def run(self, cache: Cache, a: int, b: int, tokens: torch.Tensor | None = None,
            prefill: bool = False) -> torch.Tensor:
        """Run layers a+1..b (1-based, inclusive). a == 0: over the new `tokens` (1-D ids);
        a > 0: over every position layer a produced that layer a+1 has not consumed.
        Returns the hidden states after layer b (n, dim) and keeps them at boundary b.
        prefill: a prefill forward (a prompt's tokens but its last, as `generate` runs
        them): PREFILL_QUERY_TILE-row attention tiles, and with fixed tiles PREFILL_TILE-row
        linear tiles instead of ROW_TILE."""
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
        rows = _Rows(self, [(cache, n, pos0)], prefill)
        x = _pad_rows([x], rows.padded)
        for l in range(a, b):
            x = _decode_layer(x, rows.weights[l], l, rows)
            cache.lens[l + 1] = pos0 + n
        x = x[:n]
        if b < L:
            cache.hidden(b)[pos0:pos0 + n] = x
        return x


    def new_pool(self, slots: int, capacity: int | None = None) -> CachePool:
        p = self.tok_embeddings.weight
        return CachePool(self.args, slots, device=p.device, dtype=p.dtype, capacity=capacity)

    @torch.no_grad()
    def run_jobs(self, jobs: list[tuple[Cache, int, torch.Tensor | None]], prefill: bool = False) -> list[torch.Tensor]:
        """One forward over several sequences (layer-range batching). Job (cache, b, tokens):
        in that sequence, run everything waiting below layer b+1 through layers up to b --
        at layer 1 the new `tokens`, at layer l > 1 every position layer l-1 has produced
        (in this forward or an earlier one) and layer l has not consumed. At each layer the
        rows of every job that reaches it are concatenated (one sequence per cache). Returns
        each job's rows after its layer b, (n_i, dim), kept at boundary b (when b < L).
        Each sequence's results are bit-identical to running it alone with `run` (with the
        same `prefill`, see `run`)."""
        L = self.args.n_layers
        cur: list = []  # per job: (tensor, first row, n, pos0) of the rows it carries, or None
        toks, r = [], 0
        for c, b, tokens in jobs:
            if not 1 <= b <= L:
                raise ValueError(f"layers: need 1 <= b <= {L}, got b={b}")
            n = 0 if tokens is None else tokens.numel()
            if n:
                if c.lens[1] + n > c.capacity:
                    raise ValueError(f"capacity: sequence of {c.lens[1] + n} tokens exceeds the cache "
                                     f"capacity {c.capacity}")
                toks.append(tokens.reshape(-1))
                cur.append((r, n, c.lens[1]))
                r += n
            else:
                cur.append(None)
        if toks:  # one embedding lookup for every job's new tokens (rows are copies: exact)
            emb = self.tok_embeddings(toks[0] if len(toks) == 1 else torch.cat(toks))
            cur = [None if t is None else (emb, *t) for t in cur]
        if len({id(c) for c, _, _ in jobs}) != len(jobs):
            raise ValueError("jobs: one job per sequence")
        top = max(b for _, b, _ in jobs)
        if all(b == top and t is not None and c.lens[1:top + 1] == [t[3]] * top
               for (c, b, _), t in zip(jobs, cur)):
            return self._run_uniform(jobs, cur, top, prefill)
        X, rows, sig_prev = None, None, None
        for l in range(1, top + 1):
            sig, pieces = [], []
            for i, (c, b, _) in enumerate(jobs):
                if l > b:
                    continue
                t = cur[i]
                if l > 1:
                    start, end = c.lens[l], (t[3] if t is not None else c.lens[l - 1])
                    if start < end:  # rows waiting at boundary l-1 go first
                        w = c.hid[l - 1][start:end]
                        t = (w, 0, end - start, start) if t is None else \
                            (torch.cat([w, t[0][t[1]:t[1] + t[2]]]), 0, end - start + t[2], start)
                if t is None:
                    continue
                if t[3] != c.lens[l]:
                    raise RuntimeError(f"cache: layer {l} is at {c.lens[l]}, rows start at {t[3]}")
                sig.append((i, t[2], t[3]))
                pieces.append(t)
            if not sig:
                continue
            if sig != sig_prev:  # other rows than the previous layer's output: a new plan
                rows = _Rows(self, [(jobs[i][0], n, p0) for i, n, p0 in sig], prefill)
                X = _pad_rows([t[0][t[1]:t[1] + t[2]] for t in pieces], rows.padded)
            X = _decode_layer(X, rows.weights[l - 1], l - 1, rows)
            r = 0
            for i, n, p0 in sig:
                cur[i] = (X, r, n, p0)
                jobs[i][0].lens[l] = p0 + n
                r += n
            sig_prev = sig
        out = []
        for (c, b, _), t in zip(jobs, cur):
            if t is None:
                raise RuntimeError(f"cache: nothing waiting to run up to layer {b}")
            x = t[0][t[1]:t[1] + t[2]]
            if b < L:
                c.hidden(b)[t[3]:t[3] + t[2]] = x
            out.append(x)
        return out

    def _run_uniform(self, jobs, cur, top: int, prefill: bool) -> list[torch.Tensor]:
        """run_jobs when every job runs its new rows alone through layers 1..top (nothing
        waiting at a boundary: decode steps, prefills, synchronous draft steps): the same
        rows at every layer, so one index plan and no per-layer bookkeeping. The same
        products as the general path (which would build this very plan at layer 1 and
        keep it)."""
        L = self.args.n_layers
        rows = _Rows(self, [(c, t[2], t[3]) for (c, _, _), t in zip(jobs, cur)], prefill)
        X = _pad_rows([cur[0][0]], rows.padded)  # every job's new rows, in job order: the embedding lookup
        for l in range(top):
            X = _decode_layer(X, rows.weights[l], l, rows)
        out, r = [], 0
        for (c, _, _), t in zip(jobs, cur):
            n, p0 = t[2], t[3]
            c.lens[1:top + 1] = [p0 + n] * top
            x = X[r:r + n]
            if top < L:
                c.hidden(top)[p0:p0 + n] = x
            out.append(x)
            r += n
        return out

    @torch.no_grad()
    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Exit head (shared final norm + LM head), row invariant; logits (n, vocab)."""
        views = self._weight_views()
        norm_w, out_t = views[5]
        return mm(F.rms_norm(x, norm_w.shape, norm_w, self.args.norm_eps), out_t, min_rows=self._min_rows(views))
