"""Hugging Face Llama folders load into our model and give transformers' logits."""
import json

import pytest
import torch

from exec_helpers import assert_greedy_equivalent
from hispec_exec import autoregressive, decode, load_model
from hispec_exec.hf import save_hf
from hispec_sim.schema import Plan




def tiny_llama(tmp_path, tie, theta=5000.0, sharded=False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=theta,
                      max_position_embeddings=256, tie_word_embeddings=tie)
    hf = LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="100KB" if sharded else "5GB")
    return hf


@pytest.mark.parametrize("tie,sharded", [(False, False), (True, False), (False, True)])
def test_hf_llama_logits_match(tmp_path, tie, sharded):
    hf = tiny_llama(tmp_path, tie, sharded=sharded)
    if sharded:
        assert (tmp_path / "model.safetensors.index.json").exists()
    m = load_model(tmp_path)
    assert m.args.rope_theta == 5000.0 and m.args.n_kv_heads == 2 and m.args.tie_embeddings == tie
    ids = torch.randint(0, 97, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits[0]
    ours = m.head(m.run(m.new_cache(), 0, 4, ids[0]))
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    # and every plan decodes it exactly like autoregressive decoding
    ar = autoregressive(m, ids[0].tolist(), 20)
    with torch.no_grad():
        hf_greedy = hf.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=0)[0, 24:].tolist()
    # transformers is another code path: identical except at a near-tie of its logits
    assert_greedy_equivalent(ar.tokens, hf_greedy, lambda p: hf(torch.tensor([p])).logits[0, -1].detach(),
                             ids[0].tolist(), "transformers greedy")
    assert decode(m, Plan(levels=[1, 2, 4], propose=2, windows=[2]), ids[0].tolist(), 20).tokens == ar.tokens


def test_each_tensor_comes_from_the_shard_its_index_names(tmp_path):
    """A shard that also holds a tensor the index places elsewhere (zeros here) does not
    replace it: the model equals transformers' on the same folder."""
    from safetensors.torch import load_file, save_file

    hf = tiny_llama(tmp_path, False, sharded=True)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    wm = index["weight_map"]
    shards = sorted(set(wm.values()))
    name = next(n for n, s in wm.items() if s == shards[0])
    last = tmp_path / shards[-1]
    held = load_file(str(last))
    held[name] = torch.zeros_like(dict(hf.named_parameters())[name])
    save_file(held, str(last), metadata={"format": "pt"})
    m = load_model(tmp_path)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        torch.testing.assert_close(m.head(m.run(m.new_cache(), 0, 4, ids[0])), hf(ids).logits[0], atol=1e-4, rtol=1e-4)
    wm[next(n for n, s in wm.items() if s == shards[0] and n != name)] = shards[-1]  # a shard that lacks it
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=f"places .* in {shards[-1]}, which does not hold it"):
        load_model(tmp_path)


def test_save_hf_roundtrip(tmp_path, shipped):
    from transformers import LlamaForCausalLM

    save_hf(shipped, tmp_path)
    hf = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([list(b"def main():\n    return 0\n")])
    with torch.no_grad():
        ref = hf(ids).logits[0]
    ours = shipped.head(shipped.run(shipped.new_cache(), 0, 16, ids[0]))
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
    back = load_model(tmp_path)
    assert back.args.n_layers == 16 and back.args.tie_embeddings == shipped.args.tie_embeddings


def test_hf_bad_config(tmp_path):
    tiny_llama(tmp_path, False)
    cfg = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    cfg["hidden_act"] = "gelu"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="hidden_act"):
        load_model(tmp_path)


def test_cli_on_hf_folder_with_tokenizer(tmp_path, capsys):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from hispec_exec.cli import main

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["def f(x):\n    return x + 1\n", "import os\nclass A:\n    pass\n"] * 20,
                            trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(tmp_path)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path, safe_serialization=True)
    assert main(["info", "--model", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"] == 4
    assert main(["run", "--model", str(tmp_path), "--levels", "1,2,4", "--window", "2", "--prompts", "2",
                 "--max-new-tokens", "16", "--check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["identical_to_autoregressive"] is True
    assert main(["generate", "--model", str(tmp_path), "--prompt", "def f(x):", "--levels", "2,4",
                 "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.startswith("def f(x):")


def test_every_command_tokenizes_with_the_tokenizers_own_special_tokens(tmp_path, capsys):
    """One codec for profile measure, validate and hispec-exec: a Llama-style tokenizer.json
    whose post-processor prepends BOS gives BOS-first ids everywhere, and text shows without
    it (twenty-first fuzz round: measure added BOS, hispec-exec did not, so a profile's
    acceptance was measured on other token ids than the executor ran)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    from hispec_exec.cli import main
    from hispec_exec.prompts import heldout_token_prompts, text_codec

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["def f(x):\n    return x + 1\n", "import os\nclass A:\n    pass\n"] * 20,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    tok.save(str(tmp_path / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path, safe_serialization=True)
    model = load_model(tmp_path)
    codec = text_codec(model, tmp_path)
    ids = codec.encode("def f(x):")
    assert ids[0] == bos and codec.decode(ids) == "def f(x):"
    assert all(p[0] == bos for p in heldout_token_prompts(codec, 3, 64, 0))  # run, measure and validate's
    served = heldout_token_prompts(codec, 3, 40, 0, exact=True)  # serve's lengths are in tokens
    assert [len(p) for p in served] == [40] * 3 and all(p[0] == bos for p in served)
    assert len(heldout_token_prompts(codec, 1, 60_000, 0, exact=True)[0]) == 60_000  # round 22: 40,500 was the most
    assert main(["generate", "--model", str(tmp_path), "--prompt", "def f(x):", "--levels", "2,4",
                 "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.startswith("def f(x):")


def test_served_held_out_prompts_go_through_the_tokenizer(tmp_path, capsys):
    """Generated traffic and a trace's prompt length on a checkpoint with a tokenizer of
    fewer than 256 tokens: held-out text encoded to exactly that many tokens (twenty-first
    fuzz round: the prompts were byte values taken for token ids, refused here as out of
    the vocabulary, and silently other prompts on larger vocabularies)."""
    from hispec_exec.cli import main

    _word_level_llama(tmp_path, ["[UNK]", "def", "return", "import", "class", "self", "if", "for", "in", "(", ")", ":",
                                 "=", ".", ","])
    trace = tmp_path / "t.jsonl"
    trace.write_text(json.dumps({"arrival_s": 0.0, "prompt_tokens": 12, "max_new_tokens": 3}) + "\n")
    for traffic in (["--qps", "50", "--requests", "2", "--prompt-len", "8", "--output-len", "3"], ["--trace", str(trace)]):
        assert main(["serve", "--model", str(tmp_path), *traffic, "--levels", "2,4", "--clock", "cpu", "--no-warmup",
                     "--json"]) == 0
        got = json.loads(capsys.readouterr().out)["requests"]
        assert [r["prompt_tokens"] for r in got] == ([8, 8] if "--qps" in traffic else [12])


def test_a_full_measure_of_held_out_prompts_uses_the_checkpoints_codec(tmp_path, monkeypatch, capsys):
    """profile measure on held-out prompts hands the timing and acceptance the prompts as the
    codec encodes them, as --acceptance-only, validate and run do (round 22, D1: it measured
    raw bytes as token ids, and crashed on a vocabulary below 122)."""
    import hispec_exec.measure as measure
    from hispec_exec.prompts import heldout_token_prompts, text_codec
    from hispec_sim.cli import main as sim_main

    words = ["[UNK]", "def", "return", "import", "class", "self", "if", "for", "in", "(", ")", ":", "=", ".", ","]
    _word_level_llama(tmp_path, words)
    seen = {}

    def stop(*a, **k):
        seen.update(k)
        raise ValueError("stub: stopped before timing")
    monkeypatch.setattr(measure, "measure_profile", stop)
    assert sim_main(["profile", "measure", "--model", str(tmp_path), "--prompts", "3", "--seed", "7",
                     "--max-new-tokens", "8", "--out", str(tmp_path / "p.json")]) == 2
    assert "stub: stopped before timing" in capsys.readouterr().err
    model = load_model(tmp_path)
    assert seen["prompts"] == heldout_token_prompts(text_codec(model, tmp_path), 3, 64, 7)
    assert seen["prompts_detail"] is None and max(max(p) for p in seen["prompts"]) < len(words)
    # recorded in the profile (model.text): hispec-sim serve then refuses text it would count in bytes,
    # though this vocabulary (15) is small enough to be read as bytes (round 22, D2)
    assert seen["text"] == "tokenizer"


def test_a_tokenizer_that_cannot_encode_is_one_line_and_ids_need_none(tmp_path, capsys):
    """A tokenizer.json that fails on a text is a ValueError naming it (round 22, D7: a
    traceback); a trace of token ids runs on a checkpoint without a tokenizer whose vocabulary
    is too small for bytes (D8: refused for the tokenizer it does not need)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from hispec_exec.cli import main
    from hispec_exec.prompts import text_codec

    words = ["def", "return", "(", ")"]
    _word_level_llama(tmp_path, words)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}))  # no unk token
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="tokenizer: .*tokenizer.json cannot encode 'def zz'"):
        text_codec(load_model(tmp_path), tmp_path).encode("def zz")
    (tmp_path / "tokenizer.json").unlink()
    trace = tmp_path / "t.jsonl"
    trace.write_text(json.dumps({"arrival_s": 0.0, "prompt_tokens": [1, 2, 3], "max_new_tokens": 3}) + "\n")
    assert main(["serve", "--model", str(tmp_path), "--trace", str(trace), "--levels", "2,4", "--clock", "cpu",
                 "--no-warmup", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["requests"][0]["prompt_tokens"] == 3


def _word_level_llama(folder, words):
    """A 4-layer transformers Llama of len(words) tokens with a WordLevel tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)


def test_a_checkpoint_with_tensors_the_model_would_not_use_is_refused(tmp_path):
    """Biases (Qwen2-style), extra layers, a head the tied embeddings would replace, a shard
    named by a list: another model than the one built, or no model -- refused, not run
    (sixteenth fuzz round: they were loaded without a word, or crashed)."""
    from safetensors.torch import load_file, save_file

    tiny_llama(tmp_path, False)
    f = tmp_path / "model.safetensors"
    held = load_file(str(f))
    save_file({**held, "model.layers.0.self_attn.q_proj.bias": torch.ones(64)}, str(f), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="1 tensor\\(s\\) the executor would not use, e.g. model.layers.0.self_attn.q_proj.bias"):
        load_model(tmp_path)
    save_file(held, str(f), metadata={"format": "pt"})
    cfg = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": True}))
    with pytest.raises(ValueError, match="lm_head.weight differs from the embeddings"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"model.norm.weight": ["a"]}}))
    f.unlink()
    with pytest.raises(ValueError, match="names shard \\['a'\\]; a shard must be a file name"):
        load_model(tmp_path)


def test_generation_ends_at_the_models_end_of_sequence(tmp_path, capsys):
    """generate ran past eos_token_id to --max-new-tokens (a review, 2026-12-03). Every plan's
    greedy output is autoregressive decoding's up to and with the first end-of-sequence
    token committed; --ignore-eos keeps the fixed length."""
    import random

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    from hispec_exec.cli import main
    from hispec_exec.hf import eos_token_ids
    from hispec_exec.prompts import text_codec

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["def f(x):\n    return x\n"] * 20,
                            trainers.BpeTrainer(vocab_size=270, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=96,
                                 num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=256, initializer_range=0.2)
                     ).save_pretrained(tmp_path, safe_serialization=True)
    m = load_model(tmp_path)
    vocab = m.args.vocab_size
    prompt = text_codec(m, tmp_path).encode("def f(x):")
    ar = autoregressive(m, prompt, 24).tokens
    eos = ar[6]
    first = ar.index(eos)  # its first occurrence ends the output
    rng = random.Random(0)
    for _ in range(12):
        a = rng.randint(1, 2)
        plan = Plan(levels=[a, rng.randint(a + 1, 3), 4], propose=rng.randint(1, 5), windows=[rng.randint(1, 4)])
        assert decode(m, plan, prompt, 24, stop=frozenset({eos})).tokens == ar[:first + 1], plan
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "eos_token_id": [eos, vocab - 1]}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": None}))
    assert eos_token_ids(tmp_path, vocab) == {eos, vocab - 1}
    generate = ["generate", "--model", str(tmp_path), "--prompt", "def f(x):", "--levels", "2,4", "--max-new-tokens", "24"]
    capsys.readouterr()
    assert main(generate) == 0
    assert f": {first + 1} tokens, ended by token {eos} (end of sequence)," in capsys.readouterr().err
    assert main([*generate, "--ignore-eos"]) == 0
    assert ": 24 tokens, " in capsys.readouterr().err
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": vocab}))
    assert main(generate) == 2
    assert f"generation_config.eos_token_id: must be token ids in [0, {vocab - 1}]" in capsys.readouterr().err
    # the shipped model names none: --ignore-eos has nothing to ignore
    assert main(["generate", "--prompt", "def f(", "--max-new-tokens", "4", "--ignore-eos"]) == 2
    assert "ignore_eos: applies to a model that names an end-of-sequence token" in capsys.readouterr().err


def test_max_context_sets_the_kv_positions_within_the_checkpoints(tmp_path, capsys):
    """--max-context: a Hugging Face folder's default is max_position_embeddings capped at
    2,048; the flag raises it up to max_position_embeddings (there was no way past 2,048) or
    lowers it, for our checkpoint too; beyond what the checkpoint was made for is one line."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hispec_exec.cli import main

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
                     ).save_pretrained(tmp_path, safe_serialization=True)

    def context(*flags) -> int:
        assert main(["info", *flags, "--json"]) == 0
        return json.loads(capsys.readouterr().out)["max_seq_len"]

    assert context("--model", str(tmp_path)) == 2048
    assert context("--model", str(tmp_path), "--max-context", "4096") == 4096
    assert context("--max-context", "100") == 100 and load_model(max_seq_len=100).args.max_seq_len == 100
    for flags, most in ((["--model", str(tmp_path)], "4096] (the checkpoint's max_position_embeddings)"),
                        ([], "512] (the checkpoint's max_seq_len)")):
        assert main(["info", *flags, "--max-context", "4097"]) == 2
        assert f"max_context: must be in [2, {most}, got 4097" in capsys.readouterr().err
