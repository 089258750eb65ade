"""The path study's claim "the LLC peaks at the boundary t*" as a verdict: confirmed on a synthetic peak in
the band, refuted where the claim is false (a curve that keeps rising through the band), undecided on noise or
withheld points (the full verdict table is tests/test_verdicts.py)."""

from __future__ import annotations

import numpy as np

from persona_basins.measure.llc import peak_at_boundary_verdict as _verdict

TS = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
BAND = (0.9, 1.6)


def peak_at_boundary_verdict(ts, curves, mcses, band):
    return _verdict(ts, curves, mcses, [band] * len(curves))


def _seeds(curve, mcse=0.05, n=5, jitter=0.02, seed=0):
    rng = np.random.default_rng(seed)
    return ([[float(v + jitter * rng.normal()) for v in curve] for _ in range(n)], [[mcse] * len(curve)] * n)


def test_peak_in_the_band_is_confirmed():
    curves, mcses = _seeds([1.0, 1.5, 3.0, 2.8, 1.4, 1.2])
    v = peak_at_boundary_verdict(TS, curves, mcses, BAND)
    assert v["verdict"] == "confirmed" and v["supports"] == "5 of 5 seeds"


def test_monotone_rise_through_the_band_is_refuted():
    # the claim is false: λ̂ keeps growing past t* (what the short-chain demo reported)
    curves, mcses = _seeds([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    v = peak_at_boundary_verdict(TS, curves, mcses, BAND)
    assert v["verdict"] == "refuted" and v["contradicts"] == "5 of 5 seeds"


def test_peak_outside_the_band_is_refuted():
    curves, mcses = _seeds([1.0, 3.0, 1.5, 1.4, 1.2, 1.1])
    assert peak_at_boundary_verdict(TS, curves, mcses, BAND)["verdict"] == "refuted"


def test_noise_and_withheld_points_are_undecided():
    curves, mcses = _seeds([1.0, 1.5, 3.0, 2.8, 1.4, 1.2], mcse=5.0)
    assert peak_at_boundary_verdict(TS, curves, mcses, BAND)["verdict"] == "undecided"
    withheld = [[None] * len(TS)] * 3
    v = peak_at_boundary_verdict(TS, withheld, withheld, BAND)
    assert v["verdict"] == "undecided" and all(p["verdict"] == "undecided" for p in v["per_seed"])
    # seeds that disagree: undecided, with the per-seed split reported
    up, m = _seeds([0.5, 1.0, 1.5, 2.0, 2.5, 3.0], n=2)
    peak, m2 = _seeds([1.0, 1.5, 3.0, 2.8, 1.4, 1.2], n=2)
    v = peak_at_boundary_verdict(TS, up + peak, m + m2, BAND)
    assert (
        v["verdict"] == "undecided" and v["supports"] == "2 of 4 seeds" and v["contradicts"] == "2 of 4 seeds"
    )
