"""One study run: its model, its training (resumable, under a lock), its final evaluation and its result."""

from __future__ import annotations

import inspect
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from envs.atari import restart_games
from envs.tasks import Task, make_env
from zoo_rl.baselines import EnsembleExtractor, load_extractor_weights
from zoo_rl.callbacks import GateLogger
from zoo_rl.export import export_lite
from zoo_rl.extractor import ZooExtractor, cached_zoo
from zoo_rl.files import (CHECKPOINT, EVALUATIONS, FINAL, FINAL_EVALUATION, GATES, LOCK, PROGRESS, RANKING, REPLAY_BUFFER,
                          RANKING_PARTIAL, RESULT, STATUS, TENSORBOARD, command_line, file_lock, save_model_atomic,
                          write_csv_atomic, write_json)
from zoo_rl.layers import ranked_gates
from zoo_rl.machine import extractor_precision, machine_info, reuse_freed_memory
from zoo_rl.metrics import area_under_curve, human_normalised
from zoo_rl.optim import zoo_optimizer
from zoo_rl.policies import FastCnnPolicy
from zoo_rl.kickstart import KickstartA2C, KickstartPPO, load_any_teacher, ranking_weights
from zoo_rl.qdagger import QDaggerDQN, QDaggerQRDQN
from zoo_rl.ranking import SCORE_COLUMNS, rank_sources, ranked_family, ranking_order
from zoo_rl.multipolar import multipolar_policy
from zoo_rl.policy_sources import TARGET_MODULES
from zoo_rl.study.config import (HYPERPARAMS_DIR, RunJob, StudyConfig, cached_policy_zoo, policy_hyperparams,
                                 source_names, whole_policy)
from zoo_rl.study.cores import run_threads, study_processes
from zoo_rl.study.signals import FAULT_ENV, fault_point
from zoo_rl.study.methods import (RANKED_WEIGHT, ZOO_GATES, extractor_kwargs, gate_span, kickstart_schedule,
                                  kickstart_teachers, ranked_top)
from zoo_rl.zoo_policies import ZOO_OPTIONS as ZOO_POLICY_OPTIONS
from zoo_rl.zoo_policies import ZooPolicyMixin, export_zoo_policy, zoo_policy
from zoo_rl.training import (EVAL_SEED_OFFSET, ON_POLICY, RunSpec, algo_class, deterministic_eval,
                             hyperparams_for, load_evaluations, new_model, open_run, sb3_policy_kwargs, train_run,
                             vec_normalize_kwargs)


def run_hyperparams(job: RunJob) -> tuple[dict[str, Any], int]:
    """``(hyperparameters, environments per run)`` of ``job``: its algorithm's file (or the whole-policy family's
    entry) with the study's learning rate, ``--n-envs`` and an off-policy buffer scaled to the budget."""
    study = job.study
    if whole_policy(job.task):
        params, n_envs, _ = policy_hyperparams(study.algo, job.task)
    else:
        params, n_envs, _ = hyperparams_for(HYPERPARAMS_DIR / f"{study.algo}.yml", job.task)  # the policy: below
    if study.n_envs is not None:
        n_envs = study.n_envs
    params["learning_rate"] = study.lr  # constant: the paper's RL setting is Adam at 1e-4
    if study.algo not in ON_POLICY:
        # the zoo's DQN settings wait 100k steps before learning: scale to the budget
        params["learning_starts"] = min(int(params.get("learning_starts", 0)), study.steps // 10)
        params["buffer_size"] = min(int(params.get("buffer_size", 100_000)), study.steps)
    return params, n_envs


def optimizer_updates(algo: str, params: dict[str, Any], n_envs: int, steps: int) -> int:
    """How many optimizer steps ``algo`` takes over ``steps`` agent steps with ``params`` (SB3's defaults where
    they name none): PPO ``rollouts x n_epochs x minibatches``, A2C one per rollout, off-policy algorithms
    ``gradient_steps`` per ``train_freq`` steps after ``learning_starts`` (the critic's count for TD3, whose
    actor updates every ``policy_delay``).

    :raises ValueError: a ``train_freq`` counted in episodes, whose steps are not known before the run.
    """
    defaults = {k: p.default for k, p in inspect.signature(algo_class(algo).__init__).parameters.items()}
    value = {**defaults, **params}
    if algo in ON_POLICY:
        batch = int(value["n_steps"]) * n_envs
        rollouts = -(-steps // batch)
        if algo == "a2c":
            return rollouts
        return rollouts * int(value["n_epochs"]) * -(-batch // int(value["batch_size"]))
    freq = value["train_freq"]
    if isinstance(freq, (tuple, list)):
        if str(freq[1]).startswith("episode"):
            raise ValueError(f"train_freq {tuple(freq)} counts episodes: a gate span needs the number of updates "
                             "before the run; use gate-lr<N>, or a train_freq in steps.")
        freq = freq[0]
    # SB3 collects train_freq steps per environment, then trains once the step count is past learning_starts.
    per_round = int(freq) * n_envs
    rounds = max(0, -(-steps // per_round) - int(value["learning_starts"]) // per_round)
    gradient_steps = int(value["gradient_steps"])
    return rounds * (gradient_steps if gradient_steps >= 0 else per_round)


def run_extractor_kwargs(job: RunJob) -> dict[str, Any]:
    """:func:`extractor_kwargs` of the job's method, with a ranked start resolved into ``init_gates``
    (from the study's ``ranking.csv``, computed first if missing) and a ``gate-span<S>`` into ``gate_lr``
    (``S / (learning rate x optimizer updates)``, :func:`optimizer_updates` over the study's steps)."""
    kwargs = extractor_kwargs(job.method, job.study.normalisation)
    span = gate_span(job.method)
    if span is not None:
        params, n_envs = run_hyperparams(job)
        kwargs["gate_lr"] = span / (float(params["learning_rate"]) * optimizer_updates(
            job.study.algo, params, n_envs, job.study.steps))
    top = ranked_top(job.method)
    if top is not None:
        order = ranking_order(study_ranking(job.study, job.task, job.zoo), source_names(job.zoo, job.task))
        kwargs["init_gates"] = ranked_gates(len(job.zoo), order, top=top, weight=RANKED_WEIGHT)
    return kwargs


def study_ranking(study: StudyConfig, task: Task, zoo: list[str],
                  on_play: Callable[[str, int, int], None] | None = None,
                  say: Callable[[str], None] | None = None,
                  on_scored: Callable[[dict[str, Any]], None] | None = None) -> pd.DataFrame:
    """The study's source ranking, ``<out>/ranking.csv``: read if it ranks exactly this zoo's sources and is
    whole, else computed by :func:`resumable_ranking` (``study.rank_steps`` per source); ``say`` is told why a
    ranking.csv present is computed again, and which sources a stopped ranking had scored already."""
    path = Path(study.out) / RANKING
    if path.is_file():
        table, problem = read_ranking(path, source_names(zoo, task))
        if table is not None:
            return table
        if say is not None:
            say(f"{path} {problem}: ranking the sources again")
    return resumable_ranking(Path(study.out), task, zoo, study.rank_steps, on_play=on_play, say=say,
                             on_scored=on_scored, algo=study.algo)


def read_ranking(path: Path, names: list[str]) -> tuple[pd.DataFrame | None, str | None]:
    """``(table, None)`` where ``path`` is a whole ranking of the sources ``names`` (columns ``rank`` and ``source`` at
    least), else ``(None, what is wrong)``: unreadable, cut short (every writer ends it with a newline), without
    those columns, with a score missing, or ranking other sources."""
    try:
        text = Path(path).read_text()
        if not text.endswith("\n"):
            return None, "is cut short (its last line has no end)"
        table = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # pandas' parser errors are ValueErrors
        return None, f"cannot be read ({str(exc).strip() or type(exc).__name__})"
    missing = [c for c in ("rank", "source") if c not in table]
    if missing:
        return None, f"has no {', '.join(missing)} column"
    if sorted(table["source"].astype(str)) != sorted(names):
        return None, f"ranks other sources ({', '.join(map(str, table['source']))}) than this zoo's ({', '.join(names)})"
    scores = [c for c in ("rank", "basis", "probe_r2") if c in table]  # a ranking made by hand may have rank only
    if table[scores].isna().any().any() or sorted(table["rank"]) != list(range(1, len(names) + 1)):
        return None, "is incomplete (a rank, basis or probe score is missing)"
    return table, None


def resumable_ranking(out: Path, task: Task, zoo: list[str], steps: int,
                      on_play: Callable[[str, int, int], None] | None = None,
                      say: Callable[[str], None] | None = None,
                      on_scored: Callable[[dict[str, Any]], None] | None = None, algo: str = "ppo") -> pd.DataFrame:
    """:func:`zoo_rl.ranking.rank_sources` for ``task`` (whole-policy sources of ``algo``'s family:
    :func:`zoo_rl.ranking.ranked_family`), written to ``<out>/ranking.csv``, that resumes per source:
    each source's row goes to ``<out>/ranking.partial.csv`` as soon as it is scored (then to ``on_scored``), and
    a later call keeps the rows there of the same target and ``steps`` (``say`` names them) and plays only the
    other sources. The partial file is removed once ranking.csv is written."""
    out = Path(out)
    partial = out / RANKING_PARTIAL
    names = source_names(zoo, task)
    scored = kept_scores(partial, task, steps, names, say)
    rows = [] if scored is None else scored.to_dict("records")
    if rows and say is not None:
        kept = [r["source"] for r in rows]
        say(f"ranking: kept {len(kept)} of {len(names)} sources scored before ({', '.join(kept)}); "
            + (f"playing the other {len(names) - len(kept)}" if len(kept) < len(names) else "ordering them"))

    def keep(row: dict[str, Any]) -> None:
        rows.append({**row, "target": task.slug, "rank_steps": steps})
        write_csv_atomic(pd.DataFrame(rows), partial)
        if on_scored is not None:
            on_scored(row)
        fault_point("ranking")

    table = rank_sources(task, zoo, steps=steps, scored=scored, on_scored=keep, on_play=on_play,
                         family=ranked_family(algo))
    write_csv_atomic(table, out / RANKING)
    partial.unlink(missing_ok=True)
    return table


def kept_scores(partial: Path, task: Task, steps: int, names: list[str],
                 say: Callable[[str], None] | None) -> pd.DataFrame | None:
    """The rows of ``ranking.partial.csv`` that a ranking of ``names`` on ``task`` at ``steps`` can keep (``None``
    without a readable file; ``say`` is told why one cannot be read)."""
    if not partial.is_file():
        return None
    try:
        if not partial.read_text().endswith("\n"):
            raise ValueError("its last line has no end")
        table = pd.read_csv(partial)
        table = table[(table["target"] == task.slug) & (table["rank_steps"] == steps)
                      & table["source"].astype(str).isin(names)]
        table = table.dropna(subset=["probe_r2", "random_rate"]).drop_duplicates("source", keep="last")
        return table[SCORE_COLUMNS + ["target", "rank_steps"]].reset_index(drop=True)
    except (OSError, UnicodeDecodeError, ValueError, KeyError) as exc:
        if say is not None:
            say(f"{partial} cannot be read ({exc}): scoring every source again")
        return None


#: Adam's ``eps`` in the on-policy studies of image targets (Atari, Lab2D), every method alike: torch's default,
#: which every published Atari and Lab2D study and the Atari zoos' training used (SB3's PPO and A2C give plain
#: Adam 1e-5 when given no ``optimizer_kwargs``). Pinned, so that ``--precision fp32`` (SB3's ``CnnPolicy``) steps
#: as the default ``FastCnnPolicy`` runs do, and the published studies reproduce.
IMAGE_STUDY_ADAM_EPS = 1e-8


def run_spec(job: RunJob) -> RunSpec:
    """The :class:`zoo_rl.training.RunSpec` of ``job``: the study's hyperparameters, and the policy and
    extractor of its method (the same heads for every method); for a whole-policy target, :func:`policy_run_spec`."""
    study = job.study
    params, _ = run_hyperparams(job)
    if whole_policy(job.task):
        return policy_run_spec(job, params)
    on_policy = study.algo in ON_POLICY
    policy: Any = FastCnnPolicy if on_policy and study.precision == "bf16" else "CnnPolicy"
    policy_kwargs: dict[str, Any] = dict(net_arch=[])  # the same heads for every method
    if on_policy:
        policy_kwargs["optimizer_class"] = torch.optim.Adam  # A2C defaults to RMSprop
        policy_kwargs["optimizer_kwargs"] = dict(eps=IMAGE_STUDY_ADAM_EPS)
    base, _, arg = job.method.partition(":")
    if base in ZOO_GATES:
        policy_kwargs.update(features_extractor_class=ZooExtractor,
                             features_extractor_kwargs=dict(zoo=job.zoo, **run_extractor_kwargs(job)))
        policy_kwargs["optimizer_class"] = zoo_optimizer(policy_kwargs.get("optimizer_class", torch.optim.Adam))
    elif base == "ensemble":
        policy_kwargs.update(features_extractor_class=EnsembleExtractor, features_extractor_kwargs=dict(zoo=job.zoo))
    params, kickstart = kickstart_settings(job, params)
    return RunSpec(run_dir=job.run_dir, algo=study.algo, total_steps=study.steps, hyperparams=params, policy=policy,
                   policy_kwargs=policy_kwargs, seed=job.seed, checkpoint_every=study.eval_every,
                   eval_every=study.eval_every, eval_episodes=study.eval_episodes,
                   tensorboard_log=str(job.run_dir / TENSORBOARD), **kickstart)


def policy_run_spec(job: RunJob, params: dict[str, Any]) -> RunSpec:
    """The :class:`zoo_rl.training.RunSpec` of a whole-policy target (:func:`zoo_rl.study.config.whole_policy`):
    the hyperparameter file's policy and architecture for every method; the zoo methods build every layer of it
    from the sources (:func:`zoo_rl.zoo_policy`, with the method's gate options), ``multipolar`` aggregates the
    sources' actions around it (:func:`zoo_rl.multipolar_policy`), ``finetune`` and ``scratch`` are the plain
    policy (a fine-tune's weights: :func:`build_model`)."""
    study = job.study
    architecture = sb3_policy_kwargs(params.get("policy_kwargs"))
    policy: Any = params.get("policy", "MlpPolicy")
    policy_kwargs: dict[str, Any] = {}
    base = job.method.partition(":")[0]
    if base in ZOO_GATES:
        policy, policy_kwargs = zoo_policy(study.algo, zoo=job.zoo, policy=policy, **run_extractor_kwargs(job),
                                           **architecture)
    elif base == "multipolar":
        policy, policy_kwargs = multipolar_policy(study.algo, zoo=job.zoo, policy=policy, **architecture)
    params, kickstart = kickstart_settings(job, params)
    return RunSpec(run_dir=job.run_dir, algo=study.algo, total_steps=study.steps,
                   hyperparams={k: v for k, v in params.items() if k != "policy"}, policy=policy,
                   policy_kwargs=policy_kwargs or None, seed=job.seed, checkpoint_every=study.eval_every,
                   eval_every=study.eval_every, eval_episodes=study.eval_episodes,
                   tensorboard_log=str(job.run_dir / TENSORBOARD), **kickstart)


#: The kickstarted class of each algorithm: Kickstarting for PPO and A2C (:mod:`zoo_rl.kickstart`), QDagger's
#: distillation for DQN and QR-DQN (:mod:`zoo_rl.qdagger`).
KICKSTART_ALGOS = {"ppo": KickstartPPO, "a2c": KickstartA2C, "dqn": QDaggerDQN, "qrdqn": QDaggerQRDQN}


def kickstart_settings(job: RunJob, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(hyperparameters, RunSpec arguments)`` of a run: for a kickstarted method, its schedule
    (:func:`zoo_rl.study.methods.kickstart_schedule`) as the algorithm's ``kickstart_coef`` and ``kickstart_steps``
    (the share ``kdecay`` of the study's steps), its class and the call that gives it its teachers; else unchanged."""
    schedule = kickstart_schedule(job.method, job.study.algo)
    if schedule is None:
        return params, {}
    params = dict(params, kickstart_coef=schedule["kcoef"],
                  kickstart_steps=max(1, round(schedule["kdecay"] * job.study.steps)))
    return params, dict(algo_cls=KICKSTART_ALGOS[job.study.algo], prepare=lambda model: give_teachers(job, model))


def study_teachers(job: RunJob, which: str | None = None) -> tuple[list[Any], list[float] | None]:
    """``(teachers, weights)`` of a kickstarted run (``which``: ``"top"`` or ``"all"``; default: what the method
    names, :func:`zoo_rl.study.methods.kickstart_teachers`): the study's top-ranked source with ``None`` (one
    teacher, weight 1), or every source weighted by the ranking's zero-shot evidence
    (:func:`zoo_rl.kickstart.ranking_weights`); an image target's NatureCNN sources with their actions mapped onto
    the target's by meaning, a whole-policy target's sources as they act (:func:`zoo_rl.kickstart.load_any_teacher`)."""
    which = which or kickstart_teachers(job.method)
    if which not in ("top", "all"):
        raise ValueError(f"{job.method}: teachers are 'top' or 'all', got {which!r}.")
    names = source_names(job.zoo, job.task)
    ranking = study_ranking(job.study, job.task, job.zoo)
    env = make_env(job.task, 1, seed=0, backend="gym")  # the gym wrappers name their actions on every backend
    try:
        if which == "all":
            return ([load_any_teacher(path, env, name) for path, name in zip(job.zoo, names)],
                    ranking_weights(ranking, names))
        top = ranking_order(ranking, names)[0]
        return [load_any_teacher(job.zoo[top], env, names[top])], None
    finally:
        env.close()


def give_teachers(job: RunJob, model: Any) -> None:
    """Give a kickstarted run's model its teachers (never saved, so again on every resume):
    :func:`study_teachers` of its method."""
    model.set_teachers(*study_teachers(job))


def build_model(job: RunJob, env, spec: RunSpec | None = None) -> Any:
    """The SB3 model for ``job.method`` on ``env`` (fresh, before any checkpoint is applied; ``spec``: its
    :func:`run_spec`, computed when not given): a fine-tune starts from its source's extractor."""
    model = new_model(spec or run_spec(job), env)
    base, _, arg = job.method.partition(":")
    if base == "finetune" and whole_policy(job.task):
        source = next(s for s in cached_policy_zoo(job.zoo) if s.name == arg)
        load_whole_policy(model, source)
    elif base == "finetune":
        source = next(s for s in cached_zoo(job.zoo) if s.name == arg)
        load_extractor_weights(model, source)
    return model


def load_whole_policy(model: Any, source: Any) -> None:
    """Set every tensor of ``model``'s policy from a whole-policy source (:class:`zoo_rl.policy_sources.PolicySource`).
    A source holds no target networks (SAC's ``critic_target``): they start as copies of the source's online ones,
    as SB3 starts them as copies of the online networks it builds.

    :raises ValueError: the source misses a tensor of the policy, has one it lacks, or one of another shape.
    """
    target = model.policy.state_dict()
    state = dict(source.state)
    for key in target:
        head, _, rest = key.partition(".")
        online = f"{head.removesuffix('_target')}.{rest}"
        if key not in state and head in TARGET_MODULES and online in state:
            state[key] = state[online]
    source = replace(source, state=state)
    missing = sorted(set(target) - set(source.state))
    extra = sorted(set(source.state) - set(target))
    shapes = sorted(f"{k}: {tuple(source.state[k].shape)} in {source.origin}, {tuple(v.shape)} in the policy"
                    for k, v in target.items() if k in source.state and source.state[k].shape != v.shape)
    if missing or extra or shapes:
        raise ValueError(f"{source.name} ({source.origin}) does not fit the policy to fine-tune: missing {missing}, "
                         f"not in the policy {extra}, shapes {shapes}.")
    model.policy.load_state_dict({k: source.state[k].to(v.device, v.dtype) for k, v in target.items()})


class ProgressFile(BaseCallback):
    """Writes ``progress.json`` (steps done, and the pid of the process training the run) after every rollout
    (or every ``every`` steps off-policy) and calls ``on_progress(steps)``: the study's progress bar reads
    either, from any launcher, since runs may live in other processes or on other machines. With
    ``share_cores``, it also sets the run's torch threads to its share of the machine's cores
    (:func:`zoo_rl.study.cores.run_threads`), which changes when study processes start or end."""

    def __init__(self, path: Path, every: int = 1024, on_progress: Callable[[int], None] | None = None,
                 share_cores: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        self.every = every
        self.on_progress = on_progress
        self.share_cores = share_cores
        self._last = 0
        self._start = 0

    def _on_training_start(self) -> None:
        self._start = self.num_timesteps

    def _report(self) -> None:
        self._last = self.num_timesteps
        write_json(self.path, {"steps": int(self.num_timesteps), "pid": os.getpid()})
        if self.on_progress is not None:
            self.on_progress(int(self.num_timesteps))
        if self.share_cores:
            threads = run_threads()
            if threads != torch.get_num_threads():
                torch.set_num_threads(threads)

    def _on_rollout_start(self) -> None:
        if FAULT_ENV in os.environ and self._checkpointed():
            fault_point("training")

    def _checkpointed(self) -> bool:
        """Whether this process has written a checkpoint of the run (status.json past where it started)."""
        try:
            return json.loads((self.path.parent / STATUS).read_text())["num_timesteps"] > self._start
        except (OSError, ValueError, KeyError):
            return False

    def _on_rollout_end(self) -> None:
        # an off-policy rollout is train_freq steps (SAC: one): those report every ``every`` steps instead
        if not isinstance(self.model, OffPolicyAlgorithm):
            self._report()

    def _on_training_end(self) -> None:
        if self.num_timesteps != self._last:
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
        model = merged(model)
    env = make_env(task, episodes, seed=EVAL_SEED_OFFSET + seed, backend="gym")
    model.set_random_seed(EVAL_SEED_OFFSET + seed)
    try:
        restart_games(env)
        returns, _ = evaluate_policy(model, env, n_eval_episodes=episodes,
                                     deterministic=deterministic_eval(algo, env.action_space),
                                     return_episode_rewards=True, warn=False)
    finally:
        env.close()
    return {"returns": [float(r) for r in returns], "mean": float(np.mean(returns)), "seeded": True}


def merged(model: Any) -> Any:
    """A lite model merged into one plain network, as a zoo-lite run is evaluated: :func:`zoo_rl.export_lite` for a
    ZooExtractor, :func:`zoo_rl.zoo_policies.export_zoo_policy` for a whole zoo policy."""
    return export_zoo_policy(model) if isinstance(model.policy, ZooPolicyMixin) else export_lite(model)


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
    another process is training this run (its lock is held).

    :param threads: torch threads for the run; ``None``: its share of the machine's cores, followed as study
        processes start and end (:func:`zoo_rl.study.cores.run_threads`).
    """
    run_dir = job.run_dir
    if (run_dir / RESULT).is_file():
        return json.loads((run_dir / RESULT).read_text())
    with run_lock(run_dir) as mine:
        if not mine:
            return None
        if (run_dir / RESULT).is_file():  # finished by another process meanwhile
            return json.loads((run_dir / RESULT).read_text())
        for tmp in run_dir.glob(".*.tmp"):  # a killed writer's temporary file: never a run file itself
            tmp.unlink(missing_ok=True)
        torch.set_num_threads(threads or run_threads())
        return _train_job(job, on_progress, share_cores=threads is None)


def _zoo_extractor_kwargs(spec: RunSpec) -> dict[str, Any]:
    """The zoo options of a run (gate, normalisation, alignment, start gates, learning-rate multipliers), from its
    ZooExtractor or its zoo policy; ``{}`` for other methods."""
    kwargs = spec.policy_kwargs or {}
    if isinstance(spec.policy, type) and issubclass(spec.policy, ZooPolicyMixin):
        return {k: v for k, v in kwargs.items() if k in ZOO_POLICY_OPTIONS and k not in ("zoo", "vec_normalize")}
    if kwargs.get("features_extractor_class") is not ZooExtractor:
        return {}
    return {k: v for k, v in kwargs["features_extractor_kwargs"].items() if k != "zoo"}


def _train_job(job: RunJob, on_progress: Callable[[RunJob, int], None] | None,
               share_cores: bool = False) -> dict[str, Any]:
    run_dir = job.run_dir
    study = job.study
    spec = run_spec(job)
    if (run_dir / CHECKPOINT).is_file():
        _check_checkpoint(job)
    if (run_dir / CHECKPOINT).is_file() and _checkpoint_step(run_dir) >= study.steps:
        # Trained to the end by a call stopped before its result (in its final games): nothing to train.
        model = algo_class(study.algo).load(run_dir / CHECKPOINT, device=spec.device)
    else:
        model = _train(job, spec, on_progress, share_cores)
    wall = json.loads((run_dir / STATUS).read_text())["wall_seconds"]
    save_model_atomic(model, run_dir / FINAL)
    if study.final_episodes > 0 and not (run_dir / FINAL_EVALUATION).is_file():
        fault_point("final-games")
        final = evaluate_final(model, job.task, job.method, study.algo, job.seed, study.final_episodes)
        write_json(run_dir / FINAL_EVALUATION, {**final, "command": command_line()})
    return _record_result(job, model, wall)


def _checkpoint_step(run_dir: Path) -> int:
    """The step of a run's checkpoint, from its status.json (0 where that does not say)."""
    try:
        return int(json.loads((run_dir / STATUS).read_text())["num_timesteps"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _train(job: RunJob, spec: RunSpec, on_progress: Callable[[RunJob, int], None] | None,
           share_cores: bool) -> Any:
    """Train (or resume) the run to its steps; returns the model."""
    run_dir = job.run_dir
    study = job.study
    params, n_envs = run_hyperparams(job)
    envs = open_run(run_dir, job.task, n_envs=n_envs, seed=job.seed, backend=study.env_backend,
                    eval_episodes=study.eval_episodes, normalize=vec_normalize_kwargs(params),
                    record={"study": asdict(study), "method": job.method, "seed": job.seed, "zoo": job.zoo,
                            "hyperparams": spec.hyperparams,
                            # the ZooExtractor options, a ranked start's init_gates included ({} without one)
                            "extractor_kwargs": _zoo_extractor_kwargs(spec),
                            "machine": machine_info(),
                            # steps/s depend on them: the runs training on the machine when this one started
                            # (this study's and other study processes', zoo_rl.study.cores), and its threads
                            "parallel_runs": _runs_on_machine(study) if share_cores else 1,
                            "torch_threads": torch.get_num_threads(),
                            # steps/s depend on it: train_run sets it again
                            "malloc_reuse": reuse_freed_memory()})
    env, eval_env = envs.env, envs.eval_env
    model = None if envs.resumed else build_model(job, env, spec)
    report = (lambda steps: on_progress(job, steps)) if on_progress is not None else None
    callbacks: list[BaseCallback] = [ProgressFile(run_dir / PROGRESS, on_progress=report, share_cores=share_cores)]
    base = job.method.partition(":")[0]
    if base in ZOO_GATES:
        callbacks.append(GateLogger(csv_path=run_dir / GATES, every=max(study.eval_every // 4, 1)))
    try:
        model, _ = train_run(spec, env, eval_env, callbacks=callbacks, model=model,
                             evaluate_as=merged if base == "zoo-lite" else None, evaluate_at_start=True)
    finally:
        envs.close()
    return model


def _record_result(job: RunJob, model: Any, wall: float) -> dict[str, Any]:
    """Write the finished run's result.json (last: it marks the run finished) and return its row."""
    run_dir = job.run_dir
    study = job.study
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
    # A finished run keeps its final model, not also the checkpoint (and replay buffer) it no longer resumes from.
    (run_dir / CHECKPOINT).unlink(missing_ok=True)
    (run_dir / REPLAY_BUFFER).unlink(missing_ok=True)
    return row


def _runs_on_machine(study: StudyConfig) -> int:
    """Runs registered on this machine by every study process (at least this study's ``workers``)."""
    return max(int(study.workers or 1), sum(p.runs for p in study_processes(include_self=True)))
