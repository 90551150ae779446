"""Environment stepping alone (random actions, no policy): in-process vs worker processes.

Measures, in one run, agent steps per second of the project's Atari environment (``make_atari``:
AtariWrapper + 4-frame stack) with 8 environments

  dummy        all 8 in this process (``DummyVecEnv``, ``backend="gym"``)
  ale          ale-py's C++ vector environment (``backend="ale"``, the default for training)
  sharded-N    ``make_atari(workers=N)``: N worker processes, 8/N environments each
  subproc      SB3's ``SubprocVecEnv``: one process per environment
  independent  the upper bound: 2 processes stepping 4 environments each on their own, nothing shared

    python benchmarks/bench_envs.py
    python benchmarks/bench_envs.py --game Breakout --steps 800 --repeats 5
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time

import numpy as np



def steps_per_second(game: str, n_envs: int, steps: int, **kwargs) -> float:
    from envs import make_atari

    env = make_atari(game, n_envs=n_envs, seed=0, **kwargs)
    try:
        env.reset()
        rng = np.random.default_rng(0)
        n_actions = env.action_space.n
        for _ in range(20):
            env.step(rng.integers(0, n_actions, n_envs))
        start = time.perf_counter()
        for _ in range(steps):
            env.step(rng.integers(0, n_actions, n_envs))
        return steps * n_envs / (time.perf_counter() - start)
    finally:
        env.close()


def _independent(args: tuple[str, int]) -> float:
    return steps_per_second(args[0], 4, args[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", default="Pong")
    parser.add_argument("--steps", type=int, default=400, help="timed vector steps (x 8 agent steps)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    variants = {
        "dummy": lambda: steps_per_second(args.game, 8, args.steps, backend="gym"),
        "ale": lambda: steps_per_second(args.game, 8, args.steps, backend="ale"),
        "sharded-2": lambda: steps_per_second(args.game, 8, args.steps, workers=2),
        "sharded-4": lambda: steps_per_second(args.game, 8, args.steps, workers=4),
        "subproc": lambda: steps_per_second(args.game, 8, args.steps, subproc=True),
    }
    results: dict[str, list[float]] = {name: [] for name in [*variants, "independent"]}
    ctx = mp.get_context("forkserver")
    for rep in range(args.repeats):
        for name, run in variants.items():
            results[name].append(run())
        with ctx.Pool(2) as pool:
            results["independent"].append(sum(pool.map(_independent, [(args.game, args.steps)] * 2)))
        print(f"rep {rep + 1}/{args.repeats}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in results.items()), flush=True)
    base = statistics.median(results["dummy"])
    print(f"\n{args.game}, 8 environments, {args.steps} vector steps x {args.repeats} repetitions, random actions")
    print(f"{'variant':<12} {'steps/s':>8} {'vs dummy':>9}")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:<12} {median:>8.0f} {median / base:>9.2f}")


if __name__ == "__main__":
    main()
