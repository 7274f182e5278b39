import torch

from hispec_exec.model import ModelArgs, Transformer


class VirtualClock:
    """A clock for serve(): every reading advances `tick` seconds, a sleep advances by what
    it asks. Which request arrives while the loop is busy, and so whether it idles, is then
    the same on any machine (on a real clock, an emulated aarch64 machine was still busy
    when a spaced-out request arrived, so its loop never idled)."""

    def __init__(self, tick: float = 1e-3):
        self.t, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.t += self.tick
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


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


def exact_distribution(m, prompt, T, vocab=4):
    """P(continuation) of every T-token continuation of `prompt` under the full model
    (enumerated; a vocabulary this small keeps it exact and cheap)."""
    import itertools

    probs = {}
    for cont in itertools.product(range(vocab), repeat=T):
        seq = list(prompt) + list(cont)
        p = torch.softmax(m.head(m.run(m.new_cache(), 0, m.num_layers, torch.tensor(seq[:-1]))).double(), -1)
        pr = 1.0
        for i, tok in enumerate(cont):
            pr *= float(p[len(prompt) - 1 + i, tok])
        probs[cont] = pr
    return probs


def pooled_chisquare(counts, exact, runs):
    """Chi-square of observed continuation counts against the exact distribution, cells
    expected fewer than 5 times pooled into one; returns (statistic, p-value)."""
    from scipy.stats import chisquare

    obs, exp, rest_o, rest_e = [], [], 0, 0.0
    for k, p in exact.items():
        if p * runs >= 5:
            obs.append(counts[k])
            exp.append(p * runs)
        else:
            rest_o += counts[k]
            rest_e += p * runs
    obs.append(rest_o)
    exp.append(rest_e)
    return chisquare(obs, exp)
