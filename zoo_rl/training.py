"""Resumable SB3 training runs: hyperparameters from YAML, periodic evaluation, checkpoints.

Used by ``agents/train.py`` (the source zoo) and the study runner (:mod:`zoo_rl.study`), through
:func:`hyperparams_for`, :func:`open_run` and :func:`train_run`. A run lives in one folder
(file names in :mod:`zoo_rl.files`)::

    run_dir/
      config.json        resolved configuration and the command that started it
      checkpoint.zip     latest SB3 save (weights + optimizer + step count), written atomically
      status.json        the checkpoint's step count and wall time
      vecnormalize.pkl   the VecNormalize statistics of a run that normalises (``normalize`` in its
                         hyperparameters), SB3's VecNormalize.save format, written with each checkpoint
      replay_buffer.pkl  the replay buffer of an off-policy run on state vectors (SAC on a MuJoCo body or a
                         classic-control system: :func:`keeps_replay_buffer`), SB3's save_replay_buffer
                         format, written with each checkpoint
      evaluations.npz    SB3 EvalCallback layout: timesteps, results (n_evals, n_episodes), ep_lengths
      <i>.monitor.csv    Monitor CSVs of the training envs (unclipped full-game returns), where SB3's
                         load_results and the RL Baselines3 Zoo's plot scripts look for them
      tensorboard/       SB3's TensorBoard logs (when tensorboard is installed)
      final.zip          the finished model

Killing the process at any moment loses at most one checkpoint interval: a rerun loads
``checkpoint.zip`` and continues the step count and the learning-rate schedule (and the VecNormalize
statistics, from ``vecnormalize.pkl``, and the replay buffer, from ``replay_buffer.pkl``).
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import yaml
from gymnasium import spaces
from stable_baselines3 import A2C, DQN, PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.vec_env import VecEnv, VecNormalize, unwrap_vec_normalize
from torch import nn

from envs.atari import restart_games
from envs.tasks import Task, env_backend, make_env
from zoo_rl.files import (CHECKPOINT, CONFIG, EVALUATIONS, REPLAY_BUFFER, STATUS, VEC_NORMALIZE, atomic_write_bytes,
                          command_line, save_model_atomic, write_json)
from zoo_rl.machine import reuse_freed_memory
from zoo_rl.policy_sources import ACTIVATIONS
from zoo_rl.policies import algo_kwargs, policy_class

try:
    from sb3_contrib import QRDQN
except ImportError:  # sb3-contrib is in requirements.txt, but keep the core importable without it
    QRDQN = None

#: SB3 algorithms by the names used on the command line (``sac``: continuous actions only, e.g. the
#: classic-control zoo's Pendulum variants; its hyperparameters in ``agents/hyperparams/sac.yml``).
ALGOS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C, "dqn": DQN, "sac": SAC}
if QRDQN is not None:
    ALGOS["qrdqn"] = QRDQN
#: Algorithms whose rollouts are collected on-policy (on discrete actions, evaluated with sampled actions:
#: :func:`deterministic_eval`).
ON_POLICY = ("ppo", "a2c")
#: Seed offset of a run's evaluation environments (training uses the run's seed itself).
EVAL_SEED_OFFSET = 10_000
#: What a ``normalize`` mapping may set (the rest of ``VecNormalize``'s arguments keep SB3's defaults).
NORMALIZE_OPTIONS = ("norm_obs", "norm_reward", "clip_obs", "clip_reward")
#: Hyperparameters that set the run's environments up rather than the algorithm: never passed to SB3.
RUN_SETTINGS = ("normalize",)

_SCHEDULE = re.compile(r"^lin_(?P<value>[-+0-9.eE]+)$")


def algo_class(algo: str) -> type[BaseAlgorithm]:
    """The SB3 class for ``algo`` (``ppo``, ``a2c``, ``dqn``, ``qrdqn``, ``sac``)."""
    try:
        return ALGOS[algo.lower()]
    except KeyError:
        raise ValueError(f"Unknown algorithm {algo!r}; choose one of {sorted(ALGOS)}.") from None


class LinearSchedule:
    """``progress_remaining -> progress_remaining * initial`` (the RL Baselines3 Zoo's ``lin_X``)."""

    def __init__(self, initial: float) -> None:
        self.initial = float(initial)

    def __call__(self, progress_remaining: float) -> float:
        return progress_remaining * self.initial

    def __repr__(self) -> str:
        return f"lin_{self.initial:g}"


def deterministic_eval(algo: str, action_space: spaces.Space) -> bool:
    """Whether evaluations of ``algo`` on ``action_space`` take the policy's deterministic action (else sample it).

    Continuous actions (a ``Box``) are always deterministic (a Gaussian policy's mean), as the RL Baselines3 Zoo
    evaluates every non-Atari task. Discrete actions (Atari, Lab2D) keep the rule their zoos were evaluated
    with: on-policy algorithms (:data:`ON_POLICY`) sample, off-policy ones act greedily. Every evaluation of a
    run, of a source and of a study follows this one rule, so their returns compare.
    """
    if isinstance(action_space, spaces.Box):
        return True
    return algo.lower() not in ON_POLICY


def parse_value(value: Any) -> Any:
    """Turn the zoo's ``lin_2.5e-4`` strings into schedules; leave everything else alone."""
    if isinstance(value, str):
        match = _SCHEDULE.match(value)
        if match:
            return LinearSchedule(float(match["value"]))
    return value


def load_hyperparams(path: str | Path, game: str, family: str = "atari") -> dict[str, Any]:
    """Hyperparameters for ``game`` from a YAML file keyed like the RL Baselines3 Zoo's.

    The family's entry (``atari``, ``lab2d``, ``mujoco``, ``classic``; ``lab2d`` falls back to ``atari``, whose
    images it shares) holds the defaults; an entry named by the game (``Pong``, ``lab2d:pushbox``,
    ``mujoco:halfcheetah+mass=2``) or its env id (``PongNoFrameskip-v4``) overrides them. Values are data
    only: ``lin_X`` becomes a linear schedule, nothing is evaluated.

    :raises ValueError: a MuJoCo or classic-control game (a family without the Atari fallback) that the file
        has no entry for.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Hyperparameter file {path} does not exist.")
    table = yaml.safe_load(path.read_text()) or {}
    keys = [k for k in (game, f"{game}NoFrameskip-v4") if k in table]
    if family not in table and family not in ("atari", "lab2d") and not keys:
        raise ValueError(f"{path} has no `{family}` entry (nor one for {game!r}): add one to train {family} tasks "
                         f"with {path.stem} (agents/hyperparams/ppo.yml has a `mujoco` entry for PPO, sac.yml a "
                         "`classic` one for SAC).")
    params = dict(table.get(family, table.get("atari", {})) or {})
    for key in keys:
        params.update(table.get(key, {}) or {})
    return params


def sb3_policy_kwargs(data: Mapping[str, Any] | None) -> dict[str, Any]:
    """SB3's ``policy_kwargs`` from their data form in a hyperparameter file, e.g.
    ``{log_std_init: -2, ortho_init: false, activation_fn: relu, net_arch: {pi: [256, 256], vf: [256, 256]}}``:
    ``activation_fn`` names an entry of :data:`ACTIVATIONS` and becomes its ``torch.nn`` class; every other key
    passes to SB3 unchanged.

    :raises ValueError: not a mapping (the RL Baselines3 Zoo's ``"dict(...)"`` strings are code, which is never
        evaluated), or an activation name not in :data:`ACTIVATIONS`.
    """
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(f"policy_kwargs must be a YAML mapping such as {{activation_fn: relu, net_arch: {{pi: [64], "
                         f"vf: [64]}}}}, not {data!r}: hyperparameters are data, never evaluated as code.")
    kwargs = dict(data)
    if "activation_fn" in kwargs:
        name = kwargs["activation_fn"]
        if not isinstance(name, str) or name not in ACTIVATIONS:
            accepted = ", ".join(f"{k} (torch.nn.{v.__name__})" for k, v in ACTIVATIONS.items())
            raise ValueError(f"policy_kwargs: activation_fn {name!r} is not one of the accepted names: {accepted}.")
        kwargs["activation_fn"] = ACTIVATIONS[name]
    return kwargs


def activation_name(activation: type[nn.Module]) -> str:
    """The :data:`ACTIVATIONS` name of a ``torch.nn`` activation class (its dotted class name when it has none)."""
    names = {cls: name for name, cls in ACTIVATIONS.items()}
    return names.get(activation, f"{activation.__module__}.{activation.__qualname__}")


def vec_normalize_kwargs(hyperparams: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``VecNormalize`` arguments that ``hyperparams["normalize"]`` asks for, or ``None`` for no normalisation.

    The RL Baselines3 Zoo's meaning: ``true`` normalises observations and rewards; a mapping such as
    ``{norm_obs: false, norm_reward: true}`` chooses (keys :data:`NORMALIZE_OPTIONS`, missing flags true);
    ``false`` or no entry normalises nothing. Rewards are scaled by the running deviation of the discounted
    return with the run's own ``gamma`` (SB3's 0.99 where the hyperparameters name none), as the Zoo does.

    :raises ValueError: any other value, an unknown key, or a flag that is not true or false.
    """
    value = hyperparams.get("normalize", False)
    if value is None or value is False:
        return None
    if value is True:
        settings: dict[str, Any] = {}
    elif isinstance(value, Mapping):
        unknown = sorted(set(value) - set(NORMALIZE_OPTIONS))
        if unknown:
            raise ValueError(f"normalize: unknown keys {unknown}; a normalize mapping takes {', '.join(NORMALIZE_OPTIONS)}.")
        settings = dict(value)
    else:
        raise ValueError(f"normalize={value!r}: write true (observations and rewards), false, or a mapping such as "
                         f"{{norm_obs: false, norm_reward: true}} (keys: {', '.join(NORMALIZE_OPTIONS)}).")
    settings = {"norm_obs": True, "norm_reward": True, **settings}
    for flag in ("norm_obs", "norm_reward"):
        if not isinstance(settings[flag], bool):
            raise ValueError(f"normalize: {flag}={settings[flag]!r} must be true or false.")
    for clip in ("clip_obs", "clip_reward"):
        value = settings.get(clip, 1.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"normalize: {clip}={value!r} must be a positive number (SB3's default: 10).")
    if not (settings["norm_obs"] or settings["norm_reward"]):
        return None
    return {**settings, "gamma": float(hyperparams.get("gamma", 0.99))}


class _EveryN(BaseCallback):
    """Calls :meth:`_fire` each time ``num_timesteps`` crosses a multiple of ``every``.

    Counting on ``num_timesteps`` (not on callback calls) keeps the schedule the same after a
    resume and for any number of environments.
    """

    def __init__(self, every: int) -> None:
        super().__init__()
        if every <= 0:
            raise ValueError(f"interval must be positive, got {every}.")
        self.every = int(every)
        self._next: int | None = None

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.every + 1) * self.every

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._next = (self.num_timesteps // self.every + 1) * self.every
            self._fire()
        return True

    def _fire(self) -> None:
        raise NotImplementedError


class CheckpointEvery(_EveryN):
    """Save the whole model (optimizer included) to ``path`` every ``every`` steps, atomically, its
    VecNormalize statistics to ``stats_path`` where it has them, and its replay buffer to ``buffer_path``
    where it keeps one (:func:`save_checkpoint`).

    Saves happen when a rollout starts, i.e. after the update on the previous one (off-policy: after the
    gradient steps on the last transition), so a saved step count never includes collected-but-untrained
    experience.
    """

    def __init__(self, path: str | Path, every: int, on_save: Callable[[BaseAlgorithm], None] | None = None,
                 stats_path: str | Path | None = None, buffer_path: str | Path | None = None) -> None:
        super().__init__(every)
        self.path = Path(path)
        self.on_save = on_save
        self.stats_path = None if stats_path is None else Path(stats_path)
        self.buffer_path = None if buffer_path is None else Path(buffer_path)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        if self.num_timesteps >= self._next:
            self._next = (self.num_timesteps // self.every + 1) * self.every
            self._fire()

    def _fire(self) -> None:
        save_checkpoint(self.model, self.path, self.stats_path, self.buffer_path)
        if self.on_save is not None:
            self.on_save(self.model)


def save_vec_normalize(model: BaseAlgorithm, path: str | Path) -> bool:
    """Write the model's VecNormalize statistics to ``path`` (what ``VecNormalize.save`` writes), atomically.

    :return: False, writing nothing, when the model's environment is not normalised.
    """
    normalization = model.get_vec_normalize_env()
    if normalization is None:
        return False
    atomic_write_bytes(path, pickle.dumps(normalization))
    return True


def keeps_replay_buffer(model: BaseAlgorithm) -> bool:
    """Whether a run of ``model`` saves its replay buffer with each checkpoint and resumes with it: an off-policy
    model on observations that are not images (a state vector).

    SB3's ``save`` leaves the replay buffer out. An off-policy run resumed without it would go on training at once
    (``learning_starts`` counts the run's total steps) from an empty buffer, its next gradient steps drawn from the
    handful of transitions collected since the resume: a short run such as a 20k-step SAC source would train on
    other data than an uninterrupted one. A state vector's buffer is small (a Pendulum transition is a few dozen
    bytes); an image buffer (DQN on Atari: 100k stacked frames, gigabytes) is not kept, and such a run resumes with
    an empty buffer, as it always has.
    """
    return getattr(model, "replay_buffer", None) is not None and not is_image_space(model.observation_space)


def save_replay_buffer(model: BaseAlgorithm, path: str | Path) -> bool:
    """Write the model's replay buffer to ``path`` (what SB3's ``save_replay_buffer`` writes), atomically.

    :return: False, writing nothing, when the model keeps no replay buffer (:func:`keeps_replay_buffer`).
    """
    if not keeps_replay_buffer(model):
        return False
    atomic_write_bytes(path, pickle.dumps(model.replay_buffer))
    return True


def save_checkpoint(model: BaseAlgorithm, path: str | Path, stats_path: str | Path | None = None,
                    buffer_path: str | Path | None = None) -> None:
    """The model to ``path`` and, when given, its VecNormalize statistics to ``stats_path`` and its replay buffer to
    ``buffer_path`` (:func:`save_replay_buffer`), each atomically.

    The statistics and the buffer go first, so that a checkpoint never exists without what resumes it; a kill
    between the writes (a short window once per checkpoint interval) resumes the previous checkpoint with the
    statistics and the buffer of this one: running averages one interval further along, and the transitions of
    that interval, which the resumed run then collects a second time (different ones: its environments restart).
    """
    if stats_path is not None:
        save_vec_normalize(model, stats_path)
    if buffer_path is not None:
        save_replay_buffer(model, buffer_path)
    save_model_atomic(model, path)


def load_evaluations(path: str | Path) -> dict[str, list]:
    path = Path(path)
    if not path.is_file():
        return {"timesteps": [], "results": [], "ep_lengths": []}
    with np.load(path) as data:
        return {k: list(data[k]) for k in ("timesteps", "results", "ep_lengths")}


def save_evaluations(path: str | Path, evaluations: dict[str, list]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.asarray(v) for k, v in evaluations.items()})
    atomic_write_bytes(path, buffer.getvalue())


class EvalEvery(_EveryN):
    """Evaluate every ``every`` steps on ``eval_env``; append to ``evaluations.npz`` (resumable).

    The file has SB3's ``EvalCallback`` layout, so tools that read that file read this one.
    Returns are full-game, unclipped returns (read from the Monitor inside the wrappers, below any
    VecNormalize, whose statistics are copied from the training environment first). Every
    evaluation starts new games (:func:`envs.atari.restart_games`): with SB3's Atari wrappers a
    plain ``reset()`` would continue the games the previous evaluation left unfinished.
    """

    def __init__(
        self,
        eval_env: VecEnv,
        path: str | Path,
        every: int,
        n_episodes: int,
        deterministic: bool,
        evaluate_as: Callable[[BaseAlgorithm], BaseAlgorithm] | None = None,
        at_start: bool = False,
    ) -> None:
        super().__init__(every)
        self.eval_env = eval_env
        self.path = Path(path)
        self.n_episodes = n_episodes
        self.deterministic = deterministic
        self.evaluate_as = evaluate_as
        self.at_start = at_start
        self.evaluations = load_evaluations(self.path)

    def _on_training_start(self) -> None:
        super()._on_training_start()
        if self.at_start and (self.num_timesteps == 0 or not self.evaluations["timesteps"]):
            self.evaluate_now()

    def evaluate_now(self) -> np.ndarray:
        if self.evaluations["timesteps"] and int(self.evaluations["timesteps"][-1]) == self.num_timesteps:
            return np.asarray(self.evaluations["results"][-1])
        model = self.evaluate_as(self.model) if self.evaluate_as is not None else self.model
        sync_normalization(self.model, self.eval_env)
        restart_games(self.eval_env)
        returns, lengths = evaluate_policy(
            model, self.eval_env, n_eval_episodes=self.n_episodes,
            deterministic=self.deterministic, return_episode_rewards=True, warn=False,
        )
        self.evaluations["timesteps"].append(self.num_timesteps)
        self.evaluations["results"].append(np.asarray(returns, dtype=np.float64))
        self.evaluations["ep_lengths"].append(np.asarray(lengths, dtype=np.int64))
        save_evaluations(self.path, self.evaluations)
        self.logger.record("eval/mean_reward", float(np.mean(returns)))
        return np.asarray(returns)

    def _fire(self) -> None:
        self.evaluate_now()


class StopAtReturn(BaseCallback):
    """Ends training once an evaluation of ``evaluator`` has a mean return of at least ``target``.

    Placed after the evaluator in a ``CallbackList``, it sees an evaluation in the same step
    that made it.
    """

    def __init__(self, evaluator: EvalEvery, target: float) -> None:
        super().__init__()
        self.evaluator, self.target = evaluator, float(target)
        self._seen = -1  # evaluations already judged: a step without a new one costs a length check

    def _on_step(self) -> bool:
        count = len(self.evaluator.evaluations["results"])
        if count == self._seen:
            return True
        self._seen = count
        return not reached(self.evaluator.evaluations, self.target)


def reached(evaluations: dict[str, list], target: float | None) -> bool:
    """True when the last evaluation's mean return is at least ``target``."""
    results = evaluations["results"]
    return target is not None and bool(results) and float(np.mean(results[-1])) >= target


@dataclass
class RunSpec:
    """Everything a resumable run needs besides the environments.

    :param run_dir: the run's folder (created).
    :param algo: ``ppo``, ``a2c``, ``dqn``, ``qrdqn`` or ``sac``.
    :param total_steps: agent steps to train for (1 step = 4 frames, summed over envs).
    :param hyperparams: SB3 constructor arguments (``n_envs`` and ``policy`` excluded).
    :param policy: SB3 policy name or class.
    :param policy_kwargs: SB3's ``policy_kwargs`` (a features extractor, its arguments, the optimizer), on top
        of the hyperparameters' own (:func:`new_model`).
    :param seed: SB3 seed.
    :param checkpoint_every: steps between checkpoints.
    :param eval_every: steps between evaluations (0: none during training).
    :param eval_episodes: episodes per evaluation.
    :param device: torch device (``auto``).
    :param tensorboard_log: TensorBoard folder of the run (SB3's ``tensorboard_log``; a resumed run
        continues its event files); ``None``, or TensorBoard not installed: no TensorBoard logs.
    :param algo_cls: the algorithm's class when it is not ``algo``'s SB3 class (e.g. :class:`zoo_rl.KickstartPPO`),
        for a fresh model and for a resume alike.
    :param prepare: called on the model, fresh or resumed, before it trains (e.g. to give a kickstarted
        student its teachers, which are never saved).
    """

    run_dir: Path
    algo: str
    total_steps: int
    hyperparams: dict[str, Any]
    policy: Any = "CnnPolicy"
    policy_kwargs: dict[str, Any] | None = None
    seed: int = 0
    checkpoint_every: int = 50_000
    eval_every: int = 0
    eval_episodes: int = 5
    device: str = "auto"
    tensorboard_log: str | None = None
    algo_cls: type[BaseAlgorithm] | None = None
    prepare: Callable[[BaseAlgorithm], None] | None = None


def new_model(spec: RunSpec, env: VecEnv, verbose: int = 0) -> BaseAlgorithm:
    """A fresh model of ``spec`` on ``env`` (``lin_X`` hyperparameters as schedules, the channels-last
    rollout buffer with :class:`zoo_rl.policies.FastCnnPolicy`). Its ``policy_kwargs`` are the
    hyperparameters' (:func:`sb3_policy_kwargs`) updated with ``spec.policy_kwargs``; the
    :data:`RUN_SETTINGS` are left to the environments (:func:`open_run`)."""
    kwargs = {k: parse_value(v) for k, v in spec.hyperparams.items() if k not in (*RUN_SETTINGS, "policy_kwargs")}
    kwargs.update(algo_kwargs(spec.policy))
    policy_kwargs = {**sb3_policy_kwargs(spec.hyperparams.get("policy_kwargs")), **(spec.policy_kwargs or {})}
    if policy_kwargs:
        kwargs["policy_kwargs"] = policy_kwargs
    cls = spec.algo_cls or algo_class(spec.algo)
    return cls(spec.policy, env, seed=spec.seed, device=spec.device, verbose=verbose, **kwargs)


def build_or_resume(spec: RunSpec, env: VecEnv, verbose: int = 0) -> BaseAlgorithm:
    """A fresh model, or the one in ``run_dir/checkpoint.zip`` with its step count (and its replay buffer, from
    :data:`REPLAY_BUFFER`, where it keeps one: :func:`keeps_replay_buffer`).

    :raises ValueError: the checkpoint's model keeps a replay buffer but the run folder has none (with how to go on).
    """
    checkpoint = Path(spec.run_dir) / CHECKPOINT
    if checkpoint.is_file():
        model = (spec.algo_cls or algo_class(spec.algo)).load(checkpoint, env=env, device=spec.device)
        if keeps_replay_buffer(model):
            buffer = Path(spec.run_dir) / REPLAY_BUFFER
            if not buffer.is_file():
                raise ValueError(f"{spec.run_dir} has a checkpoint but not its replay buffer ({REPLAY_BUFFER}), without "
                                 "which the resumed run would train on other data than an uninterrupted one: copy the "
                                 "file from where the run was trained, or delete the run folder to start it again.")
            model.load_replay_buffer(buffer)  # the run's own file, trusted as its checkpoint is
        if verbose:
            print(f"Resuming {checkpoint} at {model.num_timesteps} steps", flush=True)
        return model
    return new_model(spec, env, verbose)


def hyperparams_for(path: str | Path, task: Task) -> tuple[dict[str, Any], int, Any]:
    """``(hyperparams, n_envs, policy)`` of ``task`` from the YAML file ``path`` (:func:`load_hyperparams`):
    the SB3 constructor arguments without ``n_envs`` and ``policy``, which come apart (``policy`` resolved by
    :func:`zoo_rl.policies.policy_class`; 8 environments where the file names none). ``policy_kwargs``
    and ``normalize`` stay data (read by :func:`new_model` and :func:`vec_normalize_kwargs`), checked here
    so that a bad file fails before any environment is built."""
    params = load_hyperparams(path, task.game, family=task.family)
    sb3_policy_kwargs(params.get("policy_kwargs"))
    vec_normalize_kwargs(params)
    n_envs = int(params.pop("n_envs", 8))
    return params, n_envs, policy_class(params.pop("policy", "CnnPolicy"))


@dataclass
class RunEnvs:
    """The environments of a run (:func:`open_run`): ``env`` trains, ``eval_env`` evaluates."""

    env: VecEnv
    eval_env: VecEnv
    backend: str
    resumed: bool

    def close(self) -> None:
        for venv in (self.env, self.eval_env):
            venv.close()


def open_run(run_dir: str | Path, task: Task, *, n_envs: int, seed: int, backend: str, eval_episodes: int,
             record: dict[str, Any], normalize: dict[str, Any] | None = None) -> RunEnvs:
    """Set a run up: check that a checkpoint in ``run_dir`` resumes on ``backend``, make the training
    environments (Monitor files in the run folder, appended to on a resume) and the evaluation ones (the
    ``gym`` wrappers, seed ``seed +`` :data:`EVAL_SEED_OFFSET`), and write ``config.json``: ``record`` plus
    the task, ``n_envs``, the backend, ``normalize``, the command and the package versions.

    :param backend: ``auto``, ``ale`` or ``gym`` (:func:`envs.tasks.env_backend` resolves it).
    :param normalize: ``VecNormalize`` arguments (:func:`vec_normalize_kwargs` of the run's hyperparameters),
        ``None`` for none. The training environments are wrapped in a ``VecNormalize`` (its statistics loaded
        from :data:`VEC_NORMALIZE` on a resume), the evaluation ones in a frozen one (``training=False``, raw
        rewards) that receives the training statistics before each evaluation (:func:`sync_normalization`).
        Monitor sits below it, so recorded returns stay raw.
    :raises ValueError: the checkpoint was trained on another backend (with the flag that resumes it), or
        with other normalisation (:func:`resume_normalization`).
    """
    run_dir = Path(run_dir)
    resumed = (run_dir / CHECKPOINT).is_file()
    backend = env_backend(task, backend)
    check_resume_backend(run_dir, backend, resumed)
    env = make_env(task, n_envs, seed=seed, monitor_dir=str(run_dir), monitor_append=resumed, backend=backend)
    eval_env = make_env(task, eval_episodes, seed=seed + EVAL_SEED_OFFSET, backend="gym")
    try:
        env = resume_normalization(env, run_dir, normalize) if resumed else _normalized(env, normalize)
    except ValueError:
        env.close()
        eval_env.close()
        raise
    eval_env = frozen_normalization(eval_env, normalize)
    write_json(run_dir / CONFIG, {**record, "task": asdict(task), "n_envs": n_envs, "env_backend": backend,
                                  **({} if normalize is None else {"normalize": normalize}),
                                  "command": command_line(), "versions": env_versions()})
    return RunEnvs(env, eval_env, backend, resumed)


def _normalized(env: VecEnv, normalize: dict[str, Any] | None) -> VecEnv:
    return env if normalize is None else VecNormalize(env, **normalize)


def frozen_normalization(eval_env: VecEnv, normalize: dict[str, Any] | None) -> VecEnv:
    """``eval_env`` in a ``VecNormalize`` that normalises observations as ``normalize`` says and never updates its
    statistics nor touches rewards (an evaluation reports raw returns); ``eval_env`` itself for ``None``. Its
    statistics are the training environment's once :func:`sync_normalization` copies them."""
    if normalize is None:
        return eval_env
    return VecNormalize(eval_env, training=False, **{**normalize, "norm_reward": False})


def sync_normalization(model: BaseAlgorithm, eval_env: VecEnv) -> None:
    """Copy the model's VecNormalize statistics into ``eval_env``'s (SB3's ``sync_envs_normalization``, found through
    any wrappers); nothing when ``eval_env`` does not normalise.

    :raises ValueError: ``eval_env`` normalises but the model's environment does not (no statistics to copy).
    """
    frozen = unwrap_vec_normalize(eval_env)
    if frozen is None:
        return
    trained = model.get_vec_normalize_env()
    if trained is None:
        raise ValueError("The evaluation environment normalises observations but the model's training environment has "
                         "no VecNormalize to take statistics from: open both with the same `normalize`.")
    if trained.norm_obs:  # SB3 keeps no observation statistics without norm_obs
        frozen.obs_rms = copy.deepcopy(trained.obs_rms)
    frozen.ret_rms = copy.deepcopy(trained.ret_rms)


def resume_normalization(env: VecEnv, run_dir: str | Path, normalize: dict[str, Any] | None) -> VecEnv:
    """``env`` under the VecNormalize statistics that a resumed run saved with its checkpoint (:data:`VEC_NORMALIZE`,
    unpickled by SB3's ``VecNormalize.load``: the run's own file, trusted as its checkpoint is).

    :raises ValueError: the run normalises but has no statistics file, it has one but ``normalize`` is ``None``,
        or the saved settings differ from ``normalize`` (each message says how to go on).
    """
    path = Path(run_dir) / VEC_NORMALIZE
    if normalize is None:
        if path.is_file():
            raise ValueError(f"{run_dir} was trained under VecNormalize ({path}) but its hyperparameters now ask for no "
                             "normalisation: restore their `normalize`, or delete the run folder to start it again.")
        return env
    if not path.is_file():
        raise ValueError(f"{run_dir} has a checkpoint but no VecNormalize statistics ({VEC_NORMALIZE}) to resume it "
                         "with: copy the file from where the run was trained, or delete the run folder to start it again.")
    loaded = VecNormalize.load(str(path), env)
    saved = {key: getattr(loaded, key) for key in normalize}
    if saved != normalize:
        raise ValueError(f"{path} was saved with {saved}, but the hyperparameters now ask for {normalize}: restore them, "
                         "or delete the run folder to start it again.")
    return loaded


def train_run(
    spec: RunSpec,
    env: VecEnv,
    eval_env: VecEnv | None = None,
    callbacks: list[BaseCallback] | None = None,
    verbose: int = 0,
    model: BaseAlgorithm | None = None,
    evaluate_as: Callable[[BaseAlgorithm], BaseAlgorithm] | None = None,
    evaluate_at_start: bool = False,
    stop_at_return: float | None = None,
) -> tuple[BaseAlgorithm, EvalEvery | None]:
    """Train (or resume) ``spec`` to ``total_steps``; checkpoints and evaluations on the way.

    :param model: a model built by the caller (e.g. with a custom extractor); ignored when a
        checkpoint exists, which always wins so that a rerun resumes.
    :param evaluate_as: evaluate ``evaluate_as(model)`` instead of the model (e.g. ``export_lite``).
    :param evaluate_at_start: also evaluate before the first step (transfer's jumpstart, or the start
        of a run that continues a trained agent), unless the run already has evaluations.
    :param stop_at_return: end training once an evaluation's mean return reaches it (:class:`StopAtReturn`).
    :return: the trained model and the evaluation callback (``None`` without ``eval_env``).

    Sets glibc's allocator to reuse freed memory (:func:`zoo_rl.machine.reuse_freed_memory`; ``ZOO_RL_MALLOC=0``
    leaves it alone): the same values, a faster Zoo-Tuning update. Evaluations are deterministic or sampled by
    :func:`deterministic_eval`. A training environment under ``VecNormalize`` has its statistics saved with each
    checkpoint (:data:`VEC_NORMALIZE`, :func:`save_checkpoint`), an off-policy model on state vectors its replay
    buffer (:data:`REPLAY_BUFFER`, :func:`keeps_replay_buffer`).

    :raises ValueError: the hyperparameters ask for ``normalize`` but ``env`` has no ``VecNormalize``
        (open the run with :func:`open_run`'s ``normalize``).
    """
    reuse_freed_memory()
    run_dir = Path(spec.run_dir)
    if vec_normalize_kwargs(spec.hyperparams) is not None and unwrap_vec_normalize(env) is None:
        raise ValueError(f"{run_dir}: the hyperparameters ask for normalize={spec.hyperparams['normalize']!r} but the "
                         "training environment has no VecNormalize: open the run with open_run(..., "
                         "normalize=vec_normalize_kwargs(hyperparams)).")
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / CHECKPOINT).is_file() or model is None:
        model = build_or_resume(spec, env, verbose)
    # Time accounting that survives a kill: status.json is rewritten with each checkpoint, so the
    # wall time it holds always belongs to the steps the checkpoint holds (CPU time: this process's threads,
    # environment worker processes not included). A killed call loses the
    # time since its last checkpoint, exactly like the steps that the resumed call trains again.
    status_path = run_dir / STATUS
    before = json.loads(status_path.read_text()) if status_path.is_file() else {}
    resumed_from = int(model.num_timesteps)
    started, cpu_started = time.time(), time.process_time()

    def record_status(saved: BaseAlgorithm) -> None:
        seconds, cpu = time.time() - started, time.process_time() - cpu_started
        write_json(status_path, {"num_timesteps": int(saved.num_timesteps), "resumed_from": resumed_from,
                                 "seconds_this_call": round(seconds, 1),
                                 "wall_seconds": round(before.get("wall_seconds", 0.0) + seconds, 1),
                                 "cpu_seconds": round(before.get("cpu_seconds", 0.0) + cpu, 1)})

    all_callbacks: list[BaseCallback] = [CheckpointEvery(run_dir / CHECKPOINT, spec.checkpoint_every,
                                                         on_save=record_status, stats_path=run_dir / VEC_NORMALIZE,
                                                         buffer_path=run_dir / REPLAY_BUFFER)]
    evaluator = None
    if eval_env is not None:
        every = spec.eval_every if spec.eval_every > 0 else spec.total_steps + 1
        evaluator = EvalEvery(eval_env, run_dir / EVALUATIONS, every, spec.eval_episodes,
                              deterministic=deterministic_eval(spec.algo, env.action_space), evaluate_as=evaluate_as,
                              at_start=evaluate_at_start)
        all_callbacks.append(evaluator)
        if stop_at_return is not None:
            all_callbacks.append(StopAtReturn(evaluator, stop_at_return))
    all_callbacks += callbacks or []
    remaining = spec.total_steps - resumed_from
    if spec.prepare is not None:
        spec.prepare(model)
    model.tensorboard_log = spec.tensorboard_log if spec.tensorboard_log and _has_tensorboard() else None
    if remaining > 0:
        model.learn(remaining, callback=CallbackList(all_callbacks), reset_num_timesteps=False,
                    progress_bar=False, tb_log_name=spec.algo.upper())
    save_checkpoint(model, run_dir / CHECKPOINT, run_dir / VEC_NORMALIZE, run_dir / REPLAY_BUFFER)
    record_status(model)
    if evaluator is not None and getattr(evaluator, "model", None) is None:  # set by learn(), which may not have run
        evaluator.init_callback(model)
    return model, evaluator


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def check_resume_backend(run_dir: Path, backend: str, resumed: bool) -> None:
    """A checkpoint continues only on the environment it was trained on (``env_backend`` of its config).

    :raises ValueError: the run started with another backend, with the flag that resumes it.
    """
    config = Path(run_dir) / CONFIG
    if not resumed or not config.is_file():
        return
    started = json.loads(config.read_text()).get("env_backend")
    if started is None:
        raise ValueError(f"{config} records no env_backend, so the environment its checkpoint trained on is "
                         f"unknown: add it to the file (\"env_backend\": \"gym\" for the RL Baselines3 Zoo wrappers) "
                         "or delete the run folder to start it again.")
    if started != backend:
        raise ValueError(f"{run_dir} was started with env_backend={started!r}, not {backend!r}: rerun with "
                         f"--env-backend {started}, or delete the run folder to start it again.")


def env_versions() -> dict[str, str]:
    """Versions of the packages a result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "stable-baselines3", "sb3-contrib", "gymnasium", "ale-py", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
