"""FastCnnPolicy: the bf16/channels-last pipeline is SB3's CnnPolicy when switched back to fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer

from conftest import obs_batch
from zoo_rl.policies import ChannelsLastRolloutBuffer, FastCnnPolicy, algo_kwargs


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


def test_in_place_relus_give_cnn_policys_gradients_bit_for_bit(image_env):
    """FastCnnPolicy's NatureCNN runs its ReLUs in place: the same loss and gradients as CnnPolicy's."""
    plain, fast = twins(image_env, bf16=False, channels_last=False)
    relus = [m for m in fast.policy.features_extractor.modules() if isinstance(m, torch.nn.ReLU)]
    assert relus and all(m.inplace for m in relus)
    assert not any(m.inplace for m in plain.policy.features_extractor.modules() if isinstance(m, torch.nn.ReLU))
    x, actions = pixels(), torch.randint(0, 3, (16,))
    for model in (plain, fast):
        values, log_prob, entropy = model.policy.evaluate_actions(x, actions)
        model.policy.zero_grad()
        (values.sum() + log_prob.sum() + entropy.sum()).backward()
    for (name, a), (_, b) in zip(fast.policy.named_parameters(), plain.policy.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0, msg=name)


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


def test_saved_model_keeps_the_bf16_request_not_its_outcome(image_env, tmp_path, monkeypatch):
    """bf16=None (auto) trained on a bf16 CPU must not force emulated bf16 (13x slower) on a CPU without it."""
    import zoo_rl.policies as policies

    monkeypatch.setattr(policies, "cpu_supports_bf16", lambda: True)
    auto = PPO(FastCnnPolicy, image_env, seed=0, device="cpu", policy_kwargs=dict(net_arch=[]))
    forced = PPO(FastCnnPolicy, image_env, seed=0, device="cpu", policy_kwargs=dict(net_arch=[], bf16=True))
    assert auto.policy.bf16 is True and forced.policy.bf16 is True
    auto.save(tmp_path / "auto.zip")
    forced.save(tmp_path / "forced.zip")
    monkeypatch.setattr(policies, "cpu_supports_bf16", lambda: False)  # another machine
    assert PPO.load(tmp_path / "auto.zip", device="cpu").policy.bf16 is False
    assert PPO.load(tmp_path / "forced.zip", device="cpu").policy.bf16 is True  # asked for: kept


def test_extractor_precision_is_what_the_model_computes_in(image_env):
    from zoo_rl.machine import extractor_precision, machine_line

    plain, fast = twins(image_env, bf16=True)
    _, fast32 = twins(image_env, bf16=False)
    assert extractor_precision(fast) == "bf16" and extractor_precision(fast.policy) == "bf16"
    assert extractor_precision(fast32) == "fp32" and extractor_precision(plain) == "fp32"
    assert machine_line(fast).endswith(", extractor bf16") and machine_line().startswith("machine: ")


def test_adam_gets_sb3s_eps_as_cnn_policy_does(image_env):
    """SB3 gives plain Adam eps=1e-5 only when optimizer_kwargs is None; FastCnnPolicy fills the dict (fused), so
    it applies the same rule itself: the same eps as CnnPolicy in every case, fused or not."""
    from zoo_rl.optim import ZooAdam

    def eps(policy, **policy_kwargs):
        model = PPO(policy, image_env, seed=0, device="cpu", policy_kwargs=dict(net_arch=[], **policy_kwargs))
        return model.policy.optimizer.defaults["eps"]

    for kwargs in ({}, dict(optimizer_kwargs=dict(amsgrad=False)), dict(optimizer_class=ZooAdam),
                   dict(optimizer_kwargs=dict(eps=1e-8))):
        assert eps(FastCnnPolicy, bf16=False, **kwargs) == eps("CnnPolicy", **kwargs), kwargs
    assert eps(FastCnnPolicy, bf16=False) == 1e-5


def test_adam_runs_fused_unless_told_otherwise(image_env):
    _, fast = twins(image_env, bf16=True)
    assert fast.policy.optimizer.defaults["fused"] is True
    _, slow = twins(image_env, bf16=True, optimizer_kwargs=dict(fused=False))
    assert not slow.policy.optimizer.defaults["fused"]


def test_channels_last_buffer_hands_out_the_same_minibatches(image_env):
    space, actions = image_env.observation_space, image_env.action_space
    from stable_baselines3.common.vec_env import VecTransposeImage

    space = VecTransposeImage.transpose_space(space)  # what PPO's buffer sees: (C, H, W)
    buffers = [cls(8, space, actions, device="cpu", n_envs=2) for cls in (RolloutBuffer, ChannelsLastRolloutBuffer)]
    rng = np.random.default_rng(0)
    for _ in range(8):
        step = (rng.integers(0, 256, (2, *space.shape), dtype=np.uint8), rng.integers(0, 3, (2,)),
                rng.normal(size=2).astype(np.float32), np.zeros(2), torch.randn(2), torch.randn(2))
        for buffer in buffers:
            buffer.add(*step)
    for buffer in buffers:
        buffer.compute_returns_and_advantage(torch.zeros(2), np.zeros(2))
    np.random.seed(3)
    plain = list(buffers[0].get(4))
    np.random.seed(3)
    fast = list(buffers[1].get(4))
    assert len(plain) == len(fast) == 4
    for a, b in zip(plain, fast):
        for x, y in zip(a, b):
            assert x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)
        assert b.observations.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_buffer_trains_bit_for_bit_like_sb3s():
    """Same seed, same data: the parameters after an update are identical with either buffer."""
    from stable_baselines3.common.env_util import make_vec_env

    from conftest import ImageEnv

    def trained(**extra):  # built and trained one after the other: SB3 seeds the global RNGs at construction
        params = dict(n_steps=16, batch_size=8, n_epochs=2, seed=0, device="cpu", policy_kwargs=dict(net_arch=[]))
        model = PPO(FastCnnPolicy, make_vec_env(ImageEnv, n_envs=2, seed=0), **params, **extra)
        model.learn(32)
        return model

    plain = trained()
    fast = trained(**algo_kwargs(FastCnnPolicy))
    assert isinstance(fast.rollout_buffer, ChannelsLastRolloutBuffer)
    for (name, a), b in zip(plain.policy.state_dict().items(), fast.policy.state_dict().values()):
        assert torch.equal(a, b), name
    assert algo_kwargs("CnnPolicy") == {}


def test_fp32_channels_last_input_is_left_untouched(image_env):
    """Scaling to 0..1 happens in place on a fresh tensor, never on the observations passed in."""
    _, fast = twins(image_env, bf16=False, channels_last=True)
    x = pixels().contiguous(memory_format=torch.channels_last)  # already float32 and channels-last
    before = x.clone()
    with torch.no_grad():
        fast.policy.predict_values(x)
    assert torch.equal(x, before)


def test_distributions_skip_checks_without_touching_torchs_default(image_env):
    """Same values as SB3's checked distributions; torch's global default is left as it was."""
    from torch.distributions import Distribution

    plain, fast = twins(image_env, bf16=False)
    x = pixels()
    default = Distribution._validate_args
    with torch.no_grad():
        dist, ref = fast.policy.get_distribution(x), plain.policy.get_distribution(x)
        actions = ref.get_actions()
        torch.testing.assert_close(dist.log_prob(actions), ref.log_prob(actions), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dist.entropy(), ref.entropy(), rtol=1e-5, atol=1e-5)
    assert Distribution._validate_args == default
    assert dist.distribution._validate_args is False
    assert ref.distribution._validate_args == default  # SB3's own policy still checks
    # The check is really gone: an action outside the support no longer raises (SB3's does).
    bad = torch.full((16,), 99)
    with pytest.raises(ValueError):
        ref.log_prob(bad)
    with pytest.raises(RuntimeError):  # what torch then does with it: gather out of range
        dist.log_prob(bad)


def test_distribution_checks_come_back_after_an_error(image_env):
    from torch.distributions import Distribution

    _, fast = twins(image_env, bf16=False)
    default = Distribution._validate_args
    with pytest.raises(RuntimeError):
        fast.policy._get_action_dist_from_latent(torch.zeros(2, 7))  # wrong width for the action head
    assert Distribution._validate_args == default


_FAULTS_PROBE = """
import resource, torch
from zoo_rl.machine import reuse_freed_memory
applied = reuse_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
faulting = 0
for _ in range(20):  # 40 MB each, freed at once: above glibc's largest default mmap threshold (32 MB)
    before = faults()
    torch.empty(40 << 18).fill_(1.0)
    faulting += faults() - before > 5000  # a fresh tensor faults in about 10240 pages of 4 kB
print(applied, faulting)
"""


def _faulting_40mb_tensors(malloc_env: str) -> tuple[bool, int]:
    """(settings applied, how many of 20 successive 40 MB tensors were fresh pages) in a new process."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "ZOO_RL_MALLOC": malloc_env}
    out = subprocess.run([sys.executable, "-c", _FAULTS_PROBE], capture_output=True, text=True, check=True, env=env,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    return out[0] == "True", int(out[1])


def test_reuse_freed_memory_stops_page_faults_of_large_tensors():
    """Freed 40 MB tensors serve the next ones: once the heap has grown (2-4 tensors here), no fresh pages to
    fault in. ZOO_RL_MALLOC=0 leaves glibc's defaults (the comparison), under which every such tensor faults."""
    import zoo_rl.machine as fast

    if fast._glibc_mallopt() is None:  # os.confstr raises off Linux: the function's own check
        pytest.skip("glibc only")  # the function is a no-op elsewhere, tested below
    applied, faulting = _faulting_40mb_tensors("1")
    plain_applied, plain_faulting = _faulting_40mb_tensors("0")
    assert applied and not plain_applied
    assert plain_faulting == 20
    assert faulting <= 10  # 2-5 seen: the heap grows, then serves every one


def test_reuse_freed_memory_off_without_glibc_or_when_asked(monkeypatch):
    import zoo_rl.machine as fast

    monkeypatch.setattr(fast, "_glibc_mallopt", lambda: None)
    assert fast.reuse_freed_memory(enable=True) is False  # enable=True: past the ZOO_RL_MALLOC check

    calls = []
    monkeypatch.setattr(fast, "_glibc_mallopt", lambda: lambda option, value: calls.append(option) or 1)
    assert fast.reuse_freed_memory(enable=False) is False and calls == []
    monkeypatch.setenv("ZOO_RL_MALLOC", "0")
    assert fast.reuse_freed_memory() is False and calls == []
    monkeypatch.setenv("ZOO_RL_MALLOC", "1")
    assert fast.reuse_freed_memory() is True and sorted(calls) == [-3, -2, -1]
