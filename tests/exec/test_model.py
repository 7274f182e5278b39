"""Row invariance of the decoding path, bit for bit: these tests pin the design (every
product of a fixed shape: linear layers in tiles of ROW_TILE rows, attention in (query
tile x KV block) pieces), which makes it hold on any CPU whose fixed-shape products compute
a row from its own values only -- checked here explicitly (a row in every slot of a tile,
any number of tiles, random neighbours). Comparisons with another code path are tolerance-
or tie-aware instead."""
import torch

from hispec_exec.model import KV_BLOCK, PREFILL_QUERY_TILE, PREFILL_TILE, QUERY_TILE, ROW_TILE, mm

from exec_helpers import random_model


def run_chunks(m, toks, chunks):
    c = m.new_cache()
    return torch.cat([m.head(m.run(c, 0, m.num_layers, toks[a:b])) for a, b in chunks])


def test_row_invariance_any_chunking(row_mode):
    for m in (random_model(), random_model(seed=1, vocab=50, layers=3, dim=48, heads=3, kv=1, ffn=100, ctx=100)):
        toks = torch.randint(0, m.args.vocab_size, (30,), generator=torch.Generator().manual_seed(0))
        ref = run_chunks(m, toks, [(i, i + 1) for i in range(30)])
        for chunks in ([(0, 30)], [(0, 5), (5, 7), (7, 12), (12, 30)], [(0, 2), (2, 3), (3, 20), (20, 30)]):
            assert torch.equal(run_chunks(m, toks, chunks), ref)


def test_mm_rows_match_single_row():
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(96, 40, generator=g), torch.randn(9, 40, generator=g)
    w_t = w.t().contiguous()
    one = torch.cat([mm(x[i:i + 1], w_t) for i in range(9)])
    for n in range(2, 10):
        assert torch.equal(mm(x[:n], w_t), one[:n])
    torch.testing.assert_close(one, x @ w.T, rtol=1e-5, atol=1e-5)


def test_tile_row_depends_on_nothing_but_itself():
    """The premise of the design, on this CPU, for the model's product shapes: a row put in
    any slot of a tile (ROW_TILE rows, and PREFILL_TILE rows: prefill forwards), among random
    rows, in any of 1..4 or 48 tiles, comes out with the same bits as alone; and so for the
    attention's (q, hd) x (hd, KV_BLOCK) and (q, KV_BLOCK) x (KV_BLOCK, hd + 1) pieces, q =
    QUERY_TILE and PREFILL_QUERY_TILE (prefill forwards), batched over any number of entries
    (hd = 40: the shipped model; 16: a random test model)."""
    g = torch.Generator().manual_seed(1)
    for n_out, k, half in ((320, 160, False), (448, 160, True), (896, 160, False), (160, 448, False),
                           (256, 160, False), (96, 40, False)):
        # half: a column half of a (k, 2 n_out) weight, as the decoding path multiplies w13's halves
        w = torch.randn(k, 2 * n_out, generator=g)[:, n_out:] if half else torch.randn(k, n_out, generator=g)
        row = torch.randn(1, k, generator=g)
        for tile in (ROW_TILE, PREFILL_TILE):
            ref = mm(row, w, tile)
            for tiles in (1, 2, 4, 48):  # 48: a 1,536-row prefill forward (32 prompts of ~48 tokens)
                for slot in range(tile * tiles) if tiles <= 4 else (0, tile - 1, tile * tiles // 2, tile * tiles - 1):
                    x = torch.randn(tile * tiles, k, generator=g)
                    x[slot] = row[0]
                    assert torch.equal(mm(x, w, tile)[slot:slot + 1], ref), (n_out, k, tile, tiles, slot)
    for hd, qt in ((40, QUERY_TILE), (16, QUERY_TILE), (40, PREFILL_QUERY_TILE), (16, PREFILL_QUERY_TILE)):
        for a_shape, b_shape, transposed in (((qt, hd), (KV_BLOCK, hd), True),  # scores: Q K^T, K a view
                                             ((qt, KV_BLOCK), (KV_BLOCK, hd + 1), False)):  # P [V | 1]
            a, b = torch.randn(*a_shape, generator=g), torch.randn(*b_shape, generator=g)
            ref = torch.bmm(a[None], b[None].transpose(1, 2) if transposed else b[None])[0]
            for entries in (2, 3, 5, 16, 64, 128, 500):
                for e in (0, entries // 2, entries - 1):
                    A, B = torch.randn(entries, *a_shape, generator=g), torch.randn(entries, *b_shape, generator=g)
                    A[e], B[e] = a, b
                    assert torch.equal(torch.bmm(A, B.transpose(1, 2) if transposed else B)[e], ref), (hd, entries, e)


def test_free_rows_premise_and_probe(monkeypatch):
    """Free row counts rest on the probe's verdict; here, with other random rows than the
    probe's and in fresh tensors, a row of a product of any M rows, min_rows <= M <=
    FREE_ROWS_MAX, in any slot, has the same bits for the model's product shapes. And the
    probe finds a library that takes another kernel below some row count (min_rows = that
    count), or whose rows are never invariant (None: fixed tiles)."""
    import hispec_exec.model as model_module
    from hispec_exec.model import FREE_ROWS_MAX, probe_rows

    g = torch.Generator().manual_seed(11)
    for n_out, k in ((320, 160), (160, 160), (448, 160), (160, 448), (256, 160), (96, 40)):
        w = torch.randn(n_out, k, generator=g).t().contiguous()
        m = probe_rows(w)
        if m is None:  # this machine's library: fixed tiles (tested above)
            continue
        row = torch.randn(k, generator=g)
        ref = None
        for M in range(m, FREE_ROWS_MAX + 1):
            slot = int(torch.randint(0, M, (1,), generator=g))
            x = torch.randn(M, k, generator=g)
            x[slot] = row
            got = torch.mm(x, w)[slot]
            ref = got if ref is None else ref
            assert torch.equal(got, ref), (n_out, k, M, slot)
    real = torch.mm
    w = torch.randn(64, 32, generator=g)
    for below, expect in ((7, 7), (FREE_ROWS_MAX - 1, None)):  # rows under `below`: another rounding
        monkeypatch.setattr(model_module, "_PROBED", {})
        monkeypatch.setattr(torch, "mm", lambda a, b, below=below: (real(a.double(), b.double()).float()
                                                                    if a.shape[0] < below else real(a, b)))
        assert probe_rows(w) == expect
        monkeypatch.undo()


def test_batched_rows_equal_alone_in_any_company(row_mode):
    """A sequence's rows in a layer-range-batched forward (`run_jobs`) carry the same bits
    as the sequence alone, whatever its company: other sequences of other lengths (so other
    numbers of KV blocks), other row counts (so other tiles and the gathered attention
    layout), pool slots in any order, idle slots holding stale values; the prompts go in a
    prefill forward (`prefill=True`, PREFILL_TILE-row tiles) on both sides, as `generate`
    runs them."""
    from exec_helpers import random_model

    m = random_model(seed=2, ctx=200)
    g = torch.Generator().manual_seed(4)
    L = m.num_layers
    seqs = [torch.randint(0, 64, (n,), generator=g) for n in (3, 70, 9, 140, 1, 33)]
    alone = []
    for s in seqs:  # alone: prefill all but the last 2 tokens, then one at a time
        c = m.new_cache(200)
        outs = [m.head(m.run(c, 0, L, s[:-2], prefill=True))] if len(s) > 2 else []
        outs += [m.head(m.run(c, 0, L, s[i:i + 1])) for i in range(max(0, len(s) - 2), len(s))]
        alone.append(torch.cat(outs))
    pool = m.new_pool(8, 200)
    order = [5, 0, 3, 7, 1, 2]  # slots out of order, two idle
    cs = [pool.cache(sl) for sl in order]
    pre = m.run_jobs([(c, L, s[:-2]) for c, s in zip(cs, seqs) if len(s) > 2], prefill=True)
    for idle in (4, 6):  # whatever the idle slots hold (the decode steps compute them too) must not matter
        pool.k[:, :, :, idle].normal_(generator=g)
        pool.v[:, :, :, idle].normal_(generator=g)
    got = [[m.head(x)] for x in pre]
    got.insert(4, [])  # the 1-token sequence had no prefill
    for step in (2, 1):
        jobs = [(c, L, s[len(s) - step:len(s) - step + 1]) for c, s in zip(cs, seqs) if len(s) >= step]
        outs = m.run_jobs(jobs)
        k = 0
        for i, s in enumerate(seqs):
            if len(s) >= step:
                got[i].append(m.head(outs[k]))
                k += 1
    for i in range(len(seqs)):
        assert torch.equal(torch.cat(got[i]), alone[i]), i


def test_decode_path_matches_training_path():
    m = random_model(scale=3)
    toks = torch.randint(0, 64, (1, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hs = m.forward_train(toks)
    c = m.new_cache()
    x = m.run(c, 0, 3, toks[0])
    torch.testing.assert_close(x, hs[2][0], rtol=1e-4, atol=1e-4)
    x = m.run(c, 3, 8)
    torch.testing.assert_close(m.head(x), m.logits(hs[7][0]), rtol=1e-4, atol=1e-4)


def test_exp_floor_changes_no_bits(monkeypatch):
    """Scores spread far beyond EXP_FLOOR (queries scaled x200, so many attention weights
    underflow): clamping the exp's argument at EXP_FLOOR (a weight < 2e-38 instead of ~0)
    gives the same bits as no floor, and a hidden key still weighs exactly 0 (a chunked run
    equals the whole)."""
    import hispec_exec.model as model_module

    def logits(floor):
        monkeypatch.setattr(model_module, "EXP_FLOOR", floor)
        m = random_model(scale=3)
        a, H = m.args, m.args.n_heads * m.args.head_dim
        with torch.no_grad():
            for b in m.layers:
                b.wqkv.weight[:H].mul_(200)
            qkv = m.layers[0].wqkv(m.layers[0].attention_norm(m.tok_embeddings(toks)))
            scores = qkv[:, :a.head_dim] @ qkv[:, H:H + a.head_dim].T / a.head_dim ** 0.5  # head 0, before RoPE
        assert (scores.amax(1) - scores.amin(1)).max() > 2 * 87  # the premise: weights that underflow
        whole = run_chunks(m, toks, [(0, 70)])
        assert torch.equal(whole, run_chunks(m, toks, [(0, 33), (33, 34), (34, 70)]))
        return whole

    toks = torch.randint(0, 64, (70,), generator=torch.Generator().manual_seed(5))
    assert torch.equal(logits(model_module.EXP_FLOOR), logits(float("-inf")))


def test_cache_crop_is_exact():
    m = random_model()
    g = torch.Generator().manual_seed(5)
    a, b = torch.randint(0, 64, (20,), generator=g), torch.randint(0, 64, (7,), generator=g)
    ref = run_chunks(m, torch.cat([a[:12], b]), [(0, 19)])
    c = m.new_cache()
    m.run(c, 0, m.num_layers, a)  # 20 tokens, then throw the last 8 away
    c.crop(None, 12)
    assert c.lens[1:] == [12] * m.num_layers
    out = m.head(m.run(c, 0, m.num_layers, b))
    assert torch.equal(out, ref[12:])


def test_partial_ranges_and_hidden_store():
    """Run layers 1..2 ahead, crop only those, then catch the upper layers up."""
    m = random_model()
    toks = torch.randint(0, 64, (16,), generator=torch.Generator().manual_seed(7))
    ref = run_chunks(m, toks, [(0, 16)])
    c = m.new_cache()
    m.run(c, 0, 8, toks[:4])
    m.run(c, 0, 2, toks[4:10])
    assert c.lens[1:3] == [10, 10] and c.lens[3:] == [4] * 6
    c.crop((1, 2), 8)  # reject positions 8, 9 at layers 1..2
    m.run(c, 0, 2, toks[8:12])
    m.run(c, 2, 5)  # positions 4..11 through 3..5 from the stored hidden states
    m.run(c, 0, 5, toks[12:16])
    out = m.head(m.run(c, 5, 8))
    assert torch.equal(out, ref[4:])


def test_row_invariance_long_sequences_random_chunks(row_mode):
    import random

    m = random_model(ctx=512)
    toks = torch.randint(0, 64, (300,), generator=torch.Generator().manual_seed(0))
    ref = run_chunks(m, toks, [(i, i + 1) for i in range(300)])
    rng = random.Random(0)
    for _ in range(2):
        cuts = sorted(rng.sample(range(1, 300), 50))
        assert torch.equal(run_chunks(m, toks, list(zip([0] + cuts, cuts + [300]))), ref)


def test_decoding_weights_follow_the_parameters():
    """The decoding path keeps its transposed / broadcast weight views between forwards;
    they must follow every way the weights can change: an in-place update (optimizer
    step), load_state_dict, a replaced Parameter, new storage (`.data =`)."""
    toks = torch.randint(0, 64, (20,), generator=torch.Generator().manual_seed(8))

    def logits(m):
        return run_chunks(m, toks, [(0, 12), (12, 13), (13, 20)])

    m, other = random_model(), random_model(seed=3)
    ref_other = logits(other)
    logits(m)  # views made
    m.load_state_dict(other.state_dict())
    assert torch.equal(logits(m), ref_other)
    with torch.no_grad():  # in place, as an optimizer step
        m.layers[2].w13.weight.mul_(1.5)
        other.layers[2].w13.weight.mul_(1.5)
    assert torch.equal(logits(m), logits(other))
    w = other.layers[1].wqkv.weight.detach().clone() * 0.5
    m.layers[1].wqkv.weight = torch.nn.Parameter(w.clone())
    with torch.no_grad():
        other.layers[1].wqkv.weight.copy_(w)
    assert torch.equal(logits(m), logits(other))
    m.layers[3].w2.weight.data = other.layers[3].w2.weight.data.mul(2).contiguous()
    with torch.no_grad():
        other.layers[3].w2.weight.mul_(2)
    assert torch.equal(logits(m), logits(other))
