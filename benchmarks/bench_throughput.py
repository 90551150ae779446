"""End-to-end PPO throughput on Atari: plain SB3 against this project's pipeline, in one run.

Variants (each run in its own process, so that peak memory is its own):

  sb3        SB3's default: make_atari_env + DummyVecEnv + VecFrameStack, CnnPolicy, float32
  project    envs.make_atari + FastCnnPolicy (bf16 channels-last extractor): what `scratch` uses
  project-gym   the same with the gym wrapper pipeline instead of ale-py's vector environment
  zoo-<mode> ZooExtractor with K sources in each gate mode, through the project pipeline; a study
             method's options after a colon also work, e.g. zoo-lite:align-conv (the paper's code:
             no alignment on the 3136->512 layer, which then merges instead of running K times)
  ensemble   K frozen source extractors with a learned head, through the project pipeline

Each variant learns ``--steps`` agent steps after a warm-up of one rollout, with the RL Baselines3
Zoo's PPO Atari settings. Repetitions are interleaved (all variants, then all again) and the
table reports medians, ratios to ``sb3`` and to ``project``, and peak RSS. Then the inference
latency at batch 1 and 8 of an ``export_lite`` model against a plain NatureCNN.

    python benchmarks/bench_throughput.py                       # Pong, 8192 steps, 3 repetitions
    python benchmarks/bench_throughput.py --variants sb3,project --repeats 5
    python benchmarks/bench_throughput.py --variants project,zoo-lite --parallel 2   # + two 1-thread runs at once

``--parallel N`` adds, for every variant, N copies training at once with cores/N torch threads each
(what ``experiments/transfer.py --workers N`` does): they start timing together after their warm-ups,
and the row reports all their steps over the slowest one's time, i.e. the machine's total throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import PPO_ATARI, random_zoo

from zoo_rl.machine import MALLOC_ENV, reuse_freed_memory

VARIANTS = ("sb3", "project", "project-gym", "project-w2", "zoo-lite", "zoo-batch", "zoo-uniform", "zoo-sample", "ensemble")


def known_variant(variant: str) -> bool:
    """A listed variant, or ``zoo-<mode>:<options>`` with options that :func:`zoo_rl.study.zoo_options` accepts."""
    base, _, options = variant.partition(":")
    if base not in VARIANTS:
        return False
    if not options:
        return True
    if not base.startswith("zoo-"):
        return False
    from zoo_rl.study import zoo_options

    try:
        zoo_options(variant)
    except ValueError:
        return False
    return True


def build(variant: str, game: str, zoo: list[str]):
    from stable_baselines3 import PPO

    if variant == "sb3":
        import ale_py
        import gymnasium as gym
        from stable_baselines3.common.env_util import make_atari_env
        from stable_baselines3.common.vec_env import VecFrameStack

        gym.register_envs(ale_py)
        env = VecFrameStack(make_atari_env(f"{game}NoFrameskip-v4", n_envs=8, seed=0), n_stack=4)
        return PPO("CnnPolicy", env, seed=0, **PPO_ATARI)
    from envs import make_atari
    from zoo_rl.baselines import EnsembleExtractor
    from zoo_rl.extractor import ZooExtractor
    from zoo_rl.optim import ZooAdam
    from zoo_rl.policies import FastCnnPolicy, algo_kwargs

    backend = "gym" if variant in ("project-gym", "project-w2") else "ale"
    env = make_atari(game, n_envs=8, seed=0, workers=2 if variant == "project-w2" else 0, backend=backend)
    policy_kwargs: dict = dict(net_arch=[])
    if variant.startswith("zoo-"):
        from zoo_rl.study import zoo_options

        gate = variant[4:].partition(":")[0]
        policy_kwargs.update(features_extractor_class=ZooExtractor, optimizer_class=ZooAdam,
                             features_extractor_kwargs=dict(zoo=zoo, gate=gate, **zoo_options(variant)))
    elif variant == "ensemble":
        policy_kwargs.update(features_extractor_class=EnsembleExtractor, features_extractor_kwargs=dict(zoo=zoo))
    return PPO(FastCnnPolicy, env, seed=0, policy_kwargs=policy_kwargs, **PPO_ATARI, **algo_kwargs(FastCnnPolicy))


def child(variant: str, game: str, steps: int, zoo: list[str], threads: int = 0,
          barrier: str | None = None, parties: int = 1) -> None:
    """Runs in a subprocess: print one JSON line with timesteps/s, seconds and peak RSS.

    With ``barrier``, wait after the warm-up until ``parties`` children have written their ready file there.
    """
    if threads:
        torch.set_num_threads(threads)
    if variant != "sb3":  # the project's training runs reuse freed memory (ZOO_RL_MALLOC=0: glibc's default)
        reuse_freed_memory()
    model = build(variant, game, zoo)
    model.learn(1024)  # warm-up rollout and update
    if barrier:
        (Path(barrier) / f"ready-{os.getpid()}").touch()
        while len(list(Path(barrier).glob("ready-*"))) < parties:
            time.sleep(0.01)
    start = time.perf_counter()
    model.learn(steps, reset_num_timesteps=False)
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"variant": variant, "fps": steps / seconds, "seconds": seconds, "peak_mb": peak_mb}))


def latency(zoo: list[str], repeats: int = 200) -> dict[str, float]:
    """Median ms per ``predict`` at batch 1 and 8: export_lite model vs plain NatureCNN."""
    from stable_baselines3 import PPO

    from envs import make_atari
    from zoo_rl import ZooExtractor, export_lite

    env = make_atari("Pong", n_envs=1, seed=0)
    lite = PPO("CnnPolicy", env, policy_kwargs=dict(features_extractor_class=ZooExtractor, net_arch=[],
                                                    features_extractor_kwargs=dict(zoo=zoo, gate="lite")))
    models = {"export_lite": export_lite(lite), "NatureCNN": PPO("CnnPolicy", env, policy_kwargs=dict(net_arch=[]))}
    out = {}
    for batch in (1, 8):
        obs = np.random.default_rng(0).integers(0, 256, (batch, 84, 84, 4), dtype=np.uint8)
        times: dict[str, list[float]] = {name: [] for name in models}
        for i in range(repeats + 10):
            for name, model in models.items():  # interleaved
                start = time.perf_counter()
                model.predict(obs, deterministic=True)
                if i >= 10:
                    times[name].append(time.perf_counter() - start)
        for name, ts in times.items():
            out[f"{name} batch {batch}"] = statistics.median(ts) * 1e3
    return out


PLAIN_MALLOC = " plain-malloc"


def label(variant: str, copies: int, plain_malloc: bool = False) -> str:
    name = variant + (PLAIN_MALLOC if plain_malloc else "")
    return name if copies == 1 else f"{name} x{copies}"


def measure(cmd: list[str], copies: int, env: dict[str, str] | None = None) -> dict:
    """One child (all torch threads), or ``copies`` children at once with cores/copies threads each,
    released together after their warm-ups: their steps over the slowest one's seconds."""
    env = {**os.environ, **(env or {})}
    if copies == 1:
        result = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        return json.loads(result.stdout.strip().splitlines()[-1])
    threads = max(1, (os.cpu_count() or 1) // copies)
    with tempfile.TemporaryDirectory() as barrier:
        extra = ["--threads", str(threads), "--barrier", barrier, "--parties", str(copies)]
        procs = [subprocess.Popen(cmd + extra, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
                 for _ in range(copies)]
        outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a parallel child failed: {' '.join(cmd)}")
    results = [json.loads(out.strip().splitlines()[-1]) for out in outs]
    steps = sum(r["fps"] * r["seconds"] for r in results)
    return {"fps": steps / max(r["seconds"] for r in results), "peak_mb": max(r["peak_mb"] for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", default="Pong")
    parser.add_argument("--steps", type=int, default=8192, help="timed agent steps per variant and repetition")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sources", type=int, default=5, help="K for the zoo and ensemble variants")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--parallel", type=int, default=1,
                        help="also run N copies of each variant at once, cores/N threads each (total steps/s)")
    parser.add_argument("--plain-malloc", action="store_true",
                        help="also run every project variant with glibc's default allocator settings "
                             "(ZOO_RL_MALLOC=0), to measure zoo_rl.machine.reuse_freed_memory")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--barrier", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--parties", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--zoo", nargs="*", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.game, args.steps, args.zoo or [], args.threads, args.barrier, args.parties)
        return
    if args.parallel < 1:
        parser.error("--parallel must be at least 1")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if not known_variant(v)]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)} "
                     "(zoo-<mode>:<option> also takes a study method's options, e.g. zoo-lite:align-conv)")
    with tempfile.TemporaryDirectory() as tmp:
        zoo = random_zoo(args.sources, Path(tmp))
        copies = [1] + ([args.parallel] if args.parallel > 1 else [])
        rows = [(v, n, plain) for n in copies for v in variants
                for plain in ((False, True) if args.plain_malloc and v != "sb3" else (False,))]
        runs: dict[str, list[dict]] = {label(*row): [] for row in rows}
        for rep in range(args.repeats):
            for variant, n, plain in rows:
                cmd = [sys.executable, __file__, "--child", variant, "--game", args.game, "--steps", str(args.steps),
                       "--zoo", *zoo]
                name = label(variant, n, plain)
                runs[name].append(measure(cmd, n, {MALLOC_ENV: "0"} if plain else None))
                print(f"rep {rep + 1}/{args.repeats} {name}: {runs[name][-1]['fps']:.0f} steps/s", flush=True)
        lat = latency(zoo)
    fps = {v: statistics.median(r["fps"] for r in rs) for v, rs in runs.items()}
    from zoo_rl.machine import machine_line

    print(f"\n{args.game}, PPO (RL Zoo Atari settings), {args.steps} steps x {args.repeats} repetitions, "
          f"K={args.sources}, torch threads={torch.get_num_threads()}")
    print(machine_line() + " (the project pipeline's extractor runs bf16 only where it is native)")
    print(f"{'variant':<34} {'steps/s':>8} {'vs sb3':>7} {'vs project':>10} {'vs one run':>10} {'peak MB':>8}")
    for v in runs:
        vs_sb3 = fps[v] / fps["sb3"] if "sb3" in fps else float("nan")
        vs_project = fps[v] / fps["project"] if "project" in fps else float("nan")
        vs_single = fps[v] / fps[v.split(" x")[0]]
        peak = max(r["peak_mb"] for r in runs[v])
        print(f"{v:<34} {fps[v]:>8.0f} {vs_sb3:>7.2f} {vs_project:>10.2f} {vs_single:>10.2f} {peak:>8.0f}")
    for v in runs:
        if PLAIN_MALLOC in v:
            print(f"reuse_freed_memory, {v.replace(PLAIN_MALLOC, '')}: "
                  f"{fps[v.replace(PLAIN_MALLOC, '')] / fps[v]:.2f}x the steps/s of glibc's default settings")
    if args.parallel > 1:
        print(f"(x{args.parallel}: {args.parallel} runs at once, {max(1, (os.cpu_count() or 1) // args.parallel)} "
              "torch thread(s) each; steps/s is their total, peak MB one run's)")
    print("\ninference latency, median ms per predict()")
    for name, ms in lat.items():
        print(f"  {name:<24} {ms:.2f}")
    for batch in (1, 8):
        print(f"  export_lite / NatureCNN at batch {batch}: "
              f"{lat[f'export_lite batch {batch}'] / lat[f'NatureCNN batch {batch}']:.3f}")


if __name__ == "__main__":
    main()
