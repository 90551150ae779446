"""MuJoCo bodies with changed dynamics or objective, built by name: a continuous-control zoo.

A task is a gymnasium v5 body and its changes, written like a Lab2D level's settings::

    mujoco:halfcheetah                              the body as gymnasium ships it
    mujoco:halfcheetah+mass=1.5+friction=0.5        heavier, on a slipperier floor
    mujoco:halfcheetah+direction=backward           the same body, rewarded for running backwards

Changes (each a factor on the body's own values, 1 = unchanged; names sorted in the task's name):

- ``mass``: every body's mass and inertia (``model.body_mass``, ``body_inertia``);
- ``friction``: the sliding friction of every geom (``geom_friction[:, 0]``);
- ``gravity``: the gravity vector (``opt.gravity``);
- ``damping``: every joint's damping (``dof_damping``);
- ``legs``: limb lengths: every body below the root is placed that much further from its parent, and every
  limb capsule (and its mass, at the same radius) is that much longer;
- ``direction``: ``forward`` (default) or ``backward``: the sign of the forward-velocity reward
  (gymnasium's ``forward_reward_weight``), a different objective on the same body.

Masses and inertias are edited on the compiled model and followed by ``mj_setConst``, as MuJoCo asks
for after such edits. Out-of-range values and unknown names are refused with the accepted ones.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from envs.named import NamedTask

PREFIX = "mujoco:"
#: Bodies: task name -> gymnasium id (v5: the versions that take reward weights as arguments).
BODIES = {"halfcheetah": "HalfCheetah-v5", "hopper": "Hopper-v5", "walker2d": "Walker2d-v5"}
#: Accepted ranges of the factors.
RANGES: dict[str, tuple[float, float]] = {
    "mass": (0.25, 4.0), "friction": (0.1, 4.0), "gravity": (0.25, 2.0), "damping": (0.1, 10.0), "legs": (0.75, 1.25),
}
DIRECTIONS = ("forward", "backward")


@dataclass(frozen=True)
class MujocoTask(NamedTask):
    """A body and its changes (``settings``: sorted ``(name, value)`` string pairs, without defaults)."""

    FAMILY: ClassVar[str] = "mujoco"
    BASE_FIELD: ClassVar[str] = "body"
    body: str
    settings: tuple[tuple[str, str], ...] = field(default=())
    mode: None = None
    difficulty: None = None

    @property
    def env_id(self) -> str:
        return BODIES[self.body]

    @property
    def factors(self) -> dict[str, float]:
        """Every numeric change, 1.0 where the task leaves it."""
        given = dict(self.settings)
        return {name: float(given.get(name, 1.0)) for name in RANGES}

    @property
    def direction(self) -> str:
        return dict(self.settings).get("direction", "forward")


def _canonical(value: float) -> str:
    return f"{value:g}"


def resolve_mujoco(name: str) -> MujocoTask:
    """``mujoco:<body>[+key=value...]`` (or its slug ``mujoco-<body>+...``) -> :class:`MujocoTask`.

    :raises ValueError: an unknown body or change, a value out of its range or not a number, a change
        given twice; each message lists what is accepted.
    """
    text = name[len(PREFIX):] if name.startswith(PREFIX) else name[len("mujoco-"):]
    body, plus, rest = text.partition("+")
    if body not in BODIES:
        raise ValueError(f"Unknown MuJoCo body {body!r}; the bodies are: {', '.join(BODIES)} (e.g. mujoco:halfcheetah).")
    settings: dict[str, str] = {}
    for item in rest.split("+") if plus else []:
        key, eq, value = item.partition("=")
        if not eq or not key or not value:
            raise ValueError(f"MuJoCo change {item!r}: write +name=value, e.g. mujoco:halfcheetah+mass=1.5.")
        if key in settings:
            raise ValueError(f"MuJoCo change {key!r} is given twice in {name!r}.")
        if key == "direction":
            if value not in DIRECTIONS:
                raise ValueError(f"direction={value!r}: choose one of {', '.join(DIRECTIONS)}.")
            if value != "forward":
                settings[key] = value
            continue
        if key not in RANGES:
            accepted = ", ".join(f"{k} ({lo:g}..{hi:g})" for k, (lo, hi) in RANGES.items())
            raise ValueError(f"Unknown MuJoCo change {key!r}; the changes are: {accepted}, direction "
                             f"({'|'.join(DIRECTIONS)}).")
        try:
            factor = float(value)
        except ValueError:
            raise ValueError(f"{key}={value!r} is not a number; {key} is a factor on the body's own value.") from None
        low, high = RANGES[key]
        if not (math.isfinite(factor) and low <= factor <= high):
            raise ValueError(f"{key}={value} is out of range: {key} takes factors from {low:g} to {high:g}.")
        if factor != 1.0:
            settings[key] = _canonical(factor)
    return MujocoTask(body, tuple(sorted(settings.items())))


def apply_changes(env: gym.Env, task: MujocoTask) -> gym.Env:
    """Change the dynamics of ``env`` (a gymnasium MuJoCo env of ``task``'s body) in place; return it."""
    import mujoco

    model = env.unwrapped.model
    f = task.factors
    if f["legs"] != 1.0:
        s = f["legs"]
        root = 1  # body 0 is the world; body 1 the root of the walker, whose geoms stay as they are
        below_root = np.arange(model.nbody) > root
        model.body_pos[below_root] *= s
        limbs = below_root[model.geom_bodyid] & (model.geom_type == mujoco.mjtGeom.mjGEOM_CAPSULE)
        model.geom_pos[limbs] *= s
        model.geom_size[limbs, 1] *= s  # a capsule's half-length; its radius stays
        # a capsule's mass grows with its length at a fixed radius (the end caps are a small share)
        model.body_mass[below_root] *= s
        model.body_inertia[below_root] *= s
    if f["mass"] != 1.0:
        model.body_mass[:] *= f["mass"]
        model.body_inertia[:] *= f["mass"]
    if f["friction"] != 1.0:
        model.geom_friction[:, 0] *= f["friction"]
    if f["gravity"] != 1.0:
        model.opt.gravity[:] *= f["gravity"]
    if f["damping"] != 1.0:
        model.dof_damping[:] *= f["damping"]
    mujoco.mj_setConst(model, env.unwrapped.data)
    return env


def _warn(message: str) -> None:
    warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)


def route_warnings() -> None:
    """Send MuJoCo's warnings to Python's ``warnings`` (shown once per place) instead of its default, which
    prints them and appends them to ``MUJOCO_LOG.TXT`` in the working directory: gymnasium's v5 bodies use
    a compiler attribute (``settotalmass``) that MuJoCo 4 reports as deprecated every time one is built."""
    import mujoco

    if mujoco.get_mju_user_warning() is not _warn:
        mujoco.set_mju_user_warning(_warn)


def make_mujoco_env(task: MujocoTask, **kwargs: Any) -> gym.Env:
    """One gymnasium environment of ``task`` (``kwargs`` go to ``gym.make``)."""
    route_warnings()
    if task.direction == "backward":
        kwargs = {"forward_reward_weight": -1.0, **kwargs}
    return apply_changes(gym.make(task.env_id, **kwargs), task)


def make_mujoco(task: MujocoTask | str, n_envs: int = 1, seed: int | None = 0, *, monitor_dir: str | None = None,
                monitor_append: bool = False):
    """``n_envs`` environments of ``task`` in a ``DummyVecEnv``, each in a Monitor (full-episode returns;
    CSVs in ``monitor_dir`` when given); environment ``i`` is seeded ``seed + i``."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    if not isinstance(task, MujocoTask):
        task = resolve_mujoco(task)
    if n_envs < 1:
        raise ValueError(f"n_envs must be at least 1, got {n_envs}.")
    return make_vec_env(lambda: make_mujoco_env(task), n_envs=n_envs, seed=seed, monitor_dir=monitor_dir,
                        vec_env_cls=DummyVecEnv, monitor_kwargs=dict(override_existing=not monitor_append))
