"""Withheld means withheld everywhere: an LLC estimate whose equilibrium gates fail shows its number in no
output — not the CLI's stdout or stderr, not a file of the run folder (metrics.json, config.json, log.txt,
the figure PNGs), not a figure's titles or labels, not the HTML report, not the explorer's embedded JSON.

The number is ``LLCResult.unchecked_mean`` of the run (caught where the study calls ``estimate_llc``); the
per-chain estimates it is the mean of are searched for too. Each is searched at every precision the code
formats numbers with; a match needs the digits on both sides to end there (``1.234`` is not found inside
``11.2345``), and a formatting with fewer than three significant digits is too coarse to name the number.
"""

from __future__ import annotations

import json
import math
import re
import threading

import pytest

from persona_basins.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

FORMATS = ("r", "s", ".6g", ".4g", ".3g", ".4f", ".3f", ".2f")  # repr, str and the code's f-string formats
DRAWS = ["--chains", "2", "--draws", "5", "--burnin", "0", "--batch-size", "8"]  # 5 draws fail the gates


def _significant_digits(spelled: str) -> int:
    return len(re.sub(r"e.*$", "", spelled.lstrip("-")).replace(".", "").lstrip("0"))


def _spellings(x: float) -> set[str]:
    spelled = {repr(x) if fmt == "r" else str(x) if fmt == "s" else format(x, fmt) for fmt in FORMATS}
    return {s for s in spelled if _significant_digits(s) >= 3}


def _found(text: str, x: float) -> list[str]:
    """The spellings of ``x`` that occur in ``text`` as a whole number (no digit right before or after)."""
    return sorted(s for s in _spellings(x) if re.search(rf"(?<![\d.]){re.escape(s)}(?!\d)", text))


def _numbers_equal_to(obj, x: float, path: str = "") -> list[str]:
    """The key paths of a JSON value holding ``x`` (to 1e-9 relative)."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _numbers_equal_to(v, x, f"{path}.{k}")]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _numbers_equal_to(v, x, f"{path}[{i}]")]
    if isinstance(obj, int | float) and not isinstance(obj, bool) and math.isfinite(obj):
        return [path] if math.isclose(obj, x, rel_tol=1e-9, abs_tol=1e-12) else []
    return []


def _without_unchecked(obj):
    """A JSON value less its fields named as unchecked (``unchecked_*``), the one place a withheld number
    may be kept."""
    if isinstance(obj, dict):
        return {k: _without_unchecked(v) for k, v in obj.items() if not k.startswith("unchecked")}
    if isinstance(obj, list):
        return [_without_unchecked(v) for v in obj]
    return obj


def _figure_texts(fig) -> list[str]:
    """Every title, label, legend entry and free text of a matplotlib figure (tick labels are the axes'
    scale, not a statement of a number)."""
    texts = [t.get_text() for t in fig.texts]
    if fig._suptitle is not None:
        texts.append(fig._suptitle.get_text())
    for ax in fig.axes:
        texts += [ax.get_title(loc) for loc in ("left", "center", "right")]
        texts += [ax.get_xlabel(), ax.get_ylabel()] + [t.get_text() for t in ax.texts]
        legend = ax.get_legend()
        if legend is not None:
            texts += [t.get_text() for t in legend.get_texts()]
    return texts


def _without_static_assets(html: str) -> str:
    """The report page less the package's own CSS and scripts (plotly.js holds many numbers of its own)."""
    from persona_basins.viz.report import PLOTLY, STATIC, _script_safe

    for asset in (PLOTLY, STATIC / "explorer.css", STATIC / "landscape.js", STATIC / "explorer.js"):
        html = html.replace(_script_safe(asset.read_text(encoding="utf-8")), "")
    return html


def _embedded(html: str) -> dict:
    m = re.search(r'<script id="pb-data" type="application/json">(.*?)</script>', html, re.S)
    assert m, "embedded data missing"
    return json.loads(m.group(1))


@pytest.fixture()
def withheld_run(tiny_organism_dir, tmp_path, capsys, monkeypatch):
    """An ``llc`` run on the tiny organism whose estimate is withheld: its folder, the number withheld and
    the per-chain estimates, the CLI's output and every text its figures were drawn with."""
    from persona_basins import results
    from persona_basins.studies import llc as llc_study

    results_seen, texts = [], []
    estimate, save = llc_study.estimate_llc, results.save_figure

    def estimate_and_keep(*args, **kwargs):
        results_seen.append(estimate(*args, **kwargs))
        return results_seen[-1]

    def save_and_read(fig, path):
        written = save(fig, path)
        texts.extend(_figure_texts(fig))
        return written

    monkeypatch.setattr(llc_study, "estimate_llc", estimate_and_keep)
    monkeypatch.setattr(results, "save_figure", save_and_read)
    out = tmp_path / "llc"
    capsys.readouterr()
    assert main(["llc", "--organism", str(tiny_organism_dir), "--out", str(out), *DRAWS]) == 0
    cli = capsys.readouterr()
    (res,) = results_seen
    assert not res.converged and res.mean is None and math.isfinite(res.unchecked_mean), res.reasons
    return {
        "dir": out,
        "withheld": [res.unchecked_mean, *res.per_chain],
        "cli": cli.out + cli.err,
        "figure_texts": "\n".join(texts),
    }


def test_a_withheld_llc_estimate_appears_in_no_output(withheld_run, tmp_path, capsys):
    from persona_basins.viz.server import make_server

    run, numbers = withheld_run["dir"], withheld_run["withheld"]
    assert "withheld" in withheld_run["cli"] and withheld_run["figure_texts"]
    outputs = {"CLI output": withheld_run["cli"], "figure titles and labels": withheld_run["figure_texts"]}
    files = sorted(p for p in run.rglob("*") if p.is_file())
    assert {"config.json", "metrics.json", "log.txt", "llc_trace.png"} <= {p.name for p in files}
    for path in files:  # PNG text chunks are uncompressed: latin-1 reads them byte for byte
        text = path.read_bytes().decode("latin-1" if path.suffix == ".png" else "utf-8")
        if path.suffix == ".json":  # a field named unchecked may keep it, and no other field
            stored = json.loads(text)
            held = [p for x in numbers for p in _numbers_equal_to(stored, x)]
            assert all(p.rsplit(".", 1)[-1].startswith("unchecked") for p in held), (path.name, held)
            text = json.dumps(_without_unchecked(stored))
        outputs[str(path.relative_to(run))] = text
    html_file = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(html_file)]) == 0
    outputs["report.html"] = _without_static_assets(html_file.read_text(encoding="utf-8"))
    httpd, _ = make_server([run], port=0)
    serving = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    serving.start()
    try:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", httpd.server_address[1], timeout=10)
        conn.request("GET", "/")
        page = conn.getresponse().read().decode("utf-8")
        conn.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
    payload = _embedded(page)
    assert payload["runs"][0]["metrics"]["llc"]["mean"] is None  # the explorer got the withheld run
    outputs["explorer page"] = _without_static_assets(page)
    outputs["explorer JSON"] = json.dumps(payload)
    capsys.readouterr()
    leaks = [(where, x, _found(text, x)) for where, text in outputs.items() for x in numbers]
    assert not [leak for leak in leaks if leak[2]], [leak for leak in leaks if leak[2]]
    assert not [p for x in numbers for p in _numbers_equal_to(_without_unchecked(payload), x)]


def test_the_search_finds_a_number_it_is_given():
    """The search above can fail: a number written at any of the code's precisions is found."""
    x = 123.456789
    for fmt in ("{:.3f}", "{:.2f}", "{:.4g}", "{!r}", "LLC = {:.4g} ± 0.2"):
        assert _found("λ̂ = " + fmt.format(x) + " (95%)", x), fmt
    assert not _found("11123.4567", x) and not _found("0.1234", x)
    assert _numbers_equal_to({"a": [1, {"unchecked_mean": x}]}, x) == [".a[1].unchecked_mean"]
    assert not _numbers_equal_to(_without_unchecked({"a": [1, {"unchecked_mean": x}]}), x)
    assert _spellings(0.0123) == {"0.0123"}  # .3f (0.012) and .2f (0.01) are too coarse to name it
