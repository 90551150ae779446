"""Shared fixtures: a tiny image environment and a zoo of random NatureCNN sources."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.torch_layers import NatureCNN

from zoo_rl.sources import write_compact

# One thread: the tests are many small ops, and CI's two cores may be shared with another job.
torch.set_num_threads(1)

OBS_SHAPE_HWC = (84, 84, 4)
OBS_SPACE_CHW = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)


class ImageEnv(gym.Env):
    """84x84x4 uint8 observations, 3 actions, 40-step episodes: Atari's shapes at no emulator cost."""

    metadata: dict = {"render_modes": []}

    def __init__(self, n_actions: int = 3, episode_length: int = 40) -> None:
        self.observation_space = gym.spaces.Box(0, 255, OBS_SHAPE_HWC, np.uint8)
        self.action_space = gym.spaces.Discrete(n_actions)
        self.episode_length = episode_length
        self._t = 0

    def _obs(self) -> np.ndarray:
        return self.np_random.integers(0, 256, OBS_SHAPE_HWC, dtype=np.uint8)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        return self._obs(), {}

    def step(self, action):
        self._t += 1
        reward = float(action == self._t % self.action_space.n)
        return self._obs(), reward, self._t >= self.episode_length, False, {}


def random_nature_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return NatureCNN(OBS_SPACE_CHW).state_dict()


def untrained_policy_zoo(root: Path, algo: str, target: str, games: tuple[str, ...]) -> list[str]:
    """One compact whole-policy source of ``algo`` ("ppo" or "sac") per game, untrained (seeds 0, 1, ...), in the
    architecture the hyperparameter file gives ``target`` (patch ``HYPERPARAMS_DIR`` for a smaller one); no target
    networks, as the zoo's exports hold none."""
    from stable_baselines3 import PPO, SAC

    from envs.tasks import make_env, resolve
    from zoo_rl.study.config import policy_hyperparams
    from zoo_rl.training import sb3_policy_kwargs

    task = resolve(target)
    params, _, policy = policy_hyperparams(algo, task)
    env = make_env(task, 1)
    extra = dict(buffer_size=1) if algo == "sac" else {}
    paths = []
    for k, game in enumerate(games):
        model = {"ppo": PPO, "sac": SAC}[algo](policy, env, seed=k, device="cpu", **extra,
                                                 policy_kwargs=sb3_policy_kwargs(params["policy_kwargs"]))
        state = {key: v for key, v in model.policy.state_dict().items() if "_target" not in key}
        write_compact(root / f"src{k}", {}, state, {"name": f"src{k}", "game": game, "algo": algo,
                                                    "architecture": {"activation": "relu"}})
        paths.append(str(root / f"src{k}"))
    env.close()
    return paths


@pytest.fixture(scope="session")
def zoo_paths(tmp_path_factory) -> list[str]:
    """Three compact zoo folders holding different random NatureCNNs."""
    root = tmp_path_factory.mktemp("zoo")
    paths = []
    for k in range(3):
        folder = root / f"src{k}"
        write_compact(folder, random_nature_state(k), {"action_net.weight": torch.zeros(3, 512)}, {"name": f"src{k}"})
        paths.append(str(folder))
    return paths


@pytest.fixture()
def image_env():
    from stable_baselines3.common.env_util import make_vec_env

    return make_vec_env(ImageEnv, n_envs=2, seed=0)


def obs_batch(n: int = 8, seed: int = 0) -> torch.Tensor:
    """``(n, 4, 84, 84)`` float observations scaled like SB3's preprocessing (0..1)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 4, 84, 84), generator=g).float() / 255.0


def tmp_copy(paths: list[str], tmp: Path) -> list[str]:
    import shutil

    out = []
    for p in paths:
        dest = tmp / Path(p).name
        shutil.copytree(p, dest)
        out.append(str(dest))
    return out


class StopAt(BaseCallback):
    """Simulates a kill: raises once training has passed ``steps``."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.steps:
            raise KeyboardInterrupt
        return True


def random_play(env_id: str, n: int) -> np.ndarray:
    """``n`` observations of a gymnasium environment under random actions (seeded)."""
    env = gym.make(env_id)
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    out = []
    for _ in range(n):
        out.append(obs)
        obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            obs, _ = env.reset()
    return np.stack(out)
