"""The report in a real browser: headless Chromium opens it from file://, every figure
renders (plotly's main-svg inside each figure div after load), the page logs nothing to
the console (no errors, no CSP violations = no network attempts), a screenshot is taken,
and a profile named <script>alert(1)</script> is shown escaped, never executed.

In CI (CI=true) a missing Chromium fails the test; locally it skips with the reason."""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from factories import make_profile
from hispec_sim import report
from hispec_sim.schema import Source, save_profile

EVIL = "<script>alert(1)</script>"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if Path("/usr/bin/chromium").exists():
        return "/usr/bin/chromium"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("chromium is not installed (CI must run the browser test: bash scripts/test-deps.sh)")
    pytest.skip("chromium is not installed (install it with: bash scripts/test-deps.sh)")


def run_chromium(url: str, tmp: Path, *extra: str, timeout: int = 180) -> subprocess.CompletedProcess:
    profile_dir = tmp / f"chrome-{len(list(tmp.glob('chrome-*')))}"
    profile_dir.mkdir()
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: any lookup fails
           f"--user-data-dir={profile_dir}", "--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0",
           *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout,
                          env={**os.environ, "HOME": str(tmp)})


def console_lines(stderr: str) -> list[str]:
    """Everything the page wrote to the console (Chromium logs console.* and uncaught errors
    as CONSOLE lines whatever the level), and any uncaught exception."""
    return [l for l in stderr.splitlines() if ":CONSOLE" in l or "Uncaught" in l]


def figure_divs(dom: str) -> dict[str, str]:
    """The DOM of each figure div: from its opening tag to the next figure / caption."""
    out = {}
    for m in re.finditer(r'<div id="(fig-[a-z-]+)"', dom):
        end = dom.find('<p class="muted">', m.end())
        out[m.group(1)] = dom[m.start(): end if end > 0 else len(dom)]
    return out


def png_info(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct byte values of the decoded image data)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    w, h = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    raw = zlib.decompress(idat)
    return w, h, len(set(raw[: 4_000_000]))


def check_rendered(html_path: Path, tmp: Path, expect: set[str]) -> str:
    url = html_path.resolve().as_uri()
    r = run_chromium(url, tmp, "--dump-dom")
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    assert console_lines(r.stderr) == [], "\n".join(console_lines(r.stderr))
    divs = figure_divs(dom)
    assert set(divs) == expect
    for fid, div in divs.items():
        assert 'class="main-svg"' in div or "main-svg" in div, f"{fid} did not render"
        assert "plot-container" in div, f"{fid} has no plotly container"
    return dom


@pytest.fixture(scope="module")
def evil_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evil")
    p = make_profile(layers=16, slope=0.05, name=EVIL)
    acc = p.workloads["w"].model_copy(update={"source": Source(kind="assumed", detail=EVIL)})
    p = p.model_copy(update={"description": EVIL, "workloads": {EVIL: acc}, "default_workload": EVIL,
                             "provenance": {"note": EVIL}})
    save_profile(p, tmp / "evil.json")
    val = tmp / "val.json"
    val.write_text(json.dumps({"plans": [
        {"plan": {"levels": [4, 16], "propose": 2}, "family": EVIL, "predicted_tokens_per_second": 100.0,
         "measured_tokens_per_second": 97.0, "relative_error": 0.031},
        {"plan": {"levels": [16], "propose": 1, "windows": [], "mode": "greedy", "batch": 1},
         "predicted_tokens_per_second": 80.0, "measured_tokens_per_second": 84.0, "relative_error": -0.048}],
        "median_abs_relative_error": 0.0395, "max_abs_relative_error": 0.048, "machine_warning": EVIL}))
    out = tmp / "report.html"
    report.build_report(str(tmp / "evil.json"), str(out), "html", max_batch=32, validation=str(val), serving_requests=10)
    return tmp, out


def test_every_figure_renders_without_console_errors(evil_report):
    tmp, out = evil_report
    dom = check_rendered(out, tmp, {"fig-exits", "fig-windows", "fig-batch", "fig-sensitivity", "fig-serving", "fig-validation"})
    # escaped, not executed: no script element came from the name, the text is shown literally
    assert EVIL not in dom
    assert dom.count("<script") == 4
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom


def test_screenshot_is_a_real_picture(evil_report):
    tmp, out = evil_report
    shot = tmp / "shot.png"
    r = run_chromium(out.resolve().as_uri(), tmp, "--hide-scrollbars", "--window-size=1400,3000", f"--screenshot={shot}")
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    w, h, distinct = png_info(shot)
    assert (w, h) == (1400, 3000)
    assert shot.stat().st_size > 50_000 and distinct > 50  # not a blank page


def test_console_check_catches_errors(tmp_path):
    """The harness itself: a page that throws is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><div id=\"fig-x\"></div><script>throw new Error('boom')</script></body></html>")
    r = run_chromium(bad.resolve().as_uri(), tmp_path, "--dump-dom")
    assert any("boom" in l for l in console_lines(r.stderr))


@pytest.mark.slow  # end to end: the shipped 80-layer profile's full report, then Chromium
def test_shipped_profile_report_renders(tmp_path):
    """The acceptance criterion: `hispec-sim report --profile a100_llama70b --out r.html`."""
    from hispec_sim.cli import main

    chromium()
    out = tmp_path / "r.html"
    assert main(["report", "--profile", "a100_llama70b", "--out", str(out)]) == 0
    check_rendered(out, tmp_path, {"fig-exits", "fig-windows", "fig-batch", "fig-sensitivity", "fig-serving"})


def test_network_attempts_would_be_caught(evil_report, tmp_path):
    """The report's Content-Security-Policy blocks any request and Chromium logs the
    violation as a console line, so the no-console-output check also proves 'no requests'."""
    _, out = evil_report
    page = tmp_path / "net.html"
    page.write_text(out.read_text(encoding="utf-8").replace("<h1>", '<img src="https://example.com/x.png"><h1>', 1), encoding="utf-8")
    r = run_chromium(page.resolve().as_uri(), tmp_path, "--dump-dom")
    assert any("Content Security Policy" in l and "example.com" in l for l in console_lines(r.stderr))


def test_missing_chromium_fails_in_ci_and_skips_locally(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda self: False if str(self) == "/usr/bin/chromium" else real_exists(self))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium is not installed"):
        chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed"):
        chromium()
