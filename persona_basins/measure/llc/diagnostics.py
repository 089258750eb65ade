"""Diagnostics of the SGLD chains: small accumulators fed by the sampler at each transition (devinterp's
``MalaAcceptanceRate`` callback shape, batched over chains) and convergence statistics of the draws."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...config import check, param

__all__ = ["DrawTrace", "MalaAcceptance", "GateConfig", "convergence", "rhat", "ess", "mcse"]


class DrawTrace:
    """One value per chain per SGLD step (``[steps, chains]``, on the sampler's device until read)."""

    def __init__(self, num_steps: int, num_chains: int, *, dtype, device):
        import torch

        self.values = torch.full((num_steps, num_chains), float("nan"), dtype=dtype, device=device)

    def update(self, t: int, value) -> None:
        self.values[t] = value

    def draws(self, burnin: int, scale: float = 1.0) -> np.ndarray:
        """The post-burn-in values as a ``chains x draws`` float64 array (times ``scale``)."""
        v = self.values[burnin:].T.double().cpu()
        return (v * scale).numpy() if scale != 1.0 else v.numpy()


class MalaAcceptance:
    """The Metropolis-adjusted acceptance probability each SGLD transition would have had (a diagnostic: the
    chains are never corrected). Computed from quantities the sampler already has (the potential
    ``U = nbeta (L_B(w) - L_B(w*)) + gamma/2 |w - w*|^2``, its gradient ``drift`` and the step's noise) on
    every ``every``-th transition; ``results(burnin)`` -> ``(mean, per-chain means)``."""

    def __init__(
        self,
        num_steps: int,
        num_chains: int,
        *,
        every: int,
        step_size: float,
        nbeta: float,
        localization: float,
        dtype,
        device,
    ):
        import torch

        self.every, self.eps, self.nbeta, self.gamma = (
            int(every),
            float(step_size),
            float(nbeta),
            float(localization),
        )
        self.acc = torch.full((num_steps, num_chains), float("nan"), dtype=dtype, device=device)
        self._U_prev = self._nz_sq = None
        self._rbuf = None

    def before_noise(self, t: int, *, theta, previous, drift, diff, dloss, precond) -> None:
        """At step ``t`` (state ``theta``, previous state ``previous``, drift = grad U at theta)."""
        import torch

        need_now = t % self.every == 0 and self._U_prev is not None
        self._need_next = (t + 1) % self.every == 0
        if not (need_now or self._need_next):
            return
        U = dloss * self.nbeta + (0.5 * self.gamma) * torch.linalg.vector_norm(diff, dim=1).square()
        if need_now:  # log q(w_prev | w) with the current drift; the forward term comes from the noise
            if self._rbuf is None:
                self._rbuf = torch.empty_like(theta)
            rbuf, eps = self._rbuf, self.eps
            torch.sub(previous, theta, out=rbuf)
            if precond is None:
                rbuf.add_(drift, alpha=0.5 * eps)
                log_rev = -torch.linalg.vector_norm(rbuf, dim=1).square() / (2 * eps)
            else:
                rbuf.addcmul_(precond, drift, value=0.5 * eps)
                log_rev = -rbuf.square_().div_(precond).sum(1) / (2 * eps)
            self.acc[t] = ((self._U_prev - U) + log_rev + 0.5 * self._nz_sq).clamp(max=0).exp()
        self._U_prev = U if self._need_next else None

    def after_noise(self, t: int, noise) -> None:
        import torch

        if self._need_next:
            self._nz_sq = torch.linalg.vector_norm(noise, dim=1).square()

    def results(self, burnin: int) -> tuple[float, list[float]]:
        return mala_summary(self.acc, burnin)


def mala_summary(acc, burnin: int) -> tuple[float, list[float]]:
    """``(mean, per-chain means)`` of a ``[steps, chains]`` acceptance record (NaN where not computed)."""
    import torch

    acc = acc[max(burnin, 1) :]
    acc = acc.double().cpu().numpy() if isinstance(acc, torch.Tensor) else np.asarray(acc, dtype=np.float64)
    if not np.isfinite(acc).any():
        return float("nan"), [float("nan")] * acc.shape[1]
    per = [float(np.nanmean(col)) if np.isfinite(col).any() else float("nan") for col in acc.T]
    return float(np.nanmean(acc)), per


# ---------------------------------------------------------------------------------------------------------
# Convergence statistics (ArviZ: rank-normalised split R-hat, bulk/tail ESS and MCSE, Vehtari et al. 2021)
#
# ArviZ costs about 1.5 s to import on this 2-core machine (xarray, pandas); it is imported on the first
# estimate of a process, which takes longer than that on every model this package measures.


def _az():
    import logging

    import arviz as az

    logging.getLogger("arviz").setLevel(logging.ERROR)  # its shape warnings for 1-chain input: handled here
    return az


def _as_chains(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.shape[0] == 1 and x.shape[1] >= 8:  # one chain: split halves (what split-R-hat does anyway)
        h = x.shape[1] // 2
        x = np.stack([x[0, :h], x[0, -h:]])
    return x


def rhat(chains) -> float:
    """Rank-normalised split R-hat of a chains x draws array (ArviZ); NaN when too short."""
    x = _as_chains(chains)
    if x.shape[1] < 4 or not np.isfinite(x).all():
        return float("nan")
    return float(_az().rhat(x, method="rank"))


def ess(chains, method: str = "bulk") -> float:
    """Effective sample size (ArviZ; ``bulk`` or ``tail``) over all chains of a chains x draws array."""
    x = _as_chains(chains)
    if x.shape[1] < 4 or not np.isfinite(x).all():
        return float("nan")
    return float(_az().ess(x, method=method))


def mcse(chains) -> float:
    """Monte Carlo standard error of the mean of a chains x draws array (ArviZ, from the ESS)."""
    x = _as_chains(chains)
    if x.shape[1] < 4 or not np.isfinite(x).all():
        return float("nan")
    return float(_az().mcse(x, method="mean"))


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the equilibrium gates, fixed before any outcome (defaults from Vehtari et al. 2021:
    R-hat <= 1.01 and bulk/tail ESS >= 400; the stationarity tests reject at |z| > 3)."""

    rhat_max: float = param(1.01, ge=1, help="largest split R-hat that passes")
    ess_min: float = param(400.0, ge=0, help="smallest bulk and tail ESS that pass")
    stationarity_z: float = param(3.0, ge=0, help="largest |z| of the drift tests that passes")
    mala_min: float = param(0.5, ge=0, help="smallest MALA acceptance rate that passes")

    def __post_init__(self):
        check(self)


def _effective_trace(x: np.ndarray, correlated_chains: bool) -> np.ndarray:
    """The trace the ESS and MCSE are read from. Chains that share minibatches are correlated, so a
    multi-chain ESS would count them as independent: then it is the chain-averaged trace (its autocorrelation
    carries both the within-chain and the shared-batch dependence); independent chains keep all of them."""
    return x.mean(0) if correlated_chains and x.shape[0] > 1 else x


def _mean_and_mcse(x: np.ndarray, correlated_chains: bool) -> tuple[float, float]:
    return float(x.mean()), mcse(_effective_trace(x, correlated_chains))


def halves_z(x: np.ndarray, correlated_chains: bool) -> float:
    """``(mean of the last half - mean of the first half) / sqrt(MCSE_1^2 + MCSE_2^2)`` of a chains x draws
    trace: a drift test (a stationary trace gives |z| of order 1)."""
    h = x.shape[1] // 2
    if h < 4:
        return float("nan")
    m1, s1 = _mean_and_mcse(x[:, :h], correlated_chains)
    m2, s2 = _mean_and_mcse(x[:, -h:], correlated_chains)
    den = math.hypot(s1, s2)
    if not math.isfinite(den):
        return float("nan")
    if den == 0:
        return 0.0 if m1 == m2 else math.copysign(math.inf, m2 - m1)
    return (m2 - m1) / den


def convergence(
    llc_trace,
    distance_trace=None,
    *,
    correlated_chains: bool,
    mala_acceptance: float = float("nan"),
    gates: GateConfig | None = None,
) -> dict:
    """The equilibrium gates of one estimate. ``llc_trace``: chains x draws of ``n_beta (L_B(w) - L_B(w*))``;
    ``distance_trace``: chains x draws of ``|w - w*|``. Returns R-hat, bulk/tail ESS, the mean's MCSE, the
    drift statistics of both traces (:func:`halves_z`), ``converged`` and the ``reasons`` it is not.
    ``correlated_chains`` (shared minibatches): the bulk/tail ESS of the gate and the MCSE are those of the
    chain-averaged trace, else ArviZ's multi-chain ones (``ess_method`` says which)."""
    g = gates or GateConfig()
    x = np.asarray(llc_trace, dtype=np.float64)
    effective = _effective_trace(x, correlated_chains)
    out = {"rhat": rhat(x), "ess_bulk": ess(effective, "bulk"), "ess_tail": ess(effective, "tail")}
    mean, se = float(x.mean()), mcse(effective)
    out["mcse"] = se
    method = (
        "chain-averaged trace (chains share minibatches)"
        if effective.ndim == 1
        else "multi-chain ESS (ArviZ)"
    )
    out["mcse_method"] = method
    out["ess_method"] = method  # the gate's ESS and the MCSE come from the same trace
    out["stationarity_z"] = halves_z(x, correlated_chains)
    out["distance_z"] = (
        halves_z(np.asarray(distance_trace, dtype=np.float64), correlated_chains)
        if distance_trace is not None
        else float("nan")
    )
    reasons = []
    if not np.isfinite(x).all():
        reasons.append("non-finite draws")
    if not math.isfinite(out["rhat"]):
        reasons.append(f"R-hat not computable ({x.shape[1]} draws per chain)")
    elif out["rhat"] > g.rhat_max:
        reasons.append(f"R-hat {out['rhat']:.4f} > {g.rhat_max:g}")
    for k in ("ess_bulk", "ess_tail"):
        v = out[k]
        if not math.isfinite(v) or v < g.ess_min:
            reasons.append(f"{k.replace('_', ' ').replace('ess', 'ESS')} {v:.0f} < {g.ess_min:g}")
    z = out["stationarity_z"]
    if not math.isfinite(z) or abs(z) > g.stationarity_z:
        reasons.append(f"λ trace drifts: last-half mean differs from first-half by {z:.1f} MCSE")
    dz = out["distance_z"]
    if distance_trace is not None and (not math.isfinite(dz) or abs(dz) > g.stationarity_z):
        reasons.append(f"distance from w* drifts: last half differs from first half by {dz:.1f} MCSE")
    if math.isfinite(mala_acceptance) and mala_acceptance < g.mala_min:
        reasons.append(f"MALA acceptance {mala_acceptance:.2f} < {g.mala_min:g} (step size too large)")
    if mean <= 0:  # the withheld value itself is not written, only that it is not positive
        reasons.append("λ̂ <= 0 (w* is not a local minimum of this loss, or the step is too large)")
    out["converged"] = not reasons
    out["reasons"] = reasons
    return out
