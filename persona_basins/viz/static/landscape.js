/* persona-basins explorer: the persona landscape, mirrored from persona_basins/landscape/model.py.
 *
 * Every function follows the Python reference operation by operation (same order of floating-point
 * operations), so tests/test_landscape.py can require agreement to 1e-9 on a grid. A classic script: it
 * defines the global PBLandscape in a browser and module.exports under node. No imports, no fetch.
 */
(function (root) {
  "use strict";

  function wells(p, s) {
    var K = p.centers.length, c = [], a = [], b = [];
    for (var k = 0; k < K; k++) {
      c.push([p.centers[k][0], p.centers[k][1]]);
      a.push(p.curv[k]);
      b.push(p.depth[k]);
    }
    a[p.aligned] = a[p.aligned] / (1.0 + p.kappa_a * s);
    b[p.aligned] = b[p.aligned] - p.kappa_b * s;
    return { c: c, a: a, b: b, K: K };
  }

  // softmin weights pi_k at (x, y) into out (array of K); returns [m, z]
  function mixture(x, y, W, temp, out) {
    var K = W.K, e = out, k;
    for (k = 0; k < K; k++) {
      var dx = x - W.c[k][0], dy = y - W.c[k][1];
      e[k] = W.a[k] * (dx * dx + dy * dy) + W.b[k];
    }
    var m = e[0];
    for (k = 1; k < K; k++) m = Math.min(m, e[k]);
    var z = 0;
    for (k = 0; k < K; k++) {
      out[k] = Math.exp(-(e[k] - m) / temp);
      z = k === 0 ? out[0] : z + out[k];
    }
    for (k = 0; k < K; k++) out[k] = out[k] / z;
    return [m, z];
  }

  function potential(p, s, x, y, W) {
    W = W || wells(p, s);
    var pi = new Array(W.K);
    var mz = mixture(x, y, W, p.temperature, pi);
    return mz[0] - p.temperature * Math.log(mz[1]);
  }

  function grad(x, y, W, temp, pi, g) {
    mixture(x, y, W, temp, pi);
    var gx = 0.0, gy = 0.0;
    for (var k = 0; k < W.K; k++) {
      gx = gx + pi[k] * (2.0 * W.a[k]) * (x - W.c[k][0]);
      gy = gy + pi[k] * (2.0 * W.a[k]) * (y - W.c[k][1]);
    }
    g[0] = gx;
    g[1] = gy;
  }

  function minima(p, s) {
    var W = wells(p, s), out = [], pi = new Array(W.K), g = [0, 0];
    for (var k = 0; k < W.K; k++) {
      var x = W.c[k][0], y = W.c[k][1];
      for (var i = 0; i < p.min_steps; i++) {
        grad(x, y, W, p.temperature, pi, g);
        x = x - p.step * g[0];
        y = y - p.step * g[1];
      }
      out.push([x, y]);
    }
    return out;
  }

  // A context caches the wells and minima for one inoculation strength.
  function context(p, s) {
    var W = wells(p, s);
    return { p: p, s: s, W: W, mins: minima(p, s), pi: new Array(W.K), g: [0, 0] };
  }

  function flowBasin(ctx, x, y) {
    var p = ctx.p, W = ctx.W, mins = ctx.mins, r2 = p.r_stop * p.r_stop, j;
    for (var it = 0; it <= p.max_steps; it++) {
      for (j = 0; j < mins.length; j++) {
        var dx = x - mins[j][0], dy = y - mins[j][1];
        if (dx * dx + dy * dy < r2) return j;
      }
      if (it === p.max_steps) break;
      grad(x, y, W, p.temperature, ctx.pi, ctx.g);
      x = x - p.step * ctx.g[0];
      y = y - p.step * ctx.g[1];
    }
    var best = 0, bd = Infinity;
    for (j = 0; j < mins.length; j++) {
      var ex = x - mins[j][0], ey = y - mins[j][1], d2 = ex * ex + ey * ey;
      if (d2 < bd) { bd = d2; best = j; }
    }
    return best;
  }

  function point(p, delta, thetaDeg) {
    var th = thetaDeg * Math.PI / 180.0;
    return [p.x0[0] + delta * Math.cos(th), p.x0[1] + delta * Math.sin(th)];
  }

  function pathTs(p, n) {
    n = n || p.n_path;
    var ts = new Array(n);
    for (var i = 0; i < n; i++) ts[i] = p.t_max * i / (n - 1);
    return ts;
  }

  function refine(pred, lo, hi, iters) {
    var vlo = pred(lo);
    for (var i = 0; i < iters; i++) {
      var mid = 0.5 * (lo + hi);
      if (pred(mid) === vlo) lo = mid; else hi = mid;
    }
    return 0.5 * (lo + hi);
  }

  function dir(thetaDeg) {
    var th = thetaDeg * Math.PI / 180.0;
    return [Math.cos(th), Math.sin(th)];
  }

  function boundary(ctx, thetaDeg) {
    var p = ctx.p, ts = pathTs(p), u = dir(thetaDeg);
    var lab = function (t) { return flowBasin(ctx, p.x0[0] + t * u[0], p.x0[1] + t * u[1]); };
    var l0 = lab(ts[0]);
    for (var i = 1; i < ts.length; i++) {
      var li = lab(ts[i]);
      if (li !== l0) {
        var t = refine(function (tt) { return lab(tt) === l0; }, ts[i - 1], ts[i], p.bisect_iters);
        return { t: t, from: l0, to: li };
      }
    }
    return { t: null, from: l0, to: null };
  }

  // ------------------------------------------------------------------------------------ output map
  function output(ctx, x, y, out) {
    var p = ctx.p, W = ctx.W, pi = ctx.pi, G = p.genres.length;
    mixture(x, y, W, p.out_temperature, pi);
    out = out || new Array(G);
    for (var g = 0; g < G; g++) {
      var acc = 0.0;
      for (var k = 0; k < W.K; k++) acc = acc + pi[k] * p.out[k][g];
      out[g] = acc;
    }
    return out;
  }

  // aligned/misaligned channel of the output (into out) and the pair weight pi'_A + pi'_M
  function pairOutput(ctx, x, y, out) {
    var p = ctx.p, pi = ctx.pi, G = p.genres.length;
    mixture(x, y, ctx.W, p.out_temperature, pi);
    var pa = pi[p.aligned], pm = pi[p.misaligned], pair = pa + pm;
    for (var g = 0; g < G; g++) out[g] = (pa * p.out[p.aligned][g] + pm * p.out[p.misaligned][g]) / pair;
    return pair;
  }

  function outputGap(ctx, x, y) {
    var p = ctx.p, yh = new Array(p.genres.length), gap = 0;
    pairOutput(ctx, x, y, yh);
    for (var g = 0; g < p.genres.length; g++) {
      var mid = 0.5 * (p.out[p.aligned][g] + p.out[p.misaligned][g]);
      var d = Math.abs(yh[g] - mid);
      gap = g === 0 ? d : Math.max(gap, d);
    }
    return gap;
  }

  function inOverlap(ctx, x, y, label) {
    var p = ctx.p;
    if (label === undefined) label = flowBasin(ctx, x, y);
    if (label !== p.aligned && label !== p.misaligned) return false;
    var gap = outputGap(ctx, x, y);
    var pair = pairOutput(ctx, x, y, new Array(p.genres.length));
    return pair >= 0.5 && gap <= p.epsilon;
  }

  function overlapAlong(ctx, thetaDeg) {
    var p = ctx.p, ts = pathTs(p), u = dir(thetaDeg);
    var member = function (t) { return inOverlap(ctx, p.x0[0] + t * u[0], p.x0[1] + t * u[1]); };
    var flags = ts.map(member), intervals = [], start = flags[0] ? 0.0 : null;
    for (var i = 1; i < ts.length; i++) {
      if (flags[i] !== flags[i - 1]) {
        var t = refine(member, ts[i - 1], ts[i], p.bisect_iters);
        if (flags[i]) start = t; else { intervals.push([start, t]); start = null; }
      }
    }
    if (start !== null) intervals.push([start, ts[ts.length - 1]]);
    var width = 0.0;
    for (var j = 0; j < intervals.length; j++) width += intervals[j][1] - intervals[j][0];
    return { intervals: intervals, width: width };
  }

  // ------------------------------------------------------------------------------------ LLC
  function quadNodes(p) {
    var qs = [], i, j, qx = [], qy = [];
    for (i = 0; i < p.q_n; i++) qs.push(-p.q_max + 2.0 * p.q_max * i / (p.q_n - 1));
    for (j = 0; j < p.q_n; j++) for (i = 0; i < p.q_n; i++) { qx.push(qs[i]); qy.push(qs[j]); }
    return { qx: qx, qy: qy };
  }

  function llcAt(ctx, x, y) {
    var p = ctx.p, G = p.genres.length;
    if (!ctx.quad) ctx.quad = quadNodes(p);
    var qx = ctx.quad.qx, qy = ctx.quad.qy, sig = 1.0 / Math.sqrt(p.gamma);
    var yx = output(ctx, x, y).slice(), yw = new Array(G), sw = 0, swl = 0;
    for (var i = 0; i < qx.length; i++) {
      output(ctx, x + sig * qx[i], y + sig * qy[i], yw);
      var acc = 0.0;
      for (var g = 0; g < G; g++) {
        var q = yx[g];
        acc = acc + (q * Math.log(q / yw[g]) + (1.0 - q) * Math.log((1.0 - q) / (1.0 - yw[g])));
      }
      var loss = acc / G;
      var w = Math.exp(-p.n_beta * loss - 0.5 * (qx[i] * qx[i] + qy[i] * qy[i]));
      sw += w;
      swl += w * loss;
    }
    return p.n_beta * swl / sw;
  }

  function llcAlong(ctx, thetaDeg) {
    var p = ctx.p, ts = pathTs(p, p.n_llc), u = dir(thetaDeg), vals = [], best = 0;
    for (var i = 0; i < ts.length; i++) {
      vals.push(llcAt(ctx, p.x0[0] + ts[i] * u[0], p.x0[1] + ts[i] * u[1]));
      if (vals[i] > vals[best]) best = i;
    }
    return { t: ts, llc: vals, argmax_t: ts[best], max: vals[best] };
  }

  function slicePotential(ctx, thetaDeg) {
    var p = ctx.p, ts = pathTs(p), u = dir(thetaDeg), V = [], label = [];
    for (var i = 0; i < ts.length; i++) {
      var x = p.x0[0] + ts[i] * u[0], y = p.x0[1] + ts[i] * u[1];
      V.push(potential(p, ctx.s, x, y, ctx.W));
      label.push(flowBasin(ctx, x, y));
    }
    return { t: ts, V: V, label: label };
  }

  // Labels, potential and overlap flags at the cell centres of the view window (row-major, y up).
  function basinGridInit(nx, ny) {
    var n = nx * ny;
    return { nx: nx, ny: ny, label: new Int8Array(n), V: new Float64Array(n), overlap: new Uint8Array(n) };
  }

  function basinGridRows(ctx, grid, j0, j1) {
    var p = ctx.p, nx = grid.nx, ny = grid.ny;
    var dx = (p.xlim[1] - p.xlim[0]) / nx, dy = (p.ylim[1] - p.ylim[0]) / ny;
    for (var j = j0; j < Math.min(j1, ny); j++) {
      var y = p.ylim[0] + (j + 0.5) * dy;
      for (var i = 0; i < nx; i++) {
        var x = p.xlim[0] + (i + 0.5) * dx, idx = j * nx + i;
        grid.label[idx] = flowBasin(ctx, x, y);
        grid.V[idx] = potential(p, ctx.s, x, y, ctx.W);
        grid.overlap[idx] = inOverlap(ctx, x, y, grid.label[idx]) ? 1 : 0;
      }
    }
    return grid;
  }

  function basinGrid(ctx, nx, ny) {
    return basinGridRows(ctx, basinGridInit(nx, ny), 0, ny);
  }

  function viewState(p, delta, thetaDeg, s, ctx) {
    ctx = ctx || context(p, s);
    var pt = point(p, delta, thetaDeg), b = boundary(ctx, thetaDeg);
    var ov = overlapAlong(ctx, thetaDeg), ll = llcAlong(ctx, thetaDeg);
    return {
      point: pt, basin: flowBasin(ctx, pt[0], pt[1]), boundary_t: b.t, boundary_to: b.to,
      overlap_width: ov.width, overlap_intervals: ov.intervals, llc_argmax_t: ll.argmax_t, llc_max: ll.max,
      minima: ctx.mins
    };
  }

  var api = {
    wells: wells, potential: potential, minima: minima, context: context, flowBasin: flowBasin,
    point: point, pathTs: pathTs, boundary: boundary, output: output, outputGap: outputGap,
    inOverlap: inOverlap, pairOutput: pairOutput, overlapAlong: overlapAlong, llcAt: llcAt, llcAlong: llcAlong,
    slicePotential: slicePotential, basinGrid: basinGrid, basinGridInit: basinGridInit,
    basinGridRows: basinGridRows, viewState: viewState
  };
  if (typeof module === "object" && module.exports) module.exports = api;
  else root.PBLandscape = api;
})(typeof self !== "undefined" ? self : this);
