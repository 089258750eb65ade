"""Analytic toy models with known learning coefficients, for validating :func:`estimate_llc`.

True coefficients (implemented from the published statements, unit-tested on special cases):

* regular model (linear regression in ``d`` dims): ``lambda = d / 2``;
* normal crossing ``K(w) = prod_i w_i^(2 k_i)`` at the origin: ``lambda = min_i 1 / (2 k_i)``, multiplicity =
  how many ``i`` attain the minimum;
* reduced-rank regression ``y = B A x`` (Aoyagi & Watanabe 2005, Main Theorem);
* deep linear networks ``y = W_L ... W_1 x`` (Aoyagi 2024, Theorem 1).

Every case is *realisable and noise-free*: the labels are produced by the true parameter ``w*`` itself, so
``L_n(w*) = 0`` is an exact global minimum of the empirical loss and the localised posterior is centred on a
true minimum (with noisy labels ``w*`` sits ``O(1/sqrt n)`` off the empirical minimum, which biases
``lambda_hat`` down by about ``d / (2 log n)``). The loss is ``(1/2) mean ||f(x; w) - y||^2``, the Gaussian
negative log-likelihood up to a constant, whose learning coefficient is that of the model.

For the singular cases ``w*`` is the most singular true parameter (the superfluous units have zero in- and
out-weights), where the local learning coefficient equals the global one given by the formulas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

# ---------------------------------------------------------------------------------------------------------
# True learning coefficients


def regular_learning_coefficient(d: int) -> float:
    """A regular model with ``d`` parameters: ``d / 2``."""
    return d / 2.0


def normal_crossing_learning_coefficient(ks) -> tuple[float, int]:
    """``K = prod w_i^(2 k_i)`` near the origin: ``(min_i 1/(2 k_i), multiplicity)``."""
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError("normal crossing exponents must be positive integers")
    lam = min(1.0 / (2 * k) for k in ks)
    mult = sum(1 for k in ks if math.isclose(1.0 / (2 * k), lam))
    return lam, mult


def rrr_learning_coefficient(M: int, N: int, H: int, r: int) -> tuple[float, int]:
    """Reduced-rank regression ``y = B A x`` (Aoyagi & Watanabe 2005).

    ``M`` input dimension, ``N`` output dimension, ``H`` inner dimension (A is H x M, B is N x H) and ``r``
    the rank of the true map (``0 <= r <= min(M, N, H)``). Returns ``(lambda, multiplicity)``.
    """
    if not 0 <= r <= min(M, N, H):
        raise ValueError(f"true rank r={r} must be in [0, min(M, N, H)]")
    if N + r <= M + H and M + r <= N + H and H + r <= M + N:
        s = 2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2
        if (M + H + N + r) % 2 == 0:
            return s / 8.0, 1
        return (s + 1) / 8.0, 2
    if M + H < N + r:
        return (H * M - H * r + N * r) / 2.0, 1
    if N + H < M + r:
        return (H * N - H * r + M * r) / 2.0, 1
    # M + N < H + r
    return M * N / 2.0, 1


def dln_learning_coefficient(widths, r: int) -> float:
    """Deep linear network ``y = W_L ... W_1 x`` with layer widths ``H_1 (input), ..., H_{L+1} (output)``.

    Aoyagi (2024), Theorem 1: with ``D_j = H_j - r`` there is a unique set ``S`` of ``l + 1`` layers with
    ``max_{S} D < min_{not S} D``, ``sum_S D >= l * max_S D`` and ``sum_S D < l * min_{not S} D``; then with
    ``s = sum_S D``, ``a = s - (ceil(s / l) - 1) * l``::

        lambda = (r (H_1 + H_{L+1}) - r^2) / 2 + a (l - a) / (4 l) - l (l - 1) / 4 * (s / l)^2
                 + (1/2) * sum_{i < j in S} D_i D_j
    """
    widths = [int(h) for h in widths]
    if len(widths) < 2:
        raise ValueError("a deep linear network needs at least two widths (input and output)")
    if not 0 <= r <= min(widths):
        raise ValueError(f"true rank r={r} must be in [0, min(widths)]")
    deltas = sorted(h - r for h in widths)
    m = len(deltas)
    chosen = None
    for k in range(2, m + 1):  # |S| = l + 1 >= 2 (l = 0 cannot satisfy sum_S D < 0 * min)
        ell = k - 1
        inside, s = deltas[:k], sum(deltas[:k])
        rest_min = deltas[k] if k < m else math.inf
        if max(inside) < rest_min and s >= ell * max(inside) and s < ell * rest_min:
            chosen = (inside, ell, s)
            break
    if chosen is None:  # pragma: no cover - the theorem guarantees existence
        raise ValueError(f"no bottleneck set found for widths={widths}, r={r}")
    inside, ell, s = chosen
    a = s - (math.ceil(s / ell) - 1) * ell
    pair = sum(inside[i] * inside[j] for i in range(len(inside)) for j in range(i + 1, len(inside)))
    base = (r * (widths[0] + widths[-1]) - r * r) / 2.0
    return base + a * (ell - a) / (4.0 * ell) - ell * (ell - 1) / 4.0 * (s / ell) ** 2 + pair / 2.0


# ---------------------------------------------------------------------------------------------------------
# Models


class NormalCrossing(nn.Module):
    """``f(x; w) = (prod_i w_i^k_i) * x`` with scalar ``x``; at ``w* = 0`` the loss is
    ``K ∝ prod w_i^(2 k_i)``."""

    def __init__(self, ks):
        super().__init__()
        self.ks = [int(k) for k in ks]
        self.w = nn.Parameter(torch.zeros(len(self.ks)))

    def forward(self, x):
        p = torch.ones((), dtype=self.w.dtype)
        for i, k in enumerate(self.ks):
            p = p * self.w[i] ** k
        return p * x


class DeepLinear(nn.Module):
    """``y = W_L ... W_1 x`` (no biases). Reduced-rank regression is the two-layer case."""

    def __init__(self, widths):
        super().__init__()
        self.widths = [int(h) for h in widths]
        self.layers = nn.ModuleList(
            nn.Linear(a, b, bias=False) for a, b in zip(self.widths[:-1], self.widths[1:])
        )

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def mse_loss(model, batch):
    """``(1/2) mean_i ||f(x_i) - y_i||^2``: the Gaussian negative log-likelihood up to a constant."""
    x, y = batch
    return 0.5 * ((model(x) - y) ** 2).sum(-1).mean()


@dataclass
class AnalyticCase:
    name: str
    model: nn.Module
    data: tuple
    n: int
    true_lambda: float
    multiplicity: int
    hyper: dict = field(default_factory=dict)
    loss_fn: object = mse_loss

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _singular_point(widths, r: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Weights whose product has rank ``r`` and whose superfluous units are dead (zero in and out)."""
    mats = []
    for a, b in zip(widths[:-1], widths[1:]):
        w = torch.zeros(b, a)
        if r > 0:
            w[:r, :r] = torch.randn(r, r, generator=gen) / math.sqrt(r) + torch.eye(r)
        mats.append(w)
    if r > 0:  # the first and last layers spread the rank-r signal over all inputs / outputs
        mats[0][:r, :] = torch.randn(r, widths[0], generator=gen) / math.sqrt(widths[0])
        mats[-1][:, :r] = torch.randn(widths[-1], r, generator=gen) / math.sqrt(r)
    return mats


def _xy(model, in_dim: int, n: int, gen: torch.Generator):
    x = torch.randn(n, in_dim, generator=gen)
    with torch.no_grad():
        y = model(x)
    return x, y


def regular_case(d: int = 4, n: int = 10_000, seed: int = 0, **hyper) -> AnalyticCase:
    gen = torch.Generator().manual_seed(seed)
    model = DeepLinear([d, 1])
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.randn(1, d, generator=gen))
    return AnalyticCase(
        f"regular(d={d})", model, _xy(model, d, n, gen), n, regular_learning_coefficient(d), 1, hyper
    )


def normal_crossing_case(ks=(1, 2), n: int = 10_000, seed: int = 0, **hyper) -> AnalyticCase:
    gen = torch.Generator().manual_seed(seed)
    model = NormalCrossing(ks)
    lam, mult = normal_crossing_learning_coefficient(ks)
    x = torch.randn(n, 1, generator=gen)
    return AnalyticCase(f"normal_crossing(k={tuple(ks)})", model, (x, torch.zeros(n, 1)), n, lam, mult, hyper)


def rrr_case(
    M: int = 4, N: int = 3, H: int = 2, r: int = 1, n: int = 10_000, seed: int = 0, **hyper
) -> AnalyticCase:
    gen = torch.Generator().manual_seed(seed)
    model = DeepLinear([M, H, N])
    with torch.no_grad():
        for layer, w in zip(model.layers, _singular_point([M, H, N], r, gen)):
            layer.weight.copy_(w)
    lam, mult = rrr_learning_coefficient(M, N, H, r)
    return AnalyticCase(
        f"reduced_rank(M={M},N={N},H={H},r={r})", model, _xy(model, M, n, gen), n, lam, mult, hyper
    )


def dln_case(widths=(3, 2, 2, 3), r: int = 1, n: int = 10_000, seed: int = 0, **hyper) -> AnalyticCase:
    gen = torch.Generator().manual_seed(seed)
    model = DeepLinear(widths)
    with torch.no_grad():
        for layer, w in zip(model.layers, _singular_point(list(widths), r, gen)):
            layer.weight.copy_(w)
    lam = dln_learning_coefficient(widths, r)
    return AnalyticCase(
        f"deep_linear(widths={tuple(widths)},r={r})", model, _xy(model, widths[0], n, gen), n, lam, 1, hyper
    )


# ---------------------------------------------------------------------------------------------------------
# Finite-n reference: what a perfect sampler of the same localised tempered posterior returns
#
# The estimator targets ``n_beta * E_p[L_n(w) - L_n(w*)]`` with ``p ∝ exp(-n_beta L_n - gamma/2 |w - w*|^2)``;
# at finite n (and gamma > 0) this differs from the asymptotic lambda (by about 1/log n for singular cases).
# Where it can be integrated exactly it is the right yardstick for the sampler.


def _quadrature_value(K_of_grid, dims: int, nbeta: float, gamma: float, grid: int) -> float:
    import numpy as np

    half = 8.0 / math.sqrt(gamma) if gamma > 0 else 8.0
    g = np.linspace(-half, half, grid)
    mesh = np.meshgrid(*([g] * dims), indexing="ij")
    K = K_of_grid(*mesh)
    logp = -nbeta * K - gamma / 2 * sum(m**2 for m in mesh)
    p = np.exp(logp - logp.max())
    return float(nbeta * (K * p).sum() / p.sum())


def finite_n_reference(
    case: AnalyticCase, nbeta: float | None = None, gamma: float = 1.0, grid: int = 4001
) -> dict:
    """``{"value", "method"}``: ``n_beta E_p[L_n - L_n(w*)]`` under the localised tempered posterior at this
    case's data (``nbeta`` default ``n / log n``), or ``value=None`` where no exact integration is available.

    Regular (one linear layer): the posterior is Gaussian with precision ``n_beta S + gamma I`` (``S`` the
    empirical second moment of x), so the value is ``(1/2) sum_i n_beta s_i / (n_beta s_i + gamma)`` over
    the eigenvalues ``s_i`` of ``S``: exact. Normal crossings in 1 or 2 variables: ``L_n = (1/2) m2 prod
    w_i^(2 k_i)`` with ``m2`` the data's mean x^2, integrated on a uniform grid of ``grid`` points per axis
    over ±8/sqrt(gamma) (the Gaussian tail beyond is < 1e-14). Reduced-rank and deep linear networks (14+
    parameters): none.
    """
    import numpy as np

    nb = float(case.n) / math.log(case.n) if nbeta is None else float(nbeta)
    m = case.model
    if isinstance(m, DeepLinear) and len(m.layers) == 1 and m.layers[0].weight.shape[0] == 1:
        x = case.data[0].double().numpy()
        s = np.linalg.eigvalsh(x.T @ x / len(x))
        return {
            "value": float(0.5 * np.sum(nb * s / (nb * s + gamma))),
            "method": "Gaussian posterior (exact)",
        }
    if isinstance(m, NormalCrossing) and len(m.ks) <= 2:
        m2 = float((case.data[0].double() ** 2).mean())
        ks = m.ks
        if len(ks) == 1:
            grid = max(grid, 20001)
            val = _quadrature_value(lambda a: 0.5 * m2 * a ** (2 * ks[0]), 1, nb, gamma, grid)
        else:
            val = _quadrature_value(
                lambda a, b: 0.5 * m2 * a ** (2 * ks[0]) * b ** (2 * ks[1]), 2, nb, gamma, grid
            )
        return {"value": val, "method": f"{len(ks)}-D quadrature, {grid} points per axis"}
    return {"value": None, "method": "none (no exact integration for this model)"}
