"""Rank the zoo's sources for a target before any transfer run (``zoo_rl.rank_sources``).

    python experiments/rank.py --target Pong
    python experiments/rank.py --target Breakout --mode 4
    python experiments/rank.py --target lab2d:commons_harvest --zoo agents/zoo-lab2d agents/zoo
    python experiments/rank.py --target classic:pendulum+g=12 --algo sac   # whole-policy sources (once trained)

Each source plays the target with its own policy for ``--steps`` agent steps (default 10k), beside a
random policy; where that play is not above random, a value probe on its features decides. Writes
``ranking.csv`` into ``--out`` (default: the study folder ``experiments/transfer.py`` would use for this
target, whose ``ranked`` methods then start from it) and prints the table with its cost. Each source's score
is kept in ``ranking.partial.csv`` as soon as it exists: Ctrl-C says how many were kept, and the same command
plays only the others.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from zoo_rl.files import RANKING, RANKING_PARTIAL
from zoo_rl.ranking import RANK_STEPS
from zoo_rl.study import RankingProgress, StudyConfig, plan, resumable_ranking
from zoo_rl.study.signals import second_signal_exits, stop_on_signals


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", required=True, help="target task: Pong, Breakout, lab2d:<level>...")
    p.add_argument("--mode", type=int, default=None, help="ALE mode of the target (default: the game's)")
    p.add_argument("--difficulty", type=int, default=None, help="ALE difficulty of the target (default: the game's)")
    p.add_argument("--zoo", nargs="+", default=None,
                   help="sources or zoo folders (default: the committed zoo of the target's family, minus the "
                        "target task's own source)")
    p.add_argument("--out", type=Path, default=None, help="folder for ranking.csv (default: the study's folder)")
    p.add_argument("--steps", type=int, default=RANK_STEPS, help=f"agent steps per source (default {RANK_STEPS:,})")
    p.add_argument("--algo", default="ppo", help="the sources' algorithm where they are whole policies (classic "
                   "control: sac; default ppo)")
    args = p.parse_args(argv)
    scored: list[str] = []
    study: StudyConfig | None = None
    try:
        with stop_on_signals():
            study = StudyConfig(target=args.target, mode=args.mode, difficulty=args.difficulty, zoo=args.zoo,
                                methods=["finetune"], out=args.out, seeds=1, workers=1, algo=args.algo)
            job = plan(study)[0]
            print(f"ranking {len(job.zoo)} sources for {job.task.slug}, {args.steps:,} agent steps each "
                  f"(and as many for a random policy)", flush=True)
            started = time.perf_counter()
            bar = RankingProgress(job.task.slug, len(job.zoo), args.steps)

            def scored_line(row: dict) -> None:
                scored.append(row["source"])
                bar.source_scored()
                bar.bar.write(f"  {row['source']}: zero-shot z {row['zero_shot_z']:.1f}, probe R² "
                              f"{row['probe_r2']:.3f} ({row['seconds']:.0f} s)")

            try:
                table = resumable_ranking(Path(study.out), job.task, job.zoo, args.steps, on_play=bar.update,
                                          say=bar.bar.write, on_scored=scored_line, algo=args.algo)
            finally:
                bar.close()
    except (ValueError, FileNotFoundError) as exc:
        sys.exit(f"error: {exc}")
    except KeyboardInterrupt:
        second_signal_exits()
        partial = Path(study.out) / RANKING_PARTIAL if study is not None and study.out is not None else RANKING_PARTIAL
        print(f"\nStopped while ranking the sources ({len(scored)} scored in this call"
              + (f": {', '.join(scored)}" if scored else "") + f"; every source scored is kept in {partial}). "
              "Run the same command to resume: it plays only the sources not scored yet.", flush=True)
        sys.exit(130)
    seconds = time.perf_counter() - started
    path = Path(study.out) / RANKING
    columns = ["rank", "source", "basis", "zero_shot_rate", "zero_shot_z", "zero_shot_return", "probe_r2"]
    print(table[columns].round(4).to_string(index=False))
    steps = int(table["agent_steps"].sum()) + args.steps
    print(f"\ncost: {steps:,} agent steps ({args.steps:,} of them by the random policy), {seconds:.0f} s in this call")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
