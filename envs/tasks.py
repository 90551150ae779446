"""One entry point for every task family: ``Pong``, ``Pong-m1``, ``lab2d:pushbox``,
``lab2d:commons_harvest:probabilistic_apples`` (a level with an argument, here its map),
``lab2d:clean_up+simulation.thresholdDepletion=1`` (a level with settings, ``+key=value`` each),
``mujoco:halfcheetah+mass=1.5`` (a MuJoCo body with changed dynamics, :mod:`envs.mujoco`),
``classic:pendulum+g=12`` (a classic-control system with changed dynamics, :mod:`envs.classic`).

A task knows its name (``game``), a file-system ``slug``, its flavour, and how to build its
vectorised environment: 4-frame-stacked ``(n_envs, 84, 84, 4)`` uint8 images for Atari games and
Lab2D levels alike, so that NatureCNN zoos work across both; the state vector for MuJoCo bodies and classic-control
systems.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from stable_baselines3.common.vec_env import VecEnv

from envs.atari import BACKENDS, AtariTask, atari_backend, make_atari, resolve_task
from envs.classic import PREFIX as CLASSIC_PREFIX
from envs.classic import ClassicTask, make_classic, resolve_classic
from envs.lab2d import check_level, make_lab2d, parse_settings
from envs.mujoco import PREFIX as MUJOCO_PREFIX
from envs.mujoco import MujocoTask, make_mujoco, resolve_mujoco
from envs.named import NamedTask

LAB2D_PREFIX = "lab2d:"


@dataclass(frozen=True)
class Lab2DTask(NamedTask):
    """A DeepMind Lab2D level (player 1 controlled), optionally with level settings.

    ``settings`` are ``(key, value)`` string pairs passed to the Lua level (dmlab2d's
    ``settings``; nested keys are dotted, e.g. ``simulation.thresholdDepletion``), written
    ``+key=value`` after the level in a task name and in its slug.
    """

    FAMILY: ClassVar[str] = "lab2d"
    BASE_FIELD: ClassVar[str] = "level"
    level: str
    settings: tuple[tuple[str, str], ...] = field(default=())
    mode: None = None
    difficulty: None = None

    @property
    def env_id(self) -> str:
        return self.game


Task = AtariTask | Lab2DTask | MujocoTask | ClassicTask


def resolve(name: str, mode: int | None = None, difficulty: int | None = None) -> Task:
    """``lab2d:<level>[:<argument>][+key=value...]`` -> :class:`Lab2DTask`; ``mujoco:<body>[+...]`` ->
    :class:`envs.mujoco.MujocoTask`; ``classic:<system>[+...]`` -> :class:`envs.classic.ClassicTask`; anything else
    -> :func:`envs.atari.resolve_task`. Slugs (``lab2d-<level>-<argument>+key=value``, ``mujoco-...``,
    ``classic-...``) resolve too.

    :raises ValueError: unknown game, level, body or system (with the valid names), malformed settings, or a
        flavour given for a task without ALE flavours.
    """
    if name.startswith(CLASSIC_PREFIX) or name.startswith("classic-"):
        if mode is not None or difficulty is not None:
            raise ValueError("Classic-control systems have no ALE mode or difficulty; change their dynamics with "
                             "+name=value, e.g. classic:pendulum+g=12.")
        return resolve_classic(name)
    if name.startswith(MUJOCO_PREFIX) or name.startswith("mujoco-"):
        if mode is not None or difficulty is not None:
            raise ValueError("MuJoCo bodies have no ALE mode or difficulty; change their dynamics with +name=value, "
                             "e.g. mujoco:halfcheetah+mass=1.5.")
        return resolve_mujoco(name)
    if name.startswith(LAB2D_PREFIX) or name.startswith("lab2d-"):
        if mode is not None or difficulty is not None:
            raise ValueError("Lab2D levels have no ALE mode or difficulty; drop --mode/--difficulty, or pick a "
                             "level's map with lab2d:<level>:<map> and settings with +key=value.")
        level, plus, rest = name[len(LAB2D_PREFIX):].partition("+")
        if name.startswith("lab2d-"):  # a slug
            level = level.replace("-", ":")
        settings = parse_settings(rest) if plus else {}
        return Lab2DTask(check_level(level), tuple(sorted(settings.items())))
    return resolve_task(name, mode, difficulty)


def task_from_record(record: dict) -> Task:
    """The task a run recorded as ``dataclasses.asdict(task)`` in its ``config.json`` (Lab2D settings included).

    :raises ValueError: a game or level this version does not know.
    """
    if "system" in record:
        return resolve_classic(CLASSIC_PREFIX + record["system"]
                               + "".join(f"+{k}={v}" for k, v in record.get("settings") or ()))
    if "body" in record:
        return resolve_mujoco(MUJOCO_PREFIX + record["body"]
                              + "".join(f"+{k}={v}" for k, v in record.get("settings") or ()))
    if "level" in record:
        settings = tuple((str(k), str(v)) for k, v in record.get("settings") or ())
        return Lab2DTask(check_level(record["level"]), tuple(sorted(settings)))
    return resolve(record["game"], record.get("mode"), record.get("difficulty"))


def env_backend(task: Task, backend: str = "auto") -> str:
    """The environment implementation ``make_env(task, backend=backend)`` uses: ``ale`` or ``gym``
    for Atari (see :func:`envs.atari.make_atari`), ``lab2d`` for Lab2D levels, ``mujoco`` for MuJoCo bodies and
    ``classic`` for classic-control systems (one implementation each).

    :raises ValueError: an unknown backend, or ``ale`` for a flavoured Atari task.
    """
    if isinstance(task, MujocoTask):
        if backend not in (*BACKENDS, "mujoco"):
            raise ValueError(f"Unknown environment backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
        return "mujoco"
    if isinstance(task, ClassicTask):
        if backend not in (*BACKENDS, "classic"):
            raise ValueError(f"Unknown environment backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
        return "classic"
    if isinstance(task, Lab2DTask):
        if backend not in (*BACKENDS, "lab2d"):  # "lab2d": the resolved name, as make_env receives it
            raise ValueError(f"Unknown environment backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
        return "lab2d"
    return atari_backend(task, backend)


def make_env(task: Task, n_envs: int, seed: int | None = 0, *, monitor_dir: str | None = None,
             monitor_append: bool = False, backend: str = "gym") -> VecEnv:
    """The training/evaluation environment of ``task``: ``(n_envs, 84, 84, 4)`` uint8 observations (Atari,
    Lab2D), or the state vector (MuJoCo bodies, classic-control systems).

    :param backend: for Atari tasks, ``gym`` (the RL Baselines3 Zoo wrappers, used for every
        evaluation), ``ale`` (ale-py's vector environment, faster; the default for training) or
        ``auto``; the other families have one implementation and ignore it.
    """
    if isinstance(task, ClassicTask):
        env_backend(task, backend)
        return make_classic(task, n_envs, seed, monitor_dir=monitor_dir, monitor_append=monitor_append)
    if isinstance(task, MujocoTask):
        env_backend(task, backend)
        return make_mujoco(task, n_envs, seed, monitor_dir=monitor_dir, monitor_append=monitor_append)
    if isinstance(task, Lab2DTask):
        env_backend(task, backend)
        return make_lab2d(task.level, n_envs, seed, monitor_dir=monitor_dir, monitor_append=monitor_append,
                          settings=dict(task.settings) or None)
    return make_atari(task, n_envs, seed, monitor_dir=monitor_dir, monitor_append=monitor_append, backend=backend)
