"""Corpus: the Python standard library's .py files, byte-level tokens (vocab 256).

Files are split into train / held-out by a hash of their path relative to the stdlib
folder. The held-out files are shipped (corpus/heldout.tar.xz, CPython 3.11.7's): every
prompt is drawn from them, so a seed gives the same prompts on every machine and Python
version (the running interpreter's own stdlib differs between versions, even patch ones).
Training reads the running interpreter's stdlib (train split).
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import sysconfig
import tarfile
from functools import lru_cache
from pathlib import Path

HELDOUT_PERCENT = 10
MAX_FILE_BYTES = 400_000  # skip a few huge generated tables
HELDOUT_ARCHIVE = Path(__file__).parent / "corpus" / "heldout.tar.xz"


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
def heldout_files(archive: Path = HELDOUT_ARCHIVE) -> tuple[tuple[str, bytes], ...]:
    """The shipped held-out files: (path relative to the stdlib folder, contents), in the
    order corpus_files gives them."""
    with tarfile.open(archive, "r:xz") as tar:
        return tuple((m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile())


def write_heldout_archive(out: Path) -> None:
    """Ship the running interpreter's held-out files (how corpus/heldout.tar.xz was made,
    under CPython 3.11.7; corpus/README.md)."""
    root = stdlib_root()
    with tarfile.open(out, "w:xz", format=tarfile.PAX_FORMAT) as tar:
        for p in corpus_files("heldout"):
            data = p.read_bytes()
            info = tarfile.TarInfo(p.relative_to(root).as_posix())
            info.size, info.mode = len(data), 0o644  # mtime 0: the same archive from the same files
            tar.addfile(info, io.BytesIO(data))


@lru_cache(maxsize=2)
def corpus_bytes(split: str) -> bytes:
    """All files of a split concatenated (each followed by a blank line); held-out: the
    shipped files."""
    if split == "heldout":
        return b"".join(data + b"\n\n" for _, data in heldout_files())
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


def prompt_set_of(rel: str) -> str:
    """'A' or 'B' for a held-out file (its path relative to the stdlib folder): a second
    hash splits the held-out files into two disjoint prompt sets (generalisation: a profile
    measured on set A predicts runs on set B, other files)."""
    return "AB"[hashlib.sha256(("set:" + rel).encode()).digest()[0] % 2]


def heldout_prompts(n: int, prompt_len: int = 64, seed: int = 0, prompt_set: str | None = None) -> list[list[int]]:
    """n deterministic held-out prompts of prompt_len bytes, each starting at a line start,
    from the shipped held-out files (the same on every machine); prompt_set 'A' or 'B'
    draws only from that half of them (None: all)."""
    if n < 1 or prompt_len < 1:
        raise ValueError("prompts: n and prompt_len must be >= 1")
    if prompt_set not in (None, "A", "B"):
        raise ValueError(f"prompt_set: must be A or B, got {prompt_set!r}")
    rng = random.Random(seed)
    files = [data for rel, data in heldout_files() if prompt_set is None or prompt_set_of(rel) == prompt_set]
    if not any(len(data) >= prompt_len + 512 for data in files):
        raise ValueError(f"prompt_len: no held-out file is long enough for {prompt_len}-byte prompts")
    out = []
    while len(out) < n:
        data = files[rng.randrange(len(files))]
        if len(data) < prompt_len + 256:
            continue
        starts = [i + 1 for i in range(len(data) - prompt_len - 256) if data[i] == 10 and data[i + 1] not in (10, 32)]
        if not starts:
            continue
        s = starts[rng.randrange(len(starts))]
        out.append(list(data[s:s + prompt_len]))
    return out
