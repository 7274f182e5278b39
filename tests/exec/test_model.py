"""Row invariance of the decoding path, bit for bit: these tests pin the design (every
product a stack of one-row products whose per-entry shape never changes), which makes it
hold on any CPU. Comparisons with another code path are tolerance- or tie-aware instead."""
import torch

from hispec_exec.model import mm

from exec_helpers import random_model


def run_chunks(m, toks, chunks):
    c = m.new_cache()
    return torch.cat([m.head(m.run(c, 0, m.num_layers, toks[a:b])) for a, b in chunks])


def test_row_invariance_any_chunking():
    for m in (random_model(), random_model(seed=1, vocab=50, layers=3, dim=48, heads=3, kv=1, ffn=100, ctx=100)):
        toks = torch.randint(0, m.args.vocab_size, (30,), generator=torch.Generator().manual_seed(0))
        ref = run_chunks(m, toks, [(i, i + 1) for i in range(30)])
        for chunks in ([(0, 30)], [(0, 5), (5, 7), (7, 12), (12, 30)], [(0, 2), (2, 3), (3, 20), (20, 30)]):
            assert torch.equal(run_chunks(m, toks, chunks), ref)


def test_mm_rows_match_single_row():
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(96, 40, generator=g), torch.randn(9, 40, generator=g)
    one = torch.cat([mm(x[i:i + 1], w) for i in range(9)])
    for n in range(2, 10):
        assert torch.equal(mm(x[:n], w), one[:n])
    torch.testing.assert_close(one, x @ w.T, rtol=1e-5, atol=1e-5)


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


def test_row_invariance_long_sequences_random_chunks():
    import random

    m = random_model(ctx=512)
    toks = torch.randint(0, 64, (300,), generator=torch.Generator().manual_seed(0))
    ref = run_chunks(m, toks, [(i, i + 1) for i in range(300)])
    rng = random.Random(0)
    for _ in range(2):
        cuts = sorted(rng.sample(range(1, 300), 50))
        assert torch.equal(run_chunks(m, toks, list(zip([0] + cuts, cuts + [300]))), ref)
