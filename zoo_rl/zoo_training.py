"""Training source agents for the zoo and exporting them in the compact format.

``agents/train.py`` is the command-line front end. One source = one resumable run under
``runs/zoo/<name>/`` (checkpoints, evaluations, monitor logs) whose result is exported to
``agents/zoo/<name>/`` (``weights.pt`` + ``meta.json``, see :mod:`zoo_rl.sources`).

Two kinds of export. A NatureCNN agent (Atari, Lab2D) keeps its extractor under ``features.`` and its heads
under ``head.``, read by :func:`zoo_rl.load_source`. An agent without one (an MLP on a state vector: a PPO agent on
a MuJoCo body, a SAC agent on a classic-control system) keeps its whole policy under ``head.`` (a SAC agent's actor
and critics, not their targets), float32, with the VecNormalize normalisation of its run folded in
(:func:`zoo_rl.policy_sources.fold_vec_normalize`): :func:`zoo_rl.policy_sources.load_policy_source` gives a
source that reads raw observations and predicts raw returns (:func:`export_policy`).
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
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.vec_env import VecEnv, unwrap_vec_normalize
from stable_baselines3.sac.policies import SACPolicy

from envs.atari import restart_games
from envs.tasks import Task, make_env, resolve
from zoo_rl.files import EVALUATIONS, STATUS, VEC_NORMALIZE, to_jsonable, write_csv_atomic, write_json
from zoo_rl.policy_sources import (TARGET_MODULES, PolicySource, VecNormalizeStats, fold_vec_normalize,
                                   load_policy_source, policy_family, read_vec_normalize)
from zoo_rl.sources import (LAYERS, META_FILE, SB3_EXTRACTOR_PREFIXES, WEIGHTS_FILE, read_compact, sha256_of,
                            write_compact, write_weights)
from zoo_rl.training import (ON_POLICY, RunSpec, activation_name, deterministic_eval, env_versions,
                             frozen_normalization, hyperparams_for, load_evaluations, new_model, open_run, reached,
                             sync_normalization, train_run, vec_normalize_kwargs)

#: A source's learning curve in its zoo folder: its run's evaluations (steps, mean, std, games).
CURVE_FILE = "curve.csv"
#: Episodes of the final evaluation and of the random-policy baseline.
FINAL_EVAL_EPISODES = 10
#: Observations collected to check that float16 storage keeps every greedy action.
FP16_CHECK_OBS = 512
#: Observations (half from random play, half from the agent's own) on which an exported policy without a
#: NatureCNN is checked against the trained model (:func:`check_export`).
FOLD_CHECK_OBS = 512
#: Largest difference allowed between the trained model's deterministic actions and its exported copy's, on
#: observations that the normaliser did not clip (the float32 rounding of folded layers stays far below it);
#: values may differ by this fraction of their largest magnitude (at least 1).
FOLD_TOLERANCE = 1e-3


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
    #: steps between checkpoints (``None``: the command line's); a short run, such as a 20k-step SAC source, needs
    #: checkpoints more often than the default 50k to resume after a kill without starting again
    checkpoint_every: int | None = None

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


def random_actions(space: spaces.Space, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniformly random actions of ``space``: ``(n,)`` integers for ``Discrete``, ``(n, *shape)`` values
    within the bounds of a ``Box``.

    :raises ValueError: another space, or a ``Box`` without finite bounds (no uniform distribution over it).
    """
    if isinstance(space, spaces.Discrete):
        return rng.integers(space.n, size=n)
    if isinstance(space, spaces.Box) and space.is_bounded("both"):
        return rng.uniform(space.low, space.high, size=(n, *space.shape)).astype(space.dtype)
    raise ValueError(f"No uniform random policy over {space}: random play needs a Discrete space or a bounded Box.")


def collect_observations(env: VecEnv, n: int, seed: int = 0) -> np.ndarray:
    """``n`` observations from random play, for dtype round-trip checks."""
    rng = np.random.default_rng(seed)
    obs = env.reset()
    out = []
    while sum(len(o) for o in out) < n:
        out.append(obs)
        obs, *_ = env.step(random_actions(env.action_space, env.num_envs, rng))
    return np.concatenate(out)[:n]


def policy_observations(model: BaseAlgorithm, env: VecEnv, n: int) -> np.ndarray:
    """``n`` raw observations of ``model`` playing ``env`` with its deterministic actions.

    ``env`` is under a frozen VecNormalize (:func:`zoo_rl.training.frozen_normalization`) when the model trained
    under one: it receives the model's statistics, the model sees normalised observations and the raw ones are
    returned.
    """
    sync_normalization(model, env)
    normalization = unwrap_vec_normalize(env)
    obs = env.reset()
    out = []
    while sum(len(o) for o in out) < n:
        out.append(normalization.get_original_obs() if normalization is not None else obs)
        actions, _ = model.predict(obs, deterministic=True)
        obs, *_ = env.step(actions)
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
    """Full-game returns of the uniform random policy (:func:`random_actions`) on ``env`` (Monitor inside the wrappers).

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
        _, _, _, infos = env.step(random_actions(env.action_space, env.num_envs, rng))
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


def describe_action_space(space: spaces.Space) -> dict[str, Any]:
    """``{"type": "Discrete", "n": 6}`` or ``{"type": "Box", "shape": [6], "low": [...], "high": [...]}`` (JSON)."""
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n)}
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "low": space.low.ravel().tolist(),
                "high": space.high.ravel().tolist()}
    return {"type": type(space).__name__, "repr": repr(space)}


def describe_stats(stats: VecNormalizeStats) -> dict[str, Any]:
    """The folded VecNormalize statistics as JSON: means and variances as flat lists (a state vector's size)."""
    return {key: value.ravel().tolist() if isinstance(value, np.ndarray) else value
            for key, value in asdict(stats).items()}


def _deterministic_outputs(policy: BasePolicy, observations: np.ndarray,
                           actions: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic actions and values of a policy on ``observations``: an actor-critic policy's Gaussian mean
    (before any clipping to the action bounds) and state values; a SAC policy's squashed mean (in ``[-1, 1]``,
    before scaling to the action bounds) and every critic's Q-value of ``(observation, action)`` with the given
    ``actions`` (squashed; default: its own), ``(n, n_critics)``.

    :raises TypeError: another kind of policy.
    """
    with torch.no_grad():
        obs = torch.as_tensor(observations, dtype=torch.float32, device=policy.device)
        if isinstance(policy, ActorCriticPolicy):
            own = policy.get_distribution(obs).get_actions(deterministic=True)
            values = policy.predict_values(obs).flatten()
        elif isinstance(policy, SACPolicy):
            own = policy.actor(obs, deterministic=True)
            taken = own if actions is None else torch.as_tensor(actions, dtype=torch.float32, device=policy.device)
            values = torch.cat(policy.critic(obs, taken), dim=1)
        else:
            raise TypeError(f"No export check for a {type(policy).__name__}: whole-policy exports are checked for "
                            "actor-critic (PPO, A2C) and SAC policies.")
    return own.cpu().numpy().astype(np.float64), values.cpu().numpy().astype(np.float64)


def _unclipped(observations: np.ndarray, stats: VecNormalizeStats | None) -> np.ndarray:
    """``(n,)`` True where no value of the observation is clipped by the normaliser (all, without one)."""
    flat = observations.reshape(len(observations), -1)
    if stats is None or not stats.norm_obs:
        return np.ones(len(flat), dtype=bool)
    scaled = (flat - stats.obs_mean.ravel()) / np.sqrt(stats.obs_var.ravel() + stats.epsilon)
    return np.all(np.abs(scaled) <= stats.clip_obs, axis=1)


def check_export(model: BaseAlgorithm, folder: Path, observations: np.ndarray,
                 stats: VecNormalizeStats | None) -> dict[str, Any]:
    """Check that the whole-policy source in ``folder``, read back by :func:`load_policy_source` into a plain policy
    of the model's class and architecture, acts on raw ``observations`` as ``model`` acts on their normalised form.

    Actor-critic policies (PPO, A2C) are compared on their deterministic actions and state values, SAC policies on
    their deterministic actions and their critics' Q-values of each observation with the model's action
    (:func:`_deterministic_outputs`); a SAC source holds no target critics (SB3 copies the critics into them when it
    builds a policy), the only tensors of the plain policy it may lack. The comparison leaves out observations that
    the normaliser clips (beyond ``clip_obs`` deviations), which reach a folded layer unclipped: there the two may
    differ.

    :return: ``fold_max_action_diff`` (largest difference of a deterministic action, before clipping or scaling to
        the action bounds), ``fold_max_value_diff`` (of a state value or a Q-value, in raw-return units),
        ``fold_check_observations`` (observations compared) and ``fold_clipped_observations`` (left out).
    :raises RuntimeError: a difference beyond :data:`FOLD_TOLERANCE`, tensors that do not fill the plain policy, or
        no observation to compare.
    """
    source = load_policy_source(folder)
    plain = type(model.policy)(model.observation_space, model.action_space, lambda _: 0.0, **model.policy_kwargs)
    missing, unexpected = plain.load_state_dict(source.state, strict=False)
    missing = [k for k in missing if k.split(".", 1)[0] not in TARGET_MODULES]
    if missing or unexpected:
        raise RuntimeError(f"{folder}: the exported tensors do not fill a plain {type(plain).__name__} of the model's "
                           f"architecture (missing {missing}, unexpected {unexpected}): the export is wrong, do not "
                           "use it.")
    plain.to(model.device)
    trained = model.get_vec_normalize_env()
    seen = trained.normalize_obs(observations) if trained is not None else observations
    model_actions, model_values = _deterministic_outputs(model.policy, seen)
    actions, values = _deterministic_outputs(plain, observations, model_actions)
    if stats is not None and stats.norm_reward:
        model_values = model_values * np.sqrt(stats.ret_var + stats.epsilon)
    inside = _unclipped(observations, stats)
    if not inside.any():
        raise RuntimeError(f"{folder}: every one of {len(observations)} check observations is clipped by the "
                           "normaliser, so the exported policy could not be compared with the trained one.")
    action_diff = float(np.max(np.abs(actions - model_actions)[inside]))
    value_diff = float(np.max(np.abs(values - model_values)[inside]))
    value_tolerance = FOLD_TOLERANCE * max(1.0, float(np.max(np.abs(model_values[inside]))))
    if action_diff > FOLD_TOLERANCE or value_diff > value_tolerance:
        raise RuntimeError(f"{folder}: the exported policy differs from the trained one on unclipped observations "
                           f"(actions by up to {action_diff:.3g}, values by {value_diff:.3g}; tolerance "
                           f"{FOLD_TOLERANCE:g} and {value_tolerance:.3g}): the export is wrong, do not use it.")
    return {"fold_max_action_diff": action_diff, "fold_max_value_diff": value_diff,
            "fold_check_observations": int(inside.sum()), "fold_clipped_observations": int((~inside).sum())}


def export_policy(model: BaseAlgorithm, task: Task, folder: Path, meta: dict[str, Any],
                  normalize: dict[str, Any] | None, stats_path: Path | None, seed: int) -> dict[str, Any]:
    """Export a model without a NatureCNN (an MLP policy) as a whole-policy compact folder; return its metadata.

    The policy state (every tensor but the target networks': :func:`split_policy_state` puts them all in the heads)
    is written float32 with the VecNormalize statistics of ``stats_path`` folded in (:func:`fold_vec_normalize`), and checked
    against the model (:func:`check_export`) on :data:`FOLD_CHECK_OBS` raw observations of ``task``, half from
    random play, half from the model's own (seeded ``seed``). ``meta.json`` is written last, with the action
    space, the architecture, the ``normalize`` settings, the statistics folded and the check's result: until
    then the folder is no finished source (a stale ``meta.json`` is removed first).

    :raises RuntimeError: the check failed (:func:`check_export`).
    """
    _, state = split_policy_state(model)
    stats = read_vec_normalize(stats_path) if stats_path is not None else None
    if stats is not None:
        source = PolicySource(folder.name, str(stats_path.parent), state, family=policy_family(state))
        state = fold_vec_normalize(source, stats).state
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META_FILE).unlink(missing_ok=True)
    write_weights(folder, {}, state)
    half = FOLD_CHECK_OBS // 2
    random_env = make_env(task, 8, seed=seed)
    agent_env = frozen_normalization(make_env(task, 1, seed=seed + 1), normalize)
    try:
        observations = np.concatenate([collect_observations(random_env, half),
                                       policy_observations(model, agent_env, FOLD_CHECK_OBS - half)])
    finally:
        random_env.close()
        agent_env.close()
    check = check_export(model, folder, observations, stats)
    meta = {**meta, **check,
            "action_space": describe_action_space(model.action_space),
            "architecture": {"net_arch": model.policy.net_arch, "activation": activation_name(model.policy.activation_fn)},
            "normalize": normalize,
            "vec_normalize": None if stats is None else describe_stats(stats),
            "vec_normalize_folded": stats is not None,
            "dtype": "float32", "sha256": sha256_of(folder / WEIGHTS_FILE)}
    write_json(folder / META_FILE, meta)
    return json.loads((folder / META_FILE).read_text())


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
    """Train (or resume) one source and export it to ``zoo_dir/<name>``; return its metadata.

    The final evaluation (:data:`FINAL_EVAL_EPISODES` games on new environments, through the run's frozen
    normalisation where it has one) and every evaluation during training act as :func:`deterministic_eval`
    says; the random-policy baseline samples the action space uniformly (:func:`random_actions`). A NatureCNN
    agent is exported with :func:`zoo_rl.sources.write_compact` (float16 when that keeps every greedy action),
    any other with :func:`export_policy`. An off-policy run's ``buffer_size`` is capped at ``spec.steps`` (the same
    transitions, less memory), and its replay buffer is saved with each checkpoint
    (:func:`zoo_rl.training.keeps_replay_buffer`).

    :raises ValueError: ``spec.init`` for a run under VecNormalize, or what :func:`open_run` refuses.
    """
    task = spec.task
    name = spec.source_name
    run_dir = Path(runs_dir) / name
    init = spec.init_folder()
    eval_every = spec.eval_every or eval_every
    eval_episodes = spec.eval_episodes or eval_episodes
    checkpoint_every = spec.checkpoint_every or checkpoint_every
    params, n_envs, policy = hyperparams_for(Path(hyperparams_dir) / f"{spec.algo}.yml", task)
    if spec.algo not in ON_POLICY and "buffer_size" in params:
        # A replay buffer larger than the run never fills, so capping it at the run's steps changes no transition
        # it holds, only its memory and the size of the copy saved with each checkpoint (a continuation to more
        # steps keeps the capacity it started with).
        params["buffer_size"] = min(int(params["buffer_size"]), spec.steps)
    normalize = vec_normalize_kwargs(params)
    if init is not None and normalize is not None:
        raise ValueError(f"{name}: init={spec.init!r} cannot start a run under VecNormalize (normalize in the "
                         "hyperparameters): a compact source has its normalisation folded into its weights. Continue "
                         "its run folder instead (the same --runs-dir, more --steps).")
    run = RunSpec(run_dir=run_dir, algo=spec.algo, total_steps=spec.steps, hyperparams=params, policy=policy,
                  seed=spec.seed, checkpoint_every=checkpoint_every, eval_every=eval_every,
                  eval_episodes=eval_episodes, device=device)
    envs = open_run(run_dir, task, n_envs=n_envs, seed=spec.seed, backend=spec.env_backend,
                    eval_episodes=eval_episodes, record={"source": asdict(spec), "hyperparams": params},
                    normalize=normalize)
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

    deterministic = deterministic_eval(spec.algo, env.action_space)
    final_env = frozen_normalization(make_env(task, FINAL_EVAL_EPISODES, seed=spec.seed + 20_000), normalize)
    sync_normalization(model, final_env)
    final, _ = evaluate_policy(model, final_env, n_eval_episodes=FINAL_EVAL_EPISODES,
                               deterministic=deterministic, return_episode_rewards=True, warn=False)
    rand = source_random_returns(spec)
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
        "hyperparams": to_jsonable(params),
        "eval_return_mean": float(np.mean(final)),
        "eval_return_std": float(np.std(final)),
        "eval_episodes": len(final),
        "eval_deterministic": deterministic,
        "random_return_mean": float(np.mean(rand)),
        "random_return_std": float(np.std(rand)),
        "observation_shape": list(model.observation_space.shape),
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
    folder = Path(zoo_dir) / name
    if extractor:
        test_obs = collect_observations(make_env(task, 8, seed=spec.seed + 40_000), FP16_CHECK_OBS)
        dtype = torch.float16 if float16_is_exact(model, test_obs) else torch.float32
        meta.update(n_actions=int(env.action_space.n), layers=list(LAYERS))
        meta = write_compact(folder, extractor, heads, meta, dtype=dtype)
    else:
        meta = export_policy(model, task, folder, meta, normalize,
                             run_dir / VEC_NORMALIZE if normalize is not None else None, seed=spec.seed + 40_000)
    write_curve(Path(zoo_dir) / name / CURVE_FILE, load_evaluations(run_dir / EVALUATIONS))
    for venv in (env, eval_env, final_env):
        venv.close()
    return meta
