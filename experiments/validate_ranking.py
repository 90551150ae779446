"""Check the source ranking against the fine-tunes of published studies.

    python experiments/validate_ranking.py results/pong-100k results/breakout-loo-100k ... --out results/ranking

For each study folder with fine-tunes (``results.csv`` and ``study.json``, as ``publish.py`` writes
them), the ranking of the study's zoo for its target (``ranking.csv`` in the study folder: computed
with :func:`zoo_rl.rank_sources`'s defaults and written there when missing), then one row: the
fine-tunes' hindsight-best source and its rank, the top-ranked source, the difference of the
top-ranked source's fine-tune to the best one with its 95% bootstrap interval over seeds, and the
Spearman correlation between rank and the fine-tunes' mean final returns. Only sources with a
fine-tune count. A study tests the ranking (``tests_ranking``) only where it fine-tunes at least two sources,
the ranking's top source among them: with one fine-tune (Pong at 500k steps fine-tunes only the related
source) the top-ranked fine-tune is the best by construction, and a study that leaves the top source out says
nothing about it. Writes ``validation.csv`` and ``validation.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from zoo_rl.metrics import difference_interval
from zoo_rl.files import RANKING, RESULTS, STUDY, write_csv_atomic
from zoo_rl.study import StudyConfig, plan, study_ranking


def validate(study_dir: Path) -> dict:
    """One row of the validation table for a published study folder."""
    record = json.loads((study_dir / STUDY).read_text())
    config = StudyConfig(target=record["target"], mode=record.get("mode"), difficulty=record.get("difficulty"),
                         zoo=record.get("zoo"), methods=["finetune"], seeds=1, out=study_dir)
    job = plan(config)[0]
    ranking = study_ranking(config, job.task, job.zoo)
    results = pd.read_csv(study_dir / RESULTS)
    finetunes = results[results["method"].str.startswith("finetune:")].assign(
        source=lambda t: t["method"].str.removeprefix("finetune:"))
    means = finetunes.groupby("source")["final_return"].mean()
    ranked = ranking[ranking["source"].isin(means.index)].sort_values("rank").reset_index(drop=True)
    best = means.idxmax()
    top = ranked["source"][0]
    ranking_top = ranking.sort_values("rank")["source"].iloc[0]
    low, high = difference_interval(finetunes.loc[finetunes["source"] == top, "final_return"].to_numpy(),
                                    finetunes.loc[finetunes["source"] == best, "final_return"].to_numpy())
    rho = spearmanr(-ranked["rank"], means[ranked["source"]].to_numpy()).statistic if len(ranked) > 2 else np.nan
    return {"study": study_dir.name, "target": job.task.slug, "fine_tuned_sources": len(ranked),
            "best_finetune": best, "best_return": means[best], "rank_of_best": int(ranked.index[ranked["source"] == best][0]) + 1,
            "top_ranked": top, "top_ranked_basis": ranked["basis"][0], "top_ranked_return": means[top],
            "top_minus_best": means[top] - means[best], "top_minus_best_low": low, "top_minus_best_high": high,
            "not_shown_worse": bool(high >= 0), "tests_ranking": bool(len(ranked) >= 2 and top == ranking_top),
            "spearman": rho,
            "ranking_agent_steps": int(ranking["agent_steps"].sum())}


def verdict(row) -> str:
    """The "not shown worse" cell: yes / no, or why the study does not test the ranking."""
    if not row.tests_ranking:
        return ("untested: one fine-tune" if row.fine_tuned_sources < 2
                else "untested: the ranking's top source has no fine-tune")
    return "yes" if row.not_shown_worse else "no"


def markdown(table: pd.DataFrame) -> str:
    lines = ["| study | best fine-tune (return) | its rank | top-ranked (basis) | top − best [95% CI] | not shown worse | "
             "Spearman |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in table.itertuples():
        lines.append(f"| {r.study} | {r.best_finetune} ({r.best_return:.1f}) | {r.rank_of_best} of "
                     f"{r.fine_tuned_sources} | {r.top_ranked} ({r.top_ranked_basis}) | {r.top_minus_best:+.1f} "
                     f"[{r.top_minus_best_low:+.1f}, {r.top_minus_best_high:+.1f}] | "
                     f"{verdict(r)} | {r.spearman:+.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("studies", nargs="+", type=Path, help="published study folders (results/<study>)")
    p.add_argument("--out", type=Path, required=True, help="folder for validation.csv and validation.md")
    args = p.parse_args(argv)
    rows = []
    for study in args.studies:
        rows.append(validate(study))
        print(f"{study}: {RANKING} checked", flush=True)
    table = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(table, args.out / "validation.csv")
    (args.out / "validation.md").write_text(markdown(table))
    print(markdown(table))
    tested = table[table["tests_ranking"]]
    print(f"first or not shown worse on {int(tested['not_shown_worse'].sum())} of the {len(tested)} studies that "
          f"test the ranking ({len(table) - len(tested)} do not)")


if __name__ == "__main__":
    main()
