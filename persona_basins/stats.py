"""Summary statistics shared by every measurement: a mean over seeds with a 95% interval, as one type.

The interval methods (one home; ``docs/STUDY.md`` says which reported number uses which, and
``tests/test_coverage.py`` measures that each covers at 3-10 seeds, bimodal outcomes included):

- :func:`mean_interval`: Student t, for unbounded quantities whose seeds are not split into outcomes (a loss,
  an LLC, a projection within one outcome);
- :func:`rate_interval`: for bounded quantities (a rate, a share): Anderson's distribution-free bound (the
  mean under the Kolmogorov-Smirnov band of the empirical distribution, in ``[lo, hi]``), which covers
  whatever the shape, two modes included, where the percentile bootstrap over five bimodal seeds covered
  63-66%; with no finite range, Student t clipped to the range;
- :func:`share_interval`: a share of seeds ``k / n`` (e.g. the broad ones) with the exact Clopper-Pearson
  interval; :func:`outcome_summary` adds the per-seed values and the means conditional on the outcome
  (:func:`clipped_mean_interval`: Student t clipped to the range, for one outcome's unimodal seeds);
- :func:`bootstrap_interval`: the seeded percentile bootstrap, for a mean over many units (questions), never
  over a handful of seeds.

All return an :class:`Interval`. One seed gives no interval (``low = high = None``, with the reason), never
a zero-width one; a seed whose value is undefined (NaN, inf, None) makes the whole summary undefined
(``value = None``, with the reason). :meth:`Interval.to_dict` gives the shape every ``metrics.json`` /
``study.json`` stores, and :func:`format_interval` the one way it is written as text.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

STUDENT_T = "Student t over seeds (95%)"
PERCENTILE_BOOTSTRAP = "percentile bootstrap (95%)"
ANDERSON = "Anderson bound: mean under the Kolmogorov-Smirnov band, distribution-free in range (95%)"
STUDENT_T_CLIPPED = "Student t over seeds, clipped to the range (95%)"
CLOPPER_PEARSON = "Clopper-Pearson exact binomial (95%)"
CONFIDENCE = 0.95
ONE_SEED = "one seed: no interval"
UNDEFINED = "a seed's value is undefined"
DETERMINISTIC = "deterministic: the same value for every seed"


@dataclass(frozen=True)
class Interval:
    """A mean over seeds with its 95% interval.

    ``value`` is None when the quantity is undefined for a seed; ``low``/``high`` are None when there is no
    interval (one seed, an undefined value); ``reason`` says why. ``per_seed`` holds NaN for an undefined
    seed.
    With a ``threshold``, ``k_above`` counts the seeds at or above it ("k of n seeds").
    """

    value: float | None
    low: float | None
    high: float | None
    method: str
    n: int
    per_seed: tuple[float, ...]
    reason: str | None = None
    threshold: float | None = None
    k_above: int | None = None

    def to_dict(self) -> dict:
        """The stored shape: ``{mean, ci_low, ci_high, n, per_seed, method}`` (+ ``reason``, ``threshold``,
        ``k_above`` when set); an undefined per-seed value is written as null."""
        out = {
            "mean": self.value,
            "ci_low": self.low,
            "ci_high": self.high,
            "n": self.n,
            "per_seed": [v if math.isfinite(v) else None for v in self.per_seed],
            "method": self.method,
        }
        if self.reason is not None:
            out["reason"] = self.reason
        if self.threshold is not None:
            out["threshold"] = self.threshold
            out["k_above"] = self.k_above
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> Interval:
        """The inverse of :meth:`to_dict` (extra keys are ignored; a null per-seed value reads back as NaN; a
        file written before intervals named their method reads back with ``method = ""``)."""
        return cls(
            value=data["mean"],
            low=data["ci_low"],
            high=data["ci_high"],
            method=data.get("method", ""),
            n=int(data["n"]),
            per_seed=tuple(math.nan if v is None else float(v) for v in data["per_seed"]),
            reason=data.get("reason"),
            threshold=data.get("threshold"),
            k_above=data.get("k_above"),
        )


def _as_array(values: Sequence[float | None], what: str) -> np.ndarray:
    sample = np.asarray([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    if sample.size == 0:
        raise ValueError(f"{what} needs at least one value")
    return sample


def _per_seed(sample: np.ndarray) -> tuple[float, ...]:
    return tuple(float(seed_value) for seed_value in sample)


def _without_interval(sample: np.ndarray, method: str, reason: str, value: float | None) -> Interval:
    return Interval(value, None, None, method, int(sample.size), _per_seed(sample), reason)


def mean_interval(
    values: Sequence[float | None], *, undefined: str = UNDEFINED, exact_if_equal: bool = False
) -> Interval:
    """Mean and two-sided 95% Student-t interval over independent seeds.

    ``undefined``: the reason stored when a seed's value is NaN, inf or None (the mean is then None).
    ``exact_if_equal``: a quantity that does not depend on the seed (e.g. the base model read at t = 0 for
    every adapter) gets no interval when every seed agrees, with the reason :data:`DETERMINISTIC`.
    """
    sample = _as_array(values, "mean_interval")
    if not np.all(np.isfinite(sample)):
        return _without_interval(sample, STUDENT_T, undefined, None)
    mean = float(sample.mean())
    if sample.size == 1:
        return _without_interval(sample, STUDENT_T, ONE_SEED, mean)
    if exact_if_equal and np.all(sample == sample[0]):
        return _without_interval(sample, STUDENT_T, DETERMINISTIC, float(sample[0]))
    sem = float(sample.std(ddof=1) / math.sqrt(sample.size))
    half = float(_st.t.ppf(0.975, sample.size - 1) * sem)
    return Interval(mean, mean - half, mean + half, STUDENT_T, int(sample.size), _per_seed(sample))


@functools.lru_cache(maxsize=256)
def _ks_critical_value(n: int) -> float:
    """The exact two-sided 95% Kolmogorov-Smirnov critical value for ``n`` draws."""
    return float(_st.kstwo.ppf(CONFIDENCE, n))


def anderson_bounds(sample: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """Anderson's (1969) 95% interval of the mean of a quantity known to lie in ``[lo, hi]``.

    The lower bound is the mean of the distribution at the top of the two-sided Kolmogorov-Smirnov band
    around the empirical distribution (``F_n + D``, ``D`` the exact 95% critical value for ``n`` draws), the
    upper bound the mean at its bottom: every distribution inside the band has its mean in between, so the
    interval covers at least 95% of the time whatever the distribution's shape. Vectorised over the last axis
    (``sample[..., n]``)."""
    sample = np.asarray(sample, dtype=np.float64)
    n = sample.shape[-1]
    band = _ks_critical_value(n)
    # the share of mass the band may move to the far end, on each gap between order statistics
    kept = np.clip(1.0 - (np.arange(n) / n + band), 0.0, 1.0)

    def lower(values: np.ndarray, start: float) -> np.ndarray:
        ordered = np.sort(values, axis=-1)
        edges = np.concatenate([np.full((*ordered.shape[:-1], 1), start), ordered], axis=-1)
        return start + (np.diff(edges, axis=-1) * kept).sum(-1)

    low = lower(sample - lo, 0.0) + lo
    high = hi - lower(hi - sample, 0.0)
    return low, high


def rate_interval(
    values: Sequence[float | None],
    *,
    threshold: float | None = None,
    lo: float = 0.0,
    hi: float = 1.0,
    undefined: str = UNDEFINED,
    exact_if_equal: bool = False,
) -> Interval:
    """Mean of a bounded quantity (a rate, a share) over seeds with a 95% interval inside ``[lo, hi]``.

    With a finite range the interval is Anderson's distribution-free bound (:func:`anderson_bounds`): it
    covers also for five seeds split between two outcomes (a broad and a narrow fine-tune), and every seed
    equal gives an interval as wide as that many seeds allow, not a zero-width one (unless ``exact_if_equal``:
    the value, no interval, :data:`DETERMINISTIC`). With an infinite bound (a quantity known only to be
    >= 0), Student t clipped to the range. ``threshold``: also count the seeds at or above it (``k_above``;
    :func:`outcome_summary` gives its exact interval). ``undefined``: as in :func:`mean_interval`. A value
    outside ``[lo, hi]`` is a ValueError.
    """
    bounded = math.isfinite(lo) and math.isfinite(hi)
    method = ANDERSON if bounded else STUDENT_T_CLIPPED
    sample = _as_array(values, "rate_interval")
    if not np.all(np.isfinite(sample)):
        return _without_interval(sample, method, undefined, None)
    if np.any(sample < lo - 1e-6) or np.any(sample > hi + 1e-6):
        raise ValueError(f"rate_interval: values outside [{lo:g}, {hi:g}]")
    sample = np.clip(sample, lo, hi)  # float rounding of exact masses (1 + 1e-9) is not a value out of range
    mean = float(sample.mean())
    low = high = reason = None
    if sample.size == 1:
        reason = ONE_SEED
    elif exact_if_equal and np.all(sample == sample[0]):
        mean, reason = float(sample[0]), DETERMINISTIC
    elif bounded:
        low, high = (float(bound) for bound in anderson_bounds(sample, lo, hi))
    else:
        return clipped_mean_interval(sample, lo=lo, hi=hi, threshold=threshold)
    k_above = None if threshold is None else int(np.sum(sample >= threshold))
    return Interval(
        mean,
        low,
        high,
        method,
        int(sample.size),
        _per_seed(sample),
        reason,
        None if threshold is None else float(threshold),
        k_above,
    )


def seeds_to_decide(level: float, *, lo: float = 0.0, hi: float = 1.0, n_max: int = 1000) -> int:
    """The fewest seeds at which :func:`rate_interval` can put a mean on either side of ``level``: seeds that
    all sit at ``hi`` give an interval at or above it, seeds all at ``lo`` one below it. Fewer seeds cannot
    decide a "rate >= level" question at 95%, whatever they show."""
    for n in range(2, n_max + 1):
        top, bottom = rate_interval([hi] * n, lo=lo, hi=hi), rate_interval([lo] * n, lo=lo, hi=hi)
        if top.low >= level and bottom.high < level:
            return n
    raise ValueError(f"seeds_to_decide: no seed count up to {n_max} decides level {level:g}")


def clipped_mean_interval(
    values: Sequence[float], *, lo: float = 0.0, hi: float = 1.0, threshold: float | None = None
) -> Interval:
    """Student-t mean over seeds with the interval clipped to ``[lo, hi]``: for a bounded quantity whose seeds
    share one outcome (unimodal; e.g. the broad seeds' rates), and for a quantity known only to be >= 0.
    Covers for such shapes (``tests/test_coverage.py``), not for two outcomes mixed (use
    :func:`rate_interval`)."""
    student = mean_interval(values)
    sample = np.asarray(student.per_seed)
    low = high = None
    if student.low is not None:
        low, high = float(np.clip(student.low, lo, hi)), float(np.clip(student.high, lo, hi))
    k_above = None if threshold is None else int(np.sum(sample >= threshold))
    return Interval(
        student.value,
        low,
        high,
        STUDENT_T_CLIPPED,
        student.n,
        student.per_seed,
        student.reason,
        None if threshold is None else float(threshold),
        k_above,
    )


def share_interval(k: int, n: int) -> Interval:
    """The share ``k / n`` of seeds with some outcome (e.g. broad misalignment) and its exact 95%
    Clopper-Pearson interval; ``per_seed`` holds the outcome per seed as 1 / 0 in no particular order."""
    if not 0 <= k <= n or n < 1:
        raise ValueError(f"share_interval needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    ci = _st.binomtest(k, n).proportion_ci(confidence_level=CONFIDENCE, method="exact")
    outcomes = tuple([1.0] * k + [0.0] * (n - k))
    return Interval(k / n, float(ci.low), float(ci.high), CLOPPER_PEARSON, n, outcomes)


def share_seeds_to_decide(level: float, *, n_max: int = 1000) -> int:
    """The fewest seeds at which :func:`share_interval` can put a share on either side of ``level``: every
    seed with the outcome gives a lower bound at or above it, none an upper bound below it (6 at 1/2). Fewer
    seeds cannot decide a "share >= level" question at 95%, whatever they show."""
    for n in range(1, n_max + 1):
        if share_interval(n, n).low >= level and share_interval(0, n).high < level:
            return n
    raise ValueError(f"share_seeds_to_decide: no seed count up to {n_max} decides level {level:g}")


def means_by_outcome(
    values: Sequence[float], broad: Sequence[bool], *, lo: float = 0.0, hi: float = 1.0
) -> dict:
    """A quantity's mean over the seeds of each outcome, given per seed whether it was broad:
    ``{broad, narrow}`` (:func:`clipped_mean_interval`, one outcome's seeds being unimodal; None for an
    outcome no seed had), ``k_broad`` and ``n``."""
    sample = [float(v) for v in values]
    if len(sample) != len(broad):
        raise ValueError(f"means_by_outcome: {len(sample)} values but {len(broad)} outcomes")
    groups = {
        name: [v for v, is_broad in zip(sample, broad) if bool(is_broad) == want]
        for name, want in (("broad", True), ("narrow", False))
    }
    return {
        **{
            name: clipped_mean_interval(group, lo=lo, hi=hi).to_dict() if group else None
            for name, group in groups.items()
        },
        "k_broad": len(groups["broad"]),
        "n": len(sample),
    }


def outcome_summary(values: Sequence[float], threshold: float, *, lo: float = 0.0, hi: float = 1.0) -> dict:
    """Seeds split by an outcome: ``k_above`` of ``n`` at or above ``threshold`` with the exact interval of
    that share (:func:`share_interval`), the per-seed values, and the mean of each outcome's seeds
    (``mean_above`` / ``mean_below``: :func:`means_by_outcome`; None for an outcome no seed had).

    For a bimodal quantity (fine-tunes that generalise broadly or stay narrow) the share and the conditional
    means say what the data hold; one mean over both outcomes describes neither."""
    sample = [float(v) for v in values]
    above = [v >= threshold for v in sample]
    means = means_by_outcome(sample, above, lo=lo, hi=hi)
    return {
        "threshold": float(threshold),
        "k_above": means["k_broad"],
        "n": len(sample),
        "share_above": share_interval(means["k_broad"], len(sample)).to_dict(),
        "per_seed": sample,
        "above": above,
        "mean_above": means["broad"],
        "mean_below": means["narrow"],
    }


def bootstrap_interval(
    values: Sequence[float], *, lo: float = 0.0, hi: float = 1.0, seed: int = 0, n_resamples: int = 2000
) -> Interval:
    """Mean over many units (questions of a chat model, not seeds) with the seeded percentile-bootstrap 95%
    interval, inside ``[lo, hi]``. Over a handful of seeds it undercovers (``tests/test_coverage.py``): use
    :func:`rate_interval` there."""
    sample = np.clip(_as_array(values, "bootstrap_interval"), lo, hi)
    mean = float(sample.mean())
    if sample.size == 1:
        return _without_interval(sample, PERCENTILE_BOOTSTRAP, ONE_SEED, mean)
    if np.all(sample == sample[0]):
        return Interval(mean, mean, mean, PERCENTILE_BOOTSTRAP, int(sample.size), _per_seed(sample))
    res = _st.bootstrap(
        (sample,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low = float(min(max(res.confidence_interval.low, lo), mean))
    high = float(max(min(res.confidence_interval.high, hi), mean))
    return Interval(mean, low, high, PERCENTILE_BOOTSTRAP, int(sample.size), _per_seed(sample))


def format_interval(interval: Interval | Mapping | None, fmt: str = ".3f", *, percent: bool = False) -> str:
    """An interval as text: ``0.722 [0.360, 0.909]``, ``0.722 (one seed)``, ``withheld (reason)``.

    Takes an :class:`Interval` or its stored dict (``mean``, ``ci_low``, ``ci_high``; ``n`` and ``reason``
    when present); None gives ``n/a``. ``percent``: values times 100 with a ``%`` sign (``36% [20%, 50%]``).
    """
    if interval is None:
        return "n/a"
    if isinstance(interval, Interval):
        value, low, high, n, reason = interval.value, interval.low, interval.high, interval.n, interval.reason
    else:
        value, low, high = interval.get("mean"), interval.get("ci_low"), interval.get("ci_high")
        n, reason = interval.get("n"), interval.get("reason")

    def text(v: float) -> str:
        return f"{100 * v:{fmt}}%" if percent else f"{v:{fmt}}"

    if value is None or not math.isfinite(value):
        return f"withheld ({reason})" if reason else "withheld"
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        if n == 1 or reason == ONE_SEED:
            return f"{text(value)} (one seed)"
        return f"{text(value)} ({reason})" if reason else f"{text(value)} (no interval)"
    return f"{text(value)} [{text(low)}, {text(high)}]"
