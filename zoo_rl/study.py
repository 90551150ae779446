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
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

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
from zoo_rl.training import (
    ALGOS, EVALUATIONS, FINAL, ON_POLICY, RunSpec, check_resume_backend, command_line, env_versions,
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
#: A run's re-evaluation on new games (``experiments/reevaluate.py``); when present it gives the final return.
REEVALUATION = "reevaluation.json"


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
    """Writes ``progress.json`` (steps done) every ``every`` steps: the study's ETA reads it,
    from any launcher, since runs may live in other processes or on other machines."""

    def __init__(self, path: Path, every: int = 2048) -> None:
        super().__init__()
        self.path = Path(path)
        self.every = every
        self._last = 0

    def _on_step(self) -> bool:
        if self.num_timesteps - self._last >= self.every:
            self._last = self.num_timesteps
            write_json(self.path, {"steps": int(self.num_timesteps)})
        return True


def run_job(job: RunJob, threads: int | None = None) -> dict[str, Any]:
    """Train, evaluate and record one run; resumes from its checkpoint; returns its row."""
    if threads:
        torch.set_num_threads(threads)
    run_dir = job.run_dir
    if (run_dir / RESULT).is_file():
        return json.loads((run_dir / RESULT).read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    study = job.study
    params, n_envs = _hyperparams(job)
    resumed = (run_dir / "checkpoint.zip").is_file()
    backend = env_backend(job.task, study.env_backend)
    check_resume_backend(run_dir, backend, resumed)
    env = make_env(job.task, n_envs, seed=job.seed, monitor_dir=str(run_dir / "monitor"), monitor_append=resumed,
                   backend=backend)
    eval_env = make_env(job.task, study.eval_episodes, seed=10_000 + job.seed, backend="gym")
    write_json(run_dir / "config.json", {"study": asdict(study), "method": job.method, "seed": job.seed,
                                         "task": asdict(job.task), "zoo": job.zoo, "n_envs": n_envs,
                                         "env_backend": backend, "hyperparams": params,
                                         "extractor_kwargs": run_extractor_kwargs(job),
                                         "command": command_line(), "versions": env_versions(),
                                         "machine": machine_info(),
                                         # steps/s depend on it (zoo-sample 1.18x): train_run sets it again
                                         "malloc_reuse": reuse_freed_memory()})
    spec = RunSpec(run_dir=run_dir, algo=study.algo, total_steps=study.steps, hyperparams=params,
                   seed=job.seed, checkpoint_every=study.eval_every, eval_every=study.eval_every,
                   eval_episodes=study.eval_episodes)
    model = None if resumed else build_model(job, env)
    callbacks: list[BaseCallback] = [ProgressFile(run_dir / "progress.json")]
    base = job.method.partition(":")[0]
    if base in ZOO_GATES:
        callbacks.append(GateLogger(csv_path=run_dir / "gates.csv", every=max(study.eval_every // 4, 1)))
    model, _ = train_run(spec, env, eval_env, callbacks=callbacks, model=model,
                         evaluate_as=export_lite if base == "zoo-lite" else None, evaluate_at_start=True)
    wall = json.loads((run_dir / "status.json").read_text())["wall_seconds"]
    save_model_atomic(model, run_dir / FINAL)
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
    for venv in (env, eval_env):
        venv.close()
    return row


# ----------------------------------------------------------------------------- tables


def collect_results(out: Path) -> pd.DataFrame:
    """``results.csv`` rows from every finished run's ``result.json`` (one row per run)."""
    rows = [json.loads(p.read_text()) for p in sorted(Path(out).glob(f"*/seed*/{RESULT}"))]
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    table = table.drop_duplicates(["target", "method", "seed"], keep="last")
    # The final return: the run's re-evaluation on new games where there is one (experiments/reevaluate.py),
    # else its last evaluation; the last evaluation is kept beside it either way.
    table["last_evaluation_return"] = table["final_return"]
    table["final_episodes"] = np.nan
    for index, r in table.iterrows():
        path = run_path(Path(out), r["method"], r["seed"]) / REEVALUATION
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


# ----------------------------------------------------------------------------- launchers


def _progress_steps(jobs: list[RunJob]) -> int:
    total = 0
    for job in jobs:
        if (job.run_dir / RESULT).is_file():
            total += job.study.steps
        elif (job.run_dir / "progress.json").is_file():
            try:
                total += json.loads((job.run_dir / "progress.json").read_text())["steps"]
            except (json.JSONDecodeError, KeyError):
                pass
    return total


def run_study(study: StudyConfig, progress: bool = True,
              on_result: Callable[[dict[str, Any]], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Plan, check, then train every run not finished yet; rebuild the tables after each run."""
    jobs = plan(study)
    out = Path(study.out)
    write_study_json(study, len(jobs))
    if jobs[0].zoo:  # before any run: the ranked methods start from it
        study_ranking(study, jobs[0].task, jobs[0].zoo)
    pending = [j for j in jobs if not (j.run_dir / RESULT).is_file()]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs) * study.steps, unit="step", desc=f"{jobs[0].task.slug} study", smoothing=0.05)
        bar.update(_progress_steps(jobs))

    def refresh() -> None:
        if bar is not None:
            bar.update(_progress_steps(jobs) - bar.n)

    def finished(row: dict[str, Any]) -> None:
        write_tables(out)
        refresh()
        if on_result is not None:
            on_result(row)

    if study.launcher == "ray":
        _run_ray(study, pending, finished, refresh)
    elif study.workers <= 1:
        for job in pending:
            finished(run_job(job))
    else:
        threads = max(1, (os.cpu_count() or 1) // study.workers)
        with ProcessPoolExecutor(max_workers=study.workers) as pool:
            futures = {pool.submit(run_job, job, threads) for job in pending}
            while futures:
                done, futures = wait(futures, timeout=5, return_when=FIRST_COMPLETED)
                for future in done:
                    finished(future.result())
                refresh()
    if bar is not None:
        bar.close()
    return write_tables(out)


def _run_ray(study: StudyConfig, jobs: list[RunJob], finished: Callable, refresh: Callable) -> None:
    try:
        import ray
    except ImportError:
        raise ValueError("--launcher ray needs Ray: `pip install ray`.") from None
    if not ray.is_initialized():  # zoo_rl and envs must be installed on the workers (pip install -e .)
        ray.init(address=study.ray_address, include_dashboard=False, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(run_job)
    pending = [remote.remote(job, 1) for job in jobs]
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=5)
        for ref in done:
            finished(ray.get(ref))
        refresh()
