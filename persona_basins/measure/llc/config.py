"""The sampler's settings: one frozen, self-validating dataclass (the shape of PEFT's ``LoraConfig``).

Every caller builds a :class:`SamplerConfig` (the API, the CLI from its flags, the demo preset, calibration)
and the one validation is here (:func:`persona_basins.config.check` of the fields' constraints): a bad value
raises a one-line :class:`~persona_basins.errors.ConfigError` naming ``SamplerConfig.field``, before any
model is touched. ``dataclasses.replace(cfg, step_size=...)`` re-validates.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ...config import check, param
from ...errors import UserError

EXECUTIONS = ("auto", "vmap", "loop")


def default_nbeta(n: int) -> float:
    """The default inverse temperature ``n / log n`` (the one place it is defined)."""
    if n is None or n < 2:
        raise ValueError(f"n (the dataset size) must be >= 2, got {n}")
    return float(n) / math.log(n)


@dataclass(frozen=True)
class SamplerConfig:
    """Localised SGLD settings for :func:`~persona_basins.measure.llc.estimate_llc`.

    ``nbeta``: inverse temperature n*beta (``None``: ``n / log n`` for the ``n`` of the call).
    ``localization``: gamma of the Gaussian pull ``(gamma / 2) |w - w*|^2``. ``batch_size``: examples per SGLD
    minibatch (``None``: the whole data). ``shared_batches``: every chain sees the same minibatch at a step
    (fewer ``L_B(w*)`` forwards; the chains are then not independent, see ``docs/LLC.md``).
    ``precondition``: ``None`` or ``"rmsprop"``. ``execution``: how the chains' gradients are computed —
    ``"vmap"`` (one batched forward), ``"loop"`` (one forward per chain) or ``"auto"`` (time both once).
    ``mala_every``: MALA acceptance on every k-th transition (``None``: 1 for small models, else 10).
    ``explode_threshold``: the loss rise above ``L(w*)`` that counts as divergence (``None``: ``max(20,
    10 |L(w*)|)``). ``device``: where the chains run (``None``: the model's device).
    ``workers``: CPU processes the chains are split over (1: in this process; ``"auto"``: measured, see
    ``docs/LLC.md``). The numbers do not depend on it: each chain's noise has its own seed.
    """

    step_size: float = param(1e-4, gt=0, help="SGLD step size epsilon")
    localization: float = param(100.0, ge=0, help="gamma of the pull (gamma / 2) |w - w*|^2 towards w*")
    nbeta: float | None = param(None, gt=0, help="inverse temperature n*beta (None: n / log n)")
    num_chains: int = param(4, ge=1, help="SGLD chains")
    num_draws: int = param(200, ge=1, help="draws per chain")
    num_burnin: int = param(0, ge=0, help="burn-in steps per chain")
    batch_size: int | None = param(None, ge=1, help="examples per SGLD minibatch (None: the whole data)")
    shared_batches: bool = param(True, help="every chain sees the same minibatch at a step")
    precondition: str | None = param(None, choices=("rmsprop",), help="gradient preconditioner of SGLD")
    rmsprop_alpha: float = param(0.99, ge=0, lt=1, help="RMSprop decay of the squared-gradient average")
    rmsprop_eps: float = param(0.1, gt=0, help="RMSprop epsilon")
    seed: int = param(0, ge=0, help="seed of the chains' noise and minibatches")
    execution: str = param("auto", choices=EXECUTIONS, help="how the chains' gradients are computed")
    mala: bool = param(True, help="report the MALA acceptance rate")
    mala_every: int | None = param(None, ge=1, help="MALA acceptance on every k-th transition (None: auto)")
    explode_threshold: float | None = param(
        None, gt=0, help="the loss rise above L(w*) that counts as divergence (None: max(20, 10 |L(w*)|))"
    )
    device: str | None = param(None, help="where the chains run (None: the model's device)")
    workers: int | str = param(1, ge=1, choices=("auto",), help="CPU processes the chains are split over")

    def __post_init__(self):
        if self.precondition == "none":  # the command line's spelling of None
            object.__setattr__(self, "precondition", None)
        check(self)

    # --- conveniences ---------------------------------------------------------------------------------------
    def replace(self, **changes) -> SamplerConfig:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamplerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(d) - names)
        if extra:
            raise UserError(f"unknown SamplerConfig field(s): {', '.join(extra)}")
        return cls(**d)

    def resolved_nbeta(self, n: int) -> float:
        return default_nbeta(n) if self.nbeta is None else float(self.nbeta)


# Old keyword name -> field (estimate_llc's keyword arguments before SamplerConfig).
LEGACY_KEYWORDS = {"path": "execution"}


def config_from_kwargs(config: SamplerConfig | None, kwargs: dict) -> SamplerConfig:
    """``config`` updated by sampler keyword arguments (the pre-SamplerConfig call style stays valid)."""
    names = {f.name for f in dataclasses.fields(SamplerConfig)}
    changes = {}
    for k, v in kwargs.items():
        k2 = LEGACY_KEYWORDS.get(k, k)
        if k2 not in names:
            raise TypeError(f"unexpected keyword argument {k!r}")
        changes[k2] = v
    base = config if config is not None else SamplerConfig()
    if not isinstance(base, SamplerConfig):
        raise UserError(f"config must be a SamplerConfig, got {type(base).__name__}")
    return dataclasses.replace(base, **changes) if changes else base
