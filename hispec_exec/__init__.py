"""hispec_exec: a real PyTorch executor for hierarchical speculative decoding.

Python API (used by the validation work):
  load_model(path=None, device="cpu") -> Transformer
  decode(model, plan, prompt_ids, max_new_tokens, mode=None, seed=0, ...) -> DecodeResult
  autoregressive(model, prompt_ids, max_new_tokens, ...) -> DecodeResult
  exit_traces(model, prompt_ids, max_new_tokens, exits=None) -> LongTensor (positions x exits)
  heldout_exit_traces(model, n_prompts, prompt_len, max_new_tokens, seed, exits) -> (LongTensor, starts)
  time_layer(model, layer, n_tokens, context), time_head(model, n_tokens), forward_overhead(model, ...)
  heldout_prompts(n, prompt_len, seed)
"""
from .checkpoint import DEFAULT_CHECKPOINT, load_model
from .data import heldout_prompts
from .generate import (DecodeResult, Forward, autoregressive, decode, exit_traces, forward_overhead,
                       heldout_exit_traces, time_head, time_layer)
from .model import Cache, ModelArgs, Transformer

__all__ = ["DEFAULT_CHECKPOINT", "load_model", "heldout_prompts", "DecodeResult", "Forward", "autoregressive",
           "decode", "exit_traces", "heldout_exit_traces", "forward_overhead", "time_head", "time_layer", "Cache", "ModelArgs", "Transformer"]
