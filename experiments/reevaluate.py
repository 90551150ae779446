"""The final evaluation of finished runs that lack one: each run's final model plays new games.

    python experiments/reevaluate.py runs/transfer/pong-100k               # 20 games a run
    python experiments/reevaluate.py runs/transfer/pong-100k --episodes 10

A study run plays its final games itself (``--final-episodes``, default 20); this script does the
same for runs that finished without them (``--final-episodes 0``, or runs from before the study
runner played them), with the same function (:func:`zoo_rl.study.evaluate_final`): the study's
evaluation environments (seed ``10000 + seed``), one new game per environment
(:func:`envs.atari.restart_games`; SB3 issue #1389 explains why a plain reset does not start one),
sampled actions for PPO, zoo-lite merged by ``export_lite``.

- ``<run>/final_evaluation.json`` keeps the returns (a rerun skips runs that have one, unless the
  episode count differs); the study's tables read it;
- ``<study>/reevaluation.csv`` has one row per run: the last evaluation's mean beside the new games';
- a table per method (means over seeds, their difference) is printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd


from envs.tasks import task_from_record
from zoo_rl.files import CONFIG, FINAL, FINAL_EVALUATION, RESULT, command_line, write_csv_atomic, write_json
from zoo_rl.study import FINAL_EPISODES, evaluate_final
from zoo_rl.training import ALGOS

ROOT = Path(__file__).resolve().parents[1]


def finished_runs(study: Path) -> list[Path]:
    """Run folders under ``study`` with a result and a final model."""
    runs = sorted(p.parent for p in study.glob(f"*/seed*/{RESULT}") if (p.parent / FINAL).is_file())
    if not runs:
        raise SystemExit(f"{study}: no finished run (no */seed*/{RESULT} with {FINAL}); is it a study folder?")
    return runs


def reevaluate_run(run: Path, episodes: int | None) -> dict:
    """New-game returns of one run's final model (cached in ``run/final_evaluation.json``)."""
    config = json.loads((run / CONFIG).read_text())
    study = config["study"]
    n = int(episodes or study.get("final_episodes") or FINAL_EPISODES)
    cached = run / FINAL_EVALUATION  # the file collect_results reads
    if cached.is_file():
        data = json.loads(cached.read_text())
        if len(data["returns"]) == n:
            return data
    task = task_from_record(config["task"])
    model = ALGOS[study["algo"]].load(run / FINAL, device="cpu")
    data = evaluate_final(model, task, config["method"], study["algo"], int(config["seed"]), n)
    write_json(cached, {**data, "command": command_line()})
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", type=Path, help="a study folder, e.g. runs/transfer/pong-100k")
    parser.add_argument("--episodes", type=int, default=None, help="games per run (default: the study's --final-episodes, else 20)")
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
