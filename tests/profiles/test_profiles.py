"""Profiles: Vidur import, synthetic profiles, acceptance fit, shipped profiles, calibration."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hispec_sim import vidur
from hispec_sim.acceptance import shift_logit, spread_scenarios
from hispec_sim.acceptance_fit import Point, agreement_matrix, curve, fit_curves, plan_acceptance
from hispec_sim.evaluate import Setting, predict_plans
from hispec_sim.latency import CostModel, layer_ms
from hispec_sim.schema import Plan, Profile, Source, load_profile
from hispec_sim.synthetic import synthetic_profile

REPO = Path(__file__).resolve().parents[2]
VIDUR = REPO / "profiles" / "sources" / "vidur"  # vendored, unchanged (profiles/sources/README.md)
# profiles derived from published data (measured ones, profiles/cpu_*.json, are pinned in tests/validation)
PROFILES = sorted(p for p in (REPO / "profiles").glob("*.json") if not p.name.startswith("cpu_"))


# --------------------------------------------------------------------------- vidur import


def test_import_vidur_llama70b_a100():
    tables = vidur.import_vidur(VIDUR, model="Llama-2-70b-hf", gpu="a100")
    assert [t.tp for t in tables] == [1, 2, 4, 8]
    t4 = next(t for t in tables if t.tp == 4)
    assert t4.tokens[0] == 1 and t4.tokens[-1] == 4096
    assert t4.contexts[0] == 0 and t4.contexts[-1] >= 2**21
    # README sanity figure: linear + norm ops of one layer ~0.31 ms at 1 token, TP4
    kernel = float(t4.notes["kernel_ms_1tok"])
    assert 0.28 < kernel < 0.34
    # layer time = kernel + 2 all-reduces + attention, > kernel; attention grows with context
    assert t4.layer_ms[0][0] > kernel
    assert layer_ms(t4, 1, 2**20) > layer_ms(t4, 1, 0)
    # a few tokens cost almost the same as one (memory bound) at TP1 (no all-reduce)
    t1 = tables[0]
    assert layer_ms(t1, 8, 512) < 1.1 * layer_ms(t1, 1, 512)
    # the all-reduce part is non-decreasing in tokens (smoothed); Vidur's 4-GPU all-reduce
    # steps up ~3x above ~100 KB (>= 7 tokens x 8192 x 2 bytes)
    ar = [float(layer_ms(t4, n, 0)) for n in (1, 2, 4, 8)]
    assert ar[3] > ar[0]
    # more tensor parallelism -> cheaper layer at 1 token
    l1 = [layer_ms(t, 1, 512) for t in tables]
    assert l1[0] > l1[1] > l1[2]
    assert "Vidur" in t4.source.detail and "roofline" in t4.source.detail
    assert "7d47513363ec447a741ac5e47241580b47724fbf" in (t4.source.reference or "")


def test_import_vidur_attention_roofline_bytes():
    """Attention at TP1, 1 token, context C: C x 2 x kv_heads x head_dim x 2 bytes / bandwidth."""
    (t1,) = vidur.import_vidur(VIDUR, model="Llama-2-7b-hf", gpu="a100", tps=[1])
    c = 2**16
    extra = layer_ms(t1, 1, c) - layer_ms(t1, 1, 0)
    expect = c * 2 * 32 * 128 * 2 / 2039e9 * 1e3
    assert extra == pytest.approx(expect, rel=1e-3)


def test_import_vidur_bad_input(tmp_path):
    with pytest.raises(ValueError, match="^model:"):
        vidur.import_vidur(VIDUR, model="no-such-model")
    with pytest.raises(ValueError, match="^folder:"):
        vidur.import_vidur(tmp_path / "nothing")
    with pytest.raises(ValueError, match="^tp:"):
        vidur.import_vidur(VIDUR, model="Llama-2-70b-hf", gpu="a100", tps=[3])


def test_cli_import_vidur(tmp_path, capsys):
    from hispec_sim.cli import main

    out = tmp_path / "p.json"
    rc = main(["profile", "import-vidur", str(VIDUR), "--model", "Llama-2-7b-hf", "--gpu", "h100", "--tp", "1,2", "--out", str(out)])
    assert rc == 0
    p = load_profile(str(out))
    assert [t.tp for t in p.latency] == [1, 2]
    acc = p.workload()
    assert acc.source.kind == "assumed" and "PLACEHOLDER" in acc.source.detail
    rc = main(["profile", "import-vidur", str(VIDUR), "--model", "Llama-2", "--out", str(tmp_path / "q.json")])
    assert rc == 2 and not (tmp_path / "q.json").exists()
    assert "several models" in capsys.readouterr().err


def test_cli_import_vidur_never_overwrites_the_all_reduce_file_it_read(tmp_path, capsys):
    """Given the model's own folder, import-vidur reads network/<cluster>/all_reduce.csv from
    a folder above it; an --out naming that file is refused, the file untouched (fuzz round
    25, D1: it was overwritten with the profile, exit 0)."""
    import shutil

    from hispec_sim.cli import main

    root = tmp_path / "v"
    model = root / "compute" / "h100" / "meta-llama" / "Llama-2-7b-hf"
    shutil.copytree(VIDUR / "compute" / "h100" / "meta-llama" / "Llama-2-7b-hf", model)
    shutil.copytree(VIDUR / "network" / "h100_dgx", root / "network" / "h100_dgx")
    ar = root / "network" / "h100_dgx" / "all_reduce.csv"
    before = ar.read_bytes()
    for folder in (model, model.parent):
        rc = main(["profile", "import-vidur", str(folder), "--model", "Llama-2-7b-hf", "--tp", "1,2", "--out", str(ar)])
        assert rc == 2 and "is also an input of this command" in capsys.readouterr().err
        assert ar.read_bytes() == before
    rc = main(["profile", "import-vidur", str(model), "--tp", "1,2", "--out", str(tmp_path / "ok.json")])
    assert rc == 0, capsys.readouterr().err


@pytest.mark.parametrize("change, match", [({"heads": 64, "kv_heads": 8, "hidden": 8}, "heads: 64 exceeds hidden \\(8\\)"),
                                           ({"kv_heads": 8, "heads": 4}, "kv_heads: 8 must divide heads"),
                                           ({"kv_heads": 3}, "kv_heads: 3 must divide heads"),
                                           ({"hidden": 4097}, "hidden: 4097 is not a multiple of heads")])
def test_a_model_shape_that_cannot_exist_is_refused(change, match):
    """More heads than hidden units priced attention at 0 at any context (head_dim 0); more
    KV heads than heads is no model either (fuzz round 25, D2)."""
    from pydantic import ValidationError

    from hispec_sim.schema import ModelShape

    d = load_profile("cpu_hispec_tiny").model.model_dump()
    with pytest.raises(ValidationError, match=match):
        ModelShape.model_validate({**d, **change})


def test_import_vidur_odd_files_get_messages_that_name_them(tmp_path):
    """Fuzz round 25, M7: a shape cell written 4096.0 in one row and 4096 in another is one
    shape; a compute/<gpu> folder imports that GPU's model; an all-reduce of size 0 and
    all-reduce times that price a layer beyond the table's range are refused naming the file."""
    import csv
    import shutil

    root = tmp_path / "v"
    shutil.copytree(VIDUR / "compute" / "h100" / "meta-llama" / "Llama-2-7b-hf",
                    root / "compute" / "h100" / "meta-llama" / "Llama-2-7b-hf")
    net = root / "network" / "h100_dgx"
    net.mkdir(parents=True)
    mlp = root / "compute" / "h100" / "meta-llama" / "Llama-2-7b-hf" / "mlp.csv"
    rows = list(csv.reader(mlp.open()))
    rows[1][rows[0].index("n_embd")] += ".0"
    with mlp.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    shutil.copy(VIDUR / "network" / "h100_dgx" / "all_reduce.csv", net / "all_reduce.csv")
    assert [t.tp for t in vidur.import_vidur(root / "compute" / "h100")] == [1, 2, 4, 8]
    with pytest.raises(ValueError, match="gpu: --gpu a100 but the folder is compute/h100"):  # the review's M1
        vidur.import_vidur(root / "compute" / "h100", gpu="a100")
    ar = list(csv.reader((VIDUR / "network" / "h100_dgx" / "all_reduce.csv").open()))
    size, median = ar[0].index("size"), ar[0].index("time_stats.all_reduce.median")
    # sizes up to 512 KiB whose times grow with them (bandwidth-bound): a large step's all-reduce scales up from there
    small = [r for r in ar[1:] if float(r[size]) <= 2 ** 19]
    for edit, match in ((lambda r: r.__setitem__(size, "0"), r"all_reduce.csv size: expected an integer in \[1, "),
                        (lambda r: r.__setitem__(median, f"{9999 * float(r[size]) / 2 ** 19:.6g}"),
                         r"tp=8: a decoder layer priced at .* from mlp.csv \+ all_reduce.csv")):
        changed = [ar[0], *(list(r) for r in small)]
        for r in changed[1:]:
            edit(r)
        with (net / "all_reduce.csv").open("w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(changed)
        with pytest.raises(ValueError, match=match):
            vidur.import_vidur(root, model="Llama-2-7b-hf", gpu="h100", tps=[8])


@pytest.mark.parametrize("edit, match", [
    (lambda w: w.update(agreement=[[1.0] * len(w["exits"])] * len(w["exits"])),
     r"workloads.sharegpt.fit: acceptance.agreement: must be the fit record's curve F\(a\) / F\(b\) at m = 2.2599"),
    (lambda w: w["fit"]["params"].update(c=-1.0), r"workloads.sharegpt.fit: params.c: must be in \[0.05, 5\]"),
    (lambda w: w["fit"]["params"].update(c=0.0), r"params.c: must be in \[0.05, 5\]"),
    (lambda w: w["fit"]["params"].update(m=1e308), r"params.m: must be in \[-20, 20\]")])
def test_a_fit_record_must_be_the_workloads_matrix(tmp_path, edit, match):
    """The audit reads a workload's fit record, every other command its matrix: a profile
    where they disagree, or whose record lies outside the fitter's range, is refused (fuzz
    round 26, D1: audit 0.787x against evaluate's 3.213x on the same plan)."""
    d = json.loads((REPO / "profiles" / "h100_llama3_8b.json").read_text())
    edit(d["workloads"]["sharegpt"])
    with pytest.raises(ValueError, match=match):
        Profile.model_validate(d)


@pytest.mark.parametrize("column, value, match", [
    ("n_kv_head", "3", r"vidur Llama-2-7b-hf/mlp.csv: n_kv_head: 3 must divide n_head \(32\); allowed: a divisor of n_head"),
    ("n_head", "8192", r"vidur Llama-2-7b-hf/mlp.csv: n_head: 8192 exceeds n_embd \(4096\)")])
def test_import_vidur_names_the_shape_columns_of_mlp_csv(tmp_path, column, value, match):
    """A shape no model has is refused naming mlp.csv's columns, not the profile's fields
    (the review of round 25)."""
    import csv
    import shutil

    src = VIDUR / "compute" / "h100" / "meta-llama" / "Llama-2-7b-hf"
    model = tmp_path / "Llama-2-7b-hf"
    shutil.copytree(src, model)
    rows = list(csv.reader((model / "mlp.csv").open()))
    if column not in rows[0]:
        rows = [rows[0] + [column]] + [r + [""] for r in rows[1:]]
    for r in rows[1:]:
        r[rows[0].index(column)] = value
    with (model / "mlp.csv").open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    with pytest.raises(ValueError, match=match):
        vidur.import_vidur(model, gpu="h100", tps=[1])


# --------------------------------------------------------------------------- synthetic


def test_synthetic_profile_properties():
    p = synthetic_profile(24, 0.7, 0.6, head_ms=0.2, overhead_ms=0.1)
    t = p.table()
    for tok in (1, 3, 100, 4096, 10000):
        for ctx in (0, 512, 10**6):
            assert float(layer_ms(t, tok, ctx)) == pytest.approx(0.7)
    A = np.array(p.workload().agreement)
    assert A.shape == (24, 24)
    assert np.allclose(np.diag(A), 1.0)
    off = A[~np.eye(24, dtype=bool)]
    assert np.allclose(off, 0.6)
    cm = CostModel(t, batch=1, context=512)
    assert cm.autoregressive_ms(24) == pytest.approx(24 * 0.7 + 0.2 + 0.1)
    assert p.workload().source.kind == "assumed"


@pytest.mark.parametrize("kw,field", [
    (dict(layers=0, layer_ms=1, agreement=0.5), "layers"),
    (dict(layers=4, layer_ms=-1, agreement=0.5), "layer_ms"),
    (dict(layers=4, layer_ms=1, agreement=1.5), "agreement"),
    (dict(layers=4, layer_ms=float("nan"), agreement=0.5), "layer_ms"),
    (dict(layers=4, layer_ms=1, agreement=0.5, head_ms=-1), "head_ms"),
])
def test_synthetic_bad_input(kw, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        synthetic_profile(**kw)


def test_cli_synthetic(tmp_path):
    from hispec_sim.cli import main

    out = tmp_path / "s.json"
    assert main(["profile", "synthetic", "--layers", "16", "--layer-ms", "1", "--agreement", "0.8", "--out", str(out)]) == 0
    assert load_profile(str(out)).model.num_layers == 16
    bad = tmp_path / "b.json"
    assert main(["profile", "synthetic", "--layers", "16", "--layer-ms", "1", "--agreement", "-0.1", "--out", str(bad)]) == 2
    assert not bad.exists()


# --------------------------------------------------------------------------- acceptance fit


def test_curve_endpoints_and_monotone():
    x = np.linspace(0, 1, 101)
    F = curve(x, 1.3, 0.9)
    assert F[0] == 0.0 and F[-1] == 1.0
    assert np.all(np.diff(F) > 0)


def test_fit_reproduces_points_and_matrix_is_depth_markov():
    pts = [Point("a", "final", 0.397, exit=10), Point("a", "final", 0.581, exit=20), Point("b", "final", 0.62, exit=20),
           Point("b", "final", 0.66, exit=24)]
    f = fit_curves(pts, 80)
    for p, r in zip(f.points, f.residuals):
        assert p.predict(f.m[p.workload], f.c, 80) - p.value == pytest.approx(r, abs=1e-12)
    assert abs(f.residuals[0]) < 0.02
    F = f.F("a")
    A = np.array(agreement_matrix(F))
    assert A[79, 79] == 1.0 and A[9, 79] == pytest.approx(F[9], abs=1e-5)
    # depth-Markov: agreement(a,c) = agreement(a,b) * agreement(b,c)
    assert A[9, 79] == pytest.approx(A[9, 19] * A[19, 79], abs=2e-5)
    assert np.allclose(A, A.T)


def test_fit_fixed_c_and_mean_layer():
    f = fit_curves([Point("base", "mean_layer", 23.45)], 32, c=0.72)
    assert f.c == 0.72
    e = np.arange(32)
    assert float(np.sum(1 - curve(e / 32, f.m["base"], 0.72))) == pytest.approx(23.45, abs=1e-6)


def test_fit_bad_input():
    with pytest.raises(ValueError, match="^acceptance:"):
        fit_curves([Point("a", "final", 1.3, exit=10)], 80)
    with pytest.raises(ValueError, match="^acceptance:"):
        fit_curves([Point("a", "final", 0.3, exit=90)], 80)
    with pytest.raises(ValueError, match="two depths"):
        fit_curves([Point("a", "final", 0.3, exit=10), Point("b", "final", 0.4, exit=10)], 80)


def test_codellama34b_steepness_from_two_level_figure():
    p = load_profile("h100_codellama_34b")
    fit = p.workload("cnn_dm_per_position").fit
    assert fit["reading"] == "per_position"
    assert fit["params"]["c"] == pytest.approx(0.5614, abs=2e-3)
    assert any(pt["workload"] == "two_level_fig" for pt in fit["points"])
    fit = p.workload("cnn_dm").fit  # central: per_draft reading, steeper
    assert fit["reading"] == "per_draft" and fit["params"]["c"] == pytest.approx(1.717, abs=5e-3)
    two = [pt for pt in fit["points"] if pt["workload"] == "two_level_fig"]
    assert [pt["config"]["plan"] for pt in two] == ["[7,48] g=2", "[7,12,48] g=2 w=4"]
    assert [pt["config"]["level"] for pt in two] == [2, 3]
    assert "two_level_fig" not in p.workloads


# --------------------------------------------------------------------------- shipped profiles


def test_issue2_profiles_shipped():
    names = {p.stem for p in PROFILES}
    assert {"a100_llama70b", "h100_llama70b", "a100_llama2_7b"} <= names


def _sources(obj, path=""):
    """Yield (path, Source dict) for every source in a profile JSON; and paths of objects lacking one."""
    if isinstance(obj, dict):
        if "kind" in obj and "detail" in obj:
            yield path, obj
        for k, v in obj.items():
            if k in ("agreement", "layer_ms", "traces"):
                continue
            yield from _sources(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _sources(v, f"{path}[{i}]")


def _over_requests(acc, rate: float) -> float:
    """A per-position rate averaged over the workload's requests (its logit-normal spread; the
    rate itself without one)."""
    scen = spread_scenarios(acc)
    return float(rate) if scen is None else float(np.dot(scen.weights, shift_logit(rate, scen.shifts)))


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_shipped_profile_validates_and_is_sourced(path):
    raw = json.loads(path.read_text(encoding="utf-8"))
    p = Profile.model_validate(raw)
    assert path.stat().st_size < 2e6
    for part in [p.hardware, p.model, *p.latency, *p.workloads.values()]:
        assert isinstance(part.source, Source) and len(part.source.detail) > 20
    for name, acc in p.workloads.items():
        assert acc.exits == list(range(1, p.model.num_layers + 1)), name
        if acc.source.kind == "fitted":
            fit = acc.fit
            assert fit and fit["points"], name
            for pt in fit["points"]:
                assert pt["source"] and abs(pt["predicted"] - pt["value"] - pt["residual"]) < 2e-5
            # the matrix reproduces the fitted curve at the input exits (averaged over requests
            # when the workload carries a spread: the figures are means over requests)
            A = np.array(acc.agreement)
            L = p.model.num_layers
            for pt in fit["points"]:
                if pt["kind"] == "final" and pt["workload"] == fit["points"][0]["workload"] and "used_for" not in pt:
                    got = _over_requests(acc, A[pt["exit"] - 1, L - 1])
                    assert got == pytest.approx(pt["predicted"], abs=2e-5)
                    assert abs(got - pt["value"]) <= abs(pt["residual"]) + 2e-5
    assert "built_by" in p.provenance


@pytest.mark.parametrize("layers,ms,match", [([1, 2], [-0.1], "working_set_layers"), ([2, 1], [-0.1, 0.0], "working_set_layers"),
                                             ([0, 4], [-0.1, 0.0], "working_set_layers"), ([1, 4], [0.1, 0.0], "working_set_ms"),
                                             ([1, 4], [-0.1, None], "working_set_ms")])
def test_a_bad_working_set_names_the_field(layers, ms, match):
    raw = json.loads((REPO / "profiles" / "cpu_hispec_tiny.json").read_text(encoding="utf-8"))
    raw["latency"][0].update(working_set_layers=layers, working_set_ms=ms)
    with pytest.raises(ValueError, match=match):
        Profile.model_validate(raw)


def _recorded_points(fit: dict) -> list[Point]:
    out = []
    for d in fit["points"]:
        cfg = d.get("config")
        plan = Plan(levels=cfg["levels"], propose=cfg["propose"], windows=cfg["windows"]) if cfg else None
        out.append(Point(d["workload"], d["kind"], d["value"], exit=d.get("exit"), plan=plan,
                         level=cfg["level"] if cfg else None))
    return out


@pytest.mark.parametrize("workload,reading", [("sharegpt", "per_draft"), ("sharegpt_per_position", "per_position")])
def test_fit_residuals_recorded_match_refit(workload, reading):
    """Re-fitting from the recorded points (and configurations) reproduces the recorded parameters."""
    p = load_profile("a100_llama70b")
    fit = p.workload(workload).fit
    assert fit["reading"] == reading
    f = fit_curves(_recorded_points(fit), 80)
    assert f.reading == reading
    assert f.c == pytest.approx(fit["params"]["c"], abs=1e-4)
    # the level before the assumed per-request spread refitted it (acceptance_fit.with_published_spread)
    assert f.m["sharegpt"] == pytest.approx(fit["spread_refit"]["m_without_spread"], abs=1e-4)


# --------------------------------------------------------------------------- per_draft reading


def test_plan_acceptance_single_level_closed_form():
    """Single-level [e, L] with g drafts: accepted/checked = (a - a^(g+1)) / (g (1 - a)), a = F(e)."""
    for m, c, e, g in ((1.3, 0.9, 10, 2), (3.39, 1.7, 10, 2), (0.5, 0.7, 8, 4), (2.0, 1.2, 20, 1)):
        a = float(curve(e / 80, m, c))
        plan = Plan(levels=[e, 80], propose=g)
        assert plan_acceptance(plan, None, m, c, 80) == pytest.approx((a - a ** (g + 1)) / (g * (1 - a)), abs=1e-12)
    # 0.397 with N_d = 2 means a per-position rate ~0.522 (a + a^2 = 0.794)
    f = fit_curves([Point("s", "per_draft", 0.397, exit=10, plan=Plan(levels=[10, 80], propose=2))], 80, c=0.9)
    a = float(f.F("s")[9])
    assert a == pytest.approx((-1 + math.sqrt(1 + 4 * 0.794)) / 2, abs=1e-6)
    assert f.reading == "per_draft"


def test_per_draft_fit_bad_input():
    with pytest.raises(ValueError, match="^acceptance:"):
        fit_curves([Point("s", "per_draft", 0.4, exit=10)], 80, c=0.9)  # no plan
    with pytest.raises(ValueError, match="^acceptance:"):
        fit_curves([Point("s", "per_draft", 0.4, exit=10, plan=Plan(levels=[10, 40], propose=2))], 80, c=0.9)
    with pytest.raises(ValueError, match="^acceptance:"):
        fit_curves([Point("s", "final", 0.4, exit=10)], 80, c=0.9, reading="per_token")


@pytest.mark.parametrize("name", [p.stem for p in PROFILES])
def test_per_draft_fit_reproduces_points_through_analytic(name):
    """Every per_draft input point is what hispec_sim.analytic.predict gives on the shipped profile
    (its default table, over the workload's request distribution) under the configuration
    recorded for it, within 1e-3 of the recorded prediction, which is within 0.01 of the
    published figure (one level refitted under the assumed spread: the figures' reading error
    is +-0.02 or more)."""
    p = load_profile(name)
    L = p.model.num_layers
    n = 0
    for w, acc in p.workloads.items():
        fit = acc.fit or {}
        if fit.get("reading") != "per_draft":
            continue
        s = Setting(p, w)
        for pt in fit["points"]:
            assert pt["kind"] == "per_draft", (w, pt)
            cfg = pt["config"]
            plan = Plan(levels=cfg["levels"], propose=cfg["propose"], windows=cfg["windows"])
            assert plan.levels[-1] == L and pt["exit"] in plan.levels
            if "used_for" in pt:  # a point of another workload of the joint fit: rebuild its curve
                m = fit["params_all_workloads"]["m"][pt["workload"]]
                got = plan_acceptance(plan, cfg["level"], m, fit["params"]["c"], L, s.cost(64))
            else:
                got = float(predict_plans(s, [plan]).acceptance[0, cfg["level"] - 2])
            tol = 1e-3 if "used_for" in pt else 0.01
            assert got == pytest.approx(pt["value"], abs=tol), (w, pt)
            assert got == pytest.approx(pt["predicted"], abs=1e-3)
            assert abs(pt["residual"]) < tol
            n += 1
    assert n > 0


@pytest.mark.parametrize("name", [p.stem for p in PROFILES])
def test_both_readings_present(name):
    p = load_profile(name)
    L = p.model.num_layers
    base = [w for w, a in p.workloads.items() if (a.fit or {}).get("reading") == "per_draft"
            and (a.fit or {}).get("band", "central") == "central"]
    assert {"sharegpt", "cnn_dm", "xsum", "gsm8k", "humaneval"} <= set(base)
    for w in base:
        alt = p.workload(w + "_per_position")
        assert alt.fit["reading"] == "per_position" and p.workload(w).fit["central_reading"] == "per_draft"
        assert all(pt["kind"] == "final" for pt in alt.fit["points"])
        # the same published points, read as accepted/checked with N_d = 2, imply higher per-position agreement
        pd = {(pt["workload"], pt["value"]): pt for pt in p.workload(w).fit["points"]}
        for pt in alt.fit["points"]:
            if "used_for" in pt:
                continue
            d = pd[(pt["workload"], pt["value"])]
            assert d["config"]["propose"] == 2
            assert d["implied_agreement"]["value"] > pt["value"]
        q = L // 4 - 1
        assert np.array(p.workload(w).agreement)[q, L - 1] > np.array(alt.agreement)[q, L - 1]
    assert "per_draft" in p.provenance["acceptance"] and "per_position" in p.provenance["acceptance"]


def test_llama2_70b_per_draft_key_points():
    """0.397 = draft L10 alone with N_d = 2 -> agreement(10, 80) ~0.522; 0.581 at the full model of
    [10,20,80] g=2 w=4 -> agreement(20, 80) ~0.82; the paper's plan reproduces 0.581 at level 3.
    Over the assumed per-request spread (one level refitted, slope kept) both within 0.005."""
    p = load_profile("h100_llama2_70b")
    A = np.array(p.workload("sharegpt").agreement)
    assert A[9, 79] == pytest.approx(0.5218, abs=5e-3) and A[19, 79] == pytest.approx(0.821, abs=5e-3)
    s = Setting(p, "sharegpt")
    pr = predict_plans(s, [Plan(levels=[10, 20, 80], propose=2, windows=[4]), Plan(levels=[10, 80], propose=2)])
    assert pr.acceptance[0, 1] == pytest.approx(0.581, abs=5e-3)
    assert pr.acceptance[1, 0] == pytest.approx(0.397, abs=5e-3)
    acc = p.workload("sharegpt_per_position")
    A2 = np.array(acc.agreement)
    assert _over_requests(acc, A2[9, 79]) == pytest.approx(0.397, abs=5e-3)
    assert _over_requests(acc, A2[19, 79]) == pytest.approx(0.581, abs=5e-3)


# --------------------------------------------------------------------------- calibration


def test_calibration_a100_llama70b():
    p = load_profile("a100_llama70b")
    assert p.default_tp == 4
    ctx = 100  # the calibration context recorded in the profile
    assert f"mean context {ctx}" in p.provenance["calibration"]
    ms = {t.tp: CostModel(t, batch=1, context=ctx).autoregressive_ms(80) for t in p.latency}
    # Measured FlashAttention decode kernels (Vidur's A100 file, ~13-17 us per layer instead of the
    # roofline's ~0.3 us) alone make the TP4 step 27.28 ms, above gpt-fast's 26.3: the per-forward
    # overhead cannot go negative, so it is 0 and the anchor is over-predicted by +3.7 % (stated in
    # the provenance and in README's profile table). Before measured attention: 26.3 within 1 %.
    assert all(t.attention is not None and t.attention.decode_ms and t.overhead_ms == 0.0 for t in p.latency)
    assert ms[4] == pytest.approx(27.283, rel=0.001)
    assert "over-predicted by +3.7 %" in p.provenance["calibration"]
    errs = p.provenance["calibration_errors"]
    for tp, pub, bound in ((2, 46.9, 13.0), (4, 26.3, 4.0), (8, 16.0, 16.0)):  # TP8: attention floor-bound, +15 %
        rec = errs[f"Llama-2-70B TP{tp}"]
        recorded_pct = float(rec.split("(")[1].split("%")[0])
        assert 100 * (ms[tp] - pub) / pub == pytest.approx(recorded_pct, abs=0.05)
        assert 0 < recorded_pct <= bound
    assert ms[1] > ms[2] > ms[4] > ms[8]


# --------------------------------------------------------------------------- paper setups (issue 7)

PAPER_MODELS = ["llama3_8b", "llama2_7b", "llama2_13b", "codellama_7b", "codellama_34b", "llama2_70b"]
PAPER_WORKLOADS = ["sharegpt", "cnn_dm", "humaneval", "gsm8k", "xsum"]


@pytest.mark.parametrize("model", PAPER_MODELS)
def test_paper_profiles(model):
    p = load_profile(f"h100_{model}")
    assert p.default_stack == "hf_eager" and p.default_tp == 1
    stacks = {t.stack for t in p.latency}
    assert {"hf_eager", "compiled"} <= stacks
    eager = p.table(1, "hf_eager")
    assert eager.layer_overhead_ms > 0 and eager.overhead_ms > 0
    assert "gpu_layout" in p.provenance
    L = p.model.num_layers
    for w in PAPER_WORKLOADS:
        F = {b: np.array(p.workload(w + s).agreement)[:, L - 1] for b, s in (("c", ""), ("lo", "_low"), ("hi", "_high"))}
        q = L // 4 - 1
        assert F["lo"][q] < F["c"][q] < F["hi"][q]
        assert p.workload(w).fit["points"], w
    # the eager stack is slower than the compiled one at batch 1 (host overhead dominates)
    ctx = p.workload().context
    assert CostModel(eager, 1, ctx).autoregressive_ms(L) > 1.5 * CostModel(p.table(1, "compiled"), 1, ctx).autoregressive_ms(L)


def test_hf_eager_calibration_a100_llama2_7b():
    """ONE figure: Llama2-7B HF eager 25.83 ms/token on A100 (context 1024 assumed)."""
    p = load_profile("a100_llama2_7b")
    t = p.table(1, "hf_eager")
    assert CostModel(t, batch=1, context=1024).autoregressive_ms(32) == pytest.approx(25.83, rel=0.01)
    rows = p.provenance["hf_eager_calibration"]["rows"]
    assert sum(r["used_for_fit"] for r in rows) == 1
    # the same host overhead is carried to the H100 paper profiles
    h = load_profile("h100_llama2_7b").table(1, "hf_eager")
    assert h.layer_overhead_ms == pytest.approx(t.layer_overhead_ms)


def test_unknown_stack_or_workload_lists_known(capsys):
    from hispec_sim.cli import main

    assert main(["optimize", "--profile", "h100_llama3_8b", "--stack", "vllm"]) == 2
    err = capsys.readouterr().err
    assert "hf_eager" in err and "compiled" in err
    assert main(["optimize", "--profile", "h100_llama3_8b", "--workload", "nope"]) == 2
    assert "sharegpt" in capsys.readouterr().err


@pytest.mark.parametrize("model", PAPER_MODELS)
def test_optimize_every_paper_model_and_workload(model, capsys):
    """`hispec-sim optimize --profile h100_<model> --workload W` runs for every model x workload
    (central reading) and for the per_position reading of sharegpt."""
    from hispec_sim.cli import main

    for w in PAPER_WORKLOADS + ["sharegpt_per_position"]:
        assert main(["optimize", "--profile", f"h100_{model}", "--workload", w, "--json"]) == 0, w
        r = json.loads(capsys.readouterr().out)
        assert r["workload"] == w and r["best"]["speedup_vs_autoregressive"] >= 1.0


def test_optimize_cli_llama3_8b_sharegpt():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "hispec_sim.cli", "optimize", "--profile", "h100_llama3_8b", "--workload",
                          "sharegpt"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


def test_import_vidur_checks_the_tps_it_imports(tmp_path):
    """A tp without a one-token row is refused where it is imported, not where --tp leaves it
    out (twentieth round, D2: --tp 2 was refused for tp 8's rows)."""
    import csv

    src = VIDUR / "compute" / "h100" / "meta-llama" / "Llama-2-70b-hf" / "mlp.csv"
    rows = list(csv.reader(src.open()))
    tp, nt = rows[0].index("num_tensor_parallel_workers"), rows[0].index("num_tokens")
    keep = [rows[0]] + [r for r in rows[1:] if not (int(float(r[tp])) == 8 and int(float(r[nt])) == 1)]
    dst = tmp_path / "mlp.csv"
    with dst.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(keep)
    assert 1 in vidur.read_mlp_csv(dst, [2]).tokens[2]
    with pytest.raises(ValueError, match="rows of tp 8 start at num_tokens 2"):
        vidur.read_mlp_csv(dst)


def test_import_vidur_needs_all_reduces_as_small_as_a_decode_step(tmp_path):
    """An all_reduce.csv whose sizes start at 32 MiB would price a one-token step's 16 KiB
    all-reduce as 32 MiB (3x the ms per token on Llama-2-70B tp 8): refused, and so is a
    short row, named by its line (twentieth round, D3)."""
    import csv
    import shutil

    root = tmp_path / "v"
    shutil.copytree(VIDUR / "compute" / "h100" / "meta-llama" / "Llama-2-70b-hf",
                    root / "compute" / "h100" / "meta-llama" / "Llama-2-70b-hf")
    net = root / "network" / "h100_dgx"
    net.mkdir(parents=True)
    rows = list(csv.reader((VIDUR / "network" / "h100_dgx" / "all_reduce.csv").open()))
    size = rows[0].index("size")
    for keep, match in (([r for r in rows[1:] if float(r[size]) >= 2 ** 25], "start at 33,554,432 bytes"),
                        ([rows[1][:-4], *rows[2:]], "line 2: 8 cells where the header names 12")):
        with (net / "all_reduce.csv").open("w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows([rows[0], *keep])
        with pytest.raises(ValueError, match=match):
            vidur.import_vidur(root, model="Llama-2-70b-hf", gpu="h100", tps=[8])


def test_import_vidur_refuses_data_that_stops_short_of_proportional_pricing(tmp_path):
    """Beyond its last row a table prices prefill in proportion, and beyond its largest size an
    all-reduce: rows up to 64 tokens priced a 2,048-token prefill x3, all-reduces up to 18 KiB a
    4,096-token step x15, silently (a review, 2026-12-03). Refused unless the data reaches
    where the time grows with the work."""
    import csv
    import shutil

    model = Path("compute") / "a100" / "meta-llama" / "Llama-2-70b-hf"
    for cut, top, match in (("mlp", 64, "rows of tp 4 stop at num_tokens 64, where the layer's ops take x1.0"),
                            ("mlp", 1, "rows of tp 4 hold num_tokens 1 only"),  # not 'x1.00 the time of half a token'
                            ("all_reduce", 20000, "all-reduces of 4 GPUs stop at 18,432 bytes, x1.00")):
        root = tmp_path / f"{cut}{top}"
        shutil.copytree(VIDUR / model, root / model)
        shutil.copytree(VIDUR / "network" / "a100_dgx", root / "network" / "a100_dgx")
        path = root / model / "mlp.csv" if cut == "mlp" else root / "network" / "a100_dgx" / "all_reduce.csv"
        rows = list(csv.reader(path.open()))
        col = rows[0].index("num_tokens" if cut == "mlp" else "size")
        with path.open("w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows([rows[0]] + [r for r in rows[1:] if float(r[col]) <= top])
        with pytest.raises(ValueError, match=match):
            vidur.import_vidur(root, model="Llama-2-70b-hf", gpu="a100", tps=[4])


def test_import_vidur_takes_the_gpu_a_model_folder_names(tmp_path, capsys):
    """A model folder under compute/a100 imported with --gpu h100 mixed A100 kernels with H100
    hardware and all-reduces (31.07 ms a token; 20.47 from H100 data); --gpu A100 found no
    network (a review, 2026-12-03). Known Llamas carry their context."""
    from hispec_sim.cli import main

    folder = VIDUR / "compute" / "a100" / "meta-llama" / "Llama-2-70b-hf"
    with pytest.raises(ValueError, match="gpu: --gpu h100 but the folder is a100's"):
        vidur.import_vidur(folder, gpu="h100", tps=[4])
    assert vidur.import_vidur(folder, gpu="a100_40gb", tps=[1])  # another A100's datasheet: the same kernels' GPU
    assert vidur.known_model("CodeLlama-34b-Instruct-hf") == (48, 16384)
    assert vidur.known_model("llama-2-7b-32k-instruct") is None  # another context than Llama-2-7B's
    assert main(["profile", "import-vidur", str(folder), "--gpu", "A100", "--tp", "4", "--out", str(tmp_path / "p.json")]) == 0
    capsys.readouterr()
    p = load_profile(str(tmp_path / "p.json"))
    assert p.model.max_context == 4096 and p.model.num_layers == 80
    assert p.table().source.detail == vidur.import_vidur(folder, gpu="a100", tps=[4])[0].source.detail
    assert vidur.import_vidur(folder, gpu="a100", tps=[1], num_layers=80)  # its own depth: accepted
    with pytest.raises(ValueError, match=r"layers: Llama-2-70b-hf has 80 decoder layers .*, got 40"):
        vidur.import_vidur(folder, gpu="a100", tps=[1], num_layers=40)  # was a 40-layer Llama-2-70B, silently


@pytest.mark.parametrize("paper,match", [
    ({"levels": [4, 8, 32], "propose": 2, "windows": [4]}, r"paper_default\.levels: exits \[4, 8\] are not measured in workload 'synthetic'"),
    ({"levels": [1, 32], "propose": 2, "mode": "sampling"}, "paper_default: must be a greedy plan .* got mode 'sampling'"),
    ({"levels": [1, 32], "propose": 2, "draft_confidence": 0.5}, "paper_default: must be a greedy plan .* with confidence thresholds"),
])
def test_a_paper_default_optimize_cannot_price_is_refused_when_the_profile_loads(paper, match):
    """Every optimize prices the paper default; one of unmeasured exits loaded, then failed
    every optimize naming `levels` (a review, 2026-12-03)."""
    d = json.loads(synthetic_profile(32, 0.5, 0.7).model_dump_json())
    w = d["workloads"]["synthetic"]
    w["exits"], w["agreement"] = [1, 32], [[1, 0.7], [0.7, 1]]
    Profile.model_validate(d)  # without a paper default: fine
    with pytest.raises(ValueError, match=match):
        Profile.model_validate({**d, "paper_default": paper})
    Profile.model_validate({**d, "paper_default": {"levels": [1, 32], "propose": 2}})
