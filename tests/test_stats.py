"""Intervals: one type, one rule for one seed, the distribution-free bound for rates, Student t otherwise."""

import math

import pytest

from persona_basins.stats import (
    DETERMINISTIC,
    ONE_SEED,
    Interval,
    format_interval,
    mean_interval,
    outcome_summary,
    rate_interval,
    share_interval,
)

BIMODAL = [0.390, 0.857, 0.002, 0.929, 0.921]  # the plain EM rates that once gave a t-interval up to 1.13


def test_rate_interval_stays_in_range_where_student_t_does_not():
    student = mean_interval(BIMODAL)
    assert student.high > 1.0  # the defect: a rate's interval outside [0, 1]
    rate = rate_interval(BIMODAL, threshold=0.2)
    assert 0.0 <= rate.low <= rate.value <= rate.high <= 1.0
    assert rate.per_seed == tuple(BIMODAL) and rate.n == 5 and rate.k_above == 4 and rate.threshold == 0.2


def test_rate_interval_is_distribution_free_and_deterministic():
    first = rate_interval(BIMODAL)
    assert first.method.startswith("Anderson") and rate_interval(BIMODAL) == first  # no resampling
    # five seeds, all at 1: the bound allows a mean as low as the KS band leaves, not a zero-width interval
    ones = rate_interval([1.0] * 5)
    assert ones.high == 1.0 and ones.low == pytest.approx(1 - 0.56328, abs=1e-4)


def test_student_t_numbers():
    values = [1.0, 2.0, 3.0]
    got = mean_interval(values)
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert got.value == 2.0 and got.low == pytest.approx(2.0 - half) and got.high == pytest.approx(2.0 + half)
    assert got.method.startswith("Student t") and got.reason is None


@pytest.mark.parametrize("summarise", [mean_interval, rate_interval])
def test_one_seed_gives_the_value_and_no_interval(summarise):
    one = summarise([0.3])
    assert one.value == 0.3 and one.low is None and one.high is None and one.n == 1
    assert one.reason == ONE_SEED


@pytest.mark.parametrize("summarise", [mean_interval, rate_interval])
def test_all_equal(summarise):
    same = summarise([0.0, 0.0, 0.0])
    assert same.value == same.low == 0.0 and same.reason is None  # every seed agrees
    # Student t: zero width; the bounded rate: as wide as three seeds allow (another outcome may be unseen)
    assert same.high == 0.0 if summarise is mean_interval else same.high > 0.5
    exact = summarise([0.3, 0.3, 0.3], exact_if_equal=True)  # a quantity that does not depend on the seed
    assert exact.value == 0.3 and exact.low is None and exact.reason == DETERMINISTIC
    varied = summarise([0.2, 0.4], exact_if_equal=True)
    assert varied.low < 0.3 < varied.high


def test_share_and_outcome_summary():
    share = share_interval(4, 5)
    assert share.value == 0.8 and share.method.startswith("Clopper-Pearson")
    assert share.low == pytest.approx(0.28358, abs=1e-4) and share.high == pytest.approx(0.99495, abs=1e-4)
    split = outcome_summary(BIMODAL, 0.2)
    assert split["k_above"] == 4 and split["n"] == 5 and split["above"] == [True, True, False, True, True]
    assert split["mean_above"]["mean"] == pytest.approx((0.390 + 0.857 + 0.929 + 0.921) / 4)
    assert split["mean_below"]["n"] == 1 and split["mean_below"]["ci_low"] is None
    assert outcome_summary([0.9, 0.8], 0.2)["mean_below"] is None  # one outcome only
    with pytest.raises(ValueError):
        share_interval(3, 2)


@pytest.mark.parametrize("summarise", [mean_interval, rate_interval])
def test_an_undefined_seed_withholds_the_summary(summarise):
    got = summarise([0.2, float("nan"), None], undefined="no crossing")
    assert got.value is None and got.low is None and got.reason == "no crossing" and got.n == 3
    assert got.to_dict()["per_seed"] == [0.2, None, None]


def test_bad_input():
    for bad in ([], [1.2], [-0.1]):
        with pytest.raises(ValueError):
            rate_interval(bad)
    with pytest.raises(ValueError):
        mean_interval([])
    assert rate_interval([1.2, 3.0], hi=math.inf).value == pytest.approx(2.1)  # in range when told so


def test_to_dict_shape_and_round_trip():
    rate = rate_interval(BIMODAL, threshold=0.2)
    stored = rate.to_dict()
    assert list(stored) == ["mean", "ci_low", "ci_high", "n", "per_seed", "method", "threshold", "k_above"]
    assert Interval.from_dict(stored) == rate
    one = mean_interval([2.0]).to_dict()
    assert one["reason"] == ONE_SEED and "threshold" not in one and one["ci_low"] is None
    assert Interval.from_dict(one) == mean_interval([2.0])
    undefined = Interval.from_dict(rate_interval([0.5, None]).to_dict())
    assert undefined.value is None and math.isnan(undefined.per_seed[1])


def test_format_interval():
    stat = Interval(0.7222, 0.36, 0.909, "m", 5, (0.7,) * 5)
    assert format_interval(stat) == "0.722 [0.360, 0.909]"
    assert format_interval(stat.to_dict()) == "0.722 [0.360, 0.909]"  # the stored dict reads the same
    assert format_interval(stat, ".2f") == "0.72 [0.36, 0.91]"
    assert format_interval(stat, ".0f", percent=True) == "72% [36%, 91%]"
    assert format_interval(rate_interval([0.7222])) == "0.722 (one seed)"
    assert format_interval(mean_interval([1.0, 1.0], exact_if_equal=True)) == f"1.000 ({DETERMINISTIC})"
    assert format_interval(mean_interval([1.0, None], undefined="no crossing")) == "withheld (no crossing)"
    assert format_interval({"mean": None, "ci_low": None, "ci_high": None}) == "withheld"
    assert format_interval(None) == "n/a"
