"""Choose a default among candidate methods by a rule fixed before their runs: the mean rank of their learning curves
over several targets.

    python experiments/choose.py results/gate-choice-pendulum results/gate-choice-halfcheetah \
        --candidates zoo-lite:sigmoid,zoo-lite:softmax,zoo-lite:sigmoid-sum --out results/gate-choice-normalisation

The rule: per target, the candidates are ranked by the area under their evaluation curve (``results.csv`` ``auc``,
the mean return over training, averaged over seeds: less noisy than the last evaluation, and it counts a collapse
whenever it happens), best first; the candidate with the best mean rank over the targets wins, ties to the one
named first in ``--candidates`` (name the current default first: a challenger must beat it outright). A candidate
missing on a target comes after every candidate run on all of them. Writes ``choice.csv`` (candidate, target, auc,
final return, seeds, rank) and ``choice.md``; prints the table and the choice (``--chosen``: only the chosen name,
for scripts).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from zoo_rl.files import RESULTS, atomic_write_bytes, write_csv_atomic


def rank_within_targets(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (one row per candidate and target, column ``auc``) with ``rank``: 1 for the highest AUC of its
    target, ties sharing the better rank."""
    return table.assign(rank=table.groupby("target")["auc"].rank(ascending=False, method="min"))


def mean_rank_order(table: pd.DataFrame, keys: list[str], ties: list[str]) -> pd.DataFrame:
    """The candidates (``keys``) of a ranked ``table`` by mean rank over targets, best first; ties go by the
    columns ``ties`` (ascending). A candidate run on fewer targets than another comes after them all: its mean
    rank is not comparable."""
    by = table.groupby(keys).agg(mean_rank=("rank", "mean"), targets=("target", "nunique"),
                                 **{t: (t, "first") for t in ties if t not in keys}).reset_index()
    by["missing"] = by["targets"].max() - by["targets"]
    return by.sort_values(["missing", "mean_rank", *ties]).drop(columns="missing").reset_index(drop=True)


def study_means(studies: list[Path], keep) -> pd.DataFrame:
    """One row per (target, method, study) of the studies' runs whose method ``keep`` accepts: mean AUC, mean
    final return, seeds.

    :raises SystemExit: a study without results.csv.
    """
    frames = []
    for study in studies:
        path = Path(study) / RESULTS
        if not path.is_file():
            raise SystemExit(f"{path} is missing: publish the study first (experiments/publish.py).")
        table = pd.read_csv(path)
        table = table[table["method"].map(keep)]
        rows = table.groupby(["target", "method"]).agg(auc=("auc", "mean"), final_return=("final_return", "mean"),
                                                       seeds=("seed", "count")).reset_index()
        frames.append(rows.assign(study=str(study)))
    return pd.concat(frames, ignore_index=True)


def refuse_twice(table: pd.DataFrame, keys: list[str], what: str) -> None:
    """Stop when a (target, ``keys``) cell comes from more than one study.

    :raises SystemExit: naming the cells and their studies.
    """
    twice = table[table.duplicated(["target", *keys], keep=False)]
    if not twice.empty:
        cells = ", ".join(sorted({f"{r.target} {r.method} ({r.study})" for r in twice.itertuples()}))
        raise SystemExit(f"A {what} appears in more than one study of the same target: {cells}. Pass each "
                         f"(target, {what}) once.")


def candidate_table(studies: list[Path], candidates: list[str]) -> pd.DataFrame:
    """One row per (candidate, target) of the studies' runs, with seeds averaged and the rank within the target.

    :raises SystemExit: a study without results, a candidate no study ran, or one run twice for a target.
    """
    table = study_means(studies, lambda m: m in candidates)
    absent = [c for c in candidates if c not in set(table["method"])]
    if absent:
        raise SystemExit(f"No study ran {', '.join(absent)}; the studies hold "
                         f"{', '.join(sorted(set(table['method']))) or 'none of the candidates'}.")
    refuse_twice(table, ["method"], "candidate")
    table["order"] = table["method"].map(candidates.index)
    return rank_within_targets(table.drop(columns="study"))


def choose(table: pd.DataFrame) -> pd.DataFrame:
    """The candidates by mean rank over the targets, best first (ties: the order they were named in)."""
    return mean_rank_order(table, ["method"], ["order"]).drop(columns="order")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studies", nargs="+", type=Path, help="published studies (results/<name>), one per target")
    parser.add_argument("--candidates", required=True,
                        help="comma-separated method names as the studies ran them, the current default first")
    parser.add_argument("--out", type=Path, default=None, help="folder for choice.csv and choice.md")
    parser.add_argument("--chosen", action="store_true", help="print only the chosen candidate's name")
    args = parser.parse_args()
    candidates = list(dict.fromkeys(c.strip() for c in args.candidates.split(",") if c.strip()))
    table = candidate_table(args.studies, candidates)
    ranking = choose(table)
    best = ranking.iloc[0]
    seeds = int(table["seeds"].min())
    line = (f"chosen: {best['method']} (mean rank {best['mean_rank']:g} over {int(best['targets'])} targets; "
            f"{seeds} seed(s) or more per candidate and target)")
    if args.out is not None:
        write_csv_atomic(table.drop(columns="order"), args.out / "choice.csv")
        targets = sorted(table["target"].unique())
        markdown = ["| candidate | " + " | ".join(f"{t}: AUC (rank), final" for t in targets) + " | mean rank |",
                    "| --- | " + " | ".join("---" for _ in targets) + " | --- |"]
        for _, r in ranking.iterrows():
            cells = []
            for target in targets:
                row = table[(table["target"] == target) & (table["method"] == r["method"])]
                cells.append("" if row.empty else f"{row['auc'].item():.2f} ({row['rank'].item():g}), "
                             f"{row['final_return'].item():.2f}")
            markdown.append(f"| {r['method']} | " + " | ".join(cells) + f" | {r['mean_rank']:g} |")
        atomic_write_bytes(args.out / "choice.md", ("\n".join(markdown) + f"\n\n{line}\n").encode())
    if args.chosen:
        print(best["method"])
        return
    wide = table.pivot_table(index="method", columns="target", values=["auc", "final_return", "rank"])
    print(wide.round(2).to_string())
    print("\nby mean rank:\n" + ranking.to_string(index=False))
    print(line)
    if args.out is not None:
        print(f"wrote {args.out / 'choice.csv'} and {args.out / 'choice.md'}")


if __name__ == "__main__":
    main()
