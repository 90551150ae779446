"""Evaluate every finished run of a study again, on new games, from its saved final model.

    python experiments/reevaluate.py runs/transfer/pong-100k               # the study's episodes
    python experiments/reevaluate.py runs/transfer/pong-100k --episodes 10

Why: until the evaluation callback called :func:`envs.atari.restart_games`, each evaluation on
the Atari gym pipeline began by *continuing* the games the previous evaluation had left
unfinished (SB3's ``EpisodicLifeEnv`` turns ``reset()`` into a no-op step mid-game; SB3 issue
#1389), so the first game counted in most environments was partly played by the policy of the
previous evaluation. This script measures what that did to a study's final returns: each run's
``final.zip`` plays ``--episodes`` new games on the study's evaluation environments (same seeds,
sampled actions for PPO, zoo-lite merged by ``export_lite`` as in training), and

- ``<run>/reevaluation.json`` keeps the returns (a rerun skips runs that have one, unless the
  episode count differs; files written before the actions were seeded say ``"seeded": false``);
- ``<study>/reevaluation.csv`` has one row per run: the recorded ``final_return`` (continued
  games) beside ``final_return_new_games``;
- a table per method (means over seeds, their difference) is printed.

Lab2D studies are not affected (their ``reset()`` always restarts) and need no re-evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from envs.atari import restart_games  # noqa: E402
from envs.tasks import make_env, resolve  # noqa: E402
from zoo_rl.study import RESULT, write_csv_atomic  # noqa: E402
from zoo_rl.study import REEVALUATION as OUT  # noqa: E402  (the file collect_results reads)
from zoo_rl.training import ALGOS, FINAL, ON_POLICY, command_line, write_json  # noqa: E402


def finished_runs(study: Path) -> list[Path]:
    """Run folders under ``study`` with a result and a final model."""
    runs = sorted(p.parent for p in study.glob(f"*/seed*/{RESULT}") if (p.parent / FINAL).is_file())
    if not runs:
        raise SystemExit(f"{study}: no finished run (no */seed*/{RESULT} with {FINAL}); is it a study folder?")
    return runs


def reevaluate_run(run: Path, episodes: int | None) -> dict:
    """New-game returns of one run's final model (cached in ``run/reevaluation.json``)."""
    from stable_baselines3.common.evaluation import evaluate_policy

    config = json.loads((run / "config.json").read_text())
    study = config["study"]
    n = int(episodes or study["eval_episodes"])
    cached = run / OUT
    if cached.is_file():
        data = json.loads(cached.read_text())
        if len(data["returns"]) == n:
            return data
    spec = config["task"]
    if "game" not in spec:
        raise SystemExit(f"{run}: not an Atari run ({spec}); only Atari evaluations continued old games.")
    task = resolve(spec["game"], spec.get("mode"), spec.get("difficulty"))
    algo = study["algo"]
    model = ALGOS[algo].load(run / FINAL, device="cpu")
    if config["method"].partition(":")[0] == "zoo-lite":
        from zoo_rl.export import export_lite

        model = export_lite(model)
    env = make_env(task, n, seed=10_000 + int(config["seed"]), backend="gym")
    model.set_random_seed(10_000 + int(config["seed"]))  # the sampled actions too, so that a rerun repeats them
    try:
        restart_games(env)
        returns, _ = evaluate_policy(model, env, n_eval_episodes=n, deterministic=algo not in ON_POLICY,
                                     return_episode_rewards=True, warn=False)
    finally:
        env.close()
    data = {"returns": [float(r) for r in returns], "mean": float(np.mean(returns)), "seeded": True,
            "command": command_line()}
    write_json(cached, data)
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="a study folder, e.g. runs/transfer/pong-100k")
    parser.add_argument("--episodes", type=int, default=None, help="games per run (default: the study's)")
    args = parser.parse_args(argv)
    rows = []
    for run in finished_runs(args.study):
        result = json.loads((run / RESULT).read_text())
        data = reevaluate_run(run, args.episodes)
        rows.append({"method": result["method"], "seed": result["seed"], "final_return": result["final_return"],
                     "final_return_new_games": data["mean"], "episodes": len(data["returns"])})
        print(f"{run}: recorded {result['final_return']:.2f}, new games {data['mean']:.2f}", flush=True)
    table = pd.DataFrame(rows)
    out = args.study / "reevaluation.csv"
    write_csv_atomic(table, out)
    per_method = table.groupby("method")[["final_return", "final_return_new_games"]].mean()
    per_method["difference"] = per_method["final_return_new_games"] - per_method["final_return"]
    print(per_method.sort_values("final_return_new_games", ascending=False).round(2).to_string())
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
