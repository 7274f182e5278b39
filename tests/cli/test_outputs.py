"""What the outputs say about themselves: a report embeds the profile's provenance once."""
from __future__ import annotations

import json
import os
import stat

from factories import make_profile
from hispec_sim.cli import main
from hispec_sim.schema import decimals, save_profile


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


def test_a_plan_file_says_the_setting_it_does_not_hold(tmp_path, capsys):
    """A review (2026-12-03): optimize --out named a tp it was scored at but not a stack,
    workload or context, and optimize's JSON given as --plan (which records them) was
    evaluated at the profile's defaults without a word (99.13 tokens/s at tp 8 read 66.74 at tp 4)."""
    out = tmp_path / "p.json"
    assert main(["optimize", "--profile", "h100_llama3_8b", "--stack", "compiled", "--workload", "cnn_dm",
                 "--context", "2048", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert ("(at workload cnn_dm, stack compiled, context 2048, which a plan file does not hold: give --workload cnn_dm "
            "--stack compiled --context 2048 to evaluate (serve and capacity: all but --context))") in said
    assert main(["optimize", "--profile", "h100_llama3_8b", "--out", str(out)]) == 0
    assert "does not hold" not in capsys.readouterr().out  # the defaults: nothing to give
    scored = tmp_path / "o.json"
    assert main(["optimize", "--profile", "a100_llama70b", "--tp", "8", "--json"]) == 0
    scored.write_text(capsys.readouterr().out)
    for cmd in (["evaluate"], ["serve", "--qps", "0.2", "--requests", "2", "--seeds", "1"]):
        assert main(cmd + ["--profile", "a100_llama70b", "--plan", str(scored)]) == 0
        assert "was scored at tp 8; this run is at tp 4 (give --tp 8 for that setting)" in capsys.readouterr().err
        assert main(cmd + ["--profile", "a100_llama70b", "--plan", str(scored), "--tp", "8"]) == 0
        assert "was scored at" not in capsys.readouterr().err


def test_a_flag_repeated_with_the_same_value_is_one_flag(tmp_path, capsys):
    """Only two different values are refused (tests/cli/test_fuzz.py): a script that repeats a
    flag with the value it already has runs as if given once."""
    save_profile(make_profile(layers=8), tmp_path / "p.json")
    once = ["evaluate", "--profile", str(tmp_path / "p.json"), "--levels", "2,8", "--json"]
    assert main(once) == 0
    first = capsys.readouterr().out
    assert main(once + ["--levels", "2,8"]) == 0
    assert capsys.readouterr().out == first
    assert main(once + ["--levels", "4,8"]) == 2
    assert "levels: given twice ('2,8', then '4,8')" in capsys.readouterr().err


def test_any_name_the_file_system_takes_is_written(tmp_path, capsys):
    """The temp file beside the output has a short name: a 255-byte output name is written;
    256 bytes is refused as what it is. A long message keeps its reason (its end)."""
    from hispec_sim.cli_common import one_line

    plan = tmp_path / "p.json"
    plan.write_text(json.dumps({"levels": [4, 16], "propose": 2}))
    longest = tmp_path / ("a" * 250 + ".json")
    assert main(["export", "--plan", str(plan), "--to", "exec", "--out", str(longest)]) == 0
    assert json.loads(longest.read_text())["levels"] == [4, 16] and sorted(os.listdir(tmp_path)) == sorted(
        ["p.json", longest.name])
    capsys.readouterr()
    assert main(["export", "--plan", str(plan), "--to", "exec", "--out", str(tmp_path / ("a" * 251 + ".json"))]) == 2
    assert "out: the file name is 256 bytes; allowed: <= 255 bytes" in capsys.readouterr().err
    line = one_line(ValueError("out: cannot write " + "d" * 1000 + " (File name too long)"))
    assert len(line) < 420 and line.startswith("out: cannot write ddd") and line.endswith("(File name too long)")


def test_numbers_that_would_print_as_something_else():
    """A price or rate too small for its decimals keeps 3 significant digits; a threshold or
    agreement that `:g` would round to another value prints exactly (eleventh fuzz round)."""
    from hispec_sim.schema import Plan, decimals, exact_g

    assert decimals(23.0, 3) == "23.000" and decimals(1.15e-5, 3) == "1.15e-05" and decimals(0.0, 3) == "0.000"
    assert decimals(0.004, 2) == "0.004" and decimals(0.005, 2) == "0.005" and decimals(1.5, 2) == "1.50"
    assert decimals(1.234e-4, 4) == "0.000123" and decimals(0.0123, 4) == "0.0123"  # never fewer than 3 digits
    from hispec_sim.schema import rounded

    assert rounded(1.2345e-4, 4) == 0.0001234 and rounded(0.012345, 4) == 0.0123 and rounded(2.5, 4) == 2.5
    assert rounded(float("nan")) is None and rounded(0.0) == 0.0
    assert rounded(0.5678, 1) == 0.568 and rounded(6.04e-05, 2) == 6.04e-05  # 3 digits below 3 decimals too
    assert exact_g(0.3) == "0.3" and exact_g(1.0) == "1" and exact_g(0.9999999999999999) == "0.9999999999999999"
    assert Plan(levels=[2, 16], draft_confidence=0.9999999999999999).describe() != Plan(
        levels=[2, 16], draft_confidence=1.0).describe()


def test_a_very_slow_profile_is_not_printed_as_zero(tmp_path, capsys):
    """Figures are rounded to significant digits where decimals would make them 0: in the JSON
    and in the text (twelfth fuzz round: 1.9e-06 tokens/s printed as 0.00, 0.0 in JSON)."""
    slow = tmp_path / "slow.json"
    assert main(["profile", "synthetic", "--layers", "16", "--layer-ms", "1e6", "--head-ms", "1e6", "--overhead-ms",
                 "1e6", "--agreement", "0.5", "--out", str(slow)]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--profile", str(slow), "--levels", "2,16", "--propose", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 < out["tokens_per_second"] < 1e-4 and out["latency_ms_per_token"] > 1e4
    assert main(["evaluate", "--profile", str(slow), "--levels", "2,16", "--propose", "3"]) == 0
    text = capsys.readouterr().out
    assert " 0.00 tokens/s" not in text and f"{out['tokens_per_second']:.3g} tokens/s" in text


def test_capacity_and_report_print_small_figures_with_their_digits(tmp_path, capsys):
    """A very slow replica serves < 5e-5 req/s: the by-load table runs at those loads (it
    crashed at a load rounded to 0), and no figure prints as 0 (fourteenth fuzz round)."""
    slow = tmp_path / "slow.json"
    assert main(["profile", "synthetic", "--layers", "16", "--layer-ms", "3e4", "--agreement", "0.7",
                 "--out", str(slow)]) == 0
    args = ["capacity", "--profile", str(slow), "--qps", "1e-4", "--slo-ttft-ms", "1e6", "--slo-tbt-ms", "1e6",
            "--prompt-len", "8", "--output-len", "200", "--max-batch", "1", "--requests", "20", "--seeds", "1",
            "--max-propose", "2", "--max-window", "2"]
    capsys.readouterr()
    assert main(args + ["--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    top = res["families"][res["best_family"]]["max_qps_per_replica"]
    assert 0 < top < 5e-5 and [r["qps"] for r in res["by_load"]] == [top * 0.5, top]  # unrounded, as the capacities
    assert all(r["families"][res["best_family"]]["meets_slo"] for r in res["by_load"])  # run at the maximum, not above
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"{decimals(top, 2)} (1 seed)" in text and f"{decimals(top, 2)} " != "0.00 "  # one seed: no interval
    # a family capped at its saturation load meets the SLOs in the by-load table's row at that load: the table
    # runs as many requests as the capacity did (fifteenth fuzz round: 150 against 20, and it missed them)
    prof = tmp_path / "s1000.json"
    assert main(["profile", "synthetic", "--layers", "16", "--layer-ms", "1000", "--agreement", "0.7", "--out", str(prof)]) == 0
    capsys.readouterr()
    args[2], args[12] = str(prof), "20"
    assert main(args + ["--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    best = res["families"][res["best_family"]]
    assert best["capped_at_saturation"] and res["by_load"][-1]["families"][res["best_family"]]["meets_slo"]
    from hispec_sim.report_data import capacity_warnings

    said = capacity_warnings([], 1e-6, {"family": "single_level", "plan": "[1,16] propose=8", "batch": 1,
                                         "latency_ms_per_token": 3.92e-06})
    assert said[0].endswith("3.92e-06 ms/token")


def test_names_that_print_alike_are_refused_and_real_spellings_kept():
    """Invisible characters are refused in names, naming the character; joiners and variation
    selectors stay where emoji and scripts spell with them (thirteenth fuzz round)."""
    import re

    import pytest

    from hispec_sim.schema import check_name

    for ok in ("tiny", "日本語", "café", "👨\u200d💻", "❤\ufe0f", "می\u200cخواهم", "क्\u200dष", "1\ufe0f\u20e3",
               "❤\ufe0f\u200d🔥", "👩🏽\u200d💻", "‼\ufe0f", "葛\U000e0100", "ℹ\ufe0f", "ᠮᠣ\u200dᠩ", "မြန်\u200cမာ",
               "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f", "ᠮ\u180bᠣ", "ក\u17d2ស", "അവന്\u200d പോയി"):  # fifteenth round: ℹ, Mongolian, Myanmar, England
        assert check_name(ok) == ok
    # fourteenth round: a joiner between Latin letters, a selector after one, and a decomposed
    # accent printed like names without them
    for bad, said in (("cpu\u200btiny", "U+200B"), ("tiny\ufeff", "U+FEFF"), ("tiny\u3164", "U+3164"),
                      ("\u200dx", "U+200D"), ("\ufe0fx", "U+FE0F"), (" tiny", "space"), ("tiny\u00a0", "space"),
                      ("held\u200dout", "U+200D"), ("held\u200cout", "U+200C"), ("heldout\ufe0f", "U+FE0F"),
                      ("1\ufe0f", "U+FE0F"), ("cafe\u0301", "NFC form (composed, marks in canonical order; a name given on the command line is converted): U+0301"),
                      ("x\U000e0067", "U+E0067"), ("\U0001f3f4\U000e0067", "U+E0067"),
                      ("\U0001f3f4\U000e0047\U000e0042\U000e007f", "U+E0047"),  # sixteenth round: no subdivision
                      ("heldout\u180b", "U+180B"), ("x\u17d2y", "U+17D2")):  # another script's invisible marks
        with pytest.raises(ValueError, match=re.escape(said)):
            check_name(bad)


def test_a_name_that_nfc_lengthens_says_so(tmp_path, capsys):
    """150 letters that decompose in NFC (U+0958, a Devanagari nukta form) are 300 when
    stored: the limit is named with both counts, not as if 150 were over 200 (sixteenth round, M2)."""
    out = tmp_path / "p.json"
    assert main(["profile", "synthetic", "--layers", "4", "--name", "\u0958" * 150, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "at most 200 characters in Unicode NFC" in err and "150 as given are 300 in NFC" in err and not out.exists()


def test_messages_that_say_what_the_input_is(tmp_path, capsys):
    """A looping link as --profile is a link that cannot be read (not an unknown name), a
    report's JSON is no plan (not a plan missing its levels), and an adaptive plan's
    evaluation leads with the profile line as a fixed plan's does (fourteenth fuzz round)."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert main(["evaluate", "--profile", str(tmp_path / "a"), "--levels", "16"]) == 2
    assert "cannot read" in capsys.readouterr().err
    for other in ({"profile": {}, "best": {"families": {}, "best_family": "x"}},  # report --json
                  {"target_qps": 5, "batching": "auto", "families": {}}):  # capacity --json (a plan's key among others)
        (tmp_path / "r.json").write_text(json.dumps(other))
        assert main(["evaluate", "--profile", "cpu_hispec_tiny", "--plan", str(tmp_path / "r.json")]) == 2
        assert "holds no plan object" in capsys.readouterr().err
    for plan in ({"propose": 3}, {"levles": [2, 16], "propose": 3}, {"propose": 3, "comment": "x"},
                 {"levles": [2, 16]}, {"Levels": [2, 16]}):
        (tmp_path / "p.json").write_text(json.dumps(plan))
        assert main(["evaluate", "--profile", "cpu_hispec_tiny", "--plan", str(tmp_path / "p.json")]) == 2
        assert "levels: Field required" in capsys.readouterr().err  # a plan missing a field says which (round 16)
    (tmp_path / "a.json").write_text(json.dumps({"levels": [2, 16], "propose": 3, "draft_confidence": 0.5}))
    assert main(["evaluate", "--profile", "cpu_hispec_tiny", "--plan", str(tmp_path / "a.json")]) == 0
    assert capsys.readouterr().out.startswith("profile cpu_hispec_tiny")


def test_every_command_pricing_a_setting_whose_weights_do_not_fit_says_so(capsys):
    """Llama-2-70B's ~138 GB of bf16 weights on one A100-80GB: evaluate, optimize, serve and
    capacity priced it without a word while report called it hypothetical (fuzz round 26, D2)."""
    note = ("hispec-sim: note: the weights (~137.95 GB, bf16) do NOT fit in tp=1 x 80.0 GB HBM: these figures are "
            "hypothetical; use a larger --tp\n")
    base = ["--profile", "a100_llama70b"]
    serving = ["--qps", "0.2", "--requests", "8", "--seeds", "1"]
    for argv in (["evaluate", *base, "--levels", "80"], ["optimize", *base, "--max-propose", "2", "--max-window", "2"],
                 ["serve", *base, "--levels", "80", *serving],
                 ["capacity", *base, *serving, "--slo-ttft-ms", "5000", "--slo-tbt-ms", "200", "--max-propose", "2",
                  "--max-window", "2", "--batching", "ragged"]):
        for tp, said in (("1", note), ("4", "")):
            assert main([*argv, "--tp", tp]) == 0, argv
            assert capsys.readouterr().err == said, (argv, tp)
