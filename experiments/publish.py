"""Publish a finished (or partial) study into ``results/``: its CSV tables, its plots, and the
markdown tables the README's Results section quotes, all from the study's files.

    python experiments/publish.py runs/transfer/Pong-ppo                  # -> results/Pong-ppo/
    python experiments/publish.py runs/transfer/Pong-ppo --out results/pong-100k
    python experiments/publish.py results/pong-100k --cost                # runs, hours, minutes a run per method
    python experiments/publish.py results/pong-100k --gates               # each source's final gates, min/mean/max
    python experiments/publish.py results/pong-100k --teachers            # kickstart:all's weight per teacher

Writes ``results.csv``, ``summary.csv``, ``curves.csv``, ``gates.csv`` and ``study.json`` (copied),
the figures of ``experiments/plot.py``, and ``tables.md``: the summary (final return mean ± std over
seeds, IQM with its 95% stratified-bootstrap interval, difference to scratch and to the best single
fine-tune with its 95% bootstrap interval, the mean return over training (AUC) and its difference to
scratch, timesteps/s), per zoo method the final gates per layer and
source (mean over seeds) and each source's range over layers and seeds, the teachers' weights of the methods
that distil every source (``kickstart:all``), and "one level down" (``diagnostics.csv``, :mod:`zoo_rl.diagnostics`): per
method and layer, how many sources the gates effectively use, how far the alignments left the identity
and how far the weights drifted from the sources.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from zoo_rl.files import CURVES, GATES, RANKING, RESULTS, STUDY, SUMMARY, atomic_write_bytes, write_csv_atomic
from zoo_rl.kickstart import ranking_weights
from zoo_rl.plots import make_plots
from zoo_rl.study import write_tables
from zoo_rl.study.diagnostics import diagnose_study, diagnostics_summary
from zoo_rl.study.methods import kickstart_teachers

ROOT = Path(__file__).resolve().parents[1]

TABLES = (RESULTS, SUMMARY, CURVES, GATES, STUDY, RANKING)
COST_NOTE = ("steps/s: a run's training steps over its wall time, evaluations included, on whatever else the "
             "machine was doing; for costs measured side by side under control, see "
             "`python benchmarks/bench_throughput.py`.")


def cost_note(results: pd.DataFrame) -> str:
    """COST_NOTE, plus which runs shared the machine with another run (``--workers``) and which CPU and
    extractor precision the runs trained with, where results.csv records them."""
    if results.empty or "parallel_runs" not in results or not (results["parallel_runs"] > 1).any():
        note = COST_NOTE + " Every run trained alone on the machine."
    else:
        shared = results[results["parallel_runs"] > 1]
        note = (COST_NOTE + f" {len(shared)} of {len(results)} runs trained {int(shared['parallel_runs'].max())} at a "
                "time (`--workers`, the machine's cores split between them): their rate is their share of the machine, "
                "lower than one run alone, so compare steps/s only between runs that ran alike (column `parallel_runs` "
                "of results.csv).")
    return note + compute_note(results)


def study_cost(results: pd.DataFrame) -> str:
    """The study's cost from results.csv's ``wall_seconds``: runs, their sum in hours (CPU-hours where each run had
    one core to itself, as with one torch thread a run and no more runs than cores), and each method's mean minutes
    a run."""
    if results.empty or "wall_seconds" not in results:
        return ""
    per_method = results.groupby("method")["wall_seconds"].mean().sort_values()
    methods = ", ".join(f"{m} {s / 60:.1f}" for m, s in per_method.items())
    return (f"Cost: {len(results)} runs, {results['wall_seconds'].sum() / 3600:.2f} hours of run time (the runs' "
            f"`wall_seconds` summed: CPU-hours where each run had a core to itself); minutes a run: {methods}.")


def compute_note(results: pd.DataFrame) -> str:
    """`` Runs: 3 with a fp32 extractor on an AVX2 CPU (...).``, from results.csv's ``extractor_precision`` and ``cpu_capability``
    (empty for runs from before they were recorded)."""
    if results.empty or "extractor_precision" not in results:
        return ""
    known = results[results["extractor_precision"].fillna("").astype(str) != ""]
    if known.empty:
        return ""
    groups = known.groupby(["extractor_precision", "cpu_capability"], sort=True).size()
    parts = [f"{n} with a {precision} extractor on an {cpu} CPU" for (precision, cpu), n in groups.items()]
    unknown = len(results) - len(known)
    tail = f", {unknown} not recorded" if unknown else ""
    return (f" Runs: {'; '.join(parts)}{tail} (columns `extractor_precision`, `cpu_capability`: bf16 is used only "
            "where the CPU has it natively, so the same study trains at different speeds on different machines).")


def difference_markdown(row, column: str) -> str:
    """``+2.3 [+1.5, +3.1]``: a difference of means with its 95% bootstrap interval; ``n/a`` for a column an
    older summary.csv does not have."""
    value = getattr(row, column, float("nan"))
    if pd.isna(value):
        return "n/a"
    low, high = getattr(row, f"{column}_low", float("nan")), getattr(row, f"{column}_high", float("nan"))
    return f"{value:+.1f}" if pd.isna(low) else f"{value:+.1f} [{low:+.1f}, {high:+.1f}]"


def commands_markdown(study: dict) -> str:
    """The command that trained the study, or every one in order when several trained into its folder."""
    commands = study.get("commands") or [study.get("command")]
    if len(commands) == 1:
        return f"Command: `{commands[0]}`\n\n"
    return "Commands, in the order they trained into this study:\n\n" + "".join(f"- `{c}`\n" for c in commands) + "\n"


def summary_markdown(summary: pd.DataFrame) -> str:
    """The summary as a markdown table, best mean first."""
    lines = ["| method | runs | final return, mean ± std | IQM [95% CI] | at step 0 | vs scratch [95% CI] "
             "| vs best fine-tune [95% CI] | mean return over training (AUC) | AUC vs scratch [95% CI] | steps/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in summary.itertuples():
        start = getattr(r, "initial_mean", float("nan"))
        lines.append(
            f"| {r.method} | {r.runs} | {r.final_mean:.1f} ± {r.final_std:.1f} | "
            f"{r.iqm:.1f} [{r.iqm_low:.1f}, {r.iqm_high:.1f}] | {'n/a' if pd.isna(start) else f'{start:.1f}'} | "
            f"{difference_markdown(r, 'vs_scratch')} | {difference_markdown(r, 'vs_best_finetune')} | "
            f"{'n/a' if pd.isna(r.auc_mean) else f'{r.auc_mean:.1f}'} | {difference_markdown(r, 'auc_vs_scratch')} | "
            f"{'n/a' if pd.isna(r.timesteps_per_second) else f'{r.timesteps_per_second:.0f}'} |")
    return "\n".join(lines)


def final_return_note(results: pd.DataFrame) -> str:
    """Where the final returns come from: a re-evaluation on new games, or the last evaluation."""
    episodes = results["final_episodes"].dropna() if "final_episodes" in results else pd.Series(dtype=float)
    if episodes.empty:
        return "Final return: the last evaluation of each run."
    counts = ", ".join(str(int(n)) for n in sorted(episodes.unique()))
    which = ("for every run" if len(episodes) == len(results)
             else f"for {len(episodes)} of {len(results)} runs, the last evaluation for the others")
    note = (f"Final return: {counts} new games per run with the run's final model (played at the end of the run, "
            f"or by `python experiments/reevaluate.py` for runs that finished without them) {which}. ")
    return note + ("Evaluations during training (curves, AUC, step 0) are the run's own; the last of them is column "
                   "`last_evaluation_return` of results.csv.")


def gates_markdown(gates: pd.DataFrame) -> str:
    """Per zoo method: the last logged gate of each source in each layer, mean over seeds."""
    if gates.empty:
        return ""
    blocks = []
    for method, last in final_gates(gates).groupby("method"):
        table = last.groupby(["source", "layer"])["gate"].mean().unstack("layer")
        steps = int(last["timesteps"].max())
        lines = [f"Final gates of `{method}` (at {steps:,} steps, mean over {last['seed'].nunique()} seeds):", "",
                 "| source | " + " | ".join(table.columns) + " |", "| --- |" + " --- |" * len(table.columns)]
        for source, row in table.iterrows():
            lines.append(f"| {source} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def final_gates(gates: pd.DataFrame) -> pd.DataFrame:
    """The last logged gate of every method, seed, layer and source (the rows of each seed's last step)."""
    last_step = gates.groupby(["method", "seed"])["timesteps"].transform("max")
    return gates[gates["timesteps"] == last_step]


def gate_ranges(gates: pd.DataFrame) -> pd.DataFrame:
    """Per zoo method and source: its final gates' min, mean and max over every layer and seed.

    A source that a method put down has a max near 0; one it took up a min near 1 (sigmoid gates) or near the whole
    (normalised gates). Sources keep the order of ``gates.csv``; ``layers`` and ``seeds`` count what the range spans.
    """
    columns = ["method", "source", "min", "mean", "max", "layers", "seeds"]
    if gates.empty:
        return pd.DataFrame(columns=columns)
    last = final_gates(gates)
    table = (last.groupby(["method", "source"], sort=False)
             .agg(min=("gate", "min"), mean=("gate", "mean"), max=("gate", "max"),
                  layers=("layer", "nunique"), seeds=("seed", "nunique"))
             .reset_index())
    return table.sort_values("method", kind="stable")[columns].reset_index(drop=True)


def gate_ranges_markdown(gates: pd.DataFrame) -> str:
    """:func:`gate_ranges` as one markdown table."""
    table = gate_ranges(gates)
    if table.empty:
        return ""
    lines = ["Final gates per source, over every layer and seed (`python experiments/publish.py <study> --gates`):", "",
             "| method | source | min | mean | max | layers × seeds |", "| --- | --- | --- | --- | --- | --- |"]
    for r in table.itertuples():
        lines.append(f"| {r.method} | {r.source} | {r.min:.3f} | {r.mean:.3f} | {r.max:.3f} | {r.layers} × {r.seeds} |")
    return "\n".join(lines)


def teacher_weights(ranking: pd.DataFrame) -> pd.DataFrame:
    """Per source of the study's ranking: its rank, zero-shot evidence and the weight of its policy in the
    distillation of the methods that distil every source (``kickstart:all``, ``<zoo method>+kickstart-all``): the
    weights those runs were given (:func:`zoo_rl.kickstart.ranking_weights` of the same ``ranking.csv``)."""
    names = list(ranking["source"])
    table = ranking[["source", "rank", "basis", "zero_shot_z"]].copy()
    table["weight"] = ranking_weights(ranking, names)
    return table.reset_index(drop=True)


def teacher_weights_markdown(ranking: pd.DataFrame, methods: list[str]) -> str:
    """:func:`teacher_weights` as a markdown table, or ``""`` when no method of ``methods`` distils every source."""
    population = [m for m in methods if kickstart_teachers(m) == "all"]
    if not population or ranking.empty:
        return ""
    lines = [f"Teachers' weights in the distillation of {', '.join(population)} (zero-shot evidence above random play, "
             "floored at 0, normalised; `python experiments/publish.py <study> --teachers`):", "",
             "| source | rank | basis | zero-shot z | weight |", "| --- | --- | --- | --- | --- |"]
    for r in teacher_weights(ranking).itertuples():
        z = "n/a" if pd.isna(r.zero_shot_z) else f"{r.zero_shot_z:.2f}"
        lines.append(f"| {r.source} | {r.rank} | {r.basis} | {z} | {r.weight:.3f} |")
    return "\n".join(lines)


def diagnostics_markdown(table: pd.DataFrame) -> str:
    """Per method and layer (means over seeds): effective sources, top source, alignment, drift."""
    if table.empty:
        return ""
    summary = diagnostics_summary(table)
    lines = ["One level down (`diagnostics.csv`; effective sources = exp(entropy of the gates): K when uniform, "
             "1 when collapsed; alignment = ||A - I|| / ||I||; drift = ||W - W_source|| / ||W_source||, "
             "means over sources and seeds; moved = ||W - W_start|| of the layer the agent acts with, the merged "
             "layer for zoo-lite and uniform, mean over seeds):", "",
             "| method | layer | seeds | effective sources | top source (gate) | alignment | drift | moved |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]

    def fmt(value: float, digits: int = 3) -> str:
        return "n/a" if pd.isna(value) else f"{value:.{digits}f}"

    for r in summary.itertuples():
        top = "n/a" if r.top_source is None else f"{r.top_source} ({r.top_gate:.3f})"
        lines.append(f"| {r.method} | {r.layer} | {r.seeds} | {fmt(r.effective_sources, 2)} | {top} | "
                     f"{fmt(r.align_dev)} | {fmt(r.drift)} | {fmt(r.moved, 2)} |")
    return "\n".join(lines)


def ranking_csv(folder: Path) -> pd.DataFrame:
    """The study's ``ranking.csv``, or an empty frame when it has none (a study without a zoo)."""
    return pd.read_csv(folder / RANKING) if (folder / RANKING).is_file() else pd.DataFrame()


def publish(study_dir: Path, out: Path) -> list[Path]:
    """Rebuild the study's tables, copy them to ``out``, plot, and write ``tables.md``."""
    study_dir, out = Path(study_dir), Path(out)
    if not (study_dir / STUDY).is_file():
        raise FileNotFoundError(f"{study_dir} is not a study folder (no study.json): run experiments/transfer.py.")
    results, summary = write_tables(study_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in TABLES:
        if (study_dir / name).is_file():
            atomic_write_bytes(out / name, (study_dir / name).read_bytes())
            written.append(out / name)
    written += make_plots(out)
    study = json.loads((study_dir / STUDY).read_text())
    header = (f"# {study.get('target')} ({study.get('algo')}, {study.get('steps'):,} steps per run)\n\n"
              + commands_markdown(study))
    gates = pd.read_csv(out / GATES) if (out / GATES).is_file() else pd.DataFrame()
    diagnostics = diagnose_study(study_dir)
    write_csv_atomic(diagnostics, out / "diagnostics.csv")
    written.append(out / "diagnostics.csv")
    text = (header + summary_markdown(summary) + "\n\n" + final_return_note(results) + "\n\n"
            + cost_note(results) + "\n\n" + study_cost(results) + "\n\n" + gates_markdown(gates) + "\n\n"
            + gate_ranges_markdown(gates) + "\n\n"
            + teacher_weights_markdown(ranking_csv(out), study.get("methods", [])) + "\n\n"
            + diagnostics_markdown(diagnostics) + "\n")
    atomic_write_bytes(out / "tables.md", text.encode())
    written.append(out / "tables.md")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="default: results/<study folder name>")
    parser.add_argument("--cost", action="store_true",
                        help="only print the cost of a study folder or a published one, from its results.csv")
    parser.add_argument("--gates", action="store_true",
                        help="only print each zoo method's final gates per source (min, mean, max over layers and "
                             "seeds) of a study folder or a published one, from its gates.csv")
    parser.add_argument("--teachers", action="store_true",
                        help="only print the teachers' weights of the methods that distil every source "
                             "(kickstart:all) of a study folder or a published one, from its ranking.csv")
    args = parser.parse_args()
    if args.teachers:
        if not (args.study_dir / RANKING).is_file() or not (args.study_dir / STUDY).is_file():
            sys.exit(f"error: {args.study_dir} has no {RANKING} or {STUDY}: name a published study (results/<name>) "
                     "with a zoo.")
        methods = json.loads((args.study_dir / STUDY).read_text()).get("methods", [])
        text = teacher_weights_markdown(ranking_csv(args.study_dir), methods)
        if not text:
            sys.exit(f"error: no method of {args.study_dir} distils every source (kickstart:all): {methods}.")
        print(text)
        return
    if args.gates:
        if not (args.study_dir / GATES).is_file():
            sys.exit(f"error: {args.study_dir / GATES} is missing: name a published study (results/<name>) "
                     "with a zoo method.")
        print(gate_ranges_markdown(pd.read_csv(args.study_dir / GATES)))
        return
    if args.cost:
        if not (args.study_dir / RESULTS).is_file():
            sys.exit(f"error: {args.study_dir / RESULTS} is missing: name a published study (results/<name>).")
        print(study_cost(pd.read_csv(args.study_dir / RESULTS)))
        return
    try:
        written = publish(args.study_dir, args.out or ROOT / "results" / args.study_dir.name)
    except FileNotFoundError as exc:
        sys.exit(f"error: {exc}")
    print((written[-1]).read_text())
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
