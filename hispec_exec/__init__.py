"""hispec_exec: a real PyTorch executor for hierarchical speculative decoding.

Python API (used by the validation work):
  load_model(path=None, device="cpu") -> Transformer
  decode(model, plan, prompt_ids, max_new_tokens, mode=None, seed=0, ...) -> DecodeResult
  autoregressive(model, prompt_ids, max_new_tokens, ...) -> DecodeResult
  exit_traces(model, prompt_ids, max_new_tokens, exits=None) -> LongTensor (positions x exits)
  heldout_exit_traces(model, n_prompts, prompt_len, max_new_tokens, seed, exits) -> (LongTensor, starts)
  measure.forward_timings / head_timings / measure_latency / measure_profile: a profile measured with the executor
  heldout_prompts(n, prompt_len, seed)
"""
from .checkpoint import DEFAULT_CHECKPOINT, load_model
from .data import heldout_prompts
from .generate import DecodeResult, Forward, autoregressive, decode, exit_traces, heldout_exit_traces
from .model import Cache, ModelArgs, Transformer

__all__ = ["DEFAULT_CHECKPOINT", "load_model", "heldout_prompts", "DecodeResult", "Forward", "autoregressive",
           "decode", "exit_traces", "heldout_exit_traces", "Cache", "ModelArgs", "Transformer"]
