"""Both profile builders, run on the vendored sources (profiles/sources/) only, reproduce the
committed profiles (issue 10: a fresh clone can rebuild what it ships): the same text, except
that a number may differ by one unit in its last printed digit, because another CPU's vector
code (or BLAS) can round a value that sits on a rounding boundary the other way."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCES = REPO / "profiles" / "sources"
BUILDERS = {
    "studies/profiles/build_profiles.py": ["a100_llama70b", "h100_llama70b", "a100_llama2_7b"],
    "studies/paper_inputs/build_paper_profiles.py": [f"h100_{k}" for k in ("llama3_8b", "llama2_7b", "llama2_13b",
                                                                             "codellama_7b", "codellama_34b", "llama2_70b")],
}


@pytest.mark.slow  # end to end: each builder rebuilds its profiles from the vendored sources
@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_builder_reproduces_committed_profiles(builder, tmp_path):
    args = [sys.executable, str(REPO / builder), "--out", str(tmp_path)]
    if "paper" in builder:
        args.append("--no-optimize")  # the optima note is a study output, not a profile
    # default DATA_DIR: the vendored folder; cwd elsewhere so nothing relative to it can be read
    r = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    written = sorted(p.stem for p in tmp_path.glob("*.json"))
    assert written == sorted(BUILDERS[builder])
    for name in written:
        new = (tmp_path / f"{name}.json").read_text(encoding="utf-8")
        old = (REPO / "profiles" / f"{name}.json").read_text(encoding="utf-8")
        assert same_to_last_digit(new, old) == [], f"{name}: rebuilt profile differs from profiles/{name}.json"


def same_to_last_digit(new: str, old: str) -> list[str]:
    """Where the JSON texts differ beyond one unit in the last digit `old` prints (keys,
    strings and the order of lists exactly); [] when they agree."""
    a = json.loads(new, parse_float=lambda t: (float(t), t))
    b = json.loads(old, parse_float=lambda t: (float(t), t))
    out: list[str] = []

    def walk(x, y, at):
        if isinstance(y, tuple) and isinstance(x, tuple):
            digits = len(y[1].split("e")[0].partition(".")[2])
            exponent = int(y[1].split("e")[1]) if "e" in y[1] else 0
            if not math.isclose(x[0], y[0], rel_tol=0, abs_tol=1.0001 * 10.0 ** (exponent - digits)):
                out.append(f"{at}: {x[1]} != {y[1]}")
        elif isinstance(y, dict) and isinstance(x, dict):
            if list(x) != list(y):
                out.append(f"{at}: keys {list(x)} != {list(y)}")
            for k in [k for k in y if k in x]:
                walk(x[k], y[k], f"{at}.{k}")
        elif isinstance(y, list) and isinstance(x, list) and len(x) == len(y):
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{at}[{i}]")
        elif x != y or type(x) is not type(y):
            out.append(f"{at}: {x!r} != {y!r}")

    walk(a, b, "$")
    return out[:10]


def test_comparison_allows_one_unit_in_the_last_digit_only():
    assert same_to_last_digit('{"a": [0.12346, 1.5e-07, -0.0]}', '{"a": [0.12345, 1.4e-07, 0.0]}') == []
    assert same_to_last_digit('{"a": 0.12347}', '{"a": 0.12345}') == ["$.a: 0.12347 != 0.12345"]
    assert same_to_last_digit('{"a": 2}', '{"a": 1}') == ["$.a: 2 != 1"]  # integers exactly
    assert same_to_last_digit('{"a": "x", "b": 1}', '{"b": 1, "a": "x"}') == ["$: keys ['a', 'b'] != ['b', 'a']"]
    assert same_to_last_digit('[1.0]', '[1.0, 2.0]') != []


def test_sources_are_vendored_with_license_and_origin():
    readme = (SOURCES / "README.md").read_text(encoding="utf-8")
    assert "7d47513363ec447a741ac5e47241580b47724fbf" in readme
    assert "MIT License" in (SOURCES / "vidur" / "LICENSE").read_text(encoding="utf-8")
    csvs = sorted(p.relative_to(SOURCES / "vidur").as_posix() for p in SOURCES.rglob("*.csv"))
    assert csvs and all(c in readme for c in csvs)  # every vendored file is named with its origin


def test_builder_refuses_a_folder_without_vidur_data(tmp_path, monkeypatch):
    import runpy

    for builder in BUILDERS:  # in-process: the check comes before any work
        monkeypatch.setattr(sys, "argv", [builder, str(tmp_path), "--out", str(tmp_path)])
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(REPO / builder), run_name="__main__")
        assert str(e.value) == f"data: no vidur/ folder under {tmp_path}"
        assert not list(tmp_path.glob("*.json"))


def test_nothing_in_the_project_reads_the_shared_folder():
    """The sources are vendored (profiles/sources): no code, test or script names the
    workplace's shared data folder, which a user does not have."""
    shared, data = "sha" + "red", "da" + "ta"  # spelled in parts so this guard does not name it itself
    needles = (f"../{shared}", f"{shared}/{data}", f'"{shared}" / "{data}"')
    hits = []
    for folder in ("hispec_sim", "hispec_exec", "studies", "tests", "scripts", ".ci"):
        for p in (REPO / folder).rglob("*"):
            if p == Path(__file__).resolve() or "__pycache__" in p.parts:
                continue
            if p.is_file() and p.suffix in (".py", ".sh", ".md", ".toml", ""):
                text = p.read_text(errors="replace")
                hits += [f"{p.relative_to(REPO)}: {n}" for n in needles if n in text]
    assert not hits, hits
