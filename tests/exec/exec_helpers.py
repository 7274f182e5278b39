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
