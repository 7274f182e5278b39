"""What the outputs say about themselves: a report embeds the profile's provenance once."""
from __future__ import annotations

import json

from factories import make_profile
from hispec_sim.cli import main
from hispec_sim.schema import save_profile


def test_report_embeds_provenance_once(tmp_path, capsys):
    small, big = tmp_path / "small.json", tmp_path / "big.json"
    prof = make_profile(layers=8)
    save_profile(prof, small)
    note = "x" * 1_000_000  # 1 MB of provenance
    save_profile(prof.model_copy(update={"provenance": {"note": note}}), big)
    sizes = {}
    for p in (small, big):
        out = tmp_path / f"{p.stem}.html"
        assert main(["report", "--profile", str(p), "--out", str(out), "--max-batch", "4"]) == 0
        sizes[p.stem] = out.stat().st_size
    capsys.readouterr()
    grown = sizes["big"] - sizes["small"]
    assert len(note) <= grown < 1.5 * len(note), sizes
    assert json.loads(big.read_text(encoding="utf-8"))["provenance"]["note"] == note  # the input is untouched
