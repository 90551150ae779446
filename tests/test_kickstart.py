"""Kickstarting: the distillation term's gradient by hand, its place in PPO's and A2C's loss, the weight's
schedule, teachers frozen and never saved, action maps by meaning, whole-policy teachers against the source's own
SB3 distribution, and bad input refused."""

import copy
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import gymnasium as gym
from stable_baselines3 import A2C, PPO, SAC
from stable_baselines3.common.distributions import (CategoricalDistribution, DiagGaussianDistribution,
                                                    StateDependentNoiseDistribution)
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn
from torch.distributions import Normal

from zoo_rl.kickstart import (KickstartA2C, KickstartPPO, PolicyTeacher, SourceTeacher, Teacher, distillation_kl,
                              load_any_teacher, load_policy_teacher, load_teacher, ranking_weights)
from zoo_rl.sources import write_compact

ROOT = Path(__file__).resolve().parents[1]
PONG_MEANINGS = ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]


class LinearTeacher(Teacher):
    """A fixed softmax-linear policy over CartPole's two actions."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.register_buffer("w", torch.randn(4, 2, generator=torch.Generator().manual_seed(seed)))

    def probs(self, obs):
        return torch.softmax(obs.float() @ self.w, dim=-1)


class LinearGaussianTeacher(Teacher):
    """A fixed linear-Gaussian policy over Pendulum's one action dimension."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("w", torch.randn(3, 1, generator=g))
        self.register_buffer("log_std", torch.full((1,), -0.5))

    def gaussian(self, obs):
        mean = obs.float() @ self.w
        return mean, self.log_std.exp().expand_as(mean)


class CountingTeacher(LinearTeacher):
    """:class:`LinearTeacher` that counts the observations it has read."""

    seen = 0

    def probs(self, obs):
        self.seen += len(obs)
        return super().probs(obs)


def categorical(logits):
    return CategoricalDistribution(logits.shape[-1]).proba_distribution(logits)


def test_distillation_gradient_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(5, 3, requires_grad=True)
    p1, p2 = torch.softmax(torch.randn(5, 3), -1), torch.tensor([[1.0, 0.0, 0.0]] * 5)
    kl = distillation_kl(categorical(logits), [p1, p2], [0.25, 0.75])
    kl.mean().backward()
    # d/dz KL(p || softmax(z)) = softmax(z) - p, per sample, over the batch mean
    expected = (torch.softmax(logits.detach(), -1) - (0.25 * p1 + 0.75 * p2)) / 5
    assert torch.allclose(logits.grad, expected, atol=1e-6)
    # the value: cross-entropy minus the teacher's entropy (0 for the one-hot teacher, xlogy(0, 0) = 0)
    log_pi = torch.log_softmax(logits.detach(), -1)
    by_hand = 0.25 * (p1 * (p1.log() - log_pi)).sum(-1) + 0.75 * -log_pi[:, 0]
    assert torch.allclose(kl.detach(), by_hand, atol=1e-6)


def sgd_model(cls, seed=0, env="CartPole-v1", **kwargs):
    """One PPO/A2C update on one full-batch minibatch with plain SGD: the parameter step is -lr * gradient."""
    extra = dict(n_steps=32, batch_size=32, n_epochs=1) if issubclass(cls, PPO) else dict(n_steps=32)
    extra.update({k: kwargs.pop(k) for k in ("n_epochs", "batch_size") if k in kwargs})
    return cls("MlpPolicy", env, seed=seed, device="cpu", learning_rate=0.01, max_grad_norm=1e9,
               ent_coef=0.01, policy_kwargs=dict(optimizer_class=torch.optim.SGD, net_arch=[8]), **extra, **kwargs)


@pytest.mark.parametrize("plain, kick, env, make_teacher", [
    (PPO, KickstartPPO, "CartPole-v1", LinearTeacher), (A2C, KickstartA2C, "CartPole-v1", LinearTeacher),
    (PPO, KickstartPPO, "Pendulum-v1", LinearGaussianTeacher)], ids=["ppo", "a2c", "ppo-continuous"])
def test_the_update_is_the_algorithms_plus_the_weighted_distillation_gradient(plain, kick, env, make_teacher):
    teacher = make_teacher()
    base = sgd_model(plain, env=env)  # the constructor seeds the global generators: build each model just before it learns
    base_start = copy.deepcopy(base.policy)
    base.learn(32)
    student = sgd_model(kick, env=env, teachers=[teacher], kickstart_coef=0.5, kickstart_steps=64)
    start = copy.deepcopy(student.policy)
    assert all(torch.equal(a, b) for a, b in zip(base_start.parameters(), start.parameters()))
    student.learn(32)
    weight = 0.5 * (1 - 32 / 64)  # the weight at the update, 32 steps into its 64-step decay
    n_obs = student.observation_space.shape[0]
    obs = torch.as_tensor(student.rollout_buffer.observations.reshape(32, n_obs))
    assert np.array_equal(obs.numpy(), base.rollout_buffer.observations.reshape(32, n_obs))  # the same rollout
    kl = distillation_kl(start.get_distribution(obs), [teacher.output(obs)], [1.0])
    grads = torch.autograd.grad(weight * kl.mean(), list(start.parameters()), allow_unused=True)
    for p_base, p_kick, p0, g in zip(base.policy.parameters(), student.policy.parameters(), start.parameters(), grads):
        g = torch.zeros_like(p0) if g is None else g
        assert torch.allclose(p_kick - p0, (p_base - p0) - 0.01 * g, atol=1e-6)
    assert any(g is not None and g.abs().max() > 1e-4 for g in grads)  # the term did something


def test_gaussian_distillation_by_hand():
    torch.manual_seed(0)
    mu, log_std = torch.randn(5, 2, requires_grad=True), torch.randn(2, requires_grad=True)
    student = DiagGaussianDistribution(2).proba_distribution(mu, log_std)
    teachers = [(torch.randn(5, 2), torch.rand(5, 2) + 0.1), (torch.randn(5, 2), torch.rand(5, 2) + 0.1)]
    kl = distillation_kl(student, teachers, [0.25, 0.75])
    by_torch = sum(w * torch.distributions.kl_divergence(Normal(m, s), Normal(mu, log_std.exp())).sum(-1)
                   for (m, s), w in zip(teachers, [0.25, 0.75]))
    assert torch.allclose(kl, by_torch, atol=1e-6)
    kl.mean().backward()
    # d/dmu KL(N(m, s) || N(mu, sigma)) = (mu - m) / sigma^2, per sample, over the batch mean
    sigma2 = log_std.detach().exp() ** 2
    expected = sum(w * (mu.detach() - m) / sigma2 for (m, _), w in zip(teachers, [0.25, 0.75])) / 5
    assert torch.allclose(mu.grad, expected, atol=1e-6)


def test_teachers_read_each_rollout_once_and_the_update_is_unchanged():
    """Three epochs of two minibatches: the teachers read the 32 observations once, not six times, and the
    parameters end where recomputing the teachers on every minibatch takes them."""
    models = []
    for cached in (True, False):
        teacher = CountingTeacher()
        model = sgd_model(KickstartPPO, teachers=[teacher], kickstart_steps=1000, n_epochs=3, batch_size=16)
        model.cache_teachers = cached
        model.learn(32)
        assert teacher.seen == (32 if cached else 3 * 32)
        models.append(model)
    assert all(torch.equal(a, b) for a, b in zip(models[0].policy.parameters(), models[1].policy.parameters()))
    assert "_get_samples" not in vars(models[0].rollout_buffer)  # the buffer's own method is back


def test_weight_zero_is_exactly_the_algorithm():
    base = sgd_model(PPO)
    base.learn(64)
    student = sgd_model(KickstartPPO, teachers=[LinearTeacher()], kickstart_coef=0.0)
    student.learn(64)
    assert all(torch.equal(a, b) for a, b in zip(base.policy.parameters(), student.policy.parameters()))
    # and the class's own methods are back after train()
    assert "evaluate_actions" not in vars(student.policy) and "_get_action_dist_from_latent" not in vars(student.policy)


def test_weight_decays_linearly_from_the_first_training_step():
    model = sgd_model(KickstartPPO, teachers=[LinearTeacher()], kickstart_coef=2.0)
    assert model.kickstart_weight() == 2.0
    model.learn(128)
    assert model.kickstart_steps == 128  # all of the first learn() call
    assert model.kickstart_weight() == 0.0
    model.kickstart_start, model.num_timesteps = 0, 16
    assert model.kickstart_weight() == pytest.approx(2.0 * (1 - 16 / 128))


def test_teachers_are_frozen_and_never_saved(tmp_path):
    teacher = LinearTeacher()
    model = sgd_model(KickstartPPO, teachers=[teacher], kickstart_coef=1.0, kickstart_steps=1000)
    before = teacher.w.clone()
    model.learn(64)
    assert torch.equal(teacher.w, before) and not teacher.w.requires_grad
    optimised = {id(p) for group in model.policy.optimizer.param_groups for p in group["params"]}
    assert id(teacher.w) not in optimised and all(id(t) not in optimised for t in teacher.buffers())
    model.save(tmp_path / "student.zip")
    with zipfile.ZipFile(tmp_path / "student.zip") as archive:
        assert not any("teacher" in n for n in archive.namelist())
        state = torch.load(archive.open("policy.pth"), weights_only=True)
    assert set(state) == set(model.policy.state_dict())
    loaded = KickstartPPO.load(tmp_path / "student.zip", device="cpu")
    assert loaded.teachers == [] and loaded.kickstart_coef == 1.0
    obs = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    assert np.array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    loaded.set_env(model.get_env())
    loaded.learn(32)  # without teachers it trains as plain PPO


def test_bad_input_is_refused():
    model = sgd_model(KickstartPPO, teachers=[LinearTeacher()])
    model.ent_coef = 0.0
    with pytest.raises(ValueError, match="ent_coef > 0"):
        model.learn(32)
    with pytest.raises(ValueError, match="one weight >= 0 per teacher"):
        sgd_model(KickstartPPO, teachers=[LinearTeacher()], teacher_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="kickstart_coef"):
        sgd_model(KickstartPPO, kickstart_coef=-1.0)
    gaussian = DiagGaussianDistribution(2).proba_distribution(torch.zeros(3, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="discrete teacher.*cannot teach it"):
        distillation_kl(gaussian, [torch.ones(3, 2) / 2], [1.0])
    with pytest.raises(ValueError, match="continuous teacher.*cannot teach it"):
        distillation_kl(categorical(torch.zeros(3, 2)), [(torch.zeros(3, 2), torch.ones(3, 2))], [1.0])
    with pytest.raises(ValueError, match="state-dependent: turn it off"):
        sde = StateDependentNoiseDistribution(2)
        sde.distribution = None
        distillation_kl(sde, [(torch.zeros(3, 2), torch.ones(3, 2))], [1.0])
    with pytest.raises(ValueError, match="are continuous, the student's actions .*Discrete"):
        sgd_model(KickstartPPO, teachers=[LinearGaussianTeacher()])
    with pytest.raises(ValueError, match="are discrete, the student's actions .*Box"):
        sgd_model(KickstartPPO, env="Pendulum-v1", teachers=[LinearTeacher()])
    normalised = sgd_model(KickstartPPO, env=VecNormalize(make_vec_env("Pendulum-v1")),
                           teachers=[LinearGaussianTeacher()])
    with pytest.raises(ValueError, match="norm_obs=False"):
        normalised.learn(32)


def test_a_zoo_source_teaches_by_the_meaning_of_its_actions():
    teacher = load_teacher(ROOT / "agents" / "zoo" / "breakout", PONG_MEANINGS)
    # Breakout's NOOP, FIRE, RIGHT, LEFT are Pong's first four actions; RIGHTFIRE and LEFTFIRE get nothing
    assert teacher.mapping.tolist() == [0, 1, 2, 3]
    obs = torch.rand(6, 4, 84, 84)
    probs = teacher.probs(obs)
    assert probs.shape == (6, 6) and torch.allclose(probs.sum(-1), torch.ones(6)) and (probs[:, 4:] == 0).all()
    lab2d = sorted((ROOT / "agents" / "zoo-lab2d").glob("*/meta.json"))[0].parent
    with pytest.raises(ValueError, match="cannot teach this target"):
        load_teacher(lab2d, PONG_MEANINGS)


def test_ranking_weights_follow_the_zero_shot_evidence():
    ranking = pd.DataFrame({"source": ["a", "b", "c"], "zero_shot_z": [6.0, -2.0, 2.0]})
    assert ranking_weights(ranking, ["a", "b", "c"]) == [0.75, 0.0, 0.25]
    assert ranking_weights(ranking.assign(zero_shot_z=[-1.0, np.nan, 0.0]), ["a", "b", "c"]) == [1 / 3] * 3
    with pytest.raises(ValueError, match="not in the ranking"):
        ranking_weights(ranking, ["a", "d"])


@pytest.fixture(scope="module")
def policy_sources(tmp_path_factory):
    """Whole-policy sources: a ReLU PPO on Pendulum (its action_net scaled up so that it acts, its log_std moved off
    0) as an SB3 zip and as a compact folder recording its activation, a tanh PPO on CartPole, a SAC on Pendulum."""
    root = tmp_path_factory.mktemp("policy-teachers")
    pendulum = PPO("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[16, 16], activation_fn=nn.ReLU), seed=0,
                   device="cpu")
    with torch.no_grad():
        pendulum.policy.action_net.weight.mul_(100.0)
        pendulum.policy.log_std.fill_(-0.7)
    pendulum.save(root / "pendulum.zip")
    write_compact(root / "pendulum", {}, pendulum.policy.state_dict(),
                  {"name": "pendulum", "architecture": {"net_arch": [16, 16], "activation": "relu"}})
    cartpole = PPO("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=[8]), seed=1, device="cpu")
    with torch.no_grad():
        cartpole.policy.action_net.weight.mul_(100.0)
    cartpole.save(root / "cartpole.zip")
    SAC("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[8]), device="cpu").save(root / "sac.zip")
    return {name: str(root / name) for name in ("pendulum.zip", "pendulum", "cartpole.zip", "sac.zip")}


def random_observations(env_id, n=32):
    env = gym.make(env_id)
    env.observation_space.seed(0)
    return torch.as_tensor(np.stack([env.observation_space.sample() for _ in range(n)])).float()


def own_distribution(zip_path, obs):
    policy = PPO.load(zip_path, device="cpu").policy
    with torch.no_grad():
        return policy.get_distribution(obs).distribution


@pytest.mark.parametrize("source", ["pendulum.zip", "pendulum"])
def test_a_policy_teacher_is_the_sources_own_gaussian(policy_sources, source):
    env = gym.make("Pendulum-v1")
    teacher = load_policy_teacher(policy_sources[source], env.observation_space, env.action_space)
    assert isinstance(teacher, PolicyTeacher) and teacher.continuous and teacher.actor.activation == "relu"
    obs = random_observations("Pendulum-v1")
    mean, std = teacher.gaussian(obs)
    expected = own_distribution(policy_sources["pendulum.zip"], obs)
    assert mean.abs().max() > 1.0  # the source acts, beyond the bounds in places (no clipping: the Gaussian itself)
    torch.testing.assert_close(mean, expected.mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(std, expected.stddev, rtol=1e-6, atol=1e-6)
    assert [o.shape for o in teacher.output(obs)] == [(32, 1), (32, 1)]
    with pytest.raises(NotImplementedError, match="not a discrete teacher"):
        teacher.probs(obs)


def test_a_discrete_policy_teacher_is_the_sources_own_softmax(policy_sources):
    env = gym.make("CartPole-v1")
    teacher = load_policy_teacher(policy_sources["cartpole.zip"], env.observation_space, env.action_space)
    assert not teacher.continuous and teacher.actor.activation == "tanh"  # SB3's default: the zip records none
    obs = random_observations("CartPole-v1")
    probs = teacher.probs(obs)
    torch.testing.assert_close(probs, own_distribution(policy_sources["cartpole.zip"], obs).probs, rtol=1e-6,
                               atol=1e-6)
    assert probs.argmax(-1).unique().numel() == 2 and (probs - 0.5).abs().max() > 0.1  # it acts, both ways
    assert [o.shape for o in teacher.output(obs)] == [(32, 2)]


def test_kickstart_ppo_learns_from_a_policy_teacher_that_stays_frozen(policy_sources):
    env = gym.make("Pendulum-v1")
    teacher = load_policy_teacher(policy_sources["pendulum"], env.observation_space, env.action_space)
    buffers = {key: b.clone() for key, b in teacher.named_buffers()}
    assert buffers and "log_std" in buffers and not list(teacher.parameters())
    model = KickstartPPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32, n_epochs=2, ent_coef=0.01, seed=0,
                         device="cpu", teachers=[teacher], kickstart_steps=1000)
    start = [p.detach().clone() for p in model.policy.parameters()]
    obs = random_observations("Pendulum-v1")
    teacher_mean = teacher.gaussian(obs)[0]
    before = distillation_kl(model.policy.get_distribution(obs), [teacher.output(obs)], [1.0]).mean()
    model.learn(128)
    assert any(not torch.equal(a, b) for a, b in zip(start, model.policy.parameters()))
    for key, b in teacher.named_buffers():
        assert torch.equal(b, buffers[key]), key  # bit-identical
    torch.testing.assert_close(teacher.gaussian(obs)[0], teacher_mean)
    with torch.no_grad():
        after = distillation_kl(model.policy.get_distribution(obs), [teacher.output(obs)], [1.0]).mean()
    assert after < before  # the student moved towards its teacher


def test_policy_teachers_that_cannot_teach_are_refused(policy_sources):
    pendulum, cartpole = gym.make("Pendulum-v1"), gym.make("CartPole-v1")
    with pytest.raises(ValueError, match=r"Source 'sac' .* is an off-policy SAC policy: kickstarting distils "
                                         r"PPO/A2C-family policies"):
        load_policy_teacher(policy_sources["sac.zip"], pendulum.observation_space, pendulum.action_space)
    acrobot = gym.make("Acrobot-v1")  # 6 observations and 3 actions, not 4 and 2
    with pytest.raises(ValueError) as info:
        load_policy_teacher(policy_sources["cartpole.zip"], acrobot.observation_space, acrobot.action_space)
    message = str(info.value)
    assert "Source 'cartpole'" in message and "does not fit this target as a teacher" in message
    assert "mlp_extractor.policy_net.0.weight: (8, 4) reads 4 values" in message and "flattened, give 6" in message
    assert "action_net.weight: (2, 8) gives 2 values per action, and the actions Discrete(3) need 3" in message
    two_actions = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    with pytest.raises(ValueError, match=r"action_net\.weight: \(1, 16\) gives 1 values per action, and the actions "
                                         r"Box\(-1\.0, 1\.0, \(2,\), float32\) need 2"):
        load_policy_teacher(policy_sources["pendulum"], pendulum.observation_space, two_actions)
    with pytest.raises(ValueError, match=r"it is a continuous-action \(Gaussian, with a log_std\) policy, and the "
                                         r"target's actions are Discrete\(1\)"):
        load_policy_teacher(policy_sources["pendulum"], pendulum.observation_space, gym.spaces.Discrete(1))
    with pytest.raises(ValueError, match=r"it is a discrete-action \(no log_std\) policy, and the target's actions "
                                         r"are Box"):
        load_policy_teacher(policy_sources["cartpole.zip"], cartpole.observation_space, two_actions)
    with pytest.raises(ValueError, match="are continuous, the student's actions .*Discrete"):
        KickstartPPO("MlpPolicy", "CartPole-v1", device="cpu", teachers=[load_policy_teacher(
            policy_sources["pendulum"], gym.spaces.Box(-np.inf, np.inf, (3,)), pendulum.action_space)])


def test_any_teacher_follows_the_zoo_and_the_target(policy_sources):
    from envs.tasks import make_env, resolve

    env = make_vec_env("Pendulum-v1", n_envs=1)
    teacher = load_any_teacher(policy_sources["pendulum"], env, name="pend")
    assert isinstance(teacher, PolicyTeacher) and teacher.name == "pend"
    assert isinstance(load_any_teacher(policy_sources["cartpole.zip"], gym.make("CartPole-v1")), PolicyTeacher)
    pong = make_env(resolve("Pong"), 1, seed=0, backend="gym")
    try:
        teacher = load_any_teacher(ROOT / "agents" / "zoo" / "breakout", pong)
    finally:
        pong.close()
    assert isinstance(teacher, SourceTeacher) and teacher.mapping.tolist() == [0, 1, 2, 3]


def test_kickstart_grid_chooses_by_mean_rank_of_auc(tmp_path):
    import kickstart_grid

    aucs = {"Pong": {"kickstart:kcoef0.3": -19.0, "kickstart:kcoef1": -17.0, "kickstart:kcoef3": -18.0},
            "Breakout-m4": {"kickstart:kcoef0.3": 5.0, "kickstart:kcoef1": 4.0, "kickstart:kcoef3": 6.0}}
    studies = []
    for target, by_method in aucs.items():
        folder = tmp_path / target
        folder.mkdir()
        pd.DataFrame([{"target": target, "method": m, "seed": 0, "auc": a, "final_return": a + 1}
                      for m, a in by_method.items()] + [{"target": target, "method": "scratch", "seed": 0, "auc": 99.0,
                                                         "final_return": 0.0}]).to_csv(folder / "results.csv", index=False)
        studies.append(folder)
    table = kickstart_grid.grid_table(studies)
    assert "scratch" not in set(table["method"])
    ranking = kickstart_grid.choose(table)
    # kcoef 1: ranks 1 and 3; kcoef 3: 2 and 1 -> 1.5 wins; kcoef 0.3: 3 and 2
    assert list(zip(ranking["kcoef"], ranking["mean_rank"])) == [(3.0, 1.5), (1.0, 2.0), (0.3, 2.5)]
    assert set(ranking["kdecay"]) == {1.0}  # the default decay

    # A grid extended by a study of its own: ranked with the first study of the same target.
    wider = tmp_path / "Pong-wide"
    wider.mkdir()
    pd.DataFrame([{"target": "Pong", "method": "kickstart:kcoef10", "seed": 0, "auc": -16.0,
                   "final_return": -15.0}]).to_csv(wider / "results.csv", index=False)
    table = kickstart_grid.grid_table([*studies, wider])
    pong = table[table["target"] == "Pong"].set_index("kcoef")["rank"]
    assert pong.to_dict() == {0.3: 4.0, 1.0: 2.0, 3.0: 3.0, 10.0: 1.0}
    ranking = kickstart_grid.choose(table)
    # Best on Pong, but run on one target of two: it comes after every schedule run on both.
    assert list(ranking["kcoef"]) == [3.0, 1.0, 0.3, 10.0] and ranking.iloc[-1]["targets"] == 1
    with pytest.raises(SystemExit, match="more than one study"):
        kickstart_grid.grid_table([*studies, studies[0]])
