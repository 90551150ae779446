"""Run a transfer study: every method x seed on one target, then CSV tables.

    python experiments/transfer.py --target Pong
    python experiments/transfer.py --target Breakout --methods scratch,zoo-lite --seeds 5
    python experiments/transfer.py --target lab2d:commons_harvest --zoo agents/zoo-lab2d agents/zoo
    python experiments/transfer.py --target Pong --methods zoo-lite,zoo-lite:sigmoid,zoo-lite:noalign
    python experiments/transfer.py --aggregate runs/transfer/Pong-ppo runs/transfer/Breakout-ppo

Rerunning the same command skips finished runs and resumes interrupted ones.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from envs.atari import BACKENDS  # noqa: E402
from zoo_rl.layers import DEFAULT_NORMALISATION, NORMALISATIONS  # noqa: E402
from zoo_rl.study import (  # noqa: E402
    METHODS, RESULT, ZOO_OPTIONS, StudyConfig, compact_summary, cross_target, describe_plan, extractor_kwargs, plan,
    run_study, write_csv_atomic,
)

METHOD_HELP = ("; ".join(f"{k}: {v}" for k, v in METHODS.items())
               + ". Ablations of zoo, zoo-lite and uniform: <method>:<option>[+<option>] with options "
               + ", ".join(ZOO_OPTIONS) + " (e.g. zoo-lite:sigmoid, zoo-lite:noalign)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", help="target: Atari short name (Pong) or full id (PongNoFrameskip-v4), or lab2d:<level>")
    p.add_argument("--mode", type=int, default=None, help="ALE mode of the target (default: the game's)")
    p.add_argument("--difficulty", type=int, default=None, help="ALE difficulty of the target (default: the game's)")
    p.add_argument("--zoo", nargs="+", default=None,
                   help="sources (source folders, SB3 zips, hub ids) or whole zoos (agents/zoo agents/zoo-lab2d: "
                        "their members minus the target task's own source); default: the committed zoo of "
                        "the target's family minus the target task's own source")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated methods (default: all). {METHOD_HELP}")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds per method (default 3)")
    p.add_argument("--algo", default="ppo", help="ppo (default), a2c, dqn or qrdqn")
    p.add_argument("--steps", type=int, default=100_000, help="agent steps per run (default 100k, Atari-100k)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4, the paper's)")
    p.add_argument("--out", type=Path, default=None, help="study folder (default runs/transfer/<target>-<algo>)")
    p.add_argument("--eval-every", type=int, default=10_000, help="steps between evaluations and checkpoints")
    p.add_argument("--eval-episodes", type=int, default=5, help="episodes per evaluation (default 5)")
    p.add_argument("--final-episodes", type=int, default=20,
                   help="new games the final model of each run plays; their mean is the run's final return "
                        "(default 20; 0: the last evaluation's mean)")
    p.add_argument("--threshold", type=float, default=None,
                   help="return for steps-to-threshold (default: scratch's mean final return)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                   help="bf16: FastCnnPolicy (bf16 channels-last extractor, default); fp32: plain CnnPolicy")
    p.add_argument("--workers", type=int, default=1, help="runs in parallel with the local launcher")
    p.add_argument("--launcher", choices=["local", "ray"], default="local")
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the study and list its runs (zoo, method, seed, done or not), train nothing")
    p.add_argument("--n-envs", type=int, default=None, help="environments per run (default: the algorithm's YAML)")
    p.add_argument("--env-backend", choices=BACKENDS, default="auto",
                   help="Atari training environments: auto (default: ale-py's vector env where it applies), ale, "
                        "or gym (the RL Baselines3 Zoo wrappers; evaluations always use these)")
    p.add_argument("--gate-normalisation", choices=NORMALISATIONS, default=None,
                   help="gate normalisation of zoo and zoo-lite (unless the method names one, e.g. zoo-lite:sigmoid); "
                        f"default: the library's ({DEFAULT_NORMALISATION}). A study folder continues only with the "
                        "normalisation its runs were trained with")
    p.add_argument("--rank-steps", type=int, default=10_000,
                   help="agent steps per source of the source ranking written to ranking.csv before training")
    p.add_argument("--aggregate", nargs="+", type=Path, default=None, metavar="STUDY_DIR",
                   help="instead of training: one table across finished studies, written to --out")
    args = p.parse_args(argv)
    if args.aggregate is None and not args.target:
        p.error("--target is required (or --aggregate STUDY_DIR ...)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.aggregate is not None:
        out = args.out or ROOT / "results" / "cross_target.csv"
        table = cross_target(args.aggregate)
        write_csv_atomic(table, out)
        print(table.to_string(index=False))
        print(f"\nwrote {out}")
        return
    study = StudyConfig(
        target=args.target, mode=args.mode, difficulty=args.difficulty, zoo=args.zoo,
        methods=[m.strip() for m in args.methods.split(",") if m.strip()], seeds=args.seeds, algo=args.algo,
        steps=args.steps, lr=args.lr, out=args.out, eval_every=args.eval_every, eval_episodes=args.eval_episodes,
        final_episodes=args.final_episodes,
        threshold=args.threshold, precision=args.precision, workers=args.workers, launcher=args.launcher,
        ray_address=args.ray_address, n_envs=args.n_envs, env_backend=args.env_backend,
        normalisation=args.gate_normalisation, rank_steps=args.rank_steps,
    )
    try:
        if args.dry_run:
            print_plan(study)
            return
        results, summary = run_study(study)
    except (ValueError, FileNotFoundError) as exc:
        sys.exit(f"error: {exc}")
    except KeyboardInterrupt:
        sys.exit(130)  # run_study has said where it stopped and how to resume
    if summary.empty:
        return
    print("\n" + compact_summary(summary).to_string(index=False))
    out = Path(study.out)
    print(f"\ntables: {out / 'results.csv'}, {out / 'summary.csv'} (every column), {out / 'ranking.csv'}")
    print(f"plots:  python experiments/plot.py {out}")
    print(f"live:   tensorboard --logdir {out}")


def print_plan(study: StudyConfig) -> None:
    """The plan, then the runs ``study`` would train, in order, and which are finished already."""
    jobs = plan(study)
    print(describe_plan(study, jobs))
    for job in jobs:
        state = "done" if (job.run_dir / RESULT).is_file() else "to run"
        gates = extractor_kwargs(job.method, study.normalisation).get("normalisation")
        print(f"  {job.method:<40} seed {job.seed}  {state}" + (f"  ({gates} gates)" if gates else ""))


if __name__ == "__main__":
    main()
