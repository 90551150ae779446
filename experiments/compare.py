"""Compare methods across published studies: final returns, AUC and their differences with intervals.

A study's own tables compare the methods it ran. Some questions need runs from two studies, e.g. the
Pong learning-rate check: zoo-lite at Adam 1e-4 (``results/pong-500k``) against the pong-m1 fine-tune at
2.5e-4 (``results/pong-500k-lr2.5e-4``). Every row is one study's method; every difference is against
the first row (the reference), with the same 95% bootstrap interval as the studies' tables
(:func:`zoo_rl.metrics.difference_interval`, each group's seeds resampled on their own).

    python experiments/compare.py --run results/pong-500k zoo-lite \\
        --run results/pong-500k finetune:pong-m1 --run results/pong-500k-lr2.5e-4 finetune:pong-m1 \\
        --out results/pong-500k-lr-compare --plot

A STUDY may pool the runs of several folders, joined by commas: more seeds of a published study trained into a
folder of their own (``transfer.py --first-seed 3 --seeds 3``) count with its seeds 0-2 as one group of six::

    python experiments/compare.py --run results/breakout-m4-100k-strong,results/breakout-m4-100k-strong-seeds3-5 \
        finetune:breakout --run results/breakout-m4-100k-strong,results/breakout-m4-100k-strong-seeds3-5 \
        zoo-lite:ranked+gate-lr100

(a seed found in two of the folders is refused: it would count twice).

Reads only ``results.csv`` (final return per run, AUC per run) and, for ``--plot``, ``curves.csv`` of
each study folder (a published ``results/<study>`` or a ``runs/transfer/<study>``). Writes
``comparison.csv`` (and ``learning_curves.png/.svg`` with ``--plot``) into ``--out``, atomically; with no
``--out`` it only prints. Runs of different targets or step budgets are refused: their returns do not compare.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from zoo_rl.metrics import difference_interval
from zoo_rl.files import CURVES, RESULTS, write_csv_atomic

COLUMNS = ["study", "method", "label", "runs", "final_mean", "final_std", "auc_mean", "vs_reference",
           "vs_reference_low", "vs_reference_high", "auc_vs_reference", "auc_vs_reference_low",
           "auc_vs_reference_high"]


def load_runs(study: Path, method: str) -> pd.DataFrame:
    """The rows of ``study/results.csv`` for ``method``; a clear error if either is missing."""
    path = study / RESULTS
    if not path.is_file():
        raise SystemExit(f"{study}: no results.csv; pass a study folder (results/<study> or runs/transfer/<study>).")
    table = pd.read_csv(path)
    rows = table[table["method"] == method]
    if rows.empty:
        known = ", ".join(sorted(table["method"].unique()))
        raise SystemExit(f"{study}: no runs of method {method!r}; it has: {known}.")
    return rows


def folders(study: Path | str) -> list[Path]:
    """The folders a STUDY argument names: one, or several joined by commas (pooled)."""
    return [Path(part) for part in str(study).split(",") if part]


def pooled_runs(study: Path | str, method: str) -> pd.DataFrame:
    """The rows of ``method`` in every folder of ``study`` (:func:`folders`), one group.

    :raises SystemExit: a folder or method missing (:func:`load_runs`), or a seed in two of the folders."""
    parts = [load_runs(folder, method) for folder in folders(study)]
    rows = pd.concat(parts, ignore_index=True)
    twice = sorted(rows.loc[rows["seed"].duplicated(), "seed"].unique().tolist())
    if twice:
        raise SystemExit(f"{study}: {method} has seed(s) {twice} in more than one folder; pool folders of different "
                         "seeds (transfer.py --first-seed) so that no run counts twice.")
    return rows


def label_of(study: Path, method: str, studies: list[Path]) -> str:
    """``method``, plus its study's name (names, for pooled folders) when the runs come from more than one study."""
    return method if len(set(studies)) == 1 else f"{method} [{'+'.join(f.name for f in folders(study))}]"


def compare(runs: list[tuple[Path, str]], reps: int = 2000) -> pd.DataFrame:
    """One row per (study, method); differences of mean final return and mean AUC to the first row."""
    if len(runs) < 2:
        raise SystemExit("give at least two --run STUDY METHOD pairs: the reference first.")
    groups = [pooled_runs(study, method) for study, method in runs]
    for key in ("target", "steps"):
        values = {str(v) for g in groups for v in g[key].unique()}
        if len(values) > 1:
            raise SystemExit(f"the runs differ in {key} ({', '.join(sorted(values))}): their returns do not compare.")
    studies = [study for study, _ in runs]
    reference = groups[0]
    rows = []
    for (study, method), g in zip(runs, groups):
        final, auc = g["final_return"].to_numpy(float), g["auc"].to_numpy(float)
        low, high = difference_interval(final, reference["final_return"].to_numpy(float), reps=reps)
        auc_low, auc_high = difference_interval(auc, reference["auc"].to_numpy(float), reps=reps)
        rows.append(dict(
            study=str(study), method=method, label=label_of(study, method, studies), runs=len(g),
            final_mean=final.mean(), final_std=final.std(ddof=1) if len(final) > 1 else 0.0, auc_mean=auc.mean(),
            vs_reference=final.mean() - reference["final_return"].mean(), vs_reference_low=low,
            vs_reference_high=high, auc_vs_reference=auc.mean() - reference["auc"].mean(),
            auc_vs_reference_low=auc_low, auc_vs_reference_high=auc_high))
    return pd.DataFrame(rows, columns=COLUMNS)


def plot(runs: list[tuple[Path, str]], out: Path) -> list[Path]:
    """Learning curves of every compared group in one figure (bands as in the studies' own plots)."""
    from zoo_rl.plots import plot_curves, plt, save  # the studies' bands and styles, Agg backend

    studies = [study for study, _ in runs]
    parts = []
    for study, method in runs:
        tables = []
        for folder in folders(study):
            path = folder / CURVES
            if not path.is_file():
                raise SystemExit(f"{folder}: no curves.csv to plot.")
            tables.append(pd.read_csv(path))
        curves = pd.concat(tables, ignore_index=True)
        curves = curves[curves["method"] == method].copy()
        curves["method"] = label_of(study, method, studies)
        parts.append(curves)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    plot_curves(pd.concat(parts, ignore_index=True), ax)
    ax.set_title("Comparison across studies")
    return save(fig, out / "learning_curves")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", nargs=2, action="append", metavar=("STUDY", "METHOD"), required=True,
                        help="a study folder (or several, joined by commas: their runs pooled) and one of its methods; "
                             "repeat; the first is the reference")
    parser.add_argument("--out", type=Path, default=None, help="folder for comparison.csv (and the plot)")
    parser.add_argument("--plot", action="store_true", help="also plot the learning curves (needs --out)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples of each interval")
    args = parser.parse_args()
    if args.plot and args.out is None:
        parser.error("--plot writes into --out: give --out.")
    runs = [(Path(study), method) for study, method in args.run]
    table = compare(runs, reps=args.reps)
    with pd.option_context("display.width", 200, "display.max_columns", None):
        print(table.drop(columns=["study", "method"]).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(table, args.out / "comparison.csv")
        written = [args.out / "comparison.csv"] + (plot(runs, args.out) if args.plot else [])
        print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":
    main()
