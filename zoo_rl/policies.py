"""A faster CPU pipeline for SB3 actor-critic policies: bfloat16 extractor, channels-last.

:class:`FastCnnPolicy` is SB3's ``CnnPolicy`` (any features extractor, ZooExtractor
included) whose feature extractor runs under ``torch.autocast("cpu", torch.bfloat16)`` on
channels-last tensors. Everything after the extractor (the heads, the distribution, every
loss term) stays float32: features are cast back to float32 as they leave the extractor.
The parameters and Adam's state stay float32 as well; only the matmuls/convolutions of the
extractor run in bfloat16. The same rule holds in rollouts and in updates, so PPO's ratio
sees one network, not two.

Use ``policy=FastCnnPolicy`` (or ``"FastCnnPolicy"`` through :func:`policy_class`) where you
would write ``"CnnPolicy"``; ``bf16=False, channels_last=False`` gives back plain float32.
Four more savings that change no value the policy sees: Adam runs fused (one kernel for all
parameters: ``python benchmarks/profile_ppo.py`` reports its step per minibatch against
``--plain``); the action distributions skip torch's argument checks (they run at every rollout
step, see :func:`_unchecked`); NatureCNN's ReLUs run in place; and on-policy algorithms can keep
their rollouts channels-last with :class:`ChannelsLastRolloutBuffer` (pass :func:`algo_kwargs`
to the algorithm), so that minibatches need a dtype cast but no transpose.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticCnnPolicy
from stable_baselines3.common.preprocessing import is_image_space, preprocess_obs
from stable_baselines3.common.torch_layers import NatureCNN
from stable_baselines3.common.type_aliases import RolloutBufferSamples
from torch import nn
from torch.distributions import Distribution as TorchDistribution

from zoo_rl.machine import cpu_supports_bf16


@contextlib.contextmanager
def _distribution_checks_off() -> Iterator[None]:
    """torch.distributions' argument checks off while distributions are built here (restored after)."""
    previous = TorchDistribution._validate_args
    TorchDistribution._validate_args = False
    try:
        yield
    finally:
        TorchDistribution._validate_args = previous


def _unchecked(distribution: Distribution) -> Distribution:
    """``distribution`` built without torch's argument checks, and with its later sample checks off.

    The checks (parameters within their constraints at construction, each sample in the support
    in ``log_prob``) test values that SB3's heads produce by construction (finite logits, actions
    sampled from the distribution itself or taken from the rollout buffer), at every rollout step
    and minibatch; a profile of ``collect_rollouts`` showed them next to the convolutions.
    Only the distributions of this policy are affected, not torch's global default.
    """
    inner = distribution.distribution
    for torch_distribution in inner if isinstance(inner, (list, tuple)) else [inner]:
        if isinstance(torch_distribution, TorchDistribution):
            torch_distribution._validate_args = False
    return distribution


#: The ``eps`` SB3's actor-critic policies give plain Adam when their ``optimizer_kwargs`` is None.
SB3_ADAM_EPS = 1e-5


class FastCnnPolicy(ActorCriticCnnPolicy):
    """``ActorCriticCnnPolicy`` with a bfloat16, channels-last feature extractor.

    :param bf16: run the extractor under bfloat16 autocast (``None``: when the CPU has native
        bfloat16 support, see :func:`cpu_supports_bf16`; always off on CUDA, where it is not needed
        for speed here). A saved model keeps the request, not its outcome: one trained with ``None``
        on a bf16 CPU and loaded on a CPU without it runs float32 there, not ~14x slower emulated bf16.
    :param channels_last: lay images out channels-last (NHWC), oneDNN's fast layout for convolutions.
    Adam (SB3's default optimizer) runs with ``fused=True`` unless ``optimizer_kwargs`` says otherwise; given no
    ``optimizer_kwargs``, plain Adam also gets SB3's ``eps=1e-5``, as in ``ActorCriticCnnPolicy`` (SB3 adds it only
    when ``optimizer_kwargs`` is None, which the ``fused`` default would otherwise hide: torch's 1e-8 instead).
    Action distributions skip torch's argument checks (the same values, see :func:`_unchecked`).
    Other arguments are those of :class:`~stable_baselines3.common.policies.ActorCriticCnnPolicy`.
    """

    def __init__(self, *args: Any, bf16: bool | None = None, channels_last: bool = True, **kwargs: Any) -> None:
        self._bf16_request = None if bf16 is None else bool(bf16)
        self.bf16 = cpu_supports_bf16() if bf16 is None else bool(bf16)
        self.channels_last = bool(channels_last)
        optimizer_class = kwargs.get("optimizer_class", torch.optim.Adam)
        if issubclass(optimizer_class, (torch.optim.Adam, torch.optim.AdamW)):  # ZooAdam too
            given = kwargs.get("optimizer_kwargs")
            optimizer_kwargs = dict(given or {})
            if given is None and optimizer_class is torch.optim.Adam:
                optimizer_kwargs["eps"] = SB3_ADAM_EPS  # SB3's rule, applied before the dict stops being None
            optimizer_kwargs.setdefault("fused", True)
            kwargs["optimizer_kwargs"] = optimizer_kwargs
        super().__init__(*args, **kwargs)
        if self.channels_last:  # conv kernels in NHWC too; other layouts (e.g. a zoo bank) are left alone
            for extractor in self._extractors():
                for module in extractor.modules():
                    if isinstance(module, nn.Conv2d):
                        module.to(memory_format=torch.channels_last)
        for extractor in self._extractors():
            if type(extractor) is NatureCNN:
                # Its forward is one nn.Sequential: each ReLU's input is a fresh conv/linear output that
                # nothing else reads, so the ReLU may overwrite it (the same values and gradients; saves
                # an allocation and a pass over each activation).
                # Not done for other extractors, whose forward may read a ReLU's input again.
                for module in extractor.modules():
                    if isinstance(module, nn.ReLU):
                        module.inplace = True

    def _extractors(self) -> list[nn.Module]:
        if self.share_features_extractor:
            return [self.features_extractor]
        return [self.pi_features_extractor, self.vf_features_extractor]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(bf16=self._bf16_request, channels_last=self.channels_last)
        return data

    def _run_extractor(self, obs: torch.Tensor, extractor: nn.Module) -> torch.Tensor:
        use_bf16 = self.bf16 and obs.device.type == "cpu"
        if self.channels_last and obs.dim() == 4 and self.normalize_images and is_image_space(self.observation_space):
            # One pass from the stored observations to the layout and dtype the convolutions
            # want (instead of float -> /255 -> NHWC copy -> bf16 copy), then scale in place.
            # Pixel values 0..255 are exact in bfloat16.
            # The uint8 transpose first, then a contiguous cast (a quarter of the bytes to move
            # than casting first); nothing to transpose when the rollout buffer is channels-last.
            x = obs.contiguous(memory_format=torch.channels_last)
            x = x.to(dtype=torch.bfloat16 if use_bf16 else torch.float32)
            if x.data_ptr() == obs.data_ptr():  # a float32 channels-last input: never scale the caller's tensor
                x = x.clone(memory_format=torch.channels_last)
            x = x.div_(255.0)
        else:
            x = preprocess_obs(obs, self.observation_space, normalize_images=self.normalize_images)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            features = extractor(x)
        return features.float()

    def extract_features(  # type: ignore[override]
        self, obs: torch.Tensor, features_extractor: nn.Module | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if features_extractor is not None:
            return self._run_extractor(obs, features_extractor)
        if self.share_features_extractor:
            return self._run_extractor(obs, self.features_extractor)
        return self._run_extractor(obs, self.pi_features_extractor), self._run_extractor(obs, self.vf_features_extractor)

    # SB3 calls BaseModel.extract_features directly (``super()``) in these two; route them
    # through the same bf16/channels-last path so that every forward sees the same network.
    def predict_values(self, obs: torch.Tensor) -> torch.Tensor:
        features = self._run_extractor(obs, self.vf_features_extractor)
        return self.value_net(self.mlp_extractor.forward_critic(features))

    def get_distribution(self, obs: torch.Tensor) -> Distribution:
        features = self._run_extractor(obs, self.pi_features_extractor)
        return self._get_action_dist_from_latent(self.mlp_extractor.forward_actor(features))

    def _get_action_dist_from_latent(self, latent_pi: torch.Tensor) -> Distribution:
        with _distribution_checks_off():
            return _unchecked(super()._get_action_dist_from_latent(latent_pi))


class ChannelsLastRolloutBuffer(RolloutBuffer):
    """SB3's ``RolloutBuffer`` that hands out image observations with channels-last strides.

    The observations of a finished rollout are transposed to NHWC once; each minibatch is then a
    ``(batch, C, H, W)`` tensor whose memory is already NHWC, which :class:`FastCnnPolicy` casts
    without a transpose (SB3's buffer would transpose every image once per epoch).
    Values, shapes and every other field are those of ``RolloutBuffer``.
    """

    def reset(self) -> None:
        super().reset()
        self._obs_nhwc: np.ndarray | None = None

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None) -> RolloutBufferSamples:
        if self.observations.ndim != 4:  # (n, C, H, W) images only; anything else as SB3 does it
            return super()._get_samples(batch_inds, env)
        if self._obs_nhwc is None:  # get() has flattened the buffer to (n, C, H, W) by now
            self._obs_nhwc = np.ascontiguousarray(self.observations.transpose(0, 2, 3, 1))
        observations = torch.as_tensor(self._obs_nhwc[batch_inds], device=self.device).permute(0, 3, 1, 2)
        data = (
            self.actions[batch_inds].astype(np.float32, copy=False),
            self.values[batch_inds].flatten(),
            self.log_probs[batch_inds].flatten(),
            self.advantages[batch_inds].flatten(),
            self.returns[batch_inds].flatten(),
        )
        return RolloutBufferSamples(observations, *tuple(map(self.to_torch, data)))


def algo_kwargs(policy: Any) -> dict[str, Any]:
    """Extra arguments for an on-policy SB3 algorithm running ``policy``: the channels-last
    rollout buffer when ``policy`` is :class:`FastCnnPolicy` (channels-last on), else nothing."""
    if isinstance(policy, type) and issubclass(policy, FastCnnPolicy):
        return {"rollout_buffer_class": ChannelsLastRolloutBuffer}
    return {}


def policy_class(name: str) -> Any:
    """``"FastCnnPolicy"`` -> the class; any other name is returned for SB3 to resolve."""
    return FastCnnPolicy if name == "FastCnnPolicy" else name
