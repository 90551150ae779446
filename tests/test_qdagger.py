"""QDagger-style distillation for DQN and QR-DQN: the update is the algorithm's plus the distillation term's gradient
(checked against autograd on a fixed minibatch), teachers frozen and never saved, bad input refused."""

import copy

import pytest
import torch
from sb3_contrib import QRDQN
from stable_baselines3 import DQN

from test_kickstart import LinearGaussianTeacher, LinearTeacher
from zoo_rl.qdagger import QDaggerDQN, QDaggerQRDQN


def sgd_model(cls, **kwargs):
    """A value-based model on CartPole whose parameter step is -lr * gradient (plain SGD, no clipping); it acts
    for 64 steps without training, so that its replay buffer holds them."""
    model = cls("MlpPolicy", "CartPole-v1", seed=0, device="cpu", learning_rate=0.05, max_grad_norm=1e9,
                learning_starts=10**6, target_update_interval=10**6,
                policy_kwargs=dict(optimizer_class=torch.optim.SGD, net_arch=[8]), **kwargs)
    model.learn(64)
    return model


def fixed_batch(model, size=16):
    batch = model.replay_buffer.sample(size)
    model.replay_buffer.sample = lambda *args, **kwargs: batch
    return batch


def student_q(policy, obs):
    """The Q-values ``(B, A)`` of a DQN or QR-DQN policy's online network (QR-DQN: the mean of its quantiles)."""
    if hasattr(policy, "quantile_net"):
        return policy.quantile_net(obs).mean(dim=1)
    return policy.q_net(obs)


@pytest.mark.parametrize("plain, distilled", [(DQN, QDaggerDQN), (QRDQN, QDaggerQRDQN)], ids=["dqn", "qrdqn"])
def test_the_update_is_the_algorithms_plus_the_distillation_gradient(plain, distilled):
    teachers, weights, tau = [LinearTeacher(0), LinearTeacher(1)], [0.25, 0.75], 0.5
    base = sgd_model(plain)
    student = sgd_model(distilled, teachers=teachers, teacher_weights=weights, kickstart_coef=2.0,
                        distill_temperature=tau)
    student.kickstart_steps = 1000  # the weight when it trains: 2 * (1 - 64/1000)
    weight = student.kickstart_weight()
    assert weight == pytest.approx(2.0 * (1 - 64 / 1000))
    batch = fixed_batch(student)
    base.replay_buffer.sample = lambda *args, **kwargs: batch
    start = copy.deepcopy(student.policy)
    assert all(torch.equal(a, b) for a, b in zip(base.policy.parameters(), start.parameters()))
    base.train(gradient_steps=1, batch_size=16)
    student.train(gradient_steps=1, batch_size=16)

    obs = batch.observations
    log_pi = torch.log_softmax(student_q(start, obs) / tau, dim=-1)
    kl = sum(w * (t.probs(obs) * (t.probs(obs).log() - log_pi)).sum(-1) for t, w in zip(teachers, weights))
    online = [p for name, p in start.named_parameters() if "target" not in name]
    grads = dict(zip([n for n, _ in start.named_parameters() if "target" not in n],
                     torch.autograd.grad(weight * kl.mean(), online, allow_unused=True)))
    moved = False
    for (name, p_base), p_student, p0 in zip(base.policy.named_parameters(), student.policy.parameters(),
                                             start.parameters()):
        g = grads.get(name)
        g = torch.zeros_like(p0) if g is None else g
        assert torch.allclose(p_student - p0, (p_base - p0) - 0.05 * g, atol=1e-6), name
        moved |= bool(g.abs().max() > 1e-4)
    assert moved  # the term did something
    assert not any(hasattr(m, "__dict__") and "forward" in m.__dict__ for m in student.policy.modules())  # unwrapped


def test_teachers_are_frozen_and_never_saved(tmp_path):
    teacher = LinearTeacher()
    model = sgd_model(QDaggerDQN, teachers=[teacher], distill_temperature=2.0)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    model.save(tmp_path / "student.zip")
    loaded = QDaggerDQN.load(tmp_path / "student.zip", device="cpu")
    assert loaded.teachers == [] and loaded.distill_temperature == 2.0 and loaded.kickstart_coef == 1.0
    loaded.set_env(model.get_env())
    loaded.learning_starts = 0
    loaded.learn(32, reset_num_timesteps=False)  # without teachers: plain DQN
    plain = DQN.load(tmp_path / "student.zip", device="cpu")  # a plain DQN reads it too
    assert plain.policy.q_net.q_net[0].weight.shape == loaded.policy.q_net.q_net[0].weight.shape


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="distill_temperature"):
        QDaggerDQN("MlpPolicy", "CartPole-v1", distill_temperature=0.0)
    with pytest.raises(ValueError, match="kickstart_coef"):
        QDaggerDQN("MlpPolicy", "CartPole-v1", kickstart_coef=-1.0)
    with pytest.raises(ValueError, match="continuous"):
        QDaggerDQN("MlpPolicy", "CartPole-v1", teachers=[LinearGaussianTeacher()])
