"""ZooExtractor inside SB3: weights survive construction, every algorithm learns, save/load, export."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
from sb3_contrib import QRDQN
from stable_baselines3 import A2C, DQN, PPO

import zoo_rl.extractor as extractor_module
from conftest import obs_batch, tmp_copy
from zoo_rl import GateLogger, ZooExtractor, export_lite
from zoo_rl.layers import ZooLayer
from zoo_rl.policies import FastCnnPolicy
from zoo_rl.sources import LAYERS, SourceUnavailable, load_source

ON_POLICY = {"ppo": PPO, "a2c": A2C}
OFF_POLICY = {"dqn": DQN, "qrdqn": QRDQN}
SMALL = {
    "ppo": dict(n_steps=32, batch_size=32, n_epochs=1),
    "a2c": dict(n_steps=8),
    "dqn": dict(buffer_size=500, learning_starts=64, target_update_interval=50, train_freq=4, batch_size=16),
    "qrdqn": dict(buffer_size=500, learning_starts=64, target_update_interval=50, train_freq=4, batch_size=16,
                  policy_kwargs=dict(n_quantiles=5)),
}


def build(algo, env, zoo, gate="lite", share=True, **extra):
    cls = {**ON_POLICY, **OFF_POLICY}[algo]
    kwargs = dict(SMALL[algo])
    policy_kwargs = dict(kwargs.pop("policy_kwargs", {}))
    policy_kwargs.update(features_extractor_class=ZooExtractor, features_extractor_kwargs=dict(zoo=zoo, gate=gate))
    if algo in ON_POLICY:
        policy_kwargs.update(net_arch=[], share_features_extractor=share)
    policy_kwargs.update(extra.pop("policy_kwargs", {}))
    return cls(extra.pop("policy", "CnnPolicy"), env, learning_rate=1e-4, seed=0, policy_kwargs=policy_kwargs,
               device="cpu", **kwargs, **extra)


def extractors(model):
    return [m for m in model.policy.modules() if isinstance(m, ZooExtractor)]


CASES = [("ppo", True), ("ppo", False), ("a2c", True), ("a2c", False), ("dqn", True), ("qrdqn", True)]


@pytest.mark.parametrize("algo, share", CASES)
def test_pretrained_weights_survive_policy_construction(image_env, zoo_paths, algo, share):
    model = build(algo, image_env, zoo_paths, share=share)
    found = extractors(model)
    assert len(found) >= (2 if algo in OFF_POLICY or not share else 1)
    for ext in found:
        for k, path in enumerate(zoo_paths):
            src = load_source(path).state
            for name, key in zip(ext.layers, LAYERS):
                assert torch.equal(ext.layers[name].weight[k], src[f"{key}.weight"]), (algo, name, k)


def test_zoo_is_read_once(image_env, zoo_paths, tmp_path, monkeypatch):
    calls = []
    original = extractor_module.load_zoo
    monkeypatch.setattr(extractor_module, "load_zoo", lambda specs: calls.append(specs) or original(specs))
    paths = tmp_copy(zoo_paths, tmp_path)  # a new key for the cache
    build("dqn", image_env, paths)  # q_net and q_net_target
    build("ppo", image_env, paths, share=False)  # pi and vf extractors
    assert len(calls) == 1


@pytest.mark.slow
@pytest.mark.parametrize("algo, share", CASES)
def test_learn_save_delete_zoo_load_same_actions(image_env, zoo_paths, tmp_path, algo, share):
    paths = tmp_copy(zoo_paths, tmp_path / "zoo")
    model = build(algo, image_env, paths, share=share)
    model.learn(200)
    obs = image_env.reset()
    before, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "target.zip")
    shutil.rmtree(tmp_path / "zoo")
    extractor_module._ZOO_CACHE.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = type(model).load(tmp_path / "target.zip", device="cpu")
    after, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(before, after)
    for a, b in zip(extractors(model), extractors(loaded)):
        for name in a.layers:
            assert torch.equal(a.layers[name].weight, b.layers[name].weight)
            assert torch.equal(a.layers[name].running_gates, b.layers[name].running_gates)


def test_missing_zoo_fails_at_first_use_with_the_path(image_env, tmp_path):
    with pytest.warns(UserWarning, match="empty bank"):
        model = build("ppo", image_env, [str(tmp_path / "nowhere")])
    with pytest.raises(SourceUnavailable, match="nowhere' does not exist"):
        model.learn(64)


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_export_lite_matches_lite_model(image_env, zoo_paths, algo):
    model = build(algo, image_env, zoo_paths)
    model.learn(300)
    for ext in extractors(model):  # make alignment and gates matter
        with torch.no_grad():
            for layer in ext.layers.values():
                layer.align.add_(0.05 * torch.randn_like(layer.align))
                layer.running_gates.copy_(torch.softmax(torch.randn(3), 0))
    plain = export_lite(model)
    assert not extractors(plain)
    assert type(plain) is type(model)
    model.policy.set_training_mode(False)
    x = obs_batch(16)
    with torch.no_grad():
        if algo == "ppo":
            got, want = plain.policy.evaluate_actions(x, torch.zeros(16)), model.policy.evaluate_actions(x, torch.zeros(16))
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
            got_logits = plain.policy.get_distribution(x).distribution.logits
            want_logits = model.policy.get_distribution(x).distribution.logits
        else:
            got_logits, want_logits = plain.q_net(x), model.q_net(x)
        assert (got_logits - want_logits).abs().max() <= 1e-5
        np.testing.assert_array_equal(plain.predict(x.numpy(), deterministic=True)[0],
                                      model.predict(x.numpy(), deterministic=True)[0])
    n_plain = sum(p.numel() for p in plain.policy.parameters())
    n_nature = sum(p.numel() for p in build_plain(algo, image_env, model.policy.net_arch).policy.parameters())
    assert n_plain == n_nature


def build_plain(algo, env, net_arch):
    cls = {**ON_POLICY, **OFF_POLICY}[algo]
    kwargs = dict(SMALL[algo])
    kwargs.pop("policy_kwargs", None)
    return cls("CnnPolicy", env, policy_kwargs=dict(net_arch=net_arch), device="cpu", **kwargs)


def test_export_rejects_per_sample_gates(image_env, zoo_paths):
    with pytest.raises(ValueError, match="gate='lite'"):
        export_lite(build("ppo", image_env, zoo_paths, gate="sample"))


def test_lite_average_reaches_dqn_target_network(image_env, zoo_paths):
    """The target network never trains, so its moving average can only move through SB3's sync."""
    model = build("dqn", image_env, zoo_paths)
    synced = {t.data_ptr() for t in model.batch_norm_stats}  # what DQN copies at each target update
    online = model.q_net.features_extractor.layers
    assert all(layer.running_gates.data_ptr() in synced for layer in online.values())
    model.learn(400)  # learning starts at 64, target syncs every 50 steps
    for name, layer in model.q_net_target.features_extractor.layers.items():
        assert layer.running_updates.item() > 1, name  # only a copy from the online network gets it there
        assert not torch.equal(layer.running_gates, torch.full((3,), 1 / 3)), name


def test_rollouts_merge_once_per_update_and_dqn_targets_never_serve_a_stale_merge(image_env, zoo_paths, monkeypatch):
    """The hot path: after an update, a PPO rollout merges each zoo layer once (the cached plain layer serves every
    step); a DQN target network inside SB3's own CnnPolicy, updated by polyak_update through ``.data``, is never
    served a merge made before its updates."""
    merges = []
    merged = ZooLayer.merged
    monkeypatch.setattr(ZooLayer, "merged", lambda self, *a, **k: merges.append(self) or merged(self, *a, **k))
    model = build("ppo", image_env, zoo_paths)  # 2 envs x 32 steps a rollout, one update between rollouts
    n_layers = len(extractors(model)[0].layers)
    model.learn(3 * 64)  # three rollouts: the first before any update (no gradients yet: aggregated), then two
    assert len(merges) == 2 * n_layers
    dqn = build("dqn", image_env, zoo_paths)
    dqn.learn(400)  # target syncs every 50 steps
    x = obs_batch(4)
    with torch.no_grad():
        served = dqn.q_net_target(x)
    with torch.enable_grad():
        fresh = dqn.q_net_target(x).detach()  # the aggregate of the target's current tensors
    torch.testing.assert_close(served, fresh, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("share", [True, False])
def test_lite_ppo_first_ratio_is_one(image_env, zoo_paths, share):
    """Rollouts (eval mode, no grad) and updates (train mode) give the same log-probabilities.

    Without the lite rule (moving average in both modes) the first ratio would differ from 1 by
    the gap between the moving average and the batch mean, far above this tolerance.
    """
    model = build("ppo", image_env, zoo_paths, share=share)
    model.learn(64)
    with torch.no_grad():
        model.policy.action_net.weight.mul_(100)  # logits of a trained policy, not 0.01-gain ones
        for ext in extractors(model):  # gates that depend on the input, an average far from this batch
            for layer in ext.layers.values():
                layer.gate.weight2.normal_(std=3.0)
                layer.running_gates.copy_(torch.softmax(3 * torch.randn(3), 0))
    x = obs_batch(16)
    actions = torch.randint(0, 3, (16,))
    model.policy.set_training_mode(False)
    with torch.no_grad():
        _, logp_rollout, _ = model.policy.evaluate_actions(x, actions)
    model.policy.set_training_mode(True)
    _, logp_train, _ = model.policy.evaluate_actions(x, actions)
    # Rollouts use the merged layer, updates the aggregate: the same network up to float rounding.
    torch.testing.assert_close(torch.exp(logp_train - logp_rollout), torch.ones(16), rtol=0, atol=1e-5)


def test_gate_logger_records_every_source(image_env, zoo_paths, tmp_path):
    model = build("ppo", image_env, zoo_paths, gate="sample")
    model.learn(128, callback=GateLogger(csv_path=tmp_path / "gates.csv", every=32))
    import pandas as pd

    table = pd.read_csv(tmp_path / "gates.csv")
    assert set(table.columns) == {"timesteps", "extractor", "layer", "source", "gate"}
    assert set(table["source"]) == {"src0", "src1", "src2"}
    assert set(table["layer"]) == {"cnn_0", "cnn_2", "cnn_4", "linear_0"}
    # The default (sigmoid) gates: independent values in (0, 1), all 0.5 at the start.
    assert table["gate"].between(0, 1).all()
    np.testing.assert_allclose(table.loc[table["timesteps"] == table["timesteps"].min(), "gate"], 0.5, atol=0.05)
    assert len(table) == table["timesteps"].nunique() * 4 * 3  # every layer and source at every logging step


def test_fast_policy_works_with_zoo_extractor(image_env, zoo_paths):
    """The bf16 channels-last path runs the zoo layers, close to float32, and they learn."""
    model = build("ppo", image_env, zoo_paths, policy=FastCnnPolicy, policy_kwargs=dict(bf16=True))
    (ext,) = extractors(model)
    before = ext.layers["linear_0"].weight.detach().clone()
    x = obs_batch(8) * 255
    model.policy.set_training_mode(False)
    with torch.no_grad():
        fast = model.policy.extract_features(x)
        model.policy.bf16 = False
        exact = model.policy.extract_features(x)
        model.policy.bf16 = True
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, exact, rtol=0.05, atol=0.05)
    model.learn(64)
    assert not torch.equal(ext.layers["linear_0"].weight, before)
