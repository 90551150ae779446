"""Resumable SB3 training runs: hyperparameters from YAML, periodic evaluation, checkpoints.

Used by ``agents/train.py`` (the source zoo) and the study runner (:mod:`zoo_rl.study`), through
:func:`hyperparams_for`, :func:`open_run` and :func:`train_run`. A run lives in one folder
(file names in :mod:`zoo_rl.files`)::

    run_dir/
      config.json        resolved configuration and the command that started it
      checkpoint.zip     latest SB3 save (weights + optimizer + step count), written atomically
      status.json        the checkpoint's step count and wall time
      evaluations.npz    SB3 EvalCallback layout: timesteps, results (n_evals, n_episodes), ep_lengths
      <i>.monitor.csv    Monitor CSVs of the training envs (unclipped full-game returns), where SB3's
                         load_results and the RL Baselines3 Zoo's plot scripts look for them
      tensorboard/       SB3's TensorBoard logs (when tensorboard is installed)
      final.zip          the finished model

Killing the process at any moment loses at most one checkpoint interval: a rerun loads
``checkpoint.zip`` and continues the step count and the learning-rate schedule.
"""

from __future__ import annotations

import io
import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv

from envs.atari import restart_games
from envs.tasks import Task, env_backend, make_env
from zoo_rl.files import (CHECKPOINT, CONFIG, EVALUATIONS, STATUS, atomic_write_bytes, command_line,
                          save_model_atomic, write_json)
from zoo_rl.machine import reuse_freed_memory
from zoo_rl.policies import algo_kwargs, policy_class

try:
    from sb3_contrib import QRDQN
except ImportError:  # sb3-contrib is in requirements.txt, but keep the core importable without it
    QRDQN = None

#: SB3 algorithms by the names used on the command line.
ALGOS: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C, "dqn": DQN}
if QRDQN is not None:
    ALGOS["qrdqn"] = QRDQN
#: Algorithms whose rollouts are collected on-policy (evaluated with sampled actions).
ON_POLICY = ("ppo", "a2c")
#: Seed offset of a run's evaluation environments (training uses the run's seed itself).
EVAL_SEED_OFFSET = 10_000

_SCHEDULE = re.compile(r"^lin_(?P<value>[-+0-9.eE]+)$")


def algo_class(algo: str) -> type[BaseAlgorithm]:
    """The SB3 class for ``algo`` (``ppo``, ``a2c``, ``dqn``, ``qrdqn``)."""
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


def parse_value(value: Any) -> Any:
    """Turn the zoo's ``lin_2.5e-4`` strings into schedules; leave everything else alone."""
    if isinstance(value, str):
        match = _SCHEDULE.match(value)
        if match:
            return LinearSchedule(float(match["value"]))
    return value


def load_hyperparams(path: str | Path, game: str, family: str = "atari") -> dict[str, Any]:
    """Hyperparameters for ``game`` from a YAML file keyed like the RL Baselines3 Zoo's.

    The family's entry (``atari``; ``lab2d`` falls back to ``atari``) holds the defaults; an entry
    named by the game (``Pong``, ``lab2d:pushbox``) or its env id (``PongNoFrameskip-v4``) overrides
    them. Values are data only: ``lin_X`` becomes a linear schedule, nothing is evaluated.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Hyperparameter file {path} does not exist.")
    table = yaml.safe_load(path.read_text()) or {}
    params = dict(table.get(family, table.get("atari", {})) or {})
    for key in (game, f"{game}NoFrameskip-v4"):
        params.update(table.get(key, {}) or {})
    return params


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
    """Save the whole model (optimizer included) to ``path`` every ``every`` steps, atomically.

    Saves happen when a rollout starts, i.e. after the update on the previous one, so a saved
    step count never includes collected-but-untrained experience.
    """

    def __init__(self, path: str | Path, every: int, on_save: Callable[[BaseAlgorithm], None] | None = None) -> None:
        super().__init__(every)
        self.path = Path(path)
        self.on_save = on_save

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        if self.num_timesteps >= self._next:
            self._next = (self.num_timesteps // self.every + 1) * self.every
            self._fire()

    def _fire(self) -> None:
        save_model_atomic(self.model, self.path)
        if self.on_save is not None:
            self.on_save(self.model)


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
    Returns are full-game, unclipped returns (read from the Monitor inside the wrappers). Every
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
    :param algo: ``ppo``, ``a2c``, ``dqn`` or ``qrdqn``.
    :param total_steps: agent steps to train for (1 step = 4 frames, summed over envs).
    :param hyperparams: SB3 constructor arguments (``n_envs`` and ``policy`` excluded).
    :param policy: SB3 policy name or class.
    :param policy_kwargs: SB3's ``policy_kwargs`` (a features extractor, its arguments, the optimizer).
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
    rollout buffer with :class:`zoo_rl.policies.FastCnnPolicy`)."""
    kwargs = {k: parse_value(v) for k, v in spec.hyperparams.items()}
    kwargs.update(algo_kwargs(spec.policy))
    if spec.policy_kwargs is not None:
        kwargs["policy_kwargs"] = spec.policy_kwargs
    cls = spec.algo_cls or algo_class(spec.algo)
    return cls(spec.policy, env, seed=spec.seed, device=spec.device, verbose=verbose, **kwargs)


def build_or_resume(spec: RunSpec, env: VecEnv, verbose: int = 0) -> BaseAlgorithm:
    """A fresh model, or the one in ``run_dir/checkpoint.zip`` with its step count."""
    checkpoint = Path(spec.run_dir) / CHECKPOINT
    if checkpoint.is_file():
        model = (spec.algo_cls or algo_class(spec.algo)).load(checkpoint, env=env, device=spec.device)
        if verbose:
            print(f"Resuming {checkpoint} at {model.num_timesteps} steps", flush=True)
        return model
    return new_model(spec, env, verbose)


def hyperparams_for(path: str | Path, task: Task) -> tuple[dict[str, Any], int, Any]:
    """``(hyperparams, n_envs, policy)`` of ``task`` from the YAML file ``path`` (:func:`load_hyperparams`):
    the SB3 constructor arguments without ``n_envs`` and ``policy``, which come apart (``policy`` resolved by
    :func:`zoo_rl.policies.policy_class`; 8 environments where the file names none)."""
    params = load_hyperparams(path, task.game, family=task.family)
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
             record: dict[str, Any]) -> RunEnvs:
    """Set a run up: check that a checkpoint in ``run_dir`` resumes on ``backend``, make the training
    environments (Monitor files in the run folder, appended to on a resume) and the evaluation ones (the
    ``gym`` wrappers, seed ``seed +`` :data:`EVAL_SEED_OFFSET`), and write ``config.json``: ``record`` plus
    the task, ``n_envs``, the backend, the command and the package versions.

    :param backend: ``auto``, ``ale`` or ``gym`` (:func:`envs.tasks.env_backend` resolves it).
    :raises ValueError: the checkpoint was trained on another backend (with the flag that resumes it).
    """
    run_dir = Path(run_dir)
    resumed = (run_dir / CHECKPOINT).is_file()
    backend = env_backend(task, backend)
    check_resume_backend(run_dir, backend, resumed)
    env = make_env(task, n_envs, seed=seed, monitor_dir=str(run_dir), monitor_append=resumed, backend=backend)
    eval_env = make_env(task, eval_episodes, seed=seed + EVAL_SEED_OFFSET, backend="gym")
    write_json(run_dir / CONFIG, {**record, "task": asdict(task), "n_envs": n_envs, "env_backend": backend,
                                  "command": command_line(), "versions": env_versions()})
    return RunEnvs(env, eval_env, backend, resumed)


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
    leaves it alone): the same values, a faster Zoo-Tuning update.
    """
    reuse_freed_memory()
    run_dir = Path(spec.run_dir)
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
                                                         on_save=record_status)]
    evaluator = None
    if eval_env is not None:
        every = spec.eval_every if spec.eval_every > 0 else spec.total_steps + 1
        evaluator = EvalEvery(eval_env, run_dir / EVALUATIONS, every, spec.eval_episodes,
                              deterministic=spec.algo not in ON_POLICY, evaluate_as=evaluate_as,
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
    save_model_atomic(model, run_dir / CHECKPOINT)
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
