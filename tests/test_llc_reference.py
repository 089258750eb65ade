"""Finite-n reference of the analytic cases: what a perfect sampler of the same localised tempered posterior
returns (exact Gaussian / quadrature), beside the asymptotic learning coefficient."""

from __future__ import annotations

import math

import numpy as np
import pytest

from persona_basins.measure.llc import analytic as A


def test_regular_reference_is_the_gaussian_value():
    case = A.regular_case(d=4, n=10_000, seed=0)
    ref = A.finite_n_reference(case)
    nb = case.n / math.log(case.n)
    # S ~ I: each of the d directions contributes nb / (nb + gamma) / 2, a hair below 1/2
    assert ref["value"] == pytest.approx(4 * 0.5 * nb / (nb + 1.0), rel=2e-3)
    assert ref["value"] < case.true_lambda
    # gamma -> 0 recovers d / 2 exactly
    assert A.finite_n_reference(case, gamma=1e-12)["value"] == pytest.approx(2.0, rel=1e-9)


def test_normal_crossing_reference_by_quadrature():
    one = A.normal_crossing_case((2,), n=10_000, seed=0)
    r1 = A.finite_n_reference(one)
    assert 0.2 < r1["value"] < 0.25 and "1-D" in r1["method"]
    two = A.normal_crossing_case((1, 1), n=10_000, seed=0)  # lambda 1/2, multiplicity 2
    r2 = A.finite_n_reference(two, grid=2001)
    assert r2["value"] == pytest.approx(0.3825, abs=2e-3)  # 24% below the asymptotic value at n = 1e4
    # the grid is converged
    assert A.finite_n_reference(two, grid=1001)["value"] == pytest.approx(r2["value"], rel=1e-3)


def test_no_reference_where_no_exact_integration():
    assert A.finite_n_reference(A.rrr_case(4, 3, 2, 1, n=1000))["value"] is None


def test_quadrature_matches_the_gaussian_formula_in_one_dimension():
    # a 1-D regular model checked against the same quadrature the normal crossings use
    case = A.regular_case(d=1, n=2000, seed=3)
    nb, g = 2000 / math.log(2000), 1.0
    s = float((case.data[0].double() ** 2).mean())
    quad = A._quadrature_value(lambda a: 0.5 * s * a**2, 1, nb, g, 20001)
    assert quad == pytest.approx(A.finite_n_reference(case)["value"], rel=1e-6)
    assert np.isfinite(quad)
