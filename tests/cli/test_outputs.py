"""What the outputs say about themselves: a report embeds the profile's provenance once."""
from __future__ import annotations

import json
import os
import stat

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


def test_an_output_replaced_keeps_its_permissions(tmp_path, capsys):
    """write_atomic writes a temp file and renames it: a file it replaces keeps its mode (as
    a shell's `>` does); a new file is an ordinary one (0666 less the umask)."""
    out = tmp_path / "plan.json"
    argv = ["export", "--plan", str(tmp_path / "in.json"), "--to", "json", "--out", str(out)]
    (tmp_path / "in.json").write_text('{"levels": [2, 8], "propose": 2}')
    old = os.umask(0o022)
    try:
        assert main(argv) == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        out.chmod(0o600)
        assert main(argv) == 0
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    capsys.readouterr()
