"""What Zoo-Tuning of a whole policy costs a continuous-control run: steps/s of plain SB3 against ``zoo_policy``.

Times ``learn()`` (environment steps and updates together, after a warm-up) on the study tasks of the
continuous-control zoos, for a plain policy and for ``zoo_policy`` with K sources, lite gates, with and without
alignment, at the hidden widths given:

- SAC on ``classic:pendulum+g=12`` (the Pendulum zoo's settings: batches of 256, one gradient step per step);
- PPO on ``mujoco:halfcheetah+friction=0.8+mass=1.25`` (the MuJoCo zoo's: 512 steps per rollout, 20 epochs of
  minibatches of 64).

A zoo layer with alignment costs about K * O * O * I multiply-adds per merge (every source's O x O alignment times
its O x I weight), against O * I * batch for a plain layer, so the cost grows with the square of the width. Sources
are untrained policies of the same architecture: speed does not depend on their weights. Variants are interleaved
over ``--repeats`` rounds; medians and the ratio to the plain policy of the same width, with the machine.

    python benchmarks/bench_zoo_policy.py --algo sac --widths 64 256 --repeats 3
    python benchmarks/bench_zoo_policy.py --algo ppo --widths 256
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from stable_baselines3 import PPO, SAC
from torch import nn

from envs.tasks import make_env, resolve
from zoo_rl import zoo_policy
from zoo_rl.machine import machine_line

TASKS = {"sac": "classic:pendulum+g=12", "ppo": "mujoco:halfcheetah+friction=0.8+mass=1.25"}
SETTINGS = {"sac": dict(learning_rate=1e-3, learning_starts=100, batch_size=256),
            "ppo": dict(learning_rate=2.0633e-5, n_steps=512, batch_size=64, n_epochs=20)}


def architecture(algo: str, width: int) -> dict:
    if algo == "sac":
        return dict(net_arch=[width, width], activation_fn=nn.ReLU)
    return dict(net_arch=dict(pi=[width, width], vf=[width, width]), activation_fn=nn.ReLU, log_std_init=-2,
                ortho_init=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", choices=sorted(TASKS), default="sac")
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256], help="hidden layer widths")
    parser.add_argument("--sources", type=int, default=6, help="K, the zoo's size")
    parser.add_argument("--steps", type=int, default=None, help="steps timed per round (default: SAC 300, PPO 1024)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of every variant, interleaved")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the studies run)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    algo_cls = {"sac": SAC, "ppo": PPO}[args.algo]
    task = resolve(TASKS[args.algo])
    steps = args.steps or (300 if args.algo == "sac" else 1024)
    settings = dict(SETTINGS[args.algo], device="cpu", seed=0)
    print(machine_line() + f", {args.threads} torch thread(s)")
    print(f"{args.algo} on {task.slug}, K={args.sources} sources, {steps} steps per round, {args.repeats} rounds")
    with tempfile.TemporaryDirectory() as tmp:
        for width in args.widths:
            arch = architecture(args.algo, width)
            zoo = []
            for k in range(args.sources):
                path = Path(tmp) / f"{args.algo}-{width}-{k}.zip"
                env = make_env(task, 1, seed=k)
                algo_cls("MlpPolicy", env, policy_kwargs=arch, **dict(settings, seed=k)).save(path)
                env.close()
                zoo.append(str(path))
            variants = {"plain": ("MlpPolicy", arch)}
            variants["zoo-lite"] = zoo_policy(algo_cls, zoo=zoo, gate="lite", **arch)
            variants["zoo-lite, no alignment"] = zoo_policy(algo_cls, zoo=zoo, gate="lite", align=False, **arch)
            models = {}
            for name, (policy, kwargs) in variants.items():
                models[name] = algo_cls(policy, make_env(task, 1, seed=0), policy_kwargs=kwargs, **settings)
                models[name].learn(steps)  # warm-up: past learning_starts, one rollout and update
            rates: dict[str, list[float]] = {name: [] for name in models}
            for _ in range(args.repeats):
                for name, model in models.items():
                    start = time.perf_counter()
                    model.learn(steps, reset_num_timesteps=False)
                    rates[name].append(steps / (time.perf_counter() - start))
            plain = statistics.median(rates["plain"])
            for name, values in rates.items():
                rate = statistics.median(values)
                print(f"  width {width:>4}  {name:<24} {rate:7.1f} steps/s   x{rate / plain:.2f} of plain")
            for model in models.values():
                model.env.close()


if __name__ == "__main__":
    main()
