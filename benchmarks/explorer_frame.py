"""Explorer frame benchmark: slider input event -> next painted frame, in headless Debian chromium.

For each slider (magnitude, direction, inoculation) the script focuses it and presses arrow keys (one input
event each, as a keyboard or a drag produces), waiting a little between presses like a drag at ~30 Hz. The
page logs, per input, ``event.timeStamp`` and the time a MessageChannel message posted from the frame's
requestAnimationFrame callback (after drawing) arrives, i.e. after that frame was handed to the compositor.
The latency is their difference; the script reports p50/p95/max per slider and over all inputs.

    .venv/bin/python benchmarks/explorer_frame.py [--presses 120] [--out PATH]

Two browser settings are measured. ``uncapped`` (the number the p95 <= 16 ms target is checked on) runs
chromium with ``--disable-frame-rate-limit --disable-gpu-vsync``: a frame is produced as soon as the page has
drawn it, so the latency is the page's own cost (event dispatch, requestAnimationFrame, drawing, compositor
hand-off). ``vsync60`` is chromium's default 60 Hz frame clock: it adds the wait for the next display
refresh, on average ~8 ms and up to 16.7 ms, whatever the page does, so its p95 cannot be under ~16 ms even
for a page that does nothing; it is reported for completeness. Writes JSON (atomically, to ``--out``, default
``benchmarks/results/explorer_frame.json``) and prints a summary.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from persona_basins.results import write_json  # noqa: E402
from persona_basins.viz.headless import CHROMIUM  # noqa: E402
from persona_basins.viz.headless import CHROMIUM_ARGS as ARGS  # noqa: E402
from persona_basins.viz.sample import write_demo_run, write_em_run  # noqa: E402
from persona_basins.viz.server import make_server  # noqa: E402

CONFIGS = {"uncapped": ["--disable-frame-rate-limit", "--disable-gpu-vsync"], "vsync60": []}
SLIDERS = {
    "delta": ("ArrowRight", "ArrowLeft"),
    "theta": ("ArrowRight", "ArrowLeft"),
    "s": ("ArrowRight", "ArrowLeft"),
}


# The noise floor: a page with one slider whose input handler only schedules a frame that fills a small
# canvas, measured the same way in the same browser. On a busy machine this is far from zero.
BASELINE_HTML = (
    "<!DOCTYPE html><input type=range id=sl-delta min=0 max=100 step=1 value=50>\n"
    "<canvas id=c width=200 height=100></canvas><script>\n"
    "var frames = [], q = [], ch = new MessageChannel(), "
    "g = document.getElementById('c').getContext('2d'), n = 0;\n"
    "ch.port1.onmessage = function () { var r = q.shift(); "
    "r.painted = performance.now(); frames.push(r); };\n"
    "document.getElementById('sl-delta').addEventListener('input', function (e) {\n"
    "  var ts = e.timeStamp;\n"
    "  requestAnimationFrame(function () { var t0 = performance.now(); "
    "g.fillStyle = (n++ % 2) ? '#2f6db5' : '#c0392b';\n"
    "    g.fillRect(0, 0, 200, 100); q.push({input: ts, start: t0, drawn: performance.now()}); "
    "ch.port2.postMessage(0); });\n"
    "});\n"
    "window.PBExplorer = {frames: function () { return frames.slice(); }, "
    "clearFrames: function () { frames.length = 0; }};\n"
    "</script>"
)


def baseline(browser, args) -> dict:
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_content(BASELINE_HTML)
    page.focus("#sl-delta")
    page.evaluate("PBExplorer.clearFrames()")
    for i in range(args.presses):
        page.keyboard.press("ArrowRight" if (i // 30) % 2 == 0 else "ArrowLeft")
        time.sleep(args.gap_ms / 1000.0)
    page.wait_for_timeout(300)
    lat = [f["painted"] - f["input"] for f in page.evaluate("PBExplorer.frames()")]
    page.close()
    return {"frames": len(lat), "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "max_ms": max(lat)}


def pct(xs, q):
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if xs else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presses", type=int, default=120, help="input events per slider")
    ap.add_argument("--gap-ms", type=float, default=33.0, help="pause between input events")
    ap.add_argument("--chromium", default=CHROMIUM)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "explorer_frame.json"))
    args = ap.parse_args(argv)

    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="pb-frame-"))
    runs = [write_demo_run(tmp / "demo"), write_em_run(tmp / "em")]
    httpd, url = make_server(runs, port=0)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    result = {
        "benchmark": "explorer_frame",
        "metric": "input event -> next painted frame (ms)",
        "target_p95_ms": 16.0,
        "checked_config": "uncapped",
        "presses_per_slider": args.presses,
        "gap_ms": args.gap_ms,
        "browser": None,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "configs": {},
    }
    try:
        with sync_playwright() as pw:
            for cname, extra in CONFIGS.items():
                browser = pw.chromium.launch(executable_path=args.chromium, args=ARGS + extra)
                result["browser"] = f"chromium {browser.version} (headless)"
                result["configs"][cname] = measure(browser, url, args)
                result["configs"][cname]["blank_page_baseline"] = baseline(browser, args)
                result["configs"][cname]["chromium_flags"] = extra
                browser.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
    result["overall"] = result["configs"]["uncapped"]["overall"]
    result["pass"] = result["overall"]["p95_ms"] <= result["target_p95_ms"]
    try:
        result["machine"]["loadavg_1min_after"] = os.getloadavg()[0]
    except OSError:
        pass
    write_json(args.out, result)
    for cname, c in result["configs"].items():
        o = c["overall"]
        per = ", ".join(f"{k} {v['p95_ms']:.1f}" for k, v in c["sliders"].items())
        print(
            f"explorer frame [{cname}]: p95 {o['p95_ms']:.1f} ms "
            f"(p50 {o['p50_ms']:.1f}, max {o['max_ms']:.1f}; "
            f"per slider p95: {per}; drawing p95 {o['work_p95_ms']:.1f}) over {o['frames']} inputs; "
            f"blank-page baseline p95 {c['blank_page_baseline']['p95_ms']:.1f}"
        )
    print(f"target p95 <= 16 ms on 'uncapped': {'PASS' if result['pass'] else 'FAIL'}; wrote {args.out}")
    return 0 if result["pass"] else 1


def measure(browser, url, args) -> dict:
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(url + "#d=0.60&th=-4&s=0.00")
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_timeout(500)
    out, all_lat, all_work = {"sliders": {}}, [], []
    for slider, (fwd, back) in SLIDERS.items():
        page.focus(f"#sl-{slider}")
        page.evaluate("PBExplorer.clearFrames()")
        for i in range(args.presses):
            # sweep forth and back so the value keeps changing and stays in range
            page.keyboard.press(fwd if (i // 30) % 2 == 0 else back)
            time.sleep(args.gap_ms / 1000.0)
        page.wait_for_timeout(300)
        frames = page.evaluate("PBExplorer.frames()")
        lat = [f["painted"] - f["input"] for f in frames]
        work = [f["drawn"] - f["start"] for f in frames]
        all_lat += lat
        all_work += work
        out["sliders"][slider] = {
            "frames": len(frames),
            "p50_ms": pct(lat, 50),
            "p95_ms": pct(lat, 95),
            "max_ms": max(lat),
            "work_p50_ms": pct(work, 50),
            "work_p95_ms": pct(work, 95),
        }
    out["overall"] = {
        "frames": len(all_lat),
        "p50_ms": pct(all_lat, 50),
        "p95_ms": pct(all_lat, 95),
        "max_ms": max(all_lat),
        "work_p95_ms": pct(all_work, 95),
    }
    page.close()
    return out


if __name__ == "__main__":
    sys.exit(main())
