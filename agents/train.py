"""Train a source agent for the zoo, or rebuild the whole zoo from its manifest.

    python agents/train.py --game Breakout --algo ppo --steps 1000000
    python agents/train.py --game Pong --mode 1 --difficulty 1
    python agents/train.py --zoo                  # every source in agents/zoo/manifest.yml

Runs resume automatically from ``runs/zoo/<name>/checkpoint.zip`` after a kill; the result
is written to ``agents/zoo/<name>/`` (weights.pt + meta.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zoo_rl.zoo_training import SourceSpec, read_manifest, train_source  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--game", help="Atari game, short name (Pong) or full id (PongNoFrameskip-v4)")
    what.add_argument("--zoo", action="store_true", help="train every source of the manifest that is not done yet")
    parser.add_argument("--algo", default="ppo", help="ppo (default), a2c, dqn or qrdqn")
    parser.add_argument("--steps", type=int, default=1_000_000, help="agent steps (1 step = 4 frames)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", type=int, default=None, help="ALE game mode (default: the game's default)")
    parser.add_argument("--difficulty", type=int, default=None, help="ALE difficulty (default: the game's default)")
    parser.add_argument("--name", default=None, help="source name (default: task slug, e.g. pong-m1-d1)")
    parser.add_argument("--manifest", type=Path, default=ROOT / "agents" / "zoo" / "manifest.yml")
    parser.add_argument("--zoo-dir", type=Path, default=ROOT / "agents" / "zoo", help="where sources are exported")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "zoo", help="checkpoints and logs")
    parser.add_argument("--eval-every", type=int, default=250_000, help="steps between evaluations")
    parser.add_argument("--eval-episodes", type=int, default=5)
    parser.add_argument("--checkpoint-every", type=int, default=50_000, help="steps between checkpoints")
    parser.add_argument("--restart", action="store_true", help="discard an existing checkpoint instead of resuming")
    parser.add_argument("--device", default="auto")
    return parser.parse_args(argv)


def is_done(zoo_dir: Path, spec: SourceSpec) -> bool:
    meta = zoo_dir / spec.source_name / "meta.json"
    return meta.is_file() and json.loads(meta.read_text()).get("steps", 0) >= spec.steps


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.zoo:
        specs = read_manifest(args.manifest)
    else:
        specs = [SourceSpec(game=args.game, algo=args.algo, steps=args.steps, seed=args.seed,
                            mode=args.mode, difficulty=args.difficulty, name=args.name)]
    for spec in specs:
        spec.task  # validate every entry before training anything
    for spec in specs:
        if args.zoo and is_done(args.zoo_dir, spec):
            print(f"{spec.source_name}: done, skipping", flush=True)
            continue
        if args.restart:
            shutil.rmtree(args.runs_dir / spec.source_name, ignore_errors=True)
        print(f"{spec.source_name}: training {spec.algo} for {spec.steps} steps", flush=True)
        meta = train_source(spec, zoo_dir=args.zoo_dir, runs_dir=args.runs_dir, eval_every=args.eval_every,
                            eval_episodes=args.eval_episodes, checkpoint_every=args.checkpoint_every,
                            device=args.device)
        print(f"{spec.source_name}: {meta['steps']} steps, return {meta['eval_return_mean']:.1f} "
              f"± {meta['eval_return_std']:.1f} (random {meta['random_return_mean']:.1f}), "
              f"saved to {args.zoo_dir / spec.source_name}", flush=True)


if __name__ == "__main__":
    main()
