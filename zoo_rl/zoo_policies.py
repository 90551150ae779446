"""Zoo-Tuning of any SB3 model: every ``Linear`` and ``Conv2d`` of the policy built from K pretrained policies.

    policy, policy_kwargs = zoo_policy(SAC, zoo=["sources/sac-a.zip", "sources/sac-b.zip"], gate="lite")
    model = SAC(policy, env, policy_kwargs=policy_kwargs)

The sources are whole policies of the target's algorithm family and architecture (SB3 zips, read
without unpickling, or compact zoo folders: :mod:`zoo_rl.policy_sources`). Each ``nn.Linear`` and
``nn.Conv2d`` of the policy -- features extractor, MLP trunks, action, value and Q heads, actor and
critics -- becomes a :class:`~zoo_rl.layers.ZooLayer` whose bank holds the K sources' weights of
that layer, with the gate modes, normalisations, alignments, start gates and learning-rate
multipliers of :class:`~zoo_rl.ZooExtractor`.

Why the layers come in through the policy's own factories: SB3 builds the optimizers and the target
networks inside the policy's constructor. A module replaced on a built policy leaves the optimizer
stepping the old parameters, the targets out of step (``polyak_update`` zips online and target
parameters in order) and ``load`` unable to rebuild the model. So each family has a thin subclass
whose factory (``make_actor``, ``make_critic``, ``make_q_net``, ``make_quantile_net``) converts the
network it has just built, before SB3 builds an optimizer or copies it into a target; the
actor-critic policy, whose heads are created inside ``_build``, converts itself at the end of
``_build`` and builds its optimizer again over the zoo layers. Online and target networks come from
the same factory, so they have the same layout, and SB3's own ``load_state_dict`` /
``polyak_update`` keep them in step; the lite moving averages are ``running_*`` buffers, which SB3
copies into the targets.

Construction is the same with or without the source files: ``policy_kwargs`` hold only paths,
names and numbers, and a policy built where the files are gone (``ALGO.load``) has banks of the same
shapes, filled with NaN until SB3's strict state-dict load fills them (using it before raises the
files' error). The state-dict layout and the optimizer's parameter groups are therefore the same
on every construction.
"""

from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence, TypeVar

import torch
from sb3_contrib import ARS, QRDQN, TQC, TRPO, CrossQ, MaskablePPO, RecurrentPPO
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from sb3_contrib.crossq.policies import CrossQPolicy
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.qrdqn.policies import QRDQNPolicy, QuantileNetwork
from sb3_contrib.tqc.policies import TQCPolicy
from stable_baselines3 import A2C, DDPG, DQN, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.torch_layers import FlattenExtractor, NatureCNN
from stable_baselines3.dqn.policies import DQNPolicy, QNetwork
from stable_baselines3.sac.policies import SACPolicy
from stable_baselines3.td3.policies import TD3Policy
from torch import nn

from zoo_rl.extractor import ZooExtractor
from zoo_rl.layers import (
    GATE_MODES,
    LITE_MOMENTUM,
    NORMALISATIONS,
    ZooLayer,
    check_choice,
    initial_scores,
    normalise,
)
from zoo_rl.optim import LRMultipliers, zoo_optimizer
from zoo_rl.policy_sources import FAMILIES, PolicySource, SourceUnavailable, load_policy_zoo
from zoo_rl.sources import WEIGHTS_FILE

Model = TypeVar("Model", bound=BaseAlgorithm)

#: The keyword arguments a zoo policy takes besides its SB3 base class's: what ``policy_kwargs`` add.
ZOO_OPTIONS: tuple[str, ...] = ("zoo", "gate", "normalisation", "align", "lite_momentum", "init_gates", "gate_lr",
                                "align_lr", "bank_lr", "vec_normalize")
#: Parameters other than Linear/Conv2d weights that a source fixes: they start at the sources' average.
CARRIED_PARAMETERS: tuple[str, ...] = ("log_std",)

_ZOO_CACHE: dict[tuple, list[PolicySource]] = {}


#: The gate normalisation of :func:`zoo_policy` when none is given: ``sigmoid-sum`` (the gates of each layer
#: divided by their sum, so the aggregate is a weighted average of the sources), not the paper's ``sigmoid`` that
#: :class:`zoo_rl.ZooExtractor` keeps. A whole policy aggregates every layer up to its action and value heads, and
#: K sigmoid gates at 0.5 scale each layer by about K/2, compounding through the network: the sources' policies are
#: not what the target starts from. Chosen by experiment over sigmoid, softmax and sigmoid-sum on a SAC and a PPO
#: target (``experiments/choose.py``, stage ``gate-choice`` of ``experiments/studies_continuous.sh``; docs/studies.md).
POLICY_NORMALISATION = "sigmoid-sum"


@dataclass(frozen=True)
class ZooOptions:
    """The Zoo-Tuning options of a policy, checked once; see :func:`zoo_policy` for their meaning."""

    zoo: tuple[str, ...]
    gate: str = "lite"
    normalisation: str = POLICY_NORMALISATION
    align: bool | str = True
    lite_momentum: float = LITE_MOMENTUM
    init_gates: tuple[float, ...] | None = None
    gate_lr: float = 1.0
    align_lr: float = 1.0
    bank_lr: float = 1.0
    vec_normalize: tuple[str | None, ...] | None = None

    @classmethod
    def make(cls, zoo: Sequence[str | os.PathLike] | None, gate: str = "lite",
             normalisation: str = POLICY_NORMALISATION, align: bool | str = True,
             lite_momentum: float = LITE_MOMENTUM, init_gates: Sequence[float] | None = None, gate_lr: float = 1.0,
             align_lr: float = 1.0, bank_lr: float = 1.0,
             vec_normalize: Sequence[str | os.PathLike | None] | None = None) -> ZooOptions:
        """Checked options.

        :raises ValueError: an empty zoo, an unknown mode, normalisation or alignment, start gates or
            ``vec_normalize`` entries that are not one per source, or a multiplier that is not positive.
        """
        if zoo is None or isinstance(zoo, (str, os.PathLike)) or len(zoo) == 0:
            raise ValueError("zoo must be a non-empty list of sources, e.g. zoo=['sources/sac-a.zip', "
                             "'sources/sac-b.zip'] (SB3 zips or compact zoo folders).")
        check_choice(gate, GATE_MODES, "gate mode")
        check_choice(normalisation, NORMALISATIONS, "gate normalisation")
        if align not in (True, False, "conv"):
            raise ValueError(f"align must be True, False or 'conv', got {align!r}.")
        if not 0.0 < lite_momentum <= 1.0:
            raise ValueError(f"lite_momentum must be in (0, 1], got {lite_momentum}.")
        k = len(zoo)
        if init_gates is not None:
            if len(init_gates) != k:
                raise ValueError(f"init_gates has {len(init_gates)} values for a zoo of {k} sources: give one per "
                                 "source, in zoo order.")
            if gate == "uniform":
                raise ValueError("A uniform zoo has fixed gates 1/K: init_gates needs a gated mode (lite, batch, "
                                 "sample).")
            initial_scores(init_gates, normalisation)  # raises on values the normalisation cannot start from
            init_gates = tuple(float(g) for g in init_gates)
        for name, value in (("gate_lr", gate_lr), ("align_lr", align_lr), ("bank_lr", bank_lr)):
            if not (float(value) > 0 and float(value) != float("inf")):
                raise ValueError(f"{name} must be a positive number, got {value}.")
        if vec_normalize is not None:
            if isinstance(vec_normalize, (str, os.PathLike)) or len(vec_normalize) != k:
                raise ValueError(f"vec_normalize must list one vecnormalize.pkl (or None) per source, in zoo order: "
                                 f"{k} entries.")
            vec_normalize = tuple(None if v is None else os.fspath(v) for v in vec_normalize)
        return cls(tuple(os.fspath(z) for z in zoo), gate, normalisation, align, float(lite_momentum), init_gates,
                   float(gate_lr), float(align_lr), float(bank_lr), vec_normalize)

    def as_kwargs(self) -> dict[str, Any]:
        """The options as ``policy_kwargs`` entries: lists, strings and numbers only (SB3 saves them)."""
        return dict(zoo=list(self.zoo), gate=self.gate, normalisation=self.normalisation, align=self.align,
                    lite_momentum=self.lite_momentum,
                    init_gates=None if self.init_gates is None else list(self.init_gates),
                    gate_lr=self.gate_lr, align_lr=self.align_lr, bank_lr=self.bank_lr,
                    vec_normalize=None if self.vec_normalize is None else list(self.vec_normalize))

    def start_weights(self) -> torch.Tensor:
        """``(K,)`` weights summing to 1: how much each source counts at the start (its start gate's share)."""
        k = len(self.zoo)
        if self.init_gates is None:
            return torch.full((k,), 1.0 / k)
        gates = normalise(initial_scores(self.init_gates, self.normalisation), self.normalisation)
        return gates / gates.sum()


def _stamp(spec: str | None) -> tuple | None:
    """``spec`` with its file's modification time and size: a source rewritten in place is read again."""
    if spec is None:
        return None
    path = Path(spec)
    try:
        stat = (path / WEIGHTS_FILE if path.is_dir() else path).stat()
    except OSError:
        return spec, None, None
    return spec, stat.st_mtime_ns, stat.st_size


def read_zoo(options: ZooOptions) -> tuple[list[PolicySource] | None, str | None]:
    """The sources of ``options``, read once per process and version of their files: ``(sources, None)``, or
    ``(None, why)`` where the files are not here (a saved model loads without them)."""
    key = (tuple(_stamp(z) for z in options.zoo), tuple(_stamp(v) for v in options.vec_normalize or ()))
    if key not in _ZOO_CACHE:
        try:
            _ZOO_CACHE[key] = load_policy_zoo(list(options.zoo), options.vec_normalize)
        except SourceUnavailable as exc:
            return None, str(exc)
    return _ZOO_CACHE[key], None


def _require_filled_bank(layer: ZooLayer, args: Any) -> None:
    """Forward pre-hook of a layer built without its sources: its bank must have been loaded since."""
    if torch.isnan(layer.weight.detach().reshape(-1)[0]):
        raise SourceUnavailable(f"{layer.zoo_missing} This zoo layer was built without its sources and no saved "
                                "weights were loaded into it: give the source files, or load a saved model.")
    layer.zoo_bank_hook.remove()


def zoo_layers(module: nn.Module) -> dict[str, ZooLayer]:
    """Every :class:`ZooLayer` of ``module`` by its path, under every name it has (shared extractors twice)."""
    return {path: m for path, m in module.named_modules(remove_duplicate=False) if isinstance(m, ZooLayer)}


def plain_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """``module``'s state-dict entries as the equivalent plain network has them: each zoo layer as the
    ``weight`` and ``bias`` of one layer, its gate, alignment and averages left out."""
    layers = zoo_layers(module)
    shapes = {}
    for path, layer in layers.items():
        shapes[f"{path}.weight"] = tuple(layer.weight.shape[1:])
        shapes[f"{path}.bias"] = tuple(layer.bias.shape[1:])
    for key, value in module.state_dict(keep_vars=True).items():
        if not _owned_by(key, layers):
            shapes[key] = tuple(value.shape)
    return shapes


class ZooPolicyMixin:
    """What every zoo policy adds to its SB3 base class: the options, the sources and the conversion.

    Put it first in the bases (``class ZooSACPolicy(ZooPolicyMixin, SACPolicy)``); the subclass
    converts each network its factories build with :meth:`_zooify`.
    """

    #: The algorithm family of the sources this policy takes (a key of ``FAMILIES``).
    family: ClassVar[str]
    #: The SB3 policy class this one extends: ``export_lite`` rebuilds the model with it.
    plain_policy: ClassVar[type[BasePolicy]]

    def __init__(self, *args: Any, zoo: Sequence[str] | None = None, gate: str = "lite",
                 normalisation: str = POLICY_NORMALISATION, align: bool | str = True,
                 lite_momentum: float = LITE_MOMENTUM, init_gates: Sequence[float] | None = None,
                 gate_lr: float = 1.0, align_lr: float = 1.0, bank_lr: float = 1.0,
                 vec_normalize: Sequence[str | None] | None = None, **kwargs: Any) -> None:
        self.zoo_options = ZooOptions.make(zoo, gate, normalisation, align, lite_momentum, init_gates, gate_lr,
                                           align_lr, bank_lr, vec_normalize)
        extractor = kwargs.get("features_extractor_class")
        if isinstance(extractor, type) and issubclass(extractor, ZooExtractor):
            raise ValueError("A zoo policy builds its features extractor's layers from the sources itself: leave "
                             "features_extractor_class at its default (or NatureCNN), not ZooExtractor.")
        self._zoo_sources, self._zoo_missing = read_zoo(self.zoo_options)
        if self._zoo_sources is None:
            warnings.warn(f"{self._zoo_missing} {type(self).__name__} built with empty banks; it works only once "
                          "weights are loaded (as ALGO.load does).")
        else:
            check_family(self._zoo_sources, type(self))
        super().__init__(*args, **kwargs)
        self._zoo_sources = None  # the process-wide cache keeps them; the policy keeps only its layers

    def _build(self, lr_schedule: Any) -> None:
        # Learning-rate multipliers (gate_lr, align_lr, bank_lr) need an optimizer that honours them; with all
        # multipliers at 1 it steps exactly as the plain optimizer.
        self.optimizer_class = zoo_optimizer(self.optimizer_class)
        super()._build(lr_schedule)  # type: ignore[misc]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        data.update(self.zoo_options.as_kwargs())
        return data

    def _zooify(self, module: nn.Module, prefix: str) -> nn.Module:
        """Replace every plain ``nn.Linear`` / ``nn.Conv2d`` of ``module`` by a zoo layer of the sources' tensors.

        :param module: a network a factory has just built (or the whole actor-critic policy).
        :param prefix: where ``module`` sits in the policy's state dict (``"actor"``, ``""``): the
            sources' tensors of a layer at path ``p`` are those at ``prefix.p``. Target networks are
            built from their online network's prefix; SB3 then copies the online network into them.
        :raises ValueError: a source whose tensors do not fit the module (naming layer, shapes and
            sources), or a module holding parameters that are neither layers nor ``log_std``.
        """
        options, sources = self.zoo_options, self._zoo_sources
        key_prefix = f"{prefix}." if prefix else ""
        gate_channels = _unflatten_nature_cnns(module)
        expected = plain_shapes(module)
        plain = {path: m for path, m in module.named_modules(remove_duplicate=False)
                 if type(m) in (nn.Linear, nn.Conv2d)}
        layer_keys = {f"{p}.{n}" for p in plain for n in ("weight", "bias")}
        converted = zoo_layers(module)  # already zoo layers: a shared extractor built by an earlier factory
        zoo_owned = {k for k in expected if k not in layer_keys and _owned_by(k, converted)}
        carried = _carried_parameters(module, expected, layer_keys | zoo_owned)
        tensors = None
        if sources is not None:
            tensors = [s.tensors(key_prefix, expected) for s in sources]
            check_fit(self, expected, tensors, sources, key_prefix)
            weights = options.start_weights()
            with torch.no_grad():
                for key, param in carried.items():
                    param.copy_(sum(w * t[key] for w, t in zip(weights.tolist(), tensors)).to(param))
        replacements: dict[int, ZooLayer] = {}
        for path, layer in plain.items():
            if id(layer) not in replacements:
                replacements[id(layer)] = self._zoo_layer(layer, path, key_prefix, tensors,
                                                          gate_channels.get(id(layer)))
        for parent in module.modules():
            for name, child in list(parent._modules.items()):
                if child is not None and id(child) in replacements:
                    parent._modules[name] = replacements[id(child)]
        return module

    def _zoo_layer(self, layer: nn.Module, path: str, key_prefix: str, tensors: list[dict[str, torch.Tensor]] | None,
                   gate_channels: int | None) -> ZooLayer:
        options, name = self.zoo_options, f"{key_prefix}{path}"
        if layer.bias is None:
            raise ValueError(f"Layer {name} has no bias; zoo layers aggregate layers with a weight and a bias.")
        conv = isinstance(layer, nn.Conv2d)
        if conv and (layer.groups != 1 or tuple(layer.dilation) != (1, 1) or layer.padding_mode != "zeros"
                     or isinstance(layer.padding, str)):
            raise ValueError(f"Layer {name} is a Conv2d with groups, dilation, string padding or non-zero padding "
                             "mode; zoo layers aggregate plain strided, zero-padded convolutions.")
        k = len(options.zoo)
        if tensors is None:
            weights = torch.full((k, *layer.weight.shape), float("nan"))
            biases = torch.full((k, *layer.bias.shape), float("nan"))
        else:
            weights = torch.stack([t[f"{path}.weight"] for t in tensors])
            biases = torch.stack([t[f"{path}.bias"] for t in tensors])
        zoo = ZooLayer(weights, biases, mode=options.gate, normalisation=options.normalisation,
                       align=bool(options.align) if conv else options.align is True,
                       stride=layer.stride if conv else 1, padding=layer.padding if conv else 0,
                       gate_channels=gate_channels, lite_momentum=options.lite_momentum,
                       init_gates=options.init_gates, gate_lr=options.gate_lr, align_lr=options.align_lr,
                       bank_lr=options.bank_lr).to(layer.weight.device)
        if tensors is None:
            zoo.zoo_missing = self._zoo_missing
            zoo.zoo_bank_hook = zoo.register_forward_pre_hook(_require_filled_bank)
        return zoo

    @property
    def source_names(self) -> list[str]:
        """Display names of the sources, in zoo order: file stems and folder names, made unique as
        :func:`~zoo_rl.policy_sources.load_policy_zoo` makes them (readable without the files)."""
        names, seen = [], {}
        for spec in self.zoo_options.zoo:
            name = os.path.basename(spec.rstrip("/\\")).removesuffix(".zip")
            seen[name] = seen.get(name, -1) + 1
            names.append(f"{name}#{seen[name]}" if seen[name] else name)
        return names

    def gate_values(self) -> dict[str, torch.Tensor]:
        """Per zoo layer of the online networks, the ``(K,)`` gates last used (batch mean), or the moving
        average in lite mode; layers not run yet are left out."""
        out = {}
        for path, layer in self.named_modules():  # deduplicated: a shared extractor once
            if isinstance(layer, ZooLayer) and "_target" not in path:
                if layer.mode == "lite":
                    out[path] = layer.running_gates.detach().clone()
                elif layer.last_gates is not None:
                    out[path] = layer.last_gates.clone()
        return out


def _owned_by(key: str, layers: dict[str, ZooLayer]) -> bool:
    owner = key.rsplit(".", 1)[0]
    return any(owner == p or owner.startswith(p + ".") for p in layers)


def _carried_parameters(module: nn.Module, expected: dict[str, tuple[int, ...]],
                        converted: set[str]) -> dict[str, torch.Tensor]:
    """The parameters of ``module`` outside its layers, which start at the sources' weighted average.

    :raises ValueError: anything else with weights (a normalisation layer, an LSTM, an embedding):
        zoo layers aggregate Linear and Conv2d layers only.
    """
    state = module.state_dict(keep_vars=True)
    carried = {}
    for key in expected:
        if key in converted:
            continue
        owner_path = key.rsplit(".", 1)[0] if "." in key else ""
        owner = module.get_submodule(owner_path)
        if key.rsplit(".", 1)[-1] in CARRIED_PARAMETERS and isinstance(state[key], nn.Parameter):
            carried[key] = state[key]
        else:
            raise ValueError(
                f"{key} belongs to a {type(owner).__name__}, which zoo layers cannot aggregate: they build Linear and "
                "Conv2d layers from the sources (and start log_std at their average). Use a policy whose other "
                "modules have no weights.")
    return carried


def _unflatten_nature_cnns(module: nn.Module) -> dict[int, int]:
    """Let each NatureCNN's linear layer read its last convolution map unflattened.

    Its zoo layer flattens the map itself, and its gate pools the map over space to the last
    convolution's channels, as the paper's gate and :class:`~zoo_rl.ZooExtractor` do (a gate on the
    3136 flattened values would hold more weights than the layer's own source). The state dict is
    unchanged: ``nn.Flatten`` has none.

    :return: ``{id(linear layer): gate channels}``.
    """
    channels = {}
    for net in module.modules():
        if isinstance(net, NatureCNN) and isinstance(net.linear[0], nn.Linear) and isinstance(net.cnn[-1], nn.Flatten):
            convs = [m for m in net.cnn if isinstance(m, nn.Conv2d)]
            net.cnn[-1] = nn.Identity()
            channels[id(net.linear[0])] = convs[-1].out_channels
    return channels


def check_family(sources: Sequence[PolicySource], policy_class: type) -> None:
    """:raises ValueError: a source of another algorithm family than ``policy_class``'s (naming it)."""
    family = policy_class.family
    for source in sources:
        if source.family != family:
            what = FAMILIES.get(source.family or "", "no SB3 policy this library knows")
            some = ", ".join(sorted(source.state)[:4])
            raise ValueError(
                f"Source {source.name!r} ({source.origin}) is a {what} policy (tensors {some}, ...), but "
                f"{policy_class.__name__} needs {FAMILIES[family]} sources: every source must be trained with the "
                "target's algorithm family and architecture.")


def check_agree(sources: Sequence[PolicySource]) -> None:
    """:raises ValueError: sources that disagree with each other on a tensor's shape, before any policy is built
    (the message names each tensor and its shape in every source); the tensors one source lacks are found
    against the policy when it is built (:func:`check_fit`)."""
    common = set.intersection(*(set(source.state) for source in sources))
    problems = []
    for key in sorted(common):
        shapes = [tuple(source.state[key].shape) for source in sources]
        if len(set(shapes)) > 1:
            problems.append(f"  - {key}: " + ", ".join(f"{s.name!r} {shape}" for s, shape in zip(sources, shapes)))
    if problems:
        raise ValueError(f"The sources do not share one architecture ({_named(sources)}):\n{_listed(problems)}\n"
                         "Every source must have the target's architecture: train them with the same net_arch, "
                         "features extractor and spaces.")


def _named(sources: Sequence[PolicySource]) -> str:
    return ", ".join(f"{s.name!r} ({s.origin})" for s in sources)


def _listed(problems: list[str], most: int = 8) -> str:
    """The first ``most`` lines of a mismatch, and how many more there are."""
    more = [f"  ... and {len(problems) - most} more"] if len(problems) > most else []
    return "\n".join(problems[:most] + more)


def check_fit(policy: nn.Module, expected: dict[str, tuple[int, ...]], tensors: list[dict[str, torch.Tensor]],
              sources: Sequence[PolicySource], key_prefix: str) -> None:
    """:raises ValueError: a source that lacks a tensor of the module, has one the module lacks, or has another
    shape; the message names each layer, its shape here and in every source."""
    problems = []
    keys = list(expected) + sorted({k for t in tensors for k in t if k not in expected})
    for key in keys:
        shapes = [tuple(t[key].shape) if key in t else None for t in tensors]
        want = expected.get(key)
        if all(shape == want for shape in shapes):
            continue
        here = "absent from this policy" if want is None else f"{want} in this policy"
        each = ", ".join(f"{s.name!r} {shape if shape is not None else 'absent'}" for s, shape in zip(sources, shapes))
        problems.append(f"  - {key_prefix}{key}: {here}; {each}")
    if problems:
        raise ValueError(
            f"The zoo does not fit this {type(policy).__name__} on observations {policy.observation_space} and "
            f"actions {policy.action_space} (sources {_named(sources)}):\n{_listed(problems)}\nEvery source must have the "
            "target's architecture: the same observation and action spaces, net_arch, n_critics / n_quantiles, "
            "features extractor and share_features_extractor. Pass the sources' policy_kwargs to zoo_policy.")


class _ActorCriticZoo(ZooPolicyMixin):
    """The conversion of an actor-critic policy.

    SB3 creates ``action_net`` and ``value_net`` inside ``_build``, then ortho-initialises and builds
    the optimizer: the policy converts itself at the end of ``_build`` (the orthogonal weights are
    replaced by the banks) and builds the optimizer again over the zoo layers.
    """

    family = "actor-critic"

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        self._zooify(self, "")
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)


class ZooActorCriticPolicy(_ActorCriticZoo, ActorCriticPolicy):
    """``ActorCriticPolicy`` (PPO, A2C, TRPO) whose every layer is a zoo layer of actor-critic sources."""

    plain_policy = ActorCriticPolicy


class ZooMaskableActorCriticPolicy(_ActorCriticZoo, MaskableActorCriticPolicy):
    """``MaskableActorCriticPolicy`` (MaskablePPO) whose every layer is a zoo layer of actor-critic sources."""

    plain_policy = MaskableActorCriticPolicy


class _ActorCriticFactories(ZooPolicyMixin):
    """The off-policy families' factories (SAC, TQC, TD3/DDPG): actor and critics, online and target, are zoo
    networks from the moment SB3 builds them."""

    def make_actor(self, features_extractor: Any = None) -> Any:
        return self._zooify(super().make_actor(features_extractor), "actor")

    def make_critic(self, features_extractor: Any = None) -> Any:
        return self._zooify(super().make_critic(features_extractor), "critic")


class ZooSACPolicy(_ActorCriticFactories, SACPolicy):
    """``SACPolicy`` whose actor and critics (and the critic target) are built from SAC sources."""

    family = "sac"
    plain_policy = SACPolicy


class ZooTQCPolicy(_ActorCriticFactories, TQCPolicy):
    """``TQCPolicy`` whose actor and quantile critics (and the critic target) are built from TQC sources."""

    family = "tqc"
    plain_policy = TQCPolicy


class ZooTD3Policy(_ActorCriticFactories, TD3Policy):
    """``TD3Policy`` (TD3 and DDPG) whose actor, critics and their targets are built from TD3/DDPG sources."""

    family = "td3"
    plain_policy = TD3Policy


class ZooDQNPolicy(ZooPolicyMixin, DQNPolicy):
    """``DQNPolicy`` whose Q-network (and its target) is built from DQN sources."""

    family = "dqn"
    plain_policy = DQNPolicy

    def make_q_net(self) -> QNetwork:
        return self._zooify(super().make_q_net(), "q_net")


class ZooQRDQNPolicy(ZooPolicyMixin, QRDQNPolicy):
    """``QRDQNPolicy`` whose quantile network (and its target) is built from QR-DQN sources."""

    family = "qrdqn"
    plain_policy = QRDQNPolicy

    def make_quantile_net(self) -> QuantileNetwork:
        return self._zooify(super().make_quantile_net(), "quantile_net")


#: The zoo policy of each SB3 policy family (matched along the base policy's MRO).
ZOO_POLICIES: dict[type[BasePolicy], type[ZooPolicyMixin]] = {
    ActorCriticPolicy: ZooActorCriticPolicy,
    MaskableActorCriticPolicy: ZooMaskableActorCriticPolicy,
    SACPolicy: ZooSACPolicy,
    TQCPolicy: ZooTQCPolicy,
    TD3Policy: ZooTD3Policy,
    DQNPolicy: ZooDQNPolicy,
    QRDQNPolicy: ZooQRDQNPolicy,
}
#: Algorithms by lower-case name, for ``zoo_policy("sac", ...)``.
ALGORITHMS: dict[str, type[BaseAlgorithm]] = {
    "ppo": PPO, "a2c": A2C, "trpo": TRPO, "sac": SAC, "td3": TD3, "ddpg": DDPG, "tqc": TQC, "dqn": DQN,
    "qrdqn": QRDQN, "crossq": CrossQ, "recurrentppo": RecurrentPPO, "maskableppo": MaskablePPO, "ars": ARS,
}
_UNSUPPORTED: dict[type, str] = {
    CrossQPolicy: (
        "CrossQ is not supported: batch renormalisation precedes every linear layer of its actor and critics, and its "
        "statistics and affine weights describe one network's activations. An aggregate of K sources has "
        "activations that no source's statistics describe, and CrossQ, which has no target networks, relies on "
        "them. Use SAC or TQC (sources and target) instead."),
    RecurrentActorCriticPolicy: (
        "RecurrentPPO is not supported: its LSTM layers are neither Linear nor Conv2d, so no zoo layer can "
        "aggregate them. Use PPO with an MlpPolicy or CnnPolicy (e.g. with frame stacking) instead."),
}


def zoo_policy_class(base: type[BasePolicy]) -> type[ZooPolicyMixin]:
    """The zoo policy that extends SB3's ``base`` policy class (or one of its subclasses, e.g. ``CnnPolicy``).

    :raises ValueError: a policy family that zoo layers do not support, and why.
    """
    for cls in base.__mro__:
        if cls in _UNSUPPORTED:
            raise ValueError(_UNSUPPORTED[cls])
        if cls in ZOO_POLICIES:
            return ZOO_POLICIES[cls]
    supported = "PPO, A2C, TRPO, MaskablePPO, SAC, TD3, DDPG, TQC, DQN and QR-DQN"
    raise ValueError(f"{base.__name__} is not a policy family zoo layers support ({supported}).")


def policy_base(algo_class: type[BaseAlgorithm], policy: str | type[BasePolicy]) -> type[BasePolicy]:
    """The SB3 policy class that ``ALGO(policy, env)`` would build: ``policy`` itself, or ``algo_class``'s alias.

    :raises ValueError: a name that is none of the algorithm's aliases (they are listed).
    """
    if not isinstance(policy, str):
        return policy
    if policy not in algo_class.policy_aliases:
        raise ValueError(f"{algo_class.__name__} has no policy {policy!r}; choose one of "
                         f"{', '.join(algo_class.policy_aliases)}.")
    return algo_class.policy_aliases[policy]


def zoo_policy(
    algo: type[BaseAlgorithm] | str,
    zoo: Sequence[str | os.PathLike],
    policy: str | type[BasePolicy] = "MlpPolicy",
    *,
    gate: str = "lite",
    normalisation: str = POLICY_NORMALISATION,
    align: bool | str = True,
    lite_momentum: float = LITE_MOMENTUM,
    init_gates: Sequence[float] | None = None,
    gate_lr: float = 1.0,
    align_lr: float = 1.0,
    bank_lr: float = 1.0,
    vec_normalize: Sequence[str | os.PathLike | None] | None = None,
    **policy_kwargs: Any,
) -> tuple[type[BasePolicy], dict[str, Any]]:
    """The policy class and ``policy_kwargs`` that build ``algo``'s policy from a zoo of its own kind::

        policy, policy_kwargs = zoo_policy(SAC, zoo=["sac-a.zip", "sac-b.zip"], net_arch=[64, 64])
        model = SAC(policy, env, policy_kwargs=policy_kwargs)

    :param algo: the algorithm class (``SAC``) or its lower-case name (``"sac"``).
    :param zoo: K sources of ``algo``'s family and the target's architecture: SB3 zips or compact zoo
        folders (:func:`zoo_rl.policy_sources.load_policy_source`).
    :param policy: ``"MlpPolicy"``, ``"CnnPolicy"``, ``"MultiInputPolicy"`` or an SB3 policy class of
        ``algo``: which features extractor the policy has (as in ``ALGO(policy, env)``).
    :param gate: ``lite`` (default: batch-mean gates whose moving average is used in training and at
        inference, so the model merges into one plain network: :func:`zoo_rl.export_lite`),
        ``sample`` (per-sample gates, the paper's), ``batch`` or ``uniform`` (weight averaging).
    :param normalisation: gate normalisation, ``sigmoid-sum`` (default: :data:`POLICY_NORMALISATION`, the
        gates of a layer divided by their sum), ``softmax`` or ``sigmoid`` (the paper's).
    :param align: a learnable output-channel alignment per source on every layer (``True``), on the
        convolutions only (``"conv"``), or nowhere (``False``).
    :param lite_momentum: momentum of the lite moving average.
    :param init_gates: ``(K,)`` start gates of every layer, in zoo order (e.g. :func:`zoo_rl.ranked_gates`);
        default: equal. Parameters outside the layers (PPO's ``log_std``) start at the sources'
        average weighted by the start gates.
    :param gate_lr: learning-rate multiplier of the gate networks.
    :param align_lr: learning-rate multiplier of the alignments.
    :param bank_lr: learning-rate multiplier of the banks. The policy's optimizer honours the three
        multipliers (it is made a :func:`zoo_rl.optim.zoo_optimizer`; with every multiplier at 1 it
        steps as the plain optimizer).
    :param vec_normalize: one ``vecnormalize.pkl`` (or ``None``) per source trained under
        ``VecNormalize``: its observation normalisation is folded into the source's first layers and its
        return normalisation into its value heads, so that the target trains on raw observations and
        rewards (:func:`zoo_rl.policy_sources.fold_vec_normalize`).
    :param policy_kwargs: the rest of the policy's keyword arguments, as the sources were built with
        (``net_arch``, ``activation_fn``, ``n_critics``, ``n_quantiles``, ``share_features_extractor``...).
    :return: ``(policy_class, policy_kwargs)``; ``policy_kwargs`` hold only lists, strings and numbers
        besides SB3's own, so that ``ALGO.load`` rebuilds the policy without the source files.
    :raises ValueError: an unsupported algorithm, bad options, sources of another algorithm family, or sources
        whose tensors disagree in shape with each other (their fit to the target's spaces and ``net_arch`` is
        checked when the policy is built).
    """
    algo_class = ALGORITHMS.get(algo.lower()) if isinstance(algo, str) else algo
    if algo_class is None:
        raise ValueError(f"Unknown algorithm {algo!r}; give the class or one of {', '.join(ALGORITHMS)}.")
    for alias in algo_class.policy_aliases.values():  # an unsupported family says why, whatever the policy name
        for cls in alias.__mro__:
            if cls in _UNSUPPORTED:
                raise ValueError(_UNSUPPORTED[cls])
    base = policy_base(algo_class, policy)
    policy_class = zoo_policy_class(base)
    options = ZooOptions.make(zoo, gate, normalisation, align, lite_momentum, init_gates, gate_lr, align_lr, bank_lr,
                              vec_normalize)
    sources, _ = read_zoo(options)
    if sources is not None:
        check_family(sources, policy_class)
        check_agree(sources)
    kwargs = dict(policy_kwargs)
    # SB3's CnnPolicy / MultiInputPolicy differ from MlpPolicy only by their extractor's default: keep it.
    default_extractor = inspect.signature(base.__init__).parameters["features_extractor_class"].default
    if default_extractor is not FlattenExtractor:
        kwargs.setdefault("features_extractor_class", default_extractor)
    kwargs.update(options.as_kwargs())
    return policy_class, kwargs


def export_zoo_policy(model: Model) -> Model:
    """A new model of the same algorithm with SB3's plain policy, each zoo layer merged into one layer.

    Each layer becomes ``Σ_k α̂_k A_k W_k`` and ``Σ_k α̂_k A_k b_k`` (the lite moving average, or 1/K
    for ``uniform``); target networks are merged from their own layers; other tensors and the
    algorithm's own variables (SAC's entropy coefficient) are copied; the optimizers start anew. In
    eval mode the result takes the same actions as the zoo model, and loads with no zoo_rl import.

    :raises ValueError: a model without a zoo policy, or one whose gates depend on the input.
    """
    policy = model.policy
    if not isinstance(policy, ZooPolicyMixin):
        raise ValueError("export_zoo_policy needs a model built with zoo_rl.zoo_policy.")
    if policy.zoo_options.gate not in ("lite", "uniform"):
        raise ValueError(f"This model uses gate={policy.zoo_options.gate!r}, whose gates depend on the input and cannot "
                         "be merged into one network. Train with gate='lite' to deploy a single network.")
    layers = zoo_layers(policy)
    state = {key: value for key, value in policy.state_dict().items() if not _owned_by(key, layers)}
    for path, layer in layers.items():
        weight, bias = layer.merged()
        state[f"{path}.weight"], state[f"{path}.bias"] = weight.clone(), bias.clone()

    plain_class = type(policy).plain_policy
    policy_kwargs = {k: v for k, v in model.policy_kwargs.items() if k not in ZOO_OPTIONS}
    optimizer_class = policy_kwargs.get("optimizer_class")
    if isinstance(optimizer_class, type) and issubclass(optimizer_class, LRMultipliers):
        # No multipliers left to honour: the plain optimizer, so that loading the model needs no zoo_rl.
        policy_kwargs["optimizer_class"] = next(c for c in optimizer_class.__mro__[1:]
                                                if issubclass(c, torch.optim.Optimizer)
                                                and not issubclass(c, LRMultipliers))
    # Rebuild the way SB3's load() does: same class and attributes, plain policy.
    plain = type(model)(policy=plain_class, env=None, device=model.device, _init_setup_model=False)
    excluded = set(model._excluded_save_params())
    plain.__dict__.update({k: v for k, v in model.__dict__.items() if k not in excluded})
    plain.policy_class = plain_class
    plain.policy_kwargs = policy_kwargs
    plain._setup_model()
    plain.policy.load_state_dict(state)
    _, variables = model._get_torch_save_params()
    with torch.no_grad():
        for name in variables or []:
            source, target = _getattr_path(model, name), _getattr_path(plain, name)
            if isinstance(source, torch.Tensor) and isinstance(target, torch.Tensor):
                target.copy_(source)
    plain.policy.set_training_mode(False)
    if model.get_env() is not None:
        plain.set_env(model.get_env())
    return plain


def _getattr_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
    return obj


__all__ = [
    "ZOO_OPTIONS", "ZooActorCriticPolicy", "ZooDQNPolicy", "ZooMaskableActorCriticPolicy", "ZooOptions", "ZooPolicyMixin", "ZooQRDQNPolicy",
    "ZooSACPolicy", "ZooTD3Policy", "ZooTQCPolicy", "export_zoo_policy", "zoo_layers", "zoo_policy",
    "zoo_policy_class",
]
