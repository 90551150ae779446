"""What Kickstarting's teachers cost a PPO update, with and without reading each rollout once.

Builds a kickstarted PPO student on Pong with the project's Atari settings (8 environments x 128 steps, 4
epochs of minibatches of 256, ``FastCnnPolicy``), collects one rollout, then times ``train()`` (one update) on
that rollout for: no teacher (plain PPO's update), one teacher and all the zoo's teachers (the committed
1M-step zoo: their weights do not change the cost), each with the teachers' outputs computed once per rollout
(the default, ``cache_teachers=True``) and once per minibatch of every epoch (``False``). Variants are
interleaved over ``--repeats`` rounds; medians and ratios to the plain update of the same run are printed,
with the machine they ran on.

    python benchmarks/bench_kickstart.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from common import PPO_ATARI
from envs.tasks import make_env, resolve
from zoo_rl.kickstart import KickstartPPO, load_teacher
from zoo_rl.machine import machine_line
from zoo_rl.policies import FastCnnPolicy, algo_kwargs
from zoo_rl.ranking import action_meanings

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of every variant, interleaved")
    parser.add_argument("--zoo", default=str(ROOT / "agents" / "zoo"), help="folder of NatureCNN sources (teachers)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    task = resolve("Pong")
    env = make_env(task, 8, seed=0, backend="auto")
    named = make_env(task, 1, seed=0, backend="gym")  # the gym wrappers name the actions
    meanings = action_meanings(named)
    named.close()
    teachers = [load_teacher(meta.parent, meanings) for meta in sorted(Path(args.zoo).glob("*/meta.json"))]
    model = KickstartPPO(FastCnnPolicy, env, seed=0, device="cpu", kickstart_steps=10**9,
                         **{**PPO_ATARI, **algo_kwargs(FastCnnPolicy)})
    model.learn(model.n_steps * model.n_envs)  # one rollout collected (and one update, as warm-up)
    variants = {"no teacher": ([], True), "1 teacher, per rollout": (teachers[:1], True),
                "1 teacher, per minibatch": (teachers[:1], False),
                f"{len(teachers)} teachers, per rollout": (teachers, True),
                f"{len(teachers)} teachers, per minibatch": (teachers, False)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (chosen, cached) in variants.items():
            model.set_teachers(chosen)
            model.cache_teachers = cached
            start = time.perf_counter()
            model.train()
            times[name].append(time.perf_counter() - start)
    print(machine_line(model))
    print(f"one PPO update on {model.n_steps * model.n_envs} steps ({model.n_epochs} epochs, minibatches of "
          f"{model.batch_size}), medians of {args.repeats}:")
    base = statistics.median(times["no teacher"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<28} {median:6.2f} s   x{median / base:.2f} of the plain update")
    env.close()


if __name__ == "__main__":
    main()
