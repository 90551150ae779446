"""Reading zoo sources: every format, tensors only, and clear errors for bad input."""

from __future__ import annotations

import base64
import io
import json
import pickle
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import DQN, PPO

from conftest import random_nature_state
from zoo_rl.extractor import ZooExtractor
from zoo_rl.sources import LAYERS, SourceUnavailable, load_source, load_zoo, read_compact, sha256_of, write_compact


def assert_same_extractor(state, reference):
    for layer in LAYERS:
        for p in ("weight", "bias"):
            assert torch.equal(state[f"{layer}.{p}"], reference[f"{layer}.{p}"])


@pytest.mark.parametrize("algo", [PPO, DQN])
def test_sb3_zip(image_env, tmp_path, algo):
    kwargs = dict(buffer_size=100) if algo is DQN else {}
    model = algo("CnnPolicy", image_env, device="cpu", **kwargs)
    model.save(tmp_path / "agent.zip")
    extractor = model.policy.features_extractor if algo is PPO else model.q_net.features_extractor
    source = load_source(tmp_path / "agent.zip")
    assert source.name == "agent"
    assert_same_extractor(source.state, {f"{k}": v for k, v in extractor.state_dict().items()})


def write_policy_zip(path: Path, policy_state: dict, data: bytes = b"{}") -> None:
    buffer = io.BytesIO()
    torch.save(policy_state, buffer)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data", data)
        archive.writestr("policy.pth", buffer.getvalue())


@pytest.mark.parametrize("prefix", ["pi_features_extractor.", "q_net.features_extractor.",
                                    "quantile_net.features_extractor."])
def test_sb3_key_prefixes(tmp_path, prefix):
    state = random_nature_state(0)
    write_policy_zip(tmp_path / "a.zip", {prefix + k: v for k, v in state.items()} | {"action_net.weight": torch.zeros(2, 512)})
    assert_same_extractor(load_source(tmp_path / "a.zip").state, state)


def test_cleanrl_checkpoint(tmp_path):
    state = random_nature_state(1)
    cleanrl = {"network.0.weight": state["cnn.0.weight"], "network.0.bias": state["cnn.0.bias"],
               "network.2.weight": state["cnn.2.weight"], "network.2.bias": state["cnn.2.bias"],
               "network.4.weight": state["cnn.4.weight"], "network.4.bias": state["cnn.4.bias"],
               "network.7.weight": state["linear.0.weight"], "network.7.bias": state["linear.0.bias"],
               "actor.weight": torch.zeros(6, 512), "critic.weight": torch.zeros(1, 512)}
    torch.save(cleanrl, tmp_path / "ppo_atari.cleanrl_model")
    assert_same_extractor(load_source(tmp_path / "ppo_atari.cleanrl_model").state, state)


def test_compact_round_trip_and_sha(tmp_path):
    state = random_nature_state(2)
    meta = write_compact(tmp_path / "src", state, {"action_net.weight": torch.ones(3, 512)}, {"game": "Pong"})
    assert meta["sha256"] == sha256_of(tmp_path / "src" / "weights.pt")
    assert json.loads((tmp_path / "src" / "meta.json").read_text())["game"] == "Pong"
    source = load_source(tmp_path / "src")
    assert source.meta["game"] == "Pong"
    assert_same_extractor(source.state, state)
    tensors, _ = read_compact(tmp_path / "src")
    assert torch.equal(tensors["head.action_net.weight"], torch.ones(3, 512))


def test_compact_float16(tmp_path):
    state = random_nature_state(2)
    write_compact(tmp_path / "src", state, {}, {}, dtype=torch.float16)
    loaded = load_source(tmp_path / "src").state
    assert loaded["cnn.0.weight"].dtype == torch.float32
    torch.testing.assert_close(loaded["cnn.0.weight"], state["cnn.0.weight"].half().float(), rtol=0, atol=0)


class Payload:
    """Unpickling this touches a marker file: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_payload_in_data_is_never_run(tmp_path):
    marker = tmp_path / "pwned"
    blob = base64.b64encode(pickle.dumps(Payload(marker))).decode()
    data = json.dumps({"policy_class": {":type:": "<class 'abc.ABCMeta'>", ":serialized:": blob}}).encode()
    state = random_nature_state(0)
    write_policy_zip(tmp_path / "evil.zip", {"features_extractor." + k: v for k, v in state.items()}, data)
    source = load_source(tmp_path / "evil.zip")
    assert_same_extractor(source.state, state)
    assert not marker.exists()


def test_pickle_payload_in_weights_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as archive:
        archive.writestr("policy.pth", pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError, match="could not be read as a tensor file"):
        load_source(tmp_path / "evil.zip")
    assert not marker.exists()


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_source(tmp_path / "nope")


def test_folder_without_weights(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="weights.pt is missing"):
        load_source(tmp_path / "empty")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a valid zip file, so neither an SB3 model nor a torch checkpoint"):
        load_source(tmp_path / "notes.txt")


def test_zip_that_is_not_sb3(tmp_path):
    with zipfile.ZipFile(tmp_path / "x.zip", "w") as archive:
        archive.writestr("readme.txt", "hi")
    with pytest.raises(ValueError, match="neither an SB3 model"):
        load_source(tmp_path / "x.zip")


def test_zip_without_nature_cnn(tmp_path):
    write_policy_zip(tmp_path / "mlp.zip", {"mlp_extractor.policy_net.0.weight": torch.zeros(64, 4)})
    with pytest.raises(ValueError, match="no NatureCNN weights"):
        load_source(tmp_path / "mlp.zip")


def test_sources_with_different_shapes_name_source_and_layer(tmp_path):
    good = random_nature_state(0)
    write_compact(tmp_path / "good", good, {}, {})
    bad = dict(good, **{"linear.0.weight": torch.zeros(256, 3136), "linear.0.bias": torch.zeros(256)})
    write_compact(tmp_path / "wide", bad, {}, {})
    with pytest.raises(ValueError, match=r"layer linear.0 of 'wide' has weight shape \(256, 3136\)"):
        load_zoo([tmp_path / "good", tmp_path / "wide"])


def test_empty_zoo():
    with pytest.raises(ValueError, match="empty"):
        load_zoo([])


def test_zoo_that_does_not_fit_the_env(zoo_paths):
    space = gym.spaces.Box(0, 255, (4, 64, 64), np.uint8)
    with pytest.raises(ValueError, match=r"does not fit this environment: layer linear.0"):
        ZooExtractor(space, zoo=zoo_paths)
    with pytest.raises(ValueError, match="does not fit this environment: layer cnn.0"):
        ZooExtractor(gym.spaces.Box(0, 255, (3, 84, 84), np.uint8), zoo=zoo_paths)


def test_non_image_space(zoo_paths):
    with pytest.raises(ValueError, match="image observation space"):
        ZooExtractor(gym.spaces.Box(-1, 1, (8,), np.float32), zoo=zoo_paths)


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceUnavailable, match="Are you offline"):
        load_source("sb3/ppo-PongNoFrameskip-v4")


def test_duplicate_names_are_made_unique(zoo_paths):
    names = [s.name for s in load_zoo([zoo_paths[0], zoo_paths[0]])]
    assert names == ["src0", "src0#1"]


def test_a_truncated_source_file_says_it_is_not_a_valid_zip(tmp_path, zoo_paths):
    whole = (Path(zoo_paths[0]) / "weights.pt").read_bytes()
    (tmp_path / "cut.zip").write_bytes(whole[: len(whole) // 2])  # an interrupted download
    with pytest.raises(ValueError, match="not a valid zip file.*compact zoo folder.*SB3 model .zip"):
        load_source(tmp_path / "cut.zip")
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "weights.pt").write_bytes(whole[:1000])
    with pytest.raises(ValueError, match="not a valid zip file"):
        load_source(folder)
