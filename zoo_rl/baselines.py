"""Transfer baselines that Zoo-Tuning is compared with.

- fine-tuning one source: a plain NatureCNN whose weights are set from the source *after*
  SB3 built the policy (:func:`load_extractor_weights`), so ``ortho_init`` cannot undo it;
- :class:`EnsembleExtractor`: the K frozen source extractors side by side, features
  concatenated (K x 512) for a learned head: the K-times-cost peer of Zoo-Tuning.
"""

from __future__ import annotations

import os
from typing import Sequence

import gymnasium as gym
import torch
import torch.nn.functional as F
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, NatureCNN

from zoo_rl.extractor import NATURE_CONVS, NATURE_FEATURES, _check_against_env, cached_zoo, nature_shapes
from zoo_rl.sources import LAYERS, Source


def load_extractor_weights(model: BaseAlgorithm, source: Source) -> int:
    """Copy ``source`` into every NatureCNN of ``model`` (online and target, actor and critic).

    :return: the number of extractors written.
    """
    count = 0
    for _, module in model.policy.named_modules(remove_duplicate=True):
        if isinstance(module, NatureCNN):
            state = {key: source.state[key].to(module.linear[0].weight.device) for key in module.state_dict()}
            module.load_state_dict(state)
            count += 1
    if count == 0:
        raise ValueError("The model has no NatureCNN extractor to fine-tune: build it with CnnPolicy.")
    return count


class EnsembleExtractor(BaseFeaturesExtractor):
    """K frozen source NatureCNNs side by side; features ``(B, K * 512)``.

    The sources are buffers, not parameters: nothing in them trains, and neither SB3's
    ``ortho_init`` nor the optimizer touches them. Only the heads learn.

    :param observation_space: channel-first image space.
    :param zoo: sources, as for :class:`~zoo_rl.extractor.ZooExtractor`.
    """

    def __init__(self, observation_space: gym.spaces.Box, zoo: Sequence[str]) -> None:
        if isinstance(zoo, (str, os.PathLike)) or len(zoo) == 0:
            raise ValueError("zoo must be a non-empty list of sources, e.g. zoo=['agents/zoo/breakout'].")
        super().__init__(observation_space, NATURE_FEATURES * len(zoo))
        shapes = nature_shapes(observation_space)
        sources = cached_zoo(zoo)
        _check_against_env(sources, shapes, observation_space)
        self.source_names = [s.name for s in sources]
        for layer in LAYERS:
            key = layer.replace(".", "_")
            # (K, O, I, kh, kw) stacked so that all K sources run as one grouped convolution
            self.register_buffer(f"{key}_weight", torch.stack([s.state[f"{layer}.weight"] for s in sources]))
            self.register_buffer(f"{key}_bias", torch.stack([s.state[f"{layer}.bias"] for s in sources]))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        k = len(self.source_names)
        b = observations.shape[0]
        # First conv: all K kernels at once on the shared input, output (B, K*32, H, W).
        w, bias = self.cnn_0_weight, self.cnn_0_bias
        x = F.relu(F.conv2d(observations, w.reshape(-1, *w.shape[2:]), bias.reshape(-1), NATURE_CONVS[0][2]))
        # Later convs: groups=K keeps source k on its own channels: (B, K*I) -> (B, K*O).
        for key, (_, _, stride) in zip(("cnn_2", "cnn_4"), NATURE_CONVS[1:]):
            w, bias = getattr(self, f"{key}_weight"), getattr(self, f"{key}_bias")
            x = F.relu(F.conv2d(x, w.reshape(-1, *w.shape[2:]), bias.reshape(-1), stride, groups=k))
        # Linear per source: (K, B, C*H*W) @ (K, C*H*W, 512) -> (K, B, 512) -> (B, K*512)
        x = x.reshape(b, k, -1).transpose(0, 1)
        out = torch.baddbmm(self.linear_0_bias.unsqueeze(1), x, self.linear_0_weight.transpose(1, 2))
        return F.relu(out).transpose(0, 1).reshape(b, -1)
