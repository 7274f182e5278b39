"""Both profile builders, run on the vendored sources (profiles/sources/) only, reproduce the
committed profiles byte for byte (issue 10: a fresh clone can rebuild what it ships)."""
from __future__ import annotations

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
        new, old = (tmp_path / f"{name}.json").read_bytes(), (REPO / "profiles" / f"{name}.json").read_bytes()
        assert new == old, f"{name}: rebuilt profile differs from profiles/{name}.json"


def test_sources_are_vendored_with_license_and_origin():
    readme = (SOURCES / "README.md").read_text()
    assert "7d47513363ec447a741ac5e47241580b47724fbf" in readme
    assert "MIT License" in (SOURCES / "vidur" / "LICENSE").read_text()
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
