import torch

from hispec_exec.model import ModelArgs, Transformer


def random_model(seed=0, vocab=64, layers=8, dim=64, heads=4, kv=2, ffn=128, ctx=256, tie=False, scale=None):
    torch.manual_seed(seed)
    m = Transformer(ModelArgs(vocab_size=vocab, dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=kv,
                              ffn_dim=ffn, max_seq_len=ctx, tie_embeddings=tie)).eval()
    if scale:
        with torch.no_grad():
            for p in m.parameters():
                if p.dim() > 1:
                    p.mul_(scale)
    return m


def assert_greedy_equivalent(tokens, reference, logits_fn, prompt, what=""):
    """Tie-aware greedy equivalence, for a reference computed through ANOTHER code path
    (transformers, the training path, CUDA kernels): identical, or the first divergence is a
    near-tie of the reference's logits (both tokens within hispec_exec.check.NEAR_TIE of its
    top logit). Both sides on our row-invariant CPU path: compare with == instead."""
    from hispec_exec.check import divergence

    d = divergence(logits_fn, prompt, tokens, reference)
    assert d is None or d.near_tie, f"{what}: {d.describe()}"
    return d


def training_path_logits(model):
    """Next-token logits through the training forward (SDPA, nn.Linear): another code path."""
    def fn(ids):
        with torch.no_grad():
            return model.logits(model.forward_train(torch.tensor([list(ids)]))[-1])[0, -1]
    return fn
