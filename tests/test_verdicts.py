"""The verdict table: each verdict function tried on synthetic cases where each of its answers is true,
including the adversarial ones (withheld points above the band, censored values, a band at the grid's edge,
one point below and one inside, one mode only, one seed, a seed that never crosses), and a property test
that curves with no interior peak are not "confirmed" more often than the stated error rate."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sp_stats

from persona_basins.measure.llc import (
    crossing_interval,
    half_rise_step,
    jump_order_verdict,
    peak_at_boundary_verdict,
    refine_grid,
)
from persona_basins.stats import rate_interval

# --- the LLC peak verdict -----------------------------------------------------------------------------------
TS = [0.0, 0.5, 0.625, 1.0, 1.5, 2.0]
BAND = (0.5, 0.75)  # holds 0.5 and 0.625; 0.0 below it, 1.0 next above it
PEAK = [1.0, 1.5, 3.0, 1.6, 1.3, 1.2]
RISING = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
MCSE = 0.05


def _verdict(curves, bands=BAND, ts=TS, mcse=MCSE, **kw):
    bands = bands if isinstance(bands, list) else [bands] * len(curves)
    mcses = [[None if y is None else mcse for y in c] for c in curves]
    return peak_at_boundary_verdict(ts, curves, mcses, bands, **kw)


def _withheld_above(curve, ts=TS, hi=BAND[1]):
    return [None if t > hi else y for t, y in zip(ts, curve)]


def test_peak_confirmed_refuted_and_undecided_are_all_reachable():
    assert _verdict([PEAK] * 3)["verdict"] == "confirmed"
    v = _verdict([RISING] * 3)
    assert v["verdict"] == "refuted" and v["contradicts"] == "3 of 3 seeds"
    assert _verdict([PEAK] * 3, mcse=5.0)["verdict"] == "undecided"  # noise: no point separates


def test_rising_curve_with_the_points_above_withheld_is_undecided():
    # the biased case: the gates fail above the band on a rising curve; the points below are lower
    v = _verdict([_withheld_above(RISING)] * 5)
    assert v["verdict"] == "undecided" and v["supports"] == "0 of 5 seeds"
    assert all("withheld" in p["why"] for p in v["per_seed"])
    # only the neighbour just above the band withheld, the rest converged and lower: still no descent shown
    gap = [y if t != 1.0 else None for t, y in zip(TS, PEAK)]
    assert _verdict([gap] * 3)["verdict"] == "undecided"


def test_band_at_the_grid_edge_and_one_point_below_one_inside_are_undecided():
    # a rising curve whose band holds the last grid point: no point above it
    v = _verdict([RISING] * 3, bands=(1.6, 2.0))
    assert v["verdict"] == "undecided" and all("edge" in p["why"] for p in v["per_seed"])
    # one point below the band and one inside it, nothing beyond
    v = _verdict([[1.0, 3.0]] * 3, bands=(0.9, 1.1), ts=[0.5, 1.0])
    assert v["verdict"] == "undecided"
    # a falling curve whose band holds the first grid point: no point below it
    assert _verdict([RISING[::-1]] * 3, bands=(0.0, 0.1))["verdict"] == "undecided"


def test_censored_points_inside_the_band_give_no_verdict():
    censored = [None if BAND[0] <= t <= BAND[1] else y for t, y in zip(TS, PEAK)]
    v = _verdict([censored] * 3)
    assert v["verdict"] == "undecided" and all(p["points_inside"] == 0 for p in v["per_seed"])
    every = [[None] * len(TS)] * 3
    assert _verdict(every)["verdict"] == "undecided"


def test_one_seed_is_too_few_unless_asked():
    assert _verdict([PEAK])["verdict"] == "undecided"
    assert _verdict([PEAK], min_seeds=1)["verdict"] == "confirmed"


def test_seeds_that_never_cross_are_excluded_and_counted():
    v = _verdict([PEAK, PEAK, PEAK, RISING], bands=[BAND, BAND, BAND, None])
    assert v["verdict"] == "confirmed" and v["supports"] == "3 of 3 seeds"
    assert v["seeds_never_crossing"] == 1 and v["per_seed"][3]["verdict"] == "excluded"
    v = _verdict([PEAK, PEAK], bands=[None, None])
    assert v["verdict"] == "undecided" and v["seeds_crossing"] == 0


def test_each_seed_is_judged_on_its_own_band():
    ts = [0.0, 0.5, 0.625, 0.75, 1.0, 1.125, 1.25, 1.5]
    early = [1.0, 1.2, 3.0, 1.3, 1.1, 1.0, 1.0, 1.0]  # peaks at 0.625
    late = [1.0, 1.0, 1.0, 1.1, 1.2, 3.0, 1.3, 1.1]  # peaks at 1.125
    own = [(0.5, 0.75), (1.0, 1.25)]
    assert _verdict([early, late], bands=own, ts=ts)["verdict"] == "confirmed"
    # one band shared by both seeds: the late seed's peak lies outside it and contradicts
    v = _verdict([early, late], bands=[(0.5, 0.75)] * 2, ts=ts)
    assert v["verdict"] == "undecided" and v["contradicts"] == "1 of 2 seeds"


def test_seeds_that_disagree_are_undecided():
    v = _verdict([PEAK, PEAK, RISING, RISING])
    assert (
        v["verdict"] == "undecided" and v["supports"] == "2 of 4 seeds" and v["contradicts"] == "2 of 4 seeds"
    )


def test_crossing_interval_and_refine_grid():
    scan_t = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert crossing_interval(scan_t, [0.0, 0.1, 0.3, 0.7, 0.9], 0.5) == (0.5, 0.75)
    assert crossing_interval(scan_t, [0.0, 0.1, 0.2, 0.3, 0.4], 0.5) is None  # never crosses
    assert crossing_interval(scan_t, [0.6, 0.7, 0.8, 0.9, 0.9], 0.5) is None  # already past it
    # the demo's LLC grid has no point inside the measured t* range: one is added per band
    assert refine_grid([0.0, 0.5, 1.0, 1.5, 2.0], [(0.5, 0.75), None]) == [0.0, 0.5, 0.625, 1.0, 1.5, 2.0]
    assert refine_grid([0.0, 0.6, 1.0], [(0.5, 0.75)]) == [0.0, 0.6, 1.0]  # already holds one
    assert refine_grid([0.0, 1.0], [(0.0, 1.0)], points_per_band=3) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert refine_grid([0.0, 1.0], [(0.4, 0.4)]) == [0.0, 0.4, 1.0]


# --- property: no interior peak, no confirmation ------------------------------------------------------------
@st.composite
def _no_peak_case(draw, gaussian: bool):
    """Seeds' curves on one grid, each monotone (rising or falling) or flat, plus noise; each seed with its
    own band inside the grid, points withheld at random."""
    n_points = draw(st.integers(3, 9))
    ts = sorted(draw(st.lists(st.floats(0, 3), min_size=n_points, max_size=n_points, unique=True)))
    n_seeds = draw(st.integers(1, 6))
    seeds = []
    for _ in range(n_seeds):
        shape = draw(st.sampled_from(["rising", "falling", "flat"]))
        slope = 0.0 if shape == "flat" else draw(st.floats(0, 5)) * (1 if shape == "rising" else -1)
        i, j = sorted(draw(st.lists(st.integers(0, n_points - 1), min_size=2, max_size=2)))
        withheld = draw(st.lists(st.booleans(), min_size=n_points, max_size=n_points))
        mcse = draw(st.lists(st.floats(0.05, 1.0), min_size=n_points, max_size=n_points))
        seeds.append((slope, (ts[i], ts[j]), withheld, mcse))
    return ts, seeds, draw(st.integers(0, 2**32 - 1))


def _curves(ts, seeds, rng, gaussian: bool):
    curves, mcses, bands = [], [], []
    for slope, band, withheld, mcse in seeds:
        noise = rng.normal(size=len(ts)) if gaussian else rng.uniform(-1, 1, size=len(ts))
        ys = [slope * t + s * e for t, s, e in zip(ts, mcse, noise)]
        curves.append([None if w else y for y, w in zip(ys, withheld)])
        mcses.append([None if w else s for s, w in zip(mcse, withheld)])
        bands.append(band)
    return curves, mcses, bands


@settings(max_examples=200, deadline=None)
@given(_no_peak_case(gaussian=False))
def test_no_interior_peak_with_noise_within_mcse_is_never_confirmed(case):
    # |noise| <= MCSE cannot lift a point inside above a neighbour by z = 2 combined MCSE on a monotone or
    # flat curve: the stated error rate is 0 here, for any band, withholding pattern and number of seeds
    ts, seeds, seed = case
    curves, mcses, bands = _curves(ts, seeds, np.random.default_rng(seed), gaussian=False)
    for min_seeds in (1, 2):
        v = peak_at_boundary_verdict(ts, curves, mcses, bands, min_seeds=min_seeds)
        assert v["verdict"] != "confirmed"


@settings(max_examples=200, deadline=None)
@given(_no_peak_case(gaussian=True))
def test_no_interior_peak_with_gaussian_noise_is_confirmed_at_most_at_the_stated_rate(case):
    ts, seeds, seed = case
    rng = np.random.default_rng(seed)
    trials, confirmed, bound = 60, 0, 0.0
    for _ in range(trials):
        curves, mcses, bands = _curves(ts, seeds, rng, gaussian=True)
        v = peak_at_boundary_verdict(ts, curves, mcses, bands, min_seeds=1)
        confirmed += v["verdict"] == "confirmed"
        bound = max(bound, v["false_confirm_bound"])
    # more confirmations than the bound allows, beyond chance at the 1e-6 level, fails
    assert sp_stats.binom.sf(confirmed - 1, trials, min(1.0, bound)) > 1e-6 or confirmed == 0


# --- the trajectory timing verdict --------------------------------------------------------------------------
STEPS = list(range(0, 110, 10))


def _sigmoid(center, low=1.0, high=3.0, width=3.0):
    return [low + (high - low) / (1 + math.exp(-(s - center) / width)) for s in STEPS]


def _order(llc, behaviour, mcse=0.02, **kw):
    mcses = [None if v is None else mcse for v in llc]
    return jump_order_verdict(STEPS, llc, mcses, behaviour, **kw)


def test_the_llc_rising_first_returns_before():
    v = _order(_sigmoid(25), _sigmoid(65, 0.0, 0.8))
    assert v["order"] == "before", v["why"]
    assert v["llc_jump_step"] == pytest.approx(25, abs=1) and v["behaviour_jump_step"] == pytest.approx(
        65, abs=1
    )


def test_after_with_and_undecided_are_reachable():
    assert _order(_sigmoid(75), _sigmoid(35, 0.0, 0.8))["order"] == "after"
    assert _order(_sigmoid(44), _sigmoid(46, 0.0, 0.8))["order"] == "with"
    noisy = _order(_sigmoid(25), _sigmoid(65, 0.0, 0.8), mcse=2.0)
    assert noisy["order"] == "undecided" and "does not rise" in noisy["why"]


def test_trajectory_adversarial_cases_are_undecided():
    beh = _sigmoid(65, 0.0, 0.8)
    start_withheld = [None, *_sigmoid(25)[1:]]
    assert "first or last" in _order(start_withheld, beh)["why"]
    gap = _sigmoid(25)
    gap[2] = None  # the checkpoint inside the LLC's rise is withheld
    assert "withheld" in _order(gap, beh)["why"]
    narrow = _order(_sigmoid(25), [0.01 + 0.001 * i for i in range(len(STEPS))])
    assert narrow["order"] == "undecided" and "no behavioural jump" in narrow["why"]
    # the LLC's bracket under its MCSE straddles the behaviour's interval
    wide = _order(_sigmoid(50, width=15), _sigmoid(52, 0.0, 0.8), mcse=0.3)
    assert wide["order"] == "undecided"


def test_one_jump_definition_interpolated_not_the_end_of_an_interval():
    assert half_rise_step([0, 10, 20], [0.0, 0.2, 1.0]) == pytest.approx(13.75)
    assert half_rise_step([0, 10, 20], [0.0, 0.5, 1.0]) == pytest.approx(10.0)
    assert half_rise_step([0, 10], [0.5, 0.1]) is None and half_rise_step([0], [1.0]) is None


def test_checkpoints_without_step_zero_are_undecided():
    from persona_basins.studies.llc import _jump_order

    row = {"llc": _sigmoid(25)[1:], "mcse": [0.02] * (len(STEPS) - 1)}
    v = _jump_order(STEPS[1:], row, _sigmoid(65, 0.0, 0.8)[1:])
    assert v["order"] == "undecided" and "step-0" in v["why"]


# --- the EM "broad" verdict: k of n seeds at or above the threshold -----------------------------------------
@pytest.mark.parametrize(
    ("values", "k"),
    [
        ([0.72, 0.74, 0.70, 0.73, 0.71], 5),  # one mode only: every seed broad
        ([0.01, 0.02, 0.00, 0.03, 0.01], 0),  # one mode only: every seed narrow
        ([0.72, 0.003, 0.80, 0.75, 0.70], 4),  # two modes
        ([0.2, 0.1999], 1),  # at the threshold counts, just below does not
        ([0.5], 1),  # one seed
    ],
)
def test_em_k_of_n_broad(values, k):
    r = rate_interval(values, threshold=0.2)
    assert r.k_above == k and r.n == len(values)
    if len(values) == 1:
        assert r.low is None and r.high is None  # one seed: a count, no interval


def test_em_k_of_n_with_an_undefined_seed_counts_nothing():
    r = rate_interval([0.7, None, 0.8], threshold=0.2)
    assert r.value is None and r.k_above is None
