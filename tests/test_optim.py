"""Learning rates per parameter group: exact steps, SB3's learning-rate resets, save/load, clear errors."""

from __future__ import annotations

import pytest
import torch
from sb3_contrib import QRDQN
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.logger import configure

from test_sb3 import SMALL
from zoo_rl import ZooAdam, ZooExtractor
from zoo_rl.optim import LR_MULTIPLIER, ZooRMSprop, lr_multiplier, multiplier_groups, set_lr_multiplier, zoo_optimizer


def params(seed: int = 0) -> list[torch.nn.Parameter]:
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]


def test_multiplier_one_steps_exactly_like_the_plain_optimizer():
    for plain_class in (torch.optim.Adam, torch.optim.RMSprop, torch.optim.SGD):
        a, b = params(), params()
        plain, zoo = plain_class(a, lr=1e-2), zoo_optimizer(plain_class)(b, lr=1e-2)
        for step in range(3):
            for pa, pb in zip(a, b):
                g = torch.randn_like(pa, generator=torch.Generator().manual_seed(step))
                pa.grad, pb.grad = g.clone(), g.clone()
            plain.step()
            zoo.step()
        assert all(torch.equal(pa, pb) for pa, pb in zip(a, b)), plain_class


def test_a_multiplier_scales_the_adam_step_and_keeps_the_group_lr():
    tagged, plain = params()
    set_lr_multiplier([tagged], 30.0)
    opt = ZooAdam([tagged, plain], lr=1e-3)
    assert [g[LR_MULTIPLIER] for g in opt.param_groups] == [30.0, 1.0]
    before = [tagged.detach().clone(), plain.detach().clone()]
    tagged.grad, plain.grad = torch.ones_like(tagged), torch.ones_like(plain)
    opt.step()
    # Adam's first step is lr * g / (|g| + eps): lr, times the multiplier.
    torch.testing.assert_close(before[0] - tagged.detach(), torch.full_like(tagged, 30e-3), rtol=1e-4, atol=0)
    torch.testing.assert_close(before[1] - plain.detach(), torch.full_like(plain, 1e-3), rtol=1e-4, atol=0)
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3]  # the schedule's value, untouched


def test_multiplier_groups_keep_caller_options_and_reject_bad_multipliers():
    a, b = params()
    set_lr_multiplier([a], 5.0)
    groups = multiplier_groups([{"params": [a, b], "weight_decay": 0.1}])
    assert [(g[LR_MULTIPLIER], g["weight_decay"], len(g["params"])) for g in groups] == [(5.0, 0.1, 1), (1.0, 0.1, 1)]
    assert lr_multiplier(torch.zeros(1)) == 1.0
    for bad in (0, -1, float("inf")):
        with pytest.raises(ValueError, match="positive"):
            set_lr_multiplier([a], bad)


def build(cls, env, zoo, optimizer_class=ZooAdam, **kwargs):
    extra = dict(SMALL[cls.__name__.lower()])
    policy_kwargs = dict(extra.pop("policy_kwargs", {}), features_extractor_class=ZooExtractor,
                         features_extractor_kwargs=dict(zoo=zoo, gate_lr=10.0, align_lr=2.0, **kwargs),
                         optimizer_class=optimizer_class)
    if cls in (PPO, A2C):
        policy_kwargs["net_arch"] = []
    return cls("CnnPolicy", env, learning_rate=1e-4, seed=0, device="cpu", policy_kwargs=policy_kwargs, **extra)


def group_multipliers(model) -> dict[str, float]:
    """Parameter name -> the multiplier of the optimizer group that holds it."""
    by_id = {id(p): g[LR_MULTIPLIER] for g in model.policy.optimizer.param_groups for p in g["params"]}
    return {n: by_id[id(p)] for n, p in model.policy.named_parameters() if id(p) in by_id}


@pytest.mark.parametrize("cls, optimizer_class", [(PPO, ZooAdam), (A2C, ZooRMSprop), (DQN, ZooAdam),
                                                  (QRDQN, ZooAdam)])
def test_sb3_keeps_the_multipliers_through_its_learning_rate_resets_and_save_load(
        image_env, zoo_paths, tmp_path, cls, optimizer_class):
    model = build(cls, image_env, zoo_paths, optimizer_class)
    multipliers = group_multipliers(model)
    gates = [n for n in multipliers if ".gate." in n]
    assert gates and all(multipliers[n] == 10.0 for n in gates)
    assert all(multipliers[n] == 2.0 for n in multipliers if n.endswith(".align"))
    assert all(multipliers[n] == 1.0 for n in multipliers if n.endswith((".weight", ".bias")) and ".gate." not in n)
    model.learn(SMALL[cls.__name__.lower()].get("learning_starts", 0) + 64)
    # SB3 sets every group's lr to the schedule's value before each update; the multipliers stay.
    assert {g["lr"] for g in model.policy.optimizer.param_groups} == {1e-4}
    assert group_multipliers(model) == multipliers
    model.save(tmp_path / "model.zip")
    loaded = cls.load(tmp_path / "model.zip", env=image_env, device="cpu")
    assert group_multipliers(loaded) == multipliers
    for saved, restored in zip(model.policy.optimizer.state_dict()["state"].values(),
                               loaded.policy.optimizer.state_dict()["state"].values()):
        assert torch.equal(saved["exp_avg" if "exp_avg" in saved else "square_avg"],
                           restored["exp_avg" if "exp_avg" in restored else "square_avg"])
    loaded.learn(64)  # and it trains on


def test_gate_steps_are_the_multiplier_times_the_bank_steps_inside_ppo(image_env, zoo_paths):
    model = build(PPO, image_env, zoo_paths)
    model.set_logger(configure(None, []))
    model._update_learning_rate(model.policy.optimizer)  # what SB3 does before each update
    named = dict(model.policy.named_parameters())
    before = {n: p.detach().clone() for n, p in named.items()}
    for p in named.values():
        p.grad = torch.ones_like(p)
    model.policy.optimizer.step()
    gate = "features_extractor.layers.cnn_0.gate.bias2"
    bank = "features_extractor.layers.cnn_0.bias"
    torch.testing.assert_close((before[gate] - named[gate]).abs().max(), torch.tensor(1e-3), rtol=1e-4, atol=0)
    torch.testing.assert_close((before[bank] - named[bank]).abs().max(), torch.tensor(1e-4), rtol=1e-4, atol=0)


def test_multipliers_with_a_plain_optimizer_fail_at_the_first_update(image_env, zoo_paths):
    model = build(PPO, image_env, zoo_paths, optimizer_class=torch.optim.Adam)
    with pytest.raises(ValueError, match="optimizer_class=zoo_rl.ZooAdam"):
        model.learn(64)
