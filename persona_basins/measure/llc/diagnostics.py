"""Diagnostics of the SGLD chains: small accumulators fed by the sampler at each transition (devinterp's
``MalaAcceptanceRate`` callback shape, batched over chains) and convergence statistics of the draws."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["DrawTrace", "MalaAcceptance", "rhat", "ess"]


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

    def __init__(self, num_steps: int, num_chains: int, *, every: int, step_size: float, nbeta: float,
                 localization: float, dtype, device):
        import torch

        self.every, self.eps, self.nbeta, self.gamma = int(every), float(step_size), float(nbeta), float(localization)
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
        acc = self.acc[max(burnin, 1):].double().cpu().numpy()
        if not np.isfinite(acc).any():
            return float("nan"), [float("nan")] * acc.shape[1]
        per = [float(np.nanmean(col)) if np.isfinite(col).any() else float("nan") for col in acc.T]
        return float(np.nanmean(acc)), per



def rhat(chains) -> float:
    """Split R-hat (Gelman et al.; Vehtari et al. 2021 without rank-normalisation) of a chains x draws array."""
    x = np.asarray(chains, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 4:
        return float("nan")
    h = x.shape[1] // 2
    s = np.concatenate([x[:, :h], x[:, -h:]], axis=0)
    m, n = s.shape
    means, vars_ = s.mean(1), s.var(1, ddof=1)
    W, B = vars_.mean(), n * means.var(ddof=1)
    if W <= 0:
        return float("nan")
    return float(math.sqrt(((n - 1) / n * W + B / n) / W))


def ess(chains) -> float:
    """Effective sample size over all chains (multi-chain autocorrelation, Geyer's initial positive sequence)."""
    x = np.asarray(chains, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 4:
        return float("nan")
    m, n = x.shape
    xc = x - x.mean(1, keepdims=True)
    f = np.fft.rfft(xc, n=2 * n, axis=1)
    acov = np.fft.irfft(f * np.conj(f), axis=1)[:, :n] / n
    W = (acov[:, 0] * n / (n - 1)).mean()
    if W <= 0:
        return float("nan")
    var_plus = (n - 1) / n * W + (x.mean(1).var(ddof=1) if m > 1 else 0.0)
    rho = 1.0 - (W - acov.mean(0)) / var_plus
    rho[0] = 1.0
    total, t = 0.0, 0
    while t + 1 < n:
        pair = rho[t] + rho[t + 1]
        if pair < 0:
            break
        total += pair
        t += 2
    tau = max(-1.0 + 2.0 * total, 1.0 / math.log10(max(m * n, 10)))
    return float(m * n / tau)


