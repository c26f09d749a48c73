"""Paired statistics over chains, and how many chains a sweep needs.

Every chain is one seed of the whole recipe, so a generation is compared with the teacher *of the same
chain*: the paired difference (generation − teacher, lower is better for error, NLL and ECE) cancels
what the chain's data order and teacher share. Over chains we report the mean difference with its 95%
Student-t interval, how many chains got better / tied / worse, and the two-sided Wilcoxon signed-rank
p-value, and call an effect only when the interval excludes zero.

A sweep that names one primary comparison in advance can read its verdict as it stands; one that reads
several comparisons as a family adjusts their p-values (`t_p`, the paired t-test's, which agrees with the
interval) with `holm` and reads `adjusted_verdict`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import integrate, stats

ALPHA = 0.05  # two-sided
CONFIDENCE = 1 - ALPHA
POWER = 0.8
# Differences are rounded to this many decimals before they are counted, ranked or compared: errors are
# float32 counts / test size, so equal steps of one test sample differ by ~1e-9 in float, while one sample
# of a 10,000-sample test set is 1e-4. Equal steps then tie (mid-ranks) and a zero step is a tied chain.
DECIMALS = 6

BETTER, WORSE, NOISE, ONE_CHAIN, NO_DATA = "better", "worse", "within seed noise", "no claim (one chain)", "no data"


@dataclass(frozen=True)
class Paired:
    """Paired differences (value − baseline) over chains."""

    n: int
    mean: float | None
    std: float | None  # sample standard deviation (ddof = 1) of the differences
    ci_low: float | None  # 95% Student-t interval of the mean difference
    ci_high: float | None
    better: int  # chains whose difference is negative (lower error is better)
    tied: int
    worse: int
    wilcoxon_p: float | None  # two-sided signed-rank test; None with < 2 chains or no non-zero difference
    # Two-sided paired t-test of mean difference 0, the p that agrees with the interval: with spread, the 95%
    # interval excludes 0 exactly when t_p < 0.05. With zero spread (every chain the same step) the t statistic
    # is ±inf or 0/0 and says nothing about noise, so, as the verdict does, t_p falls back to the signed-rank
    # test: t_p = wilcoxon_p, or 1.0 when every difference is zero. Either way the verdict is better or worse
    # exactly when t_p < ALPHA. None with < 2 chains.
    t_p: float | None
    verdict: str  # better / worse / within seed noise / no claim (one chain) / no data


def paired(values: Sequence[float], baseline: Sequence[float] | None = None) -> Paired:
    """Paired statistics of `values − baseline`, or of `values` taken as the differences themselves.

    The verdict is 'better' or 'worse' only when the t interval excludes zero. When every chain shows
    the very same difference (zero spread, common with errors that move in steps of one test sample),
    the interval has zero width and says nothing about noise; the verdict then also needs the
    signed-rank test's p < 0.05, which an exact test reaches only from `minimum_chains_for_any_claim()`
    chains on.
    """
    d = np.asarray(values, dtype=float) - (0.0 if baseline is None else np.asarray(baseline, dtype=float))
    steps = np.round(d, DECIMALS)
    n = len(d)
    better, tied, worse = int((steps < 0).sum()), int((steps == 0).sum()), int((steps > 0).sum())
    if n == 0:
        return Paired(0, None, None, None, None, 0, 0, 0, None, None, NO_DATA)
    mean = float(d.mean())
    if n == 1:
        return Paired(1, mean, None, None, None, better, tied, worse, None, None, ONE_CHAIN)
    std = float(d.std(ddof=1))
    half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    p = None
    if better + worse:
        # 'auto': the exact null distribution without ties or zeros, else (n ≤ 13) all 2^n sign flips
        # of the mid-ranks, else the normal approximation; zeros are dropped (Wilcoxon's convention).
        p = float(stats.wilcoxon(steps, zero_method="wilcox", alternative="two-sided", method="auto").pvalue)
    excludes_zero = low > 0 or high < 0
    if np.all(steps == steps[0]):
        excludes_zero = excludes_zero and p is not None and p < ALPHA
        t_p = 1.0 if p is None else p  # zero spread: see Paired.t_p
    else:
        t_p = float(2 * stats.t.sf(abs(mean) / (std / math.sqrt(n)), n - 1))
    verdict = (WORSE if mean > 0 else BETTER) if excludes_zero else NOISE
    return Paired(n, mean, std, low, high, better, tied, worse, p, t_p, verdict)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni step-down adjusted p-values, in the order given. The m p-values that are not None form
    the family; sorted ascending, the i-th (from 0) is multiplied by m − i, each adjusted value is the largest
    of those products up to its own (so the order of the p-values is kept) and capped at 1. A None (a
    comparison with no test) stays None and does not count in m. Calling effects only where the adjusted p < α
    controls the family-wise error rate at α under any dependence between the comparisons."""
    present = [(p, i) for i, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    m, running = len(present), 0.0
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def adjusted_verdict(paired: Paired, adjusted_p: float | None) -> str:
    """The paired verdict once its p-value is adjusted for the family it is read in (`adjusted_p`, from `holm`
    of the family's `t_p`): better or worse is kept only when adjusted_p < ALPHA, else within seed noise. No
    data and one chain keep their verdicts; a comparison without a p-value makes no claim. A within-seed-noise
    verdict never turns into a claim, whatever the adjusted p, so zero spread still needs the signed-rank
    test (its t_p is the signed-rank p) and a wide interval is never overruled."""
    if paired.verdict in (NO_DATA, ONE_CHAIN):
        return paired.verdict
    if paired.verdict in (BETTER, WORSE) and adjusted_p is not None and adjusted_p < ALPHA:
        return paired.verdict
    return NOISE


def minimum_chains_for_any_claim(alpha: float = ALPHA) -> int:
    """The fewest chains with which the exact two-sided signed-rank test can reach p < alpha.

    With n chains its smallest p-value is 2 / 2^n (every chain moved the same way), so at alpha = 0.05
    it needs 6 chains (2/32 = 0.0625 with 5, 2/64 = 0.031 with 6). The t interval exists from 2 chains,
    but below this number any claim rests on the differences being normally distributed alone.
    """
    return math.floor(1 - math.log2(alpha)) + 1


def power(n: int, effect: float, sd: float, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test with n chains against a true mean difference `effect`, when
    paired differences have standard deviation `sd` (exact, from the noncentral t distribution; a tail
    scipy cannot evaluate is integrated numerically, within ~1e-12 of scipy wherever scipy is finite)."""
    if n < 2:
        raise ValueError(f"the paired t-test needs at least 2 chains, got n={n}")
    df = n - 1
    critical = float(stats.t.ppf(1 - alpha / 2, df))
    shift = effect / (sd / math.sqrt(n))
    upper = float(stats.nct.sf(critical, df, shift))
    lower = float(stats.nct.cdf(-critical, df, shift))
    # scipy's nct returns NaN for some (df, shift), mostly in the far lower tail (n = 2, effect/sd = 8 among
    # them); a NaN compares False against the target and would stop chains_needed a chain too early.
    if not math.isfinite(upper):
        upper = noncentral_t_tail(critical, df, shift, upper=True)
    if not math.isfinite(lower):
        lower = noncentral_t_tail(-critical, df, shift, upper=False)
    return min(1.0, upper + lower)


def noncentral_t_tail(x: float, df: int, shift: float, upper: bool) -> float:
    """P(T > x) if `upper` else P(T < x), for T noncentral t with `df` degrees of freedom and noncentrality
    `shift`, by quadrature: T = (Z + shift) / S with S = sqrt(χ²_df / df), so P(T < x) = E[Φ(x·S − shift)].

    The density of S is written out (a frozen scipy pdf per point is slow) and the integral runs between
    S's 1e-16 and 1 − 1e-16 quantiles, so at most 2e-16 of probability is left out.
    """
    chi = stats.chi(df, scale=1 / math.sqrt(df))
    low, high = float(chi.ppf(1e-16)), float(chi.isf(1e-16))
    log_scale = math.log(2) + df / 2 * math.log(df / 2) - math.lgamma(df / 2)
    sign = 1.0 if upper else -1.0

    def integrand(s: float) -> float:
        density = math.exp(log_scale + (df - 1) * math.log(s) - df * s * s / 2)
        return density * 0.5 * math.erfc(sign * (x * s - shift) / math.sqrt(2))  # Φ(∓(x·s − shift))

    # Break points where the integrand turns: Φ's step at x·s = shift, and the bulk of S's density.
    points = sorted(p for p in (shift / x if x else 0.0, float(chi.median())) if low < p < high)
    value, _ = integrate.quad(integrand, low, high, points=points, epsabs=1e-13, epsrel=1e-10, limit=200)
    return min(1.0, max(0.0, value))


def chains_needed(effect: float, sd: float, target: float = POWER, alpha: float = ALPHA) -> int:
    """The fewest chains (≥ 2) whose paired t-test detects a mean difference `effect` with probability
    `target`, for paired differences of standard deviation `sd` (same unit as `effect`).

    Exact t-based: the smallest n at which `power` reaches the target. The search starts below the
    normal approximation n ≈ ((z_{1−α/2} + z_power) · sd / effect)², which never asks for more chains
    than the t-test needs, and steps up from there.
    """
    if effect <= 0 or sd <= 0:
        raise ValueError(f"effect and sd must be positive, got effect={effect}, sd={sd}")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(target)
    n = max(2, math.floor((z * sd / effect) ** 2))
    while power(n, effect, sd, alpha) < target:
        n += 1
    return n


def sd_upper_bound(sd: float, n: int, confidence: float = POWER) -> float:
    """One-sided upper confidence bound of a standard deviation estimated from n values (chi-square):
    a spread measured on few chains is itself rough, and planning with it alone asks for too few."""
    return sd * math.sqrt((n - 1) / stats.chi2.ppf(1 - confidence, n - 1))
