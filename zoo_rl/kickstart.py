"""Kickstarting (Schmitt et al., 2018): distil the zoo's policies into a student while it learns.

The student's loss gains a distillation term towards one or more frozen teachers' action
distributions, on the student's own states (the minibatches of its rollouts, as DAgger labels them: the term
helps where the teachers' actions on those states lead back to the teachers' play, and teaches nothing useful in
states the teachers cannot recover from; ``experiments/kickstart_probe.py`` measures which states a student is
in):

    loss = PPO's (or A2C's) loss + lambda(t) * mean_i  sum_k w_k KL(teacher_k(x_i) || student(x_i))

For discrete actions KL(p || pi) differs from the cross-entropy -sum_a p(a) log pi(a) by the
teacher's entropy, a constant: the two have the same gradient. For continuous actions (SB3's diagonal
Gaussian policies) it is the closed-form KL between the teacher's and the student's Gaussians, summed
over action dimensions. ``lambda(t)`` decays linearly
from ``kickstart_coef`` (default 30) to 0 over ``kickstart_steps`` agent steps (default: all of the
first ``learn()`` call's steps), so the student ends on its own reward. The defaults are the schedule
chosen by experiment (``experiments/kickstart_grid.py``: the best of eight on two Atari targets with a
related teacher). At such a weight the update is mostly distillation until late in the run: the
gradient is clipped by its norm (``max_grad_norm``), so the distillation term sets its direction while
``lambda`` is large against the PPO (or A2C) loss. The teacher weights ``w_k`` sum
to 1: one teacher (``kickstart``), or the whole zoo weighted by the ranking's zero-shot evidence
(:func:`ranking_weights`: the Kickstarting paper's population variant with weights from the
ranking instead of population-based training).

How the term enters SB3's loss without rewriting its ``train()``: PPO and A2C both add
``ent_coef * -mean(entropy)`` with the entropy returned by ``policy.evaluate_actions``. During
``train()`` the student's ``evaluate_actions`` returns

    entropy - (lambda / ent_coef) * (KL - stopgrad(KL))

whose value is the entropy itself (the logged entropy loss is unchanged) and whose gradient adds
exactly ``lambda * grad mean(KL)`` to the loss's. The student's action distribution is the one
``evaluate_actions`` built (captured from ``_get_action_dist_from_latent``), so the features are
computed once. This needs ``ent_coef > 0`` (SB3's Atari default is 0.01); with ``ent_coef=0`` the
algorithm refuses to start. Between calls of ``train()`` nothing of the policy is changed.

The teachers see each rollout once: their outputs on the whole rollout buffer are computed at the
first minibatch of a ``train()`` call and looked up by the minibatch's indices afterwards (captured
from the buffer's ``_get_samples``), instead of once per epoch. The update is the same either way.

Teachers are frozen, live beside the policy (never inside it), and are not saved: a saved
kickstarted model loads as its algorithm with the teachers' files gone, and continues training
only if teachers are given again (or the weight has decayed to 0).

Two kinds of teachers:

- a **NatureCNN zoo source** (:class:`SourceTeacher`, :func:`load_teacher`): its extractor and
  action head, its actions mapped onto the target's by meaning, as the ranking maps them
  (:func:`zoo_rl.ranking.action_map`): each source action's probability goes to the target action
  of the same meaning (or its largest Atari part the target has, else ``NOOP``). A teacher none of
  whose actions (other than ``NOOP``) has a meaning among the target's is refused. This is how an
  agent of one Atari game teaches another.
- a **whole actor-critic policy** (:class:`PolicyTeacher`, :func:`load_policy_teacher`): a PPO,
  A2C or TRPO agent of any architecture (an SB3 zip, or a compact folder holding the whole policy,
  such as the MuJoCo zoo's), run frozen from its tensors as MULTIPOLAR runs its sources
  (:class:`zoo_rl.multipolar.FrozenActor`), with the activation it records. It teaches its own
  action distribution, so it must read the target's observations and act in its action space
  (no mapping: a continuous-control agent's action dimensions have no names to map by).
  Off-policy agents (SAC, TD3, ...) are refused: their actors are no Gaussian or categorical
  ``action_net`` distribution of the kind the student's is.

:func:`load_any_teacher` chooses for a study's zoo: a source holding a NatureCNN teaches an image
target (Atari, Lab2D) by meaning; any other source, or any source of a target whose observations
are not images (MuJoCo), teaches as a whole policy.

DQN and QR-DQN distil QDagger-style (:mod:`zoo_rl.qdagger`, on the same teachers): their loss has no policy
distribution and no entropy term to carry this module's gradient.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import gymnasium as gym
from gymnasium import spaces
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.distributions import (CategoricalDistribution, DiagGaussianDistribution,
                                                    Distribution)
from stable_baselines3.common.preprocessing import is_image_space, is_image_space_channels_first, preprocess_obs
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecTransposeImage
from torch import nn

from zoo_rl.multipolar import FrozenActor, action_values, actor_shapes, check_actor_fits, resolve_activation, source_actor
from zoo_rl.policy_sources import FAMILIES, load_policy_source
from zoo_rl.sources import LAYERS, load_source

#: The strides of NatureCNN's three convolutions.
_STRIDES = (4, 2, 1)
#: Algorithm families (:data:`zoo_rl.policy_sources.FAMILIES`) of off-policy agents, which cannot teach.
OFF_POLICY_FAMILIES = ("sac", "tqc", "td3", "crossq", "dqn", "qrdqn")


class Teacher(nn.Module):
    """A frozen policy over the *target's* actions, on preprocessed observations ``(B, ...)``.

    A discrete teacher implements :meth:`probs`: action probabilities ``(B, n_actions)``; a continuous one
    implements :meth:`gaussian`: the mean and standard deviation ``(B, action_dim)`` each of its diagonal
    Gaussian. :meth:`output` is what the distillation term reads. :class:`SourceTeacher` is a NatureCNN
    zoo source, :class:`PolicyTeacher` a whole actor-critic policy."""

    name: str = "teacher"

    def probs(self, obs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} is not a discrete teacher (it implements no probs()).")

    def gaussian(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} is not a continuous teacher (it implements no gaussian()).")

    @property
    def continuous(self) -> bool:
        return type(self).gaussian is not Teacher.gaussian

    def output(self, obs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(probs,)`` of a discrete teacher, ``(mean, std)`` of a continuous one."""
        return tuple(self.gaussian(obs)) if self.continuous else (self.probs(obs),)


class SourceTeacher(Teacher):
    """A NatureCNN zoo source with its action head, its actions mapped onto the target's.

    :param name: the source's name.
    :param extractor: NatureCNN tensors in :data:`zoo_rl.sources.LAYERS` naming.
    :param head: ``(weight (S, 512), bias (S,))`` of the source's action head.
    :param mapping: ``(S,)`` target action of each source action.
    :param n_actions: the target's number of actions.
    """

    def __init__(self, name: str, extractor: dict[str, torch.Tensor], head: tuple[torch.Tensor, torch.Tensor],
                 mapping: np.ndarray, n_actions: int) -> None:
        super().__init__()
        self.name = name
        for layer in LAYERS:  # buffers: frozen, and out of every optimizer
            self.register_buffer(f"{layer.replace('.', '_')}_weight", extractor[f"{layer}.weight"].float().clone())
            self.register_buffer(f"{layer.replace('.', '_')}_bias", extractor[f"{layer}.bias"].float().clone())
        self.register_buffer("head_weight", head[0].float().clone())
        self.register_buffer("head_bias", head[1].float().clone())
        mapping = torch.as_tensor(np.asarray(mapping), dtype=torch.long)
        if mapping.numel() != self.head_weight.shape[0] or int(mapping.max()) >= n_actions or int(mapping.min()) < 0:
            raise ValueError(f"{name}: the action map {mapping.tolist()} does not fit {self.head_weight.shape[0]} source "
                             f"and {n_actions} target actions.")
        self.register_buffer("mapping", mapping)
        self.n_actions = int(n_actions)

    @torch.no_grad()
    def probs(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float()
        for layer, stride in zip(LAYERS[:3], _STRIDES):
            key = layer.replace(".", "_")
            x = F.relu(F.conv2d(x, getattr(self, f"{key}_weight"), getattr(self, f"{key}_bias"), stride))
        x = F.relu(F.linear(x.flatten(1), self.linear_0_weight, self.linear_0_bias))
        source = torch.softmax(F.linear(x, self.head_weight, self.head_bias), dim=-1)
        return torch.zeros(len(source), self.n_actions, dtype=source.dtype).index_add_(1, self.mapping, source)


def load_teacher(spec: str | os.PathLike, target_meanings: Sequence[str], name: str | None = None) -> SourceTeacher:
    """A zoo source (compact folder or SB3 zip with its action head) as a teacher of a target whose
    actions are named ``target_meanings`` (``env.unwrapped.get_action_meanings()``).

    :raises ValueError: the source has no action head, does not say which game it plays, or none of its
        actions has a meaning among the target's.
    """
    from envs.tasks import make_env
    from zoo_rl.ranking import action_map, action_meanings, source_head, source_task

    source = load_source(spec, name)
    head = source_head(spec)
    if head is None:
        raise ValueError(f"{source.name}: no action head in {spec}; a teacher needs the source's policy "
                         "(a compact zoo folder or an SB3 zip of a PPO/A2C agent).")
    task = source_task(source)
    if task is None:
        raise ValueError(f"{source.name}: its metadata names no game, so its actions cannot be mapped onto the "
                         "target's; use a compact zoo source (meta.json), load it with load_policy_teacher if it "
                         "acts in the target's own action space, or leave it out of the teachers.")
    env = make_env(task, 1, seed=0)
    try:
        meanings = action_meanings(env)
    finally:
        env.close()
    mapping, shared = action_map(meanings, list(target_meanings))
    if shared == 0:
        raise ValueError(f"{source.name}: none of its actions {meanings} has a meaning among the target's "
                         f"{list(target_meanings)}; it cannot teach this target.")
    return SourceTeacher(source.name, source.state, head, mapping, len(target_meanings))


class PolicyTeacher(Teacher):
    """A whole actor-critic policy (PPO, A2C, TRPO) acting in the target's own spaces, run frozen from its tensors.

    Its actor (features extractor, ``mlp_extractor.policy_net``, ``action_net``) is a
    :class:`zoo_rl.multipolar.FrozenActor`, as MULTIPOLAR runs its sources. A continuous teacher's
    :meth:`gaussian` is SB3's ``DiagGaussianDistribution`` of the source: mean the ``action_net``
    output, standard deviation ``exp(log_std)`` (state-independent) for every observation; a discrete
    teacher's :meth:`probs` is the softmax of its ``action_net`` logits. Everything is a buffer.

    :param name: the source's name.
    :param actor: the actor's layers ``{layer: (weight, bias)}`` in forward order
        (:func:`zoo_rl.multipolar.source_actor`).
    :param activation: the activation of its ``policy_net`` layers (a name of :data:`zoo_rl.policy_sources.ACTIVATIONS`).
    :param log_std: ``(action_dim,)``: a Gaussian teacher's log standard deviations; ``None``: a categorical one.
    :raises ValueError: a ``log_std`` that is not one value per ``action_net`` output.
    """

    def __init__(self, name: str, actor: dict[str, tuple[torch.Tensor, torch.Tensor]], activation: str,
                 log_std: torch.Tensor | None = None) -> None:
        super().__init__()
        self.name = name
        self.actor = FrozenActor(actor_shapes(actor), activation, actor)
        outputs = actor["action_net"][0].shape[0]
        if log_std is not None:
            log_std = torch.as_tensor(log_std).detach().to(torch.float32).clone()
            if log_std.shape != (outputs,):
                raise ValueError(f"{name}: log_std has shape {tuple(log_std.shape)}, but the action_net gives {outputs} "
                                 "values: a Gaussian teacher has one log standard deviation per action dimension.")
        self.register_buffer("log_std", log_std)

    @property
    def continuous(self) -> bool:
        return self.log_std is not None

    @torch.no_grad()
    def gaussian(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.log_std is None:
            return super().gaussian(obs)
        mean = self.actor(obs.float())
        return mean, self.log_std.exp().expand_as(mean)

    @torch.no_grad()
    def probs(self, obs: torch.Tensor) -> torch.Tensor:
        if self.log_std is not None:
            return super().probs(obs)
        return torch.softmax(self.actor(obs.float()), dim=-1)


def load_policy_teacher(spec: str | os.PathLike, observation_space: spaces.Space, action_space: spaces.Space,
                        name: str | None = None, activation: str | type[nn.Module] | None = None,
                        vec_normalize: str | os.PathLike | None = None) -> PolicyTeacher:
    """A whole actor-critic source as the teacher of a target with these spaces (the student's
    ``model.observation_space`` and ``model.action_space``: for images, channels first as SB3 sees them).

    :param spec: what :func:`zoo_rl.load_policy_source` reads: an SB3 zip, a compact folder holding the whole
        policy (``head.*``), a hub id.
    :param activation: the activation of the source's ``policy_net`` layers; default: the one it records
        (:func:`zoo_rl.multipolar.recorded_activation`: ``meta.json``'s ``architecture``, an SB3 zip's
        ``policy_kwargs``), else SB3's tanh.
    :param vec_normalize: the source's ``vecnormalize.pkl`` when it was trained under ``VecNormalize`` and the
        statistics are not folded in yet (compact folders of the project's zoos have them folded).
    :raises ValueError: an off-policy source (SAC, TD3, ... : kickstarting distils PPO/A2C-family policies), a
        source using gSDE, a discrete teacher for continuous actions or the reverse, a source whose observation
        or action shape differs from the target's (naming the layers and shapes), an unknown activation, or an
        action space other than Box and Discrete.
    :raises SourceUnavailable: the source does not exist.
    """
    source = load_policy_source(spec, name, vec_normalize=vec_normalize)
    where = f"Source {source.name!r} ({source.origin})"
    if source.family != "actor-critic":
        what = (f"an off-policy {FAMILIES[source.family]} policy" if source.family in OFF_POLICY_FAMILIES
                else "no actor-critic policy this library knows")
        raise ValueError(f"{where} is {what}: kickstarting distils PPO/A2C-family policies "
                         f"({FAMILIES['actor-critic']}), whose action_net gives the Gaussian or categorical "
                         "distribution the student's loss compares with its own. Leave it out of the teachers.")
    action_values(action_space)
    log_std = source.state.get("log_std")
    if log_std is not None and log_std.ndim != 1:
        raise ValueError(f"{where} uses state-dependent exploration (gSDE: log_std of shape {tuple(log_std.shape)}); "
                         "a teacher is a diagonal Gaussian with one log standard deviation per action dimension.")
    actor = source_actor(source)
    check_actor_fits(source.name, source.origin, actor_shapes(actor), observation_space, action_space,
                     continuous=log_std is not None, target="this target as a teacher",
                     rule="A teacher distils its own action distribution, action by action, so it must read the "
                          "target's observations and act in its action space: kickstart a target of the source's "
                          "own observation and action shapes, or leave the source out of the teachers.")
    return PolicyTeacher(source.name, actor, resolve_activation(source, activation), log_std)


def load_any_teacher(spec: str | os.PathLike, env: VecEnv | gym.Env, name: str | None = None) -> Teacher:
    """The teacher a study's zoo source makes for the target ``env`` (its environments, any wrapper).

    The rule: where the target's observations are images (Atari, Lab2D) and the source holds a NatureCNN (it
    reads as a :func:`zoo_rl.load_source` zoo source), a :class:`SourceTeacher` (:func:`load_teacher`), its
    actions mapped onto the target's by meaning (:func:`zoo_rl.ranking.action_meanings` of ``env``); otherwise
    a :class:`PolicyTeacher` (:func:`load_policy_teacher`) on ``env``'s spaces, which must be the source's own
    (image observations channels first, as the student sees them).

    :raises ValueError: what :func:`load_teacher` or :func:`load_policy_teacher` refuses.
    """
    observation_space = env.observation_space
    if is_image_space(observation_space, check_channels=False):
        try:
            load_source(spec, name)
            holds_nature_cnn = True
        except ValueError:
            holds_nature_cnn = False
        if holds_nature_cnn:
            from zoo_rl.ranking import action_meanings

            venv = env if isinstance(env, VecEnv) else DummyVecEnv([lambda: env])
            return load_teacher(spec, action_meanings(venv), name)
        if not is_image_space_channels_first(observation_space):
            observation_space = VecTransposeImage.transpose_space(observation_space)
    return load_policy_teacher(spec, observation_space, env.action_space, name)


def ranking_weights(ranking: pd.DataFrame, names: Sequence[str]) -> list[float]:
    """Teacher weights from a ranking (``ranking.csv`` of :func:`zoo_rl.ranking.rank_sources`): each source's
    zero-shot evidence above random play (``zero_shot_z``, its standard errors over the random policy's
    reward rate), floored at 0, normalised to sum 1; equal weights when no source plays above random.

    :raises ValueError: a name missing from the ranking.
    """
    by_name = ranking.set_index("source")
    missing = [n for n in names if n not in by_name.index]
    if missing:
        raise ValueError(f"sources {missing} are not in the ranking (it has {list(by_name.index)}).")
    z = np.array([max(0.0, float(by_name.loc[n, "zero_shot_z"])) if pd.notna(by_name.loc[n, "zero_shot_z"]) else 0.0
                  for n in names])
    if z.sum() <= 0:
        return [1.0 / len(names)] * len(names)
    return (z / z.sum()).tolist()


def distillation_kl(student: Distribution, teacher_outputs: Sequence[torch.Tensor | Sequence[torch.Tensor]],
                    weights: Sequence[float]) -> torch.Tensor:
    """Per-sample ``sum_k w_k KL(teacher_k || student)`` ``(B,)``, differentiable in the student.

    :param student: SB3's action distribution of the student on the batch: categorical, or diagonal Gaussian.
    :param teacher_outputs: per teacher, :meth:`Teacher.output` on the batch: ``(B, A)`` probabilities (a bare
        tensor or ``(probs,)``) for a categorical student, ``(mean, std)`` ``(B, D)`` each for a Gaussian one.
    :raises ValueError: another distribution (e.g. gSDE's), or teacher outputs of the other kind.
    """
    outputs = [(o,) if torch.is_tensor(o) else tuple(o) for o in teacher_outputs]
    if isinstance(student, CategoricalDistribution):
        if any(len(o) != 1 for o in outputs):
            raise ValueError("A discrete student distils discrete teachers (action probabilities); a continuous "
                             "teacher (mean, std) cannot teach it.")
        log_pi = student.distribution.logits  # normalised log-probabilities
        total = torch.zeros(log_pi.shape[0], dtype=log_pi.dtype, device=log_pi.device)
        for (p,), w in zip(outputs, weights):
            p = p.to(log_pi.device, log_pi.dtype)
            total = total + w * (torch.xlogy(p, p) - p * log_pi).sum(-1)
        return total
    if type(student) is DiagGaussianDistribution:
        if any(len(o) != 2 for o in outputs):
            raise ValueError("A continuous student distils continuous teachers (mean, std); a discrete teacher "
                             "(action probabilities) cannot teach it.")
        mu, sigma = student.distribution.loc, student.distribution.scale
        total = torch.zeros(mu.shape[0], dtype=mu.dtype, device=mu.device)
        for (mean, std), w in zip(outputs, weights):
            mean, std = mean.to(mu.device, mu.dtype), std.to(mu.device, mu.dtype)
            kl = torch.log(sigma / std) + (std ** 2 + (mean - mu) ** 2) / (2 * sigma ** 2) - 0.5
            total = total + w * kl.sum(-1)
        return total
    raise ValueError(f"Kickstarting distils categorical and diagonal Gaussian policies; the student's distribution "
                     f"is {type(student).__name__} (with use_sde=True PPO's is state-dependent: turn it off).")


class DistillationMixin:
    """Frozen teachers beside an SB3 algorithm, and the weight of a distillation term that decays over training:
    what Kickstarting (:class:`KickstartMixin`, on-policy) and QDagger (:mod:`zoo_rl.qdagger`, value-based) share.

    :param teachers: :class:`Teacher` modules (e.g. from :func:`load_any_teacher`); empty: plain training.
    :param teacher_weights: one weight per teacher (normalised to sum 1); default: equal.
    :param kickstart_coef: the distillation weight at the start, ``lambda(0)`` (default: the class's
        :attr:`default_coef`).
    :param kickstart_steps: agent steps over which the weight decays linearly to 0, counted from the
        model's step count when it first trains (default: all of the first ``learn()`` call's steps).
    """

    #: ``lambda(0)`` when none is given.
    default_coef: float = 1.0

    def __init__(self, *args: Any, teachers: Sequence[Teacher] = (), teacher_weights: Sequence[float] | None = None,
                 kickstart_coef: float | None = None, kickstart_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_teachers(teachers, teacher_weights)
        if kickstart_coef is None:
            kickstart_coef = self.default_coef
        if kickstart_coef < 0 or not math.isfinite(kickstart_coef):
            raise ValueError(f"kickstart_coef must be a finite number >= 0, got {kickstart_coef}.")
        if kickstart_steps is not None and kickstart_steps <= 0:
            raise ValueError(f"kickstart_steps must be positive (or None: all of learn()'s steps), got {kickstart_steps}.")
        self.kickstart_coef = float(kickstart_coef)
        self.kickstart_steps = kickstart_steps
        self.kickstart_start: int | None = None

    def set_teachers(self, teachers: Sequence[Teacher], weights: Sequence[float] | None = None) -> None:
        """Give (or give again, after ``load``) the teachers and their weights."""
        teachers = list(teachers)
        if weights is None:
            weights = [1.0] * len(teachers)
        weights = [float(w) for w in weights]
        if len(weights) != len(teachers) or any(w < 0 for w in weights) or (teachers and sum(weights) <= 0):
            raise ValueError(f"teacher_weights must be one weight >= 0 per teacher, not all 0; got {weights} for "
                             f"{len(teachers)} teachers.")
        continuous = isinstance(getattr(self, "action_space", None), spaces.Box)  # load() sets it after __init__
        wrong = [t.name for t in teachers if t.continuous != continuous]
        if wrong:
            raise ValueError(f"teachers {wrong} are {'discrete' if continuous else 'continuous'}, the student's "
                             f"actions ({self.action_space}) are not: a teacher must act in the student's action space.")
        for teacher in teachers:
            teacher.requires_grad_(False).eval().to(self.device)
        self.teachers = teachers
        self.teacher_weights = [w / sum(weights) for w in weights] if teachers else []

    def _excluded_save_params(self) -> list[str]:
        return super()._excluded_save_params() + ["teachers"]

    def _setup_learn(self, total_timesteps: int, *args: Any, **kwargs: Any) -> Any:
        out = super()._setup_learn(total_timesteps, *args, **kwargs)
        if self.kickstart_start is None:
            self.kickstart_start = int(self.num_timesteps)
            if self.kickstart_steps is None:
                self.kickstart_steps = max(1, int(self._total_timesteps - self.num_timesteps))
        normalizer = self.get_vec_normalize_env()
        if self.teachers and normalizer is not None and normalizer.norm_obs:
            raise ValueError("The student trains on VecNormalize's normalised observations, which its teachers were "
                             "not trained on: distil with norm_obs=False (teachers from compact zoo folders "
                             "read raw observations, their own normalisation folded in).")
        return out

    def kickstart_weight(self) -> float:
        """``lambda(t)``: ``kickstart_coef`` decaying linearly to 0 over ``kickstart_steps`` steps."""
        if self.kickstart_start is None or not self.kickstart_steps:
            return self.kickstart_coef
        done = (self.num_timesteps - self.kickstart_start) / self.kickstart_steps
        return self.kickstart_coef * max(0.0, 1.0 - done)

    def _teacher_inputs(self, obs: torch.Tensor) -> torch.Tensor:
        """Observations as the policy's networks read them (images scaled), which is how teachers read them."""
        return preprocess_obs(obs, self.observation_space, normalize_images=self.policy.normalize_images)


class KickstartMixin(DistillationMixin):
    """Adds the kickstarting term to an SB3 on-policy algorithm whose loss has an entropy bonus (PPO, A2C); the
    teachers and the weight's schedule as :class:`DistillationMixin` (``kickstart_coef`` defaults to 30)."""

    default_coef = 30.0

    def _setup_learn(self, total_timesteps: int, *args: Any, **kwargs: Any) -> Any:
        out = super()._setup_learn(total_timesteps, *args, **kwargs)
        if self.teachers and self.kickstart_coef > 0 and self.ent_coef <= 0:
            raise ValueError("Kickstarting adds its gradient where SB3 adds the entropy bonus: it needs ent_coef > 0 "
                             f"(got {self.ent_coef}); e.g. ent_coef=0.01 as the RL Baselines3 Zoo's Atari settings.")
        return out

    def train(self) -> None:
        weight = self.kickstart_weight() if self.teachers else 0.0
        self.logger.record("train/kickstart_weight", weight)
        if weight <= 0:
            return super().train()
        policy, buffer = self.policy, self.rollout_buffer
        evaluate, get_distribution = policy.evaluate_actions, policy._get_action_dist_from_latent
        get_samples = buffer._get_samples
        built: list[Distribution] = []
        kls: list[float] = []
        batches: list[np.ndarray] = []
        cache: list[tuple[torch.Tensor, ...]] = []

        def record_batch(batch_inds: np.ndarray, *args: Any, **kwargs: Any) -> Any:
            batches.append(batch_inds)
            return get_samples(batch_inds, *args, **kwargs)

        def teacher_outputs(obs: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
            if not self.cache_teachers or not batches or isinstance(buffer.observations, dict):  # this batch only
                x = self._teacher_inputs(obs)
                return [t.output(x) for t in self.teachers]
            if not cache:
                cache.extend(self._teacher_outputs_on(buffer.observations))
            index = torch.as_tensor(batches[-1], device=self.device)
            return [tuple(o[index] for o in out) for out in cache]

        def capture(latent_pi: torch.Tensor) -> Distribution:
            distribution = get_distribution(latent_pi)
            built.append(distribution)
            return distribution

        def evaluate_actions(obs: torch.Tensor, actions: torch.Tensor):
            built.clear()
            values, log_prob, entropy = evaluate(obs, actions)
            if len(built) != 1 or entropy is None:
                raise RuntimeError("Kickstarting expects evaluate_actions to build one action distribution with an "
                                   "entropy (SB3's ActorCriticPolicy); this policy does otherwise.")
            kl = distillation_kl(built[0], teacher_outputs(obs), self.teacher_weights)
            kls.append(float(kl.detach().mean()))
            return values, log_prob, entropy - (weight / self.ent_coef) * (kl - kl.detach())

        policy.evaluate_actions, policy._get_action_dist_from_latent = evaluate_actions, capture
        buffer._get_samples = record_batch
        try:
            super().train()
        finally:  # back to the class's methods
            del policy.evaluate_actions, policy._get_action_dist_from_latent, buffer._get_samples
        self.logger.record("train/kickstart_kl", float(np.mean(kls)) if kls else math.nan)


    #: Observations per teacher forward pass when the teachers read a whole rollout buffer.
    TEACHER_CHUNK = 256
    #: Teachers read each rollout once (False: on every minibatch of every epoch; the same update, slower).
    cache_teachers: bool = True

    @torch.no_grad()
    def _teacher_outputs_on(self, observations: np.ndarray) -> list[tuple[torch.Tensor, ...]]:
        """Every teacher's :meth:`Teacher.output` on a rollout buffer's flattened observations, in chunks."""
        per_teacher: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in self.teachers]
        for start in range(0, len(observations), self.TEACHER_CHUNK):
            x = self._teacher_inputs(torch.as_tensor(observations[start:start + self.TEACHER_CHUNK], device=self.device))
            for chunks, teacher in zip(per_teacher, self.teachers):
                chunks.append(teacher.output(x))
        return [tuple(torch.cat(parts) for parts in zip(*chunks)) for chunks in per_teacher]


class KickstartPPO(KickstartMixin, PPO):
    """SB3's PPO with the kickstarting term (:class:`KickstartMixin`)."""


class KickstartA2C(KickstartMixin, A2C):
    """SB3's A2C with the kickstarting term (:class:`KickstartMixin`)."""
