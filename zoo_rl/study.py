"""Transfer studies: every method x seed on one target task, resumable, with CSV tables.

Layout of a study folder (``--out``)::

    study.json                      the resolved StudyConfig and the command
    <method>/seed<k>/               one resumable run (see zoo_rl.training): checkpoint.zip,
                                    evaluations.npz, monitor/, config.json, gates.csv (zoo
                                    methods), final.zip, result.json (written last)
    results.csv                     one row per finished run
    summary.csv                     one row per method (plus finetune-best / finetune-mean)
    curves.csv                      every evaluation: method, seed, steps, return
    gates.csv                       gate values over training of the zoo methods

``results.csv`` and ``summary.csv`` are rebuilt from the ``result.json`` files each time a
run finishes, and written atomically: a killed study never leaves a duplicate or a half row,
and a rerun skips finished runs and resumes interrupted ones from their last checkpoint.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch
from stable_baselines3.common.callbacks import BaseCallback

from envs.tasks import Task, env_backend, make_env, resolve
from zoo_rl.baselines import EnsembleExtractor, load_extractor_weights
from zoo_rl.callbacks import GateLogger
from zoo_rl.export import export_lite
from zoo_rl.extractor import ZooExtractor, cached_zoo
from zoo_rl.fast import (FastCnnPolicy, algo_kwargs, extractor_precision, machine_info,
                          reuse_freed_memory)
from zoo_rl.layers import DEFAULT_NORMALISATION, NORMALISATIONS, ranked_gates
from zoo_rl.optim import zoo_optimizer
from zoo_rl.ranking import RANK_STEPS, rank_sources, ranking_order
from zoo_rl.metrics import area_under_curve, difference_interval, human_normalised, iqm_with_interval, steps_to_threshold
from zoo_rl.sources import Source, atomic_write_bytes
from envs.atari import restart_games
from zoo_rl.training import (
    ALGOS, CHECKPOINT, CONFIG, EVALUATIONS, FINAL, ON_POLICY, TENSORBOARD, RunSpec, check_resume_backend, command_line, env_versions,
    load_evaluations, load_hyperparams, parse_value, save_model_atomic, train_run, write_json,
)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ZOO_DIR = ROOT / "agents" / "zoo"
#: The committed zoo of each task family: a target's default zoo is its own family's.
ZOO_DIRS = {"atari": DEFAULT_ZOO_DIR, "lab2d": ROOT / "agents" / "zoo-lab2d"}
HYPERPARAMS_DIR = ROOT / "agents" / "hyperparams"

#: Method name -> one-line description (``finetune:<source>`` is expanded per source).
METHODS: dict[str, str] = {
    "scratch": "NatureCNN from random initialisation",
    "finetune": "NatureCNN initialised from one source (finetune:<source>, one run per source)",
    "uniform": "average of the source weights, no gates (gate='uniform')",
    "zoo": "Zoo-Tuning with per-sample gates (gate='sample'), the paper's layer",
    "zoo-lite": "lite Zoo-Tuning (gate='lite'), evaluated as the merged single NatureCNN",
    "ensemble": "the K frozen source extractors side by side with a learned head",
}
ZOO_GATES = {"uniform": "uniform", "zoo": "sample", "zoo-lite": "lite"}
#: Options of the zoo methods, ``<method>:<option>[+<option>]``, e.g. ``zoo-lite:sigmoid`` (the paper's
#: gate normalisation) or ``zoo-lite:noalign`` (no channel alignment). Also, with a number N:
#: ``gate-lr<N>``, ``align-lr<N>``, ``bank-lr<N>``: that group's learning rate is N times the study's
#: (:mod:`zoo_rl.optim`); and ``ranked`` / ``top<k>``: the gates start with 0.99 of the weight on the
#: best-ranked source (shared by the top k), from the study's ``ranking.csv`` (:mod:`zoo_rl.ranking`).
ZOO_OPTIONS: dict[str, dict[str, Any]] = {
    "softmax": dict(normalisation="softmax"),
    "sigmoid": dict(normalisation="sigmoid"),
    "sigmoid-sum": dict(normalisation="sigmoid-sum"),
    "noalign": dict(align=False),
    "align-conv": dict(align="conv"),
}
_LR_OPTION = re.compile(r"(gate|align|bank)-lr(\d+(?:\.\d+)?(?:e-?\d+)?)")
_TOP_OPTION = re.compile(r"ranked|top(\d+)")
#: Share of the start gates on the top-ranked source(s) of the ``ranked`` / ``top<k>`` options.
RANKED_WEIGHT = 0.99
RESULT = "result.json"
RANKING = "ranking.csv"
RESULT_COLUMNS = ["target", "method", "seed", "steps", "final_return", "final_return_std", "final_episodes",
                  "last_evaluation_return", "initial_return", "auc", "threshold", "steps_to_threshold",
                  "human_normalised", "wall_seconds", "timesteps_per_second", "parallel_runs", "extractor_precision",
                  "cpu_capability"]
#: A finished run's final model on new games (written by the run, or by ``experiments/reevaluate.py`` for runs
#: that finished without it); when present it gives the final return.
FINAL_EVALUATION = "final_evaluation.json"
#: Games of the final evaluation: the published protocol.
FINAL_EPISODES = 20
#: A run folder's lock: held by the process that trains it.
LOCK = ".lock"


@dataclass
class StudyConfig:
    """One transfer study.

    :param target: target game (short name or full id).
    :param mode: ALE mode of the target (``None``: default).
    :param difficulty: ALE difficulty of the target (``None``: default).
    :param zoo: sources, or zoo folders standing for their members minus the target task's own;
        ``None``: the committed zoo of the target's family (``agents/zoo``, ``agents/zoo-lab2d``).
    :param methods: method names (``finetune`` expands to one ``finetune:<source>`` per source).
    :param seeds: number of seeds (0..seeds-1).
    :param algo: SB3 algorithm (ppo, a2c, dqn, qrdqn).
    :param steps: agent steps per run.
    :param lr: Adam learning rate, constant.
    :param out: study folder.
    :param eval_every: steps between evaluations (also the checkpoint interval).
    :param eval_episodes: episodes per evaluation.
    :param final_episodes: new games the final model plays at the end of each run; their mean is the
        run's final return (0: the last evaluation's mean instead).
    :param threshold: return for ``steps_to_threshold``; ``None``: scratch's mean final return.
    :param precision: ``bf16`` (FastCnnPolicy: bf16 channels-last extractor) or ``fp32``.
    :param workers: parallel runs (local launcher).
    :param launcher: ``local`` (process pool) or ``ray``.
    :param ray_address: Ray cluster address (``None``: start a local Ray instance).
    :param n_envs: parallel environments per run (``None``: the algorithm's YAML value).
    :param env_backend: training environments of Atari targets: ``auto`` (ale-py's vector
        environment where it applies), ``ale`` or ``gym`` (the RL Baselines3 Zoo wrappers).
        Evaluations always use ``gym``. A run resumes only with the backend it started with.
    :param rank_steps: agent steps per source of the ranking written to ``ranking.csv`` before training
        (:func:`zoo_rl.ranking.rank_sources`; the ``ranked`` / ``top<k>`` methods start from it).
    :param normalisation: gate normalisation of the gated methods (``zoo``, ``zoo-lite``) whose name
        gives none (``zoo-lite:sigmoid`` does); ``None``: the library default,
        :data:`zoo_rl.layers.DEFAULT_NORMALISATION`. Each run records its own; a study folder
        continues only with the normalisation its runs were trained with.
    """

    target: str
    mode: int | None = None
    difficulty: int | None = None
    zoo: list[str] | None = None
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: int = 3
    algo: str = "ppo"
    steps: int = 100_000
    lr: float = 1e-4
    out: Path | None = None
    eval_every: int = 10_000
    eval_episodes: int = 5
    final_episodes: int = FINAL_EPISODES
    threshold: float | None = None
    precision: str = "bf16"
    workers: int = 1
    launcher: str = "local"
    ray_address: str | None = None
    n_envs: int | None = None
    env_backend: str = "auto"
    normalisation: str | None = None
    rank_steps: int = RANK_STEPS


@dataclass
class RunJob:
    """One (method, seed) run of a study; everything a worker process needs, picklable."""

    study: StudyConfig
    task: Task
    zoo: list[str]
    method: str
    seed: int

    @property
    def run_dir(self) -> Path:
        return run_path(self.study.out, self.method, self.seed)


def run_path(out: Path, method: str, seed: int) -> Path:
    """Folder of one run of the study in ``out`` (no colons in folder names: ``zoo-lite:sigmoid``
    lives in ``zoo-lite-sigmoid/seed0``)."""
    return Path(out) / method.replace(":", "-") / f"seed{seed}"


def write_study_json(study: StudyConfig, runs: int) -> None:
    """``study.json`` of a study folder: the resolved configuration and the command.

    A folder trained by several commands (e.g. ablations added later with their own ``--methods``) keeps
    the record of every one: ``methods`` is the union in the order first asked for, ``commands`` every
    distinct command in order; ``command`` and ``runs`` (the runs it planned) are the latest command's.
    """
    path = Path(study.out) / "study.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        earlier = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        earlier = {}
    record = {**asdict(study), "out": str(study.out), "command": command_line(), "runs": runs}
    record["methods"] = list(dict.fromkeys([*earlier.get("methods", []), *record["methods"]]))
    before = earlier.get("commands", [earlier["command"]] if "command" in earlier else [])
    record["commands"] = list(dict.fromkeys([*before, record["command"]]))
    write_json(path, record)


def committed_zoo(zoo_dir: Path = DEFAULT_ZOO_DIR) -> list[Path]:
    """Every exported source folder (with ``meta.json``) under ``zoo_dir``."""
    return sorted(p.parent for p in Path(zoo_dir).glob("*/meta.json"))


def default_zoo(task: Task, zoo_dir: Path | None = None) -> list[str]:
    """The committed zoo of ``task``'s family minus any source trained on exactly ``task``
    (empty while that zoo has no trained source)."""
    zoo_dir = Path(zoo_dir or ZOO_DIRS[task.family])
    return expand_zoo([str(zoo_dir)], task) if is_zoo_folder(zoo_dir) else []


def is_zoo_folder(path: Path) -> bool:
    """A folder of sources (``<path>/<name>/meta.json``) rather than one source."""
    return path.is_dir() and not (path / "meta.json").is_file() and any(path.glob("*/meta.json"))


def expand_zoo(entries: list[str], task: Task) -> list[str]:
    """Sources named by ``entries``; a zoo folder (e.g. ``agents/zoo``) stands for its members,
    minus those trained on exactly ``task`` (leave-one-out). Single sources are kept as given."""
    out: list[str] = []
    for entry in entries:
        path = Path(entry)
        members = committed_zoo(path) if path.is_dir() and not (path / "meta.json").is_file() else None
        if members is None:  # one source: a source folder, an SB3 zip, a hub id
            out.append(entry)
            continue
        if not members:
            hint = (f": train it with `python agents/train.py --zoo --manifest {path / 'manifest.yml'}`"
                    if (path / "manifest.yml").is_file() else "")
            raise ValueError(f"{entry} is neither a source (no meta.json) nor a zoo of sources "
                             f"(no <name>/meta.json inside){hint}.")
        for folder in members:
            meta = json.loads((folder / "meta.json").read_text())
            if not resolve(meta["game"], meta.get("mode"), meta.get("difficulty")).same_task(task):
                out.append(str(folder))
    return out


def zoo_options(method: str) -> dict[str, Any]:
    """ZooExtractor keyword arguments of a zoo method's options: ``zoo-lite:sigmoid+noalign+gate-lr30`` ->
    ``{"normalisation": "sigmoid", "align": False, "gate_lr": 30.0}``. A ranked start is not among them
    (it needs the study's ranking): see :func:`ranked_top`.

    :raises ValueError: an unknown option (the valid ones are listed).
    """
    _, _, arg = method.partition(":")
    kwargs: dict[str, Any] = {}
    for option in filter(None, arg.split("+")):
        rate = _LR_OPTION.fullmatch(option)
        if rate and float(rate[2]) > 0:
            kwargs[f"{rate[1]}_lr"] = float(rate[2])
            continue
        top = _TOP_OPTION.fullmatch(option)
        if top and (top[1] is None or int(top[1]) >= 1):
            continue
        if option not in ZOO_OPTIONS:
            hint = " (gate-x<N> became gate-lr<N>: a real learning rate per parameter group)" if option.startswith(
                "gate-x") else ""
            raise ValueError(f"Unknown option {option!r} in method {method!r}{hint}; options of zoo, zoo-lite and "
                             f"uniform (joined with '+'): {', '.join(ZOO_OPTIONS)}, gate-lr<N>, align-lr<N>, "
                             "bank-lr<N> (that group's learning rate x N), ranked or top<k> (start from the "
                             "best-ranked source(s)).")
        kwargs.update(ZOO_OPTIONS[option])
    return kwargs


def ranked_top(method: str) -> int | None:
    """How many best-ranked sources a method starts from (``ranked``: 1, ``top<k>``: k), else None."""
    for option in method.partition(":")[2].split("+"):
        top = _TOP_OPTION.fullmatch(option)
        if top:
            return int(top[1] or 1)
    return None


#: Runs whose config.json records no ``extractor_kwargs`` were trained before it was recorded,
#: when every gated method without a normalisation option (``zoo-lite``, not ``zoo-lite:sigmoid``)
#: used softmax.
UNRECORDED_NORMALISATION = "softmax"


def extractor_kwargs(method: str, normalisation: str | None = None) -> dict[str, Any]:
    """ZooExtractor keyword arguments (all but the zoo) of a zoo method: ``gate``, its options and,
    for the gated methods, the normalisation: the method's own option, else ``normalisation``, else
    the library default. Empty for methods without a ZooExtractor."""
    base = method.partition(":")[0]
    if base not in ZOO_GATES:
        return {}
    kwargs = dict(gate=ZOO_GATES[base], **zoo_options(method))
    if base != "uniform":
        kwargs.setdefault("normalisation", normalisation or DEFAULT_NORMALISATION)
    return kwargs


def trained_normalisation(run_dir: Path, method: str) -> str | None:
    """The gate normalisation a started run trained with (``None``: not started, or not gated)."""
    config = Path(run_dir) / "config.json"
    if not config.is_file():
        return None
    recorded = json.loads(config.read_text()).get("extractor_kwargs")
    if recorded is None:  # trained before the record: the method's own option, else the default of then
        recorded = extractor_kwargs(method, UNRECORDED_NORMALISATION)
    return recorded.get("normalisation")


def canonical_method(method: str, normalisation: str | None) -> str:
    """A method's name with its gate normalisation spelt out and its options sorted, so that runs of
    one method from studies with different defaults compare: ``zoo-lite`` trained with sigmoid gates
    and ``zoo-lite:sigmoid`` are both ``zoo-lite:sigmoid``; ``zoo-lite:noalign`` with softmax gates is
    ``zoo-lite:noalign+softmax``. Other methods are unchanged."""
    base, _, arg = method.partition(":")
    if base not in ZOO_GATES or normalisation is None:
        return method
    options = {o for o in arg.split("+") if o and ZOO_OPTIONS.get(o, {}).get("normalisation") is None}
    return f"{base}:{'+'.join(sorted(options | {normalisation}))}"


def check_normalisation(job: RunJob) -> None:
    """A gated run continues (or counts in the tables) only under the normalisation it was trained with.

    :raises ValueError: the run folder holds a run with another normalisation, with the flag that continues it.
    """
    wanted = extractor_kwargs(job.method, job.study.normalisation).get("normalisation")
    started = trained_normalisation(job.run_dir, job.method)
    if wanted is not None and started is not None and started != wanted:
        raise ValueError(f"{job.run_dir} ({job.method}) was trained with gate normalisation {started!r}, this study "
                         f"asks for {wanted!r}: rerun with --gate-normalisation {started}, or write the study to "
                         f"another --out (a method name can also fix it: {job.method.partition(':')[0]}:{wanted}).")


def expand_methods(methods: list[str], sources: list[Source]) -> list[str]:
    """Validate method names and expand ``finetune`` into one entry per source.

    :raises ValueError: an unknown method, or ``finetune:<name>`` naming no source.
    """
    names = [s.name for s in sources]
    out: list[str] = []
    for method in methods:
        base, _, arg = method.partition(":")
        if base not in METHODS:
            raise ValueError(f"Unknown method {method!r}; choose from: "
                             + "; ".join(f"{k} ({v})" for k, v in METHODS.items()))
        if base in ZOO_GATES and arg:
            zoo_options(method)  # raises on an unknown option
            top = ranked_top(method)
            if top is not None and base == "uniform":
                raise ValueError(f"{method}: uniform gates are fixed at 1/K; a ranked start needs zoo or zoo-lite.")
            if top is not None and sources and top > len(sources):
                raise ValueError(f"{method} starts from the top {top} sources, but the zoo has {len(sources)}.")
            out.append(method)
        elif base == "finetune" and arg:
            if arg not in names:
                raise ValueError(f"finetune:{arg} names no source of the zoo; sources are: {', '.join(names)}.")
            out.append(method)
        elif base == "finetune":
            out += [f"finetune:{n}" for n in names]
        else:
            out.append(method)
    return list(dict.fromkeys(out))


def plan(study: StudyConfig) -> list[RunJob]:
    """Resolve and check everything before any training: target, zoo, methods, algorithm.

    :raises ValueError / FileNotFoundError: with what to fix.
    """
    if study.algo.lower() not in ALGOS:
        raise ValueError(f"Unknown algorithm {study.algo!r}; choose one of {sorted(ALGOS)}.")
    if study.seeds < 1 or study.steps < 1:
        raise ValueError("--seeds and --steps must be positive.")
    if study.precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be 'bf16' or 'fp32', got {study.precision!r}.")
    if study.launcher not in ("local", "ray"):
        raise ValueError(f"launcher must be 'local' or 'ray', got {study.launcher!r}.")
    task = resolve(study.target, study.mode, study.difficulty)
    zoo = expand_zoo(study.zoo, task) if study.zoo is not None else default_zoo(task)
    needs_zoo = any(m.partition(":")[0] != "scratch" for m in study.methods)
    sources: list[Source] = []
    if needs_zoo:
        if not zoo:
            manifest = (ZOO_DIRS[task.family] / "manifest.yml").relative_to(ROOT)
            raise ValueError(f"No zoo sources for target {task.slug}: train some with `python agents/train.py "
                             f"--zoo --manifest {manifest}`, pass --zoo, or run only --methods scratch.")
        sources = cached_zoo(zoo)
        env = make_env(task, 1, seed=0)
        try:
            from stable_baselines3.common.vec_env import VecTransposeImage

            space = VecTransposeImage(env).observation_space
            ZooExtractor(space, zoo=zoo, gate="uniform")  # raises if the zoo does not fit the env
        finally:
            env.close()
    methods = expand_methods(study.methods, sources)
    if study.out is None:
        study.out = ROOT / "runs" / "transfer" / f"{task.slug}-{study.algo}"
    if study.normalisation is not None and study.normalisation not in NORMALISATIONS:
        raise ValueError(f"Unknown gate normalisation {study.normalisation!r}; choose from {', '.join(NORMALISATIONS)}.")
    # Seed-major: a study stopped part-way has every method at the same number of seeds.
    jobs = [RunJob(study, task, list(zoo), m, s) for s in range(study.seeds) for m in methods]
    for job in jobs:
        check_normalisation(job)
    return jobs


def _hyperparams(job: RunJob) -> tuple[dict[str, Any], int]:
    study = job.study
    params = load_hyperparams(HYPERPARAMS_DIR / f"{study.algo}.yml", job.task.game, family=job.task.family)
    n_envs = int(params.pop("n_envs", 8))
    params.pop("policy", None)
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


def build_model(job: RunJob, env) -> Any:
    """The SB3 model for ``job.method`` on ``env`` (fresh, before any checkpoint is applied)."""
    study = job.study
    params, _ = _hyperparams(job)
    cls = ALGOS[study.algo]
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
    params = {k: parse_value(v) for k, v in params.items()}
    params.update(algo_kwargs(policy))
    model = cls(policy, env, seed=job.seed, device="auto", policy_kwargs=policy_kwargs, **params)
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
    with _file_lock(Path(run_dir) / LOCK, wait=False) as held:
        yield held


def evaluate_final(model: Any, task: Task, method: str, algo: str, seed: int, episodes: int) -> dict[str, Any]:
    """``episodes`` new games of a run's final model on its evaluation environments (seed ``10_000 + seed``, one
    environment per game, sampled actions for on-policy algorithms, seeded so that a rerun repeats them;
    ``zoo-lite`` merged by :func:`export_lite` as in its evaluations)."""
    from stable_baselines3.common.evaluation import evaluate_policy

    if method.partition(":")[0] == "zoo-lite":
        model = export_lite(model)
    env = make_env(task, episodes, seed=10_000 + seed, backend="gym")
    model.set_random_seed(10_000 + seed)
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


def _train_job(job: RunJob, on_progress: Callable[[RunJob, int], None] | None) -> dict[str, Any]:
    run_dir = job.run_dir
    study = job.study
    params, n_envs = _hyperparams(job)
    resumed = (run_dir / CHECKPOINT).is_file()
    backend = env_backend(job.task, study.env_backend)
    check_resume_backend(run_dir, backend, resumed)
    spec = RunSpec(run_dir=run_dir, algo=study.algo, total_steps=study.steps, hyperparams=params,
                   seed=job.seed, checkpoint_every=study.eval_every, eval_every=study.eval_every,
                   eval_episodes=study.eval_episodes, tensorboard_log=str(run_dir / TENSORBOARD))
    if resumed:
        _check_checkpoint(job)
    # Monitor files in the run folder itself, where SB3's load_results and the RL Zoo's plot scripts look.
    env = make_env(job.task, n_envs, seed=job.seed, monitor_dir=str(run_dir), monitor_append=resumed, backend=backend)
    eval_env = make_env(job.task, study.eval_episodes, seed=10_000 + job.seed, backend="gym")
    write_json(run_dir / CONFIG, {"study": asdict(study), "method": job.method, "seed": job.seed,
                                  "task": asdict(job.task), "zoo": job.zoo, "n_envs": n_envs,
                                  "env_backend": backend, "hyperparams": params,
                                  "extractor_kwargs": run_extractor_kwargs(job),
                                  "command": command_line(), "versions": env_versions(),
                                  "machine": machine_info(),
                                  # steps/s depend on it: train_run sets it again
                                  "malloc_reuse": reuse_freed_memory()})
    model = None if resumed else build_model(job, env)
    report = (lambda steps: on_progress(job, steps)) if on_progress is not None else None
    callbacks: list[BaseCallback] = [ProgressFile(run_dir / "progress.json", on_progress=report)]
    base = job.method.partition(":")[0]
    if base in ZOO_GATES:
        callbacks.append(GateLogger(csv_path=run_dir / "gates.csv", every=max(study.eval_every // 4, 1)))
    try:
        model, _ = train_run(spec, env, eval_env, callbacks=callbacks, model=model,
                             evaluate_as=export_lite if base == "zoo-lite" else None, evaluate_at_start=True)
    finally:
        for venv in (env, eval_env):
            venv.close()
    wall = json.loads((run_dir / "status.json").read_text())["wall_seconds"]
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


# ----------------------------------------------------------------------------- tables


def collect_results(out: Path) -> pd.DataFrame:
    """``results.csv`` rows from every finished run's ``result.json`` (one row per run)."""
    rows = [json.loads(p.read_text()) for p in sorted(Path(out).glob(f"*/seed*/{RESULT}"))]
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    table = table.drop_duplicates(["target", "method", "seed"], keep="last")
    # The final return: the final model on new games where the run has played them, else its last evaluation;
    # the last evaluation is kept beside it either way.
    table["last_evaluation_return"] = table["final_return"]
    table["final_episodes"] = np.nan
    for index, r in table.iterrows():
        path = run_path(Path(out), r["method"], r["seed"]) / FINAL_EVALUATION
        if path.is_file():
            returns = json.loads(path.read_text())["returns"]
            table.loc[index, ["final_return", "final_return_std", "final_episodes"]] = (
                float(np.mean(returns)), float(np.std(returns)), len(returns))
    # From the final return again, so that reference scores added later (ATARI_SCORES) count for old runs.
    table["human_normalised"] = [_human_normalised(r.final_return, r.target, r.human_normalised)
                                 for r in table.itertuples()]
    table["parallel_runs"] = [_parallel_runs(Path(out), r.method, r.seed) for r in table.itertuples()]
    for column in ("extractor_precision", "cpu_capability"):  # empty for runs from before they were recorded
        table[column] = table[column].fillna("") if column in table else ""
    threshold = _threshold(table, out)
    table["threshold"] = threshold
    table["steps_to_threshold"] = [
        steps_to_threshold(*_curve(Path(out), r.method, r.seed), threshold) for r in table.itertuples()
    ]
    return table[RESULT_COLUMNS].sort_values(["method", "seed"]).reset_index(drop=True)


def _human_normalised(final_return: float, target: str, stored: float) -> float:
    try:
        game = resolve(target).game
    except ValueError:  # a target this version no longer knows: keep what the run wrote
        return stored
    return float(human_normalised(float(final_return), game))


def _parallel_runs(out: Path, method: str, seed: int) -> int:
    """How many runs shared the machine when this run was last trained (``--workers`` of the local
    launcher; 1 for Ray, whose runs get their own CPUs): its steps/s is per run, not per machine."""
    config_path = run_path(out, method, seed) / "config.json"
    if not config_path.is_file():
        return 1
    study = json.loads(config_path.read_text()).get("study", {})
    return 1 if study.get("launcher", "local") == "ray" else max(1, int(study.get("workers", 1)))


def _threshold(table: pd.DataFrame, out: Path) -> float:
    study = json.loads((Path(out) / "study.json").read_text()) if (Path(out) / "study.json").is_file() else {}
    if study.get("threshold") is not None:
        return float(study["threshold"])
    scratch = table.loc[table["method"] == "scratch", "final_return"]
    return float(scratch.mean()) if len(scratch) else math.nan


def _curve(out: Path, method: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    ev = load_evaluations(run_path(out, method, seed) / EVALUATIONS)
    return np.asarray(ev["timesteps"], dtype=float), np.asarray([np.mean(r) for r in ev["results"]], dtype=float)


def learning_curves(out: Path) -> pd.DataFrame:
    """Long table ``method, seed, steps, return`` of every evaluation of every run (started or finished)."""
    rows = []
    for path in sorted(Path(out).glob(f"*/seed*/{EVALUATIONS}")):
        config = json.loads((path.parent / "config.json").read_text())
        steps, means = _curve(Path(out), config["method"], config["seed"])
        rows += [{"method": config["method"], "seed": config["seed"], "steps": int(s), "return": float(m)}
                 for s, m in zip(steps, means)]
    return pd.DataFrame(rows, columns=["method", "seed", "steps", "return"])


def best_finetune(results: pd.DataFrame) -> pd.DataFrame:
    """The runs of the single-source fine-tune with the highest mean final return (chosen after the fact:
    an optimistic baseline); empty if ``results`` (one target) has no fine-tune."""
    finetunes = results[results["method"].str.startswith("finetune:")]
    if finetunes.empty:
        return finetunes
    return finetunes[finetunes["method"] == finetunes.groupby("method")["final_return"].mean().idxmax()]


def summarise(results: pd.DataFrame, reps: int = 2000) -> pd.DataFrame:
    """``summary.csv``: one row per method, plus ``finetune-best`` and ``finetune-mean``.

    Columns: runs, mean/std of the final return, mean return at step 0 (before any training), IQM
    with its 95% stratified-bootstrap interval (over seeds), human-normalised mean, mean AUC, median steps to threshold, mean steps/s,
    difference of the mean to scratch and to the best single-source fine-tune with its 95% bootstrap interval
    over seeds (:func:`zoo_rl.metrics.difference_interval`; ``vs_scratch_low`` / ``_high``), the same for the
    AUC against scratch (``auc_vs_scratch``: the mean return over training, far less noisy than the last
    evaluation alone), rank by mean.
    ``finetune-best`` is the fine-tune whose mean final return is highest (chosen after the
    fact, an optimistic baseline); ``finetune-mean`` pools all fine-tune runs.
    """
    if results.empty:
        return pd.DataFrame()
    groups = {m: g for m, g in results.groupby("method")}
    finetunes = {m: g for m, g in groups.items() if m.startswith("finetune:")}
    if finetunes:
        groups["finetune-best"] = best_finetune(results).assign(method="finetune-best")
        groups["finetune-mean"] = pd.concat(finetunes.values()).assign(method="finetune-mean")
    # Per method a (num_runs x 1 task) matrix; finetune-mean has more runs, rliable allows that.
    intervals = iqm_with_interval({m: g["final_return"].to_numpy()[:, None] for m, g in groups.items()}, reps=reps)
    rows = []
    for method, g in groups.items():
        point, low, high = intervals[method]
        rows.append({
            "method": method, "runs": len(g), "final_mean": g["final_return"].mean(),
            "final_std": g["final_return"].std(ddof=1) if len(g) > 1 else 0.0,
            # games per run behind final_mean: a re-evaluation's count, or NaN for the last evaluation
            "final_episodes": g["final_episodes"].max() if "final_episodes" in g else np.nan,
            "last_evaluation_mean": g["last_evaluation_return"].mean() if "last_evaluation_return" in g else np.nan,
            "initial_mean": g["initial_return"].mean(),
            "iqm": point, "iqm_low": low, "iqm_high": high,
            "human_normalised": g["human_normalised"].mean(), "auc_mean": g["auc"].mean(),
            # NaN when no run reached it (dropna first: numpy warns on the median of nothing)
            "steps_to_threshold_median": g["steps_to_threshold"].dropna().median(),
            "reached_threshold": int(g["steps_to_threshold"].notna().sum()),
            "timesteps_per_second": g["timesteps_per_second"].mean(),
        })
    table = pd.DataFrame(rows)
    for column, value, reference in (("vs_scratch", "final_return", "scratch"),
                                     ("vs_best_finetune", "final_return", "finetune-best"),
                                     ("auc_vs_scratch", "auc", "scratch")):
        # Difference of means to the reference, and its 95% bootstrap interval over seeds.
        base = groups[reference][value].to_numpy() if reference in groups else np.array([])
        table[column] = [groups[m][value].mean() - (base.mean() if base.size else np.nan) for m in table["method"]]
        bounds = [difference_interval(groups[m][value].to_numpy(), base, reps=reps) for m in table["method"]]
        table[f"{column}_low"] = [low for low, _ in bounds]
        table[f"{column}_high"] = [high for _, high in bounds]
    ranked = ~table["method"].isin(["finetune-best", "finetune-mean"])
    table.loc[ranked, "rank"] = table.loc[ranked, "final_mean"].rank(ascending=False, method="min")
    return table.sort_values("final_mean", ascending=False).reset_index(drop=True)


def compact_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary in seven columns, to print: method, runs, final return (mean ± std), IQM [95% CI], the
    difference to scratch and to the best fine-tune [95% CI], steps/s."""
    def interval(point: float, low: float, high: float) -> str:
        return "" if not np.isfinite(point) else f"{point:+.1f} [{low:+.1f}, {high:+.1f}]"

    rows = []
    for r in summary.itertuples():
        rows.append({"method": r.method, "runs": r.runs, "final return": f"{r.final_mean:.1f} ± {r.final_std:.1f}",
                     "IQM [95% CI]": f"{r.iqm:.1f} [{r.iqm_low:.1f}, {r.iqm_high:.1f}]",
                     "vs scratch": "" if r.method == "scratch" else interval(r.vs_scratch, r.vs_scratch_low,
                                                                             r.vs_scratch_high),
                     "vs best fine-tune": "" if r.method == "finetune-best" else interval(
                         r.vs_best_finetune, r.vs_best_finetune_low, r.vs_best_finetune_high),
                     "steps/s": f"{r.timesteps_per_second:.0f}"})
    return pd.DataFrame(rows)


def write_csv_atomic(table: pd.DataFrame, path: Path) -> None:
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    atomic_write_bytes(path, buffer.getvalue().encode())


def gate_history(out: Path) -> pd.DataFrame:
    """Long table ``method, seed, timesteps, extractor, layer, source, gate`` from every run's gates.csv."""
    frames = []
    for path in sorted(Path(out).glob("*/seed*/gates.csv")):
        config = json.loads((path.parent / "config.json").read_text())
        frames.append(pd.read_csv(path).assign(method=config["method"], seed=config["seed"]))
    columns = ["method", "seed", "timesteps", "extractor", "layer", "source", "gate"]
    return pd.concat(frames)[columns] if frames else pd.DataFrame(columns=columns)


def write_tables(out: Path, reps: int = 2000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rebuild results.csv, summary.csv, curves.csv and gates.csv of a study, atomically."""
    out = Path(out)
    results = collect_results(out)
    summary = summarise(results, reps=reps)
    write_csv_atomic(results, out / "results.csv")
    write_csv_atomic(summary, out / "summary.csv")
    write_csv_atomic(learning_curves(out), out / "curves.csv")
    write_csv_atomic(gate_history(out), out / "gates.csv")
    return results, summary


def cross_target(study_dirs: list[Path], reps: int = 2000) -> pd.DataFrame:
    """One table across studies: per method, per-target mean final return and the IQM of
    human-normalised scores over all (run, target) pairs with its stratified-bootstrap interval.
    Gated methods are named with the normalisation their runs trained with (:func:`canonical_method`);
    ``finetune-best`` is each target's best single-source fine-tune, ``finetune-each`` all of them pooled.
    """
    tables = []
    for d in study_dirs:
        if not (Path(d) / "results.csv").is_file():
            continue
        table = pd.read_csv(Path(d) / "results.csv")
        # Studies may differ in their gate normalisation: name it, so that one row is one method.
        table["method"] = [canonical_method(r.method, trained_normalisation(run_path(d, r.method, r.seed), r.method))
                           for r in table.itertuples()]
        tables.append(table)
    if not tables:
        return pd.DataFrame()
    results = pd.concat(tables)
    # The best single-source fine-tune of each target (chosen after the fact: an optimistic baseline),
    # then every fine-tune pooled: which source transfers differs from target to target.
    best = [best_finetune(g).assign(method="finetune-best") for _, g in results.groupby("target")]
    results["method"] = results["method"].where(~results["method"].str.startswith("finetune:"), "finetune-each")
    results = pd.concat([results, *best])
    pivot = results.pivot_table(index="method", columns="target", values="final_return", aggfunc="mean")
    matrices = {}
    targets = sorted(results["target"].unique())
    for method, g in results.groupby("method"):
        per_target = [g.loc[g["target"] == t, "human_normalised"].to_numpy() for t in targets]
        if any(len(x) == 0 for x in per_target) or g["human_normalised"].isna().any():
            continue
        n = min(len(x) for x in per_target)
        matrices[method] = np.stack([x[:n] for x in per_target], axis=1)  # (runs, targets)
    intervals = iqm_with_interval(matrices, reps=reps) if matrices else {}
    pivot.columns = [f"return_{c}" for c in pivot.columns]
    pivot["hns_iqm"] = [intervals.get(m, (np.nan,) * 3)[0] for m in pivot.index]
    pivot["hns_iqm_low"] = [intervals.get(m, (np.nan,) * 3)[1] for m in pivot.index]
    pivot["hns_iqm_high"] = [intervals.get(m, (np.nan,) * 3)[2] for m in pivot.index]
    return pivot.reset_index()


# ----------------------------------------------------------------------------- plan and progress

#: Training cost per agent step of each method relative to scratch's, for estimates before a study has
#: measured its own (``benchmarks/bench_throughput.py`` measures them on a machine).
RELATIVE_COST = {"scratch": 1.0, "finetune": 1.0, "uniform": 1.6, "zoo-lite": 1.6, "zoo": 2.8, "ensemble": 1.9}
#: Scratch's agent steps per second in one single-thread process, for estimates before any run has finished.
REFERENCE_STEPS_PER_SECOND = 250.0
_NATURE_PARAMS = 8_224 + 32_832 + 36_928 + 1_606_144
_ALIGN_PARAMS = {True: 32 ** 2 + 64 ** 2 * 2 + 512 ** 2, "conv": 32 ** 2 + 64 ** 2 * 2, False: 0}


def run_bytes(method: str, n_sources: int) -> int:
    """About the size of a finished run on disk: its final model (weights and Adam's two moments, 4 bytes
    each); the logs are small. A run in training holds a checkpoint of the same size besides."""
    base = method.partition(":")[0]
    if base in ZOO_GATES:
        align = zoo_options(method).get("align", True)
        return 12 * n_sources * (_NATURE_PARAMS + _ALIGN_PARAMS[align])
    if base == "ensemble":  # frozen sources: weights only
        return 4 * n_sources * _NATURE_PARAMS + 12 * 600 * n_sources
    return 12 * _NATURE_PARAMS


def _run_state(job: RunJob) -> tuple[str, int]:
    """``("done", steps)``, ``("partial", step of its checkpoint)`` or ``("to do", 0)``."""
    if (job.run_dir / RESULT).is_file():
        return "done", job.study.steps
    status = job.run_dir / "status.json"
    if (job.run_dir / CHECKPOINT).is_file() and status.is_file():
        try:
            return "partial", int(json.loads(status.read_text())["num_timesteps"])
        except (json.JSONDecodeError, KeyError, ValueError):
            pass
    return "to do", 0


def method_seconds_per_step(jobs: list[RunJob]) -> dict[str, float]:
    """Seconds per agent step of each method of ``jobs``, for one run alone on the machine: measured by the
    study's finished runs where there are any (their ``timesteps_per_second`` times the runs that shared the
    machine), else scaled from the measured methods (or :data:`REFERENCE_STEPS_PER_SECOND`) by
    :data:`RELATIVE_COST`."""
    measured: dict[str, list[float]] = {}
    for job in jobs:
        path = job.run_dir / RESULT
        if path.is_file():
            row = json.loads(path.read_text())
            rate = float(row.get("timesteps_per_second") or 0)
            if rate > 0:
                shared = _parallel_runs(job.study.out, job.method, job.seed)
                measured.setdefault(job.method, []).append(1.0 / (rate * shared))
    cost = {j.method: RELATIVE_COST.get(j.method.partition(":")[0], 1.0) for j in jobs}
    scratch_equivalent = [np.mean(v) / cost[m] for m, v in measured.items()]
    unit = float(np.mean(scratch_equivalent)) if scratch_equivalent else 1.0 / REFERENCE_STEPS_PER_SECOND
    return {m: float(np.mean(measured[m])) if m in measured else unit * cost[m] for m in cost}


def _parallel_speedup(workers: int) -> float:
    """Machine throughput of ``workers`` single-thread runs against one: each core past the first adds about
    half a run (the emulators and memory are shared)."""
    return 1.0 + 0.5 * (max(1, min(workers, os.cpu_count() or 1)) - 1)


def format_duration(seconds: float) -> str:
    """``1 h 52 min``, ``7 min``, ``40 s``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min" if seconds >= 60 else f"{seconds} s"


def describe_plan(study: StudyConfig, jobs: list[RunJob]) -> str:
    """The plan of a study in a few lines: target, zoo, methods x seeds = runs, steps, output folder, what is
    done, partial and to do, and estimates of time and disk."""
    task, zoo = jobs[0].task, jobs[0].zoo
    methods = list(dict.fromkeys(j.method for j in jobs))
    states = {(j.method, j.seed): _run_state(j) for j in jobs}
    done = [k for k, (state, _) in states.items() if state == "done"]
    partial = {k: step for k, (state, step) in states.items() if state == "partial"}
    seconds = method_seconds_per_step(jobs)
    remaining = sum(seconds[m] * (study.steps - step) for (m, _), (state, step) in states.items() if state != "done")
    if study.final_episodes > 0:  # the final games, about a minute a run
        remaining += 60.0 * (len(jobs) - len(done))
    workers = 1 if study.launcher == "ray" else study.workers
    n_sources = len(zoo)
    disk = sum(run_bytes(m, n_sources) for m in methods) * study.seeds
    lines = [
        f"Transfer study: {study.algo.upper()} on {task.slug} ({task.env_id}), {study.steps:,} agent steps per run, "
        f"Adam at {study.lr:g}",
        "zoo: " + (f"{n_sources} sources: " + ", ".join(Path(z).name.rstrip("/") for z in zoo) if zoo else "none"),
        f"{len(methods)} methods x {study.seeds} seeds = {len(jobs)} runs -> {study.out}",
        "  methods: " + ", ".join(methods),
        f"done {len(done)}, partial {len(partial)}, to do {len(jobs) - len(done) - len(partial)}"
        + "".join(f"\n  resumes {m} seed {s} from step {step:,}" for (m, s), step in partial.items()),
        f"estimate: about {format_duration(remaining / _parallel_speedup(workers))} of training "
        f"({workers} worker{'s' if workers > 1 else ''}; from "
        + ("this study's finished runs" if done else "reference speeds, refined as runs finish")
        + f"), about {disk / 1e9:.1f} GB on disk when finished",
    ]
    return "\n".join(lines)


class StudyProgress:
    """The study's progress line: done share, the runs in training and their steps, and an ETA.

    Work is counted in seconds of training (steps times each method's :func:`method_seconds_per_step`),
    so the ETA allows for the cost of every remaining method; the rate is measured on what this process
    has trained since it started (finished runs skipped, and steps a resumed run trains again after its
    checkpoint, do not count).
    """

    def __init__(self, study: StudyConfig, jobs: list[RunJob], enabled: bool = True) -> None:
        self.jobs, self.study = jobs, study
        self.seconds = method_seconds_per_step(jobs)
        self.total = sum(self.seconds[j.method] * study.steps for j in jobs)
        self.start_steps = {(j.method, j.seed): _run_state(j)[1] for j in jobs}
        self.steps = dict(self.start_steps)
        self.started = time.monotonic()
        self.running: dict[tuple[str, int], int] = {}
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=1000, bar_format="{percentage:3.0f}%|{bar:20}| {desc}", dynamic_ncols=True)
        self.refresh()

    def work(self, steps: dict[tuple[str, int], int]) -> float:
        return sum(self.seconds[m] * n for (m, _), n in steps.items())

    def update(self, job: RunJob, steps: int) -> None:
        """One run reports its step count (from its own process, or read from its progress.json)."""
        key = (job.method, job.seed)
        self.steps[key] = min(int(steps), self.study.steps)
        self.running[key] = self.steps[key]
        self.refresh()

    def poll(self) -> None:
        """Read every unfinished run's progress.json (runs in other processes)."""
        for job in self.jobs:
            key = (job.method, job.seed)
            if (job.run_dir / RESULT).is_file():
                self.running.pop(key, None)
                self.steps[key] = self.study.steps
                continue
            path = job.run_dir / "progress.json"
            if path.is_file():
                try:
                    steps = int(json.loads(path.read_text())["steps"])
                except (json.JSONDecodeError, KeyError, ValueError, OSError):
                    continue
                if steps != self.steps[key] and path.stat().st_mtime >= time.time() - 600:
                    self.steps[key] = min(steps, self.study.steps)
                    self.running[key] = self.steps[key]
        self.refresh()

    def finished(self, job: RunJob) -> None:
        key = (job.method, job.seed)
        self.steps[key] = self.study.steps
        self.running.pop(key, None)
        self.refresh()

    def eta(self) -> float:
        # Only forward progress since this process started counts; a run resumed from its checkpoint
        # starts at the checkpoint's step, so replayed steps are not counted twice.
        gained = sum(self.seconds[method] * max(0, steps - self.start_steps[(method, seed)])
                     for (method, seed), steps in self.steps.items())
        elapsed = time.monotonic() - self.started
        remaining = self.total - self.work(self.steps)
        if gained <= 0 or elapsed < 20:
            workers = 1 if self.study.launcher == "ray" else self.study.workers
            return remaining / _parallel_speedup(workers)
        return remaining * elapsed / gained

    def refresh(self) -> None:
        if self.bar is None:
            return
        done = sum(1 for j in self.jobs if self.steps[(j.method, j.seed)] >= self.study.steps)
        running = ", ".join(f"{m} seed {s} at {n:,}" for (m, s), n in self.running.items() if n < self.study.steps)
        self.bar.n = int(1000 * self.work(self.steps) / max(self.total, 1e-9))
        self.bar.set_description_str(f"{self.jobs[0].task.slug}: {done}/{len(self.jobs)} runs"
                                     + (f" | {running}" if running else "")
                                     + f" | ETA {format_duration(self.eta())}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def stop_message(study: StudyConfig, jobs: list[RunJob]) -> str:
    """What a stopped study says: where each unfinished run stands, and that the same command resumes it."""
    done = sum(1 for j in jobs if (j.run_dir / RESULT).is_file())
    partial = [(j, step) for j in jobs for state, step in [_run_state(j)] if state == "partial"]
    where = "; ".join(f"{j.method} seed {j.seed} at its checkpoint of step {step:,}" for j, step in partial)
    return (f"Stopped: {done}/{len(jobs)} runs finished" + (f"; {where}" if where else "") + ". "
            f"Run the same command to resume: each interrupted run continues from its last checkpoint and trains "
            f"at most {study.eval_every:,} steps again.")


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the study like Ctrl-C (in the main thread; elsewhere nothing changes)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ----------------------------------------------------------------------------- launchers


def run_study(study: StudyConfig, progress: bool = True,
              on_result: Callable[[dict[str, Any]], None] | None = None,
              poll_seconds: float = 10.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Plan, check, then train every run not finished yet; rebuild the tables after each run.

    Several processes may share one study folder (two terminals, Ray workers): each run is trained by the
    process that holds its lock; the others train the next free run, then wait for the runs held elsewhere.
    Ctrl-C or SIGTERM stops the study with :func:`stop_message` (then raises ``KeyboardInterrupt``).
    """
    jobs = plan(study)
    out = Path(study.out)
    write_study_json(study, len(jobs))
    if progress:
        print(describe_plan(study, jobs), flush=True)
    if jobs[0].zoo and any(j.method != "scratch" for j in jobs):  # before any run: ranked methods start from it
        with _file_lock(out / "ranking.lock"):
            if progress and not (out / RANKING).is_file():
                print(f"ranking the sources ({study.rank_steps:,} agent steps each) -> {out / RANKING}", flush=True)
            study_ranking(study, jobs[0].task, jobs[0].zoo)
    pending = [j for j in jobs if not (j.run_dir / RESULT).is_file()]
    bar = StudyProgress(study, jobs, enabled=progress)

    def finished(job: RunJob, row: dict[str, Any]) -> None:
        write_tables(out)
        bar.finished(job)
        if on_result is not None:
            on_result(row)

    try:
        with _sigterm_as_interrupt():
            elsewhere = _launch(study, pending, finished, bar)
            while elsewhere:  # runs another process holds: wait for them, or take them over if it stops
                time.sleep(poll_seconds)
                bar.poll()
                for job in list(elsewhere):
                    row = run_job(job, on_progress=bar.update)
                    if row is not None:
                        elsewhere.remove(job)
                        finished(job, row)
    except KeyboardInterrupt:
        bar.close()
        print("\n" + stop_message(study, jobs), flush=True)
        raise
    bar.close()
    return write_tables(out)


@contextmanager
def _file_lock(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``path`` while the block runs, waiting for it (``wait``) or yielding False
    at once when another process holds it. Without ``fcntl`` (Windows) it yields True and locks nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield True
        return
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _launch(study: StudyConfig, pending: list[RunJob], finished: Callable[[RunJob, dict[str, Any]], None],
            bar: StudyProgress) -> list[RunJob]:
    """Train ``pending`` with the study's launcher; returns the runs another process was training."""
    elsewhere: list[RunJob] = []
    if study.launcher == "ray":
        return _run_ray(study, pending, finished, bar)
    if study.workers <= 1:
        for job in pending:
            row = run_job(job, on_progress=bar.update)
            if row is None:
                elsewhere.append(job)
            else:
                finished(job, row)
        return elsewhere
    threads = max(1, (os.cpu_count() or 1) // study.workers)
    pool = ProcessPoolExecutor(max_workers=study.workers)
    try:
        futures = {pool.submit(run_job, job, threads): job for job in pending}
        while futures:
            done, _ = wait(futures, timeout=5, return_when=FIRST_COMPLETED)
            for future in done:
                job = futures.pop(future)
                row = future.result()
                if row is None:
                    elsewhere.append(job)
                else:
                    finished(job, row)
            bar.poll()
    except BaseException:
        for process in list(getattr(pool, "_processes", {}).values()):  # SIGTERM reached only this process
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return elsewhere


def _run_ray(study: StudyConfig, jobs: list[RunJob], finished: Callable, bar: StudyProgress) -> list[RunJob]:
    try:
        import ray
    except ImportError:
        raise ValueError("--launcher ray needs Ray: `pip install ray`.") from None
    if not ray.is_initialized():  # zoo_rl and envs must be installed on the workers (pip install -e .)
        ray.init(address=study.ray_address, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(run_job)
    pending = {remote.remote(job, 1): job for job in jobs}
    elsewhere = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=5)
        for ref in done:
            job = pending.pop(ref)
            row = ray.get(ref)
            if row is None:
                elsewhere.append(job)
            else:
                finished(job, row)
        bar.poll()
    return elsewhere
