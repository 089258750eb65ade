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
