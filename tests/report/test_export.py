"""`hispec-sim export --to {exec,hf,json}`."""
from __future__ import annotations

import json

import pytest

from factories import make_profile
from hispec_sim.cli import main
from hispec_sim.export import ASSISTANT_FIELDS, hf_kwargs
from hispec_sim.schema import Plan, load_plan, save_plan, save_profile

PLANS = [Plan(levels=[16]), Plan(levels=[4, 16], propose=3), Plan(levels=[2, 6, 16], propose=2, windows=[4]),
         Plan(levels=[2, 5, 9, 16], propose=2, windows=[3, 6], mode="sampling")]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def profile_file(tmp_path):
    path = tmp_path / "profile.json"
    save_profile(make_profile(layers=16), path)
    return path


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.describe())
def test_exec_round_trips_exactly(capsys, tmp_path, plan):
    src = tmp_path / "plan.json"
    save_plan(plan, src)
    out1, out2 = tmp_path / "a.json", tmp_path / "b.json"
    assert run(capsys, "export", "--plan", src, "--to", "exec", "--out", out1)[0] == 0
    assert load_plan(out1) == plan
    assert out1.read_bytes() == src.read_bytes()  # what save_plan writes, byte for byte
    assert run(capsys, "export", "--plan", out1, "--to", "exec", "--out", out2)[0] == 0
    assert out2.read_bytes() == out1.read_bytes()  # stable
    code, stdout, _ = run(capsys, "export", "--plan", src, "--to", "exec")
    assert code == 0 and stdout.encode() == src.read_bytes()


def test_exec_from_optimize_output(capsys, tmp_path, profile_file):
    code, out, err = run(capsys, "optimize", "--profile", profile_file, "--json", "--top", "2")
    assert code == 0, err
    res = tmp_path / "optimize.json"
    res.write_text(out)
    dst = tmp_path / "plan.json"
    code, _, err = run(capsys, "export", "--plan", res, "--to", "exec", "--out", dst, "--profile", profile_file)
    assert code == 0, err
    assert load_plan(dst) == Plan.model_validate(json.loads(out)["best"]["plan"])
    # the exported plan evaluates to the number optimize predicted
    code, ev, _ = run(capsys, "evaluate", "--profile", profile_file, "--plan", dst, "--json")
    assert json.loads(ev)["tokens_per_second"] == json.loads(out)["best"]["tokens_per_second"]


def test_optimize_adaptive_output_reads_back_as_its_answer(capsys, tmp_path):
    """`optimize --adaptive --json` names the plan its --out writes: the best adaptive one."""
    code, out, err = run(capsys, "optimize", "--profile", "cpu_hispec_tiny", "--adaptive", "--json",
                         "--out", tmp_path / "plan.json")
    assert code == 0, err
    (tmp_path / "optimize.json").write_text(out)
    answer = load_plan(tmp_path / "optimize.json")
    assert answer.adaptive and answer == load_plan(tmp_path / "plan.json")
    assert answer == Plan.model_validate(json.loads(out)["adaptive"]["best"]["plan"])
    code, exported, _ = run(capsys, "export", "--plan", tmp_path / "optimize.json", "--to", "exec")
    assert code == 0 and Plan.model_validate(json.loads(exported)) == answer


def test_exec_notes_batch_and_checks_profile(capsys, tmp_path, profile_file):
    src = tmp_path / "p.json"
    save_plan(Plan(levels=[4, 16], propose=2, batch=4), src)
    code, _, err = run(capsys, "export", "--plan", src, "--to", "exec", "--out", tmp_path / "o.json")
    assert code == 0 and "the plan's batch 4 is written as 1" in err  # what `hispec-exec run --plan` runs
    assert load_plan(tmp_path / "o.json") == Plan(levels=[4, 16], propose=2)
    save_plan(Plan(levels=[4, 20]), src)
    code, _, err = run(capsys, "export", "--plan", src, "--to", "exec", "--out", tmp_path / "x.json", "--profile", profile_file)
    assert code == 2 and err.startswith("hispec-sim: error: levels:") and not (tmp_path / "x.json").exists()
    # a sampling plan runs in the executor, whatever the simulator predicts (nineteenth round, M3)
    save_plan(Plan(levels=[4, 16], propose=2, mode="sampling"), src)
    for to in ("exec", "hf"):
        code, _, err = run(capsys, "export", "--plan", src, "--to", to, "--out", tmp_path / f"s_{to}.json",
                           "--profile", profile_file)
        assert code == 0, err
    assert load_plan(tmp_path / "s_exec.json").mode == "sampling"


def test_hf_kwargs():
    assert hf_kwargs(PLANS[0]) == {"do_sample": False}
    assert hf_kwargs(PLANS[1]) == {"assistant_early_exit": 4, "num_assistant_tokens": 3,
                                   "num_assistant_tokens_schedule": "constant", "assistant_confidence_threshold": 0.0,
                                   "do_sample": False}
    assert hf_kwargs(Plan(levels=[4, 16], propose=6, draft_confidence=0.3))["assistant_confidence_threshold"] == 0.3
    with pytest.raises(ValueError, match="^to: transformers cannot express a 3-level chain; use --to exec$"):
        hf_kwargs(PLANS[2])


def test_hf_kwargs_are_transformers_generation_config_fields():
    transformers = pytest.importorskip("transformers")
    kw = hf_kwargs(PLANS[1])
    cfg = transformers.GenerationConfig(**kw)
    assert cfg.assistant_early_exit == 4 and cfg.num_assistant_tokens == 3
    assert cfg.num_assistant_tokens_schedule == "constant" and cfg.do_sample is False
    assert not any(k not in cfg.to_dict() for k in kw)  # every key is a known field, none silently dropped


@pytest.mark.parametrize("plan,depth", [(PLANS[2], 3), (PLANS[3], 4)])
def test_hf_refuses_chains(capsys, tmp_path, plan, depth):
    src = tmp_path / "p.json"
    save_plan(plan, src)
    out = tmp_path / "hf.json"
    code, stdout, err = run(capsys, "export", "--plan", src, "--to", "hf", "--out", out)
    assert code == 2 and not out.exists() and stdout == ""
    assert err.strip() == f"hispec-sim: error: to: transformers cannot express a {depth}-level chain; use --to exec"


def test_hf_writes_kwargs(capsys, tmp_path):
    src = tmp_path / "p.json"
    save_plan(Plan(levels=[4, 16], propose=5), src)
    out = tmp_path / "hf.json"
    assert run(capsys, "export", "--plan", src, "--to", "hf", "--out", out)[0] == 0
    assert json.loads(out.read_text(encoding="utf-8"))["assistant_early_exit"] == 4


def test_json_with_prediction(capsys, tmp_path, profile_file):
    src = tmp_path / "p.json"
    save_plan(PLANS[2], src)
    code, out, err = run(capsys, "export", "--plan", src, "--to", "json", "--profile", profile_file)
    assert code == 0, err
    res = json.loads(out)
    assert Plan.model_validate(res["plan"]) == PLANS[2] and res["family"] == "3_level"
    code, ev, _ = run(capsys, "evaluate", "--profile", profile_file, "--plan", src, "--json")
    assert res["prediction"]["tokens_per_second"] == json.loads(ev)["tokens_per_second"]
    assert res["prediction"]["batch"] == 1
    code, out, _ = run(capsys, "export", "--plan", src, "--to", "json")
    assert code == 0 and "prediction" not in json.loads(out)


def test_json_prediction_of_an_adaptive_plan_is_evaluates(capsys, tmp_path):
    """A plan with confidence thresholds is predicted as evaluate predicts it, not as its fixed
    plan (the shipped profile has confidence statistics)."""
    src = tmp_path / "ad.json"
    save_plan(Plan(levels=[2, 16], propose=7, draft_confidence=0.3), src)
    code, out, err = run(capsys, "export", "--plan", src, "--to", "json", "--profile", "cpu_hispec_tiny")
    assert code == 0, err
    code, ev, _ = run(capsys, "evaluate", "--profile", "cpu_hispec_tiny", "--plan", src, "--json")
    got, want = json.loads(out)["prediction"], json.loads(ev)
    assert got["tokens_per_second"] == want["tokens_per_second"] != want["fixed_tokens_per_second"]


@pytest.mark.parametrize("argv,field", [(["--to", "onnx"], "to"), (["--plan", "/nonexistent.json"], "plan"),
                                        (["--out", "/nonexistent/dir/x.json"], "out")])
def test_export_bad_input(capsys, tmp_path, argv, field):
    src = tmp_path / "p.json"
    save_plan(PLANS[1], src)
    base = {"--plan": str(src), "--to": "exec"}
    extra = []
    for k, v in zip(argv[::2], argv[1::2]):
        if k in base:
            base[k] = v
        else:
            extra += [k, v]
    code, _, err = run(capsys, "export", *sum(([k, v] for k, v in base.items()), []), *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1 and field in err


def test_hf_kwargs_run_in_transformers_and_match_greedy(monkeypatch):
    """The exported kwargs drive transformers' early-exit assistant on a tiny random Llama;
    greedy output equals plain greedy decoding, and the early-exit drafter really ran."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.generation import candidate_generator as cg

    calls = []
    orig = cg.EarlyExitCandidateGenerator.get_candidates

    def counting(self, *a, **k):
        calls.append(self.assistant_early_exit)
        return orig(self, *a, **k)

    monkeypatch.setattr(cg.EarlyExitCandidateGenerator, "get_candidates", counting)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    ref = model.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False)
    out = model.generate(ids, max_new_tokens=16, min_new_tokens=16, **hf_kwargs(Plan(levels=[2, 4], propose=3)))
    # transformers' assisted and plain greedy run different shapes (kernels): identical except
    # at a near-tie of the full model's logits (tie-aware check, hispec_exec.check)
    from hispec_exec.check import divergence

    def logits(prefix):
        with torch.no_grad():
            return model(torch.tensor([prefix])).logits[0, -1]

    d = divergence(logits, ids[0].tolist(), out[0, 5:].tolist(), ref[0, 5:].tolist())
    assert d is None or d.near_tie, d.describe()
    assert calls and set(calls) == {2}


@pytest.mark.parametrize("plan", [Plan(levels=[2, 4], propose=3), Plan(levels=[2, 4], propose=5, draft_confidence=0.99)],
                         ids=Plan.describe)
def test_hf_threshold_and_propose_reach_the_early_exit_assistant(monkeypatch, plan):
    """Set on model.generation_config as the export note says, transformers' early-exit
    assistant drafts `propose` tokens and stops at the plan's threshold (none for a fixed plan)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.generation import candidate_generator as cg, stopping_criteria as stc

    seen, drafted = [], []
    orig_stop = stc.ConfidenceCriteria.__call__
    orig_cand = cg.EarlyExitCandidateGenerator.get_candidates

    def stop(self, input_ids, scores, **k):
        seen.append(self.assistant_confidence_threshold)
        return orig_stop(self, input_ids, scores, **k)

    def cand(self, input_ids, *a, **k):
        out = orig_cand(self, input_ids, *a, **k)
        drafted.append(out[0].shape[1] - input_ids.shape[1])
        return out

    monkeypatch.setattr(stc.ConfidenceCriteria, "__call__", stop)
    monkeypatch.setattr(cg.EarlyExitCandidateGenerator, "get_candidates", cand)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = transformers.LlamaForCausalLM(cfg).eval()
    kw = hf_kwargs(plan)
    model.generation_config.update(**{k: kw[k] for k in ASSISTANT_FIELDS})
    model.generation_config.eos_token_id = None  # no early stop, and no min_new_tokens (it overrides the threshold)
    model.generate(torch.tensor([[1, 5, 9, 3, 7]]), max_new_tokens=16, **kw)
    if plan.draft_confidence:  # a random model is never 99 % sure: one draft per round
        assert set(seen) == {0.99} and max(drafted) == 1, drafted
    else:
        assert seen == [] and max(drafted) == plan.propose
