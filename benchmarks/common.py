"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.torch_layers import NatureCNN

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zoo_rl.sources import write_compact  # noqa: E402

SPACE = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
#: The RL Baselines3 Zoo's PPO Atari settings (constant learning rate and clip range for timing).
PPO_ATARI = dict(n_steps=128, n_epochs=4, batch_size=256, learning_rate=2.5e-4, clip_range=0.1,
                 vf_coef=0.5, ent_coef=0.01)


def random_zoo(k: int, root: Path) -> list[str]:
    """K compact sources holding random NatureCNNs: speed does not depend on the weights."""
    paths = []
    for i in range(k):
        torch.manual_seed(i)
        write_compact(root / f"src{i}", NatureCNN(SPACE).state_dict(), {}, {})
        paths.append(str(root / f"src{i}"))
    return paths
