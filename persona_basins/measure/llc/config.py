"""The sampler's settings: one frozen, self-validating dataclass (the shape of PEFT's ``LoraConfig``).

Every caller builds a :class:`SamplerConfig` (the API, the CLI from its flags, the demo preset, calibration)
and the one validation is here: a bad value raises a one-line :class:`~persona_basins.errors.UserError`
naming the field, before any model is touched. ``dataclasses.replace(cfg, step_size=...)`` re-validates.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ...errors import UserError

EXECUTIONS = ("auto", "vmap", "loop")
PRECONDITIONERS = (None, "rmsprop")


def default_nbeta(n: int) -> float:
    """The default inverse temperature ``n / log n`` (the one place it is defined)."""
    if n is None or n < 2:
        raise ValueError(f"n (the dataset size) must be >= 2, got {n}")
    return float(n) / math.log(n)


def _is_int(v) -> bool:
    import numpy as np

    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _is_real(v) -> bool:
    import numpy as np

    return isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)


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

    step_size: float = 1e-4
    localization: float = 100.0
    nbeta: float | None = None
    num_chains: int = 4
    num_draws: int = 200
    num_burnin: int = 0
    batch_size: int | None = None
    shared_batches: bool = True
    precondition: str | None = None
    rmsprop_alpha: float = 0.99
    rmsprop_eps: float = 0.1
    seed: int = 0
    execution: str = "auto"
    mala: bool = True
    mala_every: int | None = None
    explode_threshold: float | None = None
    device: str | None = None
    workers: int | str = 1

    def __post_init__(self):
        def need(ok: bool, field: str, want: str):
            if not ok:
                raise UserError(f"SamplerConfig.{field} must be {want}, got {getattr(self, field)!r}")

        def real(field: str, lo: float, *, open_lo: bool, hi: float | None = None, optional: bool = False):
            v = getattr(self, field)
            if optional and v is None:
                return
            want = f"a finite number {'>' if open_lo else '>='} {lo:g}" + (f" and < {hi:g}" if hi else "")
            need(
                _is_real(v)
                and math.isfinite(float(v))
                and (float(v) > lo if open_lo else float(v) >= lo)
                and (hi is None or float(v) < hi),
                field,
                want,
            )
            object.__setattr__(self, field, float(v))

        def integer(field: str, lo: int, optional: bool = False):
            v = getattr(self, field)
            if optional and v is None:
                return
            need(_is_int(v) and v >= lo, field, f"an integer >= {lo}")
            object.__setattr__(self, field, int(v))

        real("step_size", 0.0, open_lo=True)
        real("localization", 0.0, open_lo=False)
        real("nbeta", 0.0, open_lo=True, optional=True)
        integer("num_chains", 1)
        integer("num_draws", 1)
        integer("num_burnin", 0)
        integer("batch_size", 1, optional=True)
        integer("seed", 0)
        integer("mala_every", 1, optional=True)
        if self.workers != "auto":
            integer("workers", 1)
        real("rmsprop_alpha", 0.0, open_lo=False, hi=1.0)
        real("rmsprop_eps", 0.0, open_lo=True)
        real("explode_threshold", 0.0, open_lo=True, optional=True)
        for f in ("shared_batches", "mala"):
            need(isinstance(getattr(self, f), bool), f, "True or False")
        if self.precondition == "none":
            object.__setattr__(self, "precondition", None)
        need(self.precondition in PRECONDITIONERS, "precondition", "None or 'rmsprop'")
        need(self.execution in EXECUTIONS, "execution", "'auto', 'vmap' or 'loop'")
        need(
            self.device is None or isinstance(self.device, str), "device", "None or a device name like 'cpu'"
        )

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
