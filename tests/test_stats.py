"""Intervals: the in-range interval for rates and the Student-t interval for unbounded quantities."""

import pytest

from persona_basins.stats import ci95, rate_interval

BIMODAL = [0.390, 0.857, 0.002, 0.929, 0.921]  # the plain EM rates that once gave a t-interval up to 1.13


def test_rate_interval_stays_in_range_where_student_t_does_not():
    t = ci95(BIMODAL)
    assert t["ci_high"] > 1.0  # the defect: a rate's interval outside [0, 1]
    r = rate_interval(BIMODAL, threshold=0.2)
    assert 0.0 <= r["ci_low"] <= r["mean"] <= r["ci_high"] <= 1.0
    assert r["per_seed"] == BIMODAL and r["n"] == 5 and r["k_above"] == 4
    assert rate_interval(BIMODAL, threshold=0.2) == r  # seeded: the same numbers every time


def test_rate_interval_edge_cases():
    one = rate_interval([0.3])
    assert one["ci_low"] is None and one["ci_high"] is None and one["mean"] == 0.3  # no zero-width "interval"
    same = rate_interval([0.0, 0.0, 0.0])
    assert same["ci_low"] == same["ci_high"] == 0.0
    for bad in ([], [float("nan")], [1.2]):
        with pytest.raises(ValueError):
            rate_interval(bad)
