"""Reading and writing zoo sources: pretrained NatureCNN agents.

A *source* is the feature extractor of one pretrained agent, as four tensors pairs in
SB3's ``NatureCNN`` naming: ``cnn.0`` (conv 8x8/4), ``cnn.2`` (conv 4x4/2), ``cnn.4``
(conv 3x3/1) and ``linear.0`` (linear to 512), each with ``.weight`` and ``.bias``.

Formats understood by :func:`load_source`:

- the project's **compact** folder (``agents/zoo/<name>/``): ``weights.pt`` (a flat dict of
  tensors, extractor under ``features.`` and heads under ``head.``) and ``meta.json``;
- an **SB3 zip** (PPO, A2C, DQN, QR-DQN; ``features_extractor.``, ``pi_features_extractor.``,
  ``q_net.features_extractor.``, ``quantile_net.features_extractor.`` keys);
- a **CleanRL** Atari checkpoint (``network.0/2/4/7``; CleanRL divides by 255 inside
  ``forward`` where SB3 divides in ``preprocess_obs``, so the weights see the same inputs);
- a **Hugging Face hub** id of the RL Baselines3 Zoo (``sb3/ppo-PongNoFrameskip-v4``), fetched
  with ``huggingface_hub`` when the hub is reachable.

Only tensors are ever read (``torch.load(..., weights_only=True)``): the pickled ``data``
entry of an SB3 zip is never opened, so a zip from a stranger cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from zoo_rl.files import atomic_write_bytes

#: The four NatureCNN layers, in SB3's names, in forward order.
LAYERS: tuple[str, ...] = ("cnn.0", "cnn.2", "cnn.4", "linear.0")
#: CleanRL's ``nn.Sequential`` indices for the same layers.
_CLEANRL_LAYERS = {"network.0": "cnn.0", "network.2": "cnn.2", "network.4": "cnn.4", "network.7": "linear.0"}
#: Prefixes of the features extractor(s) inside an SB3 policy's state dict: the shared one, the actor's
#: and critic's when they are apart, and those of DQN's, QR-DQN's and the off-policy actors' networks.
#: A source's extractor is the first of them that holds NatureCNN weights.
SB3_EXTRACTOR_PREFIXES = (
    "features_extractor.",
    "pi_features_extractor.",
    "vf_features_extractor.",
    "q_net.features_extractor.",
    "quantile_net.features_extractor.",
    "actor.features_extractor.",
)
WEIGHTS_FILE = "weights.pt"
META_FILE = "meta.json"
#: ``owner/name`` with no file suffix: a Hugging Face hub id when no such local path exists.
_HUB_ID = re.compile(r"^(hf:)?[A-Za-z0-9_-]+/[A-Za-z0-9_.-]+-v\d+$|^hf:.+$")


class SourceUnavailable(FileNotFoundError):
    """A source that cannot be read *here*: a missing path, or a hub id while offline.

    ``ZooExtractor`` treats it differently from a broken file: a saved model restores its
    bank from its own weights, so loading it must work with the zoo files gone.
    """


@dataclass
class Source:
    """One zoo member: NatureCNN extractor tensors plus where they came from.

    :param name: short name used in logs and gate tables.
    :param state: ``{"cnn.0.weight": (32, C, 8, 8), ..., "linear.0.bias": (512,)}``, float32.
    :param meta: free metadata (game, algo, steps, returns...) when the format has it.
    """

    name: str
    state: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def shape(self, layer: str) -> tuple[int, ...]:
        return tuple(self.state[f"{layer}.weight"].shape)

    @property
    def in_channels(self) -> int:
        return self.shape("cnn.0")[1]


def _check_extractor(state: Mapping[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    missing = [f"{layer}.{p}" for layer in LAYERS for p in ("weight", "bias") if f"{layer}.{p}" not in state]
    if missing:
        raise ValueError(
            f"{origin} has no NatureCNN weights (missing {', '.join(missing)}). A zoo source must be an "
            "agent whose feature extractor is SB3's NatureCNN (CnnPolicy) or CleanRL's Atari network."
        )
    out = {}
    for layer, ndim in zip(LAYERS, (4, 4, 4, 2)):
        w = state[f"{layer}.weight"]
        if w.ndim != ndim:
            raise ValueError(f"{origin}: {layer}.weight has shape {tuple(w.shape)}, not a NatureCNN layer.")
        out[f"{layer}.weight"] = w.detach().to(torch.float32).clone()
        out[f"{layer}.bias"] = state[f"{layer}.bias"].detach().to(torch.float32).clone()
    return out


#: What :func:`load_source` accepts, for error messages.
ACCEPTED = ("a compact zoo folder (weights.pt + meta.json), an SB3 model .zip, a CleanRL or torch tensor "
            "checkpoint, or a hub id such as 'hf:sb3/ppo-PongNoFrameskip-v4'")


def _read_tensors(data: bytes | str | Path, origin: str) -> dict[str, torch.Tensor]:
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        obj = torch.load(stream, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError... for foreign files
        if not isinstance(data, bytes) and not zipfile.is_zipfile(data):  # torch files are zips since 1.6
            raise ValueError(f"{origin} is not a valid zip file, so neither an SB3 model nor a torch checkpoint "
                             "(is it truncated, e.g. by an interrupted copy or download?). Zoo sources are "
                             f"{ACCEPTED}.") from None
        raise ValueError(
            f"{origin} could not be read as a tensor file ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "Only plain tensor checkpoints are loaded; files that need arbitrary code to unpickle are refused."
        ) from None
    if isinstance(obj, Mapping) and "model_state_dict" in obj:  # common checkpoint wrapper
        obj = obj["model_state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{origin} does not hold a state dict of tensors.")
    return dict(obj)


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def read_policy_pth(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an SB3 model zip's ``policy.pth`` (nothing else of the zip is read or unpickled).

    :raises ValueError: not a zip, or a zip without ``policy.pth``.
    """
    origin = str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            if "policy.pth" not in archive.namelist():
                raise ValueError(f"{origin} is a zip but not an SB3 model: it has no policy.pth.")
            data = archive.read("policy.pth")
    except zipfile.BadZipFile:
        raise ValueError(f"{origin} is not a valid zip file.") from None
    return _read_tensors(data, f"{origin}:policy.pth")


def read_sb3_zip(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Extractor and full policy tensors of an SB3 zip, reading ``policy.pth`` only.

    :return: ``(extractor_state, policy_state)``.
    """
    origin = str(path)
    policy = read_policy_pth(path)
    for prefix in SB3_EXTRACTOR_PREFIXES:
        sub = _strip(policy, prefix)
        if any(k.startswith("cnn.") for k in sub):
            return _check_extractor(sub, origin), policy
    raise ValueError(
        f"{origin} has no NatureCNN weights: none of the key prefixes {list(SB3_EXTRACTOR_PREFIXES)} hold "
        "'cnn.*' tensors. Was it trained with CnnPolicy?"
    )


def _from_cleanrl(state: Mapping[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        for old, new in _CLEANRL_LAYERS.items():
            if key.startswith(old + "."):
                renamed[new + key[len(old):]] = value
    return _check_extractor(renamed, origin)


def read_compact(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors (float32) and metadata of a compact zoo folder."""
    folder = Path(folder)
    weights, meta_path = folder / WEIGHTS_FILE, folder / META_FILE
    if not weights.is_file():
        raise FileNotFoundError(
            f"{folder} is a folder but not a zoo source: {WEIGHTS_FILE} is missing. "
            "Train one with `python agents/train.py --game GAME`."
        )
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    state = _read_tensors(weights, str(weights))
    return {k: v.to(torch.float32) for k, v in state.items()}, meta


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_weights(
    folder: str | Path,
    extractor: Mapping[str, torch.Tensor],
    heads: Mapping[str, torch.Tensor],
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a compact folder's ``weights.pt`` atomically (no ``meta.json``: :func:`write_compact` adds it); return
    its path.

    :param extractor: NatureCNN tensors in :data:`LAYERS` naming (stored under ``features.``), or empty for a
        policy without a NatureCNN (an MLP policy: every tensor is a head).
    :param heads: the rest of the policy, under SB3's keys (stored under ``head.``).
    :param dtype: storage dtype (``torch.float16`` halves the size).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    checked = _check_extractor(extractor, str(folder)) if extractor else {}
    state = {f"features.{k}": v.detach().cpu().to(dtype).contiguous() for k, v in checked.items()}
    state.update({f"head.{k}": v.detach().cpu().to(dtype).contiguous() for k, v in heads.items()})
    weights = folder / WEIGHTS_FILE
    atomic_write_bytes(weights, _tensor_bytes(state))
    return weights


def write_compact(
    folder: str | Path,
    extractor: Mapping[str, torch.Tensor],
    heads: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Write a compact zoo folder atomically (:func:`write_weights`, then ``meta.json``); return the metadata
    written (with ``dtype`` and ``sha256``)."""
    weights = write_weights(folder, extractor, heads, dtype)
    meta = dict(meta, dtype=str(dtype).replace("torch.", ""), sha256=sha256_of(weights))
    atomic_write_bytes(Path(folder) / META_FILE, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return meta


def _tensor_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return buffer.getvalue()


def _from_hub(repo_id: str) -> Path:
    """Download ``<name>.zip`` of an RL Baselines3 Zoo repository (``sb3/ppo-PongNoFrameskip-v4``)."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise SourceUnavailable(
            f"{repo_id!r} is no local path and looks like a Hugging Face hub id, but huggingface_hub is not "
            "installed: `pip install huggingface_hub`, or download the zip and pass its path."
        ) from None
    filename = repo_id.split("/", 1)[1] + ".zip"
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except Exception as exc:  # offline, unknown repo, ...: huggingface_hub raises many types
        raise SourceUnavailable(
            f"Could not fetch {filename} of {repo_id!r} from the Hugging Face hub ({type(exc).__name__}). "
            "Are you offline? Download the zip where the hub is reachable and pass its path instead."
        ) from None


def load_source(spec: str | os.PathLike, name: str | None = None) -> Source:
    """Read one zoo source.

    :param spec: a compact zoo folder, an SB3 ``.zip``, a CleanRL checkpoint, or a hub id
        (``sb3/ppo-PongNoFrameskip-v4``, optionally prefixed ``hf:``).
    :param name: display name; default: the folder or file stem.
    :raises FileNotFoundError: the path does not exist (and is not a hub id).
    :raises ValueError: the file is not a recognised format or holds no NatureCNN weights.
    """
    text = os.fspath(spec)
    path = Path(text)
    if not path.exists():
        if text.startswith("hf:") or _HUB_ID.match(text):
            repo_id = text.removeprefix("hf:")
            zip_path = _from_hub(repo_id)
            return Source(name or repo_id.split("/")[-1], read_sb3_zip(zip_path)[0], {"origin": repo_id})
        raise SourceUnavailable(
            f"Zoo source {text!r} does not exist. Give a zoo folder (agents/zoo/<name>), an SB3 .zip, "
            "a CleanRL checkpoint, or a hub id such as 'hf:sb3/ppo-PongNoFrameskip-v4'."
        )
    label = name or (path.name if path.is_dir() else path.stem)
    if path.is_dir():
        state, meta = read_compact(path)
        extractor = _check_extractor(_strip(state, "features."), str(path))
        return Source(label, extractor, dict(meta, origin=str(path)))
    if zipfile.is_zipfile(path):  # an SB3 zip, or a torch checkpoint (also a zip since torch 1.6)
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if "policy.pth" in names:
            return Source(label, read_sb3_zip(path)[0], {"origin": str(path)})
        if not any(n.endswith("data.pkl") for n in names):
            raise ValueError(f"{path} is a zip but neither an SB3 model (no policy.pth) nor a torch checkpoint.")
    state = _read_tensors(path, str(path))
    if any(k.startswith("network.") for k in state):
        return Source(label, _from_cleanrl(state, str(path)), {"origin": str(path)})
    for prefix in ("features.",) + SB3_EXTRACTOR_PREFIXES + ("",):
        sub = _strip(state, prefix)
        if any(k.startswith("cnn.") for k in sub):
            return Source(label, _check_extractor(sub, str(path)), {"origin": str(path)})
    raise ValueError(
        f"{path} holds no NatureCNN weights ('cnn.*', 'features_extractor.cnn.*' or 'network.0/2/4/7'). "
        f"Zoo sources are {ACCEPTED}."
    )


def load_zoo(specs: Sequence[str | os.PathLike | Source], names: Sequence[str] | None = None) -> list[Source]:
    """Read every source and check that they share one architecture.

    :param specs: sources as accepted by :func:`load_source` (or already loaded ones).
    :param names: optional display names, one per source.
    :raises ValueError: empty zoo, or two sources whose layer shapes differ (naming both).
    """
    if isinstance(specs, (str, os.PathLike)):
        raise ValueError("zoo must be a list of sources, e.g. zoo=['agents/zoo/breakout'], not a single string.")
    if len(specs) == 0:
        raise ValueError("The zoo is empty: give at least one source (a zoo folder, an SB3 zip or a hub id).")
    if names is not None and len(names) != len(specs):
        raise ValueError(f"Got {len(names)} names for {len(specs)} zoo sources.")
    sources = []
    for i, spec in enumerate(specs):
        name = names[i] if names is not None else None
        sources.append(spec if isinstance(spec, Source) else load_source(spec, name))
    reference = sources[0]
    for source in sources[1:]:
        for layer in LAYERS:
            if source.shape(layer) != reference.shape(layer):
                raise ValueError(
                    f"Zoo sources do not share one architecture: layer {layer} of {source.name!r} has weight "
                    f"shape {source.shape(layer)}, but {reference.name!r} has {reference.shape(layer)}. "
                    "All sources must be NatureCNN on the same observation shape (84x84, 4 frames)."
                )
    return unique_names(sources)


def unique_names(sources: list[Any]) -> list[Any]:
    """``sources`` with unique ``name`` s (gates are logged per name): a repeated name gets ``#1``, ``#2``, ..."""
    seen: dict[str, int] = {}
    for source in sources:
        if source.name in seen:
            seen[source.name] += 1
            source.name = f"{source.name}#{seen[source.name]}"
        else:
            seen[source.name] = 0
    return sources
