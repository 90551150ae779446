"""Sample efficiency of a study's methods: agent steps to reach a return level, and the ratio to scratch's.

    python experiments/efficiency.py levels --zoo agents/zoo-strong --targets Pong   # fix Pong's -> results/levels.csv
    python experiments/efficiency.py results/pong-100k                  # -> results/pong-100k/efficiency.{csv,md}

The levels are fixed *before* looking at the transfer runs, per target, by the rules of
``experiments/levels.yml``:

- ``scratch-final``: scratch's mean final return at its longest published budget (the ``scratch`` study
  of the target's entry);
- ``half-source``: halfway from the random policy's return to the related source's own return (both from
  the source's ``meta.json``, on the source's own game and flavour): half of the source's return where
  random play scores 0, and still a level above random play on games whose returns are negative (Pong).
  Targets without a related source (leave-one-out) have only the first level.

Scratch's steps to a level come from the same scratch study (its longest runs; a seed that never reaches the
level stands in with its budget, and the ratio is then an upper bound), or, where the entry names one, from a
longer reference (``scratch_steps`` with its ``reference``: a long scratch run or a published training log). How crossings are read, and what a
method that never crosses gets: :mod:`zoo_rl.efficiency`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import yaml

from zoo_rl.efficiency import (Level, efficiency_table, format_ratio, format_steps, held_by_every_transfer,
                                scratch_reference_steps)
from zoo_rl.files import CURVES, RESULTS, atomic_write_bytes, write_csv_atomic

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "experiments" / "levels.yml"
#: The levels of the default zoo's studies; ``--levels`` names another (the 1M zoo's: results/levels-zoo-1m.csv).
LEVELS = ROOT / "results" / "levels.csv"
LEVEL_COLUMNS = ["target", "level_name", "level", "derivation", "scratch_steps", "scratch_censored",
                 "scratch_reference"]


def read_rules(path: Path = RULES) -> dict[str, dict]:
    """``target -> {scratch, source, scratch_steps}`` from ``levels.yml``, checked."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: it names, per target, the scratch study and the related source.")
    rules = yaml.safe_load(path.read_text()) or {}
    allowed = {"scratch", "source", "scratch_steps"}
    for target, rule in rules.items():
        unknown = set(rule or {}) - allowed
        if unknown or not (rule or {}).get("scratch"):
            raise ValueError(f"{path}: entry {target!r} needs 'scratch' (a published study) and may have 'source' and "
                             f"'scratch_steps'; unknown keys: {sorted(unknown)}.")
    return rules


def derive_levels(rules: dict[str, dict], zoo: Path, root: Path = ROOT) -> pd.DataFrame:
    """The levels of every target of ``rules``, from its scratch study's results and ``zoo``'s sources."""
    rows = []
    for target, rule in rules.items():
        study = root / rule["scratch"]
        results_path = study / RESULTS
        if not results_path.is_file():
            raise FileNotFoundError(f"{target}: {results_path} is missing; 'scratch' must name a published study "
                                    "with scratch runs (results/<study>).")
        results = pd.read_csv(results_path)
        scratch = results[results["method"] == "scratch"]
        if scratch.empty:
            raise ValueError(f"{target}: {results_path} has no scratch runs.")
        budget = int(scratch["steps"].max())
        curves = pd.read_csv(study / CURVES)
        budgets = {int(r.seed): float(r.steps) for r in scratch.itertuples()}
        reference = f"{rule['scratch']} scratch ({len(scratch)} seeds, {budget:,} steps)"
        levels = [("scratch-final", float(scratch["final_return"].mean()),
                   f"scratch's mean final return at {budget:,} steps ({len(scratch)} seeds, {rule['scratch']})")]
        if rule.get("source"):
            meta_path = zoo / rule["source"] / "meta.json"
            if not meta_path.is_file():
                raise FileNotFoundError(f"{target}: {meta_path} is missing; train the source first, or pass the zoo "
                                        "that holds it (--zoo).")
            meta = json.loads(meta_path.read_text())
            own, rand = float(meta["eval_return_mean"]), float(meta["random_return_mean"])
            levels.append(("half-source", rand + 0.5 * (own - rand),
                           f"halfway from random ({rand:g}) to {rule['source']}'s own return ({own:g}, "
                           f"{meta.get('steps', 0):,} steps, {zoo.name}/{rule['source']})"))
        for name, value, derivation in levels:
            steps, censored = scratch_reference_steps(curves, value, budgets)
            given = (rule.get("scratch_steps") or {}) if name == "half-source" else {}
            if given:
                steps, censored = (float(given["steps"]),), False
            rows.append({"target": target, "level_name": name, "level": value, "derivation": derivation,
                         "scratch_steps": ";".join(f"{s:.0f}" for s in steps),
                         "scratch_censored": censored,
                         "scratch_reference": given.get("reference", "") if given else reference})
    return pd.DataFrame(rows, columns=LEVEL_COLUMNS)


def levels_for(target: str, levels_path: Path = LEVELS) -> list[Level]:
    """The fixed levels of ``target`` from ``levels.csv``."""
    if not levels_path.is_file():
        raise FileNotFoundError(f"{levels_path} does not exist: fix the levels first with "
                                "`python experiments/efficiency.py levels --zoo <zoo>`.")
    table = pd.read_csv(levels_path).fillna({"scratch_reference": ""})
    rows = table[table["target"] == target]
    if rows.empty:
        raise ValueError(f"{levels_path} has no levels for target {target!r} (it has {sorted(table['target'].unique())}); "
                         "add the target to experiments/levels.yml and rerun `efficiency.py levels`.")
    return [Level(r.level_name, float(r.level), tuple(float(x) for x in str(r.scratch_steps).split(";")),
                  bool(r.scratch_censored), r.scratch_reference) for r in rows.itertuples()]


def study_efficiency(study: Path, levels_path: Path = LEVELS, reps: int = 2000) -> tuple[pd.DataFrame, str]:
    """``(table, markdown)`` of a study folder (a run folder or a published ``results/`` one)."""
    study = Path(study)
    curves_path = study / CURVES
    if not curves_path.is_file():
        raise FileNotFoundError(f"{curves_path} is missing: publish the study first "
                                "(`python experiments/publish.py <study>`) or rebuild its tables.")
    curves = pd.read_csv(curves_path)
    target = _target_of(study)
    budgets = {}
    if (study / RESULTS).is_file():
        results = pd.read_csv(study / RESULTS)
        budgets = {(r.method, int(r.seed)): float(r.steps) for r in results.itertuples()}
    table = efficiency_table(curves, levels_for(target, levels_path), budgets=budgets, reps=reps)
    return table, efficiency_markdown(table, target)


def _target_of(study: Path) -> str:
    if (study / RESULTS).is_file():
        targets = pd.read_csv(study / RESULTS)["target"].unique()
        if len(targets) == 1:
            return str(targets[0])
    raise ValueError(f"{study}: cannot tell the study's target ({RESULTS} missing or holding several targets).")


def efficiency_markdown(table: pd.DataFrame, target: str) -> str:
    """The efficiency table in markdown, one section per level, with what each level means."""
    lines = [f"### Steps to reach a return level ({target})", "",
             "Per seed, the first evaluation at or above the level (step 0 counts); median over seeds [95% bootstrap "
             "interval]; `> N`: the median seed never reached it within its N steps. Ratio: the method's median steps "
             "over scratch's (lower is better; `≤`: scratch's own runs did not reach the level, so its budget stands in "
             "and the ratio is an upper bound).", ""]
    for name, rows in table.groupby("level_name", sort=False):
        level = rows["level"].iloc[0]
        reference = rows["scratch_reference"].iloc[0]
        lines += [f"**{name}** (return {level:.1f}; scratch's steps from {reference or 'no scratch runs'})", ""]
        scratch_row = rows[rows["method"] == "scratch"]
        if (rows["scratch_steps"] == 0).any() or (not scratch_row.empty and scratch_row["held_at_start"].iloc[0] > 0):
            lines += ["Scratch holds this level at step 0 in some seeds: it is within random play's reach, so it cannot "
                      "measure transfer (no ratio where the reference needs 0 steps).", ""]
        if held_by_every_transfer(table, name):
            lines += ["Every transferred method holds this level at step 0: it cannot tell them apart; read the "
                      "higher level.", ""]
        lines += ["| method | reached | at step 0 | steps to level | ratio to scratch |", "| --- | --- | --- | --- | --- |"]
        for r in rows.sort_values(["steps_median", "method"]).itertuples():
            lines.append(f"| {r.method} | {r.reached}/{r.runs} | {r.held_at_start}/{r.runs} | "
                         f"{format_steps(r.steps_median, r.steps_low, r.steps_high, r.budget)} | "
                         f"{'reference' if r.method == 'scratch' else format_ratio(r.ratio, r.ratio_low, r.ratio_high, bool(r.scratch_censored))} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "levels":
        parser = argparse.ArgumentParser(prog="efficiency.py levels", description="fix the levels of every target")
        parser.add_argument("--zoo", type=Path, required=True, help="the zoo whose related sources set half-source")
        parser.add_argument("--rules", type=Path, default=RULES)
        parser.add_argument("--out", type=Path, default=LEVELS)
        parser.add_argument("--targets", default=None,
                            help="only these targets (comma-separated), added to or replacing theirs in --out: a "
                                 "target's levels are fixed once its related source is trained, before its studies")
        args = parser.parse_args(argv[1:])
        rules = read_rules(args.rules)
        if args.targets:
            wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
            unknown = sorted(set(wanted) - set(rules))
            if unknown:
                raise SystemExit(f"--targets: {unknown} not in {args.rules}; its targets: {', '.join(rules)}.")
            rules = {t: rules[t] for t in wanted}
        table = derive_levels(rules, args.zoo)
        if args.targets and args.out.is_file():
            kept = pd.read_csv(args.out, dtype={"scratch_steps": str})
            table = pd.concat([kept[~kept["target"].isin(table["target"])], table], ignore_index=True)
        write_csv_atomic(table, args.out)
        print(table.to_string(index=False))
        print(f"wrote {args.out}")
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studies", nargs="+", type=Path, help="study folders (runs/transfer/... or results/...)")
    parser.add_argument("--levels", type=Path, default=LEVELS)
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    for study in args.studies:
        table, markdown = study_efficiency(study, args.levels, reps=args.reps)
        write_csv_atomic(table, study / "efficiency.csv")
        atomic_write_bytes(study / "efficiency.md", (markdown + "\n").encode())
        print(markdown)
        print(f"wrote {study / 'efficiency.csv'} and {study / 'efficiency.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
