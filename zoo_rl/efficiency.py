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
- **a published training log** (:func:`monitor_steps_to_level`): the SB3 ``Monitor`` files of one
  training run (the RL Baselines3 Zoo's, for a level this project's scratch runs never reach). They
  hold one row per finished *training* episode, not evaluations, so they are read the way a study
  reads its runs: the mean return of the last :data:`MONITOR_WINDOW` finished episodes, read every
  :data:`MONITOR_EVERY` agent steps, first reading at or above the level. One run has no interval:
  its crossing enters the ratio as one fixed number (only the method's seeds are resampled).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

#: Columns of :func:`efficiency_table`.
EFFICIENCY_COLUMNS = ["method", "level_name", "level", "runs", "reached", "held_at_start", "budget",
                      "steps_median", "steps_low", "steps_high", "scratch_steps", "scratch_reference",
                      "scratch_censored", "scratch_log", "ratio", "ratio_low", "ratio_high"]

#: Finished training episodes averaged per reading of a Monitor log: 8, one per environment of the RL
#: Zoo's Atari runs on average. A single training episode is one game played with sampled actions (a
#: return near -2.5 on Pong spreads over about +-8 points), so one episode is no reading; 8 games are
#: about the 5 new games of a study's evaluation, and span about one episode per environment, so the
#: reading lags the policy by little. SB3's own ``ep_rew_mean`` (100 episodes) smooths more but
#: describes the policies of the last 12.5 episodes per environment (about 300k agent steps near Pong's
#: -2.5): its crossing is late by up to half that span (docs/studies.md gives both).
MONITOR_WINDOW = 8
#: Agent steps between readings of a Monitor log: the evaluation cadence of the 500k-step Pong studies.
#: Read after every finished episode instead, a short window's first crossing is the extreme of
#: hundreds of noisy readings (8 episodes "reach" Pong's -19.8 in their first window, random play);
#: read every 25k steps it has as many chances as a study's evaluations.
MONITOR_EVERY = 25_000
#: Agent steps per emulator frame's worth of ``l``: SB3's AtariWrapper repeats each action 4 frames.
ATARI_FRAME_SKIP = 4
_MONITOR_NAME = re.compile(r"^(\d+)\.monitor\.csv$")


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
    :param scratch_log: ``scratch_steps`` is one run's published training log (:func:`monitor_steps_to_level`):
        another protocol, one seed, training episodes; the tables mark it.
    """

    name: str
    value: float
    scratch_steps: tuple[float, ...] | None = None
    scratch_censored: bool = False
    scratch_reference: str = ""
    scratch_log: bool = False


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
        level at step 0, ``reached`` the seeds that crossed at all, ``scratch_log`` marks a level whose
        scratch steps are one run's training log (:attr:`Level.scratch_log`). Scratch's own row has no ratio.
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
                "scratch_log": level.scratch_log and level.scratch_steps is not None,
                "ratio": ratio[0], "ratio_low": ratio[1], "ratio_high": ratio[2],
            })
    return pd.DataFrame(rows, columns=EFFICIENCY_COLUMNS)


def held_by_every_transfer(table: pd.DataFrame, level_name: str) -> bool:
    """True when every method but scratch holds ``level_name`` at step 0 in all its seeds: such a
    level cannot tell the transfer methods apart (read a higher one)."""
    rows = table[(table["level_name"] == level_name) & (table["method"] != "scratch")]
    return bool(len(rows)) and bool((rows["held_at_start"] == rows["runs"]).all())


def format_step_count(steps: float) -> str:
    """``40k``, ``1.25M``; ``> budget`` for ``inf`` (censored)."""
    if not math.isfinite(steps):
        return "> budget"
    return f"{steps / 1e6:.2f}M" if steps >= 1e6 else f"{steps / 1e3:.0f}k"


def format_steps(median: float, low: float, high: float, budget: float) -> str:
    """``40k [20k, 60k]``; ``> 100k`` where the median seed never reached the level within its budget."""
    k = format_step_count
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


def read_monitor_files(source: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """Every finished episode of a set of SB3 ``Monitor`` files: columns ``env, r, l, t``.

    A Monitor file is ``<rank>.monitor.csv``: a first line ``#{"t_start": ..., "env_id": ...}``, a header
    ``r,l,t`` (possibly with more columns, dropped here), then one row per finished episode: its return,
    its length in steps of the environment the Monitor wraps, its end in seconds since ``t_start``.
    ``env`` is the rank from the file name (SB3's ``make_vec_env`` names the file of environment ``i``
    ``i.monitor.csv``), so the environments keep their identity whatever order the files come in.

    :param source: a folder (its ``*.monitor.csv``), or the files themselves.
    :return: rows per environment in file order (the order the episodes finished).
    :raises FileNotFoundError: the folder holds no Monitor file, or a named file is missing.
    :raises ValueError: a file name without its rank, a rank given twice, a first line that is not the
        Monitor's JSON comment, a missing ``r``/``l``/``t`` column, an episode length that is not a
        positive integer, a return or time that is not a finite number.
    """
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        files = sorted(Path(source).glob("*.monitor.csv"))
        if not files:
            raise FileNotFoundError(f"{source} holds no *.monitor.csv file.")
    else:
        files = [Path(source)] if isinstance(source, (str, Path)) else [Path(f) for f in source]
    tables, ranks = [], set()
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist (a Monitor log: a folder of <rank>.monitor.csv files).")
        match = _MONITOR_NAME.match(path.name)
        if not match:
            raise ValueError(f"{path}: a Monitor file of a vectorised run is named <rank>.monitor.csv.")
        rank = int(match[1])
        if rank in ranks:
            raise ValueError(f"{path}: environment {rank} is given twice.")
        ranks.add(rank)
        with open(path, newline="") as f:
            first = f.readline()
        try:
            header = json.loads(first[1:]) if first.startswith("#") else None
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or "t_start" not in header:
            raise ValueError(f"{path}: the first line must be the Monitor's comment #{{\"t_start\": ...}}, got {first[:80]!r}.")
        table = pd.read_csv(path, skiprows=1)
        missing = {"r", "l", "t"} - set(table.columns)
        if missing:
            raise ValueError(f"{path}: Monitor columns r, l, t expected; missing {sorted(missing)}.")
        table = table[["r", "l", "t"]]
        lengths = pd.to_numeric(table["l"], errors="coerce")
        if not (np.isfinite(lengths) & (lengths > 0) & (lengths == np.round(lengths))).all():
            raise ValueError(f"{path}: every episode length l must be a positive integer.")
        if not np.isfinite(table[["r", "t"]].apply(pd.to_numeric, errors="coerce").to_numpy(float)).all():
            raise ValueError(f"{path}: every return r and time t must be a finite number.")
        tables.append(table.astype({"r": float, "l": int, "t": float}).assign(env=rank))
    columns = ["env", "r", "l", "t"]
    return pd.concat(tables, ignore_index=True)[columns] if tables else pd.DataFrame(columns=columns)


def monitor_steps(episodes: pd.DataFrame, n_envs: int | None = None, frame_skip: int = ATARI_FRAME_SKIP
                  ) -> pd.DataFrame:
    """The episodes of :func:`read_monitor_files` with ``steps``: the run's agent steps (all environments
    together) when each ended, in the order they ended.

    The step count rests on how the run was built, which the files do not say; it holds for the RL
    Baselines3 Zoo's Atari runs and SB3's ``make_atari_env``. There ``Monitor`` wraps the raw
    ``NoFrameskip`` game *below* the ``AtariWrapper`` (``make_vec_env`` applies ``wrapper_class`` on top of
    the Monitor), so ``l`` counts emulator frames of a whole game (every life), and each agent step is
    ``frame_skip`` frames. A vectorised environment steps all ``n_envs`` environments at once (an
    environment that finishes resets within the same step), so when environment ``i`` ends an episode,
    every environment has taken its number of agent steps: the run's steps are
    ``n_envs * cumsum(l_i) / frame_skip``. The frames of each reset (1-30 no-ops, and two FIRE steps of 4
    frames on games that need FIRE) are no agent steps: they overstate each environment's agent steps by at
    most 38 / ``frame_skip`` per episode, 23.5 / ``frame_skip`` on average; on Pong, whose games last
    3,000-20,000 frames, under 1.3% and on average 0.1-0.8%. A game that ends within an action's frames
    understates by under one step per episode.

    :param n_envs: environments of the run (default: the environments in ``episodes``).
    :return: columns ``env, r, l, t, steps``, sorted by ``steps`` (ties in environment order, the order a
        VecEnv reports them).
    :raises ValueError: ``n_envs`` below the environments present, ``frame_skip`` below 1.
    """
    if frame_skip < 1:
        raise ValueError(f"frame_skip must be at least 1, got {frame_skip}.")
    present = int(episodes["env"].nunique())
    n_envs = present if n_envs is None else int(n_envs)
    if n_envs < max(present, 1):
        raise ValueError(f"n_envs={n_envs}, but the log holds {present} environments.")
    frames = episodes.groupby("env", sort=False)["l"].cumsum()
    out = episodes.assign(steps=n_envs * frames.to_numpy(float) / frame_skip)
    return out.sort_values(["steps", "env"], kind="stable").reset_index(drop=True)


def monitor_readings(monitor: str | Path | Iterable[str | Path] | pd.DataFrame, n_envs: int | None = None,
                     frame_skip: int = ATARI_FRAME_SKIP, window: int = MONITOR_WINDOW,
                     every: int | None = MONITOR_EVERY) -> pd.DataFrame:
    """``steps, mean_return``: the mean return of the last ``window`` finished episodes (all environments
    together, :func:`monitor_steps` order), read every ``every`` agent steps (at 1 x, 2 x, ... ``every``, up
    to the last finished episode) or, with ``every=None``, after each step at which an episode ended.

    A reading needs ``window`` finished episodes: earlier ones are left out (no mean of fewer games).

    :param monitor: a folder or files (:func:`read_monitor_files`), or their table.
    :raises ValueError: ``window`` below 1 or above the episodes of the log, ``every`` below 1.
    """
    episodes = monitor if isinstance(monitor, pd.DataFrame) else read_monitor_files(monitor)
    if window < 1 or window > len(episodes):
        raise ValueError(f"window must be between 1 and the log's {len(episodes)} episodes, got {window}.")
    if every is not None and every < 1:
        raise ValueError(f"every must be at least 1 agent step (or None: after each episode), got {every}.")
    ordered = monitor_steps(episodes, n_envs=n_envs, frame_skip=frame_skip)
    steps = ordered["steps"].to_numpy()
    means = ordered["r"].rolling(window).mean().to_numpy()
    if every is None:
        # after the last of the episodes that end at one step: the state once the VecEnv step is done
        last = np.append(steps[1:] != steps[:-1], True)
        keep = last & np.isfinite(means)
        return pd.DataFrame({"steps": steps[keep], "mean_return": means[keep]})
    grid = np.arange(every, steps[-1] + 1, every, dtype=float)
    done = np.searchsorted(steps, grid, side="right") - 1  # the last episode finished by each reading
    keep = done >= window - 1
    return pd.DataFrame({"steps": grid[keep], "mean_return": means[done[keep]]})


def monitor_steps_to_level(monitor: str | Path | Iterable[str | Path] | pd.DataFrame, level: float,
                           n_envs: int | None = None, frame_skip: int = ATARI_FRAME_SKIP,
                           window: int = MONITOR_WINDOW, every: int | None = MONITOR_EVERY) -> float:
    """Agent steps at the first reading (:func:`monitor_readings`) at or above ``level``; ``inf`` if the
    log never reaches it (censored: scratch needs more than :func:`monitor_last_step`).

    :raises ValueError: as :func:`monitor_readings`, and ``level`` not a finite return.
    """
    readings = monitor_readings(monitor, n_envs=n_envs, frame_skip=frame_skip, window=window, every=every)
    return crossing_step(readings["steps"].to_numpy(), readings["mean_return"].to_numpy(), level)


def monitor_last_step(monitor: str | Path | Iterable[str | Path] | pd.DataFrame, n_envs: int | None = None,
                      frame_skip: int = ATARI_FRAME_SKIP) -> float:
    """The run's agent steps when its last recorded episode ended: what a log that never reaches a level
    says about it (scratch needs more)."""
    episodes = monitor if isinstance(monitor, pd.DataFrame) else read_monitor_files(monitor)
    return float(monitor_steps(episodes, n_envs=n_envs, frame_skip=frame_skip)["steps"].max())
