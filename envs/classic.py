"""Classic-control systems with changed dynamics, built by name: a cheap continuous-control zoo for off-policy agents.

A task is a gymnasium classic-control system and its changes, written like a MuJoCo body's::

    classic:pendulum                                     Pendulum-v1 as gymnasium ships it
    classic:pendulum+g=12                                stronger gravity
    classic:pendulum+g=12+l=0.8+m=1.3+max_torque=2.5     a shorter, heavier pole on a stronger motor

The system is gymnasium's ``Pendulum-v1``, with its 200-step ``TimeLimit`` kept (so that returns compare with
the RL Baselines3 Zoo's). Its changes are absolute values of the system's own parameters (names sorted in
the task's name, a value equal to gymnasium's dropped):

- ``g``: gravity (gymnasium's ``g`` argument; 10);
- ``m``: the pole's mass (1);
- ``l``: the pole's length (1);
- ``max_torque``: the motor's largest torque (2). The action space stays gymnasium's ``[-2, 2]`` for every
  variant and an action ``a`` applies the torque ``a * max_torque / 2`` (a stronger or weaker motor under the same
  commands), so that every variant shares one action space: sources of any variant read and act in a target's
  spaces, an SB3 model of one variant loads on another's environment, and a SAC policy, which squashes its actions
  to the bounds of its action space, means the same command on each.

The dynamics (gymnasium's): ``thdot += (3 g / (2 l) sin(th) + 3 / (m l^2) torque) dt`` with ``dt = 0.05``, the
angular velocity clipped to 8; the cost ``th^2 + 0.1 thdot^2 + 0.001 torque^2`` uses the torque applied. Each change
alone, anywhere in its range, leaves a full swing-up possible under that speed limit (the speed at the bottom and the
motor's work over the half turn up exceed the work against gravity); strong gravity together with a heavy pole or a
weak motor at the ends of their ranges (``g=15`` with ``m=2`` or ``max_torque=1``) may not, which lowers the best
return. Out-of-range values and unknown names are refused with the accepted ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from envs.named import NamedTask

PREFIX = "classic:"
#: Systems: task name -> gymnasium id.
SYSTEMS = {"pendulum": "Pendulum-v1"}
#: gymnasium's values of the parameters a task may change.
DEFAULTS: dict[str, float] = {"g": 10.0, "m": 1.0, "l": 1.0, "max_torque": 2.0}
#: Accepted ranges of the parameters (absolute values, in the system's units).
RANGES: dict[str, tuple[float, float]] = {"g": (5.0, 15.0), "m": (0.5, 2.0), "l": (0.5, 1.5), "max_torque": (1.0, 4.0)}


@dataclass(frozen=True)
class ClassicTask(NamedTask):
    """A classic-control system and its changes (``settings``: sorted ``(name, value)`` string pairs, without
    gymnasium's values)."""

    FAMILY: ClassVar[str] = "classic"
    BASE_FIELD: ClassVar[str] = "system"
    system: str
    settings: tuple[tuple[str, str], ...] = field(default=())
    mode: None = None
    difficulty: None = None

    @property
    def env_id(self) -> str:
        return SYSTEMS[self.system]

    @property
    def parameters(self) -> dict[str, float]:
        """Every parameter's value, gymnasium's where the task leaves it."""
        given = dict(self.settings)
        return {name: float(given.get(name, default)) for name, default in DEFAULTS.items()}


def _canonical(value: float) -> str:
    return f"{value:g}"


def resolve_classic(name: str) -> ClassicTask:
    """``classic:<system>[+key=value...]`` (or its slug ``classic-<system>+...``) -> :class:`ClassicTask`.

    :raises ValueError: an unknown system or parameter, a value out of its range or not a number, a parameter given
        twice; each message lists what is accepted.
    """
    text = name[len(PREFIX):] if name.startswith(PREFIX) else name[len("classic-"):]
    system, plus, rest = text.partition("+")
    if system not in SYSTEMS:
        raise ValueError(f"Unknown classic-control system {system!r}; the systems are: {', '.join(SYSTEMS)} "
                         "(e.g. classic:pendulum).")
    accepted = ", ".join(f"{k} ({lo:g}..{hi:g}, gymnasium's {DEFAULTS[k]:g})" for k, (lo, hi) in RANGES.items())
    settings: dict[str, str] = {}
    given: set[str] = set()
    for item in rest.split("+") if plus else []:
        key, eq, value = item.partition("=")
        if not eq or not key or not value:
            raise ValueError(f"Classic-control change {item!r}: write +name=value, e.g. classic:pendulum+g=12.")
        if key in given:
            raise ValueError(f"Classic-control change {key!r} is given twice in {name!r}.")
        given.add(key)
        if key not in RANGES:
            raise ValueError(f"Unknown classic-control change {key!r}; the changes are: {accepted}.")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{key}={value!r} is not a number; {key} takes values from {RANGES[key][0]:g} to "
                             f"{RANGES[key][1]:g}.") from None
        low, high = RANGES[key]
        if not (math.isfinite(number) and low <= number <= high):
            raise ValueError(f"{key}={value} is out of range: {key} takes values from {low:g} to {high:g} "
                             f"(gymnasium's: {DEFAULTS[key]:g}).")
        if number != DEFAULTS[key]:
            settings[key] = _canonical(number)
    return ClassicTask(system, tuple(sorted(settings.items())))


class TorqueScale(gym.ActionWrapper):
    """Applies the action ``a`` (gymnasium's ``[-2, 2]``) as the torque ``a * max_torque / 2`` of a changed motor,
    whose limit the pendulum itself clips at (``unwrapped.max_torque``)."""

    def __init__(self, env: gym.Env, max_torque: float) -> None:
        super().__init__(env)
        self.scale = max_torque / DEFAULTS["max_torque"]
        env.unwrapped.max_torque = max_torque

    def action(self, action: np.ndarray) -> np.ndarray:
        return np.asarray(action, dtype=np.float32) * np.float32(self.scale)


def make_classic_env(task: ClassicTask, **kwargs: Any) -> gym.Env:
    """One gymnasium environment of ``task`` (``kwargs`` go to ``gym.make``), with gymnasium's time limit."""
    p = task.parameters
    env = gym.make(task.env_id, g=p["g"], **kwargs)
    env.unwrapped.m = p["m"]
    env.unwrapped.l = p["l"]
    if p["max_torque"] != DEFAULTS["max_torque"]:
        env = TorqueScale(env, p["max_torque"])
    return env


def make_classic(task: ClassicTask | str, n_envs: int = 1, seed: int | None = 0, *, monitor_dir: str | None = None,
                 monitor_append: bool = False):
    """``n_envs`` environments of ``task`` in a ``DummyVecEnv``, each in a Monitor (full-episode returns; CSVs in
    ``monitor_dir`` when given); environment ``i`` is seeded ``seed + i``."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    if not isinstance(task, ClassicTask):
        task = resolve_classic(task)
    if n_envs < 1:
        raise ValueError(f"n_envs must be at least 1, got {n_envs}.")
    return make_vec_env(lambda: make_classic_env(task), n_envs=n_envs, seed=seed, monitor_dir=monitor_dir,
                        vec_env_cls=DummyVecEnv, monitor_kwargs=dict(override_existing=not monitor_append))
