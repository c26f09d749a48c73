"""Paired statistics, chains needed for a gain, and the expected calibration error, each checked against
numbers worked out here by hand formulas, enumeration or tables rather than by the functions under test."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import special
from scipy import stats as scipy_stats

import fakedata
from banray.catalog.models import build_model
from banray.catalog.scores import calibration_error, ensemble_scores, expected_calibration_error
from banray.results import stats
from banray.spec import parse_spec
from banray.training.tasks import LM_EVAL_BATCH_SIZE, batchify, bptt_chunks, make_task
from conftest import tiny_spec

# Eight chains' test errors (fractions). BAN-1 − Teacher = d below: distinct magnitudes, no zeros.
TEACHER = [0.030, 0.040, 0.025, 0.035, 0.028, 0.045, 0.020, 0.033]
D = [-0.003, -0.011, 0.002, -0.008, -0.005, -0.014, 0.004, -0.006]
BAN1 = [t + d for t, d in zip(TEACHER, D)]
T_975 = {1: 12.706205, 4: 2.776445, 7: 2.364624, 8: 2.306004, 9: 2.262157, 32: 2.036933, 33: 2.034515}  # t tables


def midranks(magnitudes):
    """Average ranks of `magnitudes` (1-based), tied values sharing the mean of their ranks."""
    order = sorted(magnitudes)
    return [sum(i + 1 for i, v in enumerate(order) if v == m) / order.count(m) for m in magnitudes]


def exact_signed_rank_p(differences):
    """Two-sided signed-rank p by enumerating all 2^n sign assignments of the non-zero differences' mid-ranks."""
    nonzero = [d for d in differences if abs(d) > 1e-12]
    ranks = midranks([round(abs(d), 9) for d in nonzero])
    observed = sum(r for r, d in zip(ranks, nonzero) if d > 0)
    sums = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=len(ranks))]
    below = sum(w <= observed + 1e-9 for w in sums)
    above = sum(w >= observed - 1e-9 for w in sums)
    return min(1.0, 2 * min(below, above) / len(sums))


def by_hand(differences):
    n = len(differences)
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = T_975[n - 1] * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half


def test_paired_statistics_of_a_fixed_table_match_hand_formulas():
    result = stats.paired(BAN1, TEACHER)
    mean, sd, low, high = by_hand(D)
    assert mean == pytest.approx(-0.005125)
    assert (result.n, result.better, result.tied, result.worse) == (8, 6, 0, 2)
    assert result.mean == pytest.approx(mean, abs=1e-9)
    assert result.std == pytest.approx(sd, rel=1e-6)
    assert (result.ci_low, result.ci_high) == (pytest.approx(low, abs=1e-8), pytest.approx(high, abs=1e-8))
    # Positive ranks 1 (|0.002|) and 3 (|0.004|): W+ = 4; 7 of the 256 subsets of 1..8 sum to 4 or less.
    assert exact_signed_rank_p(D) == pytest.approx(2 * 7 / 256)
    assert result.wilcoxon_p == pytest.approx(2 * 7 / 256)
    # The interval just excludes zero, so the verdict says better although the signed-rank p is 0.055.
    assert high < 0 and result.verdict == "better"
    assert stats.paired(D) == result  # differences given directly


def test_ties_and_zeros_use_the_exact_sign_flip_distribution():
    # Steps of one test image of 360; one chain tied (dropped by the test), equal magnitudes share mid-ranks.
    d = [x / 360 for x in (-1, -1, 2, -3, 0, -2, -1, -2)]
    result = stats.paired(d)
    assert (result.better, result.tied, result.worse) == (6, 1, 1)
    assert result.wilcoxon_p == pytest.approx(exact_signed_rank_p(d))
    mean, _, low, high = by_hand(d)
    assert (result.mean, result.ci_low, result.ci_high) == (
        pytest.approx(mean, abs=1e-6), pytest.approx(low, abs=1e-6), pytest.approx(high, abs=1e-6))


def test_float32_steps_of_one_sample_count_as_ties():
    teacher = [np.float32(7 / 360), np.float32(8 / 360), np.float32(6 / 360)]
    student = [np.float32(10 / 360), np.float32(11 / 360), np.float32(6 / 360)]
    result = stats.paired(student, teacher)
    assert (result.better, result.tied, result.worse) == (0, 1, 2)
    assert result.wilcoxon_p == pytest.approx(exact_signed_rank_p([3, 3, 0]))  # two tied ranks of 1.5: p = 0.5


@pytest.mark.parametrize("differences, verdict", [
    ([0.01, 0.012, 0.011, 0.009], "worse"),  # interval well above zero
    ([-0.02, -0.018, -0.022], "better"),
    ([0.01, -0.012, 0.004, -0.002], "within seed noise"),  # interval straddles zero
    ([0.03], "no claim (one chain)"),
    ([], "no data"),
    ([-1 / 360, -1 / 360], "within seed noise"),  # zero spread: the t interval is empty of meaning, p = 0.5
    ([-1 / 360] * 6, "better"),  # zero spread but p = 2/64 < 0.05
])
def test_verdicts_follow_the_interval(differences, verdict):
    result = stats.paired(differences)
    assert result.verdict == verdict
    if len(differences) >= 2 and np.ptp(differences) > 0:
        assert (result.ci_low > 0 or result.ci_high < 0) == (verdict in ("better", "worse"))
    if len(differences) < 2:
        assert result.ci_low is None and result.wilcoxon_p is None


def test_all_tied_chains_have_no_signed_rank_p():
    result = stats.paired([0.02, 0.03], [0.02, 0.03])
    assert (result.tied, result.mean, result.std, result.wilcoxon_p, result.verdict) == (2, 0, 0, None, "within seed noise")


def t_test_p_by_hand(differences):
    """Two-sided p of the one-sample t statistic mean / (sd / sqrt(n)), from the t distribution's survival function."""
    n = len(differences)
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    return 2 * scipy_stats.t.sf(abs(mean / (sd / math.sqrt(n))), n - 1)


def test_t_p_is_the_paired_t_tests_p():
    result = stats.paired(BAN1, TEACHER)
    # t = −0.005125 / (sd / √8) with sd 0.0061163…: |t| ≈ 2.370, just past t_{0.975, 7} = 2.3646, so p just under 0.05.
    assert result.t_p == pytest.approx(t_test_p_by_hand(D), rel=1e-6)
    assert 0.049 < result.t_p < 0.05 and result.verdict == "better"
    d = [x / 360 for x in (-1, -1, 2, -3, 0, -2, -1, -2)]
    assert stats.paired(d).t_p == pytest.approx(t_test_p_by_hand(d), rel=1e-6)
    assert stats.paired([0.01, -0.012, 0.004, -0.002]).t_p == pytest.approx(
        t_test_p_by_hand([0.01, -0.012, 0.004, -0.002]), rel=1e-6)
    two = [0.01, 0.03]  # 1 df: t = 0.02 / (0.0141421 / √2) = 2, p = 1 − 2·atan(2)/π
    assert stats.paired(two).t_p == pytest.approx(1 - 2 * math.atan(2) / math.pi, rel=1e-9)
    assert stats.paired([0.03]).t_p is None and stats.paired([]).t_p is None


@pytest.mark.parametrize("differences, t_p, verdict", [
    ([-1 / 360] * 2, 0.5, "within seed noise"),  # every chain the same step: the signed-rank p, 2/4
    ([-1 / 360] * 6, 2 / 64, "better"),
    ([2 / 360] * 5, 2 / 32, "within seed noise"),
    ([0.0, 0.0, 0.0], 1.0, "within seed noise"),  # no difference at all: no signed-rank p, t_p 1
])
def test_t_p_with_zero_spread_is_the_signed_rank_p_the_verdict_rests_on(differences, t_p, verdict):
    result = stats.paired(differences)
    assert result.t_p == pytest.approx(t_p) and result.verdict == verdict
    assert result.wilcoxon_p == (None if t_p == 1.0 else pytest.approx(t_p))
    assert (result.t_p < stats.ALPHA) == (verdict in ("better", "worse"))


def test_t_p_below_alpha_exactly_when_the_interval_excludes_zero_on_random_data():
    rng = np.random.default_rng(20240601)
    outcomes = set()
    for _ in range(3000):
        n = int(rng.integers(2, 13))
        differences = rng.normal(rng.normal(0, 1.5), rng.uniform(0.2, 3.0), n) / 100
        result = stats.paired(differences)
        excludes = result.ci_low > 0 or result.ci_high < 0
        assert excludes == (result.t_p < 0.05)
        assert excludes == (result.verdict in ("better", "worse"))
        assert result.t_p == pytest.approx(t_test_p_by_hand(list(differences)), rel=1e-9)
        outcomes.add((n, excludes))
    assert {excludes for _, excludes in outcomes} == {True, False}
    assert {n for n, excludes in outcomes if excludes} == set(range(2, 13))  # a claim was reached at every n


def holm_by_hand(p_values):
    """Holm's adjusted p-values by numpy: sort the present ones (ties in the order given), multiply the i-th
    (from 1) of m by m − i + 1, carry the running maximum, cap at 1, put them back; None stays None."""
    present = np.array([i for i, p in enumerate(p_values) if p is not None], dtype=int)
    out = [None] * len(p_values)
    if len(present) == 0:
        return out
    p = np.array([p_values[i] for i in present], dtype=float)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    for position, value in zip(present[order], adjusted):
        out[position] = float(value)
    return out


def holm_rejects(p_values, alpha):
    """Holm's step-down test: walk the present p-values up from the smallest, rejecting while p_(i) ≤ α / (m − i + 1)."""
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m, rejected = len(present), set()
    for rank, (p, i) in enumerate(present, start=1):
        if p > alpha / (m - rank + 1):
            break
        rejected.add(i)
    return rejected


HOLM_FAMILIES = [
    # (p-values, Holm-adjusted p-values worked out by hand)
    ([0.01, 0.04, 0.03], [0.03, 0.06, 0.06]),  # 3·0.01; 2·0.03; max(0.06, 1·0.04)
    ([0.02, 0.02, 0.5], [0.06, 0.06, 0.5]),  # a tie: 3·0.02, then max(0.06, 2·0.02) — tied values stay tied
    ([None, 0.01, None, 0.04], [None, 0.02, None, 0.04]),  # Nones do not count: m = 2
    ([0.3, 0.6, 0.9, 0.2], [0.9, 1.0, 1.0, 0.8]),  # 4·0.2 = 0.8; 3·0.3 = 0.9; 2·0.6 = 1.2, capped at 1; 0.9 carries 1
    ([0.5, 0.7], [1.0, 1.0]),  # 2·0.5 = 1.0 hits the cap; 0.7 carries it
    ([0.04], [0.04]),  # a family of one is left alone
    ([None, None], [None, None]),
    ([], []),
    ([0.0, 0.001, 0.001, 0.04, None, 0.2], [0.0, 0.004, 0.004, 0.08, None, 0.2]),  # m = 5; 3·0.001 carries 0.004
]


@pytest.mark.parametrize("p_values, expected", HOLM_FAMILIES)
def test_holm_matches_hand_worked_families(p_values, expected):
    adjusted = stats.holm(p_values)
    assert adjusted == [None if e is None else pytest.approx(e, abs=1e-12) for e in expected]
    assert holm_by_hand(p_values) == [None if e is None else pytest.approx(e, abs=1e-12) for e in expected]


def test_holm_against_numpy_and_the_step_down_test_on_random_families():
    rng = np.random.default_rng(7)
    for _ in range(500):
        m = int(rng.integers(1, 9))
        # Some p-values repeat (ties), some are None, some are large enough to reach the cap.
        pool = list(np.round(rng.uniform(0, 1, m) ** 3, 3))
        p_values = [None if rng.uniform() < 0.2 else float(pool[int(rng.integers(0, m))]) for _ in range(m)]
        adjusted = stats.holm(p_values)
        assert adjusted == [None if e is None else pytest.approx(e, abs=1e-12) for e in holm_by_hand(p_values)]
        for p, a in zip(p_values, adjusted):
            assert (p is None) == (a is None)
            if p is not None:
                assert p <= a <= 1.0
        for (p, a), (q, b) in itertools.combinations([(p, a) for p, a in zip(p_values, adjusted) if p is not None], 2):
            assert (p < q and a <= b) or (p > q and a >= b) or (p == q and a == b)  # order kept, ties tied
        for alpha in (0.01, 0.05, 0.1):
            # adjusted ≤ α exactly where Holm's step-down test rejects at α
            assert {i for i, a in enumerate(adjusted) if a is not None and a <= alpha} == holm_rejects(p_values, alpha)


def test_adjusted_verdict_keeps_a_claim_only_below_alpha_after_adjustment():
    better = stats.paired(D)  # t_p just under 0.05
    assert better.verdict == "better"
    assert stats.adjusted_verdict(better, better.t_p) == "better"  # a family of one
    assert stats.adjusted_verdict(better, 0.05) == "within seed noise"
    assert stats.adjusted_verdict(better, None) == "within seed noise"
    worse = stats.paired([0.01, 0.012, 0.011, 0.009])
    assert stats.adjusted_verdict(worse, 0.001) == "worse"
    noise = stats.paired([0.01, -0.012, 0.004, -0.002])
    assert stats.adjusted_verdict(noise, 0.001) == "within seed noise"  # an adjustment never creates a claim
    assert stats.adjusted_verdict(stats.paired([0.03]), None) == "no claim (one chain)"
    assert stats.adjusted_verdict(stats.paired([]), None) == "no data"
    # Three comparisons read as a family: the clear one (smallest p, times 3) stays, BAN-1's p just under 0.05
    # comes second and doubles past it, the noisy one stays noise.
    family = [better, worse, noise]
    assert worse.t_p < better.t_p < noise.t_p and 3 * worse.t_p < 2 * better.t_p
    adjusted = stats.holm([p.t_p for p in family])
    assert adjusted[:2] == [pytest.approx(2 * better.t_p), pytest.approx(3 * worse.t_p)]
    assert [stats.adjusted_verdict(p, a) for p, a in zip(family, adjusted)] == ["within seed noise", "worse",
                                                                                "within seed noise"]


def test_adjusted_verdict_with_zero_spread_rests_on_the_signed_rank_p():
    # Every one of six chains one test image better: the interval has no width, t_p is the signed-rank 2/64.
    same_step = stats.paired([-1 / 360] * 6)
    assert (same_step.verdict, same_step.t_p) == ("better", pytest.approx(2 / 64))
    assert stats.adjusted_verdict(same_step, stats.holm([same_step.t_p])[0]) == "better"
    # In a family of two its 2/64 doubles to 0.0625: no longer a claim.
    adjusted = stats.holm([same_step.t_p, 0.5])
    assert adjusted[0] == pytest.approx(2 * 2 / 64)
    assert stats.adjusted_verdict(same_step, adjusted[0]) == "within seed noise"
    # Two chains with the same step: the interval excludes zero, but that says nothing; no adjusted p revives it.
    two = stats.paired([-1 / 360] * 2)
    assert two.ci_high <= 0 and two.verdict == "within seed noise" and two.t_p == pytest.approx(0.5)
    assert stats.adjusted_verdict(two, 0.0) == "within seed noise"


def test_minimum_chains_for_any_claim_is_where_2_over_2_to_the_n_drops_below_alpha():
    assert stats.minimum_chains_for_any_claim() == 6
    assert exact_signed_rank_p([-1] * 5) == pytest.approx(2 / 32) and exact_signed_rank_p([-1] * 6) == pytest.approx(2 / 64)
    assert stats.minimum_chains_for_any_claim(0.01) == 8  # 2/128 = 0.0156 ≥ 0.01 > 2/256


def t_test_power_by_quadrature(n, effect, sd):
    """P(|T| > t_crit) for T = (Z + λ) / sqrt(V / ν), V ~ χ²_ν, integrated over V on a grid."""
    nu, lam, crit = n - 1, effect * math.sqrt(n) / sd, T_975[n - 1]
    v = np.linspace(1e-9, nu + 60 * math.sqrt(2 * nu) + 60, 200_001)
    density = np.exp((nu / 2 - 1) * np.log(v) - v / 2 - (nu / 2) * math.log(2) - math.lgamma(nu / 2))
    phi = np.vectorize(lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2))))
    scaled = crit * np.sqrt(v / nu)
    return float(np.trapezoid((phi(lam - scaled) + phi(-lam - scaled)) * density, v))


@pytest.mark.parametrize("effect, sd, expected", [(1.0, 1.0, 10), (0.5, 1.0, 34)])  # G*Power's paired-t numbers
def test_chains_needed_for_80_percent_power(effect, sd, expected):
    assert stats.chains_needed(effect, sd) == expected
    assert t_test_power_by_quadrature(expected, effect, sd) >= 0.8 > t_test_power_by_quadrature(expected - 1, effect, sd)
    assert stats.power(expected, effect, sd) == pytest.approx(t_test_power_by_quadrature(expected, effect, sd), abs=1e-4)
    normal = ((1.959964 + 0.841621) * sd / effect) ** 2  # the normal approximation asks for fewer
    assert normal < expected < normal + 3
    assert stats.chains_needed(5 * effect, 5 * sd) == expected  # only the ratio matters


def power_of_two_chains(effect, sd):
    """Exact power with n = 2 (a Cauchy-like t with 1 df) by Owen's T: T = (Z + λ) / |W|, and the event
    |T| > c splits into two bivariate-normal orthants, giving 1 − 4·T(λ / sqrt(1 + c²), c)."""
    c, lam = scipy_stats.t.ppf(0.975, 1), effect * math.sqrt(2) / sd  # T_975[1] is rounded
    return 1 - 4 * float(special.owens_t(lam / math.sqrt(1 + c * c), c))


GRID_N = range(2, 7)
GRID_EFFECT = np.geomspace(0.01, 50, 120)  # effect / sd


def test_power_of_two_chains_matches_owens_closed_form_where_scipy_nct_fails():
    assert power_of_two_chains(0.0, 1.0) == pytest.approx(0.05, abs=1e-12)  # the test's size
    c = scipy_stats.t.ppf(0.975, 1)
    assert math.isnan(scipy_stats.nct.cdf(-c, 1, 8 * math.sqrt(2)))  # why power has a fallback
    assert stats.power(2, 8.0, 1.0) == pytest.approx(0.625278, abs=1e-6)
    for effect in (0.3, 1.0, 4.0, 8.0, 16.0, 50.0):
        assert stats.power(2, effect, 1.0) == pytest.approx(power_of_two_chains(effect, 1.0), abs=1e-9)


def test_quadrature_tail_matches_scipy_nct_wherever_that_is_finite():
    checked = 0
    for df in (1, 2, 3, 5, 30):
        c = scipy_stats.t.ppf(0.975, df)
        for shift in (-3.0, 0.0, 0.5, 2.0, 6.0, 12.0, 40.0):
            for x, upper in ((c, True), (-c, False)):
                scipy_value = scipy_stats.nct.sf(x, df, shift) if upper else scipy_stats.nct.cdf(x, df, shift)
                if np.isfinite(scipy_value):
                    checked += 1
                    assert stats.noncentral_t_tail(x, df, shift, upper) == pytest.approx(scipy_value, abs=1e-9)
    assert checked > 60


def test_power_is_finite_and_monotone_and_unchanged_where_scipy_was_finite():
    table = np.array([[stats.power(n, e, 1.0) for e in GRID_EFFECT] for n in GRID_N])
    assert np.all(np.isfinite(table)) and np.all((table >= 0.05 - 1e-12) & (table <= 1))
    # nct and the quadrature agree to ~1e-12, so where they meet a step may go down by that much.
    assert np.all(np.diff(table, axis=1) >= -1e-11) and np.all(np.diff(table, axis=0) >= -1e-11)
    for i, n in enumerate(GRID_N):
        c, shifts = scipy_stats.t.ppf(0.975, n - 1), GRID_EFFECT * math.sqrt(n)
        old = scipy_stats.nct.sf(c, n - 1, shifts) + scipy_stats.nct.cdf(-c, n - 1, shifts)
        finite = np.isfinite(old)
        assert table[i][finite] == pytest.approx(old[finite], abs=1e-15)  # the plain formula, wherever it worked
    assert stats.power(3, 8.0, 2.0) == stats.power(3, 4.0, 1.0) and stats.power(4, -2.0, 1.0) == pytest.approx(
        stats.power(4, 2.0, 1.0), abs=1e-12)
    with pytest.raises(ValueError, match="at least 2 chains"):
        stats.power(1, 1.0, 1.0)


def test_chains_needed_is_three_where_two_chains_fall_short():
    assert stats.power(2, 8.0, 1.0) < 0.8 <= stats.power(3, 8.0, 1.0)
    assert stats.chains_needed(8.0, 1.0) == 3 and stats.chains_needed(16.0, 2.0) == 3
    assert power_of_two_chains(50.0, 1.0) > 0.8 and stats.chains_needed(50.0, 1.0) == 2
    needed = [stats.chains_needed(e, 1.0) for e in GRID_EFFECT[GRID_EFFECT > 0.3]]
    assert needed == sorted(needed, reverse=True)  # more effect never needs more chains


def test_sd_upper_bound_from_the_chi_square_quantile():
    assert stats.sd_upper_bound(0.2, 2) == pytest.approx(0.2 / math.sqrt(0.0641848), rel=1e-5)  # χ²(1) 20% quantile
    assert stats.sd_upper_bound(1.0, 11) == pytest.approx(math.sqrt(10 / 6.179079), rel=1e-5)  # χ²(10)


def test_ece_of_a_hand_computed_example():
    probs = torch.tensor([[0.95, 0.05], [0.05, 0.95], [0.62, 0.38], [0.35, 0.65], [0.75, 0.25]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    # Bins of width 1/15: (14/15, 1] holds 0.95 (right) and 0.95 (wrong); (9/15, 10/15] holds 0.62 and 0.65,
    # both right; (11/15, 12/15] holds 0.75, wrong.
    expected = 2 / 5 * abs(0.5 - 0.95) + 2 / 5 * abs(1 - 0.635) + 1 / 5 * abs(0 - 0.75)
    assert expected == pytest.approx(0.476)
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-6)


def test_ece_bins_are_closed_on_the_right():
    # Two bins: 0.5 falls in (0, 0.5] and 0.6 in (0.5, 1], so nothing cancels: (|1 − 0.5| + |0 − 0.6|) / 2.
    confidence, correct = torch.tensor([0.5, 0.6]), torch.tensor([True, False])
    assert calibration_error(confidence, correct, bins=2) == pytest.approx(0.55)
    assert calibration_error(torch.tensor([1.0, 0.0]), torch.tensor([True, False]), bins=15) == pytest.approx(0.0)


def test_ensembles_and_tasks_report_ece():
    members = [torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([[0.7, 0.3], [0.6, 0.4]])]
    labels = torch.tensor([0, 0])
    scores = ensemble_scores(members, labels)
    assert scores.ece == pytest.approx(expected_calibration_error(torch.tensor([[0.8, 0.2], [0.4, 0.6]]), labels))

    spec = parse_spec(tiny_spec())
    task = make_task(spec.data, spec.train)
    torch.manual_seed(0)
    model = build_model("cnn", num_classes=task.num_classes, input_shape=task.input_shape, width=8)
    probs, labels = task.predict(model, "test")
    assert task.score(model, "test").ece == pytest.approx(expected_calibration_error(probs, labels), abs=1e-6)


def test_language_models_report_token_level_ece(tmp_path):
    fakedata.write_ptb(tmp_path)
    spec = parse_spec(tiny_spec(data={"dataset": "ptb", "root": str(tmp_path)},
                                model={"arch": "lstm_lm", "kwargs": {"hidden": 16, "dropout": 0.0}},
                                train={"epochs": 1, "batch_size": 8, "lr": 1.0, "bptt": 10}, search={"metric": "val_nll"}))
    task = make_task(spec.data, spec.train)
    torch.manual_seed(0)
    model = build_model("lstm_lm", num_classes=task.num_classes, input_shape=task.input_shape, hidden=16, dropout=0.0)
    model.eval()
    probs, targets, state = [], [], None
    with torch.inference_mode():
        for x, y in bptt_chunks(batchify(task.corpus.test, LM_EVAL_BATCH_SIZE), task.bptt):
            logits, state = model(x, state)
            probs.append(torch.softmax(logits.reshape(-1, task.num_classes), dim=1))
            targets.append(y.reshape(-1))
    scores = task.score(model, "test")
    assert scores.ece == pytest.approx(expected_calibration_error(torch.cat(probs), torch.cat(targets)), abs=1e-5)
