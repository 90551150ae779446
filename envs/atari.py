"""Atari environments on the RL Baselines3 Zoo protocol.

``{Game}NoFrameskip-v4`` + SB3's ``AtariWrapper`` (30 no-op starts, frame skip 4,
episodic life, fire reset, 84x84 grey, clipped reward for training) + a 4-frame stack.
``Monitor`` sits *inside* the wrappers, so logged returns are unclipped full games, and
one agent step is 4 emulator frames. This is exactly what ``rl_zoo3`` does, so public
SB3 Atari agents are valid zoo members.

A *task* is a game plus an optional ALE flavour (``mode``, ``difficulty``): a flavour of
a game is a different task (``Pong`` vs ``Pong-m1-d1``).
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecFrameStack

from envs.vec import ShardedVecEnv

#: Standard evaluation cap: 108,000 frames = 30 minutes of play = 27,000 agent steps.
MAX_EPISODE_FRAMES = 108_000
#: Frames stacked into one observation.
FRAME_STACK = 4

_SUFFIX = "NoFrameskip-v4"
_SLUG = re.compile(r"^(?P<game>[A-Za-z]+)(?:-m(?P<mode>\d+))?(?:-d(?P<difficulty>\d+))?$")


def _register_ale() -> None:
    import ale_py

    gym.register_envs(ale_py)


def _gym_make(env_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make`` after registering ALE: works in SubprocVecEnv workers (fresh interpreters) too."""
    _register_ale()
    return gym.make(env_id, **kwargs)


@functools.lru_cache(maxsize=1)
def available_games() -> tuple[str, ...]:
    """Short names (``Pong``) of every game registered as ``{Game}NoFrameskip-v4``."""
    _register_ale()
    return tuple(sorted(k[: -len(_SUFFIX)] for k in gym.registry if k.endswith(_SUFFIX) and "/" not in k))


@functools.lru_cache(maxsize=None)
def available_flavours(game: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(modes, difficulties)`` that ALE offers for ``game`` (a short name)."""
    _register_ale()
    env = gym.make(game + _SUFFIX)
    try:
        ale = env.unwrapped.ale
        return tuple(int(m) for m in ale.getAvailableModes()), tuple(int(d) for d in ale.getAvailableDifficulties())
    finally:
        env.close()


@functools.lru_cache(maxsize=None)
def fires_after_lost_life(game: str) -> bool:
    """True if SB3's AtariWrapper presses FIRE for the agent after each lost life of ``game``: the
    game has lives and a FIRE action (``EpisodicLifeEnv`` + ``FireResetEnv``). ale-py's vector
    environment does not, so only games where this is False have the same protocol on both backends."""
    _register_ale()
    env = gym.make(game + _SUFFIX)
    try:
        env.reset(seed=0)
        return env.unwrapped.ale.lives() > 0 and "FIRE" in env.unwrapped.get_action_meanings()
    finally:
        env.close()


@dataclass(frozen=True)
class AtariTask:
    """A game and an optional ALE flavour. ``None`` means the game's default."""

    game: str
    mode: int | None = None
    difficulty: int | None = None

    @property
    def family(self) -> str:
        return "atari"

    @property
    def env_id(self) -> str:
        return self.game + _SUFFIX

    @property
    def slug(self) -> str:
        """File-system friendly name: ``Pong``, ``Pong-m1``, ``Pong-m1-d1``."""
        parts = [self.game]
        if self.mode is not None:
            parts.append(f"m{self.mode}")
        if self.difficulty is not None:
            parts.append(f"d{self.difficulty}")
        return "-".join(parts)

    @property
    def env_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.mode is not None:
            kwargs["mode"] = self.mode
        if self.difficulty is not None:
            kwargs["difficulty"] = self.difficulty
        return kwargs

    def same_task(self, other: object) -> bool:
        """True when both name the same game *and* flavour (``None`` equals the default 0)."""
        return (
            isinstance(other, AtariTask)
            and self.game == other.game
            and (self.mode or 0) == (other.mode or 0)
            and (self.difficulty or 0) == (other.difficulty or 0)
        )


def _canonical_game(name: str) -> str:
    games = available_games()
    short = name
    if short.startswith("ALE/"):
        short = short[4:].split("-v")[0]
    for suffix in (_SUFFIX, "NoFrameskip-v0", "-v4", "-v5", "-v0"):
        if short.endswith(suffix):
            short = short[: -len(suffix)]
            break
    by_lower = {g.lower(): g for g in games}
    if short.lower() in by_lower:
        return by_lower[short.lower()]
    close = difflib.get_close_matches(short, games, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"Unknown Atari game {name!r}.{hint} Use a short name such as 'Pong' or a full id such as "
        f"'PongNoFrameskip-v4'; envs.atari.available_games() lists all {len(games)}."
    )


def resolve_task(game: str, mode: int | None = None, difficulty: int | None = None) -> AtariTask:
    """Validate a game name and flavour and return the :class:`AtariTask`.

    :param game: short name (``Pong``), full id (``PongNoFrameskip-v4``, ``ALE/Pong-v5``) or a
        task slug (``Pong-m1-d1``); a slug's flavour is used unless ``mode``/``difficulty`` are given.
    :param mode: ALE game mode, ``None`` for the default.
    :param difficulty: ALE difficulty, ``None`` for the default.
    :raises ValueError: for an unknown game (with the closest names) or an unsupported flavour
        (with the valid ones).
    """
    match = _SLUG.match(game)
    if match and (match["mode"] or match["difficulty"]):
        game = match["game"]
        mode = int(match["mode"]) if mode is None and match["mode"] else mode
        difficulty = int(match["difficulty"]) if difficulty is None and match["difficulty"] else difficulty
    name = _canonical_game(game)
    modes, difficulties = available_flavours(name)
    if mode is not None and mode not in modes:
        raise ValueError(f"{name} has no mode {mode}; valid modes: {list(modes)}.")
    if difficulty is not None and difficulty not in difficulties:
        raise ValueError(f"{name} has no difficulty {difficulty}; valid difficulties: {list(difficulties)}.")
    return AtariTask(name, mode, difficulty)


#: Atari environment backends (see :func:`make_atari`).
BACKENDS = ("auto", "ale", "gym")


def atari_backend(task: AtariTask, backend: str, in_process: bool = True, terminal_on_life_loss: bool = True) -> str:
    """The backend (``ale`` or ``gym``) that ``make_atari`` uses for ``task``.

    ``auto`` picks ``ale`` only where it runs the gym pipeline's protocol: a default-flavour game
    without a FIRE press after lost lives (:func:`fires_after_lost_life`; Pong, Enduro...), stepped
    in-process; otherwise ``gym``. ``ale`` can be forced for any default-flavour game.

    :raises ValueError: an unknown backend, or ``ale`` asked for what it cannot do.
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown Atari backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    flavoured = task.mode is not None or task.difficulty is not None
    if backend == "auto":
        same_protocol = not (terminal_on_life_loss and fires_after_lost_life(task.game))
        return "ale" if in_process and not flavoured and same_protocol else "gym"
    if backend == "ale" and flavoured:
        raise ValueError(f"{task.slug}: ale-py's vector environment has no ALE modes or difficulties; use "
                         "backend='gym' (or 'auto', which picks it) for a flavoured task.")
    if backend == "ale" and not in_process:
        raise ValueError("backend='ale' steps its environments in C++ threads already; drop subproc/workers.")
    return backend


def make_atari(
    task: AtariTask | str,
    n_envs: int = 8,
    seed: int | None = 0,
    *,
    mode: int | None = None,
    difficulty: int | None = None,
    monitor_dir: str | None = None,
    clip_reward: bool = True,
    terminal_on_life_loss: bool = True,
    subproc: bool = False,
    workers: int = 0,
    monitor_append: bool = False,
    backend: str = "gym",
) -> VecEnv:
    """Build the vectorised, frame-stacked Atari environment of the RL Baselines3 Zoo.

    :param task: an :class:`AtariTask` or a game name (see :func:`resolve_task`).
    :param n_envs: number of parallel environments.
    :param seed: seed of the first environment; environment ``i`` gets ``seed + i``.
    :param mode: ALE mode when ``task`` is a name.
    :param difficulty: ALE difficulty when ``task`` is a name.
    :param monitor_dir: folder for the Monitor CSV files (``None``: not written).
    :param clip_reward: clip training rewards to their sign (unclipped returns are still logged).
    :param terminal_on_life_loss: end a training episode on each lost life.
    :param subproc: one process per environment (``SubprocVecEnv``) instead of ``DummyVecEnv``.
    :param workers: ``n > 0`` steps the environments in ``n`` worker processes, a shard each
        (:class:`envs.vec.ShardedVecEnv`, identical results to ``DummyVecEnv``); 0: in this process.
    :param monitor_append: append to existing Monitor files (when resuming a run).
    :param backend: ``gym`` (the RL Baselines3 Zoo's wrappers, above) or ``ale`` (ale-py's C++
        vector environment, :class:`envs.ale_vector.AleVectorVecEnv`: about twice as fast, same
        observations, no flavours, no FIRE press after a lost life), or ``auto``: ``ale`` where
        its protocol is the gym pipeline's (see :func:`atari_backend`), else ``gym``.
    :return: a ``VecEnv`` with observations ``(n_envs, 84, 84, 4)`` uint8.
    """
    if not isinstance(task, AtariTask):
        task = resolve_task(task, mode, difficulty)
    if n_envs < 1:
        raise ValueError(f"n_envs must be at least 1, got {n_envs}.")
    backend = atari_backend(task, backend, in_process=not (subproc or workers),
                            terminal_on_life_loss=terminal_on_life_loss)
    if backend == "ale":
        from envs.ale_vector import AleVectorVecEnv

        return AleVectorVecEnv(task.game, n_envs, seed, clip_reward=clip_reward,
                               terminal_on_life_loss=terminal_on_life_loss, max_episode_frames=MAX_EPISODE_FRAMES,
                               monitor_dir=monitor_dir, monitor_append=monitor_append)
    if subproc and workers:
        raise ValueError("Choose one of subproc=True (a process per environment) and workers=n (n processes).")
    if workers < 0:
        raise ValueError(f"workers must be 0 (in-process) or a positive number of processes, got {workers}.")
    env_kwargs = dict(task.env_kwargs, max_episode_steps=MAX_EPISODE_FRAMES)
    _register_ale()
    vec_env_cls: type[VecEnv] = DummyVecEnv
    vec_env_kwargs: dict[str, Any] = {}
    if subproc:
        vec_env_cls = SubprocVecEnv
    elif workers:
        vec_env_cls, vec_env_kwargs = ShardedVecEnv, {"n_workers": workers}
    venv = make_atari_env(
        functools.partial(_gym_make, task.env_id),
        n_envs=n_envs,
        seed=seed,
        monitor_dir=monitor_dir,
        wrapper_kwargs=dict(clip_reward=clip_reward, terminal_on_life_loss=terminal_on_life_loss),
        env_kwargs=env_kwargs,
        vec_env_cls=vec_env_cls,
        vec_env_kwargs=vec_env_kwargs,
        monitor_kwargs=dict(override_existing=not monitor_append),
    )
    return VecFrameStack(venv, n_stack=FRAME_STACK)


def restart_games(venv: VecEnv) -> None:
    """Make the next ``venv.reset()`` start a new game in every environment.

    SB3's ``EpisodicLifeEnv`` (inside the gym pipeline's ``AtariWrapper``) turns ``reset()`` into
    a no-op step unless the last game is over, so that training episodes end at each lost life
    while the game goes on. An evaluation that starts with ``reset()`` therefore *continues* any
    game the previous evaluation left unfinished (SB3 issue #1389): the first game counted in an
    environment then includes the previous policy's points, and a random-policy baseline run
    after an evaluation on the same environments includes the trained agent's. Marking the last
    game as over makes ``reset()`` a real reset (Monitor allows it). Environments without that
    wrapper (ale-py's vector env, Lab2D, games without lives) are left alone: their ``reset()``
    already restarts.
    """
    from stable_baselines3.common.atari_wrappers import EpisodicLifeEnv

    try:
        wrapped = venv.env_is_wrapped(EpisodicLifeEnv)
    except AttributeError:  # a VecEnv that cannot tell has no Python wrappers to fix
        return
    indices = [i for i, flag in enumerate(wrapped) if flag]
    if indices:
        venv.env_method("set_wrapper_attr", "was_real_done", True, indices=indices)
