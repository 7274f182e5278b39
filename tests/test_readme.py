"""The README's shell blocks run as written, in order, in an empty folder: the README
cannot rot.

A ```bash block whose first line is `# not run by tests: <why>` is skipped (a server, the
test suite itself, a user's own data). Long commands get small arguments through SUBS,
each substitution exact and used at least once, so this table cannot rot either.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SKIP_MARK = "# not run by tests:"

# (as written in the README, what the test runs instead)
SUBS = [
    ("pip install -e . && ", ""),  # the test runs the checkout it is part of (already installed)
    ("--out report.html --target-tps", "--out report.html --max-batch 16 --target-tps"),
    ("hispec-exec run --plan run.json --check\n", "hispec-exec run --plan run.json --check --prompts 1 --max-new-tokens 16\n"),
    ("--check --json ", "--check --json --prompts 1 --max-new-tokens 16 "),
    ("--prompts 4 --max-new-tokens 128 --check", "--prompts 1 --max-new-tokens 16 --check"),
    ("--mode sampling --seed 1", "--mode sampling --seed 1 --prompts 1 --max-new-tokens 16"),
    ("--levels 4,16 --propose 3", "--levels 4,16 --propose 3 --max-new-tokens 16"),
    ("--trials 100 --seed 1", "--trials 5 --seed 1"),
    ("train --minutes 25", "train --steps 2 --layers 4 --dim 32 --heads 2 --kv-heads 1 --ffn 64 --seq 64 --batch 2"),
    ("profile measure --out", "profile measure --repeats 3 --attempts 1 --prompts 2 --max-new-tokens 16 --out"),
    ("--plans 6 --seed 7", "--plans 1 --seed 7 --max-new-tokens 16"),
    ("serve --qps 4 --requests 64 ", "serve --qps 4 --requests 3 --output-len 8 "),
    ("--cv 3 --requests 32 ", "--cv 3 --requests 3 "),
    ("--qps 2 --requests 1000 --seeds 3", "--qps 2 --requests 50 --seeds 1"),
    ("capacity --profile a100_llama70b --qps 50", "capacity --profile a100_llama70b --requests 60 --seeds 1 --qps 50"),
]


def readme_blocks() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M)


def test_readme_blocks_are_runnable_or_say_why_not():
    blocks = readme_blocks()
    skipped = [b for b in blocks if b.startswith(SKIP_MARK)]
    assert len(blocks) >= 8
    assert len(skipped) <= 5, "keep exclusions few"
    for b in skipped:
        assert len(b.splitlines()[0]) > len(SKIP_MARK) + 5, f"say why: {b.splitlines()[0]}"
    for b in blocks:
        assert "[--" not in b, f"optional flags in brackets do not run as written: {b}"


@pytest.mark.slow  # minutes: 10 processes import torch, one measures a profile
def test_readme_runs_end_to_end(tmp_path):
    used = {old: 0 for old, _ in SUBS}
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    for block in readme_blocks():
        if block.startswith(SKIP_MARK):
            continue
        script = block
        for old, new in SUBS:
            used[old] += script.count(old)
            script = script.replace(old, new)
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, f"README block failed:\n{block}\n--- stderr:\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert all(used.values()), f"substitutions that match nothing in the README: {[k for k, v in used.items() if not v]}"
    # the planning flow left what it promises
    for f in ("plan.json", "report.html", "tiny_plan.json", "run.json", "my_tiny.json", "what_if.json"):
        assert (tmp_path / f).is_file(), f
    assert (tmp_path / "my_model" / "model.safetensors").is_file()
