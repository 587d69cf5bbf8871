"""Binomial intervals and the exact McNemar test against closed forms, published values and,
when it is installed, scipy."""

import math

import numpy as np
import pytest

from helpers.evaluation import stats


def test_clopper_pearson_edges_have_closed_forms():
    # k = 0: high = 1 - (alpha/2)^(1/n); k = n: low = (alpha/2)^(1/n)
    assert stats.clopper_pearson_interval(0, 50) == (0.0, pytest.approx(1 - 0.025 ** (1 / 50)))
    low, high = stats.clopper_pearson_interval(50, 50)
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 50))


def test_clopper_pearson_matches_published_values():
    # R: binom.test(7, 10)$conf.int and binom.test(5, 20)$conf.int
    assert stats.clopper_pearson_interval(7, 10) == pytest.approx((0.3475471, 0.9332605), abs=1e-7)
    assert stats.clopper_pearson_interval(5, 20) == pytest.approx((0.0865715, 0.4910459), abs=1e-7)


def test_wilson_formula_and_edges():
    z = 1.959963984540054
    low, high = stats.wilson_interval(0, 50)
    assert low == 0.0 and high == pytest.approx(z * z / (50 + z * z))  # k = 0 closed form
    low, high = stats.wilson_interval(50, 50)
    assert high == 1.0 and low == pytest.approx(50 / (50 + z * z))
    # 7/10, the score interval written out (Wilson 1927, as in Agresti and Coull 1998)
    p, n = 0.7, 10
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert stats.wilson_interval(7, 10) == pytest.approx((centre - half, centre + half))
    assert stats.wilson_interval(7, 10) == pytest.approx((0.3968, 0.8922), abs=1e-4)


def test_intervals_against_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for k, n in [(0, 7), (1, 7), (3, 50), (25, 50), (49, 50), (120, 240)]:
        ci = scipy_stats.binomtest(k, n).proportion_ci(0.95, method="exact")
        assert stats.clopper_pearson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
        ci = scipy_stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert stats.wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_mcnemar_exact_known_values():
    a = np.array([1, 1, 1, 1] + [0] * 20 + [1] * 26)
    b = np.array([0, 0, 0, 0] + [0] * 20 + [1] * 26)
    result = stats.mcnemar_exact(a, b)
    assert (result["a_only"], result["b_only"], result["discordant"]) == (4, 0, 4)
    assert result["p_value"] == 0.125  # 2 * (1/2)^4
    # b = 9, c = 1: p = 2 * (1 + 10) / 2^10
    a = np.array([1] * 9 + [0] + [1] * 5)
    b = np.array([0] * 9 + [1] + [1] * 5)
    assert stats.mcnemar_exact(a, b)["p_value"] == pytest.approx(22 / 1024)
    assert stats.mcnemar_exact(b, a)["p_value"] == pytest.approx(22 / 1024)  # symmetric
    assert stats.mcnemar_exact(a, a)["p_value"] == 1.0  # no discordant pair


def test_paired_verdict_says_who_won_only_when_the_test_does():
    # 9 examples only A gets right, 1 only B: p = 22/1024 < 0.05, A better; the other way, worse
    a = np.array([1] * 9 + [0] + [1] * 5)
    b = np.array([0] * 9 + [1] + [1] * 5)
    assert stats.paired_verdict(a, b) == {**stats.mcnemar_exact(a, b), "verdict": "better"}
    assert stats.paired_verdict(b, a)["verdict"] == "worse"
    # the same split at a stricter level, 4 to 0 (p = 0.125), and a tie (p = 1): nothing shown
    assert stats.paired_verdict(a, b, alpha=0.01)["verdict"] == "no difference detected"
    a4 = np.array([1, 1, 1, 1, 0, 1])
    b4 = np.array([0, 0, 0, 0, 0, 1])
    assert stats.paired_verdict(a4, b4)["verdict"] == "no difference detected"
    tie = stats.paired_verdict([1, 0, 1, 0], [0, 1, 0, 1])
    assert (tie["a_only"], tie["b_only"], tie["verdict"]) == (2, 2, "no difference detected")
    # p exactly at alpha is not below it: 4 to 0 gives p = 0.125
    assert stats.paired_verdict(a4, b4, alpha=0.125)["verdict"] == "no difference detected"
    assert stats.paired_verdict(a4, b4, alpha=0.13)["verdict"] == "better"
    with pytest.raises(ValueError, match="alpha"):
        stats.paired_verdict(a4, b4, alpha=5)


def test_mcnemar_against_scipy_binomtest():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.integers(0, 2, 60), rng.integers(0, 2, 60)
        r = stats.mcnemar_exact(a, b)
        expected = scipy_stats.binomtest(r["a_only"], r["discordant"], 0.5).pvalue
        assert r["p_value"] == pytest.approx(expected, rel=1e-12)


def test_proportion_interval():
    est, low, high = stats.proportion_interval(np.zeros(50, dtype=bool))
    assert est == 0.0 and low == 0.0 and high > 0.05  # not [0, 0] like a bootstrap
    est, low, high = stats.proportion_interval([1, 0, 1, 1], method="clopper-pearson")
    assert est == 0.75 and (low, high) == stats.clopper_pearson_interval(3, 4)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda: stats.wilson_interval(6, 5), ValueError),
        (lambda: stats.wilson_interval(-1, 5), ValueError),
        (lambda: stats.clopper_pearson_interval(1, 0), ValueError),
        (lambda: stats.clopper_pearson_interval(1.5, 4), TypeError),
        (lambda: stats.wilson_interval(True, 4), TypeError),
        (lambda: stats.wilson_interval(1, 4, confidence=95), ValueError),
        (lambda: stats.proportion_interval([]), ValueError),
        (lambda: stats.proportion_interval([0, 2]), ValueError),
        (lambda: stats.proportion_interval([0, 1], method="wald"), ValueError),
        (lambda: stats.mcnemar_exact([0, 1], [0, 1, 1]), ValueError),
        (lambda: stats.mcnemar_exact([0, 3], [0, 1]), ValueError),
    ],
)
def test_bad_input_is_refused(call, error):
    with pytest.raises(error):
        call()
