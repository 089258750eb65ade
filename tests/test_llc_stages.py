"""Stage boundaries: smoothing over step values, a boundary only where the slope change beats its MCSE."""

import numpy as np
import pytest

from persona_basins.measure.llc.stages import stage_boundaries

STEPS = np.arange(20) * 10.0
RISE_THEN_FALL = np.concatenate([np.linspace(0, 5, 10), np.linspace(5, 2, 10)])


def test_a_clear_peak_is_a_boundary_and_a_noisy_one_only_a_candidate():
    sharp = stage_boundaries(STEPS, RISE_THEN_FALL, [0.05] * 20)
    assert sharp["boundaries"] == [100.0] and sharp["kinds"] == ["max"]
    noisy = stage_boundaries(STEPS, RISE_THEN_FALL, [2.0] * 20)  # the same curve, MCSE 40x larger
    assert noisy["boundaries"] == [] and [c["step"] for c in noisy["candidates"]] == [100.0]
    assert noisy["candidates"][0]["significant"] is False and noisy["candidates"][0]["se"] > 0


def test_without_mcse_nothing_is_marked():
    got = stage_boundaries(STEPS, RISE_THEN_FALL)
    assert got["boundaries"] == [] and got["candidates"] and "nothing tested" in got["test"]
    assert stage_boundaries(STEPS, RISE_THEN_FALL, [0.05] * 19 + [None])["boundaries"] == []


def test_smoothing_is_over_step_values_not_indices():
    """Uneven checkpoints: a dense cluster must not count as a wide stretch of the curve."""
    steps = np.array([0, 1, 2, 3, 4, 100, 200, 300, 400], dtype=float)
    values = np.array([0, 0, 0, 0, 0, 1, 2, 3, 4], dtype=float)
    got = stage_boundaries(steps, values, [0.01] * 9, bandwidth=0)  # no smoothing: the exact step slopes
    assert got["slope"] == pytest.approx(np.gradient(values, steps).tolist())
    from scipy.ndimage import gaussian_filter1d

    # kernel weights by step distance: the cluster at steps 0-4 averages within itself (all 0), where a
    # smoothing over indices pulls step 4 toward the values at steps 100 and 200
    smoothed = stage_boundaries(steps, values, [0.01] * 9, bandwidth=20.0)["smoothed"]
    assert smoothed[4] == pytest.approx(0.0, abs=1e-3)
    assert gaussian_filter1d(values, 1.0, mode="nearest")[4] > 0.2


def test_a_flat_noisy_curve_shows_a_false_boundary_rarely():
    rng = np.random.default_rng(0)
    false = 0
    for _ in range(300):
        steps = np.cumsum(rng.integers(1, 50, 12)).astype(float)
        false += bool(stage_boundaries(steps, 1 + rng.normal(0, 0.1, 12), [0.1] * 12)["boundaries"])
    assert false / 300 <= 0.08  # nominal family-wise 5% (Bonferroni over the interior checkpoints)


def test_bad_input():
    with pytest.raises(ValueError):
        stage_boundaries([0, 1], [1.0])
    with pytest.raises(ValueError):
        stage_boundaries([1, 0, 2], [1.0, 2.0, 3.0])
