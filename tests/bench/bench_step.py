"""Decode-step benchmark (run on demand: python tests/bench/bench_step.py [--baseline FILE]):
the time of ONE autoregressive decode step (forward + exit head + greedy pick) of B
sequences, ours vs transformers' LlamaForCausalLM forward with its KV cache (same weights,
one new token per sequence, greedy), and optionally another version of
hispec_exec/model.py (`git show REV:hispec_exec/model.py > /tmp/model_before.py`) on the
same weights. Prefill excluded (bench_serve.py times whole decodes, prefill included).
The configurations run in turn, `--rounds` times, `--steps` steps each; the figure is the
minimum over the rounds of the mean step time, which a loaded machine distorts less than a
single pass. Prompts: `--prompt-len` held-out tokens each; the sequences never finish."""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import torch

from bench_serve import baseline_model  # this folder's sibling (scripts run from their folder)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,4,16,32")
    ap.add_argument("--prompt-len", type=int, default=48)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--baseline", help="another model.py: time its decode step too (same weights)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    warnings.filterwarnings("ignore")

    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from hispec_exec import heldout_prompts, load_model
    from hispec_exec.generate import Batch, SequenceDecoder
    from hispec_exec.hf import save_hf
    from hispec_sim.schema import Plan

    model = load_model()
    ar = Plan(levels=[model.num_layers])
    models = {"ours": model}
    if a.baseline:
        models["baseline"] = baseline_model(a.baseline, model)
    hf_logging.set_verbosity_error()
    tmp = tempfile.mkdtemp(prefix="hispec_hf_")
    save_hf(model, tmp)
    hf = LlamaForCausalLM.from_pretrained(tmp, torch_dtype=torch.float32).eval()
    Bs = [int(x) for x in a.batches.split(",")]
    n_new = a.rounds * a.steps + 2  # every timed step decodes (nobody finishes)
    if a.prompt_len + n_new + 1 > model.args.max_seq_len:
        ap.error(f"--prompt-len: prompt + rounds x steps must fit the context ({model.args.max_seq_len})")
    src = heldout_prompts(max(Bs), a.prompt_len, seed=1)
    with open("/proc/loadavg") as f:
        print(f"load average at start {' '.join(f.read().split()[:3])}; threads {a.threads}; "
              f"prompts of {a.prompt_len} tokens; min over {a.rounds} rounds of {a.steps} steps", flush=True)
    for B in Bs:
        prompts = src[:B]
        steps = {}
        for name, m in models.items():
            pool = m.new_pool(B)
            decs = [SequenceDecoder(m, ar, p, n_new, cache=pool.cache(i)) for i, p in enumerate(prompts)]
            b = Batch(m, ar)
            b.add(decs)
            b.step()  # warm-up
            steps[name] = b.step
        st = {}
        with torch.no_grad():
            out = hf(torch.tensor(prompts), use_cache=True)
            st["kv"], st["next"] = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            st["mask"] = torch.ones(B, a.prompt_len + 1, dtype=torch.long)

        def hf_step():
            with torch.no_grad():
                o = hf(st["next"], past_key_values=st["kv"], attention_mask=st["mask"], use_cache=True)
            st["mask"] = torch.cat([st["mask"], torch.ones(B, 1, dtype=torch.long)], 1)
            st["next"] = o.logits[:, -1].argmax(-1, keepdim=True)

        steps["transformers"] = hf_step
        best = dict.fromkeys(steps, float("inf"))
        for _ in range(a.rounds):
            for name, fn in steps.items():
                t = time.perf_counter()
                for _ in range(a.steps):
                    fn()
                best[name] = min(best[name], (time.perf_counter() - t) / a.steps * 1e3)
        line = f"B={B:3d}  ms/step: " + "  ".join(f"{k} {v:.2f}" for k, v in best.items())
        line += f"   ours / transformers {best['transformers'] / best['ours']:.2f}x"
        if "baseline" in best:
            line += f"   ours / baseline {best['baseline'] / best['ours']:.2f}x"
        print(line, flush=True)
    with open("/proc/loadavg") as f:
        print(f"load average at end {' '.join(f.read().split()[:3])}")


if __name__ == "__main__":
    main()
