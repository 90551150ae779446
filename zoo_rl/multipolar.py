"""MULTIPOLAR (Barekatain, Yonetani and Hamaya, IJCAI 2020): a target policy built around K frozen source policies.

    policy, policy_kwargs = multipolar_policy(PPO, zoo=["sources/ppo-a.zip", "agents/zoo-x/b"])
    model = PPO(policy, env, policy_kwargs=policy_kwargs)

The method. Each source policy ``mu_k`` maps a state to its deterministic action ``mu_k(s)`` in
``R^D``. The *adaptive aggregation* ``F_agg(s) = (1/K) sum_k theta_k * mu_k(s)`` (element-wise
product) has a learnable ``K x D`` matrix ``theta``; the *auxiliary network* ``F_aux(s)``, an
ordinary policy network trained from scratch, predicts residuals around the aggregate. The target
policy's action is ``F_agg(s) + F_aux(s)``: the mean of its Gaussian for continuous actions (whose
state-independent log-std is the target's own), the logits of its categorical distribution (a
softmax) for discrete ones. The value function is the target's own. ``theta`` and ``F_aux`` are
trained by the algorithm's own loss; the sources never change.

What the paper and its authors' released code fix, and this module follows:

- ``theta`` starts at ones, so the aggregate starts as the plain average of the sources' actions.
- ``F_aux`` starts near zero: its output layer is orthogonally initialised with gain 0.01, which is
  exactly SB3's initialisation of ``action_net`` (``ortho_init=True``, the default). Here ``F_aux``
  *is* SB3's actor of the target policy (features extractor, ``mlp_extractor.policy_net``,
  ``action_net``), with the target's ``net_arch`` and ``activation_fn``; with ``ortho_init=False``
  it starts at PyTorch's default initialisation instead, which is not near zero.
- The log-std starts at 0 (SB3's ``log_std_init`` default).
- A source's action is what the source would execute: for ``Box`` actions the mean of its Gaussian
  clipped to the action bounds (SB3 clips PPO's actions to the bounds outside the policy, and the
  authors' code clips the sources' deterministic actions the same way); for ``Discrete`` actions its
  deterministic (argmax) action as a one-hot vector, which the authors' code aggregates.

Choices this module makes where the method leaves room, each an option:

- ``clip_source_actions=False`` aggregates the unclipped Gaussian means instead.
- ``discrete_source="probabilities"`` or ``"log-probabilities"`` aggregates each source's action
  probabilities or log-probabilities (its normalised logits, invariant to the shift that leaves a
  softmax unchanged) instead of its one-hot argmax; ``"one-hot"`` (the default) is the authors'.
- Sources may differ in architecture from each other and from the target: each is run from its own
  tensors with its own activation (:func:`recorded_activation`): the one its metadata records (a
  compact folder's ``meta.json`` ``architecture``, an SB3 zip's saved ``policy_kwargs``), else SB3's
  default for PPO/A2C/TRPO, tanh; ``source_activation`` overrides it. State dicts alone do not record
  it, and the RL Baselines3 Zoo's MuJoCo settings often use ReLU.

Sources are whole actor-critic policies (PPO, A2C, TRPO): SB3 zips (only ``policy.pth`` is read,
without unpickling) or compact zoo folders whose ``head.*`` tensors hold the whole policy state
(:mod:`zoo_rl.policy_sources`). Their actor is ``FlattenExtractor`` (``MlpPolicy``) or SB3's
``NatureCNN`` (``CnnPolicy``; a compact folder's ``features.*``), then ``mlp_extractor.policy_net``
and ``action_net``; layer sizes are read from the tensors. A source trained under ``VecNormalize``
is folded to read raw observations by ``vec_normalize`` (:func:`~zoo_rl.policy_sources.fold_vec_normalize`).

The sources' tensors are buffers of the policy (``multipolar_sources.<k>.<layer>_weight``): saved
with the model, moved with it between devices, never seen by the optimizer, and used under
``torch.no_grad``. ``policy_kwargs`` hold only paths, names, numbers and the sources' layer shapes
(``source_layers``), so that ``ALGO.load`` rebuilds the policy where the source files are gone: the
buffers then have the recorded shapes, filled with NaN until SB3's strict state-dict load fills them
(using the policy before that raises the files' error).
"""

from __future__ import annotations

import inspect
import os
import re
import warnings
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.distributions import (
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    StateDependentNoiseDistribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy, BaseModel
from stable_baselines3.common.preprocessing import get_action_dim, get_flattened_obs_dim, preprocess_obs
from stable_baselines3.common.torch_layers import CombinedExtractor, FlattenExtractor
from torch import nn

from zoo_rl.policy_sources import ACTIVATIONS, FAMILIES, PolicySource
from zoo_rl.sources import SourceUnavailable
from zoo_rl.zoo_policies import ALGORITHMS, ZooOptions, policy_base, read_zoo

#: The keyword arguments the MULTIPOLAR policy takes besides ``ActorCriticPolicy``'s.
MULTIPOLAR_OPTIONS: tuple[str, ...] = ("zoo", "vec_normalize", "source_activation", "discrete_source",
                                       "clip_source_actions", "source_layers")
#: What a discrete source contributes to the aggregate: its argmax action one-hot (the authors'), its action
#: probabilities, or its log-probabilities.
DISCRETE_SOURCES: tuple[str, ...] = ("one-hot", "probabilities", "log-probabilities")
_ACTIVATION_NAMES: dict[type[nn.Module], str] = {cls: name for name, cls in ACTIVATIONS.items()}
#: The activation of a source that records none: SB3's default for PPO, A2C and TRPO policies.
DEFAULT_ACTIVATION = "tanh"
#: SB3's NatureCNN: the stride of each convolution, by its index in ``cnn``.
_NATURE_STRIDES: dict[str, int] = {"cnn.0": 4, "cnn.2": 2, "cnn.4": 1}
_EXTRACTOR = "features_extractor."


def _activation_name(value: str | type[nn.Module]) -> str:
    if isinstance(value, str) and value in ACTIVATIONS:
        return value
    if isinstance(value, type) and value in _ACTIVATION_NAMES:
        return _ACTIVATION_NAMES[value]
    raise ValueError(f"Unknown source activation {value!r}: give one of {', '.join(ACTIVATIONS)} or the matching "
                     "torch.nn class (nn.Tanh, nn.ReLU, ...).")


def recorded_activation(source: PolicySource) -> str:
    """The activation of a source's MLP layers (a name of :data:`ACTIVATIONS`): the one its metadata records,
    ``meta["architecture"]["activation"]`` (compact folders written by :func:`zoo_rl.zoo_training.export_policy`;
    SB3 zips, read by :func:`~zoo_rl.policy_sources.read_sb3_activation`), else :data:`DEFAULT_ACTIVATION`,
    SB3's tanh. State dicts alone do not record it, and a wrong one gives wrong actions silently.

    :raises ValueError: the metadata records an activation this module cannot run.
    """
    architecture = source.meta.get("architecture")
    recorded = architecture.get("activation") if isinstance(architecture, dict) else None
    if recorded is None:
        return DEFAULT_ACTIVATION
    if recorded not in ACTIVATIONS:
        raise ValueError(f"Source {source.name!r} ({source.origin}) records the activation {recorded!r}, which a "
                         f"frozen source cannot be run with: its layers run with one of {', '.join(ACTIVATIONS)}. "
                         "Leave the source out, or name the activation to use explicitly.")
    return str(recorded)


def resolve_activation(source: PolicySource, activation: str | type[nn.Module] | None = None) -> str:
    """The activation to run ``source``'s MLP layers with: ``activation`` when given (a name of
    :data:`ACTIVATIONS` or the ``torch.nn`` class), else the one it records (:func:`recorded_activation`).

    :raises ValueError: an unknown activation, given or recorded.
    """
    return recorded_activation(source) if activation is None else _activation_name(activation)


@dataclass(frozen=True)
class MultipolarOptions:
    """The MULTIPOLAR options of a policy, checked once; see :func:`multipolar_policy` for their meaning."""

    zoo: tuple[str, ...]
    vec_normalize: tuple[str | None, ...] | None = None
    #: one name per source; ``None`` where it is read from the source (:meth:`with_sources`)
    source_activation: tuple[str | None, ...] = ()
    discrete_source: str = "one-hot"
    clip_source_actions: bool = True

    @classmethod
    def make(cls, zoo: Sequence[str | os.PathLike] | None,
             vec_normalize: Sequence[str | os.PathLike | None] | None = None,
             source_activation: str | type[nn.Module] | Sequence[str | type[nn.Module] | None] | None = None,
             discrete_source: str = "one-hot", clip_source_actions: bool = True) -> MultipolarOptions:
        """Checked options (``source_activation`` ``None``, for all sources or in the list: read from the source).

        :raises ValueError: an empty zoo, ``vec_normalize`` or ``source_activation`` lists that are not one
            per source, an unknown activation or ``discrete_source``.
        """
        checked = ZooOptions.make(zoo, vec_normalize=vec_normalize)  # the zoo and vec_normalize checks zoo_policy makes
        k = len(checked.zoo)
        if source_activation is None or isinstance(source_activation, (str, type)):
            activations = (None if source_activation is None else _activation_name(source_activation),) * k
        else:
            if len(source_activation) != k:
                raise ValueError(f"source_activation lists {len(source_activation)} activations for {k} sources: give "
                                 "one name (for every source), one per source in zoo order, or None (each source's "
                                 "own).")
            activations = tuple(None if a is None else _activation_name(a) for a in source_activation)
        if discrete_source not in DISCRETE_SOURCES:
            raise ValueError(f"Unknown discrete_source {discrete_source!r}: choose one of {', '.join(DISCRETE_SOURCES)}.")
        return cls(checked.zoo, checked.vec_normalize, activations, discrete_source, bool(clip_source_actions))

    def with_sources(self, sources: Sequence[PolicySource]) -> MultipolarOptions:
        """These options with every activation left to the sources read from them (:func:`recorded_activation`)."""
        activations = tuple(recorded_activation(s) if a is None else a for a, s in zip(self.source_activation, sources))
        return replace(self, source_activation=activations)

    def as_kwargs(self) -> dict[str, Any]:
        """The options as ``policy_kwargs`` entries: lists, strings and booleans only (SB3 saves them)."""
        same = len(set(self.source_activation)) == 1
        return dict(zoo=list(self.zoo), vec_normalize=None if self.vec_normalize is None else list(self.vec_normalize),
                    source_activation=self.source_activation[0] if same else list(self.source_activation),
                    discrete_source=self.discrete_source, clip_source_actions=self.clip_source_actions)

    @property
    def source_names(self) -> list[str]:
        """Display names of the sources, in zoo order: file stems and folder names, made unique as
        :func:`~zoo_rl.policy_sources.load_policy_zoo` makes them (readable without the files)."""
        names, seen = [], {}
        for spec in self.zoo:
            name = os.path.basename(spec.rstrip("/\\")).removesuffix(".zip")
            seen[name] = seen.get(name, -1) + 1
            names.append(f"{name}#{seen[name]}" if seen[name] else name)
        return names


def source_actor(source: PolicySource) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The actor of an actor-critic source, layer by layer in forward order: ``{layer: (weight, bias)}``.

    Layers are named ``features_extractor.cnn.0`` ... ``features_extractor.linear.0`` (a NatureCNN
    extractor, absent for ``MlpPolicy``), ``mlp_extractor.policy_net.<i>`` and ``action_net``. A
    compact folder's NatureCNN (``features.*``) is the source's extractor when its ``linear.0``
    feeds the first actor layer (an MLP source written as a compact folder carries a NatureCNN it
    does not use).

    :raises ValueError: a source that is not an actor-critic policy, or whose actor has other layers
        (another features extractor, shared layers of SB3 < 1.8) or an ``action_net`` missing.
    """
    state = source.state
    where = f"Source {source.name!r} ({source.origin})"
    if source.family != "actor-critic":
        what = FAMILIES.get(source.family or "", "no SB3 policy this library knows")
        raise ValueError(f"{where} is a {what} policy, but MULTIPOLAR takes actor-critic sources ({FAMILIES['actor-critic']}): "
                         "each source's action is the output of its action_net.")
    if "action_net.weight" not in state or "action_net.bias" not in state:
        raise ValueError(f"{where} has no action_net.weight and action_net.bias.")
    trunk = _trunk(source, "policy_net")
    first_in = next(iter(trunk.values()))[0].shape[1] if trunk else state["action_net.weight"].shape[1]
    layers = _extractor(source, ("pi_", ""), first_in)
    layers.update(trunk)
    layers["action_net"] = (state["action_net.weight"], state["action_net.bias"])
    return {key: (w.detach().to(torch.float32), b.detach().to(torch.float32)) for key, (w, b) in layers.items()}


def source_value_trunk(source: PolicySource) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The layers of an actor-critic source that compute its value latent, the input of its ``value_net``:
    ``{layer: (weight, bias)}`` in forward order, as :func:`source_actor` names them (the critic's NatureCNN
    extractor, then ``mlp_extractor.value_net.<i>``; no ``action_net``). Empty for an MLP source without
    value layers: its latent is the flattened observation. :class:`FrozenActor` runs it.

    :raises ValueError: a source that is not an actor-critic policy, or whose critic has other layers.
    """
    where = f"Source {source.name!r} ({source.origin})"
    if source.family != "actor-critic":
        what = FAMILIES.get(source.family or "", "no SB3 policy this library knows")
        raise ValueError(f"{where} is a {what} policy, not an actor-critic one ({FAMILIES['actor-critic']}): it has no "
                         "state-value network (mlp_extractor.value_net, value_net).")
    if "value_net.weight" not in source.state:
        raise ValueError(f"{where} has no value_net.weight.")
    trunk = _trunk(source, "value_net")
    first_in = next(iter(trunk.values()))[0].shape[1] if trunk else source.state["value_net.weight"].shape[1]
    layers = _extractor(source, ("vf_", ""), first_in)
    layers.update(trunk)
    return {key: (w.detach().to(torch.float32), b.detach().to(torch.float32)) for key, (w, b) in layers.items()}


def _trunk(source: PolicySource, net: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The layers of ``mlp_extractor.<net>`` (``policy_net`` or ``value_net``), in forward order."""
    state = source.state
    if any(k.startswith("mlp_extractor.shared_net.") for k in state):
        raise ValueError(f"Source {source.name!r} ({source.origin}) has shared layers (mlp_extractor.shared_net, "
                         "SB3 < 1.8): only separate policy and value networks are supported; re-save it with a "
                         "current SB3.")
    prefix = f"mlp_extractor.{net}."
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.weight")
    indices = sorted(int(m.group(1)) for k in state if (m := pattern.fullmatch(k)))
    return {f"{prefix}{i}": (state[f"{prefix}{i}.weight"], state[f"{prefix}{i}.bias"]) for i in indices}


def _extractor(source: PolicySource, prefixes: Sequence[str], first_in: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The NatureCNN layers (keyed ``features_extractor.<layer>``) that feed a network whose first layer reads
    ``first_in`` values: under the first of ``<prefix>features_extractor.`` that holds tensors, else a compact
    folder's NatureCNN when its ``linear.0`` gives ``first_in`` values; empty for ``FlattenExtractor``."""
    state, where = source.state, f"Source {source.name!r} ({source.origin})"
    extractor_prefix = next((f"{p}{_EXTRACTOR}" for p in prefixes if any(k.startswith(f"{p}{_EXTRACTOR}") for k in state)),
                            None)
    if extractor_prefix is not None:
        cnn = {k[len(extractor_prefix):]: v for k, v in state.items() if k.startswith(extractor_prefix)}
    elif source.extractor is not None and "linear.0.weight" in source.extractor \
            and source.extractor["linear.0.weight"].shape[0] == first_in:
        cnn = dict(source.extractor)
    else:
        return {}
    expected = [f"{layer}.{p}" for layer in (*_NATURE_STRIDES, "linear.0") for p in ("weight", "bias")]
    if set(cnn) != set(expected):
        some = ", ".join(sorted(set(cnn) - set(expected))[:4]) or ", ".join(sorted(set(expected) - set(cnn)))
        raise ValueError(f"{where} has a features extractor other than SB3's NatureCNN ({some}, ...): a frozen source "
                         "runs with FlattenExtractor (MlpPolicy) or NatureCNN (CnnPolicy).")
    return {f"{_EXTRACTOR}{layer}": (cnn[f"{layer}.weight"], cnn[f"{layer}.bias"]) for layer in (*_NATURE_STRIDES, "linear.0")}


def actor_shapes(actor: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, list[int]]:
    """The weight shape of each layer of an actor (:func:`source_actor`), in forward order: what ``source_layers``
    records so that the policy can be built without the files."""
    return {key: list(weight.shape) for key, (weight, _) in actor.items()}


def action_values(action_space: spaces.Space) -> int:
    """``D``: the values per action MULTIPOLAR aggregates (the Gaussian's dimensions, or the number of actions).

    :raises ValueError: an action space other than ``Box`` and ``Discrete``.
    """
    if isinstance(action_space, spaces.Box):
        return get_action_dim(action_space)
    if isinstance(action_space, spaces.Discrete):
        return int(action_space.n)
    raise ValueError(f"MULTIPOLAR aggregates Box actions (Gaussian means) or Discrete actions (categorical logits), not "
                     f"{action_space}.")


#: Why a MULTIPOLAR source must fit the target's spaces (the end of :func:`check_actor_fits`' message).
_MULTIPOLAR_RULE = ("MULTIPOLAR sources must act in the target's observation and action spaces (their architectures may "
                    "differ from each other and from the target's).")


def check_actor_fits(name: str, origin: str, layers: dict[str, list[int]], observation_space: spaces.Space,
                     action_space: spaces.Space, continuous: bool | None = None, *,
                     target: str = "this MULTIPOLAR policy", rule: str = _MULTIPOLAR_RULE) -> None:
    """:raises ValueError: an actor that does not read this observation space or does not act in this action space:
    the message names the source, each offending layer and its shapes.

    :param continuous: whether the source's policy is Gaussian (it has a ``log_std``); ``None`` if unknown.
    :param target: what the source was to fit, for the message (``"this MULTIPOLAR policy"``).
    :param rule: the message's last sentence: why the source must fit, and what to do instead.
    """
    problems = []
    if continuous is not None and continuous != isinstance(action_space, spaces.Box):
        kind = "continuous-action (Gaussian, with a log_std)" if continuous else "discrete-action (no log_std)"
        problems.append(f"  - it is a {kind} policy, and the target's actions are {action_space}")
    keys = list(layers)
    flat: int | None = get_flattened_obs_dim(observation_space)
    reads = f"the observations {observation_space}, flattened, give"
    if keys[0].startswith(_EXTRACTOR):  # a NatureCNN, then its linear layer on the flattened last map
        first, shape = keys[0], tuple(layers[keys[0]])
        obs_shape = getattr(observation_space, "shape", None) or ()
        if not isinstance(observation_space, spaces.Box) or len(obs_shape) != 3:
            problems.append(f"  - {first}.weight: {shape} is a NatureCNN convolution, and the observations "
                            f"{observation_space} are no (channels, height, width) image")
            flat = None
        else:
            channels, height, width = obs_shape
            if shape[1] != channels:
                problems.append(f"  - {first}.weight: {shape} reads {shape[1]} channels, and the observations "
                                f"{obs_shape} have {channels}")
            for key in keys[:3]:
                stride, kernel = _NATURE_STRIDES[key[len(_EXTRACTOR):]], layers[key][2]
                height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
            flat = layers[keys[2]][0] * max(height, 0) * max(width, 0)
            reads = f"the last convolution's map on {obs_shape} observations, flattened, gives"
        keys = keys[3:]
    for key in keys:
        shape = tuple(layers[key])
        if flat is not None and shape[1] != flat:
            problems.append(f"  - {key}.weight: {shape} reads {shape[1]} values, and {reads} {flat}")
        flat, reads = shape[0], f"{key} gives"
    want = action_values(action_space)
    if layers["action_net"][0] != want:
        problems.append(f"  - action_net.weight: {tuple(layers['action_net'])} gives {layers['action_net'][0]} values per "
                        f"action, and the actions {action_space} need {want}")
    if problems:
        raise ValueError(f"Source {name!r} ({origin}) does not fit {target} on observations {observation_space} and "
                         f"actions {action_space}:\n" + "\n".join(problems) + f"\n{rule}")


class FrozenActor(nn.Module):
    """One source's actor (or value trunk) as a fixed function of its tensors, held as buffers (never parameters).

    :param layers: weight shape of each layer, in forward order (:func:`actor_shapes` of :func:`source_actor` or
        :func:`source_value_trunk`); no layers: the flattened input itself.
    :param activation: name of the activation after each ``mlp_extractor`` layer (NatureCNN's are ReLU;
        ``action_net`` has none).
    :param tensors: the layers' ``(weight, bias)``; ``None`` builds NaN buffers of the same shapes, to be
        filled by a state-dict load.
    """

    def __init__(self, layers: dict[str, Sequence[int]], activation: str,
                 tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        super().__init__()
        self.layer_keys = list(layers)
        self.activation = activation
        self._activation = ACTIVATIONS[activation]()
        for key, shape in layers.items():
            if tensors is None:
                weight, bias = torch.full(tuple(shape), float("nan")), torch.full((shape[0],), float("nan"))
            else:
                weight, bias = tensors[key]
            self.register_buffer(self._name(key, "weight"), weight.detach().clone().to(torch.float32))
            self.register_buffer(self._name(key, "bias"), bias.detach().clone().to(torch.float32))

    @staticmethod
    def _name(key: str, kind: str) -> str:
        return f"{key.replace('.', '_')}_{kind}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The source's ``action_net`` output (Gaussian mean or logits) for preprocessed observations ``x`` (a value
        trunk's: its value latent)."""
        if not self.layer_keys or not self.layer_keys[0].startswith(_EXTRACTOR):
            x = x.flatten(1)
        for key in self.layer_keys:
            weight, bias = getattr(self, self._name(key, "weight")), getattr(self, self._name(key, "bias"))
            if key.startswith(_EXTRACTOR):
                layer = key[len(_EXTRACTOR):]
                if layer in _NATURE_STRIDES:
                    x = F.relu(F.conv2d(x, weight, bias, stride=_NATURE_STRIDES[layer]))
                else:
                    x = F.relu(F.linear(x.flatten(1), weight, bias))
            elif key == "action_net":
                x = F.linear(x, weight, bias)
            else:
                x = self._activation(F.linear(x, weight, bias))
        return x


class MultipolarActorCriticPolicy(ActorCriticPolicy):
    """``ActorCriticPolicy`` (PPO, A2C, TRPO) whose action mean or logits are ``F_agg(s) + F_aux(s)``.

    ``F_aux`` is SB3's actor of this policy; ``F_agg(s) = (1/K) sum_k theta_agg[k] * mu_k(s)`` aggregates
    the K frozen sources (:class:`FrozenActor`, under ``multipolar_sources``) with the learnable
    ``theta_agg`` (``K x D``, ones at the start). The value network and ``log_std`` are SB3's own.
    Build it with :func:`multipolar_policy`; the keyword arguments besides ``ActorCriticPolicy``'s are
    :data:`MULTIPOLAR_OPTIONS`, described there (``source_layers``: the sources' layer shapes, which
    :func:`multipolar_policy` records; needed only where the files are gone).

    :raises ValueError: bad options, an action space other than Box or Discrete, dict observations, or a
        source that is no actor-critic policy or does not fit the spaces (naming source, layer and shapes).
    :raises SourceUnavailable: source files gone and no ``source_layers`` to build from.
    """

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule: Any, *,
                 zoo: Sequence[str] | None = None, vec_normalize: Sequence[str | None] | None = None,
                 source_activation: str | type[nn.Module] | Sequence[str | type[nn.Module] | None] | None = None,
                 discrete_source: str = "one-hot", clip_source_actions: bool = True,
                 source_layers: Sequence[dict[str, Sequence[int]]] | None = None, **kwargs: Any) -> None:
        options = MultipolarOptions.make(zoo, vec_normalize, source_activation, discrete_source, clip_source_actions)
        action_values(action_space)
        if isinstance(observation_space, spaces.Dict):
            raise ValueError("MULTIPOLAR runs sources on Box or Discrete observations (MlpPolicy, CnnPolicy), not Dict "
                             "observations.")
        k = len(options.zoo)
        if source_layers is not None:
            if len(source_layers) != k:
                raise ValueError(f"source_layers describes {len(source_layers)} sources for a zoo of {k}.")
            source_layers = [{str(key): [int(n) for n in shape] for key, shape in layers.items()}
                             for layers in source_layers]
        sources, missing = read_zoo(ZooOptions.make(options.zoo, vec_normalize=options.vec_normalize))
        actors = None
        if sources is not None:
            options = options.with_sources(sources)
            actors = [source_actor(s) for s in sources]
            shapes = [actor_shapes(a) for a in actors]
            for source, layers in zip(sources, shapes):
                check_actor_fits(source.name, source.origin, layers, observation_space, action_space,
                                 continuous="log_std" in source.state)
            if source_layers is not None and source_layers != shapes:
                changed = [s.name for s, a, b in zip(sources, shapes, source_layers) if a != b]
                missing = (f"The files of source(s) {', '.join(map(repr, changed))} no longer have the layer shapes this "
                           "policy was built with.")
                warnings.warn(f"{missing} MultipolarActorCriticPolicy built from the recorded shapes with empty source "
                              "tensors; it works only once saved weights are loaded (as ALGO.load does).")
                actors = None
            else:
                source_layers, missing = shapes, None
        elif source_layers is None:
            raise SourceUnavailable(f"{missing} MULTIPOLAR needs the source files, or the sources' layer shapes "
                                    "(source_layers, which multipolar_policy records) to load a saved model.")
        elif None in options.source_activation:
            raise SourceUnavailable(f"{missing} The sources' activations are read from their files, which are not "
                                    "here: give source_activation (multipolar_policy records it for a saved model).")
        else:
            warnings.warn(f"{missing} MultipolarActorCriticPolicy built with empty source tensors; it works only once "
                          "weights are loaded (as ALGO.load does).")
        self.multipolar_options = options
        self.source_layers = source_layers
        self._multipolar_actors = actors
        self._multipolar_missing = missing
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)
        self._multipolar_actors = None  # the process-wide cache keeps the tensors; the policy keeps its buffers

    def _build(self, lr_schedule: Any) -> None:
        # theta and the sources come first, so that SB3's _build builds the optimizer over theta (a parameter) and
        # never sees the sources (buffers); the orthogonal initialisation touches SB3's own modules only.
        options, actors = self.multipolar_options, self._multipolar_actors
        self.theta_agg = nn.Parameter(torch.ones(len(options.zoo), action_values(self.action_space)))
        self.multipolar_sources = nn.ModuleList(
            FrozenActor(layers, activation, None if actors is None else actors[k])
            for k, (layers, activation) in enumerate(zip(self.source_layers, options.source_activation)))
        super()._build(lr_schedule)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(self.multipolar_options.as_kwargs(), source_layers=self.source_layers)
        return data

    @property
    def source_names(self) -> list[str]:
        """Display names of the sources, in zoo order (readable without the files)."""
        return self.multipolar_options.source_names

    def source_actions(self, obs: torch.Tensor) -> torch.Tensor:
        """``(batch, K, D)``: each source's action ``mu_k(s)`` as the aggregate reads it (clipped mean, one-hot
        argmax, probabilities or log-probabilities), without gradient.

        :raises SourceUnavailable: the policy was built without its source files and no weights were loaded.
        """
        if self._multipolar_missing is not None:
            if torch.isnan(self.multipolar_sources[0].action_net_bias).any():
                raise SourceUnavailable(f"{self._multipolar_missing} This MULTIPOLAR policy was built without its "
                                        "sources and no saved weights were loaded into it: give the source files, or "
                                        "load a saved model.")
            self._multipolar_missing = None
        x = preprocess_obs(obs, self.observation_space, normalize_images=self.normalize_images)
        with torch.no_grad():
            mu = torch.stack([actor(x) for actor in self.multipolar_sources], dim=1)
            if isinstance(self.action_space, spaces.Box):
                if self.multipolar_options.clip_source_actions:
                    low = torch.as_tensor(self.action_space.low, dtype=mu.dtype, device=mu.device).flatten()
                    high = torch.as_tensor(self.action_space.high, dtype=mu.dtype, device=mu.device).flatten()
                    mu = torch.clamp(mu, low, high)
            elif self.multipolar_options.discrete_source == "one-hot":
                mu = F.one_hot(mu.argmax(dim=-1), mu.shape[-1]).to(mu.dtype)
            elif self.multipolar_options.discrete_source == "probabilities":
                mu = torch.softmax(mu, dim=-1)
            else:
                mu = torch.log_softmax(mu, dim=-1)
        return mu

    def aggregate(self, obs: torch.Tensor) -> torch.Tensor:
        """``F_agg(s) = (1/K) sum_k theta_agg[k] * mu_k(s)``: ``(batch, D)``, differentiable in ``theta_agg``."""
        return (self.theta_agg * self.source_actions(obs)).mean(dim=1)

    def aggregation_weights(self) -> tuple[np.ndarray, list[str]]:
        """``(theta, names)``: a copy of the learned ``K x D`` aggregation matrix (row k weighs source k's action
        values) and the sources' names, in zoo order."""
        return self.theta_agg.detach().cpu().numpy().copy(), self.source_names

    def _latents(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.extract_features(obs)
        if self.share_features_extractor:
            return self.mlp_extractor(features)
        pi_features, vf_features = features
        return self.mlp_extractor.forward_actor(pi_features), self.mlp_extractor.forward_critic(vf_features)

    def _get_action_dist_from_latent(self, latent_pi: torch.Tensor,  # type: ignore[override]
                                     aggregate: torch.Tensor | None = None) -> Distribution:
        """The distribution with mean (or logits) ``action_net(latent_pi) + aggregate``.

        :raises RuntimeError: no ``aggregate``: the distribution depends on the observation, which the
            latent alone does not give (use ``get_distribution(obs)``).
        """
        if aggregate is None:
            raise RuntimeError("A MULTIPOLAR policy's action distribution depends on the observation through its "
                               "sources: call get_distribution(obs), forward or evaluate_actions.")
        mean_actions = self.action_net(latent_pi) + aggregate
        if isinstance(self.action_dist, DiagGaussianDistribution):
            return self.action_dist.proba_distribution(mean_actions, self.log_std)
        if isinstance(self.action_dist, CategoricalDistribution):
            return self.action_dist.proba_distribution(action_logits=mean_actions)
        if isinstance(self.action_dist, StateDependentNoiseDistribution):
            return self.action_dist.proba_distribution(mean_actions, self.log_std, latent_pi)
        raise ValueError(f"Unsupported action distribution {type(self.action_dist).__name__}.")

    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latent_pi, latent_vf = self._latents(obs)
        values = self.value_net(latent_vf)
        distribution = self._get_action_dist_from_latent(latent_pi, self.aggregate(obs))
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        return actions.reshape((-1, *self.action_space.shape)), values, log_prob

    def evaluate_actions(self, obs: torch.Tensor, actions: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        latent_pi, latent_vf = self._latents(obs)
        distribution = self._get_action_dist_from_latent(latent_pi, self.aggregate(obs))
        return self.value_net(latent_vf), distribution.log_prob(actions), distribution.entropy()

    def get_distribution(self, obs: torch.Tensor) -> Distribution:
        features = BaseModel.extract_features(self, obs, self.pi_features_extractor)
        latent_pi = self.mlp_extractor.forward_actor(features)
        return self._get_action_dist_from_latent(latent_pi, self.aggregate(obs))


def multipolar_policy(
    algo: type[BaseAlgorithm] | str,
    zoo: Sequence[str | os.PathLike],
    policy: str | type[ActorCriticPolicy] = "MlpPolicy",
    *,
    vec_normalize: Sequence[str | os.PathLike | None] | None = None,
    source_activation: str | type[nn.Module] | Sequence[str | type[nn.Module] | None] | None = None,
    discrete_source: str = "one-hot",
    clip_source_actions: bool = True,
    **policy_kwargs: Any,
) -> tuple[type[MultipolarActorCriticPolicy], dict[str, Any]]:
    """The policy class and ``policy_kwargs`` of a MULTIPOLAR target for an on-policy actor-critic algorithm::

        policy, policy_kwargs = multipolar_policy(PPO, zoo=["ppo-a.zip", "ppo-b.zip"], source_activation="relu")
        model = PPO(policy, env, policy_kwargs=policy_kwargs)

    :param algo: PPO, A2C or TRPO (the class or its lower-case name): any algorithm whose policy is
        SB3's ``ActorCriticPolicy``.
    :param zoo: K actor-critic sources (PPO, A2C, TRPO) on the target's observation and action spaces,
        of any architecture: SB3 zips or compact zoo folders whose ``head.*`` tensors hold the whole
        policy state.
    :param policy: ``"MlpPolicy"`` or ``"CnnPolicy"``: the target's own features extractor (that of
        ``F_aux`` and of the value function), as in ``ALGO(policy, env)``.
    :param vec_normalize: one ``vecnormalize.pkl`` (or ``None``) per source trained under ``VecNormalize``:
        its observation normalisation is folded into the source's first layer, so that the target
        trains on raw observations (train it without ``VecNormalize``, or with ``norm_obs=False``).
    :param source_activation: the activation of the sources' ``policy_net`` layers, one for all or one
        per source: a name (``"tanh"``, ``"relu"``, ...), the ``torch.nn`` class, or ``None`` (the default):
        the activation the source records (:func:`recorded_activation`: a compact folder's ``meta.json``
        ``architecture``, an SB3 zip's saved ``policy_kwargs``), else SB3's default for PPO/A2C/TRPO,
        tanh. State dicts alone do not record it, and a wrong one gives wrong source actions; the
        resolved names are what ``policy_kwargs`` keep.
    :param discrete_source: for ``Discrete`` actions, what each source contributes: ``"one-hot"`` (its
        argmax action; the authors'), ``"probabilities"`` or ``"log-probabilities"``.
    :param clip_source_actions: for ``Box`` actions, clip each source's Gaussian mean to the action
        bounds, as SB3 clips the actions it executes (default, the authors'); ``False`` aggregates the
        unclipped means.
    :param policy_kwargs: the target's own ``ActorCriticPolicy`` keywords (``net_arch``,
        ``activation_fn``, ``ortho_init``, ``log_std_init``, ...): the architecture of ``F_aux`` and of
        the value network.
    :return: ``(MultipolarActorCriticPolicy, policy_kwargs)``; ``policy_kwargs`` hold only lists,
        strings, numbers and the sources' layer shapes besides SB3's own, so that ``ALGO.load``
        rebuilds the policy without the source files.
    :raises ValueError: an algorithm or policy whose policy is not SB3's plain ``ActorCriticPolicy``
        (MaskablePPO, RecurrentPPO, SAC, ...; ``MultiInputPolicy``), bad options, or a source that is
        no actor-critic policy.
    :raises SourceUnavailable: a source file that does not exist.
    """
    algo_class = ALGORITHMS.get(algo.lower()) if isinstance(algo, str) else algo
    if algo_class is None:
        raise ValueError(f"Unknown algorithm {algo!r}; give the class or one of ppo, a2c, trpo.")
    def supported(base: Any) -> bool:
        return isinstance(base, type) and issubclass(base, ActorCriticPolicy) \
            and not issubclass(base, RecurrentActorCriticPolicy)

    if not any(supported(base) for base in algo_class.policy_aliases.values()):
        raise ValueError(f"MULTIPOLAR is built for on-policy actor-critic algorithms whose policy is SB3's "
                         f"ActorCriticPolicy (PPO, A2C, TRPO); {algo_class.__name__}'s policies are not.")
    base = policy_base(algo_class, policy)
    if not supported(base):
        raise ValueError(f"MULTIPOLAR is built for on-policy actor-critic algorithms whose policy is SB3's "
                         f"ActorCriticPolicy (PPO, A2C, TRPO); {algo_class.__name__}'s {getattr(base, '__name__', base)} "
                         "is not one.")
    default_extractor = inspect.signature(base.__init__).parameters["features_extractor_class"].default
    if default_extractor is CombinedExtractor:
        raise ValueError("MULTIPOLAR runs sources on Box or Discrete observations (MlpPolicy, CnnPolicy), not Dict "
                         "observations (MultiInputPolicy).")
    clash = sorted(set(policy_kwargs) & set(MULTIPOLAR_OPTIONS))
    if clash:
        raise ValueError(f"{', '.join(clash)}: not keywords of multipolar_policy's policy_kwargs.")
    options = MultipolarOptions.make(zoo, vec_normalize, source_activation, discrete_source, clip_source_actions)
    sources, missing = read_zoo(ZooOptions.make(options.zoo, vec_normalize=options.vec_normalize))
    if sources is None:
        raise SourceUnavailable(missing)
    options = options.with_sources(sources)
    layers = [actor_shapes(source_actor(s)) for s in sources]
    kwargs = dict(policy_kwargs)
    if default_extractor is not FlattenExtractor:
        kwargs.setdefault("features_extractor_class", default_extractor)
    kwargs.update(options.as_kwargs(), source_layers=layers)
    return MultipolarActorCriticPolicy, kwargs


__all__ = [
    "ACTIVATIONS", "DEFAULT_ACTIVATION", "DISCRETE_SOURCES", "FrozenActor", "MULTIPOLAR_OPTIONS",
    "MultipolarActorCriticPolicy", "MultipolarOptions", "action_values", "actor_shapes", "check_actor_fits",
    "multipolar_policy", "recorded_activation", "resolve_activation", "source_actor", "source_value_trunk",
]
