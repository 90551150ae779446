"""Evaluation metrics for transfer studies: numpy in, numpy out.

Array layouts are stated per function. Scores follow rliable's convention: a score matrix
is ``num_runs x num_tasks``.
"""

from __future__ import annotations

import math

import numpy as np

#: Random-policy and human scores per game (Mnih et al. 2015; Badia et al. 2020 tables),
#: used for human-normalised scores: (score - random) / (human - random).
ATARI_SCORES: dict[str, tuple[float, float]] = {
    "Alien": (227.8, 7127.7),
    "Asterix": (210.0, 8503.3),
    "Assault": (222.4, 742.0),
    "BeamRider": (363.9, 16926.5),
    "Boxing": (0.1, 12.1),
    "Breakout": (1.7, 30.5),
    "Enduro": (0.0, 860.5),
    "Freeway": (0.0, 29.6),
    "MsPacman": (307.3, 6951.6),
    "Pong": (-20.7, 14.6),
    "Qbert": (163.9, 13455.0),
    "RoadRunner": (11.5, 7845.0),
    "Seaquest": (68.4, 42054.7),
    "SpaceInvaders": (148.0, 1668.7),
}


def human_normalised(score: float | np.ndarray, game: str) -> float | np.ndarray:
    """``(score - random) / (human - random)``; NaN for a game without reference scores."""
    if game not in ATARI_SCORES:
        return np.full_like(np.asarray(score, dtype=float), np.nan) if np.ndim(score) else math.nan
    random, human = ATARI_SCORES[game]
    return (np.asarray(score, dtype=float) - random) / (human - random) if np.ndim(score) else (score - random) / (human - random)


def area_under_curve(steps: np.ndarray, returns: np.ndarray) -> float:
    """Mean return over training: the trapezoid area under ``returns`` against ``steps``,
    divided by the step span (so it reads in return units).

    :param steps: ``(n_evals,)`` increasing agent steps.
    :param returns: ``(n_evals,)`` mean evaluation return at each step.
    """
    steps, returns = np.asarray(steps, dtype=float), np.asarray(returns, dtype=float)
    if steps.size == 0:
        return math.nan
    if steps.size == 1:
        return float(returns[0])
    return float(np.trapezoid(returns, steps) / (steps[-1] - steps[0]))


def steps_to_threshold(steps: np.ndarray, returns: np.ndarray, threshold: float) -> float:
    """First evaluation step whose mean return reaches ``threshold``; NaN if none does.

    :param steps: ``(n_evals,)``; :param returns: ``(n_evals,)``.
    """
    if threshold is None or not np.isfinite(threshold):
        return math.nan
    hit = np.nonzero(np.asarray(returns, dtype=float) >= threshold)[0]
    return float(np.asarray(steps)[hit[0]]) if hit.size else math.nan


def iqm_with_interval(score_matrices: dict[str, np.ndarray], reps: int = 2000, seed: int = 0
                      ) -> dict[str, tuple[float, float, float]]:
    """IQM and its 95% stratified-bootstrap interval per method (rliable).

    :param score_matrices: method -> ``(num_runs, num_tasks)`` scores.
    :return: method -> ``(iqm, low, high)``.
    """
    from rliable import library as rly
    from rliable import metrics

    # rliable's StratifiedBootstrap draws its resamples from numpy's global generator (update_indices calls
    # np.random.choice, whatever random_state says): seed it for a repeatable interval, and hand the caller's
    # state back afterwards.
    outer = np.random.get_state()
    np.random.seed(seed)
    try:
        point, intervals = rly.get_interval_estimates(
            {m: np.asarray(s, dtype=float) for m, s in score_matrices.items()},
            lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps)
    finally:
        np.random.set_state(outer)
    return {m: (float(point[m][0]), float(intervals[m][0, 0]), float(intervals[m][1, 0])) for m in score_matrices}


def difference_interval(a: np.ndarray, b: np.ndarray, reps: int = 2000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``mean(a) - mean(b)``, each group resampled on its own.

    The runs of two methods are independent (different seeds), so the seeds of ``a`` and of ``b``
    are drawn with replacement separately, as rliable's stratified bootstrap does per method.
    With 3 seeds per group the interval is coarse and somewhat too narrow (a percentile bootstrap
    cannot show spread it never saw): read an interval that excludes 0 as evidence, not proof.

    :param a: ``(n_a,)`` scores of one method; :param b: ``(n_b,)`` scores of the other.
    :return: ``(low, high)``; NaN if a group is empty.
    """
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.size == 0 or b.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    diffs = (a[rng.integers(0, a.size, (reps, a.size))].mean(1)
             - b[rng.integers(0, b.size, (reps, b.size))].mean(1))
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return float(low), float(high)
