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
import torch
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv

from envs.atari import restart_games
from envs.tasks import Task, make_env, resolve
from zoo_rl.files import write_json
from zoo_rl.sources import LAYERS, META_FILE, SB3_EXTRACTOR_PREFIXES, write_compact
from zoo_rl.training import ON_POLICY, RunSpec, env_versions, hyperparams_for, open_run, train_run

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

    @property
    def task(self) -> Task:
        return resolve(self.game, self.mode, self.difficulty)

    @property
    def source_name(self) -> str:
        return self.name or self.task.slug.lower()


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
    params, n_envs, policy = hyperparams_for(Path(hyperparams_dir) / f"{spec.algo}.yml", task)
    run = RunSpec(run_dir=run_dir, algo=spec.algo, total_steps=spec.steps, hyperparams=params, policy=policy,
                  seed=spec.seed, checkpoint_every=checkpoint_every, eval_every=eval_every,
                  eval_episodes=eval_episodes, device=device)
    envs = open_run(run_dir, task, n_envs=n_envs, seed=spec.seed, backend=spec.env_backend,
                    eval_episodes=eval_episodes, record={"source": asdict(spec), "hyperparams": params})
    env, eval_env, backend = envs.env, envs.eval_env, envs.backend
    started = time.time()
    model, evaluator = train_run(run, env, eval_env, verbose=verbose)
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
        "command": f"python agents/train.py --game {task.game} --algo {spec.algo} --steps {spec.steps} --seed {spec.seed}"
                   + (f" --mode {task.mode}" if task.mode is not None else "")
                   + (f" --difficulty {task.difficulty}" if task.difficulty is not None else "")
                   + (f" --name {spec.name}" if spec.name else "")
                   + (f" --env-backend {spec.env_backend}" if spec.env_backend != "gym" else "")
                   + _zoo_dir_flag(zoo_dir),
        "versions": env_versions(),
        **(extra_meta or {}),
    }
    meta = write_compact(Path(zoo_dir) / name, extractor, heads, meta, dtype=dtype)
    for venv in (env, eval_env, final_env):
        venv.close()
    return meta
