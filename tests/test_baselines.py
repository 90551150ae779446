"""Transfer baselines: fine-tuning loads one source after SB3's init; the ensemble is K frozen NatureCNNs."""

from __future__ import annotations

import torch
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.torch_layers import NatureCNN

from conftest import OBS_SPACE_CHW, obs_batch, random_nature_state
from zoo_rl.baselines import EnsembleExtractor, load_extractor_weights
from zoo_rl.sources import load_source


def nature(state) -> NatureCNN:
    net = NatureCNN(OBS_SPACE_CHW)
    net.load_state_dict(state)
    return net


def test_ensemble_is_the_sources_side_by_side(zoo_paths):
    ext = EnsembleExtractor(OBS_SPACE_CHW, zoo=zoo_paths)
    x = obs_batch(4)
    expected = torch.cat([nature(random_nature_state(k))(x) for k in range(3)], dim=1)
    torch.testing.assert_close(ext(x), expected, rtol=1e-5, atol=1e-5)
    assert ext.features_dim == 3 * 512
    assert not list(ext.parameters())  # frozen: nothing for the optimizer or ortho_init


def test_ensemble_trains_only_the_head(image_env, zoo_paths):
    model = PPO("CnnPolicy", image_env, n_steps=32, batch_size=32, n_epochs=1, device="cpu", policy_kwargs=dict(
        features_extractor_class=EnsembleExtractor, features_extractor_kwargs=dict(zoo=zoo_paths), net_arch=[]))
    before = model.policy.features_extractor.cnn_0_weight.clone()
    model.learn(64)
    assert torch.equal(model.policy.features_extractor.cnn_0_weight, before)
    assert model.policy.action_net.in_features == 3 * 512


def test_finetune_weights_survive_and_reach_every_network(image_env, zoo_paths):
    source = load_source(zoo_paths[1])
    for model in (PPO("CnnPolicy", image_env, device="cpu", policy_kwargs=dict(share_features_extractor=False)),
                  DQN("CnnPolicy", image_env, buffer_size=100, device="cpu")):
        assert load_extractor_weights(model, source) == 2  # pi+vf, or online+target
        for module in model.policy.modules():
            if isinstance(module, NatureCNN):
                assert torch.equal(module.cnn[0].weight, source.state["cnn.0.weight"])
                assert torch.equal(module.linear[0].bias, source.state["linear.0.bias"])
