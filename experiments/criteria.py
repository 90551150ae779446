"""Check the success criteria of a set of transfer studies, met or not, from their published tables.

    python experiments/criteria.py \\
        --related results/pong-100k-strong \\
        --related results/breakout-m4-100k-strong results/breakout-m4-100k \\
        --loo results/breakout-loo-100k-strong results/breakout-loo-100k \\
        --loo results/roadrunner-loo-100k-strong results/roadrunner-loo-100k \\
        --ranking results/ranking-strong --out results/criteria-strong

Each ``--related`` or ``--loo`` names one target: its study folder, and optionally a second published study
of the same target and budget whose ``scratch`` runs stand in where the first has none (scratch does not depend
on the zoo). Only ``scratch`` is taken from the second folder, so methods of another zoo never mix in.

The criteria, each with the 95% bootstrap interval of :func:`zoo_rl.metrics.difference_interval` over seeds
("shown below" means the interval of the difference lies below 0):

- ``related``: on a target with a related source, the best zoo method (by mean final return, among the methods
  with the study's full seeds) is not shown below the best fine-tune chosen in hindsight (the same way), and is
  shown above scratch; where the study has MULTIPOLAR, the best zoo method against it is reported beside;
- ``loo``: on a target without one, no zoo method of the default set is shown below scratch;
- ``ranking``: the ranking's top source is the hindsight-best fine-tune or not shown worse than it, on at least
  ``--ranking-studies`` studies (``validation.csv`` of ``experiments/validate_ranking.py``), counting only the
  studies that test it (two fine-tunes or more, the top-ranked source's among them);
- ``efficiency``: on at least one related target, a zoo method reaches the higher return level in at most a
  fifth of the steps scratch needs (``efficiency.csv`` of ``experiments/efficiency.py`` in the study folder:
  the ``half-source`` level, the ratio of median steps and its interval); "shown" when the interval's upper end
  is within a fifth too. Judged over the related targets that have that level (whole-policy targets do not).

Zoo methods are the study's Zoo-Tuning family (``uniform``, ``zoo``, ``zoo-lite`` and their options, the
ranked start and a kickstarted zoo method included). Kickstarting alone and the other baselines are reported
beside them in ``criteria.csv`` but do not count as zoo methods. Writes ``criteria.csv`` (one row per target
and comparison) and ``criteria.md`` into ``--out``, atomically, and prints the verdicts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from zoo_rl.files import RESULTS, atomic_write_bytes, write_csv_atomic
from zoo_rl.metrics import difference_interval
from zoo_rl.study.methods import DEFAULT_METHODS, POLICY_DEFAULT_METHODS, ZOO_GATES

#: The higher of a related target's two return levels (experiments/levels.yml).
HIGHER_LEVEL = "half-source"
#: The share of scratch's steps a zoo method must need at most.
EFFICIENCY_SHARE = 0.2
#: Baselines the best zoo method of a related target is compared with, reported beside the criterion (MULTIPOLAR:
#: the multi-source baseline of whole-policy studies).
BESIDE = ("multipolar",)


def is_zoo_method(method: str) -> bool:
    """A Zoo-Tuning method: ``uniform``, ``zoo``, ``zoo-lite`` with any options (``zoo-lite:ranked+kickstart``)."""
    return method.partition(":")[0] in ZOO_GATES


def target_runs(folders: list[Path]) -> pd.DataFrame:
    """The runs of one target: every method of the first study, ``scratch`` from the second where the first has
    none. Refuses folders without ``results.csv``, of different targets or step budgets, and a first study that
    has neither scratch nor a second folder."""
    if not 1 <= len(folders) <= 2:
        raise SystemExit(f"A target takes its study and at most one study to take scratch from, got {len(folders)}.")
    tables = []
    for folder in folders:
        path = Path(folder) / RESULTS
        if not path.is_file():
            raise SystemExit(f"{path} is missing: publish the study first (experiments/publish.py).")
        tables.append(pd.read_csv(path))
    runs = tables[0]
    if len(tables) == 2:
        first, other = tables
        for column in ("target", "steps"):
            if set(first[column]) != set(other[column]):
                raise SystemExit(f"{folders[0]} and {folders[1]} differ in {column} ({sorted(set(first[column]))} "
                                 f"against {sorted(set(other[column]))}): their returns do not compare.")
        if (first["method"] == "scratch").any():
            raise SystemExit(f"{folders[0]} has its own scratch runs: name it alone, or leave its scratch out.")
        runs = pd.concat([first, other[other["method"] == "scratch"]], ignore_index=True)
    if not (runs["method"] == "scratch").any():
        raise SystemExit(f"No scratch runs for {folders[0]}: name a second study of the same target that has them.")
    return runs


def compare(runs: pd.DataFrame, method: str, against: str) -> dict:
    """``method`` against ``against``: means and the interval of the difference of final returns."""
    a = runs.loc[runs["method"] == method, "final_return"].to_numpy()
    b = runs.loc[runs["method"] == against, "final_return"].to_numpy()
    low, high = difference_interval(a, b)
    return {"method": method, "against": against, "seeds": len(a), "against_seeds": len(b), "mean": a.mean(),
            "against_mean": b.mean(), "difference": a.mean() - b.mean(), "low": low, "high": high,
            "shown_above": bool(low > 0), "shown_below": bool(high < 0)}


def best_of(runs: pd.DataFrame, keep) -> str | None:
    """The method with the highest mean final return among those ``keep`` accepts and that have the study's full
    seeds (the most any method has): a method trained on fewer seeds (runs kept from an earlier set of defaults)
    is not chosen on a mean that its missing seeds could change. None if there is none."""
    seeds = runs.groupby("method")["final_return"].size()
    full = runs["method"].map(seeds) == seeds.max()
    means = runs[runs["method"].map(keep) & full].groupby("method")["final_return"].mean()
    return None if means.empty else str(means.idxmax())


def related_rows(runs: pd.DataFrame) -> tuple[list[dict], bool]:
    """Rows and verdict of the ``related`` criterion for one target."""
    target = str(runs["target"].iloc[0])
    zoo = best_of(runs, is_zoo_method)
    finetune = best_of(runs, lambda m: m.startswith("finetune:"))
    if zoo is None or finetune is None:
        raise SystemExit(f"{target}: the related criterion needs zoo methods and fine-tunes in the study.")
    vs_finetune = compare(runs, zoo, finetune)
    vs_scratch = compare(runs, zoo, "scratch")
    met = not vs_finetune["shown_below"] and vs_scratch["shown_above"]
    rows = [dict(criterion="related", target=target, **vs_finetune), dict(criterion="related", target=target,
                                                                           **vs_scratch)]
    for baseline in BESIDE:
        if (runs["method"] == baseline).any():
            rows.append(dict(criterion=f"related (beside {baseline}: not counted)", target=target,
                             **compare(runs, zoo, baseline)))
    return rows, met


def counted_in_loo(method: str) -> bool:
    """A zoo method of the default set (of image or of whole-policy studies): the ones the criterion judges."""
    return is_zoo_method(method) and method in {*DEFAULT_METHODS, *POLICY_DEFAULT_METHODS}


def loo_rows(runs: pd.DataFrame) -> tuple[list[dict], bool]:
    """Rows and verdict of the ``loo`` criterion for one target: every zoo method of the default set against
    scratch, and the other methods beside them (reported, not counted)."""
    target = str(runs["target"].iloc[0])
    methods = [m for m in runs["method"].unique() if m != "scratch" and not m.startswith("finetune:")]
    rows = [dict(criterion="loo" if counted_in_loo(m) else "loo (not counted: no default zoo method)", target=target,
                 **compare(runs, m, "scratch")) for m in methods]
    if not any(counted_in_loo(m) for m in methods):
        raise SystemExit(f"{target}: the leave-one-out criterion needs default zoo methods in the study.")
    met = not any(r["shown_below"] for r in rows if r["criterion"] == "loo")
    return rows, met


def efficiency_rows(study: Path, target: str) -> tuple[list[dict], bool, bool] | None:
    """The zoo methods' steps to the higher level against scratch's: rows, met (point), shown (interval); None
    where the target has no higher level (a whole-policy target, whose only level is scratch's final return)."""
    path = Path(study) / "efficiency.csv"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run python experiments/efficiency.py {study} first.")
    table = pd.read_csv(path)
    if not (table["level_name"] == HIGHER_LEVEL).any():
        return None
    table = table[(table["level_name"] == HIGHER_LEVEL) & table["method"].map(is_zoo_method)]
    rows = [{"criterion": "efficiency", "target": target, "method": r.method, "against": "scratch",
             "difference": r.ratio, "low": r.ratio_low, "high": r.ratio_high, "mean": r.steps_median,
             "against_mean": r.scratch_steps, "seeds": r.runs,
             "shown_above": bool(r.ratio_high <= EFFICIENCY_SHARE), "shown_below": False}
            for r in table.itertuples()]
    ratios = table["ratio"].to_numpy(dtype=float)
    highs = table["ratio_high"].to_numpy(dtype=float)
    return rows, bool(np.any(ratios <= EFFICIENCY_SHARE)), bool(np.any(highs <= EFFICIENCY_SHARE))


def ranking_verdict(folder: Path, needed: int) -> tuple[int, int, bool]:
    """(studies where the top-ranked fine-tune is not shown worse than the best, studies that test it, met).

    Only studies that test the ranking count (``tests_ranking``: at least two fine-tunes, the ranking's top
    source among them); a study with one fine-tune would pass by construction.
    """
    path = Path(folder) / "validation.csv"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run python experiments/validate_ranking.py ... --out {folder} first.")
    table = pd.read_csv(path)
    if "tests_ranking" not in table:
        raise SystemExit(f"{path} has no tests_ranking column (written by an older validate_ranking.py): run "
                         f"python experiments/validate_ranking.py ... --out {folder} again.")
    table = table[table["tests_ranking"].astype(bool)]
    good = int(table["not_shown_worse"].astype(bool).sum())
    return good, len(table), good >= needed


def fmt(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:+.2f}"


def markdown(rows: pd.DataFrame, verdicts: list[tuple[str, str, bool]], notes: list[str]) -> str:
    """The verdicts, then ``notes`` (criteria not judged, and why), then every compared pair."""
    lines = ["| criterion | target | verdict |", "| --- | --- | --- |"]
    lines += [f"| {c} | {t} | {'met' if ok else 'not met'} |" for c, t, ok in verdicts]
    for note in notes:
        lines += ["", note]
    lines.append("")
    lines += ["| criterion | target | method | against | difference [95% CI] | seeds |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows.itertuples():
        lines.append(f"| {r.criterion} | {r.target} | {r.method} | {r.against} | {fmt(r.difference)} "
                     f"[{fmt(r.low)}, {fmt(r.high)}] | {r.seeds} |")
    if "criterion" in rows and (rows["criterion"] == "efficiency").any():
        lines += ["", "Efficiency rows: the ratio of median steps to the higher level, zoo method over scratch."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--related", nargs="+", type=Path, action="append", default=[],
                        help="a target with a related source: its study [and a study to take scratch from]")
    parser.add_argument("--loo", nargs="+", type=Path, action="append", default=[],
                        help="a target without one: its study [and a study to take scratch from]")
    parser.add_argument("--ranking", type=Path, default=None, help="experiments/validate_ranking.py's --out folder")
    parser.add_argument("--ranking-studies", type=int, default=4,
                        help="studies on which the top-ranked fine-tune must not be shown worse (default 4)")
    parser.add_argument("--out", type=Path, default=None, help="folder for criteria.csv and criteria.md")
    args = parser.parse_args(argv)
    if not (args.related or args.loo or args.ranking):
        parser.error("name at least one --related or --loo target, or --ranking.")
    rows: list[dict] = []
    verdicts: list[tuple[str, str, bool]] = []
    efficiency_met = efficiency_shown = False
    unjudged = []  # related studies without efficiency.csv: the efficiency criterion is not judged over them
    leveled = 0  # related studies whose efficiency.csv has the higher level
    for folders in args.related:
        target_rows, met = related_rows(target_runs(folders))
        rows += target_rows
        verdicts.append(("related", target_rows[0]["target"], met))
        if (Path(folders[0]) / "efficiency.csv").is_file():
            found = efficiency_rows(folders[0], target_rows[0]["target"])
            if found is not None:
                more, point, shown = found
                rows += more
                leveled += 1
                efficiency_met, efficiency_shown = efficiency_met or point, efficiency_shown or shown
        else:
            unjudged.append(str(folders[0]))
    for folders in args.loo:
        target_rows, met = loo_rows(target_runs(folders))
        rows += target_rows
        verdicts.append(("loo", target_rows[0]["target"], met))
    notes = []  # criteria not judged, and why: printed and written below the verdicts
    if args.related and not unjudged and not leveled:
        notes.append(f"Efficiency not judged: no related target has the level {HIGHER_LEVEL!r} (a whole-policy target's "
                     "only level is scratch's final return: its efficiency.md).")
    elif args.related and not unjudged:
        verdicts.append(("efficiency (a fifth of scratch's steps, point)", "any related target", efficiency_met))
        verdicts.append(("efficiency (a fifth of scratch's steps, interval)", "any related target", efficiency_shown))
    elif unjudged:  # a verdict over part of the targets could say "not met" where the others would meet it
        notes.append(f"Efficiency not judged: no efficiency.csv in {', '.join(unjudged)} (run python "
                     f"experiments/efficiency.py {' '.join(unjudged)}).")
    if args.ranking is not None:
        good, total, met = ranking_verdict(args.ranking, args.ranking_studies)
        verdicts.append((f"ranking ({good} of {total} studies that test it not shown worse, {args.ranking_studies} needed)",
                         "all studies", met))
    table = pd.DataFrame(rows)
    for note in notes:
        print(note)
    for criterion, target, met in verdicts:
        print(f"{'met    ' if met else 'NOT MET'}  {criterion}: {target}")
    if args.out is not None:
        write_csv_atomic(table, args.out / "criteria.csv")
        atomic_write_bytes(args.out / "criteria.md", markdown(table, verdicts, notes).encode())
        print(f"wrote {args.out / 'criteria.csv'} and {args.out / 'criteria.md'}")


if __name__ == "__main__":
    main()
