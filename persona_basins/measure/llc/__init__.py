"""The local learning coefficient (LLC) by localised SGLD, batched over chains.

Modules by responsibility: :mod:`.config` (the frozen, self-validating :class:`SamplerConfig`),
:mod:`.selection` (which parameters move), :mod:`.problem` (minibatch partition, the loss as a function of
the moving parameters), :mod:`.sampler` (the SGLD kernel and :func:`estimate_llc`), :mod:`.diagnostics`
(accumulators and convergence statistics), :mod:`.losses`, :mod:`.paths` (weight paths, checkpoints),
:mod:`.stages` (stage boundaries with a significance test), :mod:`.calibration`, :mod:`.analytic` (models
with known learning coefficients).
See ``docs/LLC.md``.
"""

from .calibration import calibrate, localization_sensitivity
from .config import SamplerConfig, default_nbeta
from .diagnostics import GateConfig, convergence, ess, mcse, rhat
from .losses import causal_lm_loss_fn, self_kl_loss_fn
from .paths import (
    critical_points,
    crossing_interval,
    half_rise_step,
    jump_order_verdict,
    llc_along_path,
    llc_over_checkpoints,
    peak_at_boundary_verdict,
    refine_grid,
)
from .sampler import LLCDivergenceError, LLCResult, estimate_llc
from .selection import select_parameters
from .stages import stage_boundaries

__all__ = [
    "GateConfig",
    "LLCDivergenceError",
    "LLCResult",
    "SamplerConfig",
    "calibrate",
    "causal_lm_loss_fn",
    "critical_points",
    "crossing_interval",
    "convergence",
    "default_nbeta",
    "estimate_llc",
    "ess",
    "half_rise_step",
    "jump_order_verdict",
    "llc_along_path",
    "llc_over_checkpoints",
    "localization_sensitivity",
    "mcse",
    "peak_at_boundary_verdict",
    "refine_grid",
    "rhat",
    "select_parameters",
    "self_kl_loss_fn",
    "stage_boundaries",
]
