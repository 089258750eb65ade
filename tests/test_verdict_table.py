"""The verdict table: each verdict function on synthetic cases where each of its answers is the true one,
adversarial cases included (withheld points, censored values, one outcome only, one seed, a seed that never
crosses). A verdict that cannot reach one of its answers, or that leans toward the claim on a case where
the data cannot tell, fails here.

Covered: the inoculation verdict (with its position-readout check and the reduction), the eigenform verdict,
the emergent-misalignment verdict, and the probes-needed summaries of behavioural probing (which return
answers, not a verdict).
"""

import math

import pytest

from persona_basins.measure.basin_verdicts import (
    format_reduction,
    inoculation_reduction,
    inoculation_verdict,
    readout_separation,
    widening_summary,
)
from persona_basins.measure.degeneracy import _needed_summary
from persona_basins.measure.eigenform_verdicts import verdict as eigenform_verdict
from persona_basins.measure.em_verdicts import BROAD_SHARE_LEVEL, em_verdict
from persona_basins.stats import rate_interval, seeds_to_decide, share_interval, share_seeds_to_decide

GRID_END = 8.0  # where a synthetic critical-distance search stopped without crossing


def _crit(r_star):
    """A critical-distance result: crossing at ``r_star``, or censored above the grid end (None)."""
    if r_star is None:
        return {"t_star": None, "r_star": None, "censored_above": GRID_END, "censored_below": None}
    return {"t_star": r_star, "r_star": r_star, "censored_above": None, "censored_below": None}


SEPARATES = readout_separation([0.6, 0.7, 0.65, 0.0], [True, True, True, False])
BASE = [1.0, 1.1, 0.9]
WIDER = [2.0, 2.3, 1.9]
STILL = [0.01, -0.02, 0.0]

# case: (base-start r*, inoculated-start r*, shift / persona gap, readout) -> (verdict, widens, point_still)
INOCULATION_TABLE = {
    "widens, point still: confirmed": ((BASE, WIDER, STILL, SEPARATES), ("confirmed", "yes", "yes")),
    "narrows: refuted": ((BASE, [0.5, 0.55, 0.45], STILL, SEPARATES), ("refuted", "no", "yes")),
    "point moves toward toxic: refuted": (
        (BASE, WIDER, [0.3, 0.35, 0.33], SEPARATES),
        ("refuted", "yes", "no"),
    ),
    "point moves toward helpful: refuted": (
        (BASE, WIDER, [-0.3, -0.35, -0.33], SEPARATES),
        ("refuted", "yes", "no"),
    ),
    "seeds disagree on widening: undecided": (
        (BASE, [1.6, 0.8, 1.2], STILL, SEPARATES),
        ("undecided", "undecided", "yes"),
    ),
    "shift interval straddles the tolerance: undecided": (
        (BASE, WIDER, [0.05, 0.09, 0.15], SEPARATES),
        ("undecided", "yes", "undecided"),
    ),
    # adversarial: the readout cannot tell broad from narrow, so "did not move" is not measured
    "readout does not separate: undecided": (
        (BASE, WIDER, STILL, readout_separation([-0.2, -0.25, -0.16, -0.2], [True, True, True, False])),
        ("undecided", "yes", "undecided"),
    ),
    "readout fails but the basin narrows: refuted": (
        (BASE, [0.5, 0.55, 0.45], STILL, readout_separation([0.1, 0.1], [True, False])),
        ("refuted", "no", "undecided"),
    ),
    "one outcome only (every plain fine-tune broad): undecided": (
        (BASE, WIDER, STILL, readout_separation([0.6, 0.7, 0.65], [True, True, True])),
        ("undecided", "yes", "undecided"),
    ),
    "one seed: undecided": (([1.0], [2.0], [0.0], SEPARATES), ("undecided", "undecided", "undecided")),
    "a seed's position withheld: undecided": (
        (BASE, WIDER, [0.01, None, 0.0], SEPARATES),
        ("undecided", "yes", "undecided"),
    ),
    # censored: an inoculated start that never crosses gives a lower bound, which counts when > 1
    "inoculated starts never cross (bounds > 1): confirmed": (
        (BASE, [None, None, None], STILL, SEPARATES),
        ("confirmed", "yes", "yes"),
    ),
    "neither start crosses: undecided": (
        ([None, None], [None, None], [0.0, 0.0], SEPARATES),
        ("undecided", "undecided", "yes"),
    ),
    # a base start that never crosses bounds the widening from above: r*(inoc) / grid end <= 1
    "base seed never crosses, inoculated crosses early: refuted": (
        ([None, None], [1.0, 2.0], [0.0, 0.0], SEPARATES),
        ("refuted", "no", "yes"),
    ),
    "inoculated start already past the wall (r* = 0): refuted": (
        ([1.0, 1.1], [0.0, 0.0], [0.0, 0.0], SEPARATES),
        ("refuted", "no", "yes"),
    ),
}


@pytest.mark.parametrize("case", list(INOCULATION_TABLE))
def test_inoculation_verdict_table(case):
    (base, inoc, shift, readout), (want, widens, still) = INOCULATION_TABLE[case]
    widening = widening_summary([_crit(r) for r in inoc], [_crit(r) for r in base])
    got = inoculation_verdict(widening, shift, readout=readout, position_tol=0.1)
    assert (got["verdict"], got["widens"], got["point_still"]) == (want, widens, still), got["why"]
    if not readout["separates"]:
        assert "cannot tell" in got["why"] and got["readout_separates"] is False


def test_every_inoculation_answer_is_reached():
    answers = {want for _, (want, _, _) in INOCULATION_TABLE.values()}
    parts = {(w, s) for _, (_, w, s) in INOCULATION_TABLE.values()}
    assert answers == {"confirmed", "refuted", "undecided"}
    assert {w for w, _ in parts} == {s for _, s in parts} == {"yes", "no", "undecided"}


@pytest.mark.parametrize(
    "moved, broad, separates, reason",
    [
        ([0.6, 0.7, 0.0, 0.05], [True, True, False, False], True, "beyond narrow"),
        # the case: broad plain models move toward helpful, and so does the narrow one
        ([-0.16, -0.27, -0.2, -0.2], [True, True, True, False], False, "does not separate"),
        ([0.0, 0.6], [True, False], False, "does not separate"),  # separates, but the wrong way round
        ([0.15, 0.1], [True, False], False, "does not separate"),  # a margin under the tolerance
        ([0.6, 0.7], [True, True], False, "every plain fine-tune is broad"),
        ([0.0], [False], False, "every plain fine-tune is narrow"),
        ([None, None], [True, False], False, "no plain fine-tune's position was read"),
    ],
)
def test_readout_separation(moved, broad, separates, reason):
    got = readout_separation(moved, broad, position_tol=0.1)
    assert got["separates"] is separates and reason in got["reason"]


# --- the inoculation reduction: a share of an excess that exists ------------------------------------------
def test_reduction_with_no_broad_plain_seed_reports_none():
    """The issue's '0 of 2 seeds were misaligned but inoculation cuts by 37%'."""
    got = inoculation_reduction([0.05, 0.02], [0.03, 0.015])
    assert got["mean"] is None and got["k_broad"] == 0 and got["ratio_of_mean_excesses"] is None
    assert got["per_seed"] == [None, None]
    assert format_reduction(got).startswith("no reduction reported: 0 of 2 plain seeds")


def test_reduction_leaves_out_the_narrow_seed():
    """The issue's '76% [27%, 100%]': a narrow seed's ratio (denominator ~0) no longer enters."""
    plain, inoc = [0.9, 0.85, 0.001, 0.9, 0.88], [0.0, 0.01, 0.003, 0.0, 0.02]
    got = inoculation_reduction(plain, inoc)
    assert got["k_broad"] == 4 and got["per_seed"][2] is None and got["n"] == 4
    assert got["mean"] == pytest.approx(sum(1 - i / p for p, i in zip(plain, inoc) if p >= 0.2) / 4)
    assert got["ratio_of_mean_excesses"] == pytest.approx(1 - (sum(inoc) / 5) / (sum(plain) / 5))
    assert "4 of 5 plain seeds broad" in format_reduction(got)


def test_reduction_one_broad_seed_has_no_interval():
    got = inoculation_reduction([0.9, 0.0], [0.45, 0.0])
    assert got["mean"] == pytest.approx(0.5) and got["ci_low"] is None and got["k_broad"] == 1


# --- the eigenform verdict --------------------------------------------------------------------------------
def _rates(*per_seed):
    return rate_interval(per_seed).to_dict()


MANY = seeds_to_decide(0.5) + 1  # enough seeds for an interval to leave 0.5

EIGENFORM_TABLE = {
    "every seed returns: yes": ({"sampled": _rates(*[1.0] * MANY)}, "yes"),
    "no seed returns: no": ({"sampled": _rates(*[0.0] * MANY), "replay": _rates(*[0.0] * MANY)}, "no"),
    "one variant returns, another does not: yes": (
        {"sampled": _rates(*[0.0] * MANY), "distill": _rates(*[1.0] * MANY)},
        "yes",
    ),
    "half the seeds return: undecided": ({"sampled": _rates(*[0.0, 1.0] * MANY)}, "undecided"),
    # adversarial
    "five agreeing seeds (the default) cannot decide: undecided": (
        {"sampled": _rates(*[1.0] * 5)},
        "undecided",
    ),
    "one seed: undecided": ({"sampled": _rates(1.0)}, "undecided"),
    "nothing breaks the static model: undecided": ({"sampled": None, "replay": None}, "undecided"),
    "a seed's rate undefined (censored): undecided": (
        {"sampled": rate_interval([0.0] * (MANY - 1) + [math.nan]).to_dict()},
        "undecided",
    ),
    "one variant unmeasured, the others below: undecided": (
        {"sampled": _rates(*[0.0] * MANY), "replay": None},
        "undecided",
    ),
}


@pytest.mark.parametrize("case", list(EIGENFORM_TABLE))
def test_eigenform_verdict_table(case):
    rates, want = EIGENFORM_TABLE[case]
    got = eigenform_verdict(rates)
    assert got["answer"] == want, got["reason"]


def test_every_eigenform_answer_is_reached_and_few_seeds_say_why():
    assert {want for _, want in EIGENFORM_TABLE.values()} == {"yes", "no", "undecided"}
    five = eigenform_verdict({"sampled": _rates(*[1.0] * 5)})
    assert f"fewer than {seeds_to_decide(0.5)} seeds" in five["reason"]
    assert eigenform_verdict({"sampled": _rates(*[1.0] * 5)}, min_seeds=5)["answer"] == "undecided"


# --- the emergent-misalignment verdict: the exact interval of the broad share against one half ----------
BROAD, NARROW, AT = 0.9, 0.0, 0.2  # per-seed excess over the base; AT: exactly the threshold

EM_TABLE = {
    "6 of 6 broad: confirmed": ([BROAD] * 6, "confirmed", 6),
    "0 of 6 broad: refuted": ([NARROW] * 6, "refuted", 0),
    "9 of 10 broad: confirmed": ([BROAD] * 9 + [NARROW], "confirmed", 9),
    "1 of 10 broad: refuted": ([BROAD] + [NARROW] * 9, "refuted", 1),
    "7 of 10 broad, interval contains 1/2: undecided": ([BROAD] * 7 + [NARROW] * 3, "undecided", 7),
    "every seed below the base: refuted": ([-0.01] * 6, "refuted", 0),
    # adversarial: what the old 2/3 rule decided on too few seeds
    "4 of 5 (the default demo): undecided": ([0.202, 0.905, 0.001, 0.899, 0.909], "undecided", 4),
    "5 of 5: five seeds cannot decide, undecided": ([BROAD] * 5, "undecided", 5),
    "2 of 3 (the old rule confirmed): undecided": ([BROAD, BROAD, NARROW], "undecided", 2),
    "0 of 3 (the old rule refuted): undecided": ([NARROW] * 3, "undecided", 0),
    "no seed: undecided": ([], "undecided", 0),
    "one broad seed: undecided": ([BROAD], "undecided", 1),
    "one narrow seed: undecided": ([NARROW], "undecided", 0),
    "every seed exactly at the threshold counts as broad: confirmed": ([AT] * 6, "confirmed", 6),
    "three seeds exactly at the threshold: undecided": ([AT] * 3, "undecided", 3),
    "every seed just under the threshold: refuted": ([AT - 1e-9] * 6, "refuted", 0),
    "a seed's excess None: undecided": ([BROAD] * 9 + [None], "undecided", 9),
    "a seed's excess NaN: undecided": ([NARROW] * 9 + [math.nan], "undecided", 0),
}


@pytest.mark.parametrize("case", list(EM_TABLE))
def test_em_verdict_table(case):
    excess, want, k = EM_TABLE[case]
    got = em_verdict(excess, threshold=AT)
    assert got["verdict"] == want, got["reason"]
    assert (got["k"], got["n"], got["threshold"], got["level"]) == (k, len(excess), AT, BROAD_SHARE_LEVEL)
    assert got["seeds_to_decide"] == share_seeds_to_decide(BROAD_SHARE_LEVEL) == 6
    defined = excess and all(v is not None and math.isfinite(v) for v in excess)
    if defined:  # the interval stored is the exact one of k of n, and the verdict is its side of 1/2
        share = share_interval(k, len(excess))
        assert (got["share"]["ci_low"], got["share"]["ci_high"]) == (share.low, share.high)
        assert f"{k} of {len(excess)} fine-tunes broad" in got["reason"]
    else:
        assert got["share"] is None and ("undefined" in got["reason"] or "no plain" in got["reason"])
    assert len(got["per_seed"]) == len(got["above"]) == len(excess)


def test_every_em_answer_is_reached_and_none_leans():
    assert {want for _, want, _ in EM_TABLE.values()} == {"confirmed", "refuted", "undecided"}
    for n in range(1, 13):
        for k in range(n + 1):
            got = em_verdict([BROAD] * k + [NARROW] * (n - k), threshold=AT)
            share = share_interval(k, n)
            want = "confirmed" if share.low >= 0.5 else "refuted" if share.high < 0.5 else "undecided"
            assert got["verdict"] == want
            if n < got["seeds_to_decide"]:  # fewer seeds than can decide: never an answer, and it says why
                assert want == "undecided" and "fewer than 6 seeds cannot decide" in got["reason"]


# --- probing: the probes-needed summary -------------------------------------------------------------------
PROBING_TABLE = {
    # per held-out seed probes needed (None: the target power not reached by k_max = 100)
    "every seed reached": ([10, 20, 30], {"k_reached": 3, "median": 20.0, "censored_above": None}),
    "no seed reached": ([None, None], {"k_reached": 0, "median": None, "median_censored_above": 100}),
    "most reached: the median is a number": ([5, 7, None], {"k_reached": 2, "median": 7.0}),
    # adversarial: the median over reached seeds alone (6.0) would lean toward "few probes needed"
    "most censored: the median is censored": (
        [5, 7, None, None, None],
        {"k_reached": 2, "median": None, "median_censored_above": 100, "median_reached": 6.0},
    ),
    "one seed": ([12], {"k_reached": 1, "median": 12.0, "n": 1}),
}


@pytest.mark.parametrize("case", list(PROBING_TABLE))
def test_probes_needed_table(case):
    values, want = PROBING_TABLE[case]
    got = _needed_summary(values, 100)
    assert {k: got[k] for k in want} == want
    assert (got["censored_above"] is None) == all(v is not None for v in values)
