"""Rank the sources of a zoo for a target task before any transfer run.

:func:`rank_sources` scores every source from at most ``steps`` agent steps on the target
(default 10k), plus one shared run of the same length by a uniformly random policy. The kind of
ranking follows the target (:func:`image_task`):

- **image targets** (Atari, Lab2D) rank **NatureCNN sources** (:func:`zoo_rl.load_source`), whose
  features and action heads transfer across games through the meaning of their actions;
- **every other target** (MuJoCo bodies, classic-control systems) ranks **whole policies** of one family
  (:func:`zoo_rl.load_policy_source`, SB3 zips or compact folders holding the whole policy): actor-critic
  ones (PPO, A2C or TRPO agents, such as the MuJoCo zoo's) by default, SAC ones (such as the Pendulum zoo's)
  with ``family="sac"``. They must read the target's observations and act in its action space: a source
  whose spaces differ (another body) is refused, naming the shapes, since it can neither play the target
  nor read its observations for the probe.

Each source gets two scores:

- **zero-shot play** (the primary evidence). The source's own policy plays the target.
  NatureCNN sources: its extractor and action head, actions sampled as in training, each mapped to
  the target action with the same meaning (ALE's ``get_action_meanings``, Lab2D's action names); a
  combined Atari action the target lacks falls back to its largest part the target has
  (``UPRIGHTFIRE`` -> ``RIGHTFIRE`` in Pong, ``RIGHT`` in Breakout: a movement before ``FIRE``), else
  ``NOOP``. Whole policies: their actor (:class:`zoo_rl.multipolar.FrozenActor`, with the
  activation the source records), acting as the RL Baselines3 Zoo evaluates such agents
  (:func:`zoo_rl.training.deterministic_eval`): a Gaussian policy's mean clipped to the action
  bounds (a SAC actor's: squashed by tanh and scaled to the bounds), a categorical one's actions sampled. The score is the reward per agent step, the
  training reward of the target's agents: clipped to its sign on image targets (Atari's training
  reward, which the NatureCNN agents learned), raw elsewhere (MuJoCo agents learn the raw reward).
  A rate per step is defined whether or not an episode ends inside the budget (a MuJoCo episode
  lasts 1000 steps); its standard error comes from the independent environments. A source
  *transfers zero-shot* when its rate is above the random policy's by two standard errors.
- **value probe** (where zero-shot play says nothing). On the random policy's observations, a
  ridge regression from the source's features to the discounted return-to-go (of the same rewards,
  gamma 0.99), fitted on half of the environments and scored (R²) on the other half, both ways.
  The features are a NatureCNN's 512 outputs, or a whole policy's value latent (the output of its
  ``mlp_extractor.value_net`` trunk, the input of its ``value_net``; for SAC, which has no state-value
  network, the last hidden layer of its first Q network on the observation and the source's own
  deterministic action: the features from which it values its own policy there). It measures whether the
  source's features already encode what predicts reward on the target.

Ranking: the sources that transfer zero-shot come first, by reward rate; the others follow by
probe R². What it cannot see: how fast a source's features *adapt* under fine-tuning (a source
whose play is useless may still fine-tune well), effects that need more than ``steps`` steps to
show (rare rewards), and NatureCNN sources without an action head (a bare extractor, a CleanRL
file) or whose actions share no meaning with the target's (another family): those are ranked by
the probe alone. Validation against the fine-tunes of the published studies: ``docs/results.md``.

Every source is scored on its own (against the same seeded random-policy run), so a ranking stopped part-way
can go on from the sources it scored: ``rank_sources(..., scored=rows)`` plays only the others, and
``on_scored`` hands each row over as soon as it exists (the study runner keeps them in ``ranking.partial.csv``).
"""

from __future__ import annotations

import copy
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3.common.preprocessing import get_flattened_obs_dim, preprocess_obs
from stable_baselines3.common.vec_env import VecEnv

from envs.tasks import Task, make_env, resolve
from zoo_rl.multipolar import (FrozenActor, action_values, actor_shapes, check_actor_fits, recorded_activation,
                               source_actor, source_value_trunk)
from zoo_rl.policy_sources import FAMILIES, PolicySource, load_policy_source
from zoo_rl.sources import LAYERS, Source, load_source, read_compact, read_sb3_zip

#: Agent steps per source, and for the shared random-policy run.
RANK_STEPS = 10_000
#: Parallel environments of each run: the standard errors come from their independence.
RANK_ENVS = 8
#: Discount of the probe's return-to-go.
PROBE_GAMMA = 0.99
#: Ridge penalty of the probe, on standardised features.
PROBE_RIDGE = 100.0
#: Zero-shot play counts as evidence above this many standard errors over random play.
Z_THRESHOLD = 2.0
RANKING_COLUMNS = ["rank", "source", "basis", "zero_shot_rate", "zero_shot_se", "zero_shot_z", "zero_shot_return",
                   "zero_shot_episodes", "probe_r2", "shared_actions", "random_rate", "agent_steps", "seconds"]
#: The columns of one scored source, before the ranking orders them (``rank`` and ``basis`` come last).
SCORE_COLUMNS = [c for c in RANKING_COLUMNS if c not in ("rank", "basis")]
#: Name under which the shared random-policy run reports its progress (``on_play``).
RANDOM_POLICY = "random policy"
#: Task families whose observations are images: their zoos are NatureCNN sources (:func:`image_task`).
IMAGE_FAMILIES = ("atari", "lab2d")
#: The policy families (:data:`zoo_rl.policy_sources.FAMILIES`) whose whole policies the ranking scores.
POLICY_FAMILIES = ("actor-critic", "sac")
_ATARI_PARTS = re.compile(r"UP|DOWN|LEFT|RIGHT|FIRE")


@dataclass
class Rollout:
    """What a policy did in ``steps`` agent steps on ``n_envs`` environments."""

    rewards: np.ndarray  # (steps_per_env, n_envs) training rewards: sign-clipped on image targets, else raw
    dones: np.ndarray  # (steps_per_env, n_envs)
    observations: np.ndarray | None  # (steps_per_env, n_envs, *obs): images (C, H, W) uint8, when kept
    episode_returns: list[float]  # unclipped returns of the episodes that ended

    def rate(self) -> tuple[float, float]:
        """Mean reward per step and its standard error over the environments."""
        per_env = self.rewards.mean(axis=0)
        se = per_env.std(ddof=1) / np.sqrt(len(per_env)) if len(per_env) > 1 else 0.0
        return float(per_env.mean()), float(se)


def ranked_family(algo: str) -> str:
    """The family of the whole-policy sources that a study of ``algo`` ranks: ``sac`` for SAC, else ``actor-critic``
    (:func:`rank_sources`' ``family``)."""
    return "sac" if algo.lower() == "sac" else "actor-critic"


def image_task(task: Task) -> bool:
    """Whether ``task``'s observations are images (Atari, Lab2D): its zoo is ranked as NatureCNN sources, every
    other task's as whole actor-critic policies (see the module docstring)."""
    return task.family in IMAGE_FAMILIES


def action_meanings(venv: VecEnv) -> list[str]:
    """Names of the actions of ``venv``'s environments (ALE's, or Lab2D's ``component=value``)."""
    env = venv.get_attr("unwrapped", [0])[0]
    if hasattr(env, "get_action_meanings"):
        return list(env.get_action_meanings())
    actions = getattr(env, "_actions", None)
    if actions is None:
        raise ValueError(f"{type(env).__name__} does not name its actions.")
    return ["+".join(f"{k}={v}" for k, v in sorted(a.items()) if v) or "NOOP" for a in actions]


def action_map(source: Sequence[str], target: Sequence[str]) -> tuple[np.ndarray, int]:
    """For each source action, the target action of the same meaning (or its largest Atari part the
    target has, else the target's ``NOOP``, else action 0); and how many non-NOOP meanings map exactly."""
    index = {m: i for i, m in enumerate(target)}
    noop = index.get("NOOP", 0)
    parts = {m: frozenset(_ATARI_PARTS.findall(m)) for m in target}
    mapping, shared = [], 0
    for meaning in source:
        if meaning in index:
            mapping.append(index[meaning])
            shared += meaning != "NOOP"
            continue
        mine = frozenset(_ATARI_PARTS.findall(meaning))
        # the largest part; among equals a movement before FIRE, then the first
        subsets = [(len(p), len(p - {"FIRE"}), -i) for i, p in enumerate(parts.values()) if p and p <= mine]
        mapping.append(-max(subsets)[2] if subsets else noop)
    return np.asarray(mapping, dtype=np.int64), shared


def source_head(spec: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The action head ``(weight (A, 512), bias (A,))`` of a compact source or an SB3 zip, else None."""
    path = Path(spec)
    if path.is_dir():
        state, _ = read_compact(path)
        keys = ("head.action_net.weight", "head.action_net.bias")
    elif path.suffix == ".zip" and path.is_file():
        state = read_sb3_zip(path)[1]
        keys = ("action_net.weight", "action_net.bias")
    else:
        return None
    return (state[keys[0]].float(), state[keys[1]].float()) if all(k in state for k in keys) else None


def source_task(source: Source) -> Task | None:
    """The task a source was trained on, from its metadata (None when it does not say)."""
    game = source.meta.get("game")
    if not game:
        return None
    try:
        return resolve(game, source.meta.get("mode"), source.meta.get("difficulty"))
    except ValueError:
        return None


@torch.no_grad()
def features(source: Source, observations: np.ndarray) -> torch.Tensor:
    """NatureCNN features ``(N, 512)`` of ``observations`` ``(N, C, H, W)`` uint8 under ``source``."""
    x = torch.as_tensor(observations).float().div_(255.0)
    for layer, stride in zip(LAYERS[:3], (4, 2, 1)):
        x = F.relu(F.conv2d(x, source.state[f"{layer}.weight"], source.state[f"{layer}.bias"], stride))
    return F.relu(F.linear(x.flatten(1), source.state["linear.0.weight"], source.state["linear.0.bias"]))


def play(venv: VecEnv, steps: int, act, keep_observations: bool = False,
         on_step: Callable[[int], None] | None = None, report_every: int = 256, *, images: bool = True,
         clip_rewards: bool = True) -> Rollout:
    """Run ``act(observations (n, ...)) -> actions (n, ...)`` for ``steps`` agent steps in total;
    ``on_step(agent steps so far)`` at the start, about every ``report_every`` agent steps, and at the end.

    :param images: the environments' ``(n, H, W, C)`` image observations are handed to ``act`` (and kept)
        channels first, ``(n, C, H, W)``, as SB3 hands them to a CNN; ``False``: as the environments give them.
    :param clip_rewards: keep the rewards clipped to their sign (Atari's training reward); ``False``: raw.
    """
    n = venv.num_envs
    per_env = max(1, steps // n)
    every = max(1, report_every // n)
    obs = venv.reset()
    rewards = np.zeros((per_env, n), dtype=np.float32 if clip_rewards else np.float64)
    dones = np.zeros((per_env, n), dtype=bool)
    shape = (obs.shape[-1], *obs.shape[1:3]) if images else obs.shape[1:]
    kept = np.zeros((per_env, n, *shape), dtype=obs.dtype) if keep_observations else None
    returns: list[float] = []
    for t in range(per_env):
        if on_step is not None and t % every == 0:
            on_step(t * n)
        x = np.ascontiguousarray(obs.transpose(0, 3, 1, 2)) if images else obs
        if kept is not None:
            kept[t] = x
        obs, reward, done, infos = venv.step(act(x))
        rewards[t], dones[t] = np.sign(reward) if clip_rewards else reward, done
        returns += [float(i["episode"]["r"]) for i in infos if "episode" in i]
    if on_step is not None:
        on_step(per_env * n)
    return Rollout(rewards, dones, kept, returns)


def returns_to_go(rewards: np.ndarray, dones: np.ndarray, gamma: float = PROBE_GAMMA) -> np.ndarray:
    """Discounted return-to-go ``(T, n)``, cut at episode ends (``dones[t]``: the episode ended after step t)."""
    out = np.zeros_like(rewards, dtype=np.float64)
    running = np.zeros(rewards.shape[1])
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running * (~dones[t])
        out[t] = running
    return out


def probe_r2(feats: np.ndarray, targets: np.ndarray, ridge: float = PROBE_RIDGE) -> float:
    """Held-out R² of a ridge regression ``feats (T, n, D) -> targets (T, n)``: fitted on one half of the
    environments and scored on the other, both ways, averaged. Features are standardised on the fit half."""
    n = feats.shape[1]
    halves = (np.arange(n) < n // 2, np.arange(n) >= n // 2)
    scores = []
    for fit, test in (halves, halves[::-1]):
        x, y = feats[:, fit].reshape(-1, feats.shape[-1]), targets[:, fit].reshape(-1)
        xt, yt = feats[:, test].reshape(-1, feats.shape[-1]), targets[:, test].reshape(-1)
        mean, std = x.mean(0), x.std(0) + 1e-6
        x, xt = (x - mean) / std, (xt - mean) / std
        y_mean = y.mean()
        w = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ (y - y_mean))
        residual = ((yt - (xt @ w + y_mean)) ** 2).sum()
        total = ((yt - yt.mean()) ** 2).sum()
        scores.append(1.0 - residual / total if total > 0 else 0.0)
    return float(np.mean(scores))


def rank_sources(target: Task | str, zoo: Sequence[str | os.PathLike], steps: int = RANK_STEPS,
                 n_envs: int = RANK_ENVS, seed: int = 0, progress: bool = False,
                 scored: pd.DataFrame | None = None, on_scored: Callable[[dict[str, Any]], None] | None = None,
                 on_play: Callable[[str, int, int], None] | None = None,
                 family: str = "actor-critic") -> pd.DataFrame:
    """Score and rank the sources in ``zoo`` for ``target`` (see the module docstring).

    :param target: a task or a task name (``Pong``, ``Breakout-m4``, ``lab2d:commons_harvest``,
        ``mujoco:halfcheetah+mass=1.25``).
    :param zoo: on an image target, sources as :func:`zoo_rl.load_source` reads them (NatureCNN); on any other,
        whole policies of ``family`` as :func:`zoo_rl.load_policy_source` reads them, on the target's spaces.
    :param steps: agent steps per source (and for the random policy).
    :param scored: rows (:data:`SCORE_COLUMNS`) of sources scored already by a call with the same target,
        ``steps``, ``n_envs`` and ``seed``: kept as they are, those sources are not played again (the random
        policy is, unless every source is kept: its seeded run is the same).
    :param on_scored: called with each newly scored source's row as soon as it is scored.
    :param on_play: ``on_play(name, agent steps so far, steps)`` while a policy plays (the random policy is
        named :data:`RANDOM_POLICY`).
    :param family: on a target without image observations, the family of the whole-policy sources
        (:data:`POLICY_FAMILIES`): ``actor-critic`` (PPO, A2C, TRPO; the default) or ``sac``, the study's algorithm
        (:func:`ranked_family`); sources of any other family are refused.
    :return: one row per source, best first: columns :data:`RANKING_COLUMNS`. ``shared_actions`` counts the
        target actions a NatureCNN source's actions map onto by meaning (other than ``NOOP``); for a whole
        policy, the action values it shares with the target: all of them (the spaces match).
    :raises ValueError: an empty zoo, ``steps`` smaller than ``n_envs`` x 2; on a target without image
        observations, a source that is not of ``family`` or whose observation or action shapes are not
        the target's (before anything is played).
    """
    task = resolve(target) if isinstance(target, str) else target
    if len(zoo) == 0:
        raise ValueError("rank_sources needs at least one source.")
    if steps < 2 * n_envs or n_envs < 2:
        raise ValueError(f"steps ({steps}) must be at least 2 x n_envs and n_envs ({n_envs}) at least 2: the "
                         "standard errors and the probe's held-out half come from the separate environments.")
    kept = {str(r["source"]): {c: r.get(c, np.nan) for c in SCORE_COLUMNS}
            for r in (scored.to_dict("records") if scored is not None else [])}
    if family not in POLICY_FAMILIES:
        raise ValueError(f"family={family!r}: the whole-policy ranking scores {' or '.join(POLICY_FAMILIES)} sources.")
    scorer: _Scorer = (_NatureScorer if image_task(task) else _PolicyScorer)(task, steps, n_envs, seed, on_play, family)
    loaded = [(spec, scorer.load(spec)) for spec in zoo]
    todo = [source for _, source in loaded if source.name not in kept]
    if todo:  # the probe's observations and the zero-shot baseline
        scorer.prepare(todo)
    rows: list[dict[str, Any]] = []
    for spec, source in loaded:
        if source.name in kept:
            rows.append(kept[source.name])
            continue
        started = time.perf_counter()
        row = scorer.score(spec, source)
        row["seconds"] = round(time.perf_counter() - started, 1)
        rows.append(row)
        if on_scored is not None:
            on_scored(dict(row))
        if progress:
            print(f"  {source.name}: zero-shot z {row['zero_shot_z']:.1f}, probe R² {row['probe_r2']:.3f} "
                  f"({row['seconds']:.0f} s)", flush=True)
    table = pd.DataFrame(rows)
    table["basis"] = np.where(table["zero_shot_z"] >= Z_THRESHOLD, "zero-shot", "probe")
    zero_shot = table[table["basis"] == "zero-shot"].sort_values("zero_shot_rate", ascending=False)
    rest = table[table["basis"] == "probe"].sort_values("probe_r2", ascending=False)
    table = pd.concat([zero_shot, rest]).reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    table.attrs["random_seconds"] = scorer.random_seconds
    return table[RANKING_COLUMNS]


class _Scorer:
    """What both kinds of ranking share: the target's seeded environments, the random-policy baseline (run by
    :meth:`prepare`), the probe's targets on it, and the zero-shot statistics of a source's play."""

    #: image observations, channels first, and sign-clipped rewards (see :func:`play`)
    images = True

    def __init__(self, task: Task, steps: int, n_envs: int, seed: int,
                 on_play: Callable[[str, int, int], None] | None, family: str = "actor-critic") -> None:
        self.task, self.steps, self.n_envs, self.seed, self.on_play = task, steps, n_envs, seed, on_play
        self.family = family  # of whole-policy sources (rank_sources' family)
        self.random_seconds = float("nan")

    def load(self, spec: str | os.PathLike) -> Any:
        raise NotImplementedError

    def prepare(self, sources: list[Any]) -> None:
        raise NotImplementedError

    def score(self, spec: str | os.PathLike, source: Any) -> dict[str, Any]:
        raise NotImplementedError

    def env(self) -> VecEnv:
        return make_env(self.task, self.n_envs, seed=self.seed, backend="gym")

    def play(self, venv: VecEnv, name: str, act, keep: bool = False) -> Rollout:
        on_step = None if self.on_play is None else (lambda done: self.on_play(name, done, self.steps))
        return play(venv, self.steps, act, keep_observations=keep, on_step=on_step, images=self.images,
                    clip_rewards=self.images)

    def play_random(self, venv: VecEnv, act) -> None:
        """The random policy's run (its observations kept), its rate and the probe's targets."""
        start = time.perf_counter()
        self.random = self.play(venv, RANDOM_POLICY, act, keep=True)
        self.random_seconds = time.perf_counter() - start
        self.random_rate, self.random_se = self.random.rate()
        self.targets = returns_to_go(self.random.rewards, self.random.dones)

    def play_source(self, name: str, act) -> Rollout:
        venv = self.env()
        try:
            return self.play(venv, name, act)
        finally:
            venv.close()

    def row(self, name: str, feats: np.ndarray) -> dict[str, Any]:
        """A source's row with its probe score (``feats``: ``(N, D)`` on the random policy's observations, in
        their order) and no zero-shot play yet."""
        feats = feats.reshape(*self.random.rewards.shape, -1)
        return dict(source=name, probe_r2=probe_r2(feats, self.targets), random_rate=self.random_rate,
                    shared_actions=0, zero_shot_rate=np.nan, zero_shot_se=np.nan, zero_shot_z=np.nan,
                    zero_shot_return=np.nan, zero_shot_episodes=0, agent_steps=0)

    def zero_shot(self, rollout: Rollout) -> dict[str, Any]:
        rate, se = rollout.rate()
        return dict(zero_shot_rate=rate, zero_shot_se=se,
                    zero_shot_z=(rate - self.random_rate) / max(np.hypot(se, self.random_se), 1e-9),
                    zero_shot_return=float(np.mean(rollout.episode_returns)) if rollout.episode_returns else np.nan,
                    zero_shot_episodes=len(rollout.episode_returns), agent_steps=int(rollout.rewards.size))


class _NatureScorer(_Scorer):
    """NatureCNN sources on an image target: actions mapped by meaning, the probe on the 512 features."""

    def load(self, spec: str | os.PathLike) -> Source:
        return load_source(spec)

    def prepare(self, sources: list[Source]) -> None:
        rng = np.random.default_rng(self.seed)
        venv = self.env()
        try:
            self.meanings = action_meanings(venv)
            self.play_random(venv, lambda obs: rng.integers(len(self.meanings), size=len(obs)))
        finally:
            venv.close()
        self.frames = self.random.observations.reshape(-1, *self.random.observations.shape[2:])

    def score(self, spec: str | os.PathLike, source: Source) -> dict[str, Any]:
        row = self.row(source.name, features(source, self.frames).numpy())
        head, own = source_head(spec), source_task(source)
        if head is None or own is None or own.family != self.task.family:
            return row
        own_env = make_env(own, 1, seed=self.seed, backend="gym")
        try:
            mapping, shared = action_map(action_meanings(own_env), self.meanings)
        finally:
            own_env.close()
        if not shared or len(mapping) != head[0].shape[0]:
            return row
        weight, bias = head
        generator = torch.Generator().manual_seed(self.seed)

        def act(obs: np.ndarray) -> np.ndarray:
            logits = F.linear(features(source, obs), weight, bias)
            return mapping[torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0].numpy()]

        row.update(self.zero_shot(self.play_source(source.name, act)), shared_actions=shared)
        return row


class _PolicyScorer(_Scorer):
    """Whole policies (actor-critic or SAC) on the target's own spaces: their actor plays, the probe reads their value
    latent."""

    images = False

    def load(self, spec: str | os.PathLike) -> PolicySource:
        return load_policy_source(spec)

    def prepare(self, sources: list[PolicySource]) -> None:
        venv = self.env()
        try:
            self.observation_space, self.action_space = venv.observation_space, venv.action_space
            self.networks = {id(s): policy_networks(s, self.observation_space, self.action_space, self.family)
                             for s in sources}
            space = copy.deepcopy(self.action_space)
            space.seed(self.seed)
            self.play_random(venv, lambda obs: np.stack([space.sample() for _ in range(len(obs))]))
        finally:
            venv.close()
        observations = self.random.observations.reshape(-1, *self.random.observations.shape[2:])
        self.inputs = self.preprocess(observations)

    def preprocess(self, obs: np.ndarray) -> torch.Tensor:
        return preprocess_obs(torch.as_tensor(obs), self.observation_space).float()

    def score(self, spec: str | os.PathLike, source: PolicySource) -> dict[str, Any]:
        actor, value_trunk = self.networks[id(source)]
        with torch.no_grad():
            row = self.row(source.name, value_trunk(self.inputs).numpy())
        space = self.action_space
        if isinstance(space, spaces.Box):
            low, high = (torch.as_tensor(b, dtype=torch.float32).flatten() for b in (space.low, space.high))

            @torch.no_grad()
            def act(obs: np.ndarray) -> np.ndarray:  # as SB3's predict(deterministic=True) executes it
                mean = torch.clamp(actor(self.preprocess(obs)), low, high)
                return mean.numpy().reshape(len(obs), *space.shape)
        else:
            generator = torch.Generator().manual_seed(self.seed)

            @torch.no_grad()
            def act(obs: np.ndarray) -> np.ndarray:
                probs = torch.softmax(actor(self.preprocess(obs)), -1)
                return torch.multinomial(probs, 1, generator=generator)[:, 0].numpy()

        row.update(self.zero_shot(self.play_source(source.name, act)), shared_actions=action_values(space))
        return row


def policy_networks(source: PolicySource, observation_space: spaces.Space,
                    action_space: spaces.Space, family: str = "actor-critic") -> tuple[torch.nn.Module, torch.nn.Module]:
    """A whole-policy source's frozen actor (its ``action_net`` output; a SAC actor's deterministic action, in the
    action space's units) and value trunk (its value latent), with the activation it records
    (:func:`zoo_rl.multipolar.recorded_activation`), for a target of these spaces.

    :param family: the family the ranking scores (:data:`POLICY_FAMILIES`).
    :raises ValueError: a source of another family, or whose observation or action shapes are not the target's
        (naming the layers and shapes).
    """
    where = f"Source {source.name!r} ({source.origin})"
    if source.family != family:
        what = FAMILIES.get(source.family or "", "no SB3 policy this library knows")
        why = (f"actor-critic sources ({FAMILIES['actor-critic']}), whose action_net plays the target and whose value "
               "network's latent the probe reads" if family == "actor-critic" else
               f"{FAMILIES[family]} sources, the study's algorithm")
        raise ValueError(f"{where} is a {what} policy: the whole-policy ranking scores {why}. Leave it out of the "
                         "zoo.")
    rule = ("A whole-policy source plays the target with its own actions and reads its observations, so it must have "
            "the target's observation and action shapes: a source of another body or task cannot; leave it out "
            "of this target's zoo.")
    if family == "sac":
        return sac_networks(source, observation_space, action_space, rule)
    actor, trunk = source_actor(source), source_value_trunk(source)
    check_actor_fits(source.name, source.origin, actor_shapes(actor), observation_space, action_space,
                     continuous="log_std" in source.state, target="this target's ranking", rule=rule)
    flat = get_flattened_obs_dim(observation_space)
    reads = next(iter(trunk.values()))[0].shape[1] if trunk else source.state["value_net.weight"].shape[1]
    if not any(k.startswith("features_extractor.") for k in trunk) and reads != flat:
        raise ValueError(f"Source {source.name!r} ({source.origin}) does not fit this target's ranking: its value "
                         f"network reads {reads} values, and the observations {observation_space}, flattened, give "
                         f"{flat}.\n{rule}")
    activation = recorded_activation(source)
    return (FrozenActor(actor_shapes(actor), activation, actor).eval(),
            FrozenActor(actor_shapes(trunk), activation, trunk).eval())


class SquashedActor(torch.nn.Module):
    """A SAC actor's deterministic action in the units of a ``Box`` action space: the tanh of its Gaussian mean,
    scaled from ``[-1, 1]`` to ``[low, high]``, what SB3's ``predict(deterministic=True)`` executes."""

    def __init__(self, mean: FrozenActor, low: np.ndarray, high: np.ndarray) -> None:
        super().__init__()
        self.mean = mean
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32).flatten())
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32).flatten())

    def squashed(self, x: torch.Tensor) -> torch.Tensor:
        """The action in ``[-1, 1]``, as SAC's critics read it (its replay buffer holds actions in these units)."""
        return torch.tanh(self.mean(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.low + (self.squashed(x) + 1.0) * 0.5 * (self.high - self.low)


class CriticLatent(torch.nn.Module):
    """The last hidden layer of a SAC critic's Q network on the observation and the actor's own squashed action."""

    def __init__(self, trunk: FrozenActor, actor: SquashedActor) -> None:
        super().__init__()
        self.trunk, self.actor = trunk, actor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(torch.cat([x.flatten(1), self.actor.squashed(x)], dim=1))


def sac_networks(source: PolicySource, observation_space: spaces.Space, action_space: spaces.Space,
                 rule: str) -> tuple[SquashedActor, CriticLatent]:
    """A SAC source's deterministic actor (:class:`SquashedActor`) and the latent of its first Q network on its own
    actions (:class:`CriticLatent`), with the activation its metadata records, else SB3's SAC default (ReLU).

    :raises ValueError: an action space that is no ``Box``, a source with a features extractor with weights or with
        gSDE's clipped mean (only ``MlpPolicy`` sources without gSDE are run), or shapes that are not the target's.
    """
    state, where = source.state, f"Source {source.name!r} ({source.origin})"
    if not isinstance(action_space, spaces.Box):
        raise ValueError(f"{where} is a SAC policy, which acts in continuous (Box) spaces; the target's actions are "
                         f"{action_space}.")
    if "actor.mu.weight" not in state or any("features_extractor." in k for k in state):
        raise ValueError(f"{where} is not a plain SAC MlpPolicy (an actor.mu layer, no features extractor with "
                         "weights, no gSDE): the ranking runs only those. Leave it out of the zoo.")

    def layers(prefix: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        pattern = re.compile(re.escape(prefix) + r"(\d+)\.weight")
        indices = sorted(int(m.group(1)) for k in state if (m := pattern.fullmatch(k)))
        return {f"{prefix}{i}": (state[f"{prefix}{i}.weight"], state[f"{prefix}{i}.bias"]) for i in indices}

    actor = {**layers("actor.latent_pi."), "action_net": (state["actor.mu.weight"], state["actor.mu.bias"])}
    check_actor_fits(source.name, source.origin, actor_shapes(actor), observation_space, action_space,
                     continuous=True, target="this target's ranking", rule=rule)
    q_net = layers("critic.qf0.")
    trunk = dict(list(q_net.items())[:-1])  # every layer but the Q output
    reads = get_flattened_obs_dim(observation_space) + action_values(action_space)
    first = next(iter(q_net.values()))[0] if q_net else None
    if first is None or first.shape[1] != reads:
        shape = "none" if first is None else f"{tuple(first.shape)}, which reads {first.shape[1]} values"
        raise ValueError(f"{where} does not fit this target's ranking: its critic's first layer (critic.qf0.0.weight) "
                         f"is {shape}, and the observations {observation_space}, flattened, with the actions "
                         f"{action_space} give {reads}.\n{rule}")
    architecture = source.meta.get("architecture")
    activation = recorded_activation(source) if isinstance(architecture, dict) and architecture.get("activation") \
        else "relu"
    mean = FrozenActor(actor_shapes(actor), activation, actor).eval()
    squashed = SquashedActor(mean, action_space.low, action_space.high).eval()
    return squashed, CriticLatent(FrozenActor(actor_shapes(trunk), activation, trunk), squashed).eval()


def ranking_order(ranking: pd.DataFrame, names: Sequence[str]) -> list[int]:
    """Indices into ``names`` (the zoo's source names, in zoo order), best-ranked first.

    :raises ValueError: the ranking does not rank exactly these sources.
    """
    ranked = list(ranking.sort_values("rank")["source"])
    if sorted(ranked) != sorted(names):
        raise ValueError(f"The ranking ranks {sorted(ranked)}, not this zoo's sources {sorted(names)}: delete the "
                         "study's ranking.csv to recompute it.")
    return [list(names).index(n) for n in ranked]
