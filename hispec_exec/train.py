"""LayerSkip-style training of the small early-exit model on the stdlib corpus.

Recipe (Elhoushi et al. 2024, LayerSkip): early-exit loss at every layer through the
shared final norm + LM head, weighted by a scale rising with depth; layer dropout with a
rate rising with depth (0 at the first layer). One CPU thread by default.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .data import corpus_bytes
from .model import ModelArgs, Transformer


def exit_weights(L: int, scale: float) -> list[float]:
    w = [scale * (l + 1) / L for l in range(L - 1)] + [1.0]
    s = sum(w)
    return [x / s for x in w]


def batches(data: torch.Tensor, batch: int, seq: int, gen: torch.Generator):
    while True:
        ix = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        x = torch.stack([data[i:i + seq + 1] for i in ix.tolist()]).long()
        yield x[:, :-1], x[:, 1:]


@torch.no_grad()
def evaluate(model: Transformer, data: torch.Tensor, windows: int = 32, seq: int = 256, seed: int = 1234) -> dict:
    """Held-out loss of every exit and greedy agreement of every exit with the last layer
    (teacher forced on held-out text)."""
    model.eval()
    seq = min(seq, model.args.max_seq_len)  # a model trained with a shorter context
    g = torch.Generator().manual_seed(seed)
    ix = torch.randint(0, len(data) - seq - 1, (windows,), generator=g)
    L = model.num_layers
    loss = torch.zeros(L)
    agree = torch.zeros(L)
    n = 0
    for chunk in ix.split(8):
        x = torch.stack([data[i:i + seq + 1] for i in chunk.tolist()]).long()
        hs = model.forward_train(x[:, :-1])
        last = model.logits(hs[-1]).argmax(-1)
        for l, h in enumerate(hs):
            lg = model.logits(h)
            loss[l] += F.cross_entropy(lg.flatten(0, 1), x[:, 1:].flatten(), reduction="sum")
            agree[l] += (lg.argmax(-1) == last).sum()
        n += x[:, 1:].numel()
    model.train()
    return {"loss": (loss / n).tolist(), "agreement_with_last": (agree / n).tolist(), "tokens": n}


def train(out_dir: str | Path, args: ModelArgs | None = None, minutes: float = 25.0, steps: int | None = None,
          batch: int = 16, seq: int = 256, lr: float = 3e-3, warmup: int = 100, exit_scale: float = 0.3, rotate: int = 4,
          dropout_max: float = 0.1, threads: int = 1, seed: int = 0, log_every: int = 25,
          eval_every: int = 500, init_from: str | Path | None = None, log=print) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    args = args or ModelArgs()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = Transformer(args)
    if init_from is not None:  # continue training a checkpoint (fresh optimizer, same recipe)
        from .checkpoint import load_model

        model = load_model(init_from).train()
        args = model.args
    L = args.n_layers
    train_data = torch.frombuffer(bytearray(corpus_bytes("train")), dtype=torch.uint8)
    held_data = torch.frombuffer(bytearray(corpus_bytes("heldout")), dtype=torch.uint8)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    w_exit = exit_weights(L, exit_scale)
    p_drop = [dropout_max * l / (L - 1) for l in range(L)]  # 0 at layer 1, dropout_max at layer L
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    it = batches(train_data, batch, seq, gen)
    budget = minutes * 60.0 if steps is None else None
    t0 = time.perf_counter()
    hist = {"step": [], "time_s": [], "loss_last": [], "loss_mean_exit": [], "lr": []}
    evals = []
    step = 0
    log(f"train: {model.num_params() / 1e6:.2f}M params, {L} layers, dim {args.dim}, "
        f"{len(train_data) / 1e6:.1f}M train bytes, batch {batch}x{seq}")
    while True:
        el = time.perf_counter() - t0
        frac = (el / budget) if budget else (step / steps)
        if frac >= 1.0:
            break
        cur = lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for gr in opt.param_groups:
            gr["lr"] = cur
        x, y = next(it)
        skip = {l for l in range(L) if rng.random() < p_drop[l]}
        hs = model.forward_train(x, skip)
        # rotational curriculum: the last exit every step, `rotate` of the early exits in turn
        # (weights scaled up so the expected loss is the full early-exit loss)
        early = [l for l in range(L - 1) if (l - step) % (L - 1) < rotate] if rotate < L - 1 else list(range(L - 1))
        active = early + [L - 1]
        H = torch.stack([hs[l] for l in active])  # (k, B, T, d)
        lg = model.logits(H)
        ce = F.cross_entropy(lg.flatten(0, 2), y.repeat(len(active), 1, 1).flatten(), reduction="none").view(len(active), -1).mean(1)
        wt = torch.tensor([w_exit[l] * (L - 1) / len(early) for l in early] + [w_exit[-1]])
        loss = (ce * wt).sum()
        ce_by = dict(zip(active, ce.detach().tolist()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % log_every == 0:
            el = time.perf_counter() - t0
            hist["step"].append(step)
            hist["time_s"].append(round(el, 1))
            hist["loss_last"].append(round(ce_by[L - 1], 4))
            hist["loss_mean_exit"].append(round(sum(ce_by.values()) / len(ce_by), 4))
            hist["lr"].append(cur)
            log(f"step {step} {el:.0f}s lr {cur:.2e} loss_last {ce_by[L - 1]:.3f} early exits "
                + " ".join(f"{l + 1}:{v:.3f}" for l, v in ce_by.items() if l < L - 1)
                + f" tok/s {step * batch * seq / el:.0f}")
        if eval_every and step % eval_every == 0:
            e = evaluate(model, held_data, windows=8)
            evals.append({"step": step, **e})
            save(model, out_dir, {"partial": True, "history": hist, "evals": evals})
    train_s = time.perf_counter() - t0
    final = evaluate(model, held_data, windows=64)
    info = {
        "recipe": {"batch": batch, "seq": seq, "lr": lr, "warmup": warmup, "exit_scale": exit_scale, "rotate": rotate,
                   "exit_weights": w_exit, "layer_dropout": p_drop, "threads": threads, "seed": seed,
                   "init_from": str(init_from) if init_from else None,
                   "optimizer": "AdamW(0.9,0.95) wd 0.1, cosine to 10%, clip 1.0"},
        "steps": step, "train_seconds": round(train_s, 1), "tokens_seen": step * batch * seq,
        "tokens_per_s": round(step * batch * seq / train_s, 1),
        "params": model.num_params(),
        "corpus": "python stdlib .py files (train split), byte tokens",
        "heldout": final, "history": hist, "evals": evals,
    }
    save(model, out_dir, info)
    log("heldout loss per exit: " + " ".join(f"{v:.3f}" for v in final["loss"]))
    log("agreement with last:   " + " ".join(f"{v:.3f}" for v in final["agreement_with_last"]))
    return info


CHECKPOINT_FILES = ("model.safetensors", "config.json", "train_log.json")


def _temp_name(name: str, pid: int | str = "") -> tuple[str, str]:
    """(prefix, suffix) of the temp file process `pid` writes for one of CHECKPOINT_FILES
    (any process's, without a pid)."""
    return f".{name}.{pid}", ".tmp"


def _remove_dead_writers_temps(folder: Path) -> None:
    """Remove the temp files of saves whose process is gone (killed before its rename): a
    model's worth of disk each. Call under the folder's lock; a live writer's stay."""
    import os
    import re

    if os.name != "posix":  # pragma: no cover -- os.kill(pid, 0) probes a process on POSIX only
        return
    names = "|".join(map(re.escape, CHECKPOINT_FILES))
    for p in folder.iterdir():
        m = re.fullmatch(rf"\.(?:{names})\.(\d+)\..*\.tmp", p.name)
        if m is None or int(m[1]) == os.getpid():
            continue
        try:
            os.kill(int(m[1]), 0)
        except ProcessLookupError:
            p.unlink(missing_ok=True)
        except (PermissionError, OverflowError):  # another user's live process; a pid beyond the platform's
            pass


def is_checkpoint_folder(folder: Path) -> bool:
    """A folder `train` wrote: its files (and temp files a killed save left), with our own
    config -- not a Hugging Face model or another project's folder that has a config.json."""
    from .checkpoint import _read_json

    names = [p.name for p in folder.iterdir()]
    temps = [_temp_name(f) for f in CHECKPOINT_FILES]
    if not all(n in CHECKPOINT_FILES or any(n.startswith(a) and n.endswith(b) for a, b in temps) for n in names):
        return False
    if "config.json" not in names:
        return True  # only the temp files of a first save that was killed: nothing of anyone else's
    try:
        cfg = _read_json(folder / "config.json", "out")
    except ValueError:
        return False
    return "model_type" not in cfg and "architectures" not in cfg


def save(model: Transformer, out_dir: Path, log: dict) -> None:
    """The checkpoint whole or not at all: weights, config and log written to temp files of
    their own (two runs into one folder never share one), then, under the folder's lock and
    with SIGINT / SIGTERM / SIGHUP held until it is done, the three renamed into place -- an
    interrupt leaves the previous checkpoint or this one, never a mix."""
    import os
    import signal
    import tempfile

    from safetensors.torch import save_file

    from hispec_sim.cli_common import shown
    from hispec_sim.entry import TERMINATING, handling, interrupt, not_ignored
    from hispec_sim.schema import file_mode, folder_locked

    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.args.tie_embeddings:
        sd.pop("output.weight", None)
    texts = {"config.json": model.args.to_json() + "\n", "train_log.json": json.dumps(log, indent=1) + "\n"}
    temps: dict[str, str] = {}
    try:
        for name in CHECKPOINT_FILES:
            prefix, suffix = _temp_name(name, f"{os.getpid()}.")
            fd, temps[name] = tempfile.mkstemp(dir=out_dir, prefix=prefix, suffix=suffix)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(texts.get(name, ""))
        save_file(sd, temps["model.safetensors"])
        for name, tmp in temps.items():
            os.chmod(tmp, file_mode(out_dir / name))
        caught: list[int] = []
        with folder_locked(out_dir, f"hispec-exec: waiting for the lock on {shown(out_dir)} (another command is "
                                    "writing a checkpoint there)"), \
                handling(not_ignored((signal.SIGINT, *TERMINATING)), lambda signum, frame: caught.append(signum)):
            for name, tmp in temps.items():
                os.replace(tmp, out_dir / name)
            _remove_dead_writers_temps(out_dir)
        if caught:  # held while the files were renamed: it ends the run now
            raise interrupt(caught[0])
    except Exception as e:  # a full disk, a file-size limit (safetensors raises its own error type)
        raise ValueError(f"out: cannot write the checkpoint in {out_dir} ({str(e).splitlines()[0][:160]})") from None
    finally:
        for tmp in temps.values():
            Path(tmp).unlink(missing_ok=True)
