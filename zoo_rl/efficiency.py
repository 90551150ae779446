"""Sample efficiency: the agent steps a method needs to reach a return level, and their ratio to scratch's.

This is the measure a user of transfer cares about (Kickstarting reports it: the steps a kickstarted
agent needs to match the from-scratch agent's final score). It is read from evaluation curves, a
long table ``method, seed, steps, return`` (a study's ``curves.csv``):

- **crossing**: per seed, the step of the first evaluation whose mean return is at or above the
  level. An evaluation at step 0 counts: a transferred agent may hold a level before any training
  (its steps are then 0).
- **never crossing**: a seed that stays below the level for its whole run is *censored* at its
  budget: it needs more steps than it was given. Its steps are ``inf`` here; a method whose median
  seed is censored reads "not reached within the budget", never a number.
- **per method**: the median over seeds (defined while at least half the seeds cross) with a 95%
  percentile-bootstrap interval over seeds. Quantiles are taken at sample values (no interpolation),
  so censored seeds stay ``inf`` in the interval instead of turning it into NaN.
- **ratio to scratch**: the method's median steps over scratch's, bootstrapped with the seeds of
  each drawn on their own. Where scratch's own runs do not reach the level, its steps come from a
  longer reference (a longer scratch study, or a published training log), given as a number.
  A scratch seed censored at its budget enters the ratio at that budget: scratch needs at least
  that, so the ratio is then an upper bound (``scratch_censored`` says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Columns of :func:`efficiency_table`.
EFFICIENCY_COLUMNS = ["method", "level_name", "level", "runs", "reached", "held_at_start", "budget",
                      "steps_median", "steps_low", "steps_high", "scratch_steps", "scratch_reference",
                      "scratch_censored", "ratio", "ratio_low", "ratio_high"]


def crossing_step(steps: np.ndarray, returns: np.ndarray, level: float) -> float:
    """Step of the first evaluation whose mean return is at least ``level``; ``inf`` if none is.

    :param steps: ``(n_evals,)`` agent steps of the evaluations (sorted here, so any order is accepted).
    :param returns: ``(n_evals,)`` mean return of each evaluation.
    :raises ValueError: the arrays differ in length, or ``level`` is not a finite number.
    """
    steps, returns = np.asarray(steps, dtype=float), np.asarray(returns, dtype=float)
    if steps.shape != returns.shape:
        raise ValueError(f"steps {steps.shape} and returns {returns.shape} must have one value per evaluation.")
    if level is None or not math.isfinite(level):
        raise ValueError(f"The level must be a finite return, got {level!r}.")
    order = np.argsort(steps, kind="stable")
    hit = np.nonzero(returns[order] >= level)[0]
    return float(steps[order][hit[0]]) if hit.size else math.inf


def median_steps(values: np.ndarray) -> float:
    """Median of per-seed steps, ``inf`` allowed: the lower middle value for an even count (a sample
    value, so that a censored seed never averages with a finite one)."""
    values = np.sort(np.asarray(values, dtype=float))
    if values.size == 0:
        return math.nan
    return float(values[(values.size - 1) // 2])


def _bootstrap_medians(values: np.ndarray, rng: np.random.Generator, reps: int) -> np.ndarray:
    values = np.sort(np.asarray(values, dtype=float))
    draws = np.sort(values[rng.integers(0, values.size, (reps, values.size))], axis=1)
    return draws[:, (values.size - 1) // 2]


def _quantiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2
    low, high = np.quantile(samples, [tail, 1 - tail], method="inverted_cdf")
    return float(low), float(high)


def median_interval(values: np.ndarray, reps: int = 2000, seed: int = 0, level: float = 0.95
                    ) -> tuple[float, float, float]:
    """``(median, low, high)`` of per-seed steps with a percentile-bootstrap interval over seeds.

    With 3 seeds the interval is coarse (it spans at most the seeds' range): read it as the spread
    the seeds showed, not as a precise bound.
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return math.nan, math.nan, math.nan
    samples = _bootstrap_medians(values, np.random.default_rng(seed), reps)
    return (median_steps(values), *_quantiles(samples, level))


def ratio_interval(method: np.ndarray, scratch: np.ndarray | float, reps: int = 2000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float, float]:
    """``(ratio, low, high)``: the method's median steps over scratch's, with a bootstrap interval.

    :param method: per-seed steps of the method (``inf``: censored).
    :param scratch: per-seed steps of scratch (censored seeds at their budget), or one number from a
        longer reference (then only the method's seeds are resampled).
    :return: ``inf`` where the method's median is censored; ``0`` where it holds the level at step 0.
    """
    method = np.asarray(method, dtype=float)
    rng = np.random.default_rng(seed)
    if method.size == 0:
        return math.nan, math.nan, math.nan
    scratch_arr = np.atleast_1d(np.asarray(scratch, dtype=float))
    if scratch_arr.size == 0 or not np.all(scratch_arr > 0) or not np.all(np.isfinite(scratch_arr)):
        raise ValueError(f"scratch's steps must be positive and finite (censored seeds at their budget), got "
                         f"{scratch_arr.tolist()}.")
    m = _bootstrap_medians(method, rng, reps)
    s = _bootstrap_medians(scratch_arr, rng, reps) if scratch_arr.size > 1 else np.full(reps, scratch_arr[0])
    point = median_steps(method) / median_steps(scratch_arr)
    return (point, *_quantiles(m / s, level))


@dataclass(frozen=True)
class Level:
    """A return level to reach, and where scratch's steps to it come from.

    :param name: e.g. ``scratch-final`` or ``half-source``.
    :param value: the return.
    :param scratch_steps: scratch's per-seed steps to the level from a longer reference (a longer scratch
        study, censored seeds at their budget; or one number from a published log); ``None``: the
        curves' own ``scratch`` runs.
    :param scratch_censored: some reference seed never reached the level (the ratio is an upper bound).
    :param scratch_reference: what ``scratch_steps`` was read from (printed beside the ratio).
    """

    name: str
    value: float
    scratch_steps: tuple[float, ...] | None = None
    scratch_censored: bool = False
    scratch_reference: str = ""


def scratch_reference_steps(curves: pd.DataFrame, level: float, budgets: dict[int, float] | None = None
                            ) -> tuple[tuple[float, ...], bool]:
    """``(steps, censored)``: each scratch seed's steps to ``level`` in ``curves`` (``method, seed, steps,
    return``), a seed that never reaches it at its budget (default: its last evaluation's step)."""
    scratch = curves[curves["method"] == "scratch"]
    if scratch.empty:
        raise ValueError("the reference curves have no scratch runs.")
    steps, censored = [], False
    for run_seed, g in scratch.groupby("seed", sort=True):
        step = crossing_step(g["steps"].to_numpy(), g["return"].to_numpy(), level)
        if not math.isfinite(step):
            censored = True
            step = (budgets or {}).get(int(run_seed), float(g["steps"].max()))
        steps.append(float(step))
    return tuple(steps), censored


def efficiency_table(curves: pd.DataFrame, levels: list[Level], budgets: dict[tuple[str, int], float] | None = None,
                     reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per (method, level): steps to reach it with their interval, and the ratio to scratch.

    :param curves: ``method, seed, steps, return`` (every evaluation of every run).
    :param levels: the levels to read.
    :param budgets: ``(method, seed) -> steps the run was trained for`` (default: its last evaluation's
        step), where a censored scratch seed enters the ratio.
    :return: columns :data:`EFFICIENCY_COLUMNS`; ``held_at_start`` counts the seeds already at the
        level at step 0, ``reached`` the seeds that crossed at all. Scratch's own row has no ratio.
    """
    missing = {"method", "seed", "steps", "return"} - set(curves.columns)
    if missing:
        raise ValueError(f"curves need the columns method, seed, steps, return; missing {sorted(missing)}.")
    budgets = dict(budgets or {})
    for (method, run_seed), g in curves.groupby(["method", "seed"], sort=True):
        budgets.setdefault((method, int(run_seed)), float(g["steps"].max()))
    rows = []
    for level in levels:
        per_method: dict[str, dict[int, float]] = {}
        for (method, run_seed), g in curves.groupby(["method", "seed"], sort=True):
            per_method.setdefault(method, {})[int(run_seed)] = crossing_step(
                g["steps"].to_numpy(), g["return"].to_numpy(), level.value)
        scratch: np.ndarray | None = None
        censored, reference = level.scratch_censored, level.scratch_reference
        if level.scratch_steps is not None:
            scratch = np.asarray(level.scratch_steps, dtype=float)
        elif "scratch" in per_method:
            own = {k: budgets[("scratch", k)] for k in per_method["scratch"]}
            steps, censored = scratch_reference_steps(curves, level.value, own)
            scratch, reference = np.asarray(steps), "this study's scratch runs"
        for method, seeds in per_method.items():
            values = np.array(list(seeds.values()))
            med, low, high = median_interval(values, reps=reps, seed=seed)
            ratio = (math.nan,) * 3  # scratch's own row: it is the reference
            if method != "scratch" and scratch is not None and np.all(scratch > 0):
                ratio = ratio_interval(values, scratch, reps=reps, seed=seed)
            rows.append({
                "method": method, "level_name": level.name, "level": level.value, "runs": len(values),
                "reached": int(np.isfinite(values).sum()), "held_at_start": int((values == 0).sum()),
                "budget": max(budgets[(method, k)] for k in seeds),
                "steps_median": med, "steps_low": low, "steps_high": high,
                "scratch_steps": median_steps(scratch) if scratch is not None else math.nan,
                "scratch_reference": reference, "scratch_censored": censored,
                "ratio": ratio[0], "ratio_low": ratio[1], "ratio_high": ratio[2],
            })
    return pd.DataFrame(rows, columns=EFFICIENCY_COLUMNS)


def held_by_every_transfer(table: pd.DataFrame, level_name: str) -> bool:
    """True when every method but scratch holds ``level_name`` at step 0 in all its seeds: such a
    level cannot tell the transfer methods apart (read a higher one)."""
    rows = table[(table["level_name"] == level_name) & (table["method"] != "scratch")]
    return bool(len(rows)) and bool((rows["held_at_start"] == rows["runs"]).all())


def format_steps(median: float, low: float, high: float, budget: float) -> str:
    """``40k [20k, 60k]``; ``> 100k`` where the median seed never reached the level within its budget."""
    def k(x: float) -> str:
        return "> budget" if not math.isfinite(x) else (f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.0f}k")

    if not math.isfinite(median):
        return f"> {k(budget)}"
    return f"{k(median)} [{k(low)}, {k(high)}]"


def format_ratio(ratio: float, low: float, high: float, censored: bool) -> str:
    """``0.20 [0.10, 0.40]`` (method steps / scratch steps), ``≤`` in front when scratch was censored;
    ``n/a`` without a scratch reference, ``not reached`` for a censored method."""
    if math.isnan(ratio):
        return "n/a"
    if not math.isfinite(ratio):
        return "not reached"
    bound = "≤ " if censored else ""
    high_text = "inf" if not math.isfinite(high) else f"{high:.2f}"
    return f"{bound}{ratio:.2f} [{low:.2f}, {high_text}]"
