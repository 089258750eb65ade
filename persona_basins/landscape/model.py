"""The theory view's persona landscape, in numpy: the reference the explorer's JavaScript mirrors.

A persona plane is a 2-D state space. Persona ``k`` is a quadratic well with centre ``c_k``, curvature ``a_k``
and depth offset ``b_k``: ``E_k(x) = a_k |x - c_k|^2 + b_k``. The landscape is their soft minimum at
temperature ``T``::

    V(x) = -T log sum_k exp(-E_k(x) / T),       grad V(x) = sum_k pi_k(x) 2 a_k (x - c_k)

with ``pi = softmax(-E / T)`` the persona mixture at ``x``. A state's basin is the minimum that explicit-Euler
gradient flow ``x <- x - h grad V(x)`` reaches (stopped once within ``r_stop`` of a minimum).

* Perturbation: the model's point is ``x0 + delta * (cos theta, sin theta)``; it does not depend on the
  inoculation strength ``s``.
* Inoculation widens the aligned well: ``a_A(s) = a_A / (1 + kappa_a s)`` and ``b_A(s) = b_A - kappa_b s``.
* Output map (explicit): persona ``k`` answers genre ``g`` misaligned with probability ``o_kg``; the state
  ``x`` answers with the mixture ``y_g(x) = sum_k pi'_k(x) o_kg``, ``pi'`` the persona mixture at the output
  temperature ``T_out``.
* Overlap zone: states in the aligned or misaligned basin, made mostly of that pair
  (``pi'_A + pi'_M >= 1/2``), whose aligned/misaligned output
  ``yhat_g = (pi'_A o_Ag + pi'_M o_Mg) / (pi'_A + pi'_M)`` is within ``epsilon`` of the 50/50 hybrid's output
  ``(o_Ag + o_Mg) / 2`` on every genre. So an aligned state and a misaligned state in the zone give outputs
  within ``2 epsilon`` of each other: the data cannot tell them apart.
* LLC: localised-posterior estimate for the self-KL loss
  ``L_x(w) = mean_g KL(Bern(y_g(x)) || Bern(y_g(w)))`` (zero at ``w = x``): ``llc(x) = n_beta * E_p[L_x(w)]``
  with ``p(w) ~ exp(-n_beta L_x(w) - gamma/2 |w-x|^2)``, the expectation by tensor-grid quadrature over
  ``w = x + q / sqrt(gamma)``, ``q`` in ``[-q_max, q_max]^2``.

Every scalar loop here is written in the order ``static/landscape.js`` uses, so the two agree to ~1e-12.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

PERSONAS = ("helpful assistant", "neutral informant", "sarcastic contrarian", "toxic manipulator")
GENRES = ("code", "advice", "chat")


@dataclass
class LandscapeParams:
    """Every number of the theory view. ``aligned`` / ``misaligned`` index into ``names``."""

    names: tuple = PERSONAS
    centers: tuple = ((-1.50, 0.20), (0.00, -1.70), (0.10, 1.75), (1.50, -0.10))
    curv: tuple = (0.80, 1.20, 1.20, 0.90)
    depth: tuple = (0.00, 0.30, 0.35, 0.10)
    temperature: float = 0.35
    aligned: int = 0
    misaligned: int = 3
    kappa_a: float = 0.6  # inoculation: aligned curvature a_A / (1 + kappa_a s)
    kappa_b: float = 0.35  # inoculation: aligned depth b_A - kappa_b s
    x0: tuple = (-1.50, 0.20)  # the model's unperturbed point
    # gradient flow
    step: float = 0.3
    r_stop: float = 0.12
    max_steps: int = 600
    min_steps: int = 200  # flow steps that locate the minima
    # output map
    genres: tuple = GENRES
    out: tuple = ((0.03, 0.02, 0.02), (0.06, 0.05, 0.05), (0.20, 0.35, 0.45), (0.92, 0.85, 0.80))
    out_temperature: float = 0.7
    epsilon: float = 0.20
    # LLC (localised posterior, self-KL loss)
    n_beta: float = 20.0
    gamma: float = 100.0
    q_max: float = 4.0
    q_n: int = 17
    # slider ranges and view window
    t_max: float = 3.5
    n_path: int = 141
    n_llc: int = 49
    bisect_iters: int = 40
    xlim: tuple = (-3.2, 3.2)
    ylim: tuple = (-2.5, 2.5)
    ranges: dict = field(
        default_factory=lambda: {
            "delta": [0.0, 3.5, 0.01, 0.6],
            "theta": [-180.0, 180.0, 1.0, -4.0],
            "s": [0.0, 1.0, 0.01, 0.0],
        }
    )

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


DEFAULT = LandscapeParams()


def wells(p: LandscapeParams, s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres (K,2), curvatures (K,), depths (K,) at inoculation strength ``s``."""
    c = np.asarray(p.centers, dtype=np.float64)
    a = np.asarray(p.curv, dtype=np.float64).copy()
    b = np.asarray(p.depth, dtype=np.float64).copy()
    a[p.aligned] = a[p.aligned] / (1.0 + p.kappa_a * s)
    b[p.aligned] = b[p.aligned] - p.kappa_b * s
    return c, a, b


def _energies(x, y, c, a, b):
    """E_k at points (x, y): list of K arrays."""
    return [
        a[k] * ((x - c[k, 0]) * (x - c[k, 0]) + (y - c[k, 1]) * (y - c[k, 1])) + b[k] for k in range(len(a))
    ]


def _mixture(x, y, c, a, b, temp):
    """Softmin weights pi_k (list of K arrays) and the minimum energy."""
    e = _energies(x, y, c, a, b)
    m = e[0]
    for k in range(1, len(e)):
        m = np.minimum(m, e[k])
    w = [np.exp(-(e[k] - m) / temp) for k in range(len(e))]
    z = w[0]
    for k in range(1, len(w)):
        z = z + w[k]
    return [w[k] / z for k in range(len(w))], m, z


def potential(x, y, p: LandscapeParams = DEFAULT, s: float = 0.0):
    """V(x, y) = -T log sum_k exp(-E_k / T)."""
    c, a, b = wells(p, s)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    _, m, z = _mixture(x, y, c, a, b, p.temperature)
    return m - p.temperature * np.log(z)


def gradient(x, y, p: LandscapeParams = DEFAULT, s: float = 0.0):
    c, a, b = wells(p, s)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return _grad(x, y, c, a, b, p.temperature)


def _grad(x, y, c, a, b, temp):
    pi, _, _ = _mixture(x, y, c, a, b, temp)
    gx = 0.0 * x
    gy = 0.0 * y
    for k in range(len(a)):
        gx = gx + pi[k] * (2.0 * a[k]) * (x - c[k, 0])
        gy = gy + pi[k] * (2.0 * a[k]) * (y - c[k, 1])
    return gx, gy


def minima(p: LandscapeParams = DEFAULT, s: float = 0.0) -> np.ndarray:
    """The K minima (K,2): gradient flow from each centre for ``min_steps`` steps."""
    c, a, b = wells(p, s)
    x = c[:, 0].copy()
    y = c[:, 1].copy()
    for _ in range(p.min_steps):
        gx, gy = _grad(x, y, c, a, b, p.temperature)
        x = x - p.step * gx
        y = y - p.step * gy
    return np.stack([x, y], axis=1)


def flow_basin(x, y, p: LandscapeParams = DEFAULT, s: float = 0.0, mins: np.ndarray | None = None):
    """Basin label (index of the persona minimum reached by gradient flow) for each point."""
    c, a, b = wells(p, s)
    if mins is None:
        mins = minima(p, s)
    x = np.array(x, dtype=np.float64, ndmin=1).ravel()
    y = np.array(y, dtype=np.float64, ndmin=1).ravel()
    shape = np.shape(x)
    label = np.full(shape, -1, dtype=np.int64)
    r2 = p.r_stop * p.r_stop
    active = np.arange(x.size)
    cx, cy = x.copy(), y.copy()
    for it in range(p.max_steps + 1):
        if active.size == 0:
            break
        px, py = cx[active], cy[active]
        done = np.zeros(active.size, dtype=bool)
        for j in range(len(mins)):
            d2 = (px - mins[j, 0]) * (px - mins[j, 0]) + (py - mins[j, 1]) * (py - mins[j, 1])
            hit = (~done) & (d2 < r2)
            label[active[hit]] = j
            done |= hit
        if it == p.max_steps:
            break
        active = active[~done]
        px, py = cx[active], cy[active]
        gx, gy = _grad(px, py, c, a, b, p.temperature)
        cx[active] = px - p.step * gx
        cy[active] = py - p.step * gy
    # undecided after max_steps (on a stable manifold): nearest minimum
    und = np.nonzero(label < 0)[0]
    for i in und:
        d2 = (cx[i] - mins[:, 0]) ** 2 + (cy[i] - mins[:, 1]) ** 2
        label[i] = int(np.argmin(d2))
    return label


def basin_grid(p: LandscapeParams = DEFAULT, s: float = 0.0, nx: int = 96, ny: int = 75):
    """Labels (ny, nx) at cell centres of the view window, plus the cell-centre coordinates."""
    xs = p.xlim[0] + (np.arange(nx) + 0.5) * ((p.xlim[1] - p.xlim[0]) / nx)
    ys = p.ylim[0] + (np.arange(ny) + 0.5) * ((p.ylim[1] - p.ylim[0]) / ny)
    gx, gy = np.meshgrid(xs, ys)
    lab = flow_basin(gx.ravel(), gy.ravel(), p, s).reshape(ny, nx)
    return lab, xs, ys


# ----------------------------------------------------------------------------------------------- perturbation
def point(delta: float, theta_deg: float, p: LandscapeParams = DEFAULT) -> tuple[float, float]:
    th = theta_deg * math.pi / 180.0
    return (p.x0[0] + delta * math.cos(th), p.x0[1] + delta * math.sin(th))


def path_ts(p: LandscapeParams = DEFAULT, n: int | None = None) -> np.ndarray:
    n = p.n_path if n is None else n
    return np.array([p.t_max * i / (n - 1) for i in range(n)], dtype=np.float64)


def _refine(pred, lo: float, hi: float, iters: int) -> float:
    """Bisection: pred(lo) != pred(hi); returns the midpoint of the final bracket."""
    vlo = pred(lo)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if pred(mid) == vlo:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _label_along(theta_deg, p, s, mins):
    th = theta_deg * math.pi / 180.0
    ux, uy = math.cos(th), math.sin(th)

    def lab(t):
        return int(flow_basin(p.x0[0] + t * ux, p.x0[1] + t * uy, p, s, mins)[0])

    return lab, ux, uy


def boundary(theta_deg: float, p: LandscapeParams = DEFAULT, s: float = 0.0) -> dict:
    """First exit of the unperturbed point's basin along the perturbation direction.

    Returns ``{"t": t* or None, "from": label at t=0, "to": label beyond t*}``.
    """
    mins = minima(p, s)
    ts = path_ts(p)
    th = theta_deg * math.pi / 180.0
    ux, uy = math.cos(th), math.sin(th)
    labs = flow_basin(p.x0[0] + ts * ux, p.x0[1] + ts * uy, p, s, mins)
    lab, _, _ = _label_along(theta_deg, p, s, mins)
    l0 = int(labs[0])
    for i in range(1, len(ts)):
        if labs[i] != l0:
            t = _refine(lambda t: lab(t) == l0, float(ts[i - 1]), float(ts[i]), p.bisect_iters)
            return {"t": t, "from": l0, "to": int(labs[i])}
    return {"t": None, "from": l0, "to": None}


# ----------------------------------------------------------------------------------------------- output map
def output(x, y, p: LandscapeParams = DEFAULT, s: float = 0.0):
    """y_g(x) = sum_k pi_k(x) o_kg: probability of a misaligned answer on genre g, array (G, *shape)."""
    c, a, b = wells(p, s)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    pi, _, _ = _mixture(x, y, c, a, b, p.out_temperature)
    res = []
    for g in range(len(p.genres)):
        acc = 0.0 * x
        for k in range(len(a)):
            acc = acc + pi[k] * p.out[k][g]
        res.append(acc)
    return np.asarray(res, dtype=np.float64)


def pair_output(x, y, p: LandscapeParams = DEFAULT, s: float = 0.0):
    """The aligned/misaligned channel of the output: ``(pi'_A o_A + pi'_M o_M) / (pi'_A + pi'_M)`` per genre,
    and ``pi'_A + pi'_M`` (how much of the state is that pair)."""
    c, a, b = wells(p, s)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    pi, _, _ = _mixture(x, y, c, a, b, p.out_temperature)
    pa, pm = pi[p.aligned], pi[p.misaligned]
    pair = pa + pm
    res = [(pa * p.out[p.aligned][g] + pm * p.out[p.misaligned][g]) / pair for g in range(len(p.genres))]
    return np.asarray(res, dtype=np.float64), pair


def output_gap(x, y, p: LandscapeParams = DEFAULT, s: float = 0.0):
    """max_g |yhat_g(x) - m_g|: distance of the aligned/misaligned channel from the 50/50 hybrid's output
    ``m_g = (o_Ag + o_Mg) / 2``."""
    yh, _ = pair_output(x, y, p, s)
    gap = None
    for g in range(len(p.genres)):
        mid = 0.5 * (p.out[p.aligned][g] + p.out[p.misaligned][g])
        d = np.abs(yh[g] - mid)
        gap = d if gap is None else np.maximum(gap, d)
    return gap


def in_overlap(x, y, p: LandscapeParams = DEFAULT, s: float = 0.0, labels=None):
    """Overlap zone: aligned- or misaligned-basin states, mostly that pair (``pi'_A + pi'_M >= 1/2``), whose
    aligned/misaligned output is within eps of the hybrid's; an aligned and a misaligned state in the zone
    give outputs within 2 eps of each other."""
    if labels is None:
        labels = flow_basin(x, y, p, s).reshape(np.shape(x))
    gap = output_gap(x, y, p, s)
    _, pair = pair_output(x, y, p, s)
    return ((labels == p.aligned) | (labels == p.misaligned)) & (pair >= 0.5) & (gap <= p.epsilon)


def overlap_along(theta_deg: float, p: LandscapeParams = DEFAULT, s: float = 0.0) -> dict:
    """Overlap-zone intervals along the perturbation path ``t in [0, t_max]`` and their total width."""
    mins = minima(p, s)
    ts = path_ts(p)
    th = theta_deg * math.pi / 180.0
    ux, uy = math.cos(th), math.sin(th)

    def member(t):
        px, py = p.x0[0] + t * ux, p.x0[1] + t * uy
        lab = int(flow_basin(px, py, p, s, mins)[0])
        return bool(in_overlap(np.float64(px), np.float64(py), p, s, labels=np.int64(lab)))

    flags = [member(float(t)) for t in ts]
    intervals = []
    start = 0.0 if flags[0] else None
    for i in range(1, len(ts)):
        if flags[i] != flags[i - 1]:
            t = _refine(member, float(ts[i - 1]), float(ts[i]), p.bisect_iters)
            if flags[i]:
                start = t
            else:
                intervals.append([start, t])
                start = None
    if start is not None:
        intervals.append([start, float(ts[-1])])
    width = 0.0
    for lo, hi in intervals:
        width += hi - lo
    return {"intervals": intervals, "width": width}


# ----------------------------------------------------------------------------------------------- LLC
def self_kl(x0: float, y0: float, wx, wy, p: LandscapeParams = DEFAULT, s: float = 0.0):
    """L_x(w) = mean_g KL(Bern(y_g(x)) || Bern(y_g(w))) for an array of w."""
    yx = output(np.float64(x0), np.float64(y0), p, s)
    yw = output(wx, wy, p, s)
    acc = 0.0 * np.asarray(wx, dtype=np.float64)
    for g in range(len(p.genres)):
        q = float(yx[g])
        acc = acc + (q * np.log(q / yw[g]) + (1.0 - q) * np.log((1.0 - q) / (1.0 - yw[g])))
    return acc / len(p.genres)


def _quad_nodes(p: LandscapeParams):
    qs = np.array([-p.q_max + 2.0 * p.q_max * i / (p.q_n - 1) for i in range(p.q_n)], dtype=np.float64)
    qx, qy = np.meshgrid(qs, qs)
    return qx.ravel(), qy.ravel()


def llc_at(x: float, y: float, p: LandscapeParams = DEFAULT, s: float = 0.0) -> float:
    """Localised-posterior LLC estimate at state (x, y) for the self-KL loss (quadrature, deterministic)."""
    qx, qy = _quad_nodes(p)
    sig = 1.0 / math.sqrt(p.gamma)
    wx = x + sig * qx
    wy = y + sig * qy
    loss = self_kl(x, y, wx, wy, p, s)
    logw = -p.n_beta * loss - 0.5 * (qx * qx + qy * qy)
    w = np.exp(logw)
    return float(p.n_beta * np.sum(w * loss) / np.sum(w))


def llc_laplace(x: float, y: float, p: LandscapeParams = DEFAULT, s: float = 0.0, h: float = 1e-5) -> float:
    """Gaussian (Laplace) approximation: ``sum_i 1/2 n_beta f_i / (n_beta f_i + gamma)``, with ``f_i`` the
    Fisher eigenvalues."""
    f = np.zeros((2, 2))
    yx = output(np.float64(x), np.float64(y), p, s)
    dx = (output(np.float64(x + h), np.float64(y), p, s) - output(np.float64(x - h), np.float64(y), p, s)) / (
        2 * h
    )
    dy = (output(np.float64(x), np.float64(y + h), p, s) - output(np.float64(x), np.float64(y - h), p, s)) / (
        2 * h
    )
    for g in range(len(p.genres)):
        v = np.array([dx[g], dy[g]])
        f += np.outer(v, v) / (yx[g] * (1 - yx[g]))
    f /= len(p.genres)
    ev = np.linalg.eigvalsh(f)
    return float(sum(0.5 * p.n_beta * e / (p.n_beta * e + p.gamma) for e in ev))


def llc_along(theta_deg: float, p: LandscapeParams = DEFAULT, s: float = 0.0) -> dict:
    """LLC at ``n_llc`` evenly spaced points of the path; ``argmax_t`` is the t of the largest value."""
    ts = path_ts(p, p.n_llc)
    th = theta_deg * math.pi / 180.0
    ux, uy = math.cos(th), math.sin(th)
    vals = [llc_at(p.x0[0] + float(t) * ux, p.x0[1] + float(t) * uy, p, s) for t in ts]
    i = int(np.argmax(vals))
    return {"t": ts.tolist(), "llc": vals, "argmax_t": float(ts[i]), "max": float(vals[i])}


def slice_potential(theta_deg: float, p: LandscapeParams = DEFAULT, s: float = 0.0) -> dict:
    """V and basin label at the ``n_path`` path points."""
    ts = path_ts(p)
    th = theta_deg * math.pi / 180.0
    xs = p.x0[0] + ts * math.cos(th)
    ys = p.x0[1] + ts * math.sin(th)
    return {
        "t": ts.tolist(),
        "V": potential(xs, ys, p, s).tolist(),
        "label": flow_basin(xs, ys, p, s).tolist(),
    }


def view_state(delta: float, theta_deg: float, s: float, p: LandscapeParams = DEFAULT) -> dict:
    """Everything the theory view shows for one slider setting (the browser tests compare against this)."""
    px, py = point(delta, theta_deg, p)
    mins = minima(p, s)
    lab = int(flow_basin(px, py, p, s, mins)[0])
    b = boundary(theta_deg, p, s)
    ov = overlap_along(theta_deg, p, s)
    ll = llc_along(theta_deg, p, s)
    return {
        "point": [px, py],
        "basin": lab,
        "boundary_t": b["t"],
        "boundary_to": b["to"],
        "overlap_width": ov["width"],
        "overlap_intervals": ov["intervals"],
        "llc_argmax_t": ll["argmax_t"],
        "llc_max": ll["max"],
        "minima": mins.tolist(),
    }
