"""Whole SB3 policies as zoo sources: every tensor of a pretrained policy, read without unpickling.

:func:`zoo_rl.zoo_policy` builds *every* layer of a policy from K sources, so a source
here is the whole policy state of one pretrained agent, keyed as SB3 keys it
(``actor.latent_pi.0.weight``, ``mlp_extractor.value_net.2.bias``, ``q_net.q_net.0.weight``, ...).

Formats understood by :func:`load_policy_source`:

- an **SB3 zip** of any algorithm: its tensors come from ``policy.pth`` only, read with
  ``torch.load(weights_only=True)``; the pickled objects inside the ``data`` entry are never
  unpickled, so a zip from a stranger cannot run code. The target networks' tensors
  (``critic_target.*``, ``q_net_target.*``, ...) are dropped: SB3 copies the online networks into the
  targets when it builds a policy. State dicts do not record the activation function, which a source
  must be run with: :func:`read_sb3_activation` reads the name of its class from ``data``'s JSON text
  (SB3 writes ``policy_kwargs["activation_fn"]`` there as ``"<class 'torch.nn...ReLU'>"``) into
  ``meta["architecture"]["activation"]``, where compact folders keep it;
- the project's **compact** folder (``weights.pt`` + ``meta.json``): its NatureCNN tensors
  (``features.*``) stand for every features-extractor copy of the policy, its ``head.*`` tensors are
  the rest of the policy under their SB3 keys; ``meta.json``'s ``architecture`` (``net_arch``,
  ``activation``) is written by :func:`zoo_rl.zoo_training.export_policy`;
- a **Hugging Face hub** id of the RL Baselines3 Zoo (``hf:sb3/sac-Pendulum-v1``), when the hub is
  reachable.

A source trained under ``VecNormalize`` expects normalised observations (and its value heads
predict normalised returns). Given the source's ``vecnormalize.pkl``, :func:`load_policy_source`
folds the normalisation into the source's own tensors (:func:`fold_vec_normalize`), so that every
source reads raw observations and predicts raw returns. That pickle is read by
:func:`read_vec_normalize`, which rebuilds numpy arrays and nothing else.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from zoo_rl.sources import (
    _HUB_ID,
    SourceUnavailable,
    _from_hub,
    read_compact,
    read_policy_pth,
    unique_names,
)

#: Algorithm families, by the name :func:`policy_family` gives them, with the algorithms of each:
#: sources and target must be of one family (and one architecture).
FAMILIES: dict[str, str] = {
    "actor-critic": "PPO, A2C or TRPO",
    "sac": "SAC",
    "tqc": "TQC",
    "td3": "TD3 or DDPG",
    "dqn": "DQN",
    "qrdqn": "QR-DQN",
    "crossq": "CrossQ",
}
#: Top-level modules of the target networks, whose tensors a source does not need.
TARGET_MODULES: tuple[str, ...] = ("actor_target", "critic_target", "q_net_target", "quantile_net_target")
#: The path segment under which SB3 keeps a features extractor.
EXTRACTOR = "features_extractor"
#: ``torch.nn`` activation classes by the names the project gives them (``meta.json``'s ``architecture``, the
#: hyperparameter files' ``activation_fn``, MULTIPOLAR's ``source_activation``).
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU, "silu": nn.SiLU,
    "sigmoid": nn.Sigmoid,
}
#: The same names by ``torch.nn`` class name (``"ReLU"`` -> ``"relu"``).
ACTIVATION_CLASSES: dict[str, str] = {cls.__name__: name for name, cls in ACTIVATIONS.items()}
_CLASS_REPR = re.compile(r"^<class '(?P<path>[\w.]+)'>$")
_EXTRACTOR_KEY = re.compile(r"(?:^|\.)(?:pi_|vf_)?features_extractor\.")


@dataclass
class VecNormalizeStats:
    """The part of a ``VecNormalize`` that a source's tensors depend on.

    :param obs_mean: running mean of the observations, in the observation's shape.
    :param obs_var: running variance, same shape.
    :param ret_var: running variance of the discounted return (a scalar).
    :param epsilon: added to the variances before their square root.
    :param clip_obs: normalised observations are clipped to ``[-clip_obs, clip_obs]``.
    :param clip_reward: normalised rewards are clipped to ``[-clip_reward, clip_reward]``.
    :param norm_obs: whether observations were normalised.
    :param norm_reward: whether rewards were normalised.
    """

    obs_mean: np.ndarray
    obs_var: np.ndarray
    ret_var: float
    epsilon: float
    clip_obs: float
    clip_reward: float
    norm_obs: bool
    norm_reward: bool


@dataclass
class PolicySource:
    """One zoo member: the tensors of a whole pretrained policy.

    :param name: short name used in messages and gate tables.
    :param origin: where it was read from.
    :param state: the online networks' tensors by SB3 key, float32 (no target networks).
    :param extractor: for a compact folder, the NatureCNN tensors (``cnn.0.weight`` ...) that stand
        for every features-extractor copy of the policy; ``None`` otherwise.
    :param family: the algorithm family (a key of :data:`FAMILIES`), or ``None`` if unknown.
    :param meta: free metadata.
    """

    name: str
    origin: str
    state: dict[str, torch.Tensor]
    extractor: dict[str, torch.Tensor] | None = None
    family: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def tensors(self, prefix: str, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        """The tensors of the module at ``prefix`` (``"actor."``, ``""`` for the whole policy), by key relative to it.

        :param keys: the module's own keys (relative to ``prefix``); used only to place a compact
            folder's extractor tensors under every extractor key of the module.
        """
        out = {k[len(prefix):]: v for k, v in self.state.items() if k.startswith(prefix)}
        if self.extractor is not None:
            for key in keys:
                match = list(_EXTRACTOR_KEY.finditer(key))
                if match:
                    rest = key[match[-1].end():]
                    if rest in self.extractor:
                        out[key] = self.extractor[rest]
        return out


def policy_family(state: Mapping[str, torch.Tensor]) -> str | None:
    """The algorithm family of a policy state dict (a key of :data:`FAMILIES`), from its module names.

    Actor-critic policies have ``action_net`` and ``value_net``; DQN a ``q_net``, QR-DQN a
    ``quantile_net``; CrossQ's actor and critic hold batch renormalisation (``ra_mean``); SAC and TQC
    actors have a ``log_std`` head and TD3's none; TQC critics output quantiles where SAC's output one
    value. ``None`` for anything else.
    """
    top = {k.split(".", 1)[0] for k in state}
    if {"action_net", "value_net"} <= top:
        return "actor-critic"
    if "q_net" in top:
        return "dqn"
    if "quantile_net" in top:
        return "qrdqn"
    if {"actor", "critic"} <= top:
        if any(k.endswith(".ra_mean") for k in state):
            return "crossq"
        if not any(k.startswith("actor.log_std") for k in state):
            return "td3"
        last = _last_layer(state, "critic.qf0.")
        return "sac" if last is not None and state[f"{last}.weight"].shape[0] == 1 else "tqc"
    return None


def _last_layer(state: Mapping[str, torch.Tensor], prefix: str) -> str | None:
    """The key (without ``.weight``) of the last linear layer of the ``nn.Sequential`` at ``prefix``."""
    indices = [int(m.group(1)) for k in state if (m := re.fullmatch(re.escape(prefix) + r"(\d+)\.weight", k))]
    return f"{prefix}{max(indices)}" if indices else None


def _first_layer(state: Mapping[str, torch.Tensor], prefix: str) -> str | None:
    indices = [int(m.group(1)) for k in state if (m := re.fullmatch(re.escape(prefix) + r"(\d+)\.weight", k))]
    return f"{prefix}{min(indices)}" if indices else None


def load_policy_source(spec: str | os.PathLike, name: str | None = None,
                       vec_normalize: str | os.PathLike | None = None) -> PolicySource:
    """Read one whole-policy source.

    :param spec: an SB3 ``.zip``, a compact zoo folder, or a hub id (``hf:sb3/sac-Pendulum-v1``).
    :param name: display name; default: the file stem or folder name.
    :param vec_normalize: the source's ``vecnormalize.pkl`` if it was trained under ``VecNormalize``:
        its normalisation is folded into the tensors (:func:`fold_vec_normalize`).
    :raises SourceUnavailable: the path does not exist (and is no reachable hub id).
    :raises ValueError: a file of another format, or one without policy tensors.
    """
    text = os.fspath(spec)
    path = Path(text)
    if not path.exists():
        if text.startswith("hf:") or _HUB_ID.match(text):
            repo_id = text.removeprefix("hf:")
            path, label = _from_hub(repo_id), name or repo_id.split("/")[-1]
        else:
            raise SourceUnavailable(
                f"Zoo source {text!r} does not exist. Give an SB3 model .zip, a compact zoo folder, or a hub id "
                "such as 'hf:sb3/sac-Pendulum-v1'."
            )
    else:
        label = name or (path.name if path.is_dir() else path.stem)
    extractor = None
    if path.is_dir():
        tensors, meta = read_compact(path)
        state = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
        extractor = {k[len("features."):]: v for k, v in tensors.items() if k.startswith("features.")} or None
        if not state:
            raise ValueError(f"{path} holds no policy tensors (no 'head.*' entries in its weights.pt): it is a "
                             "features extractor only, which ZooExtractor takes, not a whole policy.")
    elif zipfile.is_zipfile(path):
        state, meta = read_policy_pth(path), {}
        activation = read_sb3_activation(path)
        if activation is not None:
            meta["architecture"] = {"activation": activation}
    else:
        raise ValueError(f"{path} is neither an SB3 model .zip nor a compact zoo folder: whole-policy sources are "
                         "the zips that SB3's model.save() writes, or compact folders (weights.pt + meta.json).")
    family = policy_family(state)
    state = {k: v.detach().to(torch.float32) for k, v in state.items() if k.split(".", 1)[0] not in TARGET_MODULES}
    source = PolicySource(label, str(path), state, extractor, family, dict(meta, origin=str(path)))
    if vec_normalize is not None:
        source = fold_vec_normalize(source, read_vec_normalize(vec_normalize))
    return source


def read_sb3_activation(path: str | os.PathLike) -> str | None:
    """The activation function an SB3 zip's policy was built with, from the JSON text of its ``data`` entry.

    SB3 writes ``policy_kwargs`` there with every value that JSON cannot hold as its pickled bytes *and* its
    ``str()``; only that text is read (nothing is unpickled). ``torch.nn``'s activations come back as the
    names of :data:`ACTIVATION_CLASSES` (``"relu"``), any other class as its dotted path.

    :return: the name, or ``None`` where the zip records no ``activation_fn`` (the policy used its
        algorithm's default: tanh for PPO, A2C and TRPO) or cannot be read.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except (KeyError, OSError, ValueError, zipfile.BadZipFile):
        return None
    kwargs = data.get("policy_kwargs") if isinstance(data, dict) else None
    value = kwargs.get("activation_fn") if isinstance(kwargs, dict) else None
    match = _CLASS_REPR.match(value) if isinstance(value, str) else None
    if match is None:
        return None
    module, _, cls = match["path"].rpartition(".")
    if module.startswith("torch.nn") and cls in ACTIVATION_CLASSES:
        return ACTIVATION_CLASSES[cls]
    return match["path"]


def load_policy_zoo(specs: Sequence[str | os.PathLike], vec_normalize: Sequence[str | os.PathLike | None] | None = None,
                    ) -> list[PolicySource]:
    """Read every source (:func:`load_policy_source`), with unique display names.

    :param vec_normalize: one ``vecnormalize.pkl`` path (or ``None``) per source.
    :raises ValueError: an empty zoo, or a ``vec_normalize`` list of another length.
    """
    if isinstance(specs, (str, os.PathLike)) or len(specs) == 0:
        raise ValueError("zoo must be a non-empty list of sources, e.g. zoo=['sources/sac-a.zip', 'sources/sac-b.zip'].")
    if vec_normalize is not None and len(vec_normalize) != len(specs):
        raise ValueError(f"vec_normalize has {len(vec_normalize)} entries for {len(specs)} sources: give one per "
                         "source, in zoo order (None for a source trained without VecNormalize).")
    norms = list(vec_normalize) if vec_normalize is not None else [None] * len(specs)
    return unique_names([load_policy_source(spec, vec_normalize=norm) for spec, norm in zip(specs, norms)])


class _Inert:
    """Stands for every object of a pickle other than numpy arrays and plain Python values."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            state = {**(state[0] or {}), **state[1]}  # (dict, slots) state
        if isinstance(state, dict):
            self.__dict__.update(state)


def _numpy_multiarray() -> Any:
    try:
        return importlib.import_module("numpy._core.multiarray")  # numpy 2
    except ImportError:
        return importlib.import_module("numpy.core.multiarray")  # numpy 1


_NUMPY_MODULES = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                  "numpy._core.numeric")
_BUILTIN_TYPES = {t.__name__: t for t in (int, float, complex, bool, str, bytes, bytearray, tuple, list, dict, set,
                                          frozenset, slice, range)}


class _StatsUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, dtypes and plain Python values; every other class or function is :class:`_Inert`.

    Nothing in the file can run code: the only callables it reaches are numpy's array and scalar
    constructors, Python's value types, and the inert stand-in, whose attributes are the pickled state.
    """

    def find_class(self, module: str, name: str) -> Any:
        if module in _NUMPY_MODULES and name in ("_reconstruct", "scalar"):
            return getattr(_numpy_multiarray(), name)
        if module in _NUMPY_MODULES and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "builtins" and name in _BUILTIN_TYPES:
            return _BUILTIN_TYPES[name]
        return _Inert


def read_vec_normalize(path: str | os.PathLike) -> VecNormalizeStats:
    """The statistics of a saved ``VecNormalize`` (``vecnormalize.pkl``), without unpickling any of its classes.

    :raises SourceUnavailable: the file does not exist.
    :raises ValueError: the file holds no VecNormalize statistics.
    """
    path = Path(path)
    if not path.is_file():
        raise SourceUnavailable(f"VecNormalize statistics {str(path)!r} do not exist: give the vecnormalize.pkl that "
                                "VecNormalize.save() wrote beside the source.")
    obj = _StatsUnpickler(io.BytesIO(path.read_bytes())).load()
    try:
        obs_rms, ret_rms = obj.obs_rms, obj.ret_rms
        stats = VecNormalizeStats(
            obs_mean=np.asarray(obs_rms.mean, dtype=np.float64), obs_var=np.asarray(obs_rms.var, dtype=np.float64),
            ret_var=float(np.asarray(ret_rms.var)), epsilon=float(obj.epsilon), clip_obs=float(obj.clip_obs),
            clip_reward=float(obj.clip_reward), norm_obs=bool(obj.norm_obs), norm_reward=bool(obj.norm_reward))
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"{path} holds no VecNormalize statistics (obs_rms, ret_rms, epsilon, clip_obs...): give the "
                         "file that VecNormalize.save() wrote.") from None
    if isinstance(obs_rms, dict) or isinstance(getattr(obs_rms, "mean", None), _Inert):
        raise ValueError(f"{path} normalises dict observations; folding supports Box observations only.")
    return stats


def observation_layers(state: Mapping[str, torch.Tensor], family: str | None) -> list[str]:
    """Keys (without ``.weight``) of the layers that read the observations directly, for an MLP policy.

    Each such layer reads the flattened observation as the first columns of its input (critics of
    SAC, TQC and TD3 append the action after it).
    """
    if family == "actor-critic":
        layers = [_first_layer(state, "mlp_extractor.policy_net.") or "action_net",
                  _first_layer(state, "mlp_extractor.value_net.") or "value_net"]
    elif family in ("sac", "tqc"):
        first = _first_layer(state, "actor.latent_pi.")
        layers = [first] if first else [k[:-len(".weight")] for k in state
                                        if k.startswith(("actor.mu", "actor.log_std")) and k.endswith(".weight")]
        layers += [_first_layer(state, f"critic.qf{i}.") for i in range(_n_critics(state))]
    elif family == "td3":
        layers = [_first_layer(state, "actor.mu.")] + [_first_layer(state, f"critic.qf{i}.")
                                                        for i in range(_n_critics(state))]
    elif family == "dqn":
        layers = [_first_layer(state, "q_net.q_net.")]
    elif family == "qrdqn":
        layers = [_first_layer(state, "quantile_net.quantile_net.")]
    else:
        raise ValueError(f"Folding VecNormalize into a {family!r} policy is not supported.")
    return [layer for layer in layers if layer is not None]


def value_layers(state: Mapping[str, torch.Tensor], family: str | None) -> list[str]:
    """Keys (without ``.weight``) of the layers whose outputs are values of returns (V, Q or return quantiles)."""
    if family == "actor-critic":
        return ["value_net"]
    if family in ("sac", "tqc", "td3"):
        return [layer for i in range(_n_critics(state)) if (layer := _last_layer(state, f"critic.qf{i}."))]
    if family == "dqn":
        return [layer for layer in [_last_layer(state, "q_net.q_net.")] if layer]
    if family == "qrdqn":
        return [layer for layer in [_last_layer(state, "quantile_net.quantile_net.")] if layer]
    raise ValueError(f"Folding VecNormalize into a {family!r} policy is not supported.")


def _n_critics(state: Mapping[str, torch.Tensor]) -> int:
    return len({k.split(".")[1] for k in state if re.match(r"critic\.qf\d+\.", k)})


def fold_vec_normalize(source: PolicySource, stats: VecNormalizeStats) -> PolicySource:
    """``source`` rewritten to read raw observations and to predict raw returns.

    Observations: the source saw ``x_k = clip((x - mu) / s, ±clip_obs)`` with ``s = sqrt(var + eps)``.
    Each layer that reads observations computes ``W x_k + b``; with ``W' = W / s`` (on the
    observation columns) and ``b' = b - W (mu / s)`` it computes the same from raw ``x``. Returns:
    the source's value heads predict returns of rewards divided by ``sqrt(ret_var + eps)``; their
    weights and biases are multiplied by that scale.

    Exact wherever the normaliser did not clip: an observation further than ``clip_obs`` standard
    deviations from the mean (10 by default) reaches the folded layer unclipped, and a value head
    trained on clipped rewards (beyond ``clip_reward``, 10 by default, in normalised units) is
    scaled as if they had not been clipped. SAC's and TQC's critics also hold the entropy bonus,
    which the scale multiplies too.

    :raises ValueError: a source with a features extractor that has weights (folding needs the
        observations to reach the first layers unchanged, as with ``MlpPolicy``), or statistics of
        another observation size.
    """
    state = dict(source.state)
    if source.extractor or any(_EXTRACTOR_KEY.search(k) for k in state):
        raise ValueError(f"Source {source.name!r} ({source.origin}) has a features extractor with weights: VecNormalize "
                         "can only be folded into MlpPolicy sources, whose first layers read the observations.")
    if stats.norm_obs:
        scale = torch.as_tensor(1.0 / np.sqrt(stats.obs_var + stats.epsilon), dtype=torch.float64).flatten()
        shift = torch.as_tensor(stats.obs_mean, dtype=torch.float64).flatten() * scale
        n = scale.numel()
        for layer in observation_layers(state, source.family):
            weight, bias = state[f"{layer}.weight"].double(), state[f"{layer}.bias"].double()
            if weight.shape[1] < n:
                raise ValueError(f"Source {source.name!r}: layer {layer} reads {weight.shape[1]} inputs, but its "
                                 f"VecNormalize statistics are for {n} observation values.")
            obs_part = weight[:, :n]
            state[f"{layer}.bias"] = (bias - obs_part @ shift).float()
            state[f"{layer}.weight"] = torch.cat([obs_part * scale, weight[:, n:]], dim=1).float()
    if stats.norm_reward:
        factor = float(np.sqrt(stats.ret_var + stats.epsilon))
        for layer in value_layers(state, source.family):
            state[f"{layer}.weight"] = state[f"{layer}.weight"] * factor
            state[f"{layer}.bias"] = state[f"{layer}.bias"] * factor
    meta = dict(source.meta, vec_normalize_folded=True)
    return PolicySource(source.name, source.origin, state, source.extractor, source.family, meta)
