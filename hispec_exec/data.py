"""Corpus: the Python standard library's .py files, byte-level tokens (vocab 256).

Files are split into train / held-out by a hash of their path relative to the stdlib
folder, so the split is the same on every machine with the same Python version.
"""
from __future__ import annotations

import hashlib
import os
import random
import sysconfig
from functools import lru_cache
from pathlib import Path

HELDOUT_PERCENT = 10
MAX_FILE_BYTES = 400_000  # skip a few huge generated tables


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_heldout(relpath: str) -> bool:
    h = int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:8], "little")
    return h % 100 < HELDOUT_PERCENT


@lru_cache(maxsize=None)
def corpus_files(split: str) -> tuple[Path, ...]:
    if split not in ("train", "heldout"):
        raise ValueError(f"split: must be train or heldout, got {split!r}")
    root = stdlib_root()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
        for f in sorted(filenames):
            if not f.endswith(".py"):
                continue
            p = Path(dirpath) / f
            try:
                if p.stat().st_size > MAX_FILE_BYTES or p.stat().st_size < 64:
                    continue
            except OSError:
                continue
            rel = p.relative_to(root).as_posix()
            if is_heldout(rel) == (split == "heldout"):
                out.append(p)
    return tuple(out)


@lru_cache(maxsize=2)
def corpus_bytes(split: str) -> bytes:
    """All files of a split concatenated (each followed by a blank line)."""
    parts = []
    for p in corpus_files(split):
        try:
            parts.append(p.read_bytes() + b"\n\n")
        except OSError:
            continue
    return b"".join(parts)


def encode(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode_bytes(ids) -> str:
    return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


def prompt_set_of(path: Path) -> str:
    """'A' or 'B': a second hash splits the held-out files into two disjoint prompt sets
    (generalisation: a profile measured on set A predicts runs on set B, other files)."""
    rel = path.relative_to(stdlib_root()).as_posix()
    return "AB"[hashlib.sha256(("set:" + rel).encode()).digest()[0] % 2]


def heldout_prompts(n: int, prompt_len: int = 64, seed: int = 0, prompt_set: str | None = None) -> list[list[int]]:
    """n deterministic held-out prompts of prompt_len bytes, each starting at a line start;
    prompt_set 'A' or 'B' draws only from that half of the held-out files (None: all)."""
    if n < 1 or prompt_len < 1:
        raise ValueError("prompts: n and prompt_len must be >= 1")
    if prompt_set not in (None, "A", "B"):
        raise ValueError(f"prompt_set: must be A or B, got {prompt_set!r}")
    rng = random.Random(seed)
    files = [p for p in corpus_files("heldout") if prompt_set is None or prompt_set_of(p) == prompt_set]
    if not any(p.stat().st_size >= prompt_len + 512 for p in files):
        raise ValueError(f"prompt_len: no held-out file is long enough for {prompt_len}-byte prompts")
    out = []
    while len(out) < n:
        data = files[rng.randrange(len(files))].read_bytes()
        if len(data) < prompt_len + 256:
            continue
        starts = [i + 1 for i in range(len(data) - prompt_len - 256) if data[i] == 10 and data[i + 1] not in (10, 32)]
        if not starts:
            continue
        s = starts[rng.randrange(len(starts))]
        out.append(list(data[s:s + prompt_len]))
    return out
