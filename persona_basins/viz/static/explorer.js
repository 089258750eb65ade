/* persona-basins explorer page: theory view (canvas, PBLandscape) and measured view (plotly.js).
 * Classic script, no imports, no fetch: the run data are embedded in <script id="pb-data">.
 */
(function () {
  "use strict";
  var DATA;
  try {
    DATA = JSON.parse(document.getElementById("pb-data").textContent);
  } catch (e) {
    DATA = { landscape: null, runs: [], error: "embedded data unreadable: " + e };
  }
  var P = DATA.landscape;
  var L = window.PBLandscape;
  var COLORS = ["#2f6db5", "#6b8f71", "#8a5fb0", "#c0392b", "#b8860b", "#3a9a9a"];
  var YELLOW = [242, 197, 0];

  function $(id) { return document.getElementById(id); }
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) if (Object.prototype.hasOwnProperty.call(attrs, k)) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function fmt(x, d) { return x === null || x === undefined || !isFinite(x) ? "\u2014" : Number(x).toFixed(d === undefined ? 3 : d); }
  function hexRgb(h) { return [parseInt(h.slice(1, 3), 16), parseInt(h.slice(3, 5), 16), parseInt(h.slice(5, 7), 16)]; }
  function rgba(h, a) { var c = hexRgb(h); return "rgba(" + c[0] + "," + c[1] + "," + c[2] + "," + a + ")"; }

  // ============================================================================== theory view
  var state = { delta: 0, theta: 0, s: 0 };
  var cache = { s: null, theta: null, ctx: null, grid: null, gridRes: 0, slice: null, bnd: null, ov: null, llc: null };
  var LOWRES = [72, 56], HIRES = [240, 188];
  var dirty = false, idleTimer = null, frameLog = [], pendingInput = [];
  var SL = {};

  function clampKey(key, v) {
    var r = P.ranges[key];
    v = Number(v);
    if (!isFinite(v)) v = r[3];
    return Math.min(r[1], Math.max(r[0], v));
  }

  function readHash() {
    var h = (location.hash || "").replace(/^#/, ""), out = {};
    h.split("&").forEach(function (kv) {
      var i = kv.indexOf("=");
      if (i > 0) out[decodeURIComponent(kv.slice(0, i))] = decodeURIComponent(kv.slice(i + 1));
    });
    return out;
  }
  function hashString() {
    return "#d=" + state.delta.toFixed(2) + "&th=" + state.theta.toFixed(0) + "&s=" + state.s.toFixed(2);
  }
  function writeHash() {
    var h = hashString();
    if (location.hash === h) return;
    try { history.replaceState(null, "", h); } catch (e) { location.hash = h; }
  }
  function applyHash() {
    var h = readHash();
    state.delta = clampKey("delta", h.d !== undefined ? h.d : P.ranges.delta[3]);
    state.theta = clampKey("theta", h.th !== undefined ? h.th : P.ranges.theta[3]);
    state.s = clampKey("s", h.s !== undefined ? h.s : P.ranges.s[3]);
    syncSliders();
  }
  function syncSliders() {
    ["delta", "theta", "s"].forEach(function (k) {
      SL[k].value = String(state[k]);
      var d = k === "theta" ? 0 : 2;
      $("out-" + k).textContent = k === "theta" ? state[k].toFixed(0) + "\u00b0" : state[k].toFixed(d);
    });
  }

  function setupCanvas(cv) {
    var dpr = window.devicePixelRatio || 1, w = cv.width, h = cv.height;
    if (!cv._css) { cv._css = [w, h]; }
    w = cv._css[0]; h = cv._css[1];
    cv.style.width = w + "px"; cv.style.height = h + "px";
    cv.width = Math.round(w * dpr); cv.height = Math.round(h * dpr);
    var g = cv.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    return { cv: cv, g: g, w: w, h: h };
  }
  var PLANE, SLICE, LLCV, OFF, MAP, DOTP, DOTS, VLL;

  // plane geometry: plot area inside margins, equal aspect
  var PM = { l: 38, r: 10, t: 10, b: 30 };
  function px(x) { return PM.l + (x - P.xlim[0]) / (P.xlim[1] - P.xlim[0]) * (PLANE.w - PM.l - PM.r); }
  function py(y) { return PLANE.h - PM.b - (y - P.ylim[0]) / (P.ylim[1] - P.ylim[0]) * (PLANE.h - PM.t - PM.b); }

  // The basin map as an image, one pixel per cell; bake = darken boundary cells (the drag-time map).
  function paintImage(target, grid, bake) {
    var n = grid.nx * grid.ny, vmin = Infinity, vmax = -Infinity, i, lab = grid.label, nx = grid.nx;
    for (i = 0; i < n; i++) { if (grid.V[i] < vmin) vmin = grid.V[i]; if (grid.V[i] > vmax) vmax = grid.V[i]; }
    if (target.cv.width !== grid.nx) target.cv.width = grid.nx;
    if (target.cv.height !== grid.ny) target.cv.height = grid.ny;
    var img = target.g.createImageData(grid.nx, grid.ny), d = img.data, cols = COLORS.map(hexRgb);
    for (var j = 0; j < grid.ny; j++) {
      for (var ii = 0; ii < nx; ii++) {
        var idx = j * nx + ii, o = ((grid.ny - 1 - j) * nx + ii) * 4;
        var c = cols[lab[idx] % cols.length];
        var v = (grid.V[idx] - vmin) / (vmax - vmin + 1e-12);     // 0 at the bottom of the wells
        var light = 0.50 + 0.40 * Math.sqrt(v);                   // mix with white: low V darker
        var r = c[0] + (255 - c[0]) * light, g = c[1] + (255 - c[1]) * light, b = c[2] + (255 - c[2]) * light;
        if (grid.overlap[idx]) { r = 0.3 * r + 0.7 * YELLOW[0]; g = 0.3 * g + 0.7 * YELLOW[1]; b = 0.3 * b + 0.7 * YELLOW[2]; }
        if (bake && ((ii + 1 < nx && lab[idx + 1] !== lab[idx]) || (j + 1 < grid.ny && lab[idx + nx] !== lab[idx]))) {
          r = 0.35 * r + 0.65 * 29; g = 0.35 * g + 0.65 * 36; b = 0.35 * b + 0.65 * 48;
        }
        d[o] = r; d[o + 1] = g; d[o + 2] = b; d[o + 3] = 255;
      }
    }
    target.g.putImageData(img, 0, 0);
  }

  // Sharp map: drawn on the plane canvas with vector boundaries. Drag-time map: a small canvas scaled by CSS
  // over the plot area (no large canvas is repainted while dragging the inoculation slider).
  function showGrid(grid) {
    cache.grid = grid; cache.gridRes = grid.nx;
    if (grid.nx === HIRES[0]) {
      paintImage(OFF, grid, false);
      drawPlane();
      MAP.cv.style.visibility = "hidden";
    } else {
      paintImage(MAP, grid, true);
      MAP.cv.style.visibility = "visible";
    }
    drawMinima();
  }

  // Per inoculation value: the context (wells, minima) and the low-res map, kept so that dragging the
  // inoculation slider back and forth reuses them; the remaining slider values are filled in idle time.
  var sCache = {};
  function sEntry(s) {
    var key = s.toFixed(4), e = sCache[key];
    if (!e) { e = sCache[key] = { ctx: L.context(P, s), grid: null }; }
    return e;
  }
  function computeGrid(res) {
    var e = sEntry(state.s);
    if (res === LOWRES && e.grid && e.ctx === cache.ctx) { showGrid(e.grid); return; }
    var grid = L.basinGrid(cache.ctx, res[0], res[1]);
    if (res === LOWRES) e.grid = grid;
    showGrid(grid);
  }
  // Ray quantities per (s, theta): boundary, overlap, LLC along the ray, the 1-D slice.
  var pathCache = {}, pathCount = 0;
  function pathFor(s, theta) {
    var key = s.toFixed(4) + "|" + theta.toFixed(4), r = pathCache[key];
    if (!r) {
      if (pathCount > 4000) { pathCache = {}; pathCount = 0; }
      var ctx = sEntry(s).ctx;
      r = pathCache[key] = { bnd: L.boundary(ctx, theta), ov: L.overlapAlong(ctx, theta), llc: L.llcAlong(ctx, theta),
        slice: L.slicePotential(ctx, theta) };
      pathCount++;
    }
    return r;
  }

  // Idle-time precomputation (<= 4 ms per slice of work): every inoculation value's map and ray quantities
  // for the current direction, then every direction's ray quantities for the current inoculation value.
  var warmTimer = null;
  function warmCache() {
    clearTimeout(warmTimer);
    var rs = P.ranges.s, rt = P.ranges.theta, ns = Math.round((rs[1] - rs[0]) / rs[2]);
    var nt = Math.round((rt[1] - rt[0]) / rt[2]), i = 0, theta = state.theta, s0 = state.s;
    function step() {
      var t0 = performance.now();
      while (i <= ns + nt + 1 && performance.now() - t0 < 4) {
        if (i <= ns) {
          var sv = Number((rs[0] + i * rs[2]).toFixed(6)), e = sEntry(sv);
          if (!e.grid) e.grid = L.basinGrid(e.ctx, LOWRES[0], LOWRES[1]);
          pathFor(sv, theta);
        } else {
          pathFor(s0, Number((rt[0] + (i - ns - 1) * rt[2]).toFixed(6)));
        }
        i++;
      }
      if (i <= ns + nt + 1) warmTimer = setTimeout(step, 16);
    }
    warmTimer = setTimeout(step, 16);
  }

  // The sharp map is computed in slices of rows between frames (<= ~4 ms each), abandoned on new input.
  var hiresToken = 0;
  function refineGrid(done) {
    if (cache.gridRes === HIRES[0]) { done(); return; }
    var token = ++hiresToken, ctx = cache.ctx, grid = L.basinGridInit(HIRES[0], HIRES[1]), j = 0;
    function step() {
      if (token !== hiresToken || ctx !== cache.ctx) return;
      var t0 = performance.now();
      while (j < grid.ny && performance.now() - t0 < 4) { L.basinGridRows(ctx, grid, j, j + 2); j += 2; }
      if (j < grid.ny) { setTimeout(step, 0); return; }
      showGrid(grid);
      done();
    }
    setTimeout(step, 0);
  }

  function drawPlane() {
    var g = PLANE.g, grid = cache.grid, W = PLANE.w, H = PLANE.h;
    g.clearRect(0, 0, W, H);
    var x0 = px(P.xlim[0]), x1 = px(P.xlim[1]), y0 = py(P.ylim[1]), y1 = py(P.ylim[0]);
    g.imageSmoothingEnabled = false;
    g.drawImage(OFF.cv, x0, y0, x1 - x0, y1 - y0);
    // basin boundaries: edges between cells of different label, merged into runs (fewer path segments)
    var cw = (x1 - x0) / grid.nx, ch = (y1 - y0) / grid.ny, i, j, idx, run;
    g.beginPath();
    for (j = 0; j < grid.ny; j++) {          // vertical edges right of cell (i, j): runs along j
      for (i = 0; i + 1 < grid.nx; i++) {
        idx = j * grid.nx + i;
        if (grid.label[idx] === grid.label[idx + 1]) continue;
        if (j > 0 && grid.label[idx - grid.nx] !== grid.label[idx - grid.nx + 1]) continue;  // not a run start
        run = j;
        while (run + 1 < grid.ny && grid.label[(run + 1) * grid.nx + i] !== grid.label[(run + 1) * grid.nx + i + 1]) run++;
        g.moveTo(x0 + (i + 1) * cw, y1 - j * ch); g.lineTo(x0 + (i + 1) * cw, y1 - (run + 1) * ch);
      }
    }
    for (j = 0; j + 1 < grid.ny; j++) {      // horizontal edges above cell (i, j): runs along i
      for (i = 0; i < grid.nx; i++) {
        idx = j * grid.nx + i;
        if (grid.label[idx] === grid.label[idx + grid.nx]) continue;
        if (i > 0 && grid.label[idx - 1] !== grid.label[idx - 1 + grid.nx]) continue;
        run = i;
        while (run + 1 < grid.nx && grid.label[idx + run - i + 1] !== grid.label[idx + run - i + 1 + grid.nx]) run++;
        g.moveTo(x0 + i * cw, y1 - (j + 1) * ch); g.lineTo(x0 + (run + 1) * cw, y1 - (j + 1) * ch);
      }
    }
    g.strokeStyle = "#1d2430"; g.lineWidth = 1.6; g.stroke();
    // where the model started (the ray, the boundary crossing and the point are on the SVG/DOM overlay)
    g.beginPath(); g.arc(px(P.x0[0]), py(P.x0[1]), 5, 0, 2 * Math.PI); g.strokeStyle = "#1d2430"; g.lineWidth = 1.5; g.stroke();
    // axes
    g.strokeStyle = "#9aa3ae"; g.lineWidth = 1; g.strokeRect(x0, y0, x1 - x0, y1 - y0);
    g.fillStyle = "#5b6473"; g.font = "11px system-ui, sans-serif"; g.textAlign = "center";
    for (var t = Math.ceil(P.xlim[0]); t <= P.xlim[1]; t++) g.fillText(String(t), px(t), y1 + 13);
    g.textAlign = "right";
    for (t = Math.ceil(P.ylim[0]); t <= P.ylim[1]; t++) g.fillText(String(t), x0 - 4, py(t) + 4);
    g.textAlign = "center"; g.fillText("persona dimension 1", (x0 + x1) / 2, H - 3);
    g.save(); g.translate(10, (y0 + y1) / 2); g.rotate(-Math.PI / 2); g.fillText("persona dimension 2", 0, 0); g.restore();
  }

  var SM = { l: 44, r: 12, t: 10, b: 28 };
  function sx(cv, t) { return SM.l + t / P.t_max * (cv.w - SM.l - SM.r); }

  function axesT(c, label) {
    var g = c.g, y1 = c.h - SM.b;
    g.strokeStyle = "#9aa3ae"; g.lineWidth = 1; g.strokeRect(SM.l, SM.t, c.w - SM.l - SM.r, y1 - SM.t);
    g.fillStyle = "#5b6473"; g.font = "11px system-ui, sans-serif"; g.textAlign = "center";
    for (var t = 0; t <= P.t_max + 1e-9; t += 0.5) g.fillText(t.toFixed(1), sx(c, t), y1 + 12);
    g.fillText(label, (SM.l + c.w - SM.r) / 2, c.h - 2);
  }
  function yTicks(c, lo, hi, fy, n, d) {
    var g = c.g; g.textAlign = "right"; g.fillStyle = "#5b6473";
    for (var i = 0; i <= n; i++) { var v = lo + (hi - lo) * i / n, txt = v.toFixed(d); if (Number(txt) === 0) txt = (0).toFixed(d); g.fillText(txt, SM.l - 4, fy(v) + 4); }
  }
  function overlapBands(c, y0, y1) {
    var g = c.g;
    g.fillStyle = "rgba(242,197,0,.55)";
    cache.ov.intervals.forEach(function (iv) { g.fillRect(sx(c, iv[0]), y0, sx(c, iv[1]) - sx(c, iv[0]), y1 - y0); });
  }
  function boundaryLine(c, y0, y1, label) {
    if (cache.bnd.t === null) return;
    var g = c.g, X = sx(c, cache.bnd.t);
    g.setLineDash([4, 3]); g.strokeStyle = "#1d2430"; g.lineWidth = 1.4;
    g.beginPath(); g.moveTo(X, y0); g.lineTo(X, y1); g.stroke(); g.setLineDash([]);
    if (label) {
      g.fillStyle = "#1d2430"; g.font = "11px system-ui, sans-serif"; g.textAlign = X > c.w - 120 ? "right" : "left";
      g.fillText("t* = " + cache.bnd.t.toFixed(3), X + (g.textAlign === "left" ? 4 : -4), SM.t + 12);
    }
  }

  function drawSlice() {
    var c = SLICE, g = c.g, sl = cache.slice, y0 = SM.t, y1 = c.h - SM.b;
    g.clearRect(0, 0, c.w, c.h);
    var vmin = Math.min.apply(null, sl.V), vmax = Math.max.apply(null, sl.V), pad = 0.08 * (vmax - vmin + 1e-9);
    vmin -= pad; vmax += pad;
    var fy = function (v) { return y1 - (v - vmin) / (vmax - vmin) * (y1 - y0); };
    var n = sl.t.length, dt = P.t_max / (n - 1);
    var i, start = 0;
    for (i = 1; i <= n; i++) {
      if (i === n || sl.label[i] !== sl.label[start]) {
        var a = Math.max(0, sl.t[start] - dt / 2), b = Math.min(P.t_max, sl.t[i - 1] + dt / 2);
        g.fillStyle = rgba(COLORS[sl.label[start] % COLORS.length], 0.22);
        g.fillRect(sx(c, a), y0, sx(c, b) - sx(c, a), y1 - y0);
        start = i;
      }
    }
    overlapBands(c, y0, y1);
    boundaryLine(c, y0, y1, true);
    g.beginPath();
    for (i = 0; i < n; i++) { var X = sx(c, sl.t[i]), Y = fy(sl.V[i]); if (i) g.lineTo(X, Y); else g.moveTo(X, Y); }
    g.strokeStyle = "#1d2430"; g.lineWidth = 2; g.stroke();
    cache.sliceFy = fy;
    axesT(c, "distance t along the perturbation ray");
    yTicks(c, vmin + pad, vmax - pad, fy, 2, 2);
    g.textAlign = "left"; g.fillStyle = "#1d2430"; g.fillText("V along the ray", SM.l + 4, SM.t + 12);
  }

  function drawLLC() {
    var c = LLCV, g = c.g, ll = cache.llc, y0 = SM.t, y1 = c.h - SM.b;
    g.clearRect(0, 0, c.w, c.h);
    var top = Math.max(0.05, ll.max * 1.15);
    var fy = function (v) { return y1 - v / top * (y1 - y0); };
    overlapBands(c, y0, y1);
    boundaryLine(c, y0, y1, false);
    g.beginPath();
    for (var i = 0; i < ll.t.length; i++) { var X = sx(c, ll.t[i]), Y = fy(ll.llc[i]); if (i) g.lineTo(X, Y); else g.moveTo(X, Y); }
    g.strokeStyle = "#7b3fa0"; g.lineWidth = 2; g.stroke();
    var ax = sx(c, ll.argmax_t), ay = fy(ll.max);
    g.beginPath(); g.moveTo(ax, ay - 9); g.lineTo(ax - 6, ay - 1); g.lineTo(ax + 6, ay - 1); g.closePath();
    g.fillStyle = "#7b3fa0"; g.fill();
    axesT(c, "distance t along the perturbation ray");
    yTicks(c, 0, top, fy, 2, 2);
    g.textAlign = "left"; g.fillStyle = "#1d2430"; g.fillText("LLC (self-KL), as hypothesised", SM.l + 4, SM.t + 12);
  }

  // The model's markers: the only things the magnitude slider changes, moved by CSS transforms (the +1 is
  // the canvas border).
  function drawOverlays() {
    var pt = L.point(P, state.delta, state.theta);
    var vp = L.potential(P, state.s, pt[0], pt[1], cache.ctx.W);
    var x = Math.max(px(P.xlim[0]), Math.min(px(P.xlim[1]), px(pt[0]))), y = Math.max(py(P.ylim[1]), Math.min(py(P.ylim[0]), py(pt[1])));
    DOTP.style.transform = "translate(" + (x + 1).toFixed(2) + "px," + (y + 1).toFixed(2) + "px)";
    DOTS.style.transform = "translate(" + (sx(SLICE, state.delta) + 1).toFixed(2) + "px," + (cache.sliceFy(vp) + 1).toFixed(2) + "px)";
    VLL.style.transform = "translate(" + (sx(LLCV, state.delta) + 1).toFixed(2) + "px," + (SM.t + 1) + "px)";
  }

  // Minima and persona names: SVG overlay.
  function drawMinima() {
    cache.ctx.mins.forEach(function (m, k) {
      var X = px(m[0]).toFixed(2), Y = py(m[1]).toFixed(2);
      var c = $("ov-min-" + k), t = $("ov-name-" + k);
      c.setAttribute("cx", X); c.setAttribute("cy", Y);
      t.setAttribute("x", X); t.setAttribute("y", (py(m[1]) - 10).toFixed(2));
    });
  }

  // The perturbation ray and the boundary crossing: vector overlay, so turning the ray repaints no canvas.
  function drawRay() {
    var th = state.theta * Math.PI / 180, ux = Math.cos(th), uy = Math.sin(th);
    var ray = $("ov-ray"), cross = $("ov-cross");
    ray.setAttribute("x1", px(P.x0[0]).toFixed(2)); ray.setAttribute("y1", py(P.x0[1]).toFixed(2));
    ray.setAttribute("x2", px(P.x0[0] + P.t_max * ux).toFixed(2)); ray.setAttribute("y2", py(P.x0[1] + P.t_max * uy).toFixed(2));
    if (cache.bnd.t === null) { cross.setAttribute("d", ""); return; }
    var bx = px(P.x0[0] + cache.bnd.t * ux), by = py(P.x0[1] + cache.bnd.t * uy);
    cross.setAttribute("d", "M" + (bx - 5).toFixed(2) + " " + (by - 5).toFixed(2) + "l10 10M" + (bx - 5).toFixed(2) + " " + (by + 5).toFixed(2) + "l10 -10");
  }

  function setRO(id, text, attrs) {
    var e = $(id);
    if (e.textContent !== text) e.textContent = text;
    for (var k in attrs) if (Object.prototype.hasOwnProperty.call(attrs, k)) e.setAttribute("data-" + k, String(attrs[k]));
  }
  function readouts() {
    var pt = L.point(P, state.delta, state.theta), lab = L.flowBasin(cache.ctx, pt[0], pt[1]);
    setRO("ro-point", "(" + fmt(pt[0], 3) + ", " + fmt(pt[1], 3) + ")", { x: pt[0], y: pt[1] });
    setRO("ro-basin", P.names[lab] + (lab === P.aligned ? " (aligned)" : lab === P.misaligned ? " (misaligned)" : ""),
      { label: lab });
    var b = cache.bnd;
    setRO("ro-boundary", b.t === null ? "none within t \u2264 " + P.t_max : fmt(b.t, 3) + " \u2192 " + P.names[b.to],
      { t: b.t === null ? "" : b.t, to: b.to === null ? "" : b.to });
    setRO("ro-overlap", fmt(cache.ov.width, 3) + (cache.ov.intervals.length ? "  (" + cache.ov.intervals.map(function (iv) {
      return fmt(iv[0], 2) + "\u2013" + fmt(iv[1], 2); }).join(", ") + ")" : ""), { width: cache.ov.width });
    setRO("ro-llc", fmt(cache.llc.max, 3) + " at t = " + fmt(cache.llc.argmax_t, 3), { argmax: cache.llc.argmax_t, max: cache.llc.max });
  }

  // Only on change: an attribute write on <body> restyles the whole document (plotly's SVGs included).
  function setRendered(v) { if (document.body.getAttribute("data-rendered") !== v) document.body.setAttribute("data-rendered", v); }

  function render(hires) {
    if (cache.s !== state.s || !cache.ctx) {
      cache.ctx = sEntry(state.s).ctx; cache.s = state.s; cache.theta = null; cache.grid = null;
    }
    var res = hires ? HIRES : LOWRES;
    if (!cache.grid || (hires && cache.gridRes !== HIRES[0])) computeGrid(res);
    var bgPath = cache.drawnGrid !== cache.grid || cache.theta !== state.theta;
    cache.drawnGrid = cache.grid;
    if (cache.theta !== state.theta) {
      var pc = pathFor(state.s, state.theta);
      cache.bnd = pc.bnd; cache.ov = pc.ov; cache.llc = pc.llc; cache.slice = pc.slice;
      cache.theta = state.theta;
    }
    if (bgPath) { drawSlice(); drawLLC(); drawRay(); }
    drawOverlays(); readouts();
    setRendered(hires ? "hi" : "lo");
  }

  var channel = typeof MessageChannel !== "undefined" ? new MessageChannel() : null;
  var paintQueue = [];
  if (channel) channel.port1.onmessage = function () {
    var now = performance.now(), rec = paintQueue.shift();
    if (rec) { rec.painted = now; frameLog.push(rec); if (frameLog.length > 5000) frameLog.shift(); }
  };

  function frame() {
    dirty = false;
    var t0 = performance.now();
    render(false);
    var t1 = performance.now();
    var inputs = pendingInput; pendingInput = [];
    if (channel && inputs.length) {
      paintQueue.push({ input: inputs[0][0], handled: inputs[0][1], start: t0, drawn: t1, coalesced: inputs.length });
      channel.port2.postMessage(0);
    }
    clearTimeout(idleTimer);
    hiresToken++;
    clearTimeout(warmTimer);
    idleTimer = setTimeout(function () {
      writeHash();
      warmCache();
      refineGrid(function () { render(false); setRendered("hi"); });
    }, 150);
  }
  function schedule() { if (!dirty) { dirty = true; requestAnimationFrame(frame); } }

  function onInput(ev) {
    var k = ev.target.getAttribute("data-key");
    state[k] = clampKey(k, ev.target.value);
    $("out-" + k).textContent = k === "theta" ? state[k].toFixed(0) + "\u00b0" : state[k].toFixed(2);
    pendingInput.push([ev.timeStamp, performance.now()]);
    schedule();
  }

  function setupTheory() {
    if (!P || !L) { $("theory").appendChild(el("p", { "class": "problems" }, "theory view unavailable: " + (DATA.error || "landscape script missing"))); return; }
    ["delta", "theta", "s"].forEach(function (k) {
      var s = $("sl-" + k), r = P.ranges[k];
      s.min = r[0]; s.max = r[1]; s.step = r[2]; SL[k] = s;
      s.addEventListener("input", onInput);
    });
    PLANE = setupCanvas($("cv-plane")); SLICE = setupCanvas($("cv-slice")); LLCV = setupCanvas($("cv-llc"));
    DOTP = $("dot-plane"); DOTS = $("dot-slice"); VLL = $("vline-llc");
    VLL.style.height = (LLCV.h - SM.t - SM.b) + "px";
    var off = document.createElement("canvas"); OFF = { cv: off, g: off.getContext("2d") };
    var mc = $("cv-map"); MAP = { cv: mc, g: mc.getContext("2d") };
    mc.style.left = (PM.l + 1) + "px"; mc.style.top = (PM.t + 1) + "px";
    mc.style.width = (PLANE.w - PM.l - PM.r) + "px"; mc.style.height = (PLANE.h - PM.t - PM.b) + "px";
    var svgns = "http://www.w3.org/2000/svg", gm = $("ov-minima");
    P.names.forEach(function (n, k) {
      var c = document.createElementNS(svgns, "circle");
      c.setAttribute("id", "ov-min-" + k); c.setAttribute("r", "3"); c.setAttribute("fill", COLORS[k]);
      var t = document.createElementNS(svgns, "text");
      t.setAttribute("id", "ov-name-" + k); t.setAttribute("class", "pname"); t.textContent = n;
      gm.appendChild(c); gm.appendChild(t);
    });
    var lg = $("legend");
    P.names.forEach(function (n, k) {
      var item = el("span"); var sw = el("span", { "class": "sw" }); sw.style.background = COLORS[k];
      item.appendChild(sw); item.appendChild(document.createTextNode(n + (k === P.aligned ? " (aligned)" : k === P.misaligned ? " (misaligned)" : "")));
      lg.appendChild(item);
    });
    var yi = el("span"); yi.appendChild(el("span", { "class": "sw yellow" })); yi.appendChild(document.createTextNode("overlap zone (\u03b5 = " + P.epsilon + ")"));
    lg.appendChild(yi);
    $("btn-reset").addEventListener("click", function () {
      state.delta = P.ranges.delta[3]; state.theta = P.ranges.theta[3]; state.s = P.ranges.s[3];
      syncSliders(); render(true); writeHash();
    });
    $("btn-link").addEventListener("click", function () {
      writeHash();
      var note = $("link-note"), url = location.href;
      var done = function () { note.textContent = "link copied"; };
      if (navigator.clipboard && navigator.clipboard.writeText) navigator.clipboard.writeText(url).then(done, function () { note.textContent = url; });
      else note.textContent = url;
    });
    window.addEventListener("hashchange", function () {
      if (location.hash === hashString()) return;
      applyHash(); render(true);
    });
    applyHash();
    render(true);
    warmCache();
  }

  // ============================================================================== measured view
  var problems = [];   // [runName, message]
  function isNum(x) { return typeof x === "number" && isFinite(x); }
  function isStat(o) { return o && typeof o === "object" && isNum(o.mean); }
  function isBand(o) {
    if (!o || typeof o !== "object" || !Array.isArray(o.t) || !Array.isArray(o.mean)) return false;
    var n = o.t.length;
    if (!n || o.mean.length !== n) return false;
    if (o.ci_low && o.ci_low.length !== n) return false;
    if (o.ci_high && o.ci_high.length !== n) return false;
    return true;
  }
  function src(run, file) { return run.path.replace(/\/+$/, "") + "/" + file; }
  function note(run, file, key, what) { problems.push([run.name, src(run, file) + ": " + key + " " + what]); }

  // study.json first (the demo), then metrics.json
  function getKey(run, key) {
    if (run.study && run.study[key] !== undefined && run.study[key] !== null) return { v: run.study[key], file: "study.json" };
    if (run.metrics && run.metrics[key] !== undefined && run.metrics[key] !== null) return { v: run.metrics[key], file: "metrics.json" };
    // a demo study nests the EM rates under emergent_misalignment (data/study.schema.json)
    var em = run.study && run.study.emergent_misalignment;
    if (em && typeof em === "object" && em[key] !== undefined && em[key] !== null) return { v: em[key], file: "study.json" };
    return null;
  }

  var PLOT_CFG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d", "toImage"] };
  var COND_COLORS = { plain: "#c0392b", inoculated: "#2f6db5", random: "#7f8c8d", plain_in_inoculation_context: "#e08e0b",
    secure_control: "#27ae60", educational: "#8e44ad" };
  var DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"];
  function condColor(name, i) { return COND_COLORS[name] || COLORS[i % COLORS.length]; }
  function layout(title, xt, yt, extra) {
    var l = { title: { text: title, font: { size: 14 }, x: 0, xanchor: "left" }, margin: { l: 56, r: 12, t: 34, b: 44 },
      xaxis: { title: { text: xt }, zeroline: false, gridcolor: "#eceff3" }, yaxis: { title: { text: yt }, zeroline: false, gridcolor: "#eceff3" },
      legend: { orientation: "h", y: -0.24, font: { size: 11 } }, font: { family: "system-ui, sans-serif", size: 12, color: "#1d2430" },
      paper_bgcolor: "#fff", plot_bgcolor: "#fff", hovermode: "closest" };
    for (var k in extra) if (Object.prototype.hasOwnProperty.call(extra, k)) l[k] = extra[k];
    return l;
  }
  function bandTraces(b, name, color, dash, group) {
    var tr = [];
    if (b.ci_low && b.ci_high) {
      tr.push({ x: b.t, y: b.ci_high, mode: "lines", line: { width: 0 }, hoverinfo: "skip", showlegend: false, legendgroup: group });
      tr.push({ x: b.t, y: b.ci_low, mode: "lines", line: { width: 0 }, fill: "tonexty", fillcolor: rgba(color, 0.16),
        hoverinfo: "skip", showlegend: false, legendgroup: group });
    }
    tr.push({ x: b.t, y: b.mean, mode: "lines+markers", name: name, line: { color: color, dash: dash, width: 2 },
      marker: { size: 4 }, legendgroup: group });
    return tr;
  }
  function addPlot(parent, id, traces, lay, caption, cls) {
    var wrap = el("div");
    var d = el("div", { id: id, "class": cls || "plot" });
    wrap.appendChild(d);
    if (caption) wrap.appendChild(el("p", { "class": "cap" }, caption));
    parent.appendChild(wrap);
    if (window.Plotly) window.Plotly.newPlot(d, traces, lay, PLOT_CFG);
    else d.textContent = "plotting library failed to load";
    return d;
  }
  function section(body, title, cap, id) {
    var s = el("div", { "class": "msec" });
    if (id) s.id = id;
    s.appendChild(el("h3", null, title));
    if (cap) s.appendChild(el("p", { "class": "cap" }, cap));
    body.appendChild(s);
    return s;
  }
  function runLabel(run, multi) { return multi ? run.name + " \u00b7 " : ""; }
  function label(key) { return key.replace(/_/g, " "); }

  // The interval method as the data name it (a stat's "method", or "interval" for ratio summaries).
  function methodOf(s) { return s && typeof s === "object" ? (s.method || s.interval || null) : null; }
  function methodsText(stats, what) {
    var seen = {}, out = [];
    stats.forEach(function (s) { var m = methodOf(s); if (m && !seen[m]) { seen[m] = 1; out.push(m); } });
    return what + ": " + (out.length ? out.join("; ") : "interval method not recorded in the file");
  }
  function ciText(s) { return isNum(s.ci_low) && isNum(s.ci_high) ? "[" + fmt(s.ci_low) + ", " + fmt(s.ci_high) + "]" : "\u2014"; }

  // A censored summary: no mean (some seeds never crossed on the grid), a bound over seeds instead.
  function boundOf(o) {
    if (!o || typeof o !== "object" || isNum(o.mean)) return null;
    if (isStat(o.lower_bound)) return { sign: "\u2265", s: o.lower_bound, o: o };
    if (isStat(o.upper_bound)) return { sign: "\u2264", s: o.upper_bound, o: o };
    return null;
  }
  function boundText(b) {
    var o = b.o, n = isNum(o.n) ? o.n : (Array.isArray(o.per_seed) ? o.per_seed.length : null);
    if (isNum(o.n_censored) && isNum(o.censored_above)) {
      var never = "never crossed by t = " + fmt(o.censored_above, 2);
      return o.n_censored === n ? "a bound: all " + n + " seeds " + never : "a bound: " + o.n_censored + " of " + n + " seeds " + never;
    }
    var which = b.sign === "\u2265" ? "a lower bound" : "an upper bound";
    if (isNum(o.n_defined) && isNum(n)) return which + " from " + o.n_defined + " of " + n + " seeds (" + (n - o.n_defined) + " undefined)";
    return which + ", not an estimate";
  }

  // Several groups (runs) of {label, stat} bars on one numeric axis: bar = mean, whisker = the recorded
  // interval, one point per seed beside it (a bimodal outcome shows as two clusters, not as a wide whisker).
  function seedBars(groups) {
    var labels = [], index = {}, traces = [], stats = [];
    groups.forEach(function (g) { g.items.forEach(function (it) { if (!(it.label in index)) { index[it.label] = labels.length; labels.push(it.label); } }); });
    var width = 0.8 / Math.max(1, groups.length);
    groups.forEach(function (g, gi) {
      var off = -0.4 + width * (gi + 0.5), xs = [], ys = [], lo = [], hi = [], px = [], py = [], pt = [];
      g.items.forEach(function (it) {
        var x = index[it.label] + off, s = it.stat, per = Array.isArray(s.per_seed) ? s.per_seed : [];
        stats.push(s);
        xs.push(x); ys.push(s.mean);
        hi.push(isNum(s.ci_high) ? s.ci_high - s.mean : 0); lo.push(isNum(s.ci_low) ? s.mean - s.ci_low : 0);
        per.forEach(function (v, k) {
          if (!isNum(v)) return;
          px.push(x + width * 0.5 * ((k + 0.5) / per.length - 0.5)); py.push(v);
          pt.push(it.label + " \u00b7 seed " + k + ": " + fmt(v));
        });
      });
      var pre = g.name ? g.name + " \u00b7 " : "";
      traces.push({ type: "bar", x: xs, y: ys, width: width * 0.9, name: pre + "mean over seeds", marker: { color: rgba(g.color, 0.45) },
        hovertemplate: "mean %{y:.3f}<extra></extra>",
        error_y: { type: "data", symmetric: false, array: hi, arrayminus: lo, color: "#333", thickness: 1.2 } });
      if (px.length) traces.push({ type: "scatter", mode: "markers", x: px, y: py, text: pt, hoverinfo: "text", name: pre + "each seed",
        marker: { color: g.color, size: 6, line: { color: "#fff", width: 1 } } });
    });
    var axis = { tickvals: labels.map(function (_, i) { return i; }), ticktext: labels, gridcolor: "#eceff3", zeroline: false };
    return { traces: traces, axis: axis, stats: stats };
  }
  function seedBarPlot(s, id, bars, xt, yt, extra) {
    var lay = layout("", xt, yt, extra);
    bars.axis.title = { text: xt };
    lay.xaxis = bars.axis;
    return addPlot(s, id, bars.traces, lay);
  }

  var HEADLINE = [
    ["critical_magnitude", "critical magnitude t*"], ["inoculation_widening", "inoculation widening of t*"],
    ["model_position", "model position"], ["overlap_fraction", "overlap fraction"],
    ["broad_misalignment", "broad misalignment"], ["narrow_rate", "narrow-task rate"], ["wellformed", "well-formed rate"],
    ["eigenform", "eigenform"]
  ];
  function statRows(run) {
    var rows = [], seen = {};
    function walk(obj, file, key, text, depth) {
      var b = boundOf(obj);
      if (b) { rows.push({ file: file, key: key, label: text, s: b.s, bound: b }); return; }
      if (isStat(obj)) { rows.push({ file: file, key: key, label: text, s: obj }); return; }
      if (obj && typeof obj === "object" && !Array.isArray(obj) && depth < 2) {
        Object.keys(obj).forEach(function (k) { if (k !== "by_genre") walk(obj[k], file, key + "." + k, text + " \u00b7 " + label(k), depth + 1); });
      }
    }
    HEADLINE.forEach(function (h) {
      var g = getKey(run, h[0]);
      if (g) { seen[h[0]] = 1; walk(g.v, g.file, h[0], h[1], 0); }
    });
    [["study.json", run.study], ["metrics.json", run.metrics]].forEach(function (fs) {
      if (!fs[1]) return;
      Object.keys(fs[1]).sort().forEach(function (k) {
        if (seen[k] || k === "kind") return;
        if (isStat(fs[1][k])) { seen[k] = 1; rows.push({ file: fs[0], key: k, label: label(k), s: fs[1][k] }); }
      });
    });
    var tr = getKey(run, "transition");
    if (tr && tr.v && isNum(tr.v.jump_step)) rows.push({ file: tr.file, key: "transition.jump_step", label: "transition \u00b7 jump step", s: { mean: tr.v.jump_step }, exact: true });
    return rows;
  }

  function summaryTable(body, runs) {
    var any = false, tbl = el("table", { "class": "summary", id: "summary-table" });
    var thead = el("thead"), hr = el("tr");
    ["run", "quantity", "value", "interval", "interval method", "n"].forEach(function (h) { hr.appendChild(el("th", null, h)); });
    thead.appendChild(hr); tbl.appendChild(thead);
    var tb = el("tbody");
    runs.forEach(function (run) {
      statRows(run).forEach(function (r) {
        any = true;
        var tr = el("tr", { "data-key": r.key });
        if (r.bound) tr.setAttribute("data-bound", "1");
        tr.appendChild(el("td", null, run.name));
        tr.appendChild(el("td", { title: src(run, r.file) + " \u2192 " + r.key }, r.label));
        var value = r.exact ? String(r.s.mean) : (r.bound ? r.bound.sign + " " + fmt(r.s.mean) : fmt(r.s.mean));
        tr.appendChild(el("td", { "class": "num" }, value));
        tr.appendChild(el("td", { "class": "num" }, r.bound ? boundText(r.bound) : (r.s.deterministic ? "exact (deterministic)" : ciText(r.s))));
        tr.appendChild(el("td", null, r.exact ? "" : (methodOf(r.s) || (isNum(r.s.ci_low) ? "not recorded" : ""))));
        tr.appendChild(el("td", { "class": "num" }, isNum(r.s.n) ? String(r.s.n) : (Array.isArray(r.s.per_seed) ? String(r.s.per_seed.length) : "")));
        tb.appendChild(tr);
      });
    });
    tbl.appendChild(tb);
    if (!any) return;
    var s = section(body, "All numbers", "Every summary in the run files, with the interval each one's file names (n = seeds). " +
      "\u2265 / \u2264: a bound where some seeds never crossed on the grid \u2014 not an estimate. Hover a quantity to see its file and key.", "sec-numbers");
    s.appendChild(tbl);
  }

  // Points a band withholds (mean null: failed the gates): dotted lines at their t, never a value.
  function withheldOf(b) {
    var ts = [];
    b.t.forEach(function (t, i) { if (!isNum(b.mean[i])) ts.push(t); });
    return ts;
  }
  function withheldShapes(ts) {
    return ts.map(function (t) { return { type: "line", xref: "x", yref: "paper", x0: t, x1: t, y0: 0, y1: 1, line: { color: "#9aa3ae", width: 1.5, dash: "dot" } }; });
  }
  function withheldNote(s, items) {
    if (!items.length) return;
    var box = el("div", { "class": "withheld-note" });
    box.appendChild(el("b", null, "Withheld (no value drawn; dotted lines mark where):"));
    var ul = el("ul");
    items.forEach(function (w) { ul.appendChild(el("li", null, w.name + " at t = " + w.ts.map(function (t) { return fmt(t, 2); }).join(", ") + ": " + w.reason)); });
    box.appendChild(ul);
    s.appendChild(box);
  }

  function bandSection(body, runs, key, title, cap, yt, conds, id) {
    var traces = [], multi = runs.length > 1, withheld = [], shapes = [], drawn = 0, ns = [];
    function add(b, name, color, dash, group, reason) {
      var ts = withheldOf(b);
      drawn += b.t.length - ts.length;
      if (isNum(b.n)) ns.push(b.n);
      if (ts.length) { withheld.push({ name: name, ts: ts, reason: reason || b.reason || "no reason recorded" }); shapes = shapes.concat(withheldShapes(ts)); }
      if (ts.length < b.t.length) traces = traces.concat(bandTraces(b, name, color, dash, group));
    }
    runs.forEach(function (run, ri) {
      var g = getKey(run, key);
      if (!g) return;
      if (conds) {
        if (typeof g.v !== "object") { note(run, g.file, key, "is malformed (expected an object of bands)"); return; }
        Object.keys(g.v).forEach(function (c, ci) {
          if (!isBand(g.v[c])) { note(run, g.file, key + "." + c, "is malformed (expected {t, mean, ci_low, ci_high} of equal length)"); return; }
          add(g.v[c], runLabel(run, multi) + label(c), condColor(c, ci), DASHES[ri % DASHES.length], run.name + c);
        });
      } else {
        if (!isBand(g.v)) { note(run, g.file, key, "is malformed (expected {t, mean, ci_low, ci_high} of equal length)"); return; }
        add(g.v, runLabel(run, multi) + (g.v.loss ? label(key) + " (" + g.v.loss + ", " + (g.v.restrict || "all parameters") + ")" : label(key)),
          COLORS[(ri + 2) % COLORS.length], "solid", run.name + key);
        var w = getKey(run, "wr" + key);
        if (w && isBand(w.v)) add(w.v, runLabel(run, multi) + "weight-restricted LLC (" + (w.v.restrict || "restricted") + ")", COLORS[(ri + 2) % COLORS.length], "dash", run.name + "wr");
        else if (w) note(run, w.file, "wr" + key, "is malformed (expected a band)");
      }
    });
    if (!traces.length && !withheld.length) return;
    var n = ns.length && drawn ? " (n = " + ns.filter(function (v, i) { return ns.indexOf(v) === i; }).join(", ") + " seeds; interval method not recorded with the curves)" : "";
    var s = section(body, title, cap + (drawn ? " Shaded: the interval recorded with each curve" + n + "." : ""), id);
    var extra = { shapes: shapes };
    if (!drawn) {
      extra.yaxis = { title: { text: yt + " \u2014 no point passed the gates" }, range: [0, 1], showticklabels: false, zeroline: false, gridcolor: "#fff" };
      extra.annotations = [{ xref: "paper", yref: "paper", x: 0.5, y: 0.55, showarrow: false, font: { size: 13, color: "#5b6473" }, bgcolor: "#fff",
        text: "every point withheld:<br>" + withheld[0].reason }];
      traces.push({ x: [withheld[0].ts[0]], y: [null], mode: "markers", showlegend: false, hoverinfo: "skip" });
    }
    addPlot(s, "plot-" + key, traces, layout("", "perturbation magnitude t", yt, extra));
    withheldNote(s, withheld);
  }

  function overlapSection(body, runs) {
    var groups = [], multi = runs.length > 1, eps = [];
    runs.forEach(function (run, ri) {
      var g = getKey(run, "overlap_fraction");
      if (!g) return;
      var bg = g.v && g.v.by_genre;
      if (!bg || typeof bg !== "object") { if (g.v && !isStat(g.v)) note(run, g.file, "overlap_fraction", "is malformed"); return; }
      var items = [];
      Object.keys(bg).forEach(function (k) {
        if (!isStat(bg[k])) { note(run, g.file, "overlap_fraction.by_genre." + k, "is malformed (expected {mean, ci_low, ci_high, n})"); return; }
        items.push({ label: label(k), stat: bg[k] });
      });
      if (isNum(g.v.epsilon)) eps.push(run.name + ": \u03b5 = " + g.v.epsilon);
      else { var e2 = run.study && run.study.epsilon; if (isNum(e2)) eps.push(run.name + ": \u03b5 = " + e2); }
      groups.push({ name: multi ? run.name : "", color: COLORS[ri % COLORS.length], items: items });
    });
    if (!groups.length) return;
    var bars = seedBars(groups);
    var s = section(body, "Overlap by genre", "Fraction of prompts in each genre where the aligned and misaligned models' outputs agree within \u03b5. Bars: mean over seeds; points: each seed; " +
      methodsText(bars.stats, "whiskers") + ". " + eps.join("; "), "sec-overlap");
    seedBarPlot(s, "plot-overlap", bars, "genre", "overlap fraction", { yaxis: { title: { text: "overlap fraction" }, range: [0, 1.05], gridcolor: "#eceff3" } });
  }

  function statBarSection(body, runs, key, title, cap, yt, id) {
    var groups = [], multi = runs.length > 1;
    runs.forEach(function (run, ri) {
      var g = getKey(run, key);
      if (!g || typeof g.v !== "object" || isStat(g.v)) return;
      var items = [];
      Object.keys(g.v).forEach(function (k) {
        var v = g.v[k];
        if (!isStat(v)) { if (v && typeof v === "object") note(run, g.file, key + "." + k, "is malformed (expected {mean, ci_low, ci_high, n})"); return; }
        items.push({ label: label(k), stat: v });
      });
      if (items.length) groups.push({ name: multi ? run.name : "", color: COLORS[ri % COLORS.length], items: items });
    });
    if (!groups.length) return;
    var bars = seedBars(groups);
    var s = section(body, title, cap + " Bars: mean over seeds; points: each seed; " + methodsText(bars.stats, "whiskers") + ".", id);
    seedBarPlot(s, "plot-" + key, bars, "condition", yt, {});
  }

  // t* per seed: a crossing seed is a point; a seed that never crossed is drawn as a bound at the grid's end
  // (an open triangle, "≥"), never as an estimate; the mean only where every seed crossed.
  function criticalSection(body, runs) {
    var groups = [], multi = runs.length > 1, levels = [];
    runs.forEach(function (run, ri) {
      var g = getKey(run, "critical_magnitude");
      if (!g || !g.v || typeof g.v !== "object") return;
      var items = Object.keys(g.v).filter(function (k) { var c = g.v[k]; return c && typeof c === "object" && Array.isArray(c.per_seed); })
        .map(function (k) { return { label: label(k), c: g.v[k] }; });
      if (isNum(g.v.level)) levels.push(g.v.level);
      if (items.length) groups.push({ name: multi ? run.name + " \u00b7 " : "", color: COLORS[ri % COLORS.length], items: items });
    });
    if (!groups.length) return;
    var labels = [], index = {}, traces = [], width = 0.8 / groups.length;
    groups.forEach(function (g) { g.items.forEach(function (it) { if (!(it.label in index)) { index[it.label] = labels.length; labels.push(it.label); } }); });
    groups.forEach(function (g, gi) {
      var off = -0.4 + width * (gi + 0.5), P1 = { x: [], y: [], t: [] }, P2 = { x: [], y: [], t: [] }, M = { x: [], y: [], lo: [], hi: [] }, T = { x: [], y: [], t: [] };
      g.items.forEach(function (it) {
        var c = it.c, x0 = index[it.label] + off, per = c.per_seed, bound = c.censored_above, never = 0;
        per.forEach(function (v, k) {
          var x = x0 + width * 0.5 * ((k + 0.5) / per.length - 0.5);
          if (isNum(v) && !(isNum(bound) && v >= bound)) { P1.x.push(x); P1.y.push(v); P1.t.push(it.label + " \u00b7 seed " + k + ": t* = " + fmt(v, 2)); }
          else if (isNum(bound)) { never++; P2.x.push(x); P2.y.push(bound); P2.t.push(it.label + " \u00b7 seed " + k + ": t* \u2265 " + fmt(bound, 2) + ", never crossed"); }
        });
        if (never) { T.x.push(x0); T.y.push(bound); T.t.push("\u2265 " + fmt(bound, 2) + ", never crossed (" + never + " of " + per.length + ")"); }
        if (isNum(c.mean)) { M.x.push(x0); M.y.push(c.mean); M.hi.push(isNum(c.ci_high) ? c.ci_high - c.mean : 0); M.lo.push(isNum(c.ci_low) ? c.mean - c.ci_low : 0); }
      });
      if (P1.x.length) traces.push({ type: "scatter", mode: "markers", x: P1.x, y: P1.y, text: P1.t, hoverinfo: "text", name: g.name + "t* of a seed (crossed)", marker: { color: g.color, size: 8 } });
      if (P2.x.length) traces.push({ type: "scatter", mode: "markers", x: P2.x, y: P2.y, text: P2.t, hoverinfo: "text", name: g.name + "never crossed: t* \u2265 the grid's end (a bound)", marker: { color: g.color, size: 10, symbol: "triangle-up-open", line: { width: 2 } } });
      if (T.x.length) traces.push({ type: "scatter", mode: "text", x: T.x, y: T.y, text: T.t, textposition: "top center", showlegend: false, hoverinfo: "skip", textfont: { size: 11, color: "#1d2430" } });
      if (M.x.length) traces.push({ type: "scatter", mode: "markers", x: M.x, y: M.y, name: g.name + "mean (every seed crossed)", marker: { color: "#1d2430", size: 14, symbol: "line-ew-open", line: { width: 2 } },
        error_y: { type: "data", symmetric: false, array: M.hi, arrayminus: M.lo, color: "#1d2430", thickness: 1.2 } });
    });
    var level = levels.length ? " " + levels[0] : "";
    var s = section(body, "Critical magnitude t* per seed",
      "The smallest t at which broad misalignment of w0 + t\u00b7\u0394 reaches" + level + ", per fine-tuning seed and direction. A seed that never crossed on the grid is drawn at the grid's end as \u25b3 and written \u2265: a lower bound, not an estimate; a mean is drawn only where every seed crossed.", "sec-critical");
    var lay = layout("", "direction (case)", "critical magnitude t*", {});
    lay.xaxis = { title: { text: "direction (case)" }, tickvals: labels.map(function (_, i) { return i; }), ticktext: labels, gridcolor: "#eceff3", zeroline: false };
    var top = 0;
    traces.forEach(function (tr) { tr.y.forEach(function (v) { if (isNum(v) && v > top) top = v; }); });
    lay.yaxis.range = [0, (top || 1) * 1.18];  // room for the bounds' labels above the grid's end
    addPlot(s, "plot-critical_magnitude", traces, lay);
  }

  function eigenformSection(body, runs) {
    var groups = [], multi = runs.length > 1, verdicts = [];
    runs.forEach(function (run, ri) {
      var g = getKey(run, "eigenform"), e = g ? g.v : (run.kind === "eigenform" ? run.metrics : null);
      var by = e && e.return_rate_by_variant;
      if (!by || typeof by !== "object") return;
      var items = Object.keys(by).filter(function (k) { return isStat(by[k]); }).map(function (k) { return { label: label(k), stat: by[k] }; });
      if (e.verdict && e.verdict.answer) verdicts.push(runLabel(run, multi) + "verdict " + e.verdict.answer + (e.verdict.reason ? " (" + e.verdict.reason + ")" : ""));
      if (items.length) groups.push({ name: multi ? run.name : "", color: COLORS[(ri + 1) % COLORS.length], items: items });
    });
    if (!groups.length) return;
    var bars = seedBars(groups);
    var s = section(body, "Eigenform: does the persona return?", "Return rate per process variant after a perturbation that breaks the static model. Bars: mean over seeds; points: each seed; " +
      methodsText(bars.stats, "whiskers") + ". " + verdicts.join("; "), "sec-eigenform");
    seedBarPlot(s, "plot-eigenform", bars, "process variant", "return rate", { yaxis: { title: { text: "return rate" }, range: [0, 1.05], gridcolor: "#eceff3" } });
  }

  // A standalone `llc` run: its estimate (or why it is withheld) and its chains, not just a thumbnail.
  function llcEstimateSection(body, runs) {
    var first = true;
    runs.forEach(function (run, ri) {
      var m = run.metrics;
      if (run.kind !== "llc" || !m || !m.llc || typeof m.llc !== "object") return;
      var est = m.llc, d = m.diagnostics || {}, ok = est.converged === true && isNum(est.mean);
      var s = section(body, "LLC estimate \u00b7 " + run.name, "The local learning coefficient of " + (d.loss || "the loss") +
        " (" + (d.restrict || "all parameters") + "), reported only when every equilibrium gate passed.", first ? "sec-llc-estimate" : null);
      first = false;
      var tbl = el("table", { "class": "summary llc-estimate" }), tb = el("tbody");
      function row(k, v) { var tr = el("tr"); tr.appendChild(el("th", null, k)); tr.appendChild(el("td", { "class": "num" }, v)); tb.appendChild(tr); }
      row("\u03bb\u0302", ok ? fmt(est.mean) + (isNum(est.lo) && isNum(est.hi) ? " [" + fmt(est.lo) + ", " + fmt(est.hi) + "] (" + (est.interval || "interval method not recorded") + ")" : "")
        : "withheld: " + ((est.reasons || []).join("; ") || "the gates failed"));
      if (isNum(d.rhat)) row("R-hat", fmt(d.rhat));
      if (isNum(d.ess_bulk)) row("ESS (bulk)", fmt(d.ess_bulk, 0));
      if (isNum(d.num_chains)) row("chains \u00d7 draws", d.num_chains + " \u00d7 " + d.num_draws);
      tbl.appendChild(tb); s.appendChild(tbl);
      var tr = m.llc_trace;
      if (Array.isArray(tr) && tr.length && Array.isArray(tr[0])) {
        var traces = tr.map(function (chain, c) { return { x: chain.map(function (_, i) { return i; }), y: chain, mode: "lines", name: "chain " + c, line: { width: 1 } }; });
        addPlot(s, "plot-llc-trace-" + ri, traces, layout(ok ? "\u03bb per draw" : "\u03bb per draw (the estimate is withheld: chains off equilibrium)", "draw", "\u03bb per draw = n\u03b2 (L(w) \u2212 L(w*))"), null, "plot small");
      }
    });
  }

  // An `llc path` run: λ̂(t) per seed for the plain direction over all parameters, withheld points marked.
  function llcPathSection(body, runs) {
    var first = true;
    runs.forEach(function (run, ri) {
      var m = run.metrics;
      if (run.kind !== "llc_path" || !m || !m.curves || !Array.isArray(m.ts)) return;
      var key = m.curves["plain/all/self_kl"] ? "plain/all/self_kl" : Object.keys(m.curves)[0];
      if (!key) return;
      var traces = [], withheld = [], shapes = [], seen = {};
      (m.curves[key] || []).forEach(function (p, k) {
        var ys = (p.llc || []).map(function (v) { return isNum(v) ? v : null; });
        if (ys.some(isNum)) traces.push({ x: m.ts, y: ys, mode: "lines+markers", name: "seed " + p.seed, line: { color: COLORS[k % COLORS.length] } });
        var ts = [], reasons = [];
        ys.forEach(function (v, i) { if (v === null) { ts.push(m.ts[i]); (p.reasons && p.reasons[i] || []).forEach(function (r) { if (reasons.indexOf(r) < 0) reasons.push(r); }); } });
        if (ts.length) { withheld.push({ name: "seed " + p.seed, ts: ts, reason: reasons.join("; ") || "failed the gates" }); ts.forEach(function (t) { if (!seen[t]) { seen[t] = 1; shapes = shapes.concat(withheldShapes([t])); } }); }
      });
      if (Array.isArray(m.band)) shapes.push({ type: "rect", xref: "x", yref: "paper", x0: m.band[0], x1: m.band[1], y0: 0, y1: 1, fillcolor: "rgba(150,150,150,.15)", line: { width: 0 } });
      var v = (m.verdicts || {})[key] || {};
      var s = section(body, "LLC along the path \u00b7 " + run.name + " (" + key + ")", "\u03bb\u0302 at w0 + t\u00b7\u0394W per fine-tuning seed; grey: the boundary band; verdict " +
        (v.verdict || "not recorded") + (v.supports ? " (" + v.supports + " support)" : "") + ".", first ? "sec-llc-path" : null);
      first = false;
      var extra = { shapes: shapes };
      if (!traces.length) {
        extra.yaxis = { title: { text: "\u03bb\u0302 \u2014 no point passed the gates" }, range: [0, 1], showticklabels: false };
        extra.annotations = [{ xref: "paper", yref: "paper", x: 0.5, y: 0.55, showarrow: false, text: "every point withheld", font: { size: 13, color: "#5b6473" } }];
        traces.push({ x: [m.ts[0]], y: [null], mode: "markers", showlegend: false, hoverinfo: "skip" });
      }
      addPlot(s, "plot-llc-path-" + ri, traces, layout("", "perturbation magnitude t", "\u03bb\u0302 (self-KL)", extra));
      withheldNote(s, withheld);
    });
  }

  function transitionSection(body, runs) {
    var multi = runs.length > 1, A = [], B = [], C = [], shapes = [];
    runs.forEach(function (run, ri) {
      var g = getKey(run, "transition");
      if (!g) return;
      var t = g.v, steps = t && t.steps;
      if (!Array.isArray(steps) || !steps.length) { note(run, g.file, "transition", "is malformed (no steps list)"); return; }
      var dash = DASHES[ri % DASHES.length], pre = runLabel(run, multi);
      function ok(arr, key) {
        if (arr === undefined) return false;
        if (!Array.isArray(arr) || arr.length !== steps.length) { note(run, g.file, "transition." + key, "is malformed (length differs from steps)"); return false; }
        return true;
      }
      // broad misalignment is measured at checkpoints (eval_steps) when given, else at every step
      var evalSteps = Array.isArray(t.eval_steps) ? t.eval_steps : steps;
      if (t.broad_misalignment !== undefined) {
        if (!Array.isArray(t.broad_misalignment) || t.broad_misalignment.length !== evalSteps.length) note(run, g.file, "transition.broad_misalignment", "is malformed (length differs from eval_steps)");
        else A.push({ x: evalSteps, y: t.broad_misalignment, mode: "lines+markers", name: pre + "broad misalignment", line: { color: "#c0392b", dash: dash }, marker: { size: 4 } });
      }
      if (ok(t.a_norm, "a_norm")) B.push({ x: steps, y: t.a_norm, mode: "lines", name: pre + "|A| (adapter)", line: { color: "#2f6db5", dash: dash } });
      if (ok(t.b_norm, "b_norm")) B.push({ x: steps, y: t.b_norm, mode: "lines", name: pre + "|B| (adapter)", line: { color: "#e08e0b", dash: dash } });
      if (t.local_cos && typeof t.local_cos === "object") {
        Object.keys(t.local_cos).sort(function (a, b) { return Number(a) - Number(b); }).forEach(function (w, wi) {
          if (ok(t.local_cos[w], "local_cos." + w)) C.push({ x: steps, y: t.local_cos[w], mode: "lines", connectgaps: false, name: pre + "window " + w, line: { color: ["#16a085", "#8e44ad", "#34495e", "#d35400"][wi % 4], dash: dash } });
        });
      }
      if (isNum(t.jump_step)) shapes.push({ type: "line", xref: "x", yref: "paper", x0: t.jump_step, x1: t.jump_step, y0: 0, y1: 1, line: { color: "#555", dash: "dot", width: 1.5 } });
    });
    if (!A.length && !B.length && !C.length) return;
    var s = section(body, "Fine-tuning transition", "How the rank-1 adapter's run crosses into the misaligned persona: broad misalignment per checkpoint, the adapter factor norms, and the cosine between successive update directions over windows of steps. Dotted line: the detected jump step.");
    var grid = s;
    if (A.length) addPlot(grid, "plot-transition-mis", A, layout("broad misalignment", "fine-tuning step", "rate", { shapes: shapes, legend: { x: 1.02, y: 1, font: { size: 11 } } }), null, "plot small");
    if (B.length) addPlot(grid, "plot-transition-norm", B, layout("adapter norms", "fine-tuning step", "norm", { shapes: shapes, legend: { x: 1.02, y: 1, font: { size: 11 } } }), null, "plot small");
    if (C.length) addPlot(grid, "plot-transition-cos", C, layout("local cosine of updates", "fine-tuning step", "cos", { shapes: shapes, legend: { x: 1.02, y: 1, font: { size: 11 } } }), null, "plot small");
  }

  function figuresSection(body, runs) {
    var items = [];
    runs.forEach(function (run) { (run.figures || []).forEach(function (f) { if (f.url) items.push([run, f]); }); });
    if (!items.length) return;
    var s = section(body, "Figures", "The static figures each run saved under figures/.");
    var box = el("div", { "class": "figs" }); s.appendChild(box);
    items.forEach(function (it) {
      var fig = el("figure"), img = el("img", { src: it[1].url, alt: it[1].name, loading: "lazy" });
      fig.appendChild(img); fig.appendChild(el("figcaption", { "class": "cap" }, it[0].name + " / " + it[1].name));
      box.appendChild(fig);
    });
  }

  function guarded(fn, what) {
    try { fn(); } catch (e) { problems.push(["page", "could not draw " + what + ": " + e.message]); }
  }

  function setupMeasured() {
    var runs = DATA.runs || [], body = $("measured-body");
    runs.forEach(function (run) { (run.errors || []).forEach(function (m) { problems.push([run.name, m]); }); });
    $("measured-intro").textContent = runs.length
      ? "From " + runs.length + " run folder" + (runs.length > 1 ? "s" : "") + ": " + runs.map(function (r) { return r.name + (r.kind ? " (" + r.kind + ")" : ""); }).join(", ") +
        ". Each section appears when some run has its data; several runs are overlaid (line style or bar colour per run)."
      : "No run folders given: only the theory view. Pass run folders to `persona-basins explore RUN ...` or `persona-basins report RUN --out FILE.html`.";
    guarded(function () { statBarSection(body, runs, "broad_misalignment", "Broad misalignment by condition", "Rate of misaligned answers on unrelated prompts after fine-tuning, per training condition.", "broad misalignment", "sec-broad_misalignment"); }, "broad misalignment");
    guarded(function () { criticalSection(body, runs); }, "the critical magnitudes");
    guarded(function () { bandSection(body, runs, "misalignment_vs_t", "Misalignment vs perturbation magnitude", "Broad misalignment of the model perturbed by t along each direction, with and without inoculation, and along a random direction.", "broad misalignment", true, "sec-misalignment_vs_t"); }, "misalignment vs t");
    guarded(function () { bandSection(body, runs, "llc_along_path", "LLC along the perturbation path", "Local learning coefficient (SGLD estimate of the self-KL loss) at each magnitude t: the hypothesis under test is that it peaks at the boundary t*. A point whose chains failed the equilibrium gates is withheld, not drawn.", "LLC", false, "sec-llc"); }, "LLC vs t");
    guarded(function () { llcPathSection(body, runs); }, "the LLC path");
    guarded(function () { llcEstimateSection(body, runs); }, "the LLC estimate");
    guarded(function () { overlapSection(body, runs); }, "overlap by genre");
    guarded(function () { eigenformSection(body, runs); }, "eigenform");
    guarded(function () { transitionSection(body, runs); }, "the transition metrics");
    guarded(function () { figuresSection(body, runs); }, "figures");
    guarded(function () { summaryTable(body, runs); }, "the summary table");
    guarded(function () { setupVerdicts(runs); }, "the verdicts");
    showProblems();
  }

  // ============================================================================== verdicts (top of the page)
  function setupVerdicts(runs) {
    var body = $("verdicts-body"), multi = runs.length > 1, any = false;
    runs.forEach(function (run) {
      var claims = run.claims || [];
      if (!claims.length) return;
      any = true;
      if (multi) body.appendChild(el("h3", null, run.name + (run.kind ? " (" + run.kind + ")" : "")));
      var cfg = run.config || {};
      if (cfg.preset === "tiny") {
        body.appendChild(el("p", { "class": "smoke" }, "Tiny preset: a smoke test (" + (cfg.seeds || "few") + " seeds, short fine-tunes). It checks that every step runs; it cannot show the findings, so most verdicts here are undecided or withheld by design. Run the default preset for the study."));
      }
      var tbl = el("table", { "class": "verdicts" }), thead = el("thead"), hr = el("tr"), tb = el("tbody");
      ["claim", "verdict", "the number behind it", "seeds", "why", ""].forEach(function (h) { hr.appendChild(el("th", null, h)); });
      thead.appendChild(hr); tbl.appendChild(thead);
      claims.forEach(function (c) {
        var tr = el("tr", { "data-claim": c.id, "data-verdict": c.verdict });
        tr.appendChild(el("td", { "class": "claim" }, c.claim));
        var vd = el("td");
        vd.appendChild(el("span", { "class": "badge v-" + String(c.verdict).replace(/\s+/g, "-") }, c.verdict));
        tr.appendChild(vd);
        tr.appendChild(el("td", { "class": "number", title: src(run, "") + c.source }, c.number));
        tr.appendChild(el("td", { "class": "kofn" }, c.k_of_n));
        tr.appendChild(el("td", { "class": "why" }, c.why));
        var cell = el("td"), target = document.getElementById(c.section);
        if (target) {
          var a = el("a", { href: "#" + c.section }, "chart \u2193");
          // scroll without touching location.hash: the hash holds the theory view's state
          a.addEventListener("click", function (ev) { ev.preventDefault(); target.scrollIntoView({ block: "start" }); });
          cell.appendChild(a);
        }
        tr.appendChild(cell);
        tb.appendChild(tr);
      });
      tbl.appendChild(tb);
      body.appendChild(tbl);
    });
    if (!any) {
      body.appendChild(el("p", { "class": "cap" }, runs.length ? "None of the runs given has the numbers of the essay's claims (a demo, em, llc path or eigenform run has)." : "No runs given: only the hypothesis (the theory view) below."));
    }
  }

  function showProblems() {
    if (!problems.length) return;
    var box = $("pb-problems"); box.hidden = false;
    box.appendChild(el("b", null, "Some run files are missing or malformed; everything else is shown."));
    var ul = el("ul", { id: "problem-list" });
    problems.forEach(function (p) { var li = el("li"); li.appendChild(el("code", null, p[1])); ul.appendChild(li); });
    box.appendChild(ul);
  }

  // ============================================================================== start
  $("pb-version").textContent = DATA.version || "";
  $("pb-meta").textContent = DATA.generated ? "(page built " + DATA.generated + ")" : "";
  if (DATA.error) problems.push(["page", DATA.error]);
  try { setupTheory(); } catch (e) { problems.push(["page", "theory view failed: " + e.message]); }
  try { setupMeasured(); } catch (e) { problems.push(["page", "measured view failed: " + e.message]); showProblems(); }

  window.PBExplorer = {
    state: state,
    frames: function () { return frameLog.slice(); },
    clearFrames: function () { frameLog.length = 0; },
    viewState: function () { return L.viewState(P, state.delta, state.theta, state.s, cache.ctx); },
    problems: function () { return problems.slice(); },
    ready: true
  };
  document.body.setAttribute("data-ready", "1");
})();
