"""FastCnnPolicy: the bf16/channels-last pipeline is SB3's CnnPolicy when switched back to fp32."""

from __future__ import annotations

import torch
from stable_baselines3 import PPO

from conftest import obs_batch
from zoo_rl.fast import FastCnnPolicy


def twins(env, **fast_kwargs):
    plain = PPO("CnnPolicy", env, seed=0, device="cpu", policy_kwargs=dict(net_arch=[]))
    fast = PPO(FastCnnPolicy, env, seed=0, device="cpu", policy_kwargs=dict(net_arch=[], **fast_kwargs))
    fast.policy.load_state_dict(plain.policy.state_dict())
    return plain, fast


def pixels(n=16):
    return (obs_batch(n) * 255).round()  # what the rollout buffer hands the policy: 0..255 floats


def test_fp32_channels_last_equals_cnn_policy(image_env):
    plain, fast = twins(image_env, bf16=False, channels_last=True)
    x, actions = pixels(), torch.randint(0, 3, (16,))
    with torch.no_grad():
        for a, b in zip(fast.policy.evaluate_actions(x, actions), plain.policy.evaluate_actions(x, actions)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast.policy.predict_values(x), plain.policy.predict_values(x), rtol=1e-5, atol=1e-5)


def test_bf16_is_close_and_returns_float32(image_env):
    plain, fast = twins(image_env, bf16=True)
    x, actions = pixels(), torch.randint(0, 3, (16,))
    with torch.no_grad():
        values, logp, entropy = fast.policy.evaluate_actions(x, actions)
        ref_values, ref_logp, _ = plain.policy.evaluate_actions(x, actions)
    assert values.dtype == logp.dtype == entropy.dtype == torch.float32
    torch.testing.assert_close(logp, ref_logp, rtol=0, atol=2e-2)
    torch.testing.assert_close(values, ref_values, rtol=0, atol=5e-2)


def test_rollout_and_update_paths_agree(image_env):
    """forward (rollouts), get_distribution and evaluate_actions (updates) use one network."""
    _, fast = twins(image_env, bf16=True)
    x = pixels()
    with torch.no_grad():
        actions, values, logp = fast.policy(x)
        values2, logp2, _ = fast.policy.evaluate_actions(x, actions)
        logits = fast.policy.get_distribution(x).distribution.logits
    torch.testing.assert_close(logp, logp2, rtol=0, atol=0)
    torch.testing.assert_close(values, values2, rtol=0, atol=0)
    torch.testing.assert_close(fast.policy.predict_values(x), values, rtol=0, atol=0)
    assert torch.isfinite(logits).all()


def test_save_load_keeps_switches(image_env, tmp_path):
    _, fast = twins(image_env, bf16=False, channels_last=False)
    fast.save(tmp_path / "m.zip")
    loaded = PPO.load(tmp_path / "m.zip", device="cpu")
    assert isinstance(loaded.policy, FastCnnPolicy)
    assert loaded.policy.bf16 is False and loaded.policy.channels_last is False
