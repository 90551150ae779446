"""``ZooExtractor``: a NatureCNN built from a zoo of pretrained NatureCNNs, for any SB3 algorithm.

    model = PPO("CnnPolicy", env, learning_rate=1e-4, policy_kwargs=dict(
        features_extractor_class=ZooExtractor,
        features_extractor_kwargs=dict(zoo=["agents/zoo/breakout", "ppo-SpaceInvaders.zip"]),
        net_arch=[]))

The topology is NatureCNN's (conv 8x8/4 -> conv 4x4/2 -> conv 3x3/1 -> linear to 512, ReLU
after each), every layer a :class:`~zoo_rl.layers.ZooLayer` initialised from the K sources.

How it stays correct inside SB3 (the traps are listed in ``docs/design.md``):

- the bank is made of raw parameters, so ``ortho_init`` cannot overwrite it;
- the zoo is read once per process and shared by every extractor SB3 builds (DQN's target
  network, ``share_features_extractor=False``);
- ``features_extractor_kwargs`` hold only paths, names and numbers, so ``save`` stays small
  and ``load`` works with the zoo files gone: the extractor is then built with an empty bank
  of the right shapes, which SB3 fills from the saved weights (using such an extractor without
  weights raises the original "not found" error);
- the lite moving averages are ``running_*`` buffers, which DQN copies to its target network;
- SB3 divides images by 255 before the extractor, and so do all supported source formats.
"""

from __future__ import annotations

import os
import warnings
from typing import Sequence

import gymnasium as gym
import torch
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from zoo_rl.optim import honoured, lr_multiplier
from zoo_rl.layers import DEFAULT_NORMALISATION, GATE_MODES, LITE_MOMENTUM, NORMALISATIONS, GateMode, Normalisation, ZooLayer, check_choice
from zoo_rl.sources import LAYERS, Source, SourceUnavailable, load_zoo

#: NatureCNN's convolutions: (out_channels, kernel, stride), in forward order.
NATURE_CONVS: tuple[tuple[int, int, int], ...] = ((32, 8, 4), (64, 4, 2), (64, 3, 1))
NATURE_FEATURES = 512

_ZOO_CACHE: dict[tuple[str, ...], list[Source]] = {}


def cached_zoo(specs: Sequence[str | os.PathLike]) -> list[Source]:
    """:func:`~zoo_rl.sources.load_zoo`, read once per process for the same list of specs."""
    key = tuple(os.fspath(s) for s in specs)
    if key not in _ZOO_CACHE:
        _ZOO_CACHE[key] = load_zoo(list(key))
    return _ZOO_CACHE[key]


def nature_shapes(observation_space: gym.spaces.Box, features_dim: int = NATURE_FEATURES) -> dict[str, tuple[int, ...]]:
    """Weight shapes of NatureCNN on ``observation_space`` (channels first), by layer name."""
    channels, height, width = observation_space.shape
    shapes = {}
    for name, (out, kernel, stride) in zip(LAYERS[:3], NATURE_CONVS):
        shapes[name] = (out, channels, kernel, kernel)
        channels, height, width = out, (height - kernel) // stride + 1, (width - kernel) // stride + 1
        if height < 1 or width < 1:
            raise ValueError(f"Observations of shape {observation_space.shape} are too small for NatureCNN.")
    shapes[LAYERS[3]] = (features_dim, channels * height * width)
    return shapes


class ZooExtractor(BaseFeaturesExtractor):
    """NatureCNN whose layers aggregate a zoo of K pretrained NatureCNNs (Zoo-Tuning).

    :param observation_space: channel-first image space, e.g. ``Box(0, 255, (4, 84, 84), uint8)``.
    :param zoo: the sources: compact zoo folders, SB3 zips, CleanRL checkpoints or hub ids
        (see :func:`zoo_rl.sources.load_source`). K = ``len(zoo)``.
    :param gate: ``lite`` (default: batch-mean gates with a moving average that merges into
        one plain network, at about the cost of one network), ``sample`` (per-sample gates, the
        paper's exact layer, K times the linear layer's cost), ``batch`` or ``uniform``.
    :param normalisation: ``sigmoid`` (default, the paper's), ``softmax`` or ``sigmoid-sum``; see
        :mod:`zoo_rl.layers` for why the default is not normalised.
    :param align: learn a channel-alignment matrix per source on every layer (``True``), on the
        convolutions only (``"conv"``: the paper's code aligns only kernels larger than 1x1; this
        saves the K-fold cost of aligning the 3136->512 layer), or nowhere (``False``).
    :param lite_momentum: momentum of the lite moving average.
    :param features_dim: must equal the sources' feature size (512 for NatureCNN).
    :param init_gates: ``(K,)`` gate values of every layer at the start, in ``zoo`` order (default:
        equal, the paper's start); e.g. :func:`zoo_rl.layers.ranked_gates` to start from one source.
    :param gate_lr: learning-rate multiplier of the gate networks (1: the paper's single rate).
    :param align_lr: learning-rate multiplier of the alignments.
    :param bank_lr: learning-rate multiplier of the source banks.

    Multipliers other than 1 need an optimizer that honours them: ``optimizer_class=ZooAdam``
    (or another of :mod:`zoo_rl.optim`) in ``policy_kwargs``; training with a plain optimizer
    raises an error at the first training forward pass instead of silently ignoring them.
    """

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        zoo: Sequence[str],
        gate: GateMode = "lite",
        normalisation: Normalisation = DEFAULT_NORMALISATION,
        align: bool | str = True,
        lite_momentum: float = LITE_MOMENTUM,
        features_dim: int = NATURE_FEATURES,
        init_gates: Sequence[float] | None = None,
        gate_lr: float = 1.0,
        align_lr: float = 1.0,
        bank_lr: float = 1.0,
    ) -> None:
        if not isinstance(observation_space, gym.spaces.Box) or not is_image_space(observation_space, check_channels=False):
            raise ValueError(
                f"ZooExtractor needs an image observation space (C, H, W), got {observation_space}. "
                "Use it with CnnPolicy on image environments (e.g. envs.make_atari)."
            )
        check_choice(gate, GATE_MODES, "gate mode")
        check_choice(normalisation, NORMALISATIONS, "gate normalisation")
        if align not in (True, False, "conv"):
            raise ValueError(f"align must be True, False or 'conv', got {align!r}.")
        if isinstance(zoo, (str, os.PathLike)) or len(zoo) == 0:
            raise ValueError("zoo must be a non-empty list of sources, e.g. zoo=['agents/zoo/breakout'].")
        super().__init__(observation_space, features_dim)
        shapes = nature_shapes(observation_space, features_dim)
        self._missing: str | None = None
        try:
            sources = cached_zoo(zoo)
        except SourceUnavailable as exc:
            # Possibly SB3's load(): the saved state will fill an empty bank. Used without it, fail.
            self._missing = str(exc)
            sources = None
            warnings.warn(f"{exc} ZooExtractor built with an empty bank; it works only once weights are loaded.")
        if sources is not None:
            _check_against_env(sources, shapes, observation_space)
        self.source_names = [s.name for s in sources] if sources else [os.path.basename(os.fspath(z).rstrip("/")) for z in zoo]
        self.gate_mode = gate
        k = len(zoo)

        def bank(layer: str) -> tuple[torch.Tensor, torch.Tensor]:
            if sources is None:
                return torch.zeros(k, *shapes[layer]), torch.zeros(k, shapes[layer][0])
            return (torch.stack([s.state[f"{layer}.weight"] for s in sources]),
                    torch.stack([s.state[f"{layer}.bias"] for s in sources]))

        if init_gates is not None and len(init_gates) != k:
            raise ValueError(f"init_gates has {len(init_gates)} values for a zoo of {k} sources: give one per source, "
                             "in zoo order.")
        common = dict(mode=gate, normalisation=normalisation, lite_momentum=lite_momentum, init_gates=init_gates,
                      gate_lr=gate_lr, align_lr=align_lr, bank_lr=bank_lr)
        self.layers = nn.ModuleDict()
        for name, (_, _, stride) in zip(LAYERS[:3], NATURE_CONVS):
            self.layers[name.replace(".", "_")] = ZooLayer(*bank(name), stride=stride, align=bool(align), **common)
        # The linear layer's gate pools the last conv map over space, like the conv gates do.
        self.layers["linear_0"] = ZooLayer(*bank("linear.0"), gate_channels=NATURE_CONVS[-1][0],
                                           align=align is True, **common)
        self.register_buffer("zoo_loaded", torch.tensor(0.0 if sources is None else 1.0))
        self._multipliers_checked = all(lr_multiplier(p) == 1.0 for p in self.parameters())

    @property
    def n_sources(self) -> int:
        return len(self.source_names)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        if self._missing is not None:
            if self.zoo_loaded.item() == 0:
                raise SourceUnavailable(self._missing)
            self._missing = None  # weights were loaded into the bank
        if not self._multipliers_checked and self.training and torch.is_grad_enabled():
            self._check_optimizer()
        x = observations
        for layer in self.layers.values():
            # In place: every path of ZooLayer returns a fresh tensor that nothing else reads.
            x = torch.relu_(layer(x))
        return x

    def _check_optimizer(self) -> None:
        ignored = [n for n, p in self.named_parameters() if lr_multiplier(p) != 1.0 and not honoured(p)]
        if ignored:
            raise ValueError(
                f"ZooExtractor has learning-rate multipliers (gate_lr, align_lr or bank_lr) but no optimizer honours "
                f"them ({ignored[0]}, ...): pass optimizer_class=zoo_rl.ZooAdam (or zoo_rl.optim.zoo_optimizer(<your "
                "optimizer>)) in policy_kwargs, or leave the multipliers at 1.")
        self._multipliers_checked = True

    def gate_values(self) -> dict[str, torch.Tensor]:
        """Per layer, the ``(K,)`` gates last used (batch mean), or the moving average in lite mode."""
        out = {}
        for name, layer in self.layers.items():
            if layer.mode == "lite":
                out[name] = layer.running_gates.detach().clone()
            elif layer.last_gates is not None:
                out[name] = layer.last_gates.clone()
        return out

    @torch.no_grad()
    def merged_state(self) -> dict[str, torch.Tensor]:
        """The plain NatureCNN this extractor equals at inference (``lite`` and ``uniform`` modes).

        Keys are SB3 NatureCNN's: ``cnn.0.weight`` ... ``linear.0.bias``.
        """
        state = {}
        for (name, layer), key in zip(self.layers.items(), LAYERS):
            weight, bias = layer.merged()
            state[f"{key}.weight"], state[f"{key}.bias"] = weight.clone(), bias.clone()
        return state


def _check_against_env(sources: list[Source], shapes: dict[str, tuple[int, ...]], space: gym.spaces.Box) -> None:
    for layer in LAYERS:
        got = sources[0].shape(layer)
        if got != shapes[layer]:
            raise ValueError(
                f"The zoo does not fit this environment: layer {layer} of source {sources[0].name!r} has shape "
                f"{got}, but NatureCNN on observations {tuple(space.shape)} needs {shapes[layer]}. Zoo sources "
                "must be trained on the same observation format (e.g. 84x84 grey, 4 stacked frames, channel first)."
            )
