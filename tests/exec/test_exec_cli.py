"""CLI golden cases: info keys, run --check on the shipped model, one-line errors (exit 2)."""
import json
from pathlib import Path

import pytest
import torch

from hispec_exec.checkpoint import DEFAULT_CHECKPOINT
from hispec_exec.cli import main


def test_info_json_keys(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for k in ("model", "layers", "params", "dim", "heads", "kv_heads", "ffn", "vocab", "max_seq_len", "exits",
              "training"):
        assert k in info
    assert info["layers"] >= 16 and info["params"] <= 10_500_000
    assert info["exits"] == list(range(1, info["layers"] + 1))
    assert len(info["training"]["heldout_loss_per_exit"]) == info["layers"]
    from hispec_sim.schema import load_profile  # the digest a profile of this model records

    assert info["weights"] == load_profile("cpu_hispec_tiny").model.weights


def test_run_check_json_shipped(capsys):
    assert main(["run", "--levels", "2,4,16", "--propose", "2", "--window", "4", "--prompts", "2",
                 "--max-new-tokens", "48", "--check", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["identical_to_autoregressive"] is True
    assert out["family"] == "3_level" and out["plan"]["levels"] == [2, 4, 16]
    for k in ("tokens_per_s", "autoregressive_tokens_per_s", "speedup_vs_autoregressive", "acceptance_per_level",
              "tokens_per_full_forward", "forwards_per_level", "layer_tokens"):
        assert k in out
    assert len(out["acceptance_per_level"]) == 2  # levels 2..k, as the simulator's
    assert out["tokens_per_full_forward"] >= 1.0


def test_run_plan_file_and_out(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"plan": {"levels": [3, 16], "propose": 3}}))
    out = tmp_path / "r.json"
    assert main(["run", "--plan", str(plan), "--prompts", "1", "--max-new-tokens", "24", "--check",
                 "--out", str(out)]) == 0
    r = json.loads(out.read_text(encoding="utf-8"))
    assert r["identical_to_autoregressive"] is True and r["family"] == "single_level"
    assert "speedup" in capsys.readouterr().out


def test_run_progress(capsys, monkeypatch):
    """--progress logs each decode (and, within one, every PROGRESS_S); without it, off a
    terminal, stderr stays empty."""
    import hispec_exec.cli as cli

    args = ["run", "--levels", "2,16", "--propose", "3", "--prompts", "2", "--max-new-tokens", "12", "--json"]
    assert main(args) == 0
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(cli, "PROGRESS_S", 0.0)
    assert main([*args, "--progress"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["prompts"] == 2  # stdout stays the report
    lines = cap.err.splitlines()
    assert lines[0].startswith("[run ") and lines[0].endswith("] warm-up")
    for i in (1, 2):
        done = [int(ln.split(": ")[1].split("/")[0]) for ln in lines if f"prompt {i}/2, plan: " in ln]
        assert done == sorted(done) and done[-1] == 12  # one line per forward here, clipped at 12
        assert any(f"prompt {i}/2, autoregressive: " in ln for ln in lines)
        assert sum(f"prompt {i}/2: plan " in ln and "autoregressive" in ln for ln in lines) == 1


def test_run_sampling(capsys):
    assert main(["run", "--levels", "2,16", "--propose", "3", "--mode", "sampling", "--prompts", "1",
                 "--max-new-tokens", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "sampling" and "identical_to_autoregressive" not in out


def test_generate(capsys):
    assert main(["generate", "--prompt", "import os\n", "--levels", "2,4,16", "--window", "4",
                 "--max-new-tokens", "20"]) == 0
    cap = capsys.readouterr()
    assert cap.out.startswith("import os\n") and "tokens/s" in cap.err


def test_generate_prints_the_prompt_as_typed_and_what_follows():
    """A tokenizer that normalises (whitespace collapsed, words joined by spaces) decodes the
    prompt otherwise than it was typed: generate prints the prompt as typed and then only what
    the new tokens add (it printed the prompt's decode; round 22, M6)."""
    from hispec_exec.cli import with_continuation
    from hispec_exec.prompts import TextCodec

    words = ["def", "f(x):", "return", "x"]
    codec = TextCodec(lambda t: [words.index(w) for w in t.split()], lambda ids: " ".join(words[i] for i in ids), "w")
    assert with_continuation("def   f(x):", codec, [0, 1], [2, 3]) == "def   f(x): return x"
    odd = TextCodec(codec.encode, lambda ids: "".join(words[i] for i in reversed(ids)), "w")  # no prefix: all of it
    assert with_continuation("def f(x):", odd, [0, 1], [2]) == "returnf(x):def"


def _corrupt(tmp_path, what):
    d = tmp_path / what
    d.mkdir()
    for f in ("config.json", "model.safetensors"):
        (d / f).write_bytes((DEFAULT_CHECKPOINT / f).read_bytes())
    if what == "corrupt":
        (d / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    elif what == "shapes":
        cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
        cfg["ffn_dim"] += 8
        (d / "config.json").write_text(json.dumps(cfg))
    elif what == "missing":
        (d / "model.safetensors").unlink()
    elif what == "badjson":
        (d / "config.json").write_text("{not json")
    return str(d)


@pytest.mark.parametrize("args_fn,field", [
    (lambda t: ["run", "--levels", "2,4,17", "--window", "4"], "levels"),
    (lambda t: ["run", "--levels", "2,8"], "levels"),
    (lambda t: ["run", "--levels", "4,2,16", "--window", "4"], "levels"),
    (lambda t: ["run", "--levels", "2,x,16"], "levels"),
    (lambda t: ["run", "--levels", "2,4,16"], "window"),
    (lambda t: ["run", "--levels", "2,16", "--propose", "0"], "propose"),
    (lambda t: ["run", "--levels", "16", "--prompts", "0"], "prompts"),
    (lambda t: ["run", "--plan", str(t / "nope.json")], "plan"),
    (lambda t: ["info", "--model", str(t / "nothing")], "model"),
    (lambda t: ["info", "--model", _corrupt(t, "corrupt")], "model"),
    (lambda t: ["info", "--model", _corrupt(t, "shapes")], "model"),
    (lambda t: ["info", "--model", _corrupt(t, "missing")], "model"),
    (lambda t: ["info", "--model", _corrupt(t, "badjson")], "model"),
    (lambda t: ["generate", "--prompt", ""], "prompt"),
    (lambda t: ["run", "--bogus"], "unrecognized"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, args_fn, field):
    rc = main(args_fn(tmp_path))  # in-process: the same main the console script calls
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert field in lines[0], lines[0]


TINY_TRAIN = ["train", "--steps", "1", "--dim", "16", "--layers", "2", "--heads", "2", "--kv-heads", "1", "--ffn", "16",
              "--seq", "8", "--batch", "2"]


def test_train_a_model_with_a_short_context(tmp_path, capsys):
    """The held-out evaluation fits the model's context (it read 256 tokens, and a model of
    --max-seq-len 255 or less crashed after its training)."""
    assert main([*TINY_TRAIN, "--max-seq-len", "64", "--out", str(tmp_path / "t")]) == 0, capsys.readouterr().err
    log = json.loads((tmp_path / "t" / "train_log.json").read_text())
    assert len(log["heldout"]["loss"]) == 2 and log["heldout"]["tokens"] == 64 * 64


def test_train_default_window_fits_a_256_token_context(tmp_path, capsys):
    """--max-seq-len 256 with the default --seq (256) trains on 255 tokens: it was refused."""
    argv = [a for a in TINY_TRAIN if a not in ("--seq", "8")]
    assert main([*argv, "--max-seq-len", "256", "--out", str(tmp_path / "t")]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "t" / "train_log.json").read_text())["recipe"]["seq"] == 255


def test_train_that_cannot_write_its_weights_says_so(tmp_path, capsys, monkeypatch):
    """safetensors' own error type (a full disk, a file-size limit) ends as one line, exit 2,
    and no folder is left."""
    import safetensors.torch

    def full_disk(*a, **k):
        open(a[1], "wb").close()  # what a failing write leaves: a partial temp file
        raise RuntimeError("Error while serializing: I/O error: File too large (os error 27)")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    assert main([*TINY_TRAIN, "--max-seq-len", "16", "--out", str(tmp_path / "t")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hispec-exec: error: out: cannot write ") and "File too large" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_ships_in_package():
    from hispec_exec import load_model

    assert (DEFAULT_CHECKPOINT / "model.safetensors").stat().st_size <= 25 * 2 ** 20
    assert (DEFAULT_CHECKPOINT / "train_log.json").exists()
    m = load_model()
    assert m.num_layers >= 16 and m.num_params() <= 10_500_000
    assert Path(__file__).resolve().parents[2].joinpath("hispec_exec", "checkpoints").samefile(DEFAULT_CHECKPOINT)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_run_check_cuda(capsys):
    assert main(["run", "--device", "cuda", "--levels", "2,4,16", "--window", "4", "--prompts", "2",
                 "--max-new-tokens", "48", "--check", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # CUDA kernels change with shape: identical except at a near-tie, which --check reports
    assert out["device"].startswith("cuda")
    assert out["identical_to_autoregressive"] is True or out["first_divergence"]["near_tie"] is True


def test_train_interrupted_while_saving_leaves_one_whole_checkpoint(tmp_path, capsys, monkeypatch):
    """A Ctrl-C that lands while the checkpoint's files are renamed into place waits until all
    three are in (sixteenth fuzz round: new weights beside the old config.json, a folder that
    no longer loaded, and "nothing written" said)."""
    import os
    import signal

    from hispec_exec import load_model

    out = tmp_path / "t"
    assert main([*TINY_TRAIN, "--max-seq-len", "16", "--out", str(out)]) == 0
    capsys.readouterr()
    real = os.replace

    def interrupted(src, dst):
        os.kill(os.getpid(), signal.SIGINT)  # a real signal, at the first rename
        return real(src, dst)

    monkeypatch.setattr(signal, "signal", signal.signal)  # restored after the test
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a shell (xdist workers may ignore it)
    monkeypatch.setattr(os, "replace", interrupted)
    wider = [a if a != "16" or i != TINY_TRAIN.index("--dim") + 1 else "32" for i, a in enumerate(TINY_TRAIN)]
    code = main([*wider, "--max-seq-len", "16", "--out", str(out)])
    monkeypatch.setattr(os, "replace", real)
    assert code == 130 and "interrupted (" in capsys.readouterr().err
    assert load_model(out).args.dim == 32 and sorted(p.name for p in out.iterdir()) == [
        "config.json", "model.safetensors", "train_log.json"]  # the new one, whole; no temp file left


def test_a_killed_saves_temp_files_are_removed_by_the_next_save(tmp_path, capsys):
    """A save killed before its rename leaves hidden temp files (a model's worth of disk);
    the next save into the folder removes those of processes that are gone, and keeps a live
    writer's (seventeenth round's retry, docs check 18)."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ckpt"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = int(dead.stdout)  # a process that has exited
    stale = [out / f".model.safetensors.{gone}.abc123.tmp", out / f".config.json.{gone}.x1.tmp"]
    live = out / f".train_log.json.{os.getppid()}.zz.tmp"  # a live process's save in progress
    for f in (*stale, live):
        f.write_bytes(b"partial")
    assert main([*TINY_TRAIN, "--max-seq-len", "16", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", "model.safetensors", "train_log.json",
                                                             live.name])


def test_train_replaces_only_its_own_checkpoints(tmp_path, capsys):
    """A folder with a config.json that `train` did not write -- a Hugging Face model, a
    project's folder -- is refused, untouched (seventeenth fuzz round: it was overwritten)."""
    for name, files in (("hf", {"config.json": '{"model_type": "llama"}', "tokenizer.json": "{}"}),
                        ("proj", {"config.json": '{"database": "prod"}', "notes.txt": "x"})):
        folder = tmp_path / name
        folder.mkdir()
        for f, text in files.items():
            (folder / f).write_text(text)
        assert main([*TINY_TRAIN, "--max-seq-len", "16", "--out", str(folder)]) == 2
        assert "is a folder holding other files" in capsys.readouterr().err
        assert {f.name: f.read_text() for f in folder.iterdir()} == files
