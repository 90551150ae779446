"""DeepMind Lab2D levels as gymnasium environments in the Atari observation format.

One player is controlled (player ``1`` of multi-player levels; the others idle). The
player's RGB view (``1.RGB``, or ``WORLD.RGB`` on single-agent levels) is turned into an
84x84 grey frame, and :func:`make_lab2d` stacks 4 of them exactly like :func:`envs.make_atari`,
so NatureCNN zoos work across both families. Lab2D's composite actions (e.g. ``move`` x
``turn`` x ``fireZap``) become one discrete set: a no-op plus each non-zero value of each
action component alone.

DeepMind Lab (3D) is not supported: it is not installable from the package registries. With a
built DeepMind Lab, only the environment constructor changes: an env returning
``(84, 84, 1)`` uint8 frames with a discrete action set plugs into the same pipeline.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import cv2
import gymnasium as gym
import numpy as np
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecFrameStack

from envs.atari import FRAME_STACK

#: Default episode cap in agent steps (Lab2D levels without their own end run forever).
MAX_EPISODE_STEPS = 1000
FRAME_SIZE = 84


def _root() -> str:
    try:
        import dmlab2d.runfiles_helper
    except ImportError:
        raise ImportError("DeepMind Lab2D is not installed: `pip install dmlab2d`.") from None
    return dmlab2d.runfiles_helper.find()


@functools.lru_cache(maxsize=1)
def available_levels() -> tuple[str, ...]:
    """Levels shipped with the installed dmlab2d (folders with an ``init.lua``)."""
    levels = os.path.join(_root(), "dmlab2d", "lib", "game_scripts", "levels")
    return tuple(sorted(d for d in os.listdir(levels) if os.path.isfile(os.path.join(levels, d, "init.lua"))))


def check_level(level: str) -> str:
    """``level`` if its base name is shipped. ``<level>:<arg>`` passes ``arg`` to the level's Lua
    entry point, e.g. a map: ``commons_harvest:probabilistic_apples`` (a "flavour" of the level)."""
    base, _, arg = level.partition(":")
    levels = available_levels()
    if base not in levels:
        raise ValueError(f"Unknown Lab2D level {base!r}; the shipped levels are: {', '.join(levels)}.")
    if ":" in level and (not arg or ":" in arg):
        raise ValueError(f"Lab2D level {level!r}: write <level> or <level>:<argument>, e.g. "
                         "commons_harvest:probabilistic_apples.")
    return level


def parse_settings(text: str) -> dict[str, str]:
    """``"a.b=1+c=x"`` -> ``{"a.b": "1", "c": "x"}``: level settings as written after a task's ``+``.

    :raises ValueError: an item without ``=``, an empty key or value, or a key given twice.
    """
    settings: dict[str, str] = {}
    for item in text.split("+"):
        key, eq, value = item.partition("=")
        if not eq or not key or not value or any(c in key + value for c in ": /"):
            raise ValueError(f"Lab2D setting {item!r}: write +key=value after the level, e.g. "
                             "lab2d:clean_up+simulation.thresholdDepletion=1 (nested keys are dotted; no spaces, "
                             "colons or slashes).")
        if key in settings:
            raise ValueError(f"Lab2D setting {key!r} is given twice.")
        settings[key] = value
    return settings


def discrete_actions(spec: dict[str, Any]) -> list[dict[str, int]]:
    """No-op plus one action per non-zero value of each component, e.g. ``{"1.move": 3}``.

    :param spec: dmlab2d ``action_spec()``: name -> BoundedArray with ``minimum``/``maximum``.
    """
    noop = {name: int(np.clip(0, s.minimum, s.maximum)) for name, s in spec.items()}
    actions = [noop]
    for name, s in sorted(spec.items()):
        for value in range(int(s.minimum), int(s.maximum) + 1):
            if value != noop[name]:
                actions.append(dict(noop, **{name: value}))
    return actions


def to_grey84(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB -> ``(84, 84, 1)`` uint8 grey (the Atari wrapper's conversion)."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, (FRAME_SIZE, FRAME_SIZE), interpolation=cv2.INTER_AREA)[:, :, None]


class Lab2DEnv(gym.Env):
    """One player of a Lab2D level, observed as 84x84 grey frames.

    :param level: a shipped level name (see :func:`available_levels`), optionally ``<level>:<arg>``.
    :param settings: extra level settings (strings), passed to the Lua level.
    :param max_episode_steps: truncate episodes after this many steps.
    """

    metadata: dict = {"render_modes": ["rgb_array"]}

    def __init__(self, level: str, settings: dict[str, str] | None = None,
                 max_episode_steps: int = MAX_EPISODE_STEPS, render_mode: str | None = None) -> None:
        import dmlab2d

        self.level = check_level(level)
        self._settings = {"levelName": level, **(settings or {})}
        try:
            self._lab = dmlab2d.Lab2d(_root(), self._settings)
        except Exception as err:  # the Lua level rejects an unknown argument or setting
            raise ValueError(f"Lab2D level {level!r} with settings {settings or {}} failed to load: {err}") from err
        names = self._lab.observation_names()
        self._rgb_key = "1.RGB" if "1.RGB" in names else "WORLD.RGB"
        self._reward_key = "1.REWARD" if "1.REWARD" in names else None
        self._names = [n for n in (self._rgb_key, self._reward_key) if n]
        self._env = dmlab2d.Environment(self._lab, self._names, seed=0)
        self._actions = discrete_actions(self._env.action_spec())
        self.action_space = gym.spaces.Discrete(len(self._actions))
        self.observation_space = gym.spaces.Box(0, 255, (FRAME_SIZE, FRAME_SIZE, 1), np.uint8)
        self.max_episode_steps = max_episode_steps
        self.render_mode = render_mode
        self._steps = 0
        self._last_rgb: np.ndarray | None = None

    def _observe(self, timestep) -> np.ndarray:
        self._last_rgb = np.asarray(timestep.observation[self._rgb_key])
        return to_grey84(self._last_rgb)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            import dmlab2d

            self._env = dmlab2d.Environment(self._lab, self._names, seed=seed)
        self._steps = 0
        return self._observe(self._env.reset()), {}

    def step(self, action: int):
        timestep = self._env.step(self._actions[int(action)])
        self._steps += 1
        if self._reward_key is not None:
            reward = float(np.sum(timestep.observation[self._reward_key]))
        else:
            reward = float(timestep.reward or 0.0)
        terminated = bool(timestep.last())
        truncated = not terminated and self._steps >= self.max_episode_steps
        return self._observe(timestep), reward, terminated, truncated, {}

    def render(self) -> np.ndarray | None:
        return self._last_rgb

    def close(self) -> None:
        self._env.close()


def make_lab2d(level: str, n_envs: int = 8, seed: int | None = 0, *, monitor_dir: str | None = None,
               max_episode_steps: int = MAX_EPISODE_STEPS, settings: dict[str, str] | None = None,
               monitor_append: bool = False) -> VecEnv:
    """Vectorised, 4-frame-stacked Lab2D level: observations ``(n_envs, 84, 84, 4)`` uint8, like Atari."""
    check_level(level)
    if n_envs < 1:
        raise ValueError(f"n_envs must be at least 1, got {n_envs}.")
    venv = make_vec_env(functools.partial(Lab2DEnv, level, settings, max_episode_steps), n_envs=n_envs, seed=seed,
                        monitor_dir=monitor_dir, vec_env_cls=DummyVecEnv,
                        monitor_kwargs=dict(override_existing=not monitor_append))
    return VecFrameStack(venv, n_stack=FRAME_STACK)
