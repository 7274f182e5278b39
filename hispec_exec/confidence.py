"""Confidence statistics of every exit: the top-1 probability of each exit at every
position of the full model's greedy trajectory, next to the argmax traces of
`generate.exit_traces`, and what they say about agreement (Acceptance.confidence).

Top-1 probability = max of softmax(logits) at temperature 1, the quantity an adaptive
plan's thresholds (Plan.draft_confidence, Plan.escalate_confidence) compare against.

`python -m hispec_exec.confidence --profile P --out FILE` adds these statistics to a
measured profile: it re-runs the profile's own held-out prompts (provenance.prompts), checks
that the argmax traces it sees equal the profile's, and writes the profile with
`workloads.<w>.confidence` filled in (every other field unchanged).
"""
from __future__ import annotations

import numpy as np
import torch

from hispec_sim.schema import Acceptance, ConfidenceStats, Profile, Source

from .generate import autoregressive
from .model import Transformer

BUCKETS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


@torch.no_grad()
def exit_confidence(model: Transformer, prompt_ids, max_new_tokens: int, exits: list[int] | None = None,
                    capacity: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(argmax, top-1 probability) of every exit at every position of the full model's
    greedy trajectory: two tensors (max_new_tokens, len(exits)); the argmax one equals
    generate.exit_traces."""
    L = model.num_layers
    exits = list(exits or range(1, L + 1))
    if exits[-1] != L:
        raise ValueError(f"exits: must end at the last layer {L}")
    traj = autoregressive(model, prompt_ids, max_new_tokens, capacity=capacity).tokens
    full = list(prompt_ids) + traj
    P = len(prompt_ids)
    cache = model.new_cache(capacity)
    dev = model.tok_embeddings.weight.device
    arg, top = [], []
    if P > 1:  # the prompt but its last token as decoding ran it: a prefill forward (its own row tiles)
        model.run(cache, 0, L, torch.tensor(full[:P - 1], device=dev), prefill=True)
    prev = 0
    for e in exits:
        x = model.run(cache, prev, e, torch.tensor(full[P - 1:-1], device=dev) if prev == 0 else None)
        lg = model.head(x).double()
        arg.append(lg.argmax(-1).cpu())
        top.append(torch.softmax(lg, -1).max(-1).values.cpu())
        prev = e
    out = torch.stack(arg, 1)
    if out[:, -1].tolist() != traj:
        raise RuntimeError("internal: the full model's trace differs from its greedy trajectory")
    return out, torch.stack(top, 1)


def confidence_stats(traces: np.ndarray, top1: np.ndarray, buckets=BUCKETS, source: Source | None = None,
                     keep_top1: bool = True) -> ConfidenceStats:
    """Bucket shares and agreement given the lower exit's bucket, from traces (rows x exits)
    and their top-1 probabilities (rows x exits). top1 is stored rounded DOWN to 4 decimals,
    so `stored < tau` equals `measured < tau` for every threshold with at most 4 decimals."""
    traces, top1 = np.asarray(traces), np.asarray(top1, float)
    edges = np.asarray(buckets, float)
    nb = len(edges) - 1
    b = np.clip(np.searchsorted(edges, top1, side="right") - 1, 0, nb - 1)  # (rows, exits)
    n = traces.shape[1]
    share = np.stack([(b == k).mean(0) for k in range(nb)], 1)  # (exits, buckets)
    agree = traces[:, :, None] == traces[:, None, :]  # (rows, a, c)
    given: list = []
    for a in range(n):
        m = []
        for c in range(n):
            row = []
            for k in range(nb):
                sel = b[:, a] == k
                row.append(round(float(agree[sel, a, c].mean()), 6) if sel.any() else None)
            m.append(row)
        given.append(m)
    return ConfidenceStats(buckets=list(map(float, edges)), share=np.round(share, 6).tolist(),
                           agreement_given_bucket=given,
                           top1=(np.floor(top1 * 1e4) / 1e4).tolist() if keep_top1 else None,
                           source=source or Source(kind="measured", detail="exit_confidence"))


def measured_confidence(traces: np.ndarray, top1: np.ndarray, detail: str, env: str) -> ConfidenceStats:
    """The confidence statistics `hispec-sim profile measure` records with the traces (the
    same walk over the exits: hispec_exec.measure.measure_acceptance)."""
    return confidence_stats(traces, top1, source=Source(
        kind="measured", detail=f"softmax top-1 probability (temperature 1) of every exit along the full model's greedy "
        f"trajectory, recorded with the traces: {detail}; {env}"))


def add_confidence(profile: Profile, model: Transformer, workload: str | None = None,
                   model_folder: str | None = None) -> Profile:
    """The profile with `confidence` measured on its workload's own held-out prompts (their
    provenance: measure.prompts_of), encoded by the checkpoint's codec as `profile measure` did."""
    from .measure import prompts_of
    from .prompts import heldout_token_prompts, text_codec

    name = workload or profile.default_workload
    acc: Acceptance = profile.workload(name)
    spec, _ = prompts_of(profile, name)
    if not acc.traces or not spec:
        raise ValueError("profile: needs provenance.prompts and traces (a profile measured by `hispec-sim profile measure`)")
    if not all(k in spec for k in ("n", "seed", "prompt_len", "max_new_tokens")):
        raise ValueError(f"workload: {name} was not measured on held-out prompts ({spec.get('source') or spec.get('prompts')}); "
                         "this tool re-runs held-out prompts only")
    from hispec_sim.validate import check_model_matches

    codec = text_codec(model, model_folder)
    check_model_matches(profile, model, profile.model.name, codec)  # its shape, codec and, where recorded, weights
    args_, tops = [], []
    for p in heldout_token_prompts(codec, int(spec["n"]), int(spec["prompt_len"]), int(spec["seed"])):
        a, t = exit_confidence(model, p, int(spec["max_new_tokens"]), acc.exits)
        args_.append(a)
        tops.append(t)
    traces = torch.cat(args_).numpy()
    if traces.tolist() != acc.traces:
        raise ValueError("profile: the model's argmax traces differ from the profile's (another model or prompts?)")
    src = Source(kind="measured", detail=f"softmax top-1 probability (temperature 1) of every exit along the full "
                 f"model's greedy trajectory on the workload's own prompts ({spec}); command: python -m "
                 f"hispec_exec.confidence --profile {profile.name} --out FILE")
    stats = confidence_stats(traces, torch.cat(tops).numpy(), source=src)
    wl = dict(profile.workloads)
    wl[name] = acc.model_copy(update={"confidence": stats})
    return Profile.model_validate({**profile.model_dump(exclude_none=True), "workloads": {
        k: v.model_dump(exclude_none=True) for k, v in wl.items()}})


def main(argv=None) -> int:
    import argparse

    from hispec_sim.cli_common import one_line, shown
    from hispec_sim.schema import load_profile, save_profile

    ap = argparse.ArgumentParser(prog="python -m hispec_exec.confidence", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workload")
    ap.add_argument("--checkpoint", help="model checkpoint (default: the shipped one)")
    args = ap.parse_args(argv)
    try:
        from .checkpoint import load_model

        torch.set_num_threads(1)
        prof = load_profile(args.profile)
        out = add_confidence(prof, load_model(args.checkpoint) if args.checkpoint else load_model(), args.workload,
                             args.checkpoint)
        save_profile(out, args.out)
    except ValueError as e:
        print(f"error: {one_line(e)}")
        return 2
    print(f"wrote {shown(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
