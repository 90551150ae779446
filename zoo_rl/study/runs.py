"""One study run: its model, its training (resumable, under a lock), its final evaluation and its result."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch
from stable_baselines3.common.callbacks import BaseCallback

from envs.atari import restart_games
from envs.tasks import Task, make_env
from zoo_rl.baselines import EnsembleExtractor, load_extractor_weights
from zoo_rl.callbacks import GateLogger
from zoo_rl.export import export_lite
from zoo_rl.extractor import ZooExtractor, cached_zoo
from zoo_rl.files import (CHECKPOINT, EVALUATIONS, FINAL, FINAL_EVALUATION, GATES, LOCK, PROGRESS, RANKING, RESULT,
                          STATUS, TENSORBOARD, command_line, file_lock, save_model_atomic, write_csv_atomic,
                          write_json)
from zoo_rl.layers import ranked_gates
from zoo_rl.machine import extractor_precision, machine_info, reuse_freed_memory
from zoo_rl.metrics import area_under_curve, human_normalised
from zoo_rl.optim import zoo_optimizer
from zoo_rl.policies import FastCnnPolicy
from zoo_rl.ranking import rank_sources, ranking_order
from zoo_rl.study.config import HYPERPARAMS_DIR, RunJob, StudyConfig
from zoo_rl.study.methods import RANKED_WEIGHT, ZOO_GATES, extractor_kwargs, ranked_top
from zoo_rl.training import EVAL_SEED_OFFSET, ON_POLICY, RunSpec, hyperparams_for, load_evaluations, new_model, open_run, train_run


def _hyperparams(job: RunJob) -> tuple[dict[str, Any], int]:
    study = job.study
    params, n_envs, _ = hyperparams_for(HYPERPARAMS_DIR / f"{study.algo}.yml", job.task)  # the policy: below
    if study.n_envs is not None:
        n_envs = study.n_envs
    params["learning_rate"] = study.lr  # constant: the paper's RL setting is Adam at 1e-4
    if study.algo not in ON_POLICY:
        # the zoo's DQN settings wait 100k steps before learning: scale to the budget
        params["learning_starts"] = min(int(params.get("learning_starts", 0)), study.steps // 10)
        params["buffer_size"] = min(int(params.get("buffer_size", 100_000)), study.steps)
    return params, n_envs


def run_extractor_kwargs(job: RunJob) -> dict[str, Any]:
    """:func:`extractor_kwargs` of the job's method, with a ranked start resolved into ``init_gates``
    (from the study's ``ranking.csv``, computed first if missing)."""
    kwargs = extractor_kwargs(job.method, job.study.normalisation)
    top = ranked_top(job.method)
    if top is not None:
        order = ranking_order(study_ranking(job.study, job.task, job.zoo), [s.name for s in cached_zoo(job.zoo)])
        kwargs["init_gates"] = ranked_gates(len(job.zoo), order, top=top, weight=RANKED_WEIGHT)
    return kwargs


def study_ranking(study: StudyConfig, task: Task, zoo: list[str]) -> pd.DataFrame:
    """The study's source ranking, ``<out>/ranking.csv``: read if present, else computed and written
    (:func:`zoo_rl.ranking.rank_sources`, ``study.rank_steps`` per source, otherwise its defaults)."""
    path = Path(study.out) / RANKING
    if path.is_file():
        table = pd.read_csv(path)
        if sorted(table["source"]) == sorted(s.name for s in cached_zoo(zoo)):
            return table
    table = rank_sources(task, zoo, steps=study.rank_steps)
    write_csv_atomic(table, path)
    return table


def run_spec(job: RunJob) -> RunSpec:
    """The :class:`zoo_rl.training.RunSpec` of ``job``: the study's hyperparameters, and the policy and
    extractor of its method (the same heads for every method)."""
    study = job.study
    params, _ = _hyperparams(job)
    on_policy = study.algo in ON_POLICY
    policy: Any = FastCnnPolicy if on_policy and study.precision == "bf16" else "CnnPolicy"
    policy_kwargs: dict[str, Any] = dict(net_arch=[])  # the same heads for every method
    if on_policy:
        policy_kwargs["optimizer_class"] = torch.optim.Adam  # A2C defaults to RMSprop
    base, _, arg = job.method.partition(":")
    if base in ZOO_GATES:
        policy_kwargs.update(features_extractor_class=ZooExtractor,
                             features_extractor_kwargs=dict(zoo=job.zoo, **run_extractor_kwargs(job)))
        policy_kwargs["optimizer_class"] = zoo_optimizer(policy_kwargs.get("optimizer_class", torch.optim.Adam))
    elif base == "ensemble":
        policy_kwargs.update(features_extractor_class=EnsembleExtractor, features_extractor_kwargs=dict(zoo=job.zoo))
    return RunSpec(run_dir=job.run_dir, algo=study.algo, total_steps=study.steps, hyperparams=params, policy=policy,
                   policy_kwargs=policy_kwargs, seed=job.seed, checkpoint_every=study.eval_every,
                   eval_every=study.eval_every, eval_episodes=study.eval_episodes,
                   tensorboard_log=str(job.run_dir / TENSORBOARD))


def build_model(job: RunJob, env, spec: RunSpec | None = None) -> Any:
    """The SB3 model for ``job.method`` on ``env`` (fresh, before any checkpoint is applied; ``spec``: its
    :func:`run_spec`, computed when not given): a fine-tune starts from its source's extractor."""
    model = new_model(spec or run_spec(job), env)
    base, _, arg = job.method.partition(":")
    if base == "finetune":
        source = next(s for s in cached_zoo(job.zoo) if s.name == arg)
        load_extractor_weights(model, source)
    return model


class ProgressFile(BaseCallback):
    """Writes ``progress.json`` (steps done) after every rollout (or every ``every`` steps off-policy) and
    calls ``on_progress(steps)``: the study's progress bar reads either, from any launcher, since runs may
    live in other processes or on other machines."""

    def __init__(self, path: Path, every: int = 1024, on_progress: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.every = every
        self.on_progress = on_progress
        self._last = 0

    def _report(self) -> None:
        self._last = self.num_timesteps
        write_json(self.path, {"steps": int(self.num_timesteps)})
        if self.on_progress is not None:
            self.on_progress(int(self.num_timesteps))

    def _on_rollout_end(self) -> None:
        self._report()

    def _on_step(self) -> bool:
        if self.num_timesteps - self._last >= self.every:
            self._report()
        return True


@contextmanager
def run_lock(run_dir: Path) -> Iterator[bool]:
    """Hold ``<run_dir>/.lock`` exclusively while the block runs; yields False (and holds nothing) when
    another process holds it. The operating system releases the lock when its process dies, however it
    dies, so a killed study never leaves a stale lock. Without ``fcntl`` (Windows) it always yields True."""
    with file_lock(Path(run_dir) / LOCK, wait=False) as held:
        yield held


def evaluate_final(model: Any, task: Task, method: str, algo: str, seed: int, episodes: int) -> dict[str, Any]:
    """``episodes`` new games of a run's final model on its evaluation environments (seed ``10_000 + seed``, one
    environment per game, sampled actions for on-policy algorithms, seeded so that a rerun repeats them;
    ``zoo-lite`` merged by :func:`export_lite` as in its evaluations)."""
    from stable_baselines3.common.evaluation import evaluate_policy

    if method.partition(":")[0] == "zoo-lite":
        model = export_lite(model)
    env = make_env(task, episodes, seed=EVAL_SEED_OFFSET + seed, backend="gym")
    model.set_random_seed(EVAL_SEED_OFFSET + seed)
    try:
        restart_games(env)
        returns, _ = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=algo not in ON_POLICY,
                                     return_episode_rewards=True, warn=False)
    finally:
        env.close()
    return {"returns": [float(r) for r in returns], "mean": float(np.mean(returns)), "seeded": True}


def _check_checkpoint(job: RunJob) -> None:
    """Check that a run's checkpoint loads before training from it.

    :raises ValueError: a corrupt checkpoint, naming the run and how to restart it (finished runs are never read).
    """
    from zipfile import BadZipFile, ZipFile

    checkpoint = job.run_dir / CHECKPOINT
    try:
        with ZipFile(checkpoint) as archive:
            bad = archive.testzip()
        if bad is not None:
            raise BadZipFile(f"bad CRC in {bad}")
    except (BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"The checkpoint of run {job.method} seed {job.seed} ({checkpoint}) is corrupt ({exc}): "
                         f"delete the folder {job.run_dir} to train this run again from the start; every other "
                         "run is untouched, and the same command resumes the study.") from None


def run_job(job: RunJob, threads: int | None = None,
            on_progress: Callable[[RunJob, int], None] | None = None) -> dict[str, Any] | None:
    """Train, evaluate and record one run; resumes from its checkpoint; returns its row, or ``None`` when
    another process is training this run (its lock is held)."""
    if threads:
        torch.set_num_threads(threads)
    run_dir = job.run_dir
    if (run_dir / RESULT).is_file():
        return json.loads((run_dir / RESULT).read_text())
    with run_lock(run_dir) as mine:
        if not mine:
            return None
        if (run_dir / RESULT).is_file():  # finished by another process meanwhile
            return json.loads((run_dir / RESULT).read_text())
        return _train_job(job, on_progress)


def _zoo_extractor_kwargs(spec: RunSpec) -> dict[str, Any]:
    if spec.policy_kwargs.get("features_extractor_class") is not ZooExtractor:
        return {}
    return {k: v for k, v in spec.policy_kwargs["features_extractor_kwargs"].items() if k != "zoo"}


def _train_job(job: RunJob, on_progress: Callable[[RunJob, int], None] | None) -> dict[str, Any]:
    run_dir = job.run_dir
    study = job.study
    _, n_envs = _hyperparams(job)
    spec = run_spec(job)
    if (run_dir / CHECKPOINT).is_file():
        _check_checkpoint(job)
    envs = open_run(run_dir, job.task, n_envs=n_envs, seed=job.seed, backend=study.env_backend,
                    eval_episodes=study.eval_episodes,
                    record={"study": asdict(study), "method": job.method, "seed": job.seed, "zoo": job.zoo,
                            "hyperparams": spec.hyperparams,
                            # the ZooExtractor options, a ranked start's init_gates included ({} without one)
                            "extractor_kwargs": _zoo_extractor_kwargs(spec),
                            "machine": machine_info(),
                            # steps/s depend on it: train_run sets it again
                            "malloc_reuse": reuse_freed_memory()})
    env, eval_env = envs.env, envs.eval_env
    model = None if envs.resumed else build_model(job, env, spec)
    report = (lambda steps: on_progress(job, steps)) if on_progress is not None else None
    callbacks: list[BaseCallback] = [ProgressFile(run_dir / PROGRESS, on_progress=report)]
    base = job.method.partition(":")[0]
    if base in ZOO_GATES:
        callbacks.append(GateLogger(csv_path=run_dir / GATES, every=max(study.eval_every // 4, 1)))
    try:
        model, _ = train_run(spec, env, eval_env, callbacks=callbacks, model=model,
                             evaluate_as=export_lite if base == "zoo-lite" else None, evaluate_at_start=True)
    finally:
        envs.close()
    wall = json.loads((run_dir / STATUS).read_text())["wall_seconds"]
    save_model_atomic(model, run_dir / FINAL)
    if study.final_episodes > 0 and not (run_dir / FINAL_EVALUATION).is_file():
        final = evaluate_final(model, job.task, job.method, study.algo, job.seed, study.final_episodes)
        write_json(run_dir / FINAL_EVALUATION, {**final, "command": command_line()})
    evaluations = load_evaluations(run_dir / EVALUATIONS)
    steps = np.asarray(evaluations["timesteps"], dtype=float)
    means = np.asarray([np.mean(r) for r in evaluations["results"]], dtype=float)
    row = {
        "target": job.task.slug, "method": job.method, "seed": job.seed, "steps": int(model.num_timesteps),
        "final_return": float(means[-1]), "final_return_std": float(np.std(evaluations["results"][-1])),
        "initial_return": float(means[0]), "auc": area_under_curve(steps, means),
        "human_normalised": float(human_normalised(float(means[-1]), job.task.game)),
        "wall_seconds": round(wall, 1), "timesteps_per_second": round(study.steps / max(wall, 1e-9), 1),
        # What the model computed in (--precision bf16 is float32 on a CPU without native bf16) and on which
        # CPU, for its last training segment: the same study trains at different speeds on different machines.
        "extractor_precision": extractor_precision(model), "cpu_capability": machine_info()["cpu_capability"],
    }
    write_json(run_dir / RESULT, row)
    # A finished run keeps its final model, not also the checkpoint it no longer resumes from.
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
    return row
