"""Training source agents for the zoo and exporting them in the compact format.

``agents/train.py`` is the command-line front end. One source = one resumable run under
``runs/zoo/<name>/`` (checkpoints, evaluations, monitor logs) whose result is exported to
``agents/zoo/<name>/`` (``weights.pt`` + ``meta.json``, see :mod:`zoo_rl.sources`).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv

from envs.atari import restart_games
from envs.tasks import Task, make_env, resolve
from zoo_rl.files import EVALUATIONS, STATUS, write_csv_atomic, write_json
from zoo_rl.sources import LAYERS, META_FILE, SB3_EXTRACTOR_PREFIXES, read_compact, write_compact
from zoo_rl.training import (ON_POLICY, RunSpec, env_versions, hyperparams_for, load_evaluations, new_model, open_run,
                             reached, train_run)

#: A source's learning curve in its zoo folder: its run's evaluations (steps, mean, std, games).
CURVE_FILE = "curve.csv"
#: Episodes of the final evaluation and of the random-policy baseline.
FINAL_EVAL_EPISODES = 10
#: Observations collected to check that float16 storage keeps every greedy action.
FP16_CHECK_OBS = 512


@dataclass
class SourceSpec:
    """One zoo member to train (a manifest entry)."""

    game: str
    algo: str = "ppo"
    steps: int = 1_000_000
    seed: int = 0
    mode: int | None = None
    difficulty: int | None = None
    name: str | None = None
    #: training environments: ``gym`` (default: the committed zoos were trained on it, so their
    #: reproduction commands stay exact), ``ale`` or ``auto`` (ale-py's vector env, faster)
    env_backend: str = "gym"
    #: a compact zoo folder to continue from (its weights, and its step count as the start of the
    #: schedules: a ``lin_X`` schedule continues as if the run had been ``steps`` long from the start)
    init: str | None = None
    #: stop once an evaluation's mean return reaches this (``None``: train all ``steps``)
    target_return: float | None = None
    #: steps between evaluations and games per evaluation (``None``: the command line's)
    eval_every: int | None = None
    eval_episodes: int | None = None

    @property
    def task(self) -> Task:
        return resolve(self.game, self.mode, self.difficulty)

    @property
    def source_name(self) -> str:
        return self.name or self.task.slug.lower()

    def init_folder(self, root: str | Path | None = None) -> Path | None:
        """The folder of :attr:`init` (relative paths from the repository root), checked against the task.

        :raises FileNotFoundError: no compact source there.
        :raises ValueError: it plays another game or flavour, or was trained with another algorithm.
        """
        if self.init is None:
            return None
        folder = Path(self.init)
        if not folder.is_absolute():
            folder = Path(root or Path(__file__).resolve().parents[1]) / folder
        meta_path = folder / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.source_name}: init={self.init!r} is not a compact zoo source ({meta_path} "
                                    "is missing); name a folder such as agents/zoo/pong-m1.")
        meta = json.loads(meta_path.read_text())
        task = self.task
        theirs = (meta.get("game"), meta.get("mode"), meta.get("difficulty"), meta.get("algo"))
        ours = (task.game, task.mode, task.difficulty, self.algo)
        if theirs != ours:
            raise ValueError(f"{self.source_name}: init={self.init!r} is (game, mode, difficulty, algo) = {theirs}, "
                             f"the source to train is {ours}; continue from a source of the same task and algorithm.")
        return folder


def read_manifest(path: str | Path) -> list[SourceSpec]:
    """Zoo members listed in ``manifest.yml`` (``sources: [{game: Pong, mode: 1, ...}]``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Zoo manifest {path} does not exist.")
    entries = (yaml.safe_load(path.read_text()) or {}).get("sources", [])
    known = set(SourceSpec.__dataclass_fields__)
    specs = []
    for entry in entries:
        unknown = set(entry) - known
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)} in entry {entry}; allowed: {sorted(known)}.")
        specs.append(SourceSpec(**entry))
    names = [spec.source_name for spec in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{path}: sources {twice} appear more than once; give each entry its own name.")
    return specs


def split_policy_state(model: BaseAlgorithm) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(extractor, heads)`` tensors of a trained SB3 model; target networks are dropped."""
    state = model.policy.state_dict()
    extractor: dict[str, torch.Tensor] = {}
    heads: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if "_target" in key:
            continue
        prefix = next((p for p in SB3_EXTRACTOR_PREFIXES if key.startswith(p)), None)
        if prefix is None:
            heads[key] = value
        elif prefix != "vf_features_extractor." and key[len(prefix):].split(".")[0] in ("cnn", "linear"):
            extractor.setdefault(key[len(prefix):], value)
    return extractor, heads


def load_policy_state(model: BaseAlgorithm, folder: str | Path) -> None:
    """Set ``model``'s whole policy (every extractor copy and the heads) from a compact zoo folder.

    :raises ValueError: the folder's tensors do not cover the policy, or their shapes differ (naming the keys).
    """
    state, _ = read_compact(folder)
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    heads = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    target = model.policy.state_dict()
    full: dict[str, torch.Tensor] = {}
    for key in target:
        prefix = next((p for p in SB3_EXTRACTOR_PREFIXES if key.startswith(p)), None)
        full[key] = features.get(key[len(prefix):]) if prefix is not None else heads.get(key)
    missing = sorted(k for k, v in full.items() if v is None)
    wrong = sorted(f"{k}: {tuple(v.shape)} in {folder}, {tuple(target[k].shape)} in the model"
                   for k, v in full.items() if v is not None and v.shape != target[k].shape)
    if missing or wrong:
        raise ValueError(f"{folder} does not fit the policy to train: missing {missing}, shapes {wrong}.")
    model.policy.load_state_dict({k: v.to(target[k].device, target[k].dtype) for k, v in full.items()})


def collect_observations(env: VecEnv, n: int, seed: int = 0) -> np.ndarray:
    """``n`` observations from random play, for dtype round-trip checks."""
    rng = np.random.default_rng(seed)
    obs = env.reset()
    out = []
    while sum(len(o) for o in out) < n:
        out.append(obs)
        obs, *_ = env.step(rng.integers(env.action_space.n, size=env.num_envs))
    return np.concatenate(out)[:n]


def float16_is_exact(model: BaseAlgorithm, observations: np.ndarray) -> bool:
    """True if rounding the policy to float16 keeps every greedy action on ``observations``."""
    policy = model.policy
    rounded = copy.deepcopy(policy)
    rounded.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in policy.state_dict().items()})
    a, _ = policy.predict(observations, deterministic=True)
    b, _ = rounded.predict(observations, deterministic=True)
    return bool(np.array_equal(a, b))


def random_returns(env: VecEnv, n_episodes: int, seed: int) -> list[float]:
    """Full-game returns of the uniform random policy on ``env`` (Monitor inside the wrappers).

    Every environment starts a new game (:func:`envs.atari.restart_games`: on SB3's Atari wrappers a
    reset after an evaluation would otherwise continue the trained agent's unfinished games, whose
    points then counted as the random policy's), and environment ``i`` contributes its first
    ``(n_episodes + i) // n_envs`` games, as SB3's ``evaluate_policy`` counts them (taking the
    first ``n_episodes`` games to end, whichever environment played them, favours short games).
    """
    rng = np.random.default_rng(seed)
    targets = [(n_episodes + i) // env.num_envs for i in range(env.num_envs)]
    counts = [0] * env.num_envs
    restart_games(env)
    env.seed(seed)
    env.reset()
    returns: list[float] = []
    while counts != targets:
        _, _, _, infos = env.step(rng.integers(env.action_space.n, size=env.num_envs))
        for i, info in enumerate(infos):
            if "episode" in info and counts[i] < targets[i]:
                returns.append(float(info["episode"]["r"]))
                counts[i] += 1
    return returns


def source_random_returns(spec: SourceSpec) -> list[float]:
    """The random-policy baseline recorded in a source's ``meta.json``: 10 full games on fresh
    environments of the source's task (evaluation protocol, one game per environment)."""
    env = make_env(spec.task, FINAL_EVAL_EPISODES, seed=spec.seed + 30_000)
    try:
        return random_returns(env, FINAL_EVAL_EPISODES, seed=spec.seed + 30_000)
    finally:
        env.close()


def refresh_random_returns(spec: SourceSpec, zoo_dir: str | Path = "agents/zoo") -> dict[str, Any]:
    """Recompute the random-policy baseline in a committed source's ``meta.json`` (weights untouched), with
    :func:`random_returns` (new games, so that it never continues a trained agent's unfinished games);
    ``python agents/train.py --zoo --refresh-random`` runs it for every source of a manifest.
    """
    path = Path(zoo_dir) / spec.source_name / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no committed source {spec.source_name!r} to refresh; train it first.")
    meta = json.loads(path.read_text())
    rand = source_random_returns(spec)
    meta.update(random_return_mean=float(np.mean(rand)), random_return_std=float(np.std(rand)))
    write_json(path, meta)
    return meta


def evaluation_curve(evaluations: dict[str, list]) -> pd.DataFrame:
    """``steps, return_mean, return_std, episodes``: one row per evaluation of a run (``evaluations.npz``)."""
    return pd.DataFrame({"steps": [int(t) for t in evaluations["timesteps"]],
                         "return_mean": [float(np.mean(r)) for r in evaluations["results"]],
                         "return_std": [float(np.std(r)) for r in evaluations["results"]],
                         "episodes": [len(r) for r in evaluations["results"]]},
                        columns=["steps", "return_mean", "return_std", "episodes"])


def write_curve(path: Path, evaluations: dict[str, list]) -> None:
    """A source's learning curve (:func:`evaluation_curve`) beside its weights, atomically."""
    write_csv_atomic(evaluation_curve(evaluations), path)


def _cost(run_dir: Path) -> dict[str, float]:
    """Wall and CPU time of the whole run, all calls (``status.json``), in hours."""
    status_path = run_dir / STATUS
    status = json.loads(status_path.read_text()) if status_path.is_file() else {}
    return {"wall_hours": round(status.get("wall_seconds", 0.0) / 3600, 2),
            "cpu_hours": round(status.get("cpu_seconds", 0.0) / 3600, 2)}


def _zoo_dir_flag(zoo_dir: str | Path) -> str:
    """`` --zoo-dir <dir>`` for the reproduction command, unless it is the default ``agents/zoo``."""
    root = Path(__file__).resolve().parents[1]
    path = Path(zoo_dir).resolve()
    if path == root / "agents" / "zoo":
        return ""
    return f" --zoo-dir {path.relative_to(root) if path.is_relative_to(root) else path}"


def train_source(
    spec: SourceSpec,
    zoo_dir: str | Path = "agents/zoo",
    runs_dir: str | Path = "runs/zoo",
    hyperparams_dir: str | Path = Path(__file__).resolve().parents[1] / "agents" / "hyperparams",
    eval_every: int = 250_000,
    eval_episodes: int = 5,
    checkpoint_every: int = 50_000,
    device: str = "auto",
    verbose: int = 1,
    extra_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train (or resume) one source and export it to ``zoo_dir/<name>``; return its metadata."""
    task = spec.task
    name = spec.source_name
    run_dir = Path(runs_dir) / name
    init = spec.init_folder()
    eval_every = spec.eval_every or eval_every
    eval_episodes = spec.eval_episodes or eval_episodes
    params, n_envs, policy = hyperparams_for(Path(hyperparams_dir) / f"{spec.algo}.yml", task)
    run = RunSpec(run_dir=run_dir, algo=spec.algo, total_steps=spec.steps, hyperparams=params, policy=policy,
                  seed=spec.seed, checkpoint_every=checkpoint_every, eval_every=eval_every,
                  eval_episodes=eval_episodes, device=device)
    envs = open_run(run_dir, task, n_envs=n_envs, seed=spec.seed, backend=spec.env_backend,
                    eval_episodes=eval_episodes, record={"source": asdict(spec), "hyperparams": params})
    env, eval_env, backend = envs.env, envs.eval_env, envs.backend
    model = None
    init_meta: dict[str, Any] = {}
    if init is not None:
        init_meta = json.loads((init / META_FILE).read_text())
        if not envs.resumed:
            model = new_model(run, env)
            load_policy_state(model, init)
            # The schedules read progress as num_timesteps / total_steps: starting the count at the
            # source's steps continues a lin_X schedule exactly as a run of total_steps would have it.
            model.num_timesteps = int(init_meta["steps"])
    if reached(load_evaluations(run_dir / EVALUATIONS), spec.target_return):
        run.total_steps = 0  # a resumed run that already stopped at its target trains no further
    started = time.time()
    model, evaluator = train_run(run, env, eval_env, verbose=verbose, model=model, evaluate_at_start=init is not None,
                                 stop_at_return=spec.target_return)
    train_seconds = time.time() - started

    final_env = make_env(task, FINAL_EVAL_EPISODES, seed=spec.seed + 20_000)
    final, _ = evaluate_policy(model, final_env, n_eval_episodes=FINAL_EVAL_EPISODES,
                               deterministic=spec.algo not in ON_POLICY, return_episode_rewards=True, warn=False)
    rand = source_random_returns(spec)
    test_obs = collect_observations(make_env(task, 8, seed=spec.seed + 40_000), FP16_CHECK_OBS)
    dtype = torch.float16 if float16_is_exact(model, test_obs) else torch.float32
    extractor, heads = split_policy_state(model)
    meta = {
        "name": name,
        "game": task.game,
        "env_id": task.env_id,
        "mode": task.mode,
        "difficulty": task.difficulty,
        "algo": spec.algo,
        "seed": spec.seed,
        "steps": int(model.num_timesteps),
        "n_envs": n_envs,
        "policy": getattr(policy, "__name__", str(policy)),
        "hyperparams": {k: repr(v) if not isinstance(v, (int, float, str, bool, type(None))) else v
                        for k, v in params.items()},
        "eval_return_mean": float(np.mean(final)),
        "eval_return_std": float(np.std(final)),
        "eval_episodes": len(final),
        "eval_deterministic": spec.algo not in ON_POLICY,
        "random_return_mean": float(np.mean(rand)),
        "random_return_std": float(np.std(rand)),
        "n_actions": int(env.action_space.n),
        "observation_shape": list(model.observation_space.shape),
        "layers": list(LAYERS),
        "env_backend": backend,
        "train_seconds_last_call": round(train_seconds, 1),
        **_cost(run_dir),
        **({} if init is None else {"init": {"folder": spec.init, "steps": init_meta.get("steps"),
                                             "sha256": init_meta.get("sha256")}}),
        **({} if spec.target_return is None else {
            "target_return": spec.target_return,
            "stopped_at_target": reached(load_evaluations(run_dir / EVALUATIONS), spec.target_return)}),
        "command": f"python agents/train.py --game {task.game} --algo {spec.algo} --steps {spec.steps} --seed {spec.seed}"
                   + (f" --mode {task.mode}" if task.mode is not None else "")
                   + (f" --difficulty {task.difficulty}" if task.difficulty is not None else "")
                   + (f" --name {spec.name}" if spec.name else "")
                   + (f" --env-backend {spec.env_backend}" if spec.env_backend != "gym" else "")
                   + (f" --init {spec.init}" if spec.init else "")
                   + (f" --target-return {spec.target_return:g}" if spec.target_return is not None else "")
                   + (f" --eval-every {eval_every}" if spec.eval_every else "")
                   + (f" --eval-episodes {eval_episodes}" if spec.eval_episodes else "")
                   + _zoo_dir_flag(zoo_dir),
        "versions": env_versions(),
        **(extra_meta or {}),
    }
    meta = write_compact(Path(zoo_dir) / name, extractor, heads, meta, dtype=dtype)
    write_curve(Path(zoo_dir) / name / CURVE_FILE, load_evaluations(run_dir / EVALUATIONS))
    for venv in (env, eval_env, final_env):
        venv.close()
    return meta
