"""The explorer page and server without a browser: report file, tolerant run loading, server safety, CLI."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import threading
from pathlib import Path

import pytest

from persona_basins import cli
from persona_basins.errors import UserError
from persona_basins.viz import report as R
from persona_basins.viz import runs as RU
from persona_basins.viz.sample import write_demo_run, write_em_run
from persona_basins.viz.server import make_server

STATIC = Path(R.__file__).resolve().parent / "static"
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a2dd4a7a0000000049454e44ae426082"
)


@pytest.fixture()
def runs(tmp_path):
    demo = write_demo_run(tmp_path / "demo")
    (demo / "figures").mkdir()
    (demo / "figures" / "scan.png").write_bytes(PNG)
    em = write_em_run(tmp_path / "em")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text('{"kind": "demo"}')
    (bad / "metrics.json").write_text('{"kind": "demo", "broken": ')
    nometrics = tmp_path / "nometrics"
    nometrics.mkdir()
    (nometrics / "config.json").write_text('{"kind": "em"}')
    return {"demo": demo, "em": em, "bad": bad, "nometrics": nometrics}


def _embedded(html: str) -> dict:
    m = re.search(r'<script id="pb-data" type="application/json">(.*?)</script>', html, re.S)
    assert m, "embedded data missing"
    return json.loads(m.group(1))


def test_vendored_plotly_checksum_and_licence():
    vendor = STATIC / "vendor"
    line = (vendor / "SHA256SUMS").read_text().split()
    digest, name = line[0], line[1]
    assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest
    assert "MIT" in (vendor / "LICENSE.plotly.js").read_text()


def test_page_is_self_contained(runs, tmp_path):
    out = R.write_report([runs["demo"], runs["em"]], tmp_path / "out" / "report.html")
    html = out.read_text()
    assert not re.search(r"<script[^>]+src=", html), "no external scripts"
    assert not re.search(r'<link[^>]+href=["\']https?:', html), "no external stylesheets"
    assert 'type="module"' not in html and "import(" not in (STATIC / "explorer.js").read_text()
    for js in ("explorer.js", "landscape.js"):
        text = (STATIC / js).read_text()
        assert "fetch(" not in text and "XMLHttpRequest" not in text
    assert "default-src 'none'" in html  # CSP: the page cannot reach the network
    data = _embedded(html)
    assert [r["name"] for r in data["runs"]] == ["demo", "em"]
    assert data["landscape"]["names"][0] == "helpful assistant"
    assert data["runs"][0]["figures"] == [{"name": "scan.png", "url": "../demo/figures/scan.png"}]
    assert not [p for p in out.parent.iterdir() if p.name != "report.html"], (
        "atomic write leaves no temp file"
    )


def test_bad_run_files_are_named_not_fatal(runs, tmp_path):
    loaded = RU.load_runs([runs["bad"], runs["nometrics"], runs["demo"]])
    bad, nom, demo = loaded
    assert bad["metrics"] is None and any("metrics.json: malformed JSON" in e for e in bad["errors"])
    assert bad["config"] == {"kind": "demo"} and bad["kind"] == "demo"
    assert any(e.endswith("metrics.json: missing file") for e in nom["errors"])
    assert demo["errors"] == [] and demo["study"]["kind"] == "demo"
    html = R.build_html([runs["bad"], runs["demo"]])
    data = _embedded(html)
    assert str(runs["bad"] / "metrics.json") in data["runs"][0]["errors"][0]


def test_non_finite_numbers_become_null(tmp_path):
    run = tmp_path / "nan"
    run.mkdir()
    (run / "config.json").write_text('{"kind": "em"}')
    (run / "metrics.json").write_text('{"kind": "em", "x": {"mean": NaN, "ci_low": -Infinity}}')
    data = _embedded(R.build_html([run]))
    assert data["runs"][0]["metrics"]["x"] == {"mean": None, "ci_low": None}


def test_missing_run_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="run folder not found"):
        R.write_report([tmp_path / "nope"], tmp_path / "r.html")


def test_report_command(runs, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert cli.main(["report", str(runs["demo"]), str(runs["bad"]), "--out", str(out)]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out
    assert cli.main(["report", str(tmp_path / "missing"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run folder not found" in err[0]
    assert cli.main(["report", str(runs["demo"]), "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_explore_command_is_registered():
    args = cli.build_parser().parse_args(["explore", "a", "b", "--port", "8123", "--no-browser"])
    assert args.runs == ["a", "b"] and args.port == 8123 and args.no_browser and callable(args.func)


@pytest.fixture()
def server(runs):
    httpd, url = make_server([runs["demo"], runs["bad"]], port=0)
    th = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    yield httpd, url
    httpd.shutdown()
    httpd.server_close()


def _get(httpd, path, host=None):
    port = httpd.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("GET", path, skip_host=True)
    conn.putheader("Host", host or f"127.0.0.1:{port}")
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def test_server_binds_loopback_and_serves_page(server):
    httpd, url = server
    assert httpd.server_address[0] == "127.0.0.1" and url.startswith("http://127.0.0.1:")
    status, body = _get(httpd, "/")
    assert status == 200 and b"persona-basins explorer" in body
    data = _embedded(body.decode())
    assert data["runs"][0]["figures"][0]["url"] == "/runs/0/figures/scan.png"
    assert _get(httpd, "/runs/0/figures/scan.png") == (200, PNG)


@pytest.mark.parametrize(
    "path",
    [
        "/runs/0/figures/../config.json",
        "/runs/0/figures/%2e%2e/config.json",
        "/runs/0/figures/..%2fconfig.json",
        "/runs/0/figures/..%2f..%2fdemo%2fstudy.json",
        "/runs/1/figures/../../demo/study.json",
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/runs/0/config.json",
        "/runs/7/figures/scan.png",
        "/static/explorer.js",
        "//etc/passwd",
    ],
)
def test_server_refuses_paths_outside_what_it_serves(server, path):
    httpd, _ = server
    status, body = _get(httpd, path)
    assert status in (403, 404), (path, status)
    assert b'"kind"' not in body and b"root:" not in body


def test_server_refuses_foreign_host_header(server):
    httpd, _ = server
    status, _ = _get(httpd, "/", host="evil.example:80")
    assert status == 403


def test_server_refuses_a_symlinked_figures_folder_leading_out_of_the_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"kind": "em"}')
    (run / "config.json").write_text('{"kind": "em"}')
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(PNG)
    (run / "figures").symlink_to(outside, target_is_directory=True)
    httpd, _ = make_server([run], port=0)
    th = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    try:
        status, body = _get(httpd, "/runs/0/figures/secret.png")
        assert status == 403 and body != PNG
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_server_drops_a_half_sent_request_after_its_read_timeout(runs, monkeypatch):
    import socket
    import time

    from persona_basins.viz import server as server_module

    monkeypatch.setattr(server_module, "READ_TIMEOUT_S", 0.5)
    httpd, _ = make_server([runs["demo"]], port=0)
    th = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    th.start()
    try:
        with socket.create_connection(("127.0.0.1", httpd.server_address[1]), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1")  # never finishes its headers
            start = time.monotonic()
            sock.settimeout(10)
            while sock.recv(4096):  # the server closes the connection (possibly after a 408 line)
                pass
            assert time.monotonic() - start < 5
    finally:
        httpd.shutdown()
        httpd.server_close()


# ------------------------------------------------------------------------------------ the verdict panel
DEFAULT_STUDY = Path(__file__).resolve().parents[1] / "docs" / "results" / "demo-default" / "study.json"


def _claims_of(study: dict) -> dict:
    from persona_basins.viz.claims import claims

    return {c["id"]: c for c in claims({"study": study, "metrics": None})}


def test_claims_read_the_default_study_in_the_essays_order():
    from persona_basins.viz.claims import VERDICTS, claims

    study = json.loads(DEFAULT_STUDY.read_text())
    listed = claims({"study": study, "metrics": None})
    assert [c["id"] for c in listed] == ["em", "inoculation", "llc", "overlap", "eigenform"]
    assert all(c["verdict"] in VERDICTS and c["section"].startswith("sec-") for c in listed)
    by_id = {c["id"]: c for c in listed}
    em = study["emergent_misalignment"]["excess_over_base"]["broad_misalignment"]["plain"]
    # 4 of 5 broad: the share's exact interval [0.28, 0.99] contains 1/2 (the stored study predates the
    # stored verdict, so the claim computes it through measure/em_verdicts.py)
    assert by_id["em"]["verdict"] == "undecided" and by_id["em"]["k_of_n"] == "4 of 5 seeds ≥ 0.20"
    assert "fewer than 6 seeds cannot decide" in by_id["em"]["why"]
    assert f"{em['mean']:.3f}" in by_id["em"]["number"] and em["method"] in by_id["em"]["number"]
    assert by_id["inoculation"]["verdict"] == study["inoculation"]["verdict"]
    assert "Student-t on log ratios" in by_id["inoculation"]["number"]  # the method the data name
    conditional = study["inoculation"]["verdict_conditional"]
    assert f"conditional on well-formed answers: {conditional}" in by_id["inoculation"]["why"]
    assert by_id["llc"]["verdict"] == "withheld" and by_id["llc"]["why"] == study["llc_along_path"]["reason"]
    assert by_id["eigenform"]["verdict"] == "undecided"
    assert by_id["eigenform"]["why"] == study["eigenform"]["verdict"]["reason"]
    assert by_id["overlap"]["verdict"] == "no verdict"  # measured, no test stated: no verdict invented


@pytest.mark.parametrize(
    "k, n, verdict",
    [(4, 5, "undecided"), (0, 5, "undecided"), (2, 3, "undecided"), (6, 6, "confirmed"), (0, 6, "refuted")],
)
@pytest.mark.parametrize("stored", ["count", "per_seed"])
def test_em_verdict_of_an_old_run_from_its_count(k, n, verdict, stored):
    """A run written before the verdict was stored: the claim computes it through measure/em_verdicts.py
    (from the per-seed excess, or from the count alone), with the exact-interval rule."""
    stat = {"mean": 0.5, "ci_low": 0.1, "ci_high": 0.9, "k_above": k, "n": n, "threshold": 0.2}
    if stored == "per_seed":
        stat["per_seed"] = [0.9] * k + [0.0] * (n - k)
    study = {"emergent_misalignment": {"excess_over_base": {"broad_misalignment": {"plain": stat}}}}
    claim = _claims_of(study)["em"]
    assert claim["verdict"] == verdict and claim["k_of_n"] == f"{k} of {n} seeds ≥ 0.20"
    assert "interval method not recorded" in claim["number"]  # no method key: not assumed
    assert "computed from the stored seeds" in claim["why"]


def test_em_claim_reads_the_stored_verdict():
    from persona_basins.measure.em_verdicts import em_verdict

    stat = {"mean": 0.5, "ci_low": 0.1, "ci_high": 0.9, "k_above": 6, "n": 6, "threshold": 0.2}
    stored = {**em_verdict([0.9] * 6, threshold=0.2), "verdict": "refuted", "reason": "as stored"}
    em = {"excess_over_base": {"broad_misalignment": {"plain": stat}}, "em_verdict": stored}
    claim = _claims_of({"emergent_misalignment": em})["em"]
    assert (claim["verdict"], claim["why"]) == ("refuted", "as stored")  # read, not decided again
    assert claim["source"] == "study.json \u2192 emergent_misalignment.em_verdict"


def test_llc_claim_uses_a_recorded_verdict_and_withholds_only_without_points():
    band = {"t": [0.0, 1.0], "mean": [None, None], "ci_low": [None, None], "ci_high": [None, None], "n": 2}
    withheld = _claims_of({"llc_along_path": {**band, "reason": "R-hat 1.3 > 1.01"}})["llc"]
    assert withheld["verdict"] == "withheld" and withheld["why"] == "R-hat 1.3 > 1.01"
    kept = {
        **band,
        "mean": [1.0, 2.0],
        "t_argmax": 1.0,
        "verdict": {"verdict": "refuted", "supports": "0 of 2 seeds"},
    }
    claim = _claims_of({"llc_along_path": kept})["llc"]
    assert claim["verdict"] == "refuted" and claim["k_of_n"] == "0 of 2 seeds support"
    assert _claims_of({"llc_along_path": {**kept, "verdict": None}})["llc"]["verdict"] == "undecided"


def test_page_embeds_each_runs_claims(runs):
    data = R.page_data([runs["demo"], runs["em"]])
    sample = {c["id"]: c["verdict"] for c in data["runs"][0]["claims"]}
    assert sample == {"llc": "undecided", "overlap": "no verdict"}  # a curve and a zone, no verdicts recorded
    assert data["runs"][1]["claims"] == []


# ------------------------------------------------------------------------------------ load_run
def test_load_run_reads_config_metrics_and_figures(runs):
    import persona_basins

    run = persona_basins.load_run(runs["demo"])
    assert run.kind == "demo" and run.path == runs["demo"]
    assert run.config["preset"] == "sample" and "critical_magnitude" in run.metrics
    assert run.figures == [runs["demo"] / "figures" / "scan.png"] and run.study["kind"] == "demo"
    assert persona_basins.load_run(runs["em"]).study is None


def test_load_run_refuses_bad_folders_in_one_line(runs, tmp_path):
    import persona_basins

    with pytest.raises(UserError, match="run folder not found"):
        persona_basins.load_run(tmp_path / "nope")
    with pytest.raises(UserError, match="malformed JSON") as err:
        persona_basins.load_run(runs["bad"])
    assert str(runs["bad"] / "metrics.json") in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="no metrics.json"):
        persona_basins.load_run(runs["nometrics"])


def test_import_persona_basins_stays_light():
    import subprocess
    import sys

    code = "import sys, persona_basins; print(sorted({'torch', 'numpy', 'matplotlib'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------ figure titles
@pytest.fixture()
def drawn(monkeypatch):
    """The matplotlib figures a call draws (captured instead of saved)."""
    import persona_basins.results as results

    figs = []
    monkeypatch.setattr(results, "save_figure", lambda fig, path: figs.append(fig))
    return figs


def _texts(fig) -> list[str]:
    return [ax.get_title() for ax in fig.axes] + ([fig._suptitle.get_text()] if fig._suptitle else [])


def _trace_result(tmp_path, llc: dict):
    import numpy as np

    from persona_basins.results import StudyResult

    rng = np.random.default_rng(0)
    traces = {
        "loss (minibatch) per draw": 0.761 + 0.01 * rng.normal(size=(2, 20)),
        "λ per draw = nβ(L_B(w) − L_B(w*))": 4.321 + rng.normal(size=(2, 20)),
    }
    return StudyResult(tmp_path, {"figures": ["figures/llc_trace.png"], "llc": llc}, {"traces": traces})


def test_trace_figure_never_titles_a_withheld_estimate(tmp_path, drawn):
    from persona_basins.viz.llc_figures import draw_llc_figures

    llc = {"mean": None, "mcse": 0.4, "converged": False, "reasons": ["R-hat 1.30 > 1.01"]}
    draw_llc_figures(_trace_result(tmp_path, llc), title="LLC tiny")
    (fig,) = drawn
    titles = " | ".join(_texts(fig))
    assert "withheld: R-hat 1.30 > 1.01" in titles
    assert "4.3" not in titles and "0.76" not in titles and "λ̂=" not in titles  # no unchecked number
    loss_ax, llc_ax = fig.axes[:2]
    assert loss_ax.get_ylabel() == "minibatch loss" and llc_ax.get_ylabel() == "λ per draw"
    assert all(ax.get_xlabel() == "draw" for ax in (loss_ax, llc_ax))
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["chain 0", "chain 1"]


def test_trace_figure_titles_a_checked_estimate_with_its_interval(tmp_path, drawn):
    from persona_basins.viz.llc_figures import draw_llc_figures

    llc = {"mean": 4.321, "mcse": 0.05, "converged": True, "reasons": []}
    draw_llc_figures(_trace_result(tmp_path, llc))
    titles = _texts(drawn[0])
    assert "λ̂ = 4.32 ± 0.098 (95%, MCSE)" in titles[1] and "λ̂" not in titles[0]


def test_calibration_traces_name_failures_without_their_number(tmp_path, drawn):
    import numpy as np

    from persona_basins.viz.llc_figures import _calibration_notes, plot_traces

    grid = [
        {"nbeta": 10.0, "step_size": 1e-4, "localization": 100.0, "passed": True, "llc": 2.5},
        {
            "nbeta": 10.0,
            "step_size": 1e-3,
            "localization": 100.0,
            "passed": False,
            "llc": 9.87,
            "reasons": ["ESS bulk 12 < 100"],
        },
    ]
    traces = {(r["nbeta"], r["step_size"], r["localization"]): np.ones((2, 5)) for r in grid}
    plot_traces(traces, tmp_path / "c.png", notes=_calibration_notes(grid))
    titles = _texts(drawn[0])
    assert "λ̂ = 2.5 (passed)" in titles[0] and "failed: ESS bulk 12 < 100" in titles[1]
    assert "9.87" not in " ".join(titles)
