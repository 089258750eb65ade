"""The theory view's landscape: the numpy reference, its JavaScript mirror, and its LLC checked
against estimate_llc."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from persona_basins.landscape import model as M

P = M.DEFAULT
JS = Path(M.__file__).resolve().parents[1] / "viz" / "static" / "landscape.js"
A, MIS = P.aligned, P.misaligned


def test_minima_are_the_four_wells():
    for s in (0.0, 1.0):
        mins = M.minima(P, s)
        assert mins.shape == (4, 2)
        assert np.allclose(mins, np.asarray(P.centers), atol=0.02)
        gx, gy = M.gradient(mins[:, 0], mins[:, 1], P, s)
        assert np.max(np.abs(gx)) < 1e-9 and np.max(np.abs(gy)) < 1e-9
        # each minimum flows to itself
        assert M.flow_basin(mins[:, 0], mins[:, 1], P, s).tolist() == [0, 1, 2, 3]


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-3, 3, 50), rng.uniform(-2.5, 2.5, 50)
    h = 1e-6
    for s in (0.0, 0.7):
        gx, gy = M.gradient(x, y, P, s)
        fx = (M.potential(x + h, y, P, s) - M.potential(x - h, y, P, s)) / (2 * h)
        fy = (M.potential(x, y + h, P, s) - M.potential(x, y - h, P, s)) / (2 * h)
        assert np.max(np.abs(gx - fx)) < 1e-6 and np.max(np.abs(gy - fy)) < 1e-6


def test_boundary_is_where_the_flow_label_changes():
    for theta in (-4.0, 20.0, -40.0, 150.0):
        for s in (0.0, 0.5):
            b = M.boundary(theta, P, s)
            if b["t"] is None:
                continue
            u = np.array([math.cos(math.radians(theta)), math.sin(math.radians(theta))])
            before = np.asarray(P.x0) + (b["t"] - 1e-6) * u
            after = np.asarray(P.x0) + (b["t"] + 1e-6) * u
            assert M.flow_basin(*before, P, s)[0] == b["from"] == A
            assert M.flow_basin(*after, P, s)[0] == b["to"] != A
    # straight at the toxic manipulator: the ray crosses into the misaligned basin
    assert M.boundary(-4.0, P, 0.0)["to"] == MIS


def test_inoculation_widens_the_aligned_basin_and_leaves_the_point():
    t0 = M.boundary(-4.0, P, 0.0)["t"]
    t1 = M.boundary(-4.0, P, 1.0)["t"]
    assert t1 > t0 + 0.15  # the critical magnitude grows
    lab0, _, _ = M.basin_grid(P, 0.0, 64, 50)
    lab1, _, _ = M.basin_grid(P, 1.0, 64, 50)
    assert (lab1 == A).sum() > (lab0 == A).sum() * 1.15
    assert M.view_state(0.8, -4.0, 0.0)["point"] == M.view_state(0.8, -4.0, 1.0)["point"]


def test_overlap_zone_straddles_the_aligned_misaligned_boundary():
    ov = M.overlap_along(-4.0, P, 0.0)
    b = M.boundary(-4.0, P, 0.0)["t"]
    assert len(ov["intervals"]) == 1
    lo, hi = ov["intervals"][0]
    assert lo < b < hi and ov["width"] == pytest.approx(hi - lo)
    # inside: the aligned and misaligned states' outputs are within 2 eps of each other
    u = np.array([math.cos(math.radians(-4.0)), math.sin(math.radians(-4.0))])
    xa = np.asarray(P.x0) + (lo + 0.2 * (b - lo)) * u
    xm = np.asarray(P.x0) + (b + 0.8 * (hi - b)) * u
    ya, _ = M.pair_output(*xa, P, 0.0)
    ym, _ = M.pair_output(*xm, P, 0.0)
    assert np.max(np.abs(ya - ym)) <= 2 * P.epsilon
    # a wider tolerance gives a wider zone; a ray into the neutral basin has none
    wide = M.overlap_along(-4.0, replace(P, epsilon=0.3), 0.0)["width"]
    assert wide > ov["width"]
    assert M.overlap_along(-40.0, P, 0.0)["width"] == 0.0


def test_llc_rises_toward_the_boundary():
    ll = M.llc_along(-4.0, P, 0.0)
    b = M.boundary(-4.0, P, 0.0)["t"]
    spacing = P.t_max / (P.n_llc - 1)
    assert abs(ll["argmax_t"] - b) <= 1.5 * spacing
    assert ll["llc"][0] < 0.01 < ll["max"]
    i = int(np.argmax(ll["llc"]))
    assert all(np.diff(ll["llc"][: i - 2]) >= -1e-6)  # non-decreasing on the way in (up to the peak)
    assert 0 < ll["max"] < 1.0  # below d/2 = 1 for the 2-D plane


def test_llc_quadrature_is_converged_and_matches_laplace():
    fine = replace(P, q_n=41, q_max=5.0)
    for t in (0.8, 1.3, 1.55, 1.8):
        x, y = M.point(t, -4.0, P)
        coarse_v, fine_v = M.llc_at(x, y, P), M.llc_at(x, y, fine)
        assert abs(coarse_v - fine_v) < 2e-3, (t, coarse_v, fine_v)
        lap = M.llc_laplace(x, y, P)
        assert abs(coarse_v - lap) < 0.03 + 0.15 * lap, (t, coarse_v, lap)


# ------------------------------------------------------------------------------------------ JS mirror
NODE_SCRIPT = r"""
const L = require(process.argv[2]);
const inp = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const p = inp.params, out = [];
for (const s of inp.s_values) {
  const ctx = L.context(p, s), r = {V: [], label: [], y: [], gap: [], overlap: [], llc: []};
  r.minima = ctx.mins;
  for (const [x, y] of inp.points) {
    r.V.push(L.potential(p, s, x, y));
    r.label.push(L.flowBasin(ctx, x, y));
    r.y.push(L.output(ctx, x, y).slice());
    r.gap.push(L.outputGap(ctx, x, y));
    r.overlap.push(L.inOverlap(ctx, x, y));
  }
  for (const [x, y] of inp.llc_points) r.llc.push(L.llcAt(ctx, x, y));
  r.views = inp.views.map(([d, th]) => L.viewState(p, d, th, s, ctx));
  r.slices = inp.views.map(([d, th]) => L.slicePotential(ctx, th));
  out.push(r);
}
process.stdout.write(JSON.stringify(out));
"""


def _node():
    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed (the browser test still checks the mirror in chromium)")
    return node


def _maxdiff(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def test_js_mirror_matches_python_on_a_grid(tmp_path):
    node = _node()
    xs = np.linspace(P.xlim[0] + 0.05, P.xlim[1] - 0.05, 23)
    ys = np.linspace(P.ylim[0] + 0.05, P.ylim[1] - 0.05, 19)
    gx, gy = np.meshgrid(xs, ys)
    pts = np.stack([gx.ravel(), gy.ravel()], 1)
    llc_pts = [M.point(t, th, P) for t in (0.0, 0.9, 1.5, 1.6, 2.4) for th in (-4.0, 25.0, -60.0)]
    views = [(0.6, -4.0), (1.7, -4.0), (1.2, 20.0), (2.5, -40.0), (3.0, 150.0), (0.0, -180.0)]
    s_values = [0.0, 0.37, 1.0]
    script = tmp_path / "mirror.js"
    script.write_text(NODE_SCRIPT)
    payload = {
        "params": P.to_dict(),
        "points": pts.tolist(),
        "llc_points": llc_pts,
        "views": views,
        "s_values": s_values,
    }
    res = subprocess.run(
        [node, str(script), str(JS)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    js = json.loads(res.stdout)
    for s, r in zip(s_values, js, strict=True):
        assert _maxdiff(r["minima"], M.minima(P, s)) <= 1e-9
        assert _maxdiff(r["V"], M.potential(pts[:, 0], pts[:, 1], P, s)) <= 1e-9
        labels = M.flow_basin(pts[:, 0], pts[:, 1], P, s)
        assert r["label"] == labels.tolist()
        assert _maxdiff(r["y"], M.output(pts[:, 0], pts[:, 1], P, s).T) <= 1e-9
        assert _maxdiff(r["gap"], M.output_gap(pts[:, 0], pts[:, 1], P, s)) <= 1e-9
        assert r["overlap"] == M.in_overlap(pts[:, 0], pts[:, 1], P, s, labels=labels).tolist()
        assert _maxdiff(r["llc"], [M.llc_at(x, y, P, s) for x, y in llc_pts]) <= 1e-9
        for (d, th), v, sl in zip(views, r["views"], r["slices"]):
            ref = M.view_state(d, th, s, P)
            assert v["basin"] == ref["basin"] and v["boundary_to"] == ref["boundary_to"]
            assert _maxdiff(v["point"], ref["point"]) <= 1e-9
            assert (v["boundary_t"] is None) == (ref["boundary_t"] is None)
            if ref["boundary_t"] is not None:
                assert abs(v["boundary_t"] - ref["boundary_t"]) <= 1e-9
            assert abs(v["overlap_width"] - ref["overlap_width"]) <= 1e-9
            assert _maxdiff(v["overlap_intervals"], ref["overlap_intervals"]) <= 1e-9
            assert abs(v["llc_argmax_t"] - ref["llc_argmax_t"]) <= 1e-9
            assert abs(v["llc_max"] - ref["llc_max"]) <= 1e-9
            ps = M.slice_potential(th, P, s)
            assert _maxdiff(sl["V"], ps["V"]) <= 1e-9 and sl["label"] == ps["label"]


# ------------------------------------------------------------------------------------------ vs estimate_llc
def _torch_self_kl(p: M.LandscapeParams, s: float):
    import torch

    c, a, b = M.wells(p, s)
    c, a, b = (torch.tensor(v, dtype=torch.float64) for v in (c, a, b))
    out = torch.tensor(p.out, dtype=torch.float64)  # (K, G)

    def outputs(w):
        e = a * ((w[0] - c[:, 0]) ** 2 + (w[1] - c[:, 1]) ** 2) + b
        pi = torch.softmax(-e / p.out_temperature, dim=0)
        return pi @ out

    return outputs


def test_landscape_llc_agrees_with_estimate_llc():
    torch = pytest.importorskip("torch")
    llc_mod = pytest.importorskip("persona_basins.measure.llc")
    outputs = _torch_self_kl(P, 0.0)

    class Point(torch.nn.Module):
        def __init__(self, x, y):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([x, y], dtype=torch.float64))

    for t in (0.6, 1.55):  # deep in the basin (LLC ~ 0) and at the boundary (the peak)
        x, y = M.point(t, -4.0, P)
        q = outputs(torch.tensor([x, y], dtype=torch.float64)).detach()

        def loss_fn(model, batch, q=q):
            yw = outputs(model.w)
            kl = q * torch.log(q / yw) + (1 - q) * torch.log((1 - q) / (1 - yw))
            return kl.mean() + 0.0 * batch.sum()

        ref = M.llc_at(x, y, P)
        res = llc_mod.estimate_llc(
            Point(x, y),
            loss_fn,
            torch.zeros(8, 1, dtype=torch.float64),
            n=1000,
            nbeta=P.n_beta,
            step_size=2e-4,
            localization=P.gamma,
            num_chains=4,
            num_draws=2000,
            num_burnin=200,
            seed=0,
            path="loop",
        )
        # SGLD is a sampler: allow a few standard errors plus a small discretisation bias
        assert abs(res.unchecked_mean - ref) <= 0.03 + 0.1 * ref, (t, res.unchecked_mean, ref)
