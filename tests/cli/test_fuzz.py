"""Table-driven fuzz suite: bad and hostile input to every subcommand of both programs.

Every case must end with exit status 2 (130 for an interrupt), exactly ONE stderr line
`<prog>: error: ...` naming the field (and, where the case gives it, the allowed values),
no traceback, nothing on stdout, and the work folder, the inputs in it, the study
database and the shipped checkpoint byte-for-byte unchanged (nothing written, no empty
folder left). Cases run in-process through `main(argv)`; the few real-signal cases run
as subprocesses that send themselves SIGINT at a fixed point of the work (deterministic).
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from factories import make_profile
from hispec_exec.checkpoint import DEFAULT_CHECKPOINT
from hispec_sim.schema import save_plan, save_profile, Plan

REPO = Path(__file__).resolve().parents[2]
DEEP = 200_000

# --------------------------------------------------------------------------- inputs

LAYER_OPS = ("input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj", "post_attention_layernorm",
             "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")


def _mlp_csv(cells: dict | None = None) -> str:
    """A small Vidur-format mlp.csv (tp 1 and 2, 1..64 tokens); `cells` overrides the
    first row's cells."""
    cols = [f"time_stats.{op}.median" for op in LAYER_OPS] + [
        "num_tokens", "num_tensor_parallel_workers", "n_embd", "n_head", "n_kv_head", "n_expanded_embd", "vocab_size"]
    rows = []
    for tp in (1, 2):
        for t in (1, 2, 4, 8, 16, 32, 64):
            r = {c: f"{0.01 * (1 + t / 4) / tp:.5f}" for c in cols[:len(LAYER_OPS)]}  # compute-bound at 64
            r.update(num_tokens=str(t), num_tensor_parallel_workers=str(tp), n_embd="4096", n_head="32",
                     n_kv_head="32", n_expanded_embd="11008", vocab_size="32000")
            rows.append(r)
    rows[0].update(cells or {})
    return "\n".join([",".join(cols)] + [",".join(r[c] for c in cols) for r in rows]) + "\n"


def _all_reduce_csv(cells: dict | None = None) -> str:
    cols = ["time_stats.all_reduce.median", "num_workers", "size", "devices_per_node"]
    rows = [{"time_stats.all_reduce.median": f"{0.01 + s / 1e9:.5f}", "num_workers": "2", "size": str(s),
             "devices_per_node": "2"} for s in (2048, 65536, 1 << 20, 1 << 24)]
    rows[0].update(cells or {})
    return "\n".join([",".join(cols)] + [",".join(r[c] for c in cols) for r in rows]) + "\n"


def _vidur(root: Path, mlp: dict | None = None, net: dict | None = None, raw_mlp: bytes | None = None) -> str:
    m = root / "compute" / "a100" / "meta-llama" / "Llama-2-7b-hf"
    m.mkdir(parents=True)
    (m / "mlp.csv").write_bytes(raw_mlp if raw_mlp is not None else _mlp_csv(mlp).encode())
    n = root / "network" / "a100_pairwise_nvlink"
    n.mkdir(parents=True)
    (n / "all_reduce.csv").write_text(_all_reduce_csv(net))
    return str(root)


HF_OK = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 256, "hidden_size": 64,
         "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
         "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 256, "tie_word_embeddings": True}


def _hf(root: Path, name: str, **over) -> str:
    d = root / name
    d.mkdir()
    cfg = {**HF_OK, **over}
    (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not DROP}))
    return str(d)


DROP = object()


def _ours(root: Path, name: str, **over) -> str:
    d = root / name
    d.mkdir()
    cfg = json.loads((DEFAULT_CHECKPOINT / "config.json").read_text(encoding="utf-8"))
    cfg.update(over)
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model.safetensors").symlink_to(DEFAULT_CHECKPOINT / "model.safetensors")
    return str(d)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The inputs of every case, built once: {NAME} in a case's argv is the path of NAME."""
    w = tmp_path_factory.mktemp("fuzz")
    f = {"W": str(w)}

    def put(name, text, mode="w"):
        p = w / name
        p.write_bytes(text) if isinstance(text, bytes) else p.write_text(text)
        f[name.split(".")[0].upper()] = str(p)
        return p

    prof = make_profile(layers=16)
    save_profile(prof, w / "p.json")
    f["P"] = str(w / "p.json")
    good = json.loads((w / "p.json").read_text(encoding="utf-8"))
    save_plan(Plan(levels=[2, 4, 16], propose=2, windows=[4]), w / "plan.json")
    f["PLAN"] = str(w / "plan.json")
    save_plan(Plan(levels=[10, 20, 80], propose=2, windows=[4]), w / "plan80.json")
    f["PLAN80"] = str(w / "plan80.json")
    put("deep.json", "[" * DEEP + "]" * DEEP)
    put("deepobj.json", '{"a":' * 40 + "1" + "}" * 40)
    put("list.json", "[1, 2]")
    put("num.json", "5")
    put("null.json", "null")
    put("boolplan.json", '{"levels": [2, 16], "propose": true}')
    put("empty.json", "")
    put("nonutf8.json", b'{"levels": [2, 16], "x": "\xff\xfe"}')
    put("malformed.json", "{not json")
    put("nanplan.json", '{"levels": [2, 16], "propose": NaN}')
    put("hugeint.json", '{"levels": [2, ' + "9" * 5000 + "]}")
    put("bigplan.json", json.dumps({"levels": [2, 4, 16], "propose": 2, "windows": [4], "batch": 10 ** 9}))
    put("extra.json", json.dumps({"levels": [2, 16], "propose": 2, "evil": 1}))
    put("levels0.json", json.dumps({"levels": [0, 16]}))
    put("levelsstr.json", json.dumps({"levels": "2,16"}))
    put("propose_big.json", json.dumps({"levels": [2, 16], "propose": 10 ** 6}))
    put("manylevels.json", json.dumps({"levels": list(range(1, 41)), "windows": [1] * 38}))

    def prof_variant(name, edit):
        d = json.loads(json.dumps(good))
        edit(d)
        put(name, json.dumps(d))

    put("infprof.json", json.dumps(good).replace('"overhead_ms": 0.3', '"overhead_ms": Infinity'))
    assert "Infinity" in (w / "infprof.json").read_text(encoding="utf-8")
    put("nanprof.json", json.dumps(good).replace('"overhead_ms": 0.3', '"overhead_ms": NaN'))
    put("e999prof.json", json.dumps(good).replace('"overhead_ms": 0.3', '"overhead_ms": 1e999'))
    prof_variant("bigms.json", lambda d: d["latency"][0]["layer_ms"][0].__setitem__(0, 1e308))
    prof_variant("bigover.json", lambda d: d["latency"][0].__setitem__("overhead_ms", 1e300))
    prof_variant("negms.json", lambda d: d["latency"][0]["head_ms"].__setitem__(0, -1))
    prof_variant("v999.json", lambda d: d.__setitem__("schema_version", 999))
    # a spread's request weights: all 0 (a NaN deep in numpy), negative
    prof_variant("paper80.json", lambda d: d.__setitem__("paper_default", {"levels": [10, 20, 80], "propose": 2,
                                                                          "windows": [4]}))
    prof_variant("hugehbm.json", lambda d: d["hardware"].__setitem__("hbm_gb", 1e308))
    for name, weights in (("zeroweights.json", [0.0, 0.0]), ("negweights.json", [2.0, -1.0]),
                          ("hugeweights.json", [1e308, 1e308])):
        prof_variant(name, lambda d, w=weights: d["workloads"]["w"].__setitem__("spread", {
            "family": "empirical", "per_request": [d["workloads"]["w"]["agreement"]] * 2, "weights": w,
            "source": d["workloads"]["w"]["source"]}))
    put("boolval.json", json.dumps({"profile": "test", "plans": [{"predicted_tokens_per_second": True,
                                                                  "measured_tokens_per_second": 5.0}]}))
    put("otherval.json", json.dumps({"profile": "another", "plans": [{"plan": {"levels": [16]}, "predicted_tokens_per_second": 4.0,
                                                                     "measured_tokens_per_second": 5.0}]}))
    prof_variant("negts.json", lambda d: d["workloads"]["w"].update(traces=[[0] * 16] * 4, trace_starts=[-3, 0]))
    prof_variant("bigts.json", lambda d: d["workloads"]["w"].update(traces=[[0] * 16] * 4, trace_starts=[0, 99]))
    prof_variant("negtrace.json", lambda d: d["workloads"]["w"].update(traces=[[-1] * 16] * 4, trace_starts=[0]))
    prof_variant("layers0.json", lambda d: d["model"].__setitem__("num_layers", 0))
    prof_variant("layersbig.json", lambda d: d["model"].__setitem__("num_layers", 10 ** 7))
    prof_variant("ctxbig.json", lambda d: d["workloads"]["w"].__setitem__("context", 10 ** 30))
    prof_variant("deftp3.json", lambda d: d.__setitem__("default_tp", 3))
    con = sqlite3.connect(w / "other.db")
    con.execute("CREATE TABLE users (id INTEGER)")
    con.commit()
    con.close()
    f["OTHERDB"] = str(w / "other.db")
    prof_variant("ctxover.json", lambda d: (d["model"].__setitem__("max_context", 64),
                                            d["workloads"]["w"].__setitem__("context", 65)))
    prof_variant("agree2.json", lambda d: d["workloads"]["w"]["agreement"][0].__setitem__(1, 2.0))
    prof_variant("nows.json", lambda d: d.__setitem__("workloads", {}))
    prof_variant("badtp.json", lambda d: d["latency"][0].__setitem__("tp", -2))
    prof_variant("strms.json", lambda d: d["latency"][0]["layer_ms"][0].__setitem__(0, "fast"))
    prof_variant("deepprov.json", lambda d: d.__setitem__("provenance", {"x": json.loads('{"a":' * 40 + "1" + "}" * 40)}))
    big = w / "big.json"  # 200 MiB, sparse: no disk, no time
    with open(big, "w") as fh:
        fh.write("{")
        fh.truncate(200 << 20)
    f["BIG"] = str(big)
    (w / "adir").mkdir()
    f["ADIR"] = str(w / "adir")
    (w / "ro").mkdir()
    (w / "ro" / "keep").write_text("x")
    os.chmod(w / "ro", 0o555)
    f["RO"] = "/proc" if os.geteuid() == 0 else str(w / "ro")  # root writes anywhere but in /proc
    # a study database that must survive every case: Optuna's tables, and one of ours
    db = w / "study.db"
    from optuna.storages import RDBStorage

    RDBStorage(f"sqlite:///{db}").engine.dispose()
    con = sqlite3.connect(db)
    con.execute("create table keep (x)")
    con.commit()
    con.close()
    f["DB"] = str(db)
    # Vidur folders
    vd = w / "vidur"
    vd.mkdir()
    for name, kw in {"ok": {}, "inftp": {"mlp": {"num_tensor_parallel_workers": "inf"}},
                     "nanembd": {"mlp": {"n_embd": "nan"}}, "infembd": {"mlp": {"n_embd": "inf"}},
                     "strtok": {"mlp": {"num_tokens": "many"}}, "fractok": {"mlp": {"num_tokens": "2.5"}},
                     "infop": {"mlp": {"time_stats.mlp_up_proj.median": "inf"}},
                     "strop": {"mlp": {"time_stats.attn_rope.median": "fast"}},
                     "negop": {"mlp": {"time_stats.add.median": "-1"}},
                     "zeroops": {"mlp": {f"time_stats.{op}.median": "1e-300" for op in LAYER_OPS}},
                     "hugeop": {"mlp": {"time_stats.mlp_up_proj.median": "1e6"}},
                     "hugenet": {"net": {"time_stats.all_reduce.median": "1e300"}},
                     "hugetp": {"mlp": {"num_tensor_parallel_workers": "1e300"}},
                     "infworkers": {"net": {"num_workers": "inf"}}, "strsize": {"net": {"size": "big"}},
                     "infnet": {"net": {"time_stats.all_reduce.median": "inf"}},
                     "nonutf8": {"raw_mlp": b"\xff\xfe\x00garbage"}, "empty": {"raw_mlp": b""},
                     # round 19: no one-token row (a decode step priced as the first row's forward); a short row
                     "no1tok": {"raw_mlp": "".join(ln + "\n" for ln in _mlp_csv().splitlines()
                                                    if ",1,1," not in ln and ",1,2," not in ln).encode()},
                     "truncrow": {"raw_mlp": (_mlp_csv().rstrip("\n").rsplit(",", 3)[0] + "\n").encode()},
                     "nocols": {"raw_mlp": b"a,b,c\n1,2,3\n"},
                     "nul": {"raw_mlp": _mlp_csv().encode().replace(b"0.01", b"0\x00.01", 1)},
                     "shortrow": {"raw_mlp": _mlp_csv().encode().replace(b"\n", b"\n1,2\n", 1)},
                     "novocab": {"raw_mlp": "\n".join(",".join(line.split(",")[:-1]) for line in
                                                        _mlp_csv().splitlines()).encode() + b"\n"},
                     "othershape": {"raw_mlp": (_mlp_csv() + _mlp_csv().splitlines()[-1].replace(
                         "4096,32,32,11008", "8192,64,8,28672") + "\n").encode()},
                     "conflict": {"raw_mlp": (_mlp_csv() + _mlp_csv().splitlines()[1].replace("0.01250", "5.0")
                                              + "\n").encode()}}.items():
        f["V_" + name.upper()] = _vidur(vd / name, **kw)
    # Hugging Face and our checkpoint folders with hostile configs
    hd = w / "models"
    hd.mkdir()
    hf = {"theta_str": dict(rope_theta="abc"), "scaling_int": dict(rope_scaling=5),
          "scaling_nofactor": dict(rope_scaling={"rope_type": "llama3"}),
          "scaling_strfactor": dict(rope_scaling={"rope_type": "llama3", "factor": "x", "original_max_position_embeddings": 8192}),
          "scaling_kind": dict(rope_scaling={"rope_type": "yarn", "factor": 2}),
          "eps_str": dict(rms_norm_eps="x"), "eps_neg": dict(rms_norm_eps=-1), "dims_huge": dict(hidden_size=10 ** 6,
                                                                                                 intermediate_size=10 ** 6),
          "layers_huge": dict(num_hidden_layers=10 ** 6),
          "mem_huge": dict(hidden_size=65536, intermediate_size=262144, num_hidden_layers=1024, num_attention_heads=512,
                           num_key_value_heads=512), "layers_str": dict(num_hidden_layers="16"),
          "vocab_neg": dict(vocab_size=-1), "vocab_float": dict(vocab_size=256.5), "heads_zero": dict(num_attention_heads=0),
          "headdim_bad": dict(head_dim=7), "kv_bad": dict(num_key_value_heads=3), "tie_str": dict(tie_word_embeddings="yes"),
          "ctx_huge": dict(max_position_embeddings=10 ** 12), "arch_str": dict(architectures="Llama"),
          "type_gpt2": dict(model_type="gpt2", architectures=["GPT2LMHeadModel"]), "act_gelu": dict(hidden_act="gelu"),
          "bias": dict(attention_bias=True), "novocab": dict(vocab_size=DROP), "theta_inf": dict(rope_theta=1e309),
          # sixteenth round: another architecture, or values a reader would replace silently
          "type_qwen2": dict(model_type="qwen2", architectures=["Qwen2ForCausalLM"]), "window": dict(sliding_window=4),
          "ctx_zero": dict(max_position_embeddings=0), "headdim_zero": dict(head_dim=0),
          "kv_zero": dict(num_key_value_heads=0), "ropeparams_list": dict(rope_parameters=[]),
          "scaling_noorig": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}),
          # seventeenth: Mistral applies its window whatever use_sliding_window says (only Qwen2 reads it)
          "window_unused": dict(sliding_window=4, use_sliding_window=False), "window_float": dict(sliding_window=4096.0)}
    for name, over in hf.items():
        f["HF_" + name.upper()] = _hf(hd, "hf_" + name, **over)
    ours = {"theta_str": dict(rope_theta="abc"), "eps_str": dict(norm_eps="x"), "dim_huge": dict(dim=10 ** 6),
            "layers0": dict(n_layers=0), "scaling_int": dict(rope_scaling=5), "unknown": dict(colour="blue"),
            "oddhead": dict(dim=162, n_heads=2, n_kv_heads=2)}
    for name, over in ours.items():
        f["M_" + name.upper()] = _ours(hd, "m_" + name, **over)
    d = hd / "listcfg"
    d.mkdir()
    (d / "config.json").write_text("[1, 2, 3]")
    f["M_LISTCFG"] = str(d)
    d = hd / "deepcfg"
    d.mkdir()
    (d / "config.json").write_text("[" * DEEP + "]" * DEEP)
    f["M_DEEPCFG"] = str(d)
    d = hd / "nonutf8cfg"
    d.mkdir()
    (d / "config.json").write_bytes(b"\xff{}")
    f["M_NONUTF8CFG"] = str(d)
    # the fuzz audit of 2026-11-30: a link loop as --out, a pipe as --trace, a plan and a
    # profile typed loosely, a key given twice, a name over two lines, a trace to refuse flags on
    os.symlink("loop.json", w / "loop.json")
    f["LOOP"] = str(w / "loop.json")
    os.mkfifo(w / "fifo")
    f["FIFO"] = str(w / "fifo")
    # special files inside a model folder (they hung the readers, deaf to an interrupt), a shard outside it
    f["M_FIFOWEIGHTS"] = _ours(hd, "m_fifoweights")
    (hd / "m_fifoweights" / "model.safetensors").unlink()
    os.mkfifo(hd / "m_fifoweights" / "model.safetensors")
    f["M_FIFOTOK"] = _ours(hd, "m_fifotok")
    os.mkfifo(hd / "m_fifotok" / "tokenizer.json")
    f["M_ZEROTOK"] = _ours(hd, "m_zerotok")
    os.symlink("/dev/zero", hd / "m_zerotok" / "tokenizer.json")
    f["HF_OUTSIDESHARD"] = _hf(hd, "hf_outsideshard")
    (hd / "hf_outsideshard" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.embed_tokens.weight": "../m_fifotok/model.safetensors"}}))
    f["CK"] = str(DEFAULT_CHECKPOINT)
    put("trace.jsonl", '{"arrival_s": 0.0, "prompt_tokens": 16, "max_new_tokens": 8}\n')
    put("bigprompt.jsonl", json.dumps({"arrival_s": 0.0, "prompt": "x" * 1_000_001, "max_new_tokens": 8}) + "\n")
    put("longtrace.jsonl", '{"arrival_s": 0.0, "prompt_tokens": 16, "max_new_tokens": 8}\n'
        '{"arrival_s": 1.0, "prompt_tokens": 500, "max_new_tokens": 20}\n')
    put("id256trace.jsonl", '{"arrival_s": 0.0, "prompt_tokens": [1, 256], "max_new_tokens": 1}\n')
    put("hugeidtrace.jsonl", '{"arrival_s": 0.0, "prompt_tokens": [99999999999999999999], "max_new_tokens": 1}\n')
    put("strtrace.jsonl", '{"arrival_s": 0.0, "prompt_tokens": "16", "max_new_tokens": 8}\n')
    put("prompts.txt", "def f(x):\n")
    put("blanktrace.jsonl", '{"arrival_s": 0.0, "prompt": " \\t ", "max_new_tokens": 4}\n')
    put("surrogatetrace.jsonl", '{"arrival_s": 0.0, "prompt": "a\\ud800b", "max_new_tokens": 4}\n')
    put("textllamatrace.jsonl", '{"arrival_s": 0.0, "prompt": "def f(x):", "max_new_tokens": 4}\n')
    put("strpropose.json", '{"levels": [2, 16], "propose": "2"}')
    put("floatlevels.json", '{"levels": [2.0, 16]}')
    put("dupkey.json", '{"levels": [2, 16], "propose": 2, "propose": 3}')
    prof_variant("strlayers.json", lambda d: d["model"].__setitem__("num_layers", "16"))
    prof_variant("nlname.json", lambda d: d.__setitem__("name", "two\nlines"))
    prof_variant("zwspname.json", lambda d: d.__setitem__("name", "cpu_hispec\u200btiny\ufeff"))
    prof_variant("rlodesc.json", lambda d: d.__setitem__("description", "cost \u202e$0.01 per M\u202c tokens"))
    put("nolevels.json", '{"propose": 2}')
    prof_variant("nomodelname.json", lambda d: d["model"].pop("name"))
    prof_variant("dotkey.json", lambda d: d["workloads"].__setitem__("w.1", {**d["workloads"][d["default_workload"]],
                                                                           "context": -1}))
    put("oscplan.json", '{"levels": [4, 16], "x\\u001b]0;PWNED\\u0007": 1}')
    put("bracketplan.json", '{"levels": [4, 16], "levels[0]": 1}')
    # the second round: a profile with no exit to draft from, free layers, an overflowing token
    from hispec_sim.synthetic import synthetic_profile

    save_profile(synthetic_profile(1, 1.0, 0.5), w / "onelayer.json")
    f["ONELAYER"] = str(w / "onelayer.json")
    prof_variant("zeroms.json", lambda d: d["latency"][0].__setitem__(
        "layer_ms", [[0.0] * len(r) for r in d["latency"][0]["layer_ms"]]))
    prof_variant("hugetoken.json", lambda d: d["workloads"]["w"].update(traces=[[10 ** 30] * 16] * 4, trace_starts=[0]))
    put("surrogate.jsonl", '{"prompt": "\\ud800"}\n')
    f["HF_VOCAB97"] = _hf(hd, "hf_vocab97", vocab_size=97)
    f["HF_TOK"] = _hf(hd, "hf_tok")
    (hd / "hf_tok" / "tokenizer.json").write_text("{}")
    # the third round: a working set that saves more than a layer takes, or lies past the last
    # layer; a workload's fit record the audit reads, malformed
    prof_variant("negws.json", lambda d: d["latency"][0].update(working_set_layers=[1, 4], working_set_ms=[-1e6, -1e6]))
    prof_variant("deepws.json", lambda d: d["latency"][0].update(working_set_layers=[1, 400], working_set_ms=[-0.1, 0.0]))
    # the fifth round: a per-layer credit (a table timed slower than the decode loop) beyond a layer, alone or
    # with a working set; a negative row overhead
    prof_variant("neglayer.json", lambda d: d["latency"][0].update(layer_overhead_ms=-1e6))
    prof_variant("neglayerws.json", lambda d: d["latency"][0].update(
        layer_overhead_ms=-0.5 * min(min(r) for r in d["latency"][0]["layer_ms"]), working_set_layers=[1, 4],
        working_set_ms=[-0.6 * min(min(r) for r in d["latency"][0]["layer_ms"]), 0.0]))
    prof_variant("negrows.json", lambda d: d["latency"][0].update(row_overhead_ms=-0.01))
    # the sixth round: contradictory fields that used to be ignored -- a spread's parameters of the other
    # family, trace rows before the first prompt's start
    prof_variant("empsigma.json", lambda d: d["workloads"]["w"].__setitem__("spread", {
        "family": "empirical", "sigma": 0.4, "per_request": [d["workloads"]["w"]["agreement"]],
        "source": d["workloads"]["w"]["source"]}))
    prof_variant("lnrequests.json", lambda d: d["workloads"]["w"].__setitem__("spread", {
        "family": "logit_normal", "sigma": 0.4, "per_request": [d["workloads"]["w"]["agreement"]],
        "source": d["workloads"]["w"]["source"]}))
    prof_variant("ts1.json", lambda d: d["workloads"]["w"].update(traces=[[0] * 16] * 4, trace_starts=[1, 2]))
    # the sixth round's: names that break a line, an agreement matrix that is not one, a batch plan for validate
    prof_variant("wlesc.json", lambda d: (d["workloads"].__setitem__("x\x1b[31m\ny", d["workloads"].pop("w")),
                                          d.__setitem__("default_workload", "x\x1b[31m\ny")))
    prof_variant("stacknl.json", lambda d: (d["latency"][0].__setitem__("stack", "s\nt"),
                                            d.__setitem__("default_stack", "s\nt")))
    prof_variant("asym.json", lambda d: d["workloads"]["w"]["agreement"][0].__setitem__(
        1, d["workloads"]["w"]["agreement"][1][0] / 2))
    prof_variant("diag.json", lambda d: d["workloads"]["w"]["agreement"][0].__setitem__(0, 0.5))
    prof_variant("twotables.json", lambda d: d["latency"].append(dict(d["latency"][0])))
    prof_variant("seedneg.json", lambda d: d["provenance"].__setitem__("prompts", {"n": 4, "seed": -1}))
    # the twenty-second round's D2: a model with a tokenizer and a vocabulary of at most 256 reads no bytes
    prof_variant("tokentext.json", lambda d: d["model"].__setitem__("text", "tokenizer"))
    put("batchplan.json", json.dumps({"levels": [2, 16], "propose": 4, "batch": 8, "batching": "synchronous"}))
    fit = {"family": "F(e) = sigmoid(m + c*logit(e/L))", "num_layers": 16, "params": {"m": 1.0, "c": 1.0},
           "points": [{"workload": "w", "kind": "per_draft", "value": 0.5, "source": "x",
                       "config": {"levels": [4, 16], "propose": 2, "windows": [], "level": 2}}]}
    for name, edit in (("fitvalue", lambda q: q["points"][0].__setitem__("value", "high")),
                       ("fitparams", lambda q: q.__setitem__("params", {"m": 1.0})),
                       ("fitlevel", lambda q: q["points"][0]["config"].__setitem__("level", 3)),
                       ("fitexit", lambda q: q["points"][0].update(kind="final", exit=99)),
                       ("fitlayers", lambda q: q.update(num_layers=1024))):
        prof_variant(name + ".json", lambda d, e=edit: (d["workloads"]["w"].__setitem__("fit", json.loads(json.dumps(fit))),
                                                        e(d["workloads"]["w"]["fit"])))
    # the fourth round: a key twice in a trace line, Monte-Carlo flags on an adaptive plan
    put("duptrace.jsonl", '{"arrival_s": 0, "arrival_s": 1, "prompt_tokens": 8, "max_new_tokens": 4}\n')
    put("hugeval.json", json.dumps({"profile": "test", "plans": [{"predicted_tokens_per_second": 1e308,
                                                                  "measured_tokens_per_second": 1e-300}]}))
    put("negmedval.json", json.dumps({"profile": "test", "median_abs_relative_error": -5, "plans": [
        {"plan": {"levels": [16]}, "predicted_tokens_per_second": 5.0, "measured_tokens_per_second": 5.0}]}))
    ok_row = {"plan": {"levels": [16]}, "predicted_tokens_per_second": 5.0, "measured_tokens_per_second": 5.0}
    for name, edit in (("emptyplansval", lambda d: d.update(plans=[])),
                       ("deepplanval", lambda d: d["plans"][0]["plan"].update(levels=[2, 99])),
                       ("noplanval", lambda d: d["plans"][0].pop("plan")),
                       ("otherwlval", lambda d: d.update(workload="nope")),
                       ("batchval", lambda d: d.update(batch=64))):
        d = {"profile": "test", "plans": [json.loads(json.dumps(ok_row))]}
        edit(d)
        put(f"{name}.json", json.dumps(d))
    put("adplan.json", json.dumps({"levels": [2, 8, 16], "propose": 4, "windows": [4], "draft_confidence": 0.5}))
    put("bestandplan.json", json.dumps({"best": {"plan": {"levels": [4, 16]}}, "plan": {"levels": [8, 16]}}))
    put("adnullbest.json", json.dumps({"adaptive": {"best": None}, "best": {"plan": {"levels": [4, 16]}}}))
    put("adlistbest.json", json.dumps({"adaptive": {"best": [1]}}))
    put("adandplan.json", json.dumps({"adaptive": {"best": {"plan": {"levels": [4, 16]}}}, "plan": {"levels": [8, 16]}}))
    # the seventh round: a sampling plan for the simulator, thresholds for a chain without
    # intermediate levels, a C1 control in a name, confidence shares that are no distribution,
    # weights that are not numbers
    put("samplingplan.json", json.dumps({"levels": [2, 16], "propose": 3, "mode": "sampling"}))
    put("esc0.json", json.dumps({"levels": [2, 16], "propose": 3, "escalate_confidence": []}))
    prof_variant("c1name.json", lambda d: d.__setitem__("name", "x\u009b31mred"))
    tiny = json.loads((Path(__file__).resolve().parents[2] / "profiles" / "cpu_hispec_tiny.json").read_text(encoding="utf-8"))
    tiny["workloads"]["heldout"]["confidence"]["share"][0][0] += 0.5
    put("sharesum.json", json.dumps(tiny))
    import torch
    from safetensors.torch import load_file, save_file

    nan = hd / "m_nanweights"
    nan.mkdir()
    (nan / "config.json").write_text((DEFAULT_CHECKPOINT / "config.json").read_text(encoding="utf-8"))
    sd = load_file(str(DEFAULT_CHECKPOINT / "model.safetensors"))
    sd["layers.0.w13.weight"][0, 0] = float("nan")
    save_file(sd, str(nan / "model.safetensors"))
    f["M_NANWEIGHTS"] = str(nan)
    for name, dtype in (("m_intweights", torch.int32), ("m_boolweights", torch.bool)):
        d = hd / name
        d.mkdir()
        (d / "config.json").write_text((DEFAULT_CHECKPOINT / "config.json").read_text(encoding="utf-8"))
        save_file({k: v.to(dtype) for k, v in sd.items()}, str(d / "model.safetensors"))
        f[name.upper()] = str(d)
    f["HF_ROPECONFLICT"] = _hf(hd, "hf_ropeconflict", rope_parameters={"rope_theta": 1.0, "rope_type": "default"})
    zero = json.loads(json.dumps(tiny))
    sv = zero["latency"][0]["serving"]
    sv["layer_ms"] = [[0.0] * len(r) for r in sv["layer_ms"]]
    put("zeroserving.json", json.dumps(zero))
    for name, wm in (("hf_maplist", ["a"]), ("hf_mapnull", None)):
        f[name.upper()] = _hf(hd, name)
        (hd / name / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    f["_w"] = w
    yield f
    os.chmod(w / "ro", 0o755)


# --------------------------------------------------------------------------- the table
# (class, program, argv, substrings the one stderr line must contain)

S, E = "sim", "exec"
CASES = [
    # -- deep nesting (200k) in every JSON input
    ("nesting", S, "evaluate --profile {DEEP}", ["profile", "nested more than 32"]),
    ("nesting", S, "evaluate --profile {P} --plan {DEEP}", ["plan", "nested more than 32"]),
    ("nesting", S, "optimize --profile {DEEP}", ["profile", "nested"]),
    ("nesting", S, "report --profile {DEEP} --out {W}/r.html", ["profile", "nested"]),
    ("nesting", S, "report --profile {P} --validation {DEEP} --out {W}/r.html", ["validation", "nested"]),
    ("nesting", S, "export --plan {DEEP} --to exec", ["plan", "nested"]),
    ("nesting", S, "export --plan {PLAN} --to json --profile {DEEP}", ["profile", "nested"]),
    ("nesting", S, "validate --profile {DEEP}", ["profile", "nested"]),
    ("nesting", S, "validate --profile {P} --plan {DEEP}", ["plan", "nested"]),
    ("nesting", S, "profile import-vidur {V_OK} --layers 32 --acceptance-from {DEEP} --out {W}/v.json", ["profile", "nested"]),
    ("nesting", E, "run --plan {DEEP}", ["plan", "nested"]),
    ("nesting", E, "generate --prompt x --plan {DEEP}", ["plan", "nested"]),
    ("nesting", E, "info --model {M_DEEPCFG}", ["model", "nested"]),
    ("nesting", E, "run --model {M_DEEPCFG}", ["model", "nested"]),
    ("nesting", S, "evaluate --profile {DEEPOBJ}", ["profile", "nested"]),
    ("nesting", S, "evaluate --profile {DEEPPROV}", ["profile", "nested"]),
    ("nesting", S, "evaluate --profile {P} --plan {DEEPOBJ}", ["plan", "nested"]),
    # -- non-finite and out-of-range numbers in profiles
    ("profile-numbers", S, "evaluate --profile {INFPROF} --levels 2,16", ["profile", "Infinity"]),
    ("profile-numbers", S, "optimize --profile {INFPROF}", ["profile", "Infinity"]),
    ("profile-numbers", S, "report --profile {INFPROF} --out {W}/r.html", ["profile", "Infinity"]),
    ("profile-numbers", S, "evaluate --profile {NANPROF} --levels 2,16", ["profile", "NaN"]),
    ("profile-numbers", S, "optimize --profile {E999PROF}", ["profile", "finite"]),
    ("profile-numbers", S, "evaluate --profile {BIGMS} --levels 2,16", ["latency", "layer_ms", "1e+06"]),
    ("profile-numbers", S, "optimize --profile {BIGMS}", ["layer_ms", "[1e-06, 1e+06]"]),
    ("profile-numbers", S, "report --profile {BIGMS} --out {W}/r.html", ["layer_ms"]),
    ("profile-numbers", S, "optimize --profile {BIGOVER}", ["overhead_ms", "1000000"]),
    ("profile-numbers", S, "optimize --profile {NEGMS}", ["head_ms"]),
    ("profile-numbers", S, "optimize --profile {LAYERS0}", ["model.num_layers", "1"]),
    ("profile-numbers", S, "optimize --profile {LAYERSBIG}", ["model.num_layers", "1024"]),
    ("profile-numbers", S, "optimize --profile {CTXBIG}", ["context"]),
    ("profile-numbers", S, "optimize --profile {AGREE2}", ["agreement", "[0, 1]"]),
    ("profile-numbers", S, "optimize --profile {NOWS}", ["workloads"]),
    ("profile-numbers", S, "optimize --profile {BADTP}", ["latency.0.tp", "1"]),
    ("profile-numbers", S, "optimize --profile {STRMS}", ["layer_ms"]),
    ("profile-numbers", S, "export --plan {PLAN} --to json --profile {BIGMS}", ["layer_ms"]),
    ("profile-numbers", S, "validate --profile {INFPROF}", ["profile", "Infinity"]),
    # -- schema version, traces
    ("schema", S, "optimize --profile {V999}", ["schema_version", "1"]),
    ("schema", S, "evaluate --profile {V999} --levels 2,16", ["schema_version"]),
    ("schema", S, "report --profile {V999} --out {W}/r.html", ["schema_version"]),
    ("schema", S, "export --plan {PLAN} --to exec --profile {V999}", ["schema_version"]),
    ("schema", S, "validate --profile {V999}", ["schema_version"]),
    ("schema", S, "optimize --profile {NEGTS}", ["trace_starts", "[0, 3]"]),
    ("schema", S, "evaluate --profile {BIGTS} --levels 2,16 --replay", ["trace_starts"]),
    ("schema", S, "optimize --profile {NEGTRACE}", ["traces", ">= 0"]),
    ("schema", S, "evaluate --profile {P} --plan {EXTRA}", ["evil", "unknown field"]),
    # -- non-object JSON, non-UTF-8, malformed, special files, size
    ("json-shape", S, "evaluate --profile {LIST}", ["profile", "JSON object"]),
    ("json-shape", S, "evaluate --profile {NUM}", ["profile", "JSON object"]),
    ("json-shape", S, "evaluate --profile {NULL}", ["profile", "JSON object"]),
    ("json-shape", S, "evaluate --profile {P} --plan {LIST}", ["plan", "JSON object"]),
    ("json-shape", S, "evaluate --profile {P} --plan {NULL}", ["plan", "JSON object"]),
    ("json-shape", S, "export --plan {NUM} --to hf", ["plan", "JSON object"]),
    ("json-shape", S, "report --profile {P} --validation {LIST} --out {W}/r.html", ["validation"]),
    ("json-shape", S, "report --profile {P} --validation {HUGEVAL} --out {W}/r.html",
     ["validation.plans.0.predicted_tokens_per_second", "[1e-09, 1e+12]"]),
    ("json-shape", S, "report --profile {P} --validation {NEGMEDVAL} --out {W}/r.html",
     ["validation.median_abs_relative_error", "[0, 1e6]"]),
    ("json-shape", S, "report --profile {P} --validation {BOOLVAL} --out {W}/r.html",
     ["validation.plans.0.predicted_tokens_per_second", "[1e-09, 1e+12]", "True"]),
    ("cross-check", S, "report --profile {P} --validation {OTHERVAL} --out {W}/r.html",
     ["validation", "'another'", "report is for 'test'"]),
    ("cross-check", S, "evaluate --profile {ZEROWEIGHTS} --levels 2,16", ["spread.weights", ">= 0", "at least one > 0"]),
    ("cross-check", S, "evaluate --profile {NEGWEIGHTS} --levels 2,16", ["spread.weights", ">= 0"]),
    ("cross-check", S, "evaluate --profile {HUGEWEIGHTS} --levels 2,16", ["spread.weights", "finite sum"]),
    ("cross-check", S, "report --profile {PAPER80} --out {W}/r.html", ["paper_default.levels", "last layer 16"]),
    ("range", S, "report --profile {HUGEHBM} --out {W}/r.html", ["hbm_gb", "1000000000"]),
    ("json-shape", E, "run --plan {LIST}", ["plan", "JSON object"]),
    ("json-shape", E, "info --model {M_LISTCFG}", ["model", "JSON object"]),
    ("json-shape", S, "evaluate --profile {EMPTY}", ["profile", "malformed JSON"]),
    ("json-shape", S, "evaluate --profile {MALFORMED}", ["profile", "malformed JSON"]),
    ("json-shape", S, "evaluate --profile {P} --plan {NANPLAN}", ["plan", "NaN"]),
    ("json-shape", S, "evaluate --profile {P} --plan {HUGEINT}", ["plan", "digits; allowed: at most 4,300"]),
    ("json-shape", S, "evaluate --profile {P} --plan {LEVELSSTR}", ["levels"]),
    ("json-shape", S, "evaluate --profile {P} --plan {LEVELS0}", ["levels", "[1, 1024]"]),
    ("json-shape", S, "evaluate --profile {P} --plan {PROPOSE_BIG}", ["propose", "64"]),
    ("json-shape", S, "evaluate --profile {P} --plan {BIGPLAN}", ["batch", "4096"]),
    ("json-shape", S, "evaluate --profile {P} --plan {MANYLEVELS}", ["levels", "16"]),
    ("json-shape", E, "run --plan {PROPOSE_BIG}", ["propose", "64"]),
    ("non-utf8", S, "evaluate --profile {NONUTF8}", ["profile", "UTF-8"]),
    ("non-utf8", S, "evaluate --profile {P} --plan {NONUTF8}", ["plan", "UTF-8"]),
    ("non-utf8", S, "export --plan {NONUTF8} --to json", ["plan", "UTF-8"]),
    ("non-utf8", S, "report --profile {P} --validation {NONUTF8} --out {W}/r.html", ["validation", "UTF-8"]),
    ("non-utf8", E, "run --plan {NONUTF8}", ["plan", "UTF-8"]),
    ("non-utf8", E, "info --model {M_NONUTF8CFG}", ["model", "UTF-8"]),
    ("special-files", S, "evaluate --profile {P} --plan /dev/zero", ["plan", "not a regular file"]),
    ("special-files", S, "evaluate --profile /dev/zero", ["profile", "not a regular file"]),
    ("special-files", S, "export --plan /dev/zero --to exec", ["plan", "not a regular file"]),
    ("special-files", S, "report --profile {P} --validation /dev/zero --out {W}/r.html", ["validation", "regular file"]),
    ("special-files", E, "run --plan /dev/zero", ["plan", "not a regular file"]),
    ("special-files", S, "evaluate --profile {P} --plan {ADIR}", ["plan", "folder"]),
    ("special-files", S, "evaluate --profile {ADIR}", ["profile"]),
    ("special-files", S, "evaluate --profile {P} --plan {W}/missing.json", ["plan", "no such file"]),
    ("special-files", E, "info --model {P}", ["model", "is not a folder"]),
    ("size", S, "report --profile {BIG} --out {W}/r.html", ["profile", "200 MiB", "64 MiB"]),
    ("size", S, "optimize --profile {BIG}", ["profile", "64 MiB"]),
    ("size", S, "evaluate --profile {P} --plan {BIG}", ["plan", "64 MiB"]),
    ("size", S, "report --profile {P} --validation {BIG} --out {W}/r.html", ["validation", "64 MiB"]),
    # -- flag values: numbers, ranges, lists, the = form
    ("flags", S, "evaluate --profile {P} --levels 2,16 --context 1e30", ["--context", "[0, 16777216]"]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --context 1000000000000000000000000000000", ["--context", "16777216"]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --context -1", ["--context", "[0, "]),
    ("flags", S, "optimize --profile {P} --context 99999999999", ["--context"]),
    ("flags", S, "report --profile {P} --context 1e30 --out {W}/r.html", ["--context"]),
    ("flags", S, "export --plan {PLAN} --to json --profile {P} --context 1e30", ["--context"]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --seed -1", ["--seed", "[0, 4294967295]"]),
    # round 25, M2: the range printed is the one enforced; the fields named are the flags given
    ("flags", S, "evaluate --profile {P} --levels 2,16 --mc --streams 1", ["streams: must be in [2, 1048576]"]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --cycles 5", ["cycles: applies to the i.i.d.", "add --mc"]),
    ("flags", S, "evaluate --profile a100_llama70b --levels 23,80 --replay", ["replay: needs a workload with traces"]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --seed 1e3", ["--seed", "integer"]),
    ("flags", S, "optimize --profile {P} --seed -1", ["seed", "[0, 4294967295]"]),
    ("flags", S, "validate --profile {P} --seed -1", ["--seed"]),
    ("flags", S, "validate --profile {P} --prompt-seed -5", ["--prompt-seed"]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --batch 0", ["--batch", "[1, 4096]"]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --batch=0", ["--batch", "[1, 4096]"]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --batch=5000", ["--batch", "4096"]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --batch=abc", ["--batch", "integer"]),
    ("flags", S, "optimize --profile {P} --batch 1,0,8", ["batch", "[1, 4096]"]),
    ("flags", S, "optimize --profile {P} --batch 99999", ["batch", "4096"]),
    ("flags", S, "optimize --profile {P} --batch=x", ["batch"]),
    ("flags", S, "optimize --profile {P} --tp 0", ["tp", "1"]),
    ("flags", S, "optimize --profile {P} --top 0", ["--top", "[1, 1000]"]),
    ("flags", S, "optimize --profile {P} --max-propose 0", ["--max-propose", "[1, 64]"]),
    ("flags", S, "optimize --profile {P} --max-window 100000", ["--max-window", "256"]),
    ("flags", S, "evaluate --profile {P} --levels 2,4,16 --window 4,4", ["window: a 3-level chain needs 1 window, got 2"]),
    ("flags", S, "optimize --profile a100_llama70b --max-propose 64 --max-window 256",
     ["max_window", "1.35e+10 cells", "4.29e+09", "--search optuna"]),
    ("flags", S, "capacity --profile a100_llama70b --qps 1 --slo-ttft-ms 900 --slo-tbt-ms 90 --max-propose 64 --max-window 256",
     ["max_window", "4.29e+09", "--max-window (1..256)", "(optimize can also --search optuna)"]),  # capacity has no --search
    ("flags", S, "evaluate --profile {P} --levels 2,4,16 --propose 64 --window 256 --mc --streams 65536 --cycles 64",
     ["mc:", "16,384 tokens per full-model check", "1.72e+10"]),
    ("flags", S, "optimize --profile {P} --depth 0-9", ["depth", "<= 8"]),
    ("flags", S, "optimize --profile {P} --depth 1-99", ["depth"]),
    ("flags", S, "optimize --profile {P} --depth x", ["depth"]),
    ("flags", S, "optimize --profile {P} --search optuna --trials 0", ["trials", "[1, 100000]"]),
    ("flags", S, "optimize --profile {P} --search optuna --trials 10000000", ["trials", "100000"]),
    ("flags", S, "optimize --profile {P} --search optuna --trials -5", ["trials"]),
    ("flags", S, "optimize --profile {P} --search optuna --timeout nan", ["timeout"]),
    ("flags", S, "optimize --profile {P} --search optuna --timeout -1", ["timeout"]),
    ("flags", S, "optimize --profile {P} --search optuna --workers 0", ["workers", "[1, 256]"]),
    ("flags", S, "optimize --profile {P} --search optuna --mc-streams 0", ["mc_streams"]),
    ("flags", S, "optimize --profile {P} --search optuna --mc-streams 1000000 --mc-cycles 60000", ["mc_streams", "67108864"]),
    ("flags", S, "optimize --profile {P} --search quantum", ["search", "exhaustive, optuna, auto"]),
    ("flags", S, "optimize --profile {P} --search optuna --sampler magic", ["sampler"]),
    ("flags", S, "optimize --profile {P} --search optuna --objectives speed", ["objective"]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --streams 1e9", ["--streams", "integer"]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --mc --streams 1000000000 --cycles 1000000", ["--streams", "1048576"]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --mc --streams 1048576 --cycles 65536", ["streams", "x --cycles", "67108864"]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --mc --streams 0", ["--streams", "[2, "]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --mc --cycles 0", ["--cycles", "[1, 65536]"]),
    ("flags", S, "evaluate --profile {P} --levels 2,4,16", ["window", "needs --window"]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --window 4", ["window", "no intermediate level"]),
    ("flags", S, "evaluate --profile {P} --levels 2,4,8,16 --window 1,2,3", ["window", "1 or 2"]),
    ("flags", S, "evaluate --profile {P} --levels 2,4,16 --window 0", ["window", "[1, 256]"]),
    ("flags", S, "evaluate --profile {P} --levels 2,4,16 --window 9999", ["window", "[1, 256]"]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --propose 65", ["--propose", "[1, 64]"]),
    ("flags", S, "evaluate --profile {P} --levels ,,,", ["levels"]),
    ("flags", S, "evaluate --profile {P} --levels 2,99999999999,16", ["levels", "[1, 1024]"]),
    ("flags", S, "evaluate --profile {P} --levels " + ",".join(map(str, range(1, 80))), ["levels", "at most 64"]),
    ("flags", S, "evaluate --profile {P} --plan {PLAN} --levels 2,16", ["plan", "not both"]),
    ("flags", S, "evaluate --profile {P} --propose 3", ["levels", "needs --levels"]),
    ("flags", S, "evaluate --profile {P}", ["plan", "--levels"]),
    ("flags", S, "evaluate --profile {P} --plan {PLAN80}", ["levels", "16"]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --workload '<script>'", ["workload", "known: w"]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --stack nope", ["latency", "no table"]),
    ("flags", S, "evaluate --profile no_such_profile --levels 2,16", ["profile", "unknown", "known:"]),
    ("flags", S, "report --profile {P} --target-tps nan --out {W}/r.html", ["--target-tps", "finite"]),
    ("flags", S, "report --profile {P} --target-tps inf --out {W}/r.html", ["--target-tps"]),
    ("flags", S, "report --profile {P} --slo-ms 0 --out {W}/r.html", ["--slo-ms"]),
    ("flags", S, "report --profile {P} --gpu-hour-usd -2 --out {W}/r.html", ["--gpu-hour-usd"]),
    ("flags", S, "report --profile {P} --max-batch 0 --out {W}/r.html", ["--max-batch", "[1, 4096]"]),
    ("flags", S, "report --profile {P} --format pdf --out {W}/r.html", ["--format", "invalid choice"]),
    ("flags", S, "export --plan {PLAN} --to onnx", ["--to", "invalid choice"]),
    ("flags", S, "export --plan {PLAN80} --to exec --profile {P}", ["levels", "16"]),
    ("flags", S, "export --plan {PLAN} --to hf", ["to", "--to exec"]),
    ("flags", S, "validate --profile {P} --plans 0", ["--plans", "[1, 200]"]),
    ("flags", S, "validate --profile {P} --prompts 0", ["--prompts", "[1, 10000]"]),
    ("flags", S, "validate --profile {P} --max-new-tokens 0", ["--max-new-tokens"]),
    ("flags", S, "validate --profile {P} --threads 0", ["--threads", "[1, 1024]"]),
    ("flags", S, "schema extra", ["unrecognized arguments"]),
    ("flags", S, "profiles --bogus", ["unrecognized arguments"]),
    ("flags", S, "frobnicate", ["invalid choice"]),
    ("flags", S, "", ["required"]),
    ("flags", S, "profile", ["required"]),
    ("flags", S, "profile synthetic --layers 0 --layer-ms 1 --agreement 0.5 --out {W}/s.json", ["--layers", "[1, 1024]"]),
    ("flags", S, "profile synthetic --layers 8 --layer-ms inf --agreement 0.5 --out {W}/s.json", ["--layer-ms", "finite"]),
    ("flags", S, "profile synthetic --layers 8 --layer-ms nan --agreement 0.5 --out {W}/s.json", ["--layer-ms"]),
    ("flags", S, "profile synthetic --layers 8 --layer-ms 1e308 --agreement 0.5 --out {W}/s.json", ["--layer-ms", "1000000.0"]),
    ("flags", S, "profile synthetic --layers 8 --layer-ms 1 --agreement 1.5 --out {W}/s.json", ["--agreement", "[0.0, 1.0]"]),
    ("flags", S, "profile synthetic --layers 8 --layer-ms 1 --agreement 0.5 --head-ms -1 --out {W}/s.json", ["--head-ms"]),
    ("flags", S, "profile synthetic --layers 10000000 --layer-ms 1 --agreement 0.5 --out {W}/s.json", ["--layers"]),
    ("flags", S, "profile import-vidur {V_OK} --layers 32 --tp x --out {W}/v.json", ["tp", "integers"]),
    ("flags", S, "profile import-vidur {V_OK} --layers 32 --tp 0 --out {W}/v.json", ["tp", "[1, 1024]"]),
    ("flags", S, "profile import-vidur {V_OK} --layers 32 --overhead-ms inf --out {W}/v.json", ["--overhead-ms"]),
    ("flags", S, "profile import-vidur {V_OK} --layers 0 --out {W}/v.json", ["--layers"]),
    ("flags", S, "profile import-vidur {V_OK} --layers 32 --default-tp 8 --out {W}/v.json", ["default_tp"]),
    ("flags", S, "profile import-vidur {W}/novidur --layers 32 --out {W}/v.json", ["folder"]),
    ("flags", S, "profile import-vidur {V_OK} --layers 32 --acceptance-from {P} --out {W}/v.json", ["acceptance_from", "layers"]),
    ("flags", S, "profile measure --prompts 0 --out {W}/m.json", ["--prompts", "[1, 10000]"]),
    ("flags", S, "profile measure --max-new-tokens 0 --out {W}/m.json", ["--max-new-tokens"]),
    ("flags", S, "profile measure --seed -1 --out {W}/m.json", ["--seed"]),
    ("flags", S, "profile measure --out {W}/m.json --name ' padded'", ["name", "must not start or end with a space"]),  # before measuring
    ("flags", S, "profile measure --threads 0 --out {W}/m.json", ["--threads"]),
    ("flags", S, "profile measure --workload '../x' --out {W}/m.json", ["workload"]),
    # -- storage URLs and outputs that would destroy an input
    ("storage", S, "optimize --profile {P} --search optuna --trials 2 --storage sqlite:///", ["storage", "names no file"]),
    ("storage", S, "optimize --profile {P} --search optuna --trials 2 --storage sqlite:///:memory:", ["storage", "no file"]),
    ("storage", S, "optimize --profile {P} --search optuna --trials 2 --storage sqlite://", ["storage"]),
    ("storage", S, "optimize --profile {P} --search optuna --trials 2 --storage nonsense", ["storage", "sqlite:///"]),
    ("storage", S, "optimize --profile {P} --search optuna --trials 2 --storage ftp://x/y", ["storage", "not supported"]),
    ("storage", S, "optimize --profile {P} --search optuna --trials 2 --storage sqlite:///{W}/nodir/s.db", ["storage", "does not exist"]),
    ("storage", S, "optimize --profile {P} --search optuna --trials 2 --storage sqlite:///{ADIR}", ["storage", "folder"]),
    ("storage", S, "optimize --profile {P} --storage sqlite:///", ["storage"]),
    ("overwrite", S, "optimize --profile {P} --search optuna --trials 2 --storage sqlite:///{DB} --out {DB}", ["out", "input"]),
    ("overwrite", S, "optimize --profile {P} --storage sqlite:///{DB} --out {DB}", ["storage", "--search optuna"]),  # unread
    ("overwrite", S, "optimize --profile {P} --out {P}", ["out", "also an input"]),
    ("overwrite", S, "report --profile {P} --out {P}", ["out", "also an input"]),
    ("overwrite", S, "report --profile {P} --validation {PLAN} --out {PLAN}", ["out", "input"]),
    ("overwrite", S, "export --plan {PLAN} --to exec --out {PLAN}", ["out", "input"]),
    ("overwrite", S, "export --plan {PLAN} --to json --profile {P} --out {P}", ["out", "input"]),
    ("overwrite", S, "validate --profile {P} --out {P}", ["out", "input"]),
    ("overwrite", S, "profile import-vidur {V_OK} --layers 32 --out {V_OK}/compute/a100/meta-llama/Llama-2-7b-hf/mlp.csv", ["out", "input"]),
    ("overwrite", S, "profile import-vidur {V_OK} --layers 32 --acceptance-from {P} --out {P}", ["out", "input"]),
    ("overwrite", E, "run --plan {PLAN} --out {PLAN}", ["out", "input"]),
    ("unwritable", S, "optimize --profile {P} --out {RO}/plan.json", ["out", "not writable"]),
    ("unwritable", S, "optimize --profile {P} --out {W}/nodir/plan.json", ["out", "does not exist"]),
    ("unwritable", S, "optimize --profile {P} --out {ADIR}", ["out", "folder"]),
    ("unwritable", S, "optimize --profile {P} --out /dev/null", ["out", "not a regular file"]),
    ("unwritable", S, "report --profile {P} --out {RO}/r.html", ["out", "not writable"]),
    ("unwritable", S, "report --profile {P} --out {ADIR}", ["out", "folder"]),
    ("unwritable", S, "export --plan {PLAN} --to exec --out {RO}/x.json", ["out", "not writable"]),
    ("unwritable", S, "profile synthetic --layers 8 --layer-ms 1 --agreement 0.5 --out {RO}/s.json", ["out", "not writable"]),
    ("unwritable", S, "profile import-vidur {V_OK} --layers 32 --out {RO}/v.json", ["out", "not writable"]),
    ("unwritable", S, "profile measure --out {RO}/m.json", ["out", "not writable"]),
    ("unwritable", S, "profile measure --out {W}/nodir/m.json", ["out", "does not exist"]),
    ("unwritable", S, "validate --profile {P} --out {RO}/v.json", ["out", "not writable"]),
    ("unwritable", E, "run --out {RO}/r.json", ["out", "not writable"]),
    ("unwritable", E, "run --out {ADIR}", ["out", "folder"]),
    # -- Vidur CSV cells
    ("vidur", S, "profile import-vidur {V_INFTP} --layers 32 --out {W}/v.json", ["num_tensor_parallel_workers", "integer"]),
    ("vidur", S, "profile import-vidur {V_HUGETP} --layers 32 --out {W}/v.json", ["num_tensor_parallel_workers", "[1, 1024]"]),
    ("vidur", S, "profile import-vidur {V_NANEMBD} --layers 32 --out {W}/v.json", ["n_embd"]),
    ("vidur", S, "profile import-vidur {V_INFEMBD} --layers 32 --out {W}/v.json", ["n_embd"]),
    ("vidur", S, "profile import-vidur {V_STRTOK} --layers 32 --out {W}/v.json", ["num_tokens", "not a number"]),
    ("vidur", S, "profile import-vidur {V_FRACTOK} --layers 32 --out {W}/v.json", ["num_tokens", "integer"]),
    ("vidur", S, "profile import-vidur {V_NO1TOK} --layers 32 --out {W}/v.json",
     ["start at num_tokens 2", "needs a num_tokens 1 row"]),
    ("vidur", S, "profile import-vidur {V_TRUNCROW} --layers 32 --out {W}/v.json", ["line 15", "13 cells", "16"]),
    ("vidur", S, "profile import-vidur {V_INFOP} --layers 32 --out {W}/v.json", ["mlp_up_proj", "finite"]),
    ("vidur", S, "profile import-vidur {V_STROP} --layers 32 --out {W}/v.json", ["attn_rope", "not a number"]),
    ("vidur", S, "profile import-vidur {V_NEGOP} --layers 32 --out {W}/v.json", ["line 2 add", "[0, 10000]", "-1"]),
    ("vidur", S, "profile import-vidur {V_ZEROOPS} --layers 32 --out {W}/v.json", ["mlp.csv line 2", "sum to 9e-300 ms", ">= 1e-06"]),
    ("vidur", S, "profile import-vidur {V_HUGEOP} --layers 32 --out {W}/v.json",
     ["mlp.csv line 2 mlp_up_proj", "[0, 10000]", "1e6"]),
    ("vidur", S, "profile import-vidur {V_HUGENET} --layers 32 --tp 2 --out {W}/v.json", ["all_reduce", "[0, 10000]"]),
    ("vidur", S, "profile import-vidur {V_INFWORKERS} --layers 32 --tp 2 --out {W}/v.json", ["num_workers", "integer"]),
    ("vidur", S, "profile import-vidur {V_STRSIZE} --layers 32 --tp 2 --out {W}/v.json", ["size", "not a number"]),
    ("vidur", S, "profile import-vidur {V_INFNET} --layers 32 --tp 2 --out {W}/v.json", ["all_reduce", "finite"]),
    ("vidur", S, "profile import-vidur {V_NONUTF8} --layers 32 --out {W}/v.json", ["vidur", "UTF-8"]),
    ("vidur", S, "profile import-vidur {V_EMPTY} --layers 32 --out {W}/v.json", ["vidur", "no rows"]),
    ("vidur", S, "profile import-vidur {V_NOCOLS} --layers 32 --out {W}/v.json", ["vidur", "lacks columns"]),
    ("vidur", S, "profile import-vidur {V_NUL} --layers 32 --out {W}/v.json", ["vidur"]),
    ("vidur", S, "profile import-vidur {V_SHORTROW} --layers 32 --out {W}/v.json", ["line 2", "2 cells", "16"]),
    # -- checkpoint configs (info must refuse what run cannot run)
    ("hf-config", E, "info --model {HF_THETA_STR}", ["rope_theta", "number"]),
    ("hf-config", E, "run --model {HF_THETA_STR}", ["rope_theta", "number"]),
    ("hf-config", E, "info --model {HF_THETA_INF}", ["model", "finite"]),
    ("hf-config", E, "info --model {HF_SCALING_INT}", ["rope_scaling", "object"]),
    ("hf-config", E, "generate --prompt x --model {HF_SCALING_INT}", ["rope_scaling"]),
    ("hf-config", E, "info --model {HF_SCALING_NOFACTOR}", ["rope_scaling.factor"]),
    ("hf-config", E, "info --model {HF_SCALING_STRFACTOR}", ["rope_scaling.factor", "number"]),
    ("hf-config", E, "info --model {HF_SCALING_KIND}", ["rope_scaling", "llama3"]),
    ("hf-config", E, "info --model {HF_TYPE_QWEN2}", ["model_type", "llama, mistral", "qwen2"]),
    ("hf-config", E, "info --model {HF_WINDOW}", ["sliding_window", "shorter than"]),
    ("hf-config", E, "info --model {HF_CTX_ZERO}", ["max_position_embeddings", ">= 2"]),
    ("hf-config", E, "info --model {HF_HEADDIM_ZERO}", ["head_dim"]),
    ("hf-config", E, "info --model {HF_KV_ZERO}", ["num_key_value_heads", ">= 1"]),
    ("hf-config", E, "info --model {HF_ROPEPARAMS_LIST}", ["rope_parameters", "object"]),
    ("hf-config", E, "info --model {HF_SCALING_NOORIG}", ["rope_scaling.original_max_position_embeddings", "missing"]),
    ("hf-config", E, "info --model {HF_WINDOW_UNUSED}", ["sliding_window", "shorter than"]),
    ("hf-config", E, "info --model {HF_WINDOW_FLOAT}", ["sliding_window", "integer or null"]),
    ("hf-config", E, "info --model {HF_EPS_STR}", ["rms_norm_eps", "number"]),
    ("hf-config", E, "info --model {HF_EPS_NEG}", ["norm_eps", "[1e-12, 0.1]"]),
    ("hf-config", E, "info --model {HF_DIMS_HUGE}", ["config.hidden_size", "[2, 65536]"]),
    ("hf-config", E, "run --model {HF_DIMS_HUGE}", ["config.hidden_size", "[2, 65536]"]),
    ("hf-config", E, "info --model {HF_LAYERS_HUGE}", ["config.num_hidden_layers", "[1, 1024]"]),
    ("hf-config", E, "info --model {HF_MEM_HUGE}", ["config", "GiB", "this machine has"]),
    ("hf-config", E, "run --model {HF_MEM_HUGE}", ["config", "GiB"]),
    ("hf-config", E, "info --model {HF_LAYERS_STR}", ["num_hidden_layers", "integer"]),
    ("hf-config", E, "info --model {HF_VOCAB_NEG}", ["vocab_size", "[2, "]),
    ("hf-config", E, "info --model {HF_VOCAB_FLOAT}", ["vocab_size", "integer"]),
    ("hf-config", E, "info --model {HF_HEADS_ZERO}", ["num_attention_heads"]),
    ("hf-config", E, "info --model {HF_HEADDIM_BAD}", ["head_dim"]),
    ("hf-config", E, "info --model {HF_KV_BAD}", ["num_attention_heads", "num_key_value_heads (3)"]),
    ("hf-config", E, "info --model {HF_TIE_STR}", ["tie_word_embeddings", "true or false"]),
    ("hf-config", E, "info --model {HF_CTX_HUGE}", ["model"]),
    ("hf-config", E, "info --model {HF_ARCH_STR}", ["architectures"]),
    ("hf-config", E, "info --model {HF_TYPE_GPT2}", ["model_type", "Llama"]),
    ("hf-config", E, "info --model {HF_ACT_GELU}", ["hidden_act", "silu"]),
    ("hf-config", E, "info --model {HF_BIAS}", ["attention_bias"]),
    ("hf-config", E, "info --model {HF_NOVOCAB}", ["vocab_size", "missing"]),
    ("hf-config", E, "info --model {M_THETA_STR}", ["rope_theta", "number"]),
    ("hf-config", E, "run --model {M_EPS_STR}", ["norm_eps", "number"]),
    ("hf-config", E, "info --model {M_DIM_HUGE}", ["config"]),
    ("hf-config", E, "info --model {M_LAYERS0}", ["n_layers"]),
    ("hf-config", E, "info --model {M_SCALING_INT}", ["rope_scaling", "object"]),
    ("hf-config", E, "info --model {M_UNKNOWN}", ["unknown keys", "colour"]),
    ("hf-config", E, "info --model {M_ODDHEAD}", ["dim", "even"]),
    ("hf-config", E, "info --model {W}/nomodel", ["model", "no such folder"]),
    # -- executor flags
    ("exec-flags", E, "run --temperature nan --mode sampling", ["--temperature", "finite"]),
    ("exec-flags", E, "run --temperature inf --mode sampling", ["--temperature", "[0.001, 100.0]"]),
    ("exec-flags", E, "run --temperature 0", ["--temperature", "[0.001, 100.0]"]),
    ("exec-flags", E, "generate --prompt x --temperature -1", ["--temperature"]),
    ("exec-flags", E, "generate --prompt x --temperature nan", ["--temperature"]),
    ("exec-flags", E, "run --repeats 0", ["--repeats", "[1, 1000]"]),
    ("exec-flags", E, "run --repeats -3", ["--repeats"]),
    ("exec-flags", E, "run --prompts 0", ["--prompts", "[1, 10000]"]),
    ("exec-flags", E, "run --prompt-len 0", ["--prompt-len"]),
    ("exec-flags", E, "run --max-new-tokens 0", ["--max-new-tokens"]),
    ("exec-flags", E, "run --max-new-tokens 100000", ["max_new_tokens", "context 512"]),
    ("exec-flags", E, "run --prompt-len 600", ["max_new_tokens", "512"]),
    ("exec-flags", E, "generate --prompt x --max-new-tokens 5000", ["max_new_tokens", "512"]),
    ("exec-flags", E, "run --seed -1", ["--seed", "[0, 4294967295]"]),
    ("exec-flags", E, "run --threads 0", ["--threads", "[1, 1024]"]),
    ("exec-flags", E, "info --threads -1", ["--threads"]),
    ("exec-flags", E, "run --levels 2,4,16", ["window", "needs --window"]),
    ("exec-flags", E, "run --levels 2,16 --window 4", ["window", "no intermediate"]),
    ("exec-flags", E, "run --levels 2,16 --propose 0", ["--propose", "[1, 64]"]),
    ("exec-flags", E, "run --levels 2,16 --propose 1e9", ["--propose"]),
    ("exec-flags", E, "run --levels 2,17", ["levels", "model of 17 layers", "has 16"]),
    ("exec-flags", E, "run --plan {PLAN80}", ["levels", "model of 80 layers", "shipped model has 16", "cpu_hispec_tiny"]),
    ("exec-flags", E, "generate --prompt x --plan {PLAN80}", ["levels", "model of 80 layers"]),
    ("exec-flags", E, "run --plan {BIGPLAN}", ["batch", "4096"]),
    ("exec-flags", E, "run --plan {PLAN} --levels 2,16", ["plan", "not both"]),
    ("exec-flags", E, "run --mode beam", ["--mode", "invalid choice"]),
    ("exec-flags", E, "run --device tpu", ["--device", "invalid choice"]),
    ("exec-flags", E, "generate --prompt ''", ["prompt", "empty"]),
    ("exec-flags", E, "frobnicate", ["invalid choice"]),
    ("exec-flags", E, "", ["required"]),
    # -- train: every argument checked before anything is created
    ("train", E, "train --out /dev/full --steps 1", ["out", "/dev/full is not a folder"]),
    ("train", E, "train --out {W}/t --minutes 0", ["--minutes", "[0.001, 10080]"]),
    ("train", E, "train --out {W}/t --minutes -1", ["--minutes"]),
    ("train", E, "train --out {W}/t --minutes nan", ["--minutes", "finite"]),
    ("train", E, "train --out {W}/t --minutes inf", ["--minutes"]),
    ("train", E, "train --out {W}/t --batch 0", ["--batch", "[1, 4096]"]),
    ("train", E, "train --out {W}/t --seq 0", ["--seq", "[1, 65536]"]),
    ("train", E, "train --out {W}/t --seq 1e8", ["--seq", "integer"]),
    ("train", E, "train --out {W}/t --seq 100000000", ["--seq"]),
    ("train", E, "train --out {W}/t --seq 512", ["seq", "[1, 511]"]),
    ("train", E, "train --out {W}/t --threads 0", ["--threads", "[1, 1024]"]),
    ("train", E, "train --out {W}/t --layers 1 --steps 1", ["--layers", "[2, 1024]"]),
    ("train", E, "train --out {W}/t --steps 0", ["--steps", "[1, "]),
    ("train", E, "train --out {W}/t --dim 161", ["n_heads", "divide"]),
    ("train", E, "train --out {W}/t --dim 4 --heads 8", ["heads", "--dim"]),
    ("train", E, "train --out {W}/t --kv-heads 3", ["n_kv_heads"]),
    ("train", E, "train --out {W}/t --dim 65536 --layers 1024 --ffn 262144", ["model", "GiB"]),
    ("train", E, "train --out {W}/t --batch 4096 --seq 511", ["batch", "GiB"]),
    ("train", E, "train --out {W}/t --lr nan", ["--lr"]),
    ("train", E, "train --out {W}/t --lr 0", ["--lr", "[1e-08, 1.0]"]),
    ("train", E, "train --out {W}/t --layer-dropout 1.5", ["--layer-dropout"]),
    ("train", E, "train --out {W}/t --exit-scale -1", ["--exit-scale"]),
    ("train", E, "train --out {W}/t --seed -1", ["--seed"]),
    ("train", E, "train --out {W}/t --max-seq-len 1", ["--max-seq-len"]),
    ("train", E, "train --out {P}", ["out", "is a file"]),
    ("train", E, "train --out {W}/nodir/t", ["out", "does not exist"]),
    ("train", E, "train --out {RO}/t", ["out", "not writable"]),
    ("train", E, "train --out {RO}", ["out"]),
    ("train", E, "train --out {W}/t --init-from {W}/nomodel", ["init_from", "checkpoint folder"]),
    ("train", E, "train --out {W}/t --init-from {M_THETA_STR}", ["init_from", "rope_theta"]),
    ("train", E, "train --out {W}/t --init-from {HF_DIMS_HUGE}", ["hidden_size"]),
    ("train", E, "train --out {W}/t --init-from {HF_MEM_HUGE}", ["GiB"]),
    # -- an empty path names no file (it used to fall back to a default, or be ignored)
    ("empty-path", S, "report --profile {P} --out ''", ["out", "must not be empty"]),
    ("empty-path", S, "optimize --profile {P} --out ''", ["out", "must not be empty"]),
    ("empty-path", S, "optimize --profile ''", ["profile", "must not be empty"]),
    ("empty-path", S, "evaluate --profile {P} --plan ''", ["plan", "must not be empty"]),
    ("empty-path", S, "serve --profile {P} --levels 16 --trace ''", ["trace", "must not be empty"]),
    ("empty-path", E, "run --prompts 1 --max-new-tokens 4 --out ''", ["out", "must not be empty"]),
    ("empty-path", E, "train --out ''", ["out", "must not be empty"]),
    ("non-utf8", E, "generate --prompt caf\udce9", ["prompt", "not UTF-8"]),  # undecodable argv bytes (PEP 383)
    # -- a flag the chosen mode does not read is refused, not ignored
    ("flags", S, "optimize --profile {P} --search exhaustive --trials 5", ["trials", "--search optuna"]),
    ("flags", S, "validate --profile {P} --plan {PLAN} --plans 2 --allow-other-machine", ["plans", "not both"]),
    ("flags", S, "export --plan {PLAN} --to json --workload w", ["workload", "--profile"]),
    ("flags", S, "export --plan {PLAN} --to exec --profile {P} --tp 2", ["tp", "--to json"]),  # round 20: not read
    ("flags", S, "evaluate --profile {P} --levels 2,16 --cycles 5", ["cycles", "--mc"]),
    ("flags", S, "audit --profile {P} --levels best_single_level --window 4 --speedup 1.5", ["window", "drop --window"]),
    ("flags", S, "serve --profile {P} --levels 16 --qps 1 --per-request", ["per_request", "--json"]),
    # -- numbers as a command line writes them: ASCII digits, every comma-separated value present, no JSON booleans
    ("flags", S, "evaluate --profile {P} --levels 2,,16", ["levels", "comma-separated"]),
    ("flags", S, "optimize --profile {P} --batch 1_0", ["batch"]),
    ("flags", S, "audit --profile {P} --levels best_single_level --speedup 1_5", ["speedup"]),
    ("flags", S, "audit --profile {P} --levels best_single_level --plan {PLAN} --speedup 1.5", ["plan", "drop --plan"]),
    ("flags", S, "evaluate --profile {P} --levels \uff12,\uff11\uff16", ["levels"]),
    ("flags", S, "evaluate --profile {P} --levels -2,16", ["levels", "--levels=VALUE"]),
    ("json-shape", S, "evaluate --profile {P} --plan {BOOLPLAN}", ["plan", "propose", "got true"]),
    ("exec-flags", E, "generate --prompt x --max-new-tokens 4 --temperature 0.5", ["temperature", "sampling"]),
    # -- found by the fuzz audit of 2026-11-30
    ("unwritable", S, "optimize --profile {P} --out {LOOP}", ["out", "loops"]),
    ("unwritable", S, "report --profile {P} --out {LOOP}", ["out", "loops"]),
    ("unwritable", S, "export --plan {PLAN} --to exec --out {LOOP}", ["out", "loops"]),
    ("unwritable", S, "profile synthetic --layers 8 --layer-ms 1 --agreement 0.5 --out {LOOP}", ["out", "loops"]),
    ("unwritable", S, "profile measure --out {LOOP}", ["out", "loops"]),
    ("unwritable", E, "run --out {LOOP}", ["out", "loops"]),
    ("overwrite", E, "run --prompts 1 --max-new-tokens 2 --out {CK}/config.json", ["out", "input"]),
    ("overwrite", E, "run --prompts 1 --max-new-tokens 2 --out {CK}/model.safetensors", ["out", "input"]),
    ("overwrite", E, "serve --qps 100 --requests 1 --prompt-len 8 --output-len 2 --no-warmup --out {CK}/config.json",
     ["out", "input"]),
    ("overwrite", S, "profile measure --out {CK}/config.json", ["out", "input"]),
    ("overwrite", E, "train --out {CK} --init-from {CK} --steps 1", ["out", "--init-from", "input"]),
    ("special-files", S, "serve --profile {P} --levels 16 --trace /dev/zero", ["trace", "not a regular file"]),
    ("special-files", S, "serve --profile {P} --levels 16 --trace {FIFO}", ["trace", "not a regular file"]),
    ("size", S, "serve --profile {P} --levels 16 --trace {BIGPROMPT}", ["trace: line 1: prompt", "1,000,000 bytes"]),
    ("size", E, "serve --levels 16 --trace {BIGPROMPT}", ["trace: line 1: prompt", "1,000,000 bytes"]),
    ("special-files", E, "serve --trace /dev/zero", ["trace", "not a regular file"]),
    ("special-files", E, "info --model {M_FIFOWEIGHTS}", ["model", "model.safetensors", "not a regular file"]),
    ("special-files", E, "generate --model {M_FIFOTOK} --prompt hi", ["tokenizer", "tokenizer.json", "not a regular file"]),
    ("special-files", E, "generate --model {M_ZEROTOK} --prompt hi", ["tokenizer", "not a regular file"]),
    ("special-files", S, "profile measure --model {M_FIFOTOK} --prompts-file {PROMPTS} --workload w --out {W}/m.json",
     ["tokenizer", "not a regular file"]),
    ("special-files", E, "info --model {HF_OUTSIDESHARD}", ["model", "a shard must be a file name in the folder"]),
    ("special-files", S, "profile measure --prompts-file /dev/zero --workload w --out {W}/m.json",
     ["prompts_file", "not a regular file"]),
    ("empty-path", S, "profile measure --workload '' --out {W}/m.json", ["workload", "must not be empty"]),
    ("empty-path", S, "profile measure --name '' --out {W}/m.json", ["name", "must not be empty"]),
    ("empty-path", S, "profile synthetic --layers 8 --layer-ms 1 --agreement 0.5 --name '' --out {W}/s.json",
     ["name", "must not be empty"]),
    ("empty-path", S, "optimize --profile {P} --search optuna --study-name ''", ["study_name", "must not be empty"]),
    ("empty-path", S, "profile import-vidur '' --layers 32 --out {W}/v.json", ["must not be empty"]),
    ("flags", S, "profile measure --field prompt --out {W}/m.json", ["field", "--prompts-file"]),
    ("flags", S, "profile measure --acceptance-only --repeats 3 --out {P}", ["repeats", "--acceptance-only"]),
    ("flags", S, "profile measure --acceptance-only --attempts 3 --out {P}", ["attempts", "--acceptance-only"]),
    ("flags", S, "validate --profile {P} --prompts-file {PROMPTS} --prompts 3", ["prompts", "--prompts-file"]),
    ("flags", S, "validate --profile {P} --prompts-file {PROMPTS} --prompt-seed 3", ["prompt_seed", "--prompts-file"]),
    ("flags", S, "optimize --profile {P} --seed 5", ["seed", "--search optuna"]),
    ("flags", S, "optimize --profile {P} --mc-cycles 5", ["mc_cycles", "--search optuna"]),
    ("flags", S, "optimize --profile {P} --search optuna --trials 2 --mc-streams 8", ["mc_streams", "--objective mc"]),
    ("flags", S, "report --profile {P} --slo-ttft-ms 100 --serving-requests 0 --out {W}/r.html",
     ["slo_ttft_ms", "--serving-requests 0"]),
    ("flags", S, "serve --profile {P} --levels 16 --qps 1 --cv 2", ["cv", "--arrival gamma"]),
    ("flags", S, "capacity --profile {P} --qps 1 --slo-ttft-ms 1000 --slo-tbt-ms 100 --cv 2", ["cv", "gamma"]),
    ("flags", S, "serve --profile {P} --levels 16 --trace {TRACE} --requests 5", ["requests", "--trace"]),
    ("json-shape", S, "serve --profile {P} --levels 4,16 --trace {DUPTRACE}", ["trace", "line 1", "'arrival_s' appears twice"]),
    ("flags", S, "evaluate --profile cpu_hispec_tiny --plan {ADPLAN} --mc", ["mc", "confidence thresholds"]),
    ("flags", S, "evaluate --profile cpu_hispec_tiny --plan {ADPLAN} --seed 3", ["seed", "confidence thresholds"]),
    # the eleventh round: adaptive plans are predicted at batch 1 only; a plan file naming two plans
    ("flags", S, "evaluate --profile cpu_hispec_tiny --plan {ADPLAN} --batch 8", ["batch", "batch 1, got 8", "serve"]),
    ("flags", S, "optimize --profile cpu_hispec_tiny --adaptive --batch 8", ["batch", "batch 1, got 8"]),
    ("flags", S, "optimize --profile cpu_hispec_tiny --adaptive --search optuna --trials 2 --batch 1,8",
     ["batch", "batch 1, got 8"]),
    ("plan", S, "evaluate --profile cpu_hispec_tiny --plan {BESTANDPLAN}", ["plan", "'best' and 'plan'; keep the one"]),
    # the twelfth round: optimize --adaptive's answer that is not a plan object, or beside another plan
    ("plan", S, "evaluate --profile cpu_hispec_tiny --plan {ADNULLBEST}", ["plan", "holds no plan object"]),
    ("plan", E, "run --plan {ADLISTBEST} --prompts 1 --max-new-tokens 4", ["plan", "holds no plan object"]),
    ("plan", S, "export --plan {ADANDPLAN} --to exec", ["plan", "'adaptive' and 'plan'"]),
    ("flags", S, "evaluate --profile cpu_hispec_tiny --plan {ADPLAN} --streams 7", ["streams", "confidence thresholds"]),
    ("flags", S, "serve --profile {P} --levels 16 --trace {TRACE} --prompt-len 5", ["prompt_len", "--trace"]),
    ("flags", S, "serve --profile {P} --levels 16 --qps 1 --tp 0", ["tp", "[1, 1024]"]),
    ("flags", S, "serve --profile {P} --levels 16 --qps 1 --prompt-len 2_56", ["prompt_len"]),
    ("flags", S, "serve --profile {P} --levels 16 --qps 1 --prompt-len \uff12\uff15\uff16", ["prompt_len"]),
    ("flags", S, "optimize --profile {P} --search optuna --depth \uff13", ["depth"]),
    ("flags", S, "optimize --profile {P} --search optuna --trials 0_1", ["trials"]),
    ("flags", S, "optimize --profile {P} --search optuna --timeout 1_0", ["timeout"]),
    ("flags", S, "optimize --profile {P} --search optuna --objectives throughput,,latency", ["objectives"]),
    ("flags", S, "profile import-vidur {V_OK} --layers 32 --tp 1,,2 --out {W}/v.json", ["tp", "comma-separated"]),
    ("flags", S, "profile import-vidur {V_OK} --layers 32 --tp 1,1 --out {W}/v.json", ["tp", "once"]),
    ("exec-flags", E, "serve --qps 1 --requests 1 --temperature 0.5", ["temperature", "sampling"]),
    ("exec-flags", E, "serve --trace {TRACE} --arrival gamma", ["arrival", "--trace"]),
    ("exec-flags", E, "generate --prompt x --seed 3", ["seed", "sampling"]),
    ("train", E, "train --out {W}/t --init-from {CK} --dim 32", ["dim", "--init-from"]),
    ("train", E, "train --out {LOOP} --steps 1", ["out", "symbolic link"]),
    ("flags", S, "serve --profile {P} --levels 16 --qps 1 --prompt-len 5:min=10", ["prompt_len", "outside", "10..1000000"]),
    ("json-shape", S, "optimize --profile {STRLAYERS}", ["model.num_layers", "integer"]),
    ("json-shape", S, "optimize --profile {NLNAME}", ["name", "one line"]),
    # the eleventh round: invisible characters in names, bidi controls in the description, keys shown safely
    # the thirteenth round: a missing field is named; a key with a dot is quoted in the path
    ("json-shape", S, "evaluate --profile cpu_hispec_tiny --plan {NOLEVELS}", ["plan", "levels: Field required"]),
    ("json-shape", S, "optimize --profile {NOMODELNAME}", ["profile", "model.name: Field required"]),
    ("json-shape", S, "optimize --profile {DOTKEY}", ["workloads.'w.1'.context", "greater than or equal to 0"]),
    ("json-shape", S, "optimize --profile {ZWSPNAME}", ["name", "U+200B (ZERO WIDTH SPACE)", "would not show"]),
    ("json-shape", S, "optimize --profile {RLODESC}", ["description", "bidirectional"]),
    ("json-shape", S, "evaluate --profile cpu_hispec_tiny --plan {OSCPLAN}", ["'x\\x1b]0;PWNED\\x07'", "unknown field"]),
    ("json-shape", S, "evaluate --profile cpu_hispec_tiny --plan {BRACKETPLAN}", ["levels[0]: unknown field"]),
    ("json-shape", S, "evaluate --profile {P} --plan {STRPROPOSE}", ["propose", "integer"]),
    ("json-shape", S, "evaluate --profile {P} --plan {FLOATLEVELS}", ["levels", "integer"]),
    ("json-shape", S, "evaluate --profile {P} --plan {DUPKEY}", ["plan", "'propose' appears twice"]),
    ("json-shape", E, "run --plan {STRPROPOSE}", ["propose", "integer"]),
    ("json-shape", S, "serve --profile {P} --levels 16 --trace {STRTRACE}", ["trace", "line 1", "prompt_tokens"]),
    # -- its second round
    ("flags", S, "audit --profile {ONELAYER} --levels best_single_level --speedup 1.5", ["levels", "no exit below"]),
    ("flags", S, "profile synthetic --layers 8 --layer-ms 5e-324 --agreement 0.5 --out {W}/s.json", ["--layer-ms", "1e-06"]),
    ("profile-numbers", S, "optimize --profile {ZEROMS}", ["layer_ms", "[1e-06, "]),
    ("profile-numbers", S, "optimize --profile {HUGETOKEN}", ["traces", "2147483647"]),
    ("profile-numbers", S, "evaluate --profile {NEGWS} --levels 2,16", ["working_set_ms", "smallest layer_ms"]),
    ("profile-numbers", S, "report --profile {DEEPWS} --out {W}/r.html", ["working_set_layers", "[1, 16]"]),
    ("profile-numbers", S, "evaluate --profile {NEGLAYER} --levels 2,16", ["layer_overhead_ms", "smallest layer_ms"]),
    ("profile-numbers", S, "optimize --profile {NEGLAYERWS}", ["working_set_ms", "layer_overhead_ms"]),
    ("profile-numbers", S, "capacity --profile {NEGROWS} --qps 1 --slo-ttft-ms 1000 --slo-tbt-ms 100", ["row_overhead_ms", "0"]),
    ("profile-numbers", S, "evaluate --profile {EMPSIGMA} --levels 2,16", ["spread.sigma", "logit_normal"]),
    ("profile-numbers", S, "optimize --profile {LNREQUESTS}", ["spread.per_request", "empirical"]),
    ("profile-numbers", S, "evaluate --profile {TS1} --levels 2,16 --replay", ["trace_starts", "the first 0"]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --seed 3", ["seed", "add --mc"]),
    ("profile-numbers", S, "evaluate --profile {WLESC} --levels 2,16", ["workloads", "one line"]),
    ("profile-numbers", S, "report --profile {STACKNL} --out {W}/r.html", ["stack", "one line"]),
    ("profile-numbers", S, "optimize --profile {ASYM}", ["agreement", "symmetric"]),
    ("profile-numbers", S, "evaluate --profile {DIAG} --levels 2,16", ["agreement", "1 on the diagonal"]),
    ("profile-numbers", S, "evaluate --profile {TWOTABLES} --levels 2,16", ["latency", "two tables for tp=1"]),
    ("profile-numbers", S, "validate --profile {SEEDNEG} --plans 1 --allow-other-machine",
     ["provenance.prompts.seed", "the default of --prompt-seed", "[0, 4294967295]"]),
    ("flags", S, "serve --profile {P} --levels 2,16 --qps 5 --prompt-len lognormal:256:0.8:max=9:max=3000",
     ["prompt_len", "max= given twice"]),
    ("flags", S, "validate --profile cpu_hispec_tiny --allow-other-machine --prompts 1 --max-new-tokens 8 "
     "--plan {BATCHPLAN}", ["batch", "one sequence"]),
    ("exec-flags", E, "run --mode sampling --levels 2,16 --check", ["check", "greedy"]),
    ("exec-flags", E, "serve --qps 100 --requests 2 --mode sampling --levels 2,16 --check", ["check", "greedy"]),
    ("exec-flags", E, "serve --qps 1 --requests 1 --output-len 8:max=100:max=4", ["output_len", "max= given twice"]),
    ("exec-flags", E, "serve --qps 1 --requests 1 --prompt-len 512 --output-len 4", ["prompt_len", "request 0"]),
    ("profile-numbers", S, "audit --profile {FITVALUE} --levels 4,16 --speedup 1.5", ["fit", "points.0.value"]),
    ("profile-numbers", S, "audit --profile {FITPARAMS} --levels 4,16 --speedup 1.5", ["fit", "params", "m and c"]),
    ("profile-numbers", S, "audit --profile {FITLEVEL} --levels 4,16 --speedup 1.5", ["fit", "level", "[2, 2]"]),
    ("profile-numbers", S, "audit --profile {FITEXIT} --levels 4,16 --speedup 1.5", ["fit", "points.0", "[1, 16]"]),
    ("profile-numbers", S, "audit --profile {FITLAYERS} --levels 4,16 --speedup 1.5",
     ["workloads.w.fit: num_layers", "model.num_layers 16, got 1024"]),
    ("flags", S, "profile measure --prompts-file {SURROGATE} --workload w --out {W}/m.json", ["prompts_file", "line 1", "Unicode"]),
    ("flags", S, "profile measure --prompts-file {PROMPTS} --workload w --prompts 3 --out {W}/m.json",
     ["prompts", "--prompts-file"]),
    ("train", E, "train --out {W}/t --init-from {HF_VOCAB97} --steps 1", ["init_from", ">= 256"]),
    # -- its seventh round
    ("unwritable", S, "optimize --profile {P} --out {W}/newdir/", ["out", "names a folder"]),
    ("unwritable", E, "run --prompts 1 --max-new-tokens 4 --out {W}/newdir/", ["out", "names a folder"]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --levels 4,16", ["levels", "given twice", "--levels"]),
    ("flags", S, "audit --profile {P} --levels 2,16 --speedup 1.2 --speedup 50", ["speedup", "given twice"]),
    ("exec-flags", E, "run --levels 2,16 --max-new-tokens 4 --max-new-tokens 8", ["max_new_tokens", "given twice"]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --replay --seed 3", ["seed", "trace replay"]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --replay --cycles 5", ["cycles", "trace replay"]),
    ("flags", S, "evaluate --profile {P} --levels 2,16 --replay --mc", ["mc", "give one"]),
    ("schema", S, "evaluate --profile {P} --plan {SAMPLINGPLAN}", ["mode", "greedy plans only"]),
    ("schema", S, "validate --profile cpu_hispec_tiny --allow-other-machine --plan {SAMPLINGPLAN}", ["mode", "greedy"]),
    ("schema", S, "evaluate --profile {P} --plan {ESC0}", ["escalate_confidence", "no intermediate level"]),
    ("profile-numbers", S, "evaluate --profile {C1NAME} --levels 2,16", ["name", "one line"]),
    ("profile-numbers", S, "evaluate --profile {SHARESUM} --levels 2,16", ["confidence.share", "sum to 1"]),
    ("hf-config", E, "info --model {M_NANWEIGHTS}", ["model", "layers.0.w13.weight", "NaN"]),
    ("flags", S, "report --profile {P} --out {W}/r.html --format md", ["format", "an HTML file"]),
    ("flags", S, "optimize --profile {P} --batch 1,2,1", ["batch", "1 is given twice"]),
    ("flags", S, "serve --profile {P} --levels 2,16 --qps 5 --prompt-len lognormal:256:-1", ["prompt_len", "sigma:"]),
    ("exec-flags", E, "generate --prompt ' '", ["prompt", "whitespace"]),
    # -- its eighth round
    ("flags", S, "evaluate --profile cpu_hispec_tiny --levels 2,16 --mc --cycles 5", ["cycles", "per-request spread"]),
    # the streams x cycles cap named --cycles where the workload's spread reads none
    ("flags", S, "evaluate --profile cpu_hispec_tiny --levels 2,16 --mc --streams 4096 --cycles 65536",
     ["cycles", "per-request spread"]),
    # -- its tenth round
    ("cross-check", S, "report --profile {P} --validation {EMPTYPLANSVAL} --out {W}/r.html", ["validation.plans", "empty"]),
    ("cross-check", S, "report --profile {P} --validation {DEEPPLANVAL} --out {W}/r.html",
     ["validation.plans.0.plan", "levels"]),
    ("cross-check", S, "report --profile {P} --validation {NOPLANVAL} --out {W}/r.html", ["validation.plans.0.plan", "missing"]),
    ("cross-check", S, "report --profile {P} --validation {OTHERWLVAL} --out {W}/r.html",
     ["validation.workload", "'nope'", "the report is of workload"]),
    ("cross-check", S, "report --profile {P} --validation {BATCHVAL} --out {W}/r.html", ["validation.batch", "64"]),
    ("vidur", S, "profile import-vidur {V_NOVOCAB} --layers 32 --out {W}/v.json", ["vidur", "lacks columns ['vocab_size']"]),
    ("vidur", S, "profile import-vidur {V_OTHERSHAPE} --layers 32 --out {W}/v.json", ["vidur", "one file holds one model shape"]),
    ("vidur", S, "profile import-vidur {V_CONFLICT} --layers 32 --out {W}/v.json", ["vidur", "disagree on", "more than 2x"]),
    ("trace", S, "serve --profile cpu_hispec_tiny --levels 16 --trace {ID256TRACE}",
     ["trace: request 0 (line 1): prompt_tokens", "[0, 256)", "model.vocab"]),
    ("trace", S, "serve --profile cpu_hispec_tiny --levels 16 --trace {HUGEIDTRACE}", ["trace: line 1", "[0, 2147483647]"]),
    # -- its ninth round
    ("hf-config", E, "info --model {M_INTWEIGHTS}", ["model", "has dtype int32", "float16, bfloat16, float32 or float64"]),
    ("hf-config", E, "run --model {M_BOOLWEIGHTS}", ["model", "has dtype bool"]),
    ("hf-config", E, "info --model {HF_MAPLIST}", ["model", "weight_map must be an object"]),
    ("hf-config", E, "generate --prompt x --model {HF_MAPNULL}", ["model", "weight_map must be an object"]),
    ("hf-config", E, "info --model {HF_ROPECONFLICT}", ["config.rope_theta", "differs from rope_parameters.rope_theta"]),
    ("profile-numbers", S, "serve --profile {ZEROSERVING} --levels 2,16 --qps 5", ["serving.layer_ms", "[1e-06, 1e+06]"]),
    ("profile-numbers", S, "evaluate --profile {DEFTP3} --levels 2,16", ["default_tp", "no latency table", "tp=1"]),
    ("storage", S, "optimize --profile {P} --search optuna --trials 1 --storage sqlite:///{OTHERDB}",
     ["storage", "a SQLite database of something else (tables users)"]),
    # round 25, M6: the README's 200 characters, and a blank name said to be one
    ("storage", S, "optimize --profile {P} --search optuna --trials 1 --storage sqlite:///{W}/s.db --study-name " + "s" * 201,
     ["study-name", "1 to 200 characters"]),
    ("storage", S, "optimize --profile {P} --search optuna --trials 1 --storage sqlite:///{W}/s.db --study-name ' '",
     ["study-name", "not blank"]),
    ("storage", S, "optimize --profile {P} --search optuna --trials 1 --storage sqlite:///{W}/s.db --study-name 'a\x1bb'",
     ["study-name", "one line"]),
    ("overwrite", S, "optimize --profile {P} --search optuna --trials 1 --storage 'sqlite:///{W}/q.db?timeout=5' "
     "--out {W}/q.db", ["out", "also an input"]),
    # -- the model's context (profile model.max_context)
    ("context", S, "evaluate --profile a100_llama70b --levels 80 --context 5000", ["context", "5000", "<= 4096"]),
    ("context", S, "optimize --profile cpu_hispec_tiny --context 600", ["context", "of 512"]),
    ("context", S, "serve --profile cpu_hispec_tiny --levels 2,16 --qps 5 --prompt-len 400 --output-len 200",
     ["prompt_len", "400 + 200 (+ 5 of speculation) = 605", ":max="]),
    ("context", S, "serve --profile cpu_hispec_tiny --levels 2,16 --qps 5 --prompt-len 510", ["prompt_len", "of 512"]),
    ("context", S, "capacity --profile cpu_hispec_tiny --qps 5 --slo-ttft-ms 1000 --slo-tbt-ms 50 --prompt-len 480 "
     "--output-len 16", ["prompt_len", "of 512"]),
    ("context", S, "serve --profile cpu_hispec_tiny --levels 2,16 --trace {LONGTRACE}",
     ["trace: request 1 (line 2) needs 500 (prompt) + 20 (max_new_tokens) + 5 (speculation) = 525", "of 512"]),
    ("context", S, "evaluate --profile {CTXOVER} --levels 2,16", ["workloads.w.context", "65 tokens, beyond the model's context of 64"]),
    # -- the twenty-first round
    ("flags", S, "profile measure --acceptance-only --prompts-file {PROMPTS} --field q --workload w --out {W}/m.json",
     ["field", "a jsonl or sharegpt prompts file"]),
    ("flags", S, "validate --profile {P} --prompts-file {PROMPTS} --field q", ["field", "a jsonl or sharegpt prompts file"]),
    ("flags", S, "profile measure --acceptance-only --prompts-file {PROMPTS} --seed 3 --workload w --out {W}/m.json",
     ["seed", "--acceptance-only reads neither"]),
    ("json-shape", S, "serve --profile {P} --levels 16 --trace {BLANKTRACE}", ["trace", "line 1", "whitespace only"]),
    ("json-shape", E, "serve --levels 16 --trace {BLANKTRACE}", ["trace", "line 1", "whitespace only"]),
    ("json-shape", S, "serve --profile {P} --levels 16 --trace {SURROGATETRACE}", ["trace", "line 1", "not valid Unicode"]),
    ("json-shape", E, "serve --levels 16 --trace {SURROGATETRACE}", ["trace", "line 1", "not valid Unicode"]),
    ("json-shape", S, "serve --profile a100_llama70b --levels 80 --trace {TEXTLLAMATRACE}",
     ["trace: request 0 (line 1): prompt", "needs the tokenizer of Llama-2-70B", "prompt_tokens"]),
    ("json-shape", S, "serve --profile {TOKENTEXT} --levels 16 --trace {TEXTLLAMATRACE}",
     ["trace: request 0 (line 1): prompt", "needs the tokenizer of", "prompt_tokens"]),
    ("flags", S, "optimize --profile {P} --mc-streams 10", ["mc_streams", "--search optuna"]),
    ("train", E, "train --out {W}/t --steps 1 --minutes 1", ["minutes", "--steps"]),
    ("flags", S, "profile measure --acceptance-only --prompts-file {PROMPTS} --name foo --workload w --out {W}/m.json",
     ["name", "whose name stays"]),
    ("train", E, "train --out {W}/t --init-from {HF_TOK} --steps 1", ["init_from", "carries a tokenizer (tokenizer.json)"]),
]


def _fill(argv: str, f: dict) -> list[str]:
    import shlex

    return [a.format(**f) for a in shlex.split(argv)]


def _snapshot(*roots: Path) -> dict:
    """Every entry under roots: folders, and files with inode, size and mtime (a write or
    an atomic replace changes one of them)."""
    snap = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            snap[dirpath] = "dir"
            for n in filenames:
                st = os.lstat(os.path.join(dirpath, n))
                snap[os.path.join(dirpath, n)] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return snap


def _main(prog):
    if prog == S:
        from hispec_sim.cli import main
    else:
        from hispec_exec.cli import main
    return main


def _prog_name(prog):
    return "hispec-sim" if prog == S else "hispec-exec"


def check_clean(code, out, err, prog, expect, before, after, status=2):
    lines = err.strip().splitlines()
    assert code == status, (code, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    assert len(lines) == 1, err[-2000:]
    assert lines[0].startswith(f"{_prog_name(prog)}: "), lines[0]
    for s in expect:
        assert s in lines[0], (s, lines[0])
    assert out == "", out[-500:]
    assert after == before, sorted(set(after.items()) ^ set(before.items()))[:5]


@pytest.mark.parametrize("cls,prog,argv,expect", CASES, ids=[f"{c[0]}:{c[1]}:{c[2][:70]}" for c in CASES])
def test_bad_input(work, capsys, monkeypatch, cls, prog, argv, expect):
    w = work["_w"]
    monkeypatch.chdir(w)
    before = _snapshot(w, DEFAULT_CHECKPOINT)
    code = _main(prog)(_fill(argv, work))
    out, err = capsys.readouterr()
    check_clean(code, out, err, prog, expect, before, _snapshot(w, DEFAULT_CHECKPOINT))


def test_table_covers_every_subcommand_and_class():
    classes = {c[0] for c in CASES}
    assert {"nesting", "profile-numbers", "schema", "json-shape", "non-utf8", "special-files", "size", "flags",
            "storage", "overwrite", "unwritable", "vidur", "hf-config", "exec-flags", "train"} <= classes
    first = {(c[1], " ".join(c[2].split()[:2]) if c[2].startswith("profile ") else c[2].split(" ")[0]) for c in CASES}
    for sub in ("schema", "profiles", "evaluate", "optimize", "report", "export", "validate", "profile import-vidur",
                "profile synthetic", "profile measure"):
        assert (S, sub) in first, sub
    for sub in ("info", "run", "generate", "train"):
        assert (E, sub) in first, sub
    assert len(CASES) + len(INTERRUPTS) + len(SIGNALS) >= 150


# --------------------------------------------------------------------------- interrupts
# SIGINT arrives as KeyboardInterrupt at whatever the main thread runs; these cases raise it
# at a fixed point inside the long work (deterministic), then check the one line and exit
# 130, and that nothing was written.


def _interrupt(*a, **k):
    raise KeyboardInterrupt


INTERRUPTS = [
    (S, "hispec_sim.cli.optimized", "optimize --profile {P} --out {W}/best.json"),
    (S, "hispec_sim.search.evaluate_trial",
     "optimize --profile {P} --search optuna --trials 50 --storage sqlite:///{DB} --out {W}/best.json"),
    (S, "hispec_sim.report.compute", "report --profile {P} --out {W}/r.html"),
    (S, "hispec_sim.montecarlo.simulate", "evaluate --profile {P} --levels 2,16 --mc"),
    (S, "hispec_sim.validate.validate", "validate --profile cpu_hispec_tiny --plans 1 --prompts 1 --allow-other-machine --out {W}/v.json"),
    (S, "hispec_exec.measure.measure_latency", "profile measure --prompts 1 --max-new-tokens 8 --out {W}/m.json"),
    (S, "hispec_sim.vidur.import_vidur_full", "profile import-vidur {V_OK} --layers 32 --out {W}/v.json"),
    (E, "hispec_exec.generate.decode", "run --prompts 1 --max-new-tokens 8 --out {W}/r.json"),
    (E, "hispec_exec.generate.decode", "generate --prompt x --max-new-tokens 8"),
    (E, "hispec_exec.train.corpus_bytes", "train --out {W}/t --steps 2 --dim 16 --layers 2 --heads 2 --kv-heads 1 --ffn 16 --seq 8 --batch 2 --max-seq-len 16"),
]


@pytest.mark.parametrize("prog,target,argv", INTERRUPTS, ids=[f"{p}:{a[:60]}" for p, t, a in INTERRUPTS])
def test_interrupt_mid_work(work, capsys, monkeypatch, prog, target, argv):
    import importlib

    w = work["_w"]
    monkeypatch.chdir(w)
    module, name = target.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(module), name, _interrupt)
    before = _snapshot(w, DEFAULT_CHECKPOINT)
    code = _main(prog)(_fill(argv, work))
    out, err = capsys.readouterr()
    after = _snapshot(w, DEFAULT_CHECKPOINT)
    if "optuna" in argv:  # the study database records the interrupted trial; it must stay a database
        db = work["DB"]
        before = {k: v for k, v in before.items() if k != db}
        after = {k: v for k, v in after.items() if k != db}
        con = sqlite3.connect(db)
        assert con.execute("select count(*) from keep").fetchone() == (0,)
        con.close()
    # a profile measured on another CPU is used with a one-line warning (validate --allow-other-machine)
    lines = [line for line in err.strip().splitlines() if ": WARNING: " not in line]
    assert code == 130, err
    assert "Traceback" not in err and len(lines) == 1 and "interrupted" in lines[-1], err
    # an Optuna study keeps the trials it finished (the database): the line says so, not "nothing written"
    assert ("finished trials" in lines[-1]) == ("optuna" in argv) and "written)" in lines[-1], lines[-1]
    assert after == before


# real SIGINT, delivered by the process to itself at a fixed point of the work
SIGNALS = [
    ("hispec_sim.cli", "hispec_sim.search", "evaluate_trial",
     ["optimize", "--profile", "cpu_hispec_tiny", "--search", "optuna", "--trials", "1000", "--storage", "sqlite:///s.db",
      "--out", "best.json"]),
    ("hispec_sim.cli", "hispec_sim.report", "compute", ["report", "--profile", "cpu_hispec_tiny", "--out", "r.html"]),
    ("hispec_sim.cli", "hispec_exec.measure", "measure_latency",
     ["profile", "measure", "--prompts", "1", "--max-new-tokens", "8", "--out", "m.json"]),
]

_SELF_SIGINT = """
import os, signal, sys, importlib
# as a process started from a shell: a parent (pytest-xdist's worker) may have left SIGINT
# ignored, and an ignored disposition survives exec
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
sig = getattr(signal, sys.argv.pop(1))
mod = importlib.import_module(sys.argv[2])
orig = getattr(mod, sys.argv[3])
calls = [0]
def hook(*a, **k):
    calls[0] += 1
    if calls[0] == 1:  # a real signal, in the middle of the work
        os.kill(os.getpid(), sig)
    return orig(*a, **k)
setattr(mod, sys.argv[3], hook)
main = importlib.import_module(sys.argv[1]).main
sys.exit(main(sys.argv[4:]))
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("cli,module,name,argv", SIGNALS, ids=[s[3][0] for s in SIGNALS])
def test_real_sigint(tmp_path, cli, module, name, argv, sig):
    """Ctrl-C, and SIGTERM (kill, timeout, a cancelled CI job) as Ctrl-C with exit 143."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", _SELF_SIGINT, sig, cli, module, name, *argv], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=240)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == (130 if sig == "SIGINT" else 143), r.stderr[-2000:]
    word = "interrupted" if sig == "SIGINT" else "terminated by SIGTERM"
    assert "Traceback" not in r.stderr and len(lines) == 1 and word in lines[0], r.stderr[-2000:]
    assert r.stdout == "" or "train" in argv[0]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left in ([], ["s.db"]), left  # no result file, no empty folder; the study database stays


_SIGINT_IN_STORAGE = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a shell (see _SELF_SIGINT)
from optuna.storages import RDBStorage
orig = RDBStorage.set_trial_state_values
calls = [0]
def hook(self, *a, **k):  # a real signal while the storage writes a trial's result
    calls[0] += 1
    if calls[0] == 3:
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(100_000))  # bytecode of the write's own: where the signal lands
    return orig(self, *a, **k)
RDBStorage.set_trial_state_values = hook
from hispec_sim.cli import main
sys.exit(main(sys.argv[1:]))
"""


_FILE_SIZE_LIMIT = """
import resource, signal, sys
if __name__ == "__main__":  # spawned workers import this file, and inherit the limit
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
    from hispec_sim.cli import main
    sys.exit(main(sys.argv[2:]))
"""


def _optuna_run(tmp_path, launcher: list[str], trials: int, *extra: str):
    """`hispec-sim optimize --search optuna` on the tiny profile, study in tmp_path/s.db,
    started by `launcher` (python arguments: a script that sets the scene first)."""
    argv = ["optimize", "--profile", "cpu_hispec_tiny", "--search", "optuna", "--trials", str(trials),
            "--storage", "sqlite:///s.db", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, *launcher, *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=240)
    return r, r.stderr.strip().splitlines()


def _trial_states(tmp_path) -> list[str]:
    con = sqlite3.connect(tmp_path / "s.db")
    try:
        return [s for (s,) in con.execute("select state from trials")]
    finally:
        con.close()


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file-size limits")
@pytest.mark.parametrize("workers", [1, 2])
def test_storage_full_mid_study(tmp_path, workers):
    """A storage that stops taking writes mid-study (a full disk; here a file-size limit, which
    spawned workers inherit) ends in one line naming the storage and the database's error,
    exit 2, with one worker or two. Before: Optuna's `AssertionError: Should not reach.` (its
    clean-up of a trial it could not store), heartbeat-thread tracebacks, or another worker's
    `Cannot tell a COMPLETE trial`. The study file stays usable: the same command continues it."""
    (tmp_path / "limited.py").write_text(_FILE_SIZE_LIMIT)
    r, lines = _optuna_run(tmp_path, ["limited.py", "150000"], 300, "--workers", str(workers), "--out", "best.json")
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith("hispec-sim: error: storage: writing to sqlite:///s.db failed (OperationalError: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["limited.py", "s.db"]  # no plan written
    stored = _trial_states(tmp_path).count("COMPLETE")
    r, lines = _optuna_run(tmp_path, ["-m", "hispec_sim.cli"], 3)
    assert r.returncode == 0 and "continued" in r.stdout, r.stderr[-2000:]
    assert _trial_states(tmp_path).count("COMPLETE") == stored + 3


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file-size limits")
def test_an_output_the_disk_cannot_hold_is_named(tmp_path):
    """A write that fails half-way (a full disk; here a file-size limit) names the output,
    not the temp file it was writing, and leaves neither."""
    (tmp_path / "limited.py").write_text(_FILE_SIZE_LIMIT)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "limited.py", "4096", "report", "--profile", "cpu_hispec_tiny",
                        "--serving-requests", "0", "--out", "r.html"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=240)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0] == "hispec-sim: error: out: cannot write r.html (File too large)", lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["limited.py"]


@pytest.mark.skipif(not Path("/dev/full").exists() or not Path("/bin/sh").exists(), reason="needs /dev/full and sh")
@pytest.mark.parametrize("redirect,status,said", [
    ("2>&-", 2, None),  # bad input with stderr closed: still 2, not 1 (the error line itself failed)
    ("2>/dev/full", 2, None),
    ("2>&1 >&-", 2, "stdout: closed before the start"),  # stdout closed: not a silent exit 0
])
def test_standard_streams_that_cannot_be_written(tmp_path, redirect, status, said):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    bad = "evaluate --profile nope --levels 2,16" if said is None else "profiles"
    r = subprocess.run(f"{shlex.quote(sys.executable)} -m hispec_sim.cli {bad} {redirect}", shell=True, cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == status, (r.stdout, r.stderr)
    if said:
        assert said in r.stdout + r.stderr and "Traceback" not in r.stdout + r.stderr
    r = subprocess.run(f"{shlex.quote(sys.executable)} -m hispec_sim.cli profiles > /dev/full", shell=True, cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr == "hispec-sim: error: stdout: No space left on device\n", r.stderr
    (tmp_path / "p.json").write_text('{"levels": [2, 16], "propose": 3}')
    r = subprocess.run([sys.executable, "-m", "hispec_sim.cli", "export", "--plan", "p.json", "--to", "exec", "--out",
                        "/dev/stdout"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)  # a pipe
    assert r.returncode == 2 and r.stderr == "hispec-sim: error: out: /dev/stdout is not a regular file\n", r.stderr


@pytest.mark.parametrize("redirect", ["2>&-", "2>/dev/full"])
def test_a_valid_run_whose_notes_cannot_be_written(tmp_path, redirect):
    """serve prints notes on stderr: with stderr closed they must not land in stdout (Python's
    print(file=None) writes there) and corrupt --json; with stderr full the run still succeeds."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run(f"{shlex.quote(sys.executable)} -m hispec_sim.cli serve --profile cpu_hispec_tiny --levels 2,16 "
                       f"--qps 1 --requests 5 --seeds 1 --json {redirect}", shell=True, cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["describe"] == "[2,16] propose=2", r.stdout[:300]


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file-size limits")
def test_storage_that_cannot_be_created_leaves_no_file(tmp_path):
    """No room for a new study database at all: one line, exit 2, and not the empty file
    SQLite had created before it failed."""
    (tmp_path / "limited.py").write_text(_FILE_SIZE_LIMIT)
    r, lines = _optuna_run(tmp_path, ["limited.py", "0"], 5)
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith("hispec-sim: error: storage: cannot open sqlite:///s.db (OperationalError: ")
    assert [p.name for p in tmp_path.iterdir()] == ["limited.py"]


def test_sigint_inside_a_storage_write(tmp_path):
    """Ctrl-C while Optuna writes to its storage stops the study after that trial (every trial
    stored whole, none left running) and ends in one line, exit 130; raised inside the write,
    it left a half-done SQLite transaction (tracebacks, or a process waiting on its own lock)."""
    r, lines = _optuna_run(tmp_path, ["-c", _SIGINT_IN_STORAGE], 1000, "--out", "best.json")
    assert r.returncode == 130, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and len(lines) == 1 and "interrupted" in lines[0], r.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]
    states = _trial_states(tmp_path)
    assert states.count("COMPLETE") >= 2 and set(states) <= {"COMPLETE", "WAITING"}, states  # WAITING: seeded, not run


def test_a_storage_that_refuses_the_study_is_one_line(tmp_path, monkeypatch, capsys):
    """A database that refuses to create the study (a read-only file: `chattr +i` as root gave a
    traceback, round 22 D9) is one line naming the storage and the database's error."""
    import optuna
    from sqlalchemy.exc import OperationalError

    from hispec_sim.cli import main

    def refuse(*a, **k):
        raise optuna.exceptions.StorageInternalError("commit failed") from OperationalError(
            "INSERT INTO studies", {}, sqlite3.OperationalError("attempt to write a readonly database"))
    monkeypatch.setattr(optuna, "create_study", refuse)
    monkeypatch.chdir(tmp_path)
    code = main(["optimize", "--profile", "cpu_hispec_tiny", "--search", "optuna", "--trials", "2",
                 "--storage", "sqlite:///s.db"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["hispec-sim: error: storage: writing to sqlite:///s.db failed (OperationalError: "
                                 "attempt to write a readonly database)"], err
