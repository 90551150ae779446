"""One level down: the scale of the features a Zoo-Tuning target starts from, against its sources'.

Collects observations of the target with a random policy, then prints, per layer, the root-mean-square
of the activations (after ReLU) of every source alone and of the Zoo-Tuning network at the start of
training under each gate normalisation (``zoo_rl.diagnostics.feature_scale``); then each layer's pre-activation
mean over its standard deviation and the share of units above zero (why a sum of sources falls silent); then how
alike the sources' weights are, layer by layer (the cosine between every two sources,
``zoo_rl.diagnostics.weight_agreement``). With equal gates, ``softmax`` averages the sources and ``sigmoid`` (the
paper's) sums them with weights 0.5.

    python experiments/feature_scale.py --target Pong
    python experiments/feature_scale.py --target lab2d:commons_harvest --zoo agents/zoo-lab2d agents/zoo
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from envs.tasks import make_env, resolve
from zoo_rl.diagnostics import feature_scale, weight_agreement
from zoo_rl.layers import NORMALISATIONS
from zoo_rl.files import write_csv_atomic
from zoo_rl.study import default_zoo, expand_zoo

ROOT = Path(__file__).resolve().parents[1]


def observations(task, steps: int, n_envs: int, seed: int) -> torch.Tensor:
    """``(steps * n_envs, C, H, W)`` float observations in [0, 1] under a uniformly random policy."""
    env = make_env(task, n_envs, seed=seed, backend="gym")
    rng = np.random.default_rng(seed)
    frames = [env.reset()]
    for _ in range(steps - 1):
        frames.append(env.step(rng.integers(env.action_space.n, size=n_envs))[0])
    env.close()
    return torch.as_tensor(np.concatenate(frames)).permute(0, 3, 1, 2).float() / 255.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="Pong")
    parser.add_argument("--zoo", nargs="+", default=None,
                        help="sources or zoo folders, as for transfer.py (default: the target's family zoo minus its own source)")
    parser.add_argument("--steps", type=int, default=64, help="random-policy steps per environment")
    parser.add_argument("--n-envs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--normalisations", default="softmax,sigmoid",
                        help=f"comma-separated, of {', '.join(NORMALISATIONS)}")
    parser.add_argument("--out", type=Path, default=None, help="also write the long table to this CSV")
    args = parser.parse_args()
    norms = tuple(n.strip() for n in args.normalisations.split(",") if n.strip())
    unknown = [n for n in norms if n not in NORMALISATIONS]
    if unknown:
        parser.error(f"unknown normalisations {unknown}; choose from {', '.join(NORMALISATIONS)}")
    task = resolve(args.target)
    zoo = expand_zoo(args.zoo, task) if args.zoo else default_zoo(task)
    if not zoo:
        parser.error(f"no sources for {args.target}: pass --zoo")
    table = feature_scale([str(z) for z in zoo], observations(task, args.steps, args.n_envs, args.seed), norms)
    wide = table.pivot(index="network", columns="layer", values="rms")[list(dict.fromkeys(table["layer"]))]
    wide = wide.loc[list(dict.fromkeys(table["network"]))]
    sources = wide.loc[[n for n in wide.index if not n.startswith("zoo ")]]
    wide.loc["mean of sources"] = sources.mean()
    print(f"{args.target}: RMS of each layer's output (after ReLU), {args.steps * args.n_envs} random-policy "
          f"observations, K={len(zoo)}")
    print(wide.to_string(float_format=lambda v: f"{v:.3f}"))
    last = wide.columns[-1]
    for n in norms:
        print(f"zoo {n}: last layer at {wide.loc[f'zoo {n}', last] / wide.loc['mean of sources', last]:.3f}x "
              "the mean source's")
    ratio = table.assign(cell=[f"{m / s:+.2f} ({a:.2f})" for m, s, a in
                               zip(table["pre_mean"], table["pre_std"], table["active"])])
    ratio = ratio.pivot(index="network", columns="layer", values="cell").loc[wide.index[:-1], wide.columns]
    print("pre-activation mean / standard deviation (share of units above zero):")
    print(ratio.to_string())
    agreement = weight_agreement([str(z) for z in zoo])
    print("cosine between two sources' weights (every pair):")
    print(agreement.to_string(index=False, float_format=lambda v: f"{v:+.2f}"))
    if args.out:
        write_csv_atomic(table, args.out)


if __name__ == "__main__":
    main()
