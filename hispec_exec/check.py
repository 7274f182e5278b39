"""Tie-aware greedy equivalence: where a plan's output first differs from autoregressive
decoding, and whether the full model was at a near-tie there.

What is guaranteed (README, "Equivalence guarantee"):

* CPU: our decoding path is row invariant by construction (hispec_exec.model: every product
  is a stack of one-row products whose per-entry shape never changes), so greedy decoding
  with any plan reproduces autoregressive greedy decoding bit for bit.
* CUDA (or any reference computed through another code path: transformers, the training
  path): kernels are picked by shape, so logits differ in the last bits between a forward
  of 1 and of k tokens; greedy outputs are identical except where the full model's top two
  logits are within rounding of each other. The first such divergence is reported, with
  the full model's top-2 logit gap there; a gap above `NEAR_TIE` is a real mismatch.

`logits_fn(ids) -> (vocab,)` gives the full model's next-token logits after `ids`; for our
model it is `full_model_logits(model)`, for transformers any wrapper around `model(ids)`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

# Largest logit difference counted as a tie. Float32 forwards through different kernels
# differ by ~1e-6 relative (~1e-5 absolute on logits of size ~10); a real bug moves logits
# by far more. Stated in logits (not probabilities) so it does not depend on the vocabulary.
NEAR_TIE = 1e-3

LogitsFn = Callable[[Sequence[int]], torch.Tensor]


@dataclass(frozen=True)
class Divergence:
    """The first position where `tokens` differs from the `reference` (autoregressive) output."""
    position: int  # index among the generated tokens (0 = first new token)
    token: int  # what the plan produced there
    reference_token: int  # what autoregressive decoding produced there
    top1: int  # the full model's argmax there (given the common prefix)
    top2: int  # its runner-up
    top2_gap: float | None  # full model's top-1 minus top-2 logit (None: one output stopped early)
    token_gap: float | None  # |logit(reference_token) - logit(token)|
    near_tie: bool  # both tokens within NEAR_TIE of the top logit

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.top2_gap is None:
            return f"outputs differ in length: the shorter one ends at new token {self.position}"
        kind = "near-tie" if self.near_tie else "NOT a near-tie"
        return (f"first divergence at new token {self.position}: plan {self.token}, autoregressive "
                f"{self.reference_token}; full model's top-2 logit gap {self.top2_gap:.3g}, gap between the two "
                f"tokens {self.token_gap:.3g} ({kind}, threshold {NEAR_TIE:g})")


def first_difference(tokens: Sequence[int], reference: Sequence[int]) -> int | None:
    """Index of the first differing token; the shorter length when one is a prefix of the
    other and the lengths differ; None when identical."""
    for i, (a, b) in enumerate(zip(tokens, reference)):
        if a != b:
            return i
    return None if len(tokens) == len(reference) else min(len(tokens), len(reference))


def full_model_logits(model, prefill: int = 0) -> LogitsFn:
    """Next-token logits of our model's full depth after `ids`, through the decoding path:
    the first `prefill` ids in a prefill forward (decoding prefills a prompt but its last
    token: generate.run_prefill), the rest in one forward of the fixed-shape products that
    decoding's steps and checks run, so the logits are those decoding saw."""

    @torch.no_grad()
    def fn(ids: Sequence[int]) -> torch.Tensor:
        dev = model.tok_embeddings.weight.device
        cache = model.new_cache()
        ids = list(ids)
        if prefill:
            model.run(cache, 0, model.num_layers, torch.tensor(ids[:prefill], device=dev), prefill=True)
        x = model.run(cache, 0, model.num_layers, torch.tensor(ids[prefill:], device=dev))
        return model.head(x[-1:])[0].float().cpu()

    return fn


def divergence(logits_fn: LogitsFn, prompt: Sequence[int], tokens: Sequence[int], reference: Sequence[int],
               eps: float = NEAR_TIE) -> Divergence | None:
    """None when `tokens == reference`; else the first divergence, judged on the full
    model's logits after the common prefix (prompt + reference[:position])."""
    i = first_difference(tokens, reference)
    if i is None:
        return None
    if i >= min(len(tokens), len(reference)):  # one output stops early: not a tie question
        return Divergence(i, -1, -1, -1, -1, None, None, False)
    logits = logits_fn(list(prompt) + list(reference[:i])).double()
    top = torch.topk(logits, 2)
    v1, v2 = float(top.values[0]), float(top.values[1])
    a, b = int(tokens[i]), int(reference[i])
    la, lb = float(logits[a]), float(logits[b])
    return Divergence(position=i, token=a, reference_token=b, top1=int(top.indices[0]), top2=int(top.indices[1]),
                      top2_gap=v1 - v2, token_gap=abs(lb - la), near_tie=bool(v1 - la <= eps and v1 - lb <= eps))


def greedy_check(model, prompts: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]],
                 references: Sequence[Sequence[int]]) -> dict:
    """What `hispec-exec run --check` reports in greedy mode. outputs[j] / references[j]
    decode prompts[j % len(prompts)] (repeats follow one another)."""
    diffs = [j for j, (o, r) in enumerate(zip(outputs, references)) if list(o) != list(r)]
    out: dict = {"identical_to_autoregressive": not diffs}
    if diffs:
        j = diffs[0]
        prompt = prompts[j % len(prompts)]
        d = divergence(full_model_logits(model, len(prompt) - 1), prompt, outputs[j], references[j])
        out["runs_differing"] = len(diffs)
        out["first_divergence"] = {"run": j, "prompt": j % len(prompts), **d.to_dict()}
        out["first_divergence_text"] = d.describe()
    return out
