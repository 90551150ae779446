"""Choose Kickstarting's schedule from the grid studies (``bash experiments/studies_strong.sh kickstart-grid``).

    python experiments/kickstart_grid.py results/kickstart-grid-pong results/kickstart-grid-breakout-m4 \
        results/kickstart-grid-pong-wide results/kickstart-grid-breakout-m4-wide --out results/kickstart-grid

Studies of the same target are ranked together (a grid extended later by studies of its own); a schedule given
twice for one target is refused.

The rule, fixed before the runs: per target, the schedules (``kickstart:kcoef<X>+kdecay<F>``, missing options at
their defaults) are ranked by the area under their evaluation curve (``results.csv`` ``auc``: the mean return over
training, less noisy than the last evaluation), best first; the schedule with the best mean rank over the targets
wins, ties to the smaller initial weight, then the shorter decay. Writes ``grid.csv`` (schedule, target, auc,
final return, rank) and ``grid.md``; prints the table and the choice. One seed per schedule and target: a coarse
choice, said beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from choose import mean_rank_order, rank_within_targets, refuse_twice, study_means
from zoo_rl.files import RESULTS, atomic_write_bytes, write_csv_atomic
from zoo_rl.study import kickstart_schedule


def grid_table(studies: list[Path]) -> pd.DataFrame:
    """One row per (schedule, target) of the grid studies' kickstarted runs, with the rank within the target."""
    table = study_means(studies, lambda m: kickstart_schedule(m) is not None)
    for study in studies:
        if str(study) not in set(table["study"]):
            raise SystemExit(f"{Path(study) / RESULTS} has no kickstarted run.")
    schedule = table["method"].map(kickstart_schedule)
    table["kcoef"] = schedule.map(lambda s: s["kcoef"])
    table["kdecay"] = schedule.map(lambda s: s["kdecay"])
    refuse_twice(table, ["kcoef", "kdecay"], "schedule")
    # Ranked within each target over every study given: a grid extended later by a study of its own ranks as one.
    return rank_within_targets(table.drop(columns="study"))


def choose(table: pd.DataFrame) -> pd.DataFrame:
    """Schedules by mean rank over the targets (best first; ties: smaller kcoef, then shorter kdecay). A schedule
    run on fewer targets than the others comes after them all: its mean rank is not comparable."""
    return mean_rank_order(table, ["kcoef", "kdecay"], ["kcoef", "kdecay"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studies", nargs="+", type=Path, help="published grid studies (results/<name>)")
    parser.add_argument("--out", type=Path, default=None, help="folder for grid.csv and grid.md")
    args = parser.parse_args()
    table = grid_table(args.studies)
    ranking = choose(table)
    wide = table.pivot_table(index=["kcoef", "kdecay"], columns="target", values=["auc", "final_return", "rank"])
    print(wide.round(2).to_string())
    print("\nby mean rank:\n" + ranking.to_string(index=False))
    best = ranking.iloc[0]
    seeds = int(table["seeds"].min())
    line = (f"chosen: kcoef {best['kcoef']:g}, kdecay {best['kdecay']:g} (mean rank {best['mean_rank']:g} over "
            f"{int(best['targets'])} targets; {seeds} seed(s) per schedule and target)")
    print(line)
    if args.out is not None:
        write_csv_atomic(table, args.out / "grid.csv")
        markdown = ["| kcoef | kdecay | " + " | ".join(f"{t}: AUC (rank), final" for t in sorted(table['target'].unique()))
                    + " | mean rank |", "| --- | --- | " + " | ".join("---" for _ in table["target"].unique()) + " | --- |"]
        for _, r in ranking.iterrows():
            cells = []
            for target in sorted(table["target"].unique()):
                row = table[(table["target"] == target) & (table["kcoef"] == r["kcoef"]) & (table["kdecay"] == r["kdecay"])]
                cells.append("" if row.empty else f"{row['auc'].item():.2f} ({row['rank'].item():g}), "
                             f"{row['final_return'].item():.2f}")
            markdown.append(f"| {r['kcoef']:g} | {r['kdecay']:g} | " + " | ".join(cells) + f" | {r['mean_rank']:g} |")
        atomic_write_bytes(args.out / "grid.md", ("\n".join(markdown) + f"\n\n{line}\n").encode())
        print(f"wrote {args.out / 'grid.csv'} and {args.out / 'grid.md'}")


if __name__ == "__main__":
    main()
