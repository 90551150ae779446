"""ale-py's own C++ vector environment (``ale_py.vector_env.AtariVectorEnv``) behind SB3's ``VecEnv``.

The default Atari pipeline (:func:`envs.atari.make_atari` with ``backend="gym"``) steps one
Python ``gym`` environment after another, each through SB3's wrapper stack. ale-py ships a
vector environment that does the same preprocessing in C++ threads (no-op starts, frame skip 4
with max-pooling, fire reset, 84x84 grey, 4-frame stack) and steps Pong about twice as fast
(``python benchmarks/bench_envs.py``). This adapter gives it the exact SB3 contract:

- observations ``(n_envs, 84, 84, 4)`` uint8, like the gym pipeline after ``VecFrameStack``;
- a lost life ends a training episode (``terminal_on_life_loss``) without resetting the game,
  as SB3's ``EpisodicLifeEnv`` does; a game over resets it in the same step, and the last
  observation of every ended episode is in ``info["terminal_observation"]``;
- time limits (108,000 frames) are truncations (``info["TimeLimit.truncated"]``);
- rewards are clipped to their sign for training (``clip_reward``) while ``info["episode"]``
  reports the unclipped return of each full game, like SB3's ``Monitor`` inside the wrappers,
  and Monitor CSV files are written when ``monitor_dir`` is given.

The frames themselves are the gym pipeline's: from the same start, without no-ops or FIRE, Pong's
84x84 frames agree to within resize rounding (``tests/test_ale_vector.py``). Known differences:

- after a lost life nobody presses FIRE for the agent (SB3's ``FireResetEnv`` does, in games
  with lives and a FIRE action such as Breakout): the agent has to, as in the ALE v5 protocol.
  ``make_atari(backend="auto")`` therefore uses this class only for games where SB3 does not
  either (:func:`envs.atari.fires_after_lost_life`: Pong, Enduro, Boxing...);
- the reset sequence differs in detail (no-op counts are random on both; SB3 presses FIRE then
  action 2), the frame stack after a reset holds the first frame in every slot (SB3 zero-fills),
  and episode lengths in the Monitor files are agent steps x 4 frames (no-op starts not counted);
- flavours (ALE modes and difficulties) do not exist here: those tasks use the gym pipeline.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import ResultsWriter
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvObs, VecEnvStepReturn

FRAME_SKIP = 4


def rom_name(game: str) -> str:
    """ale-py's ROM name of a short game name: ``RoadRunner`` -> ``road_runner``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", game).lower()


class AleVectorVecEnv(VecEnv):
    """SB3 ``VecEnv`` over ``ale_py.vector_env.AtariVectorEnv`` (see the module docstring).

    :param game: short game name (``Pong``); flavours are not supported.
    :param n_envs: number of environments.
    :param seed: seed of the first environment; environment ``i`` gets ``seed + i``.
    :param clip_reward: clip training rewards to their sign.
    :param terminal_on_life_loss: end a training episode on each lost life (the game goes on).
    :param max_episode_frames: truncate games after this many frames.
    :param monitor_dir: write ``<i>.monitor.csv`` files of full games there.
    :param monitor_append: append to existing Monitor files (when resuming a run).
    :param num_threads: C++ threads stepping the environments (0: ale-py's choice).
    :param noop_max: up to this many no-op frames at each game start (the gym pipeline's 30).
    :param fire_reset: press FIRE at each game start (where the game has FIRE).
    """

    def __init__(self, game: str, n_envs: int = 8, seed: int | None = 0, *, clip_reward: bool = True,
                 terminal_on_life_loss: bool = True, max_episode_frames: int = 108_000,
                 monitor_dir: str | None = None, monitor_append: bool = False, num_threads: int = 0,
                 noop_max: int = 30, fire_reset: bool = True) -> None:
        from ale_py import roms
        from ale_py.vector_env import AtariVectorEnv

        rom = rom_name(game)
        if roms.get_rom_path(rom) is None:
            raise ValueError(f"ale-py has no ROM {rom!r} for game {game!r}; use backend='gym' or a game from "
                             "envs.atari.available_games().")
        self.game = game
        self._env = AtariVectorEnv(rom, n_envs, num_threads=num_threads, autoreset_mode="SameStep",
                                   episodic_life=False, life_loss_info=terminal_on_life_loss,
                                   reward_clipping=False, repeat_action_probability=0.0, noop_max=noop_max,
                                   use_fire_reset=fire_reset, frameskip=FRAME_SKIP, maxpool=True, stack_num=4,
                                   img_height=84, img_width=84, grayscale=True,
                                   max_num_frames_per_episode=max_episode_frames)
        observation_space = gym.spaces.Box(0, 255, (84, 84, 4), np.uint8)
        super().__init__(n_envs, observation_space, self._env.single_action_space)
        self.clip_reward = clip_reward
        self.render_mode = None
        self._actions: np.ndarray | None = None
        self._returns = np.zeros(n_envs)
        self._lengths = np.zeros(n_envs, dtype=np.int64)
        self._frames = np.zeros(n_envs, dtype=np.int64)
        self._started = time.time()
        self._writers: list[ResultsWriter] | None = None
        if monitor_dir is not None:
            os.makedirs(monitor_dir, exist_ok=True)
            self._writers = [ResultsWriter(os.path.join(monitor_dir, str(i)),
                                           header={"t_start": self._started, "env_id": f"ale_vector:{game}"},
                                           override_existing=not monitor_append) for i in range(n_envs)]
        if seed is not None:
            self.seed(seed)

    @staticmethod
    def _nhwc(obs: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(obs.transpose(0, 2, 3, 1))

    def reset(self) -> VecEnvObs:
        seeds = self._seeds if all(s is not None for s in self._seeds) else None
        obs, info = self._env.reset(seed=None if seeds is None else np.asarray(seeds, dtype=np.int64))
        self._reset_seeds()
        self._reset_options()
        self._returns[:] = 0
        self._lengths[:] = 0
        self._frames = np.asarray(info["episode_frame_number"], dtype=np.int64).copy()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return self._nhwc(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)

    def step_wait(self) -> VecEnvStepReturn:
        assert self._actions is not None, "step_async() first"
        obs, reward, terminated, truncated, info = self._env.step(self._actions)
        self._actions = None
        reward = np.asarray(reward, dtype=np.float64)
        frames = np.asarray(info["episode_frame_number"], dtype=np.int64)
        # SameStep autoreset: a game that ended was reset in this very step, so its episode frame
        # counter went back below where it was; a lost life ends the episode but not the game.
        reset = (terminated | truncated) & (frames < self._frames)
        self._frames = frames.copy()
        self._returns += reward
        self._lengths += 1
        dones = terminated | truncated
        nhwc = self._nhwc(obs)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(dones):
            final = info["final_obs"][i] if reset[i] else obs[i]
            infos[i]["terminal_observation"] = np.ascontiguousarray(final.transpose(1, 2, 0))
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        for i in np.flatnonzero(reset):
            episode = {"r": float(self._returns[i]), "l": int(self._lengths[i] * FRAME_SKIP),
                       "t": round(time.time() - self._started, 6)}
            infos[i]["episode"] = episode
            if self._writers is not None:
                self._writers[i].write_row(episode)
            self._returns[i] = 0.0
            self._lengths[i] = 0
        rewards = np.sign(reward) if self.clip_reward else reward
        return nhwc, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self._env.close()
        for writer in self._writers or []:
            writer.close()

    # The rest of VecEnv's interface: there are no per-environment Python objects here.
    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        if attr_name == "render_mode":
            return [None for _ in self._get_indices(indices)]
        raise AttributeError(f"AleVectorVecEnv environments have no attribute {attr_name!r}.")

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        raise AttributeError(f"AleVectorVecEnv cannot set {attr_name!r} on its environments.")

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        raise AttributeError(f"AleVectorVecEnv environments have no method {method_name!r}.")

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices=None) -> list[bool]:
        # Episodes carry Monitor's info["episode"] (full games, unclipped): report Monitor as present.
        from stable_baselines3.common.monitor import Monitor

        return [wrapper_class is Monitor for _ in self._get_indices(indices)]

    def get_images(self):  # pragma: no cover - no rendering through the vector interface
        raise NotImplementedError("AleVectorVecEnv does not render; use backend='gym' to record videos.")
