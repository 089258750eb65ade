"""The explorer in a real browser (Debian chromium + Playwright): sliders vs the Python reference, the
measured view, bad run files, file:// export, and no request leaving 127.0.0.1.

Screenshots go to test-artifacts/ (gitignored).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from persona_basins.landscape import model as M
from persona_basins.viz.headless import CHROMIUM
from persona_basins.viz.headless import CHROMIUM_ARGS as ARGS
from persona_basins.viz.report import write_report
from persona_basins.viz.sample import write_demo_run, write_em_run
from persona_basins.viz.server import make_server

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
P = M.DEFAULT
TOL = 1e-9


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: run scripts/setup.sh --browser")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    demo = write_demo_run(root / "demo")
    demo2 = write_demo_run(root / "demo-b", seed=3, shift=0.3)
    em = write_em_run(root / "em")
    bad = root / "broken"
    bad.mkdir()
    (bad / "config.json").write_text('{"kind": "demo"}')
    (bad / "metrics.json").write_text('{"kind": "demo", "oops": ')
    (bad / "study.json").write_text(
        '{"kind": "demo", "misalignment_vs_t": {"plain": {"t": [0, 1], "mean": [0.1]}}}'
    )
    return [demo, demo2, em, bad]


@pytest.fixture(scope="module")
def server_url(run_dirs):
    httpd, url = make_server(run_dirs, port=0)
    th = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    yield url
    httpd.shutdown()
    httpd.server_close()


class Guard:
    """Fails any request that is not to the allowed origin (or the page's own file:// / data: / blob:)."""

    def __init__(self, page, allowed_prefix: str):
        self.blocked: list[str] = []
        self.errors: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))

        def route(r):
            url = r.request.url
            if url.startswith(allowed_prefix) or url.startswith(("data:", "blob:")):
                r.continue_()
            else:
                self.blocked.append(url)
                r.abort()

        page.route("**/*", route)

    def check(self):
        assert self.blocked == [], f"requests outside 127.0.0.1: {self.blocked}"
        assert self.errors == [], f"page errors: {self.errors}"


def open_page(browser, url, allowed):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    guard = Guard(page, allowed)
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']", timeout=30000)
    return page, guard


def settle(page):
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


READ = """() => {
  const d = id => document.getElementById(id).dataset, s = window.PBExplorer.state;
  return {delta: s.delta, theta: s.theta, s: s.s, x: +d('ro-point').x, y: +d('ro-point').y,
          label: +d('ro-basin').label, bt: d('ro-boundary').t === '' ? null : +d('ro-boundary').t,
          bto: d('ro-boundary').to === '' ? null : +d('ro-boundary').to, width: +d('ro-overlap').width,
          argmax: +d('ro-llc').argmax, llcmax: +d('ro-llc').max,
          sliders: [+document.getElementById('sl-delta').value, +document.getElementById('sl-theta').value,
                    +document.getElementById('sl-s').value]};
}"""


def check_against_python(page) -> dict:
    """The page's readouts equal the Python reference for the page's slider values."""
    settle(page)
    got = page.evaluate(READ)
    assert got["sliders"] == [got["delta"], got["theta"], got["s"]]
    ref = M.view_state(got["delta"], got["theta"], got["s"], P)
    assert abs(got["x"] - ref["point"][0]) <= TOL and abs(got["y"] - ref["point"][1]) <= TOL
    assert got["label"] == ref["basin"]
    assert (got["bt"] is None) == (ref["boundary_t"] is None)
    if ref["boundary_t"] is not None:
        assert abs(got["bt"] - ref["boundary_t"]) <= TOL and got["bto"] == ref["boundary_to"]
    assert abs(got["width"] - ref["overlap_width"]) <= TOL
    assert abs(got["argmax"] - ref["llc_argmax_t"]) <= TOL and abs(got["llcmax"] - ref["llc_max"]) <= TOL
    return got


def press(page, slider, key, times=1):
    page.focus(f"#sl-{slider}")
    for _ in range(times):
        page.keyboard.press(key)


def shot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=False)


def test_sliders_move_the_view_as_python_says(browser, server_url):
    page, guard = open_page(browser, server_url + "#d=0.60&th=-4&s=0.00", server_url)
    start = check_against_python(page)
    assert start["label"] == P.aligned and start["bto"] == P.misaligned
    shot(page, "explorer-start.png")

    # magnitude: the point moves along the ray and, past the boundary, into the misaligned basin
    press(page, "delta", "ArrowRight", 5)
    moved = check_against_python(page)
    assert moved["delta"] == pytest.approx(0.65) and moved["x"] > start["x"]
    assert moved["bt"] == start["bt"] and moved["width"] == start["width"]  # the landscape did not change
    press(page, "delta", "End")
    crossed = check_against_python(page)
    assert crossed["delta"] == P.ranges["delta"][1] and crossed["label"] == P.misaligned
    shot(page, "explorer-crossed.png")

    # direction: a new ray, so a new boundary, overlap width and LLC peak
    press(page, "theta", "ArrowRight", 24)
    turned = check_against_python(page)
    assert turned["theta"] == 20 and turned["bt"] != crossed["bt"] and turned["bto"] != P.misaligned
    assert turned["width"] != crossed["width"] and turned["argmax"] != crossed["argmax"]

    # inoculation: back on the toxic ray; the boundary moves out, the point stays put
    press(page, "theta", "ArrowLeft", 24)
    press(page, "delta", "Home")
    press(page, "delta", "ArrowRight", 150)
    before = check_against_python(page)
    press(page, "s", "End")
    inoc = check_against_python(page)
    assert inoc["s"] == 1.0
    assert (inoc["x"], inoc["y"]) == (before["x"], before["y"])
    assert inoc["bt"] > before["bt"] + 0.15
    assert inoc["width"] != before["width"] and inoc["argmax"] > before["argmax"]
    shot(page, "explorer-inoculated.png")

    # the view is in the URL hash once the sliders rest
    page.wait_for_function("location.hash === '#d=1.50&th=-4&s=1.00'", timeout=5000)
    guard.check()
    page.close()


def test_mouse_drag_and_shared_link(browser, server_url):
    page, guard = open_page(browser, server_url + "#d=2.00&th=20&s=0.50", server_url)
    got = check_against_python(page)
    assert (got["delta"], got["theta"], got["s"]) == (2.0, 20, 0.5)
    box = page.locator("#sl-delta").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.57, y)
    page.mouse.down()
    for f in np.linspace(0.57, 0.15, 12):
        page.mouse.move(box["x"] + box["width"] * f, y)
    page.mouse.up()
    dragged = check_against_python(page)
    assert dragged["delta"] < 1.0
    guard.check()
    page.close()


def test_js_in_chromium_matches_python(browser, server_url):
    page, guard = open_page(browser, server_url, server_url)
    xs = np.linspace(-3.0, 3.0, 13)
    ys = np.linspace(-2.4, 2.4, 11)
    pts = [[float(x), float(y)] for y in ys for x in xs]
    res = page.evaluate(
        """([pts, s]) => { const p = JSON.parse(document.getElementById('pb-data').textContent).landscape;
             const L = window.PBLandscape, ctx = L.context(p, s);
             return pts.map(([x, y]) => [L.potential(p, s, x, y), L.flowBasin(ctx, x, y),
                                         L.outputGap(ctx, x, y), L.inOverlap(ctx, x, y) ? 1 : 0,
                                         L.llcAt(ctx, x, y)]); }""",
        [pts, 0.4],
    )
    arr = np.asarray(pts)
    got = np.asarray(res, dtype=np.float64)
    labels = M.flow_basin(arr[:, 0], arr[:, 1], P, 0.4)
    assert np.max(np.abs(got[:, 0] - M.potential(arr[:, 0], arr[:, 1], P, 0.4))) <= TOL
    assert got[:, 1].astype(int).tolist() == labels.tolist()
    assert np.max(np.abs(got[:, 2] - M.output_gap(arr[:, 0], arr[:, 1], P, 0.4))) <= TOL
    assert (
        got[:, 3].astype(bool).tolist() == M.in_overlap(arr[:, 0], arr[:, 1], P, 0.4, labels=labels).tolist()
    )
    llc = np.asarray([M.llc_at(x, y, P, 0.4) for x, y in pts])
    assert np.max(np.abs(got[:, 4] - llc)) <= TOL
    guard.check()
    page.close()


def _check_measured(page, bad_dir: Path):
    rows = page.locator("#summary-table tbody tr").count()
    assert rows > 20
    for pid in (
        "plot-misalignment_vs_t",
        "plot-llc_along_path",
        "plot-overlap",
        "plot-broad_misalignment",
        "plot-transition-mis",
        "plot-transition-norm",
        "plot-transition-cos",
    ):
        assert page.locator(f"#{pid} .main-svg").count() >= 1, pid
    # legend lists the runs when several are overlaid
    legend = page.locator("#plot-misalignment_vs_t .legend").text_content()
    assert "demo" in legend and "demo-b" in legend
    problems = page.locator("#problem-list").inner_text()
    assert str(bad_dir / "metrics.json") in problems and "malformed JSON" in problems
    assert str(bad_dir / "study.json") in problems and "misalignment_vs_t.plain" in problems
    assert page.get_attribute("body", "data-rendered") in ("lo", "hi")  # the theory view still drew


def test_measured_view_and_bad_files(browser, server_url, run_dirs):
    page, guard = open_page(browser, server_url, server_url)
    _check_measured(page, run_dirs[3])
    check_against_python(page)
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#measured").screenshot(path=str(ARTIFACTS / "explorer-measured.png"))
    page.screenshot(path=str(ARTIFACTS / "explorer-full.png"), full_page=True)
    guard.check()
    page.close()


def test_exported_file_works_from_file_url(browser, run_dirs, tmp_path):
    out = write_report(run_dirs, tmp_path / "report.html")
    url = out.resolve().as_uri()
    page, guard = open_page(browser, url + "#d=0.60&th=-4&s=0.00", url.rsplit("/", 1)[0] + "/report.html")
    check_against_python(page)
    press(page, "delta", "ArrowRight", 100)
    press(page, "theta", "ArrowLeft", 10)
    press(page, "s", "ArrowRight", 40)
    got = check_against_python(page)
    assert (got["delta"], got["theta"], got["s"]) == (1.6, -14, 0.4)
    _check_measured(page, run_dirs[3])
    page.wait_for_function("location.hash === '#d=1.60&th=-14&s=0.40'", timeout=5000)
    shot(page, "explorer-file-url.png")
    guard.check()
    page.close()


def test_theory_view_survives_a_run_with_only_bad_files(browser, tmp_path):
    bad = tmp_path / "only-bad"
    bad.mkdir()
    (bad / "metrics.json").write_text("not json")
    out = write_report([bad], tmp_path / "bad.html")
    url = out.resolve().as_uri()
    page, guard = open_page(browser, url, url)
    problems = page.locator("#problem-list").inner_text()
    assert str(bad / "config.json") in problems and "missing file" in problems
    assert str(bad / "metrics.json") in problems
    check_against_python(page)
    guard.check()
    page.close()


def test_real_tiny_demo_study_renders(browser, tiny_demo_run, tmp_path):
    """The page on a real study.json (not the synthetic sample): every measured section draws, no problems."""
    out = write_report([tiny_demo_run], tmp_path / "real.html")
    url = out.resolve().as_uri()
    page, guard = open_page(browser, url, url.rsplit("/", 1)[0])
    assert page.locator("#problem-list li").count() == 0, page.locator("#problem-list").inner_text()
    rows = page.locator("#summary-table tbody tr").all_inner_texts()
    assert any("broad misalignment" in r and "plain" in r for r in rows), (
        rows
    )  # nested under emergent_misalignment
    for pid in ("plot-misalignment_vs_t", "plot-llc_along_path", "plot-overlap", "plot-broad_misalignment"):
        assert page.locator(f"#{pid} .main-svg").count() >= 1, pid
    table = page.locator("#summary-table").inner_text()
    assert "critical magnitude t*" in table and "\u03b4*" not in table  # Python's name, not another
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "explorer-real-demo.png"), full_page=True)
    guard.check()
    page.close()


VERDICTS = {"confirmed", "refuted", "undecided", "withheld", "no verdict"}
TRACES = "id => (document.getElementById(id).data || []).map(t => ({x: t.x || [], y: t.y || []}))"


def _drawn_at(page, plot_id: str, ts) -> list:
    """The finite y values any trace of the plot draws at the given t."""
    out = []
    for tr in page.evaluate(TRACES, plot_id):
        out += [y for x, y in zip(tr["x"], tr["y"]) if x in ts and y is not None]
    return out


def test_verdict_panel_leads_the_real_tiny_demo(browser, tiny_demo_run, tmp_path):
    """On the real tiny demo: the verdict panel comes first with each claim's verdict, no withheld value is
    drawn, censored t* are written as bounds, and the interval method is the one the data name."""
    import json

    study = json.loads((tiny_demo_run / "study.json").read_text())
    out = write_report([tiny_demo_run], tmp_path / "real.html")
    url = out.resolve().as_uri()
    page, guard = open_page(browser, url, url.rsplit("/", 1)[0])
    assert page.evaluate("document.querySelector('main > section').id") == "verdicts"
    assert page.locator("#verdicts").bounding_box()["y"] < page.locator("#theory").bounding_box()["y"]
    rows = page.locator("#verdicts tr[data-claim]")
    claims = {rows.nth(i).get_attribute("data-claim"): rows.nth(i) for i in range(rows.count())}
    assert list(claims) == ["em", "inoculation", "llc", "overlap", "eigenform"]
    for claim, row in claims.items():
        assert row.locator(".badge").inner_text() in VERDICTS, claim
        assert row.locator("a").count() == 1, claim  # the link to its section, which exists
    assert claims["inoculation"].locator(".badge").inner_text() == study["inoculation"]["verdict"]
    assert study["eigenform"]["verdict"]["reason"] in claims["eigenform"].inner_text()
    assert "smoke test" in page.locator("#verdicts").inner_text()  # the tiny preset says what it is

    llc = study["llc_along_path"]
    withheld = [t for t, v in zip(llc["t"], llc["mean"]) if v is None]
    assert _drawn_at(page, "plot-llc_along_path", withheld) == []
    if len(withheld) == len(llc["t"]):
        assert claims["llc"].locator(".badge").inner_text() == "withheld"
        assert llc["reason"] in page.locator("#sec-llc .withheld-note").inner_text()

    for row in page.locator("#summary-table tr[data-bound]").all_inner_texts():
        assert "≥" in row or "≤" in row, row
    keys = page.evaluate("[...document.querySelectorAll('#summary-table tr')].map(r => r.dataset.key || '')")
    assert not [k for k in keys if k.endswith(".lower_bound")]  # a bound is never shown as an estimate
    cap = page.locator("#sec-broad_misalignment .cap").inner_text()
    method = study["emergent_misalignment"]["broad_misalignment"]["plain"]["method"]
    assert method in cap and "95% Student-t interval" not in page.locator("#measured").inner_text()
    page.set_viewport_size({"width": 1280, "height": 900})
    page.evaluate("window.scrollTo(0, 0)")
    shot(page, "report-top.png")
    guard.check()
    page.close()


def test_an_llc_chart_with_every_point_withheld_shows_the_reasons(browser, tmp_path):
    import json

    run = write_demo_run(tmp_path / "demo")
    study = json.loads((run / "study.json").read_text())
    for key in ("llc_along_path", "wrllc_along_path"):
        band = study[key]
        band.update({k: [None] * len(band["t"]) for k in ("mean", "ci_low", "ci_high")})
        band["reason"] = f"{len(band['t'])} of {len(band['t'])} points withheld (R-hat 1.31 > 1.01)"
    (run / "study.json").write_text(json.dumps(study))
    out = write_report([run], tmp_path / "withheld.html")
    url = out.resolve().as_uri()
    page, guard = open_page(browser, url + "#d=0.60&th=-4&s=0.00", url)
    assert _drawn_at(page, "plot-llc_along_path", study["llc_along_path"]["t"]) == []
    note = page.locator("#sec-llc .withheld-note").inner_text()
    assert "R-hat 1.31 > 1.01" in note and "weight-restricted" in note
    assert "every point withheld" in page.locator("#plot-llc_along_path").inner_text()
    assert page.locator("#verdicts tr[data-claim='llc'] .badge").inner_text() == "withheld"
    page.locator("#verdicts tr[data-claim='llc'] a").click()  # jumps to the chart, keeps the theory view
    assert page.evaluate("location.hash") == "#d=0.60&th=-4&s=0.00"
    assert -2 < page.locator("#sec-llc").bounding_box()["y"] < 200
    guard.check()
    page.close()


def test_llc_estimate_and_path_runs_show_their_gates(browser, tmp_path):
    import json

    est, path = tmp_path / "llc", tmp_path / "path"
    for folder, kind in ((est, "llc"), (path, "llc_path")):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"kind": kind}))
    reasons = ["R-hat 1.24 > 1.01", "ESS bulk 31 < 100"]
    llc = {"mean": None, "mcse": 0.3, "converged": False, "reasons": reasons, "interval": "mean ± 1.96 MCSE"}
    diagnostics = {"rhat": 1.24, "ess_bulk": 31.0, "num_chains": 2, "num_draws": 4, "loss": "self_kl"}
    trace = [[5.1, 5.3, 5.2, 5.4], [4.9, 5.0, 5.2, 5.1]]
    metrics = {"kind": "llc", "llc": llc, "diagnostics": diagnostics, "llc_trace": trace}
    (est / "metrics.json").write_text(json.dumps(metrics))
    seed = {
        "seed": 0,
        "llc": [None, 2.0, None],
        "mcse": [None, 0.1, None],
        "converged": [False, True, False],
        "reasons": [["R-hat 1.2 > 1.01"], [], ["ESS bulk 20 < 100"]],
    }
    verdict = {"verdict": "undecided", "supports": "0 of 1 seeds", "band": [0.5, 1.5]}
    metrics = {
        "kind": "llc_path",
        "ts": [0.0, 1.0, 2.0],
        "band": [0.5, 1.5],
        "curves": {"plain/all/self_kl": [seed]},
        "verdicts": {"plain/all/self_kl": verdict},
    }
    (path / "metrics.json").write_text(json.dumps(metrics))
    out = write_report([est, path], tmp_path / "llc.html")
    url = out.resolve().as_uri()
    page, guard = open_page(browser, url, url)
    table = page.locator("#sec-llc-estimate table").inner_text()
    assert "withheld: R-hat 1.24 > 1.01; ESS bulk 31 < 100" in table and "5.2" not in table
    assert "withheld" in page.locator("#plot-llc-trace-0 .gtitle").text_content()
    assert _drawn_at(page, "plot-llc-path-1", [0.0, 2.0]) == [] and _drawn_at(page, "plot-llc-path-1", [1.0])
    note = page.locator("#sec-llc-path .withheld-note").inner_text()
    assert "R-hat 1.2 > 1.01" in note and "ESS bulk 20 < 100" in note
    row = page.locator("#verdicts tr[data-claim='llc']")
    assert row.locator(".badge").inner_text() == "undecided" and "0 of 1 seeds support" in row.inner_text()
    guard.check()
    page.close()
