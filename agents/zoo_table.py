"""Print the README's zoo table from the committed sources' meta.json files.

    python agents/zoo_table.py                       # the Atari zoo, agents/zoo
    python agents/zoo_table.py agents/zoo-lab2d      # the Lab2D zoo
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from envs.tasks import Lab2DTask, resolve

ZOO = Path(__file__).resolve().parent / "zoo"
#: RL Baselines3 Zoo, benchmark.md: PPO after 10M steps on the default flavour (for orientation only).
RL_ZOO_PPO_10M = {
    "Pong": "20.99 ± 0.11",
    "Breakout": "398.0 ± 33.3",
    "SpaceInvaders": "960.3 ± 425.4",
    "Seaquest": "1783.6 ± 34.1",
    "Qbert": "15627.1 ± 3313.5",
    "BeamRider": "3397.0 ± 1662.4",
    "Asteroids": "2156.2 ± 744.6",
    "Enduro": "996.4 ± 176.1",
    "RoadRunner": "40680.6 ± 6675.1",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("zoo", nargs="?", type=Path, default=ZOO, help="zoo folder (default: agents/zoo)")
    zoo = parser.parse_args().zoo
    print("| source | game | flavour | steps | return (10 games) | random (10 games) | RL Zoo PPO 10M (default flavour) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for meta_path in sorted(zoo.glob("*/meta.json")):
        meta = json.loads(meta_path.read_text())
        flavour = ", ".join(f"{k} {meta[k]}" for k in ("mode", "difficulty") if meta.get(k) is not None) or "default"
        task = resolve(meta["game"])
        if isinstance(task, Lab2DTask):  # lab2d:<level>[:<argument>][+key=value...]
            argument = task.level.partition(":")[2]
            parts = ([f"argument {argument}"] if argument else []) + [f"{k}={v}" for k, v in task.settings]
            flavour = ", ".join(parts) or "default"
        print(f"| {meta['name']} | {meta['game']} | {flavour} | {meta['steps']:,} | "
              f"{meta['eval_return_mean']:.1f} ± {meta['eval_return_std']:.1f} | "
              f"{meta['random_return_mean']:.1f} ± {meta['random_return_std']:.1f} | "
              f"{RL_ZOO_PPO_10M.get(meta['game'], 'n/a')} |")


if __name__ == "__main__":
    main()
