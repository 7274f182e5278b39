"""Tie-aware equivalence (hispec_exec.check) and what `run --check` reports on a divergence."""
import json

import pytest
import torch

from exec_helpers import assert_greedy_equivalent, random_model, training_path_logits
from hispec_exec import autoregressive
from hispec_exec.check import NEAR_TIE, divergence, first_difference, full_model_logits, greedy_check

PROMPT = [3, 1, 4, 1, 5, 9, 2, 6]


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2


def test_real_mismatch_is_not_a_near_tie():
    m = random_model(scale=3)  # peaked logits: the argmax wins by a clear margin
    ref = autoregressive(m, PROMPT, 12).tokens
    logits = full_model_logits(m)(PROMPT + ref[:5])
    worst = int(logits.argmin())
    bad = ref[:5] + [worst] + ref[6:]
    d = divergence(full_model_logits(m), PROMPT, bad, ref)
    assert (d.position, d.token, d.reference_token) == (5, worst, ref[5])
    assert d.top1 == ref[5]  # same path as autoregressive decoding: its argmax, bit for bit
    assert d.top2_gap > 0 and d.token_gap > 1.0 and not d.near_tie
    assert "NOT a near-tie" in d.describe()
    with pytest.raises(AssertionError, match="NOT a near-tie"):
        assert_greedy_equivalent(bad, ref, full_model_logits(m), PROMPT)


def test_exact_tie_is_a_near_tie():
    """Two vocabulary rows made identical: both tokens always have the same logit, so taking
    either is a tie, and the check must say so."""
    m = random_model(seed=3, scale=3)
    ref = autoregressive(m, PROMPT, 12).tokens
    t = ref[4]
    twin = next(v for v in range(m.args.vocab_size) if v not in ref and v not in PROMPT)
    with torch.no_grad():
        m.output.weight[twin] = m.output.weight[t]
    ref2 = autoregressive(m, PROMPT, 12).tokens
    p = next(i for i, x in enumerate(ref2) if x in (t, twin))
    other = twin if ref2[p] == t else t
    tied = ref2[:p] + [other] + ref2[p + 1:]
    d = assert_greedy_equivalent(tied, ref2, full_model_logits(m), PROMPT)
    assert d.near_tie and d.position == p and d.top2_gap <= NEAR_TIE and d.token_gap <= NEAR_TIE
    assert {d.top1, d.top2} == {t, twin}


def test_greedy_check_report():
    m = random_model(scale=3)
    ref = autoregressive(m, PROMPT, 10).tokens
    assert greedy_check(m, [PROMPT], [ref], [ref]) == {"identical_to_autoregressive": True}
    other = [PROMPT[::-1]]
    ref_b = autoregressive(m, other[0], 10).tokens
    flipped = ref_b[:3] + [(ref_b[3] + 1) % 64] + ref_b[4:]
    r = greedy_check(m, [PROMPT, other[0]], [ref, flipped], [ref, ref_b])
    assert r["identical_to_autoregressive"] is False and r["runs_differing"] == 1
    fd = r["first_divergence"]
    assert fd["run"] == 1 and fd["prompt"] == 1 and fd["position"] == 3 and fd["reference_token"] == ref_b[3]
    assert fd["top2_gap"] >= 0 and "first divergence at new token 3" in r["first_divergence_text"]


def test_decode_path_greedy_equals_training_path_up_to_near_ties():
    """Greedy decoding through the training forward (another code path: SDPA, nn.Linear,
    whole sequence each step) vs our autoregressive decoding: identical except at near-ties,
    on the near-uniform model (every argmax a near-tie) and on a peaked one."""
    for m in (random_model(), random_model(seed=2, scale=3)):
        ours = autoregressive(m, PROMPT, 24).tokens
        fn = training_path_logits(m)
        seq = list(PROMPT)
        for _ in range(24):
            seq.append(int(fn(seq).argmax()))
        assert_greedy_equivalent(ours, seq[len(PROMPT):], fn, PROMPT, "training path")


def test_run_check_reports_first_divergence(monkeypatch, capsys, tmp_path):
    """`run --check` on a plan whose output differs (a decoder that flips one token stands in
    for a non-row-invariant device): the report names the position, both tokens and the gap."""
    import hispec_exec.generate as gen
    from hispec_exec.cli import main

    real = gen.decode

    def flipping(model, plan, prompt, n, **kw):
        r = real(model, plan, prompt, n, **kw)
        if len(plan.levels) > 1 and len(r.tokens) > 5:
            r.tokens[5] = (r.tokens[5] + 1) % model.args.vocab_size
        return r

    monkeypatch.setattr(gen, "decode", flipping)
    out_file = tmp_path / "r.json"
    assert main(["run", "--levels", "2,16", "--propose", "2", "--prompts", "1", "--max-new-tokens", "10",
                 "--check", "--out", str(out_file)]) == 0
    text = capsys.readouterr().out
    assert "identical_to_autoregressive False" in text and "first divergence at new token 5" in text
    out = json.loads(out_file.read_text(encoding="utf-8"))
    assert out["identical_to_autoregressive"] is False
    fd = out["first_divergence"]
    assert fd["position"] == 5 and fd["token"] != fd["reference_token"] and fd["top2_gap"] >= 0
    assert isinstance(fd["near_tie"], bool)


def test_full_model_logits_are_those_decoding_saw():
    """With the prompt but its last token prefilled (as decoding prefills it), the logits
    after every prefix equal, bit for bit, those of decoding's one-token steps."""
    m = random_model(seed=5)
    ref = autoregressive(m, PROMPT, 6).tokens
    dev = m.tok_embeddings.weight.device
    cache = m.new_cache()
    m.run(cache, 0, m.num_layers, torch.tensor(PROMPT[:-1], device=dev), prefill=True)
    logits = full_model_logits(m, len(PROMPT) - 1)
    for k, tok in enumerate([PROMPT[-1]] + ref[:5]):
        step = m.head(m.run(cache, 0, m.num_layers, torch.tensor([tok], device=dev)))[0].float().cpu()
        assert torch.equal(step, logits(PROMPT + ref[:k])), k
