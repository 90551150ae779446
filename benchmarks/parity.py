"""Learning parity: does the fast pipeline learn as well as plain float32 SB3?

Trains PPO from scratch on one game with the study runner's protocol (RL Baselines3 Zoo Atari
settings, Adam at 1e-4, 8 envs) twice per seed: plain ``CnnPolicy`` in float32 on the RL Zoo's
gym wrappers, and the project's default pipeline: ``FastCnnPolicy`` (bf16 channels-last
extractor) on ``--env-backend auto`` (ale-py's vector environment for Pong; the gym wrappers for
games where its protocol differs, e.g. Breakout). Both are evaluated on the gym wrappers. Seeds are interleaved (fp32 seed 0, bf16 seed 0,
fp32 seed 1, ...), every run resumes after a kill, and finished runs are skipped, so the command
can be rerun until it is done. Then one plot with both learning curves (mean and 95% bootstrap
band over seeds) and a table of final returns:

    python benchmarks/parity.py --game Pong --steps 500000 --seeds 3
    python benchmarks/parity.py --report-only     # tables and plot from the runs so far
    python benchmarks/parity.py --workers 2       # two runs at once, one torch thread each

Writes ``results/parity/<game>-parity.csv`` (one row per run), ``<game>-parity-summary.csv`` and
``<game>-parity.png/.svg``. The verdict line says whether the difference of the two means lies
within the seed-to-seed spread (the larger of the two standard deviations).
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd

from zoo_rl.plots import plot_curves, plt, save
from zoo_rl.files import RESULT, write_csv_atomic
from zoo_rl.study import (RunJob, StudyConfig, collect_results, learning_curves, plan, run_job, write_study_json,
                          write_tables)

ROOT = Path(__file__).resolve().parents[1]

LABELS = {"fp32": "plain CnnPolicy, float32, gym wrappers",
          "bf16": "FastCnnPolicy, bf16 + channels-last, --env-backend auto"}
BACKENDS = {"fp32": "gym", "bf16": "auto"}


def study(args: argparse.Namespace, precision: str, seeds: int) -> StudyConfig:
    return StudyConfig(target=args.game, methods=["scratch"], seeds=seeds, steps=args.steps, precision=precision,
                       out=args.runs / f"{args.game}-{precision}", eval_every=args.eval_every,
                       eval_episodes=args.eval_episodes, env_backend=BACKENDS[precision],
                       workers=getattr(args, "workers", 1))  # recorded: parallel_runs in the tables


def report(args: argparse.Namespace) -> pd.DataFrame:
    runs, curves = [], []
    for precision, label in LABELS.items():
        out = args.runs / f"{args.game}-{precision}"
        if not out.is_dir():
            continue
        runs.append(collect_results(out).assign(pipeline=label, precision=precision))
        curves.append(learning_curves(out).assign(method=label))
    if not runs:
        raise SystemExit(f"No parity runs under {args.runs}: run without --report-only first.")
    results = pd.concat(runs, ignore_index=True)
    summary = (results.groupby(["precision", "pipeline"])
               .agg(runs=("final_return", "size"), final_mean=("final_return", "mean"),
                    final_std=("final_return", "std"), timesteps_per_second=("timesteps_per_second", "mean"))
               .reset_index())
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / f"{args.game}-parity"
    write_csv_atomic(results, stem.with_name(stem.name + ".csv"))
    write_csv_atomic(summary, stem.with_name(stem.name + "-summary.csv"))

    fig, ax = plt.subplots(figsize=(6, 4))
    plot_curves(pd.concat(curves, ignore_index=True), ax)
    ax.set_title(f"{args.game}: PPO from scratch, fast vs plain pipeline")
    save(fig, stem)

    print(summary.to_string(index=False))
    if len(summary) == 2 and (summary["runs"] >= 2).all():
        means, stds = summary["final_mean"].to_numpy(), summary["final_std"].to_numpy()
        gap, spread = abs(means[0] - means[1]), float(np.max(stds))
        verdict = "within" if gap <= spread else "OUTSIDE"
        ahead = summary["precision"].iloc[int(np.argmax(means))]
        welch = gap / np.sqrt(np.sum(stds ** 2 / summary["runs"].to_numpy()))
        print(f"difference of means {gap:.2f} ({ahead} ahead) is {verdict} the seed-to-seed spread "
              f"(max std {spread:.2f}); Welch's t {welch:.2f}")
    return summary


def pending_jobs(args: argparse.Namespace) -> list[RunJob]:
    """The runs not finished yet, seeds interleaved (fp32 seed 0, bf16 seed 0, fp32 seed 1, ...): a
    partial run compares like with like. Writes each pipeline's ``study.json``."""
    jobs = []
    for precision in LABELS:
        config = study(args, precision, args.seeds)
        arm = plan(config)
        write_study_json(config, len(arm))
        jobs.append(arm)
    interleaved = [job for seed_jobs in zip(*jobs) for job in seed_jobs]
    return [job for job in interleaved if not (job.run_dir / RESULT).is_file()]


def train(jobs: list[RunJob], workers: int) -> None:
    """Train ``jobs`` in order, ``workers`` at a time (cores/workers torch threads each): a worker
    takes the next run as soon as its own ends, so the faster pipeline's runs do not wait for the
    slower one's. Each pipeline's tables are rebuilt after each of its runs."""
    if workers == 1:
        for job in jobs:
            run_job(job)
            write_tables(job.study.out)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_job, job, threads): job for job in jobs}
        for future in as_completed(futures):
            future.result()
            write_tables(futures[future].study.out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", default="Pong")
    parser.add_argument("--steps", type=int, default=500_000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--eval-every", type=int, default=25_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "parity")
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "parity")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs trained at once, cores/workers torch threads each (2: one per core here)")
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be at least 1 (runs trained at once)")
    if not args.report_only:
        train(pending_jobs(args), args.workers)
    report(args)


if __name__ == "__main__":
    main()
