"""Batched serving benchmark (run on demand: python tests/bench/bench_serve.py), every
figure side by side in one run, on the shipped model:

1. batched autoregressive decoding (decode_batch, B sequences) vs transformers' generate
   at the same batch (left padding, same weights converted to LlamaForCausalLM, greedy),
   prompts of mixed lengths; tokens/s including prefill for both; identical outputs counted.
   At every B the same max(--prompts, B) prompts are decoded, B at a time (so B = 1 is not
   one prompt's luck), every configuration in turn on each chunk (interleaved).
2. speculative plans' aggregate throughput vs autoregressive at each B, under both
   batching policies (ragged, synchronous); outputs checked equal to autoregressive.
3. optionally (--baseline FILE: another version of hispec_exec/model.py, e.g.
   `git show REV:hispec_exec/model.py > /tmp/model_before.py`), that version's batched
   autoregressive decoding on the same weights, interleaved like the others: before/after
   figures of a change side by side in one run. --baseline-generate FILE does the same for
   hispec_exec/generate.py (the decoding loop; imported inside the package, so its relative
   imports take this checkout's other modules), alone or with --baseline.

Before the timed runs at each B, every configuration decodes one chunk of B prompts for 8
tokens, untimed (`--warmup-tokens`): the first forwards at a new size pay the allocator's
first touch of new memory (glibc maps large blocks fresh until its threshold adapts), which
fell on whichever configuration ran first at that B (ours: up to +65 % on the first B = 32
decode in one process, measured), not on the others. `--repeats N` runs every chunk N
times, the configurations interleaved, and counts each one's fastest (wall and CPU time
alike): on a shared VM a single pass moved by +-20 % between identical runs.

Ends with a markdown table of the figures (paste it into the README with the load).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import torch


def baseline_model(path: str, model):
    """The model class of another model.py (e.g. `git show REV:hispec_exec/model.py`) with
    `model`'s weights: the path before a change, side by side in one run."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("baseline_model", path)
    base = sys.modules["baseline_model"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    bm = base.Transformer(base.ModelArgs.from_dict(json.loads(model.args.to_json()))).eval()
    bm.load_state_dict(model.state_dict())
    import inspect

    if "prefill" not in inspect.signature(base.Transformer.run_jobs).parameters:  # a version before PREFILL_TILE:
        plain = bm.run_jobs  # its prefill forwards are ordinary forwards (generate.run_prefill passes prefill=True)
        bm.run_jobs = lambda jobs, prefill=False: plain(jobs)
    return bm


def baseline_decode_batch(path: str):
    """`decode_batch` of another hispec_exec/generate.py (e.g. `git show
    REV:hispec_exec/generate.py`), imported as a module of the hispec_exec package: its
    relative imports (.model, ...) resolve to this checkout's modules."""
    import importlib.util
    import sys

    name = "hispec_exec._baseline_generate"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.decode_batch


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,4,16,32")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--prompts", type=int, default=16, help="prompts decoded at every B (at least B)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--plans", default="2,16:3;2,4,16:2:4;2,4,8,16:2:3,6",
                    help="levels:propose[:windows];...")
    ap.add_argument("--json", help="write the figures here too")
    ap.add_argument("--baseline", help="another model.py: time its autoregressive decoding too (same weights)")
    ap.add_argument("--baseline-generate", help="another generate.py: the baseline configuration decodes with "
                    "its decode_batch (with --baseline's model, else ours)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run every chunk this many times (interleaved) and count each configuration's fastest")
    ap.add_argument("--warmup-tokens", type=int, default=8,
                    help="untimed decode of one chunk per configuration at every B first (0: none)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from hispec_exec import heldout_prompts, load_model
    from hispec_exec.generate import decode_batch
    from hispec_sim.schema import Plan

    model = load_model()
    L = model.num_layers
    T = a.max_new_tokens
    Bs = [int(x) for x in a.batches.split(",")]
    plans = []
    for spec in filter(None, a.plans.split(";")):
        parts = spec.split(":")
        lv = [int(x) for x in parts[0].split(",")]
        plans.append(Plan(levels=lv, propose=int(parts[1]), windows=[int(x) for x in parts[2].split(",")] if len(parts) > 2 else []))
    ar = Plan(levels=[L])
    N = max([a.prompts] + Bs)
    src = heldout_prompts(N, 64, seed=1)
    lens = [32 + (17 * i) % 33 for i in range(N)]  # 32..64 tokens: left padding for transformers
    all_prompts = [p[:n] for p, n in zip(src, lens)]
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    fig = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "threads": a.threads, "loadavg_start": load, "torch": torch.__version__},
           "max_new_tokens": T, "prompt_lens": "32..64 mixed", "repeats": a.repeats,
           "warmup_tokens": a.warmup_tokens, "rows": []}
    print(f"load average at start {' '.join(load)}; threads {a.threads}; {T} new tokens per sequence", flush=True)

    hf = None
    if not a.no_hf:
        from transformers import LlamaForCausalLM
        from transformers.utils import logging as hf_logging

        from hispec_exec.hf import save_hf

        hf_logging.set_verbosity_error()
        tmp = tempfile.mkdtemp(prefix="hispec_hf_")
        save_hf(model, tmp)
        hf = LlamaForCausalLM.from_pretrained(tmp, torch_dtype=torch.float32).eval()

    def hf_gen(prompts, T=T):
        W = max(len(p) for p in prompts)
        ids = torch.tensor([[0] * (W - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (W - len(p)) + [1] * len(p) for p in prompts])
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=mask, max_new_tokens=T, min_new_tokens=T, do_sample=False,
                              pad_token_id=0, eos_token_id=None)
        return out[:, W:].tolist()

    cpu = {}  # CPU time of the calling thread per configuration (torch runs on it: one thread), a
    # figure that a loaded machine distorts far less than wall time
    threads_seen = {}  # torch's intra-op threads before and after every timed call, per side: the
    # comparison is fair only if both sides ran with --threads (generate does not change them)

    def timed(fn, name):
        side = threads_seen.setdefault("transformers" if name[1] == "hf" else "ours", set())
        side.add(torch.get_num_threads())
        t, c = time.perf_counter(), time.thread_time()
        out = fn()
        dc = time.thread_time() - c
        side.add(torch.get_num_threads())
        return out, time.perf_counter() - t, dc

    decode_batch(model, ar, all_prompts[:2], 8)  # warm-up
    if hf is not None:
        hf_gen(all_prompts[:2])

    def chunks(B):
        n = max(a.prompts, B)
        return [all_prompts[i:i + B] for i in range(0, n, B)]

    configs = [("autoregressive", ar, "ragged")]
    models, decoders = {}, {}
    if a.baseline or a.baseline_generate:
        bm = baseline_model(a.baseline, model) if a.baseline else model
        bdec = baseline_decode_batch(a.baseline_generate) if a.baseline_generate else decode_batch
        bdec(bm, ar, all_prompts[:2], 8)  # warm-up
        configs.append(("baseline autoregressive", ar, "ragged"))
        models["baseline autoregressive"] = bm
        decoders["baseline autoregressive"] = bdec
    for plan in plans:
        for batching in ("ragged", "synchronous"):
            if plan.depth > 2 or batching == "ragged":  # depth <= 2: synchronous = ragged
                configs.append((f"{plan.describe(short=True)} {batching}", plan, batching))

    for B in Bs:
        # every chunk of B prompts runs every configuration in turn (interleaved), so that a
        # change of machine load falls on all of them alike
        n = max(a.prompts, B) * T
        row = {"B": B, "prompts": max(a.prompts, B)}
        if a.warmup_tokens:  # untimed: every configuration's first forwards at this size
            for name, plan, batching in configs:
                decoders.get(name, decode_batch)(models.get(name, model), plan, chunks(B)[0], a.warmup_tokens,
                                                 batching=batching)
            if hf is not None:
                hf_gen(chunks(B)[0], a.warmup_tokens)
        t = dict.fromkeys([c[0] for c in configs] + (["hf"] if hf is not None else []), 0.0)
        out = {k: [] for k in t}
        for c in chunks(B):
            best = {}  # per configuration: its minimum wall and CPU time over the repeats of this chunk
            for rep in range(a.repeats):
                for name, plan, batching in configs:
                    m, dec = models.get(name, model), decoders.get(name, decode_batch)
                    res, dt, dc = timed(lambda: dec(m, plan, c, T, batching=batching), (B, name))
                    if rep == 0:
                        out[name] += res
                    elif [r.tokens for r in res] != [r.tokens for r in out[name][-len(c):]]:
                        raise RuntimeError(f"{name}: a repeat decoded other tokens")
                    w, u = best.get(name, (dt, dc))
                    best[name] = (min(w, dt), min(u, dc))
                if hf is not None:
                    tk, dt, dc = timed(lambda: hf_gen(c), (B, "hf"))
                    if rep == 0:
                        out["hf"] += tk
                    w, u = best.get("hf", (dt, dc))
                    best["hf"] = (min(w, dt), min(u, dc))
            for name, (w, u) in best.items():
                t[name] += w
                cpu[(B, name)] = cpu.get((B, name), 0.0) + u
        ref = [r.tokens for r in out["autoregressive"]]
        t_ar = t["autoregressive"]
        row["autoregressive_tokens_per_s"] = n / t_ar
        if hf is not None:
            row["hf_generate_tokens_per_s"] = n / t["hf"]
            row["ratio_ours_vs_hf_generate"] = t["hf"] / t_ar
            row["ratio_ours_vs_hf_generate_cpu_time"] = cpu[(B, "hf")] / cpu[(B, "autoregressive")]
            row["hf_identical"] = sum(x == y for x, y in zip(out["hf"], ref))
        for name, plan, _ in configs[1:]:
            res = out[name]
            row[name] = {"tokens_per_s": n / t[name], "speedup_vs_autoregressive": t_ar / t[name],
                         "speedup_vs_autoregressive_cpu_time": cpu[(B, "autoregressive")] / cpu[(B, name)],
                         "identical": all(r.tokens == x for r, x in zip(res, ref)),
                         "acceptance": [None if v is None else round(v, 3) for v in (
                             [None] + [sum(r.accepted[j] for r in res) / max(1, sum(r.proposed[j] for r in res))
                                       for j in range(1, plan.depth)])]}
        fig["rows"].append(row)
        line = f"B={B:3d}  autoregressive {row['autoregressive_tokens_per_s']:7.1f} tok/s"
        if hf is not None:
            line += (f"  transformers {row['hf_generate_tokens_per_s']:7.1f} tok/s  ours/hf {row['ratio_ours_vs_hf_generate']:.2f}x"
                     f" (CPU time {row['ratio_ours_vs_hf_generate_cpu_time']:.2f}x)"
                     f"  (identical {row['hf_identical']}/{row['prompts']})")
        print(line, flush=True)
        for k, v in row.items():
            if isinstance(v, dict):
                print(f"        {k:32s} {v['tokens_per_s']:7.1f} tok/s  {v['speedup_vs_autoregressive']:.2f}x vs AR"
                      f"  acceptance {v['acceptance'][1:]}  identical {v['identical']}", flush=True)
    with open("/proc/loadavg") as f:
        fig["machine"]["loadavg_end"] = f.read().split()[:3]
    fig["machine"]["torch_threads_seen"] = {k: sorted(v) for k, v in threads_seen.items()}
    print(f"load average at end {' '.join(fig['machine']['loadavg_end'])}; torch threads seen "
          f"{fig['machine']['torch_threads_seen']}")
    print()
    print(table(fig, [c[0] for c in configs[1:]], hf is not None))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(fig, f, indent=1)
    return fig


def table(fig: dict, names: list[str], hf: bool) -> str:
    """The figures as a markdown table: AR tok/s, transformers, ratio, then every other
    configuration's throughput relative to our autoregressive decoding at the same B."""
    m = fig["machine"]
    head = ["B", "ours AR tok/s"] + (["transformers `generate` tok/s", "ours / transformers (wall; CPU time)"] if hf else [])
    head += [f"{n} (x AR: wall; CPU time)" for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in fig["rows"]:
        cells = [str(row["B"]), f"{row['autoregressive_tokens_per_s']:.1f}"]
        if hf:
            cells += [f"{row['hf_generate_tokens_per_s']:.1f}",
                      f"**{row['ratio_ours_vs_hf_generate']:.2f}x**; {row['ratio_ours_vs_hf_generate_cpu_time']:.2f}x"]
        cells += [f"{row[n]['speedup_vs_autoregressive']:.2f}x; {row[n]['speedup_vs_autoregressive_cpu_time']:.2f}x"
                  for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\n(load average {' '.join(m['loadavg_start'])} at start, {' '.join(m['loadavg_end'])} at the end; "
                 f"{m['cores']} cores, {m['threads']} torch thread(s), torch {m['torch']}; {fig['max_new_tokens']} new "
                 f"tokens per sequence, prompts {fig['prompt_lens']}, prefill included; fastest of "
                 f"{fig.get('repeats', 1)} run(s) per chunk, after a {fig.get('warmup_tokens', 0)}-token warm-up)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
