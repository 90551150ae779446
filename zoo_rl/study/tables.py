"""A study's tables, rebuilt from its run folders: ``results.csv`` (one row per run), ``summary.csv`` (one row per
method, with IQMs and differences to scratch and to the best fine-tune, each with its 95% bootstrap interval),
``curves.csv`` and ``gates.csv``; and one table across studies (:func:`cross_target`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from envs.tasks import resolve
from zoo_rl.files import (CONFIG, CURVES, EVALUATIONS, FINAL_EVALUATION, GATES, RESULT, RESULTS, STUDY, SUMMARY,
                          write_csv_atomic)
from zoo_rl.metrics import difference_interval, human_normalised, iqm_with_interval, steps_to_threshold
from zoo_rl.study.config import run_path, trained_normalisation
from zoo_rl.study.methods import canonical_method, extractor_kwargs
from zoo_rl.study.signals import fault_point
from zoo_rl.training import load_evaluations


RESULT_COLUMNS = ["target", "method", "seed", "steps", "final_return", "final_return_std", "final_episodes",
                  "last_evaluation_return", "initial_return", "auc", "threshold", "steps_to_threshold",
                  "human_normalised", "wall_seconds", "timesteps_per_second", "parallel_runs", "extractor_precision",
                  "cpu_capability"]


def collect_results(out: Path) -> pd.DataFrame:
    """``results.csv`` rows from every finished run's ``result.json`` (one row per run)."""
    rows = [json.loads(p.read_text()) for p in sorted(Path(out).glob(f"*/seed*/{RESULT}"))]
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    table = table.drop_duplicates(["target", "method", "seed"], keep="last")
    # The final return: the final model on new games where the run has played them, else its last evaluation;
    # the last evaluation is kept beside it either way.
    table["last_evaluation_return"] = table["final_return"]
    table["final_episodes"] = np.nan
    for index, r in table.iterrows():
        path = run_path(Path(out), r["method"], r["seed"]) / FINAL_EVALUATION
        if path.is_file():
            returns = json.loads(path.read_text())["returns"]
            table.loc[index, ["final_return", "final_return_std", "final_episodes"]] = (
                float(np.mean(returns)), float(np.std(returns)), len(returns))
    # From the final return again, so that reference scores added later (ATARI_SCORES) count for old runs.
    table["human_normalised"] = [_human_normalised(r.final_return, r.target, r.human_normalised)
                                 for r in table.itertuples()]
    table["parallel_runs"] = [parallel_runs(Path(out), r.method, r.seed) for r in table.itertuples()]
    for column in ("extractor_precision", "cpu_capability"):  # empty for runs from before they were recorded
        table[column] = table[column].fillna("") if column in table else ""
    threshold = _threshold(table, out)
    table["threshold"] = threshold
    table["steps_to_threshold"] = [
        steps_to_threshold(*_curve(Path(out), r.method, r.seed), threshold) for r in table.itertuples()
    ]
    return table[RESULT_COLUMNS].sort_values(["method", "seed"]).reset_index(drop=True)


def _human_normalised(final_return: float, target: str, stored: float) -> float:
    try:
        game = resolve(target).game
    except ValueError:  # a target this version no longer knows: keep what the run wrote
        return stored
    return float(human_normalised(float(final_return), game))


def parallel_runs(out: Path, method: str, seed: int) -> int:
    """How many runs shared the machine when this run was last trained (every study process's runs on the
    machine where its ``config.json`` records them, else the ``--workers`` of its study; 1 for Ray, whose runs
    get their own CPUs): its steps/s is per run, not per machine."""
    config_path = run_path(out, method, seed) / CONFIG
    if not config_path.is_file():
        return 1
    config = json.loads(config_path.read_text())
    study = config.get("study", {})
    if study.get("launcher", "local") == "ray":
        return 1
    return max(1, int(config.get("parallel_runs") or study.get("workers") or 1))


def _threshold(table: pd.DataFrame, out: Path) -> float:
    path = Path(out) / STUDY
    study = json.loads(path.read_text()) if path.is_file() else {}
    if study.get("threshold") is not None:
        return float(study["threshold"])
    scratch = table.loc[table["method"] == "scratch", "final_return"]
    return float(scratch.mean()) if len(scratch) else math.nan


def _curve(out: Path, method: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    ev = load_evaluations(run_path(out, method, seed) / EVALUATIONS)
    return np.asarray(ev["timesteps"], dtype=float), np.asarray([np.mean(r) for r in ev["results"]], dtype=float)


def learning_curves(out: Path) -> pd.DataFrame:
    """Long table ``method, seed, steps, return`` of every evaluation of every run (started or finished)."""
    rows = []
    for path in sorted(Path(out).glob(f"*/seed*/{EVALUATIONS}")):
        config = json.loads((path.parent / CONFIG).read_text())
        steps, means = _curve(Path(out), config["method"], config["seed"])
        rows += [{"method": config["method"], "seed": config["seed"], "steps": int(s), "return": float(m)}
                 for s, m in zip(steps, means)]
    return pd.DataFrame(rows, columns=["method", "seed", "steps", "return"])


def best_finetune(results: pd.DataFrame) -> pd.DataFrame:
    """The runs of the single-source fine-tune with the highest mean final return (chosen after the fact:
    an optimistic baseline); empty if ``results`` (one target) has no fine-tune."""
    finetunes = results[results["method"].str.startswith("finetune:")]
    if finetunes.empty:
        return finetunes
    return finetunes[finetunes["method"] == finetunes.groupby("method")["final_return"].mean().idxmax()]


def summarise(results: pd.DataFrame, reps: int = 2000) -> pd.DataFrame:
    """``summary.csv``: one row per method, plus ``finetune-best`` and ``finetune-mean``.

    Columns: runs, mean/std of the final return, mean return at step 0 (before any training), IQM
    with its 95% stratified-bootstrap interval (over seeds), human-normalised mean, mean AUC, median steps to threshold, mean steps/s,
    difference of the mean to scratch and to the best single-source fine-tune with its 95% bootstrap interval
    over seeds (:func:`zoo_rl.metrics.difference_interval`; ``vs_scratch_low`` / ``_high``), the same for the
    AUC against scratch (``auc_vs_scratch``: the mean return over training, far less noisy than the last
    evaluation alone), rank by mean.
    ``finetune-best`` is the fine-tune whose mean final return is highest (chosen after the
    fact, an optimistic baseline); ``finetune-mean`` pools all fine-tune runs.
    """
    if results.empty:
        return pd.DataFrame()
    groups = {m: g for m, g in results.groupby("method")}
    finetunes = {m: g for m, g in groups.items() if m.startswith("finetune:")}
    if finetunes:
        groups["finetune-best"] = best_finetune(results).assign(method="finetune-best")
        groups["finetune-mean"] = pd.concat(finetunes.values()).assign(method="finetune-mean")
    # Per method a (num_runs x 1 task) matrix; finetune-mean has more runs, rliable allows that.
    intervals = iqm_with_interval({m: g["final_return"].to_numpy()[:, None] for m, g in groups.items()}, reps=reps)
    rows = []
    for method, g in groups.items():
        point, low, high = intervals[method]
        rows.append({
            "method": method, "runs": len(g), "final_mean": g["final_return"].mean(),
            "final_std": g["final_return"].std(ddof=1) if len(g) > 1 else 0.0,
            # games per run behind final_mean: a re-evaluation's count, or NaN for the last evaluation
            "final_episodes": g["final_episodes"].max() if "final_episodes" in g else np.nan,
            "last_evaluation_mean": g["last_evaluation_return"].mean() if "last_evaluation_return" in g else np.nan,
            "initial_mean": g["initial_return"].mean(),
            "iqm": point, "iqm_low": low, "iqm_high": high,
            "human_normalised": g["human_normalised"].mean(), "auc_mean": g["auc"].mean(),
            # NaN when no run reached it (dropna first: numpy warns on the median of nothing)
            "steps_to_threshold_median": g["steps_to_threshold"].dropna().median(),
            "reached_threshold": int(g["steps_to_threshold"].notna().sum()),
            "timesteps_per_second": g["timesteps_per_second"].mean(),
        })
    table = pd.DataFrame(rows)
    for column, value, reference in (("vs_scratch", "final_return", "scratch"),
                                     ("vs_best_finetune", "final_return", "finetune-best"),
                                     ("auc_vs_scratch", "auc", "scratch")):
        # Difference of means to the reference, and its 95% bootstrap interval over seeds.
        base = groups[reference][value].to_numpy() if reference in groups else np.array([])
        table[column] = [groups[m][value].mean() - (base.mean() if base.size else np.nan) for m in table["method"]]
        bounds = [difference_interval(groups[m][value].to_numpy(), base, reps=reps) for m in table["method"]]
        table[f"{column}_low"] = [low for low, _ in bounds]
        table[f"{column}_high"] = [high for _, high in bounds]
    ranked = ~table["method"].isin(["finetune-best", "finetune-mean"])
    table.loc[ranked, "rank"] = table.loc[ranked, "final_mean"].rank(ascending=False, method="min")
    return table.sort_values("final_mean", ascending=False).reset_index(drop=True)


def compact_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary in seven columns, to print: method, runs, final return (mean ± std), IQM [95% CI], the
    difference to scratch and to the best fine-tune [95% CI], steps/s."""
    def interval(point: float, low: float, high: float) -> str:
        return "" if not np.isfinite(point) else f"{point:+.1f} [{low:+.1f}, {high:+.1f}]"

    rows = []
    for r in summary.itertuples():
        rows.append({"method": r.method, "runs": r.runs, "final return": f"{r.final_mean:.1f} ± {r.final_std:.1f}",
                     "IQM [95% CI]": f"{r.iqm:.1f} [{r.iqm_low:.1f}, {r.iqm_high:.1f}]",
                     "vs scratch": "" if r.method == "scratch" else interval(r.vs_scratch, r.vs_scratch_low,
                                                                             r.vs_scratch_high),
                     "vs best fine-tune": "" if r.method == "finetune-best" else interval(
                         r.vs_best_finetune, r.vs_best_finetune_low, r.vs_best_finetune_high),
                     "steps/s": f"{r.timesteps_per_second:.0f}"})
    return pd.DataFrame(rows)


def gate_history(out: Path) -> pd.DataFrame:
    """Long table ``method, seed, timesteps, extractor, layer, source, gate`` from every run's gates.csv."""
    frames = []
    columns = ["method", "seed", "timesteps", "extractor", "layer", "source", "gate"]
    for path in sorted(Path(out).glob(f"*/seed*/{GATES}")):
        config = json.loads((path.parent / CONFIG).read_text())
        # A run's gates.csv is appended to: a kill can cut its last line, and a resumed run logs again the
        # steps it trains again after its checkpoint (the resumed run's rows are the ones kept).
        gates = pd.read_csv(path, on_bad_lines="skip").dropna()
        gates = gates.drop_duplicates(["timesteps", "extractor", "layer", "source"], keep="last")
        frames.append(gates.assign(method=config["method"], seed=config["seed"]))
    return pd.concat(frames)[columns] if frames else pd.DataFrame(columns=columns)


def write_tables(out: Path, reps: int = 2000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rebuild results.csv, summary.csv, curves.csv and gates.csv of a study, each atomically, all from the run
    folders: a stop between two of them leaves tables that the next call rewrites whole."""
    out = Path(out)
    results = collect_results(out)
    summary = summarise(results, reps=reps)
    write_csv_atomic(results, out / RESULTS)
    fault_point("tables")
    write_csv_atomic(summary, out / SUMMARY)
    write_csv_atomic(learning_curves(out), out / CURVES)
    write_csv_atomic(gate_history(out), out / GATES)
    return results, summary


def read_results(study_dir: Path) -> pd.DataFrame:
    """A study's ``results.csv``, checked.

    :raises ValueError: the file is cut short, unreadable or lacks its columns, naming it and the fix (a
        study folder rebuilds it from its run folders; a published one is copied from one).
    """
    path = Path(study_dir) / RESULTS
    fix = (f"rerun the command that trained {study_dir} (`python experiments/transfer.py ... --out {study_dir}`: "
           "it rebuilds results.csv from the run folders without training again)"
           if any(Path(study_dir).glob(f"*/seed*/{RESULT}")) else
           "copy it again from the study folder it was published from")
    try:
        text = path.read_text()
        if text and not text.endswith("\n"):
            raise ValueError("cut short: its last line has no end")
        table = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path} is unreadable ({str(exc).strip()}): {fix}.") from None
    missing = [c for c in ("target", "method", "seed", "final_return") if c not in table]
    if missing:
        raise ValueError(f"{path} has no {', '.join(missing)} column: {fix}.")
    return table


def _normalisation_of(out: Path, method: str, seed: int) -> str | None:
    """The gate normalisation a study's run trained with: its own record where the run folder is there, else
    (a published study: tables only) the method's option or the study's ``normalisation``, else the default."""
    run = run_path(out, method, seed)
    if (run / CONFIG).is_file():
        return trained_normalisation(run, method)
    study = json.loads((out / STUDY).read_text()) if (out / STUDY).is_file() else {}
    return extractor_kwargs(method, study.get("normalisation")).get("normalisation")


def cross_target(study_dirs: list[Path], reps: int = 2000) -> pd.DataFrame:
    """One table across studies: per method, per-target mean final return and the IQM of
    human-normalised scores over all (run, target) pairs with its stratified-bootstrap interval.
    Gated methods are named with the normalisation their runs trained with (:func:`canonical_method`);
    ``finetune-best`` is each target's best single-source fine-tune, ``finetune-each`` all of them pooled.
    """
    tables = []
    for d in study_dirs:
        if not (Path(d) / RESULTS).is_file():
            continue
        table = read_results(Path(d))
        # Studies may differ in their gate normalisation: name it, so that one row is one method.
        table["method"] = [canonical_method(r.method, _normalisation_of(Path(d), r.method, r.seed))
                           for r in table.itertuples()]
        tables.append(table)
    if not tables:
        return pd.DataFrame()
    results = pd.concat(tables)
    # The best single-source fine-tune of each target (chosen after the fact: an optimistic baseline),
    # then every fine-tune pooled: which source transfers differs from target to target.
    best = [best_finetune(g).assign(method="finetune-best") for _, g in results.groupby("target")]
    results["method"] = results["method"].where(~results["method"].str.startswith("finetune:"), "finetune-each")
    results = pd.concat([results, *best])
    pivot = results.pivot_table(index="method", columns="target", values="final_return", aggfunc="mean")
    matrices = {}
    targets = sorted(results["target"].unique())
    for method, g in results.groupby("method"):
        per_target = [g.loc[g["target"] == t, "human_normalised"].to_numpy() for t in targets]
        if any(len(x) == 0 for x in per_target) or g["human_normalised"].isna().any():
            continue
        n = min(len(x) for x in per_target)
        matrices[method] = np.stack([x[:n] for x in per_target], axis=1)  # (runs, targets)
    intervals = iqm_with_interval(matrices, reps=reps) if matrices else {}
    pivot.columns = [f"return_{c}" for c in pivot.columns]
    pivot["hns_iqm"] = [intervals.get(m, (np.nan,) * 3)[0] for m in pivot.index]
    pivot["hns_iqm_low"] = [intervals.get(m, (np.nan,) * 3)[1] for m in pivot.index]
    pivot["hns_iqm_high"] = [intervals.get(m, (np.nan,) * 3)[2] for m in pivot.index]
    return pivot.reset_index()
