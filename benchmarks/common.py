"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.torch_layers import NatureCNN

from zoo_rl.sources import write_compact
from zoo_rl.study import HYPERPARAMS_DIR
from zoo_rl.training import load_hyperparams

SPACE = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)


def ppo_atari() -> dict:
    """The project's PPO Atari settings (``agents/hyperparams/ppo.yml``, what every run trains with), without
    ``n_envs`` and ``policy`` (the benchmarks choose them) and with their schedules at the start value: a
    benchmark times updates, and a schedule changes no update's cost."""
    params = load_hyperparams(HYPERPARAMS_DIR / "ppo.yml", "Pong")
    params.pop("n_envs", None)
    params.pop("policy", None)
    return {k: float(v[len("lin_"):]) if isinstance(v, str) and v.startswith("lin_") else v for k, v in params.items()}


#: The settings of :func:`ppo_atari`.
PPO_ATARI = ppo_atari()


def random_zoo(k: int, root: Path) -> list[str]:
    """K compact sources holding random NatureCNNs: speed does not depend on the weights."""
    paths = []
    for i in range(k):
        torch.manual_seed(i)
        write_compact(root / f"src{i}", NatureCNN(SPACE).state_dict(), {}, {})
        paths.append(str(root / f"src{i}"))
    return paths
