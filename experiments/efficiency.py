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

An entry's ``scratch_log`` names a published training log (SB3 Monitor files of one scratch run, e.g. the RL
Baselines3 Zoo's, under ``results/rlzoo/``). It serves only the levels that none of the scratch study's seeds
reach, and it is read when the tables are made (:func:`apply_scratch_log`), so ``levels.csv`` keeps the study's
own scratch steps and needs no new derivation. The tables mark such a level (``scratch_log``, and a note under
its table): one run of another protocol, no interval on scratch's side.

    python experiments/efficiency.py log results/rlzoo/ppo-PongNoFrameskip-v4_1 --target Pong \
        --levels results/levels.csv --studies results/pong-500k   # the log's crossings, other readings, studies' scratch
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from zoo_rl.efficiency import (MONITOR_EVERY, MONITOR_WINDOW, Level, crossing_step, efficiency_table, format_ratio,
                                format_step_count, format_steps, held_by_every_transfer, median_steps,
                                monitor_last_step, monitor_steps_to_level, read_monitor_files,
                                scratch_reference_steps)
from zoo_rl.files import CURVES, RESULTS, atomic_write_bytes, write_csv_atomic

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "experiments" / "levels.yml"
#: The levels of the default zoo's studies; ``--levels`` names another (the 1M zoo's: results/levels-zoo-1m.csv).
LEVELS = ROOT / "results" / "levels.csv"
LEVEL_COLUMNS = ["target", "level_name", "level", "derivation", "scratch_steps", "scratch_censored",
                 "scratch_reference"]


def read_rules(path: Path = RULES) -> dict[str, dict]:
    """``target -> {scratch, source, scratch_steps, scratch_log}`` from ``levels.yml``, checked.

    ``scratch_log`` is a folder of Monitor files, or ``{path, reference}`` with the words the tables print for it;
    an entry gives at most one of ``scratch_steps`` and ``scratch_log`` (one longer reference).
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: it names, per target, the scratch study and the related source.")
    rules = yaml.safe_load(path.read_text()) or {}
    allowed = {"scratch", "source", "scratch_steps", "scratch_log"}
    for target, rule in rules.items():
        unknown = set(rule or {}) - allowed
        if unknown or not (rule or {}).get("scratch"):
            raise ValueError(f"{path}: entry {target!r} needs 'scratch' (a published study) and may have 'source', "
                             f"'scratch_steps' and 'scratch_log'; unknown keys: {sorted(unknown)}.")
        if rule.get("scratch_steps") and rule.get("scratch_log"):
            raise ValueError(f"{path}: entry {target!r} gives both 'scratch_steps' and 'scratch_log': name one longer "
                             "reference.")
        log = rule.get("scratch_log")
        if log is not None and not (isinstance(log, str) or (isinstance(log, dict) and isinstance(log.get("path"), str)
                                                             and set(log) <= {"path", "reference"})):
            raise ValueError(f"{path}: entry {target!r}: 'scratch_log' is a folder of Monitor files, or "
                             f"{{path: <folder>, reference: <words>}}; got {log!r}.")
    return rules


def _scratch_study(target: str, rule: dict, root: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[int, float]]:
    """``(scratch results, curves, budgets by seed)`` of the rule's scratch study."""
    study = root / rule["scratch"]
    results_path = study / RESULTS
    if not results_path.is_file():
        raise FileNotFoundError(f"{target}: {results_path} is missing; 'scratch' must name a published study "
                                "with scratch runs (results/<study>).")
    results = pd.read_csv(results_path)
    scratch = results[results["method"] == "scratch"]
    if scratch.empty:
        raise ValueError(f"{target}: {results_path} has no scratch runs.")
    budgets = {int(r.seed): float(r.steps) for r in scratch.itertuples()}
    return scratch, pd.read_csv(study / CURVES), budgets


def derive_levels(rules: dict[str, dict], zoo: Path, root: Path = ROOT) -> pd.DataFrame:
    """The levels of every target of ``rules``, from its scratch study's results and ``zoo``'s sources.

    A ``scratch_log`` is not read here: :func:`apply_scratch_log` reads it with the tables.
    """
    rows = []
    for target, rule in rules.items():
        scratch, curves, budgets = _scratch_study(target, rule, root)
        budget = int(scratch["steps"].max())
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
    return [_level(r) for r in rows.itertuples()]


def _level(row) -> Level:
    """A row of ``levels.csv`` (or of :func:`derive_levels`) as a :class:`Level`."""
    return Level(row.level_name, float(row.level), tuple(float(x) for x in str(row.scratch_steps).split(";")),
                 bool(row.scratch_censored), row.scratch_reference)


def scratch_log_of(rule: dict | None) -> tuple[str, str] | None:
    """``(folder, words)`` of the rule's ``scratch_log``, or ``None``."""
    log = (rule or {}).get("scratch_log")
    if not log:
        return None
    if isinstance(log, str):
        return log, f"training log {log}"
    return log["path"], log.get("reference") or f"training log {log['path']}"


def apply_scratch_log(levels: list[Level], target: str, rule: dict | None, root: Path = ROOT) -> list[Level]:
    """``levels`` with scratch's steps read from the rule's ``scratch_log`` for each level that none of the rule's
    scratch study's seeds reach (the others, and every level of a rule without a log, come back unchanged).

    The log's crossing (:func:`zoo_rl.efficiency.monitor_steps_to_level`, its fixed window and cadence) is one
    number: one run has no spread to resample, so the ratio's interval reflects only the method's seeds. A log
    that never reaches the level stands in with its last episode's step, censored (the ratio is then a bound).

    :raises FileNotFoundError: the log's folder or the scratch study is missing.
    """
    named = scratch_log_of(rule)
    if named is None:
        return list(levels)
    folder, words = named
    episodes = read_monitor_files(root / folder)
    _, curves, _ = _scratch_study(target, rule, root)
    scratch = curves[curves["method"] == "scratch"]
    out = []
    for level in levels:
        reached = any(math.isfinite(crossing_step(g["steps"].to_numpy(), g["return"].to_numpy(), level.value))
                      for _, g in scratch.groupby("seed"))
        if reached:
            out.append(level)
            continue
        steps = monitor_steps_to_level(episodes, level.value)
        censored = not math.isfinite(steps)
        if censored:
            steps = monitor_last_step(episodes)
        reference = (f"{words}, {folder}: one run, mean of its last {MONITOR_WINDOW} training episodes every "
                     f"{MONITOR_EVERY:,} steps, as {rule['scratch']} scratch never reaches it")
        out.append(replace(level, scratch_steps=(float(steps),), scratch_censored=censored,
                           scratch_reference=reference, scratch_log=True))
    return out


def study_efficiency(study: Path, levels_path: Path = LEVELS, reps: int = 2000, rules: dict[str, dict] | None = None,
                     root: Path = ROOT) -> tuple[pd.DataFrame, str]:
    """``(table, markdown)`` of a study folder (a run folder or a published ``results/`` one).

    :param rules: ``levels.yml``'s entries (default: read from :data:`RULES`): a target's ``scratch_log`` serves
        the levels its scratch study never reaches (:func:`apply_scratch_log`).
    """
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
        # Finished runs only: a run still training has not had its budget, so a level it has not reached yet
        # would read as never reached (its curve is in curves.csv, which shows runs in progress too).
        curves = curves[pd.MultiIndex.from_arrays([curves["method"], curves["seed"].astype(int)]).isin(list(budgets))]
    rules = read_rules() if rules is None else rules
    note = ""
    try:
        fixed = levels_for(target, levels_path)
    except ValueError:
        fixed = own_scratch_levels(study, target)
        if fixed is None:
            raise
        note = "\n" + OWN_SCRATCH_NOTE.format(target=target, levels=levels_path.name)
    levels = apply_scratch_log(fixed, target, rules.get(target), root)
    table = efficiency_table(curves, levels, budgets=budgets, reps=reps)
    return table, efficiency_markdown(table, target) + note


#: Said under the table of a study whose target has no fixed levels, read from its own scratch runs.
OWN_SCRATCH_NOTE = ("The target {target!r} has no levels in {levels}: its one level, `scratch-final`, is this study's own "
                    "scratch runs' mean final return (scratch does not depend on the zoo, so the level is still fixed "
                    "without the transfer runs). To fix it for every study of the target, add the target to "
                    "experiments/levels.yml and run `python experiments/efficiency.py levels --zoo <zoo> --targets <target>`.")


def own_scratch_levels(study: Path, target: str) -> list[Level] | None:
    """``scratch-final`` from the study's own scratch runs, for a target without fixed levels (a new MuJoCo body, a
    new Atari flavour); None where the study has no scratch runs."""
    results = pd.read_csv(study / RESULTS) if (study / RESULTS).is_file() else pd.DataFrame(columns=["method"])
    if not (results["method"] == "scratch").any():
        return None
    row = next(derive_levels({target: {"scratch": str(study)}}, zoo=Path(), root=Path.cwd()).itertuples())
    return [_level(row._replace(scratch_reference=row.scratch_reference.replace(str(study), "this study's", 1)))]


def _target_of(study: Path) -> str:
    if (study / RESULTS).is_file():
        targets = pd.read_csv(study / RESULTS)["target"].unique()
        if len(targets) == 1:
            return str(targets[0])
    raise ValueError(f"{study}: cannot tell the study's target ({RESULTS} missing or holding several targets).")


def _any_log(table: pd.DataFrame) -> bool:
    return "scratch_log" in table.columns and bool(table["scratch_log"].fillna(False).astype(bool).any())


def efficiency_markdown(table: pd.DataFrame, target: str) -> str:
    """The efficiency table in markdown, one section per level, with what each level means."""
    lines = [f"### Steps to reach a return level ({target})", "",
             "Per seed, the first evaluation at or above the level (step 0 counts); median over seeds [95% bootstrap "
             "interval]; `> N`: the median seed never reached it within its N steps. Ratio: the method's median steps "
             "over scratch's (lower is better; `≤`: scratch's own runs did not reach the level, so its budget stands in "
             "and the ratio is an upper bound" + ("; `*`: scratch's steps come from a published training log, see the "
                                                   "note under the table" if _any_log(table) else "") + ").", ""]
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
        from_log = _any_log(rows)
        lines += ["| method | reached | at step 0 | steps to level | ratio to scratch |", "| --- | --- | --- | --- | --- |"]
        for r in rows.sort_values(["steps_median", "method"]).itertuples():
            ratio = format_ratio(r.ratio, r.ratio_low, r.ratio_high, bool(r.scratch_censored))
            lines.append(f"| {r.method} | {r.reached}/{r.runs} | {r.held_at_start}/{r.runs} | "
                         f"{format_steps(r.steps_median, r.steps_low, r.steps_high, r.budget)} | "
                         f"{'reference' if r.method == 'scratch' else ratio + (' *' if from_log and math.isfinite(r.ratio) else '')} |")
        lines.append("")
        if from_log:
            steps = rows["scratch_steps"].iloc[0]
            lines += [f"\\* Scratch's steps to this level ({format_step_count(steps)}) come from a published training "
                      "log, as the levels' scratch study never reaches it: one run "
                      "(its crossing enters the ratio as a fixed number, so the interval reflects only the method's "
                      "seeds) of another protocol, read from its training episodes. Its caveats: docs/studies.md, "
                      "\"Sample efficiency: steps to a return level\".", ""]
    return "\n".join(lines)


#: Other readings of a log printed beside the one the tables use: ``(label, window, every)``.
LOG_READINGS = [(f"{MONITOR_WINDOW} every {MONITOR_EVERY // 1000}k (tables)", MONITOR_WINDOW, MONITOR_EVERY),
                ("100 after each episode (SB3 ep_rew_mean)", 100, None),
                (f"{MONITOR_WINDOW} after each episode", MONITOR_WINDOW, None),
                ("5 every 25k", 5, 25_000), ("16 every 25k", 16, 25_000), (f"{MONITOR_WINDOW} every 10k", MONITOR_WINDOW, 10_000)]


def log_report(folder: Path, levels: list[tuple[str, float]], studies: list[Path] = ()) -> str:
    """What a training log says about ``levels`` (``(name, return)``): its rows, its crossing as the tables read it
    and under the other readings of :data:`LOG_READINGS`, and, for each study of ``studies``, the crossing of each
    scratch seed (evaluations; ``> budget`` where a seed never reaches it)."""
    episodes = read_monitor_files(folder)
    rows = episodes.groupby("env").size()
    lines = [f"{folder}: {len(rows)} environments, {len(episodes):,} episodes ("
             + ", ".join(f"env {env}: {n}" for env, n in rows.items())
             + f"), last episode ending at {monitor_last_step(episodes):,.0f} agent steps", ""]
    table = pd.DataFrame({label: [monitor_steps_to_level(episodes, value, window=window, every=every)
                                  if window <= len(episodes) else math.nan for _, value in levels]
                          for label, window, every in LOG_READINGS},
                         index=[f"{name} {value:g}" for name, value in levels])
    lines += ["agent steps at the first reading at or above the level (window of finished episodes, reading cadence; "
              "n/a: fewer episodes than the window):",
              table.map(lambda x: "n/a" if math.isnan(x) else "never" if not math.isfinite(x) else f"{x:,.0f}"
                        ).to_string(), ""]
    for study in studies:
        curves = pd.read_csv(Path(study) / CURVES)
        scratch = curves[curves["method"] == "scratch"]
        budgets = {}
        if (Path(study) / RESULTS).is_file():
            results = pd.read_csv(Path(study) / RESULTS)
            budgets = {int(r.seed): float(r.steps) for r in results[results["method"] == "scratch"].itertuples()}
        lines.append(f"{study} scratch, per seed (first evaluation at or above the level):")
        for name, value in levels:
            per_seed = {int(seed): crossing_step(g["steps"].to_numpy(), g["return"].to_numpy(), value)
                        for seed, g in scratch.groupby("seed")}
            text = ", ".join(f"seed {seed} {x:,.0f}" if math.isfinite(x) else
                             f"seed {seed} > {budgets.get(seed, float(scratch['steps'].max())):,.0f}"
                             for seed, x in per_seed.items())
            med = median_steps(np.array(list(per_seed.values())))
            lines.append(f"  {name} {value:g}: {text} (median {'> budget' if not math.isfinite(med) else f'{med:,.0f}'})")
        lines.append("")
    return "\n".join(lines)


def log_main(argv: list[str]) -> int:
    """``efficiency.py log <folder>``: print :func:`log_report` for a target's levels and any ``--level``."""
    parser = argparse.ArgumentParser(prog="efficiency.py log",
                                     description="a training log's steps to the levels of a target (read-only)")
    parser.add_argument("folder", type=Path, help="a folder of SB3 Monitor files (<rank>.monitor.csv)")
    parser.add_argument("--target", default=None, help="read this target's levels from --levels")
    parser.add_argument("--levels", type=Path, action="append", default=[],
                        help="a levels file (repeatable); default: the default levels file when --target is given")
    parser.add_argument("--level", type=float, action="append", default=[],
                        help="a return to read besides the target's levels (repeatable; --level=-18)")
    parser.add_argument("--studies", type=Path, nargs="*", default=[], help="studies whose scratch seeds to print beside")
    args = parser.parse_args(argv)
    levels: list[tuple[str, float]] = []
    if args.target:
        for path in args.levels or [LEVELS]:
            for level in levels_for(args.target, path):
                if all(abs(level.value - v) > 1e-9 for _, v in levels):
                    levels.append((f"{level.name} ({path.name})", level.value))
    levels += [("level", v) for v in args.level]
    if not levels:
        parser.error("give --target (with --levels) or --level.")
    print(log_report(args.folder, levels, args.studies))
    return 0


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
        try:
            table = derive_levels(rules, args.zoo)
        except (FileNotFoundError, ValueError) as exc:
            raise SystemExit(f"{exc}\nNothing written: fix the levels of the targets whose studies exist with "
                             "--targets (the others join when theirs are published).") from None
        if args.targets and args.out.is_file():
            # round_trip: the rows kept are written back digit for digit (pandas' fast parser may not)
            kept = pd.read_csv(args.out, dtype={"scratch_steps": str}, float_precision="round_trip")
            table = pd.concat([kept[~kept["target"].isin(table["target"])], table], ignore_index=True)
        write_csv_atomic(table, args.out)
        print(table.to_string(index=False))
        print(f"wrote {args.out}")
        return 0
    if argv and argv[0] == "log":
        return log_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studies", nargs="+", type=Path, help="study folders (runs/transfer/... or results/...)")
    parser.add_argument("--levels", type=Path, default=LEVELS)
    parser.add_argument("--rules", type=Path, default=RULES, help="levels.yml: a target's scratch_log is read from it")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples")
    args = parser.parse_args(argv)
    rules = read_rules(args.rules)
    for study in args.studies:
        table, markdown = study_efficiency(study, args.levels, reps=args.reps, rules=rules)
        write_csv_atomic(table, study / "efficiency.csv")
        atomic_write_bytes(study / "efficiency.md", (markdown + "\n").encode())
        print(markdown)
        print(f"wrote {study / 'efficiency.csv'} and {study / 'efficiency.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
