"""MULTIPOLAR: the target's action mean / logits against the formula computed from the sources' own SB3 policies.

Sources are small PPO MlpPolicies built (untrained) on Pendulum-v1 and CartPole-v1, of different
architectures and activations, with their ``action_net`` scaled up so that their actions differ
visibly (and Pendulum's means leave the action bounds, which exercises the clipping). Each test
follows the documented call, ``policy, kwargs = multipolar_policy(PPO, zoo=paths, ...)`` then
``PPO(policy, env, policy_kwargs=kwargs)``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import TRPO, MaskablePPO, RecurrentPPO
from stable_baselines3 import A2C, PPO, SAC
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize
from stable_baselines3.common.torch_layers import NatureCNN
from torch import nn

from conftest import OBS_SPACE_CHW, ImageEnv, random_nature_state, random_play
from zoo_rl import MultipolarActorCriticPolicy, multipolar_policy
from zoo_rl.multipolar import DISCRETE_SOURCES
from zoo_rl.sources import write_compact

PENDULUM, CARTPOLE = "Pendulum-v1", "CartPole-v1"
PPO_SETTINGS = dict(n_steps=64, batch_size=64, n_epochs=2, device="cpu")
#: name -> (environment, net_arch, activation): sources of different architectures.
SOURCES = {
    "pend-relu": (PENDULUM, [16, 16], nn.ReLU),
    "pend-tanh": (PENDULUM, [8], nn.Tanh),
    "cart-0": (CARTPOLE, [16], nn.Tanh),
    "cart-1": (CARTPOLE, [8, 8], nn.Tanh),
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, str]:
    """Paths of the SOURCES as SB3 zips, and ``<name>-compact`` as compact folders holding the whole policy state."""
    root = tmp_path_factory.mktemp("multipolar-sources")
    paths = {}
    for seed, (name, (env_id, net_arch, activation)) in enumerate(SOURCES.items()):
        model = PPO("MlpPolicy", env_id, policy_kwargs=dict(net_arch=net_arch, activation_fn=activation), seed=seed,
                    **PPO_SETTINGS)
        with torch.no_grad():  # SB3 starts action_net near zero; sources should act, and differ
            model.policy.action_net.weight.mul_(300.0)
            model.policy.action_net.bias.uniform_(-1.0, 1.0)
        model.save(root / f"{name}.zip")
        paths[name] = str(root / f"{name}.zip")
        folder = root / f"{name}-compact"
        write_compact(folder, random_nature_state(seed), model.policy.state_dict(), {"name": name})
        paths[f"{name}-compact"] = str(folder)
    return paths


def copy_zoo(paths: list[str], folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in paths:
        dest = folder / Path(path).name
        (shutil.copytree if Path(path).is_dir() else shutil.copy)(path, dest)
        out.append(str(dest))
    return out


def observations(env_id: str, n: int = 32) -> torch.Tensor:
    """``n`` observations of the environment under random actions."""
    return torch.as_tensor(random_play(env_id, n))


def source_distributions(zips: list[str], obs: torch.Tensor) -> list[torch.distributions.Distribution]:
    """Each source's own action distribution, from SB3's policy loaded from its zip."""
    out = []
    for path in zips:
        policy = PPO.load(path, device="cpu").policy
        policy.set_training_mode(False)
        with torch.no_grad():
            out.append(policy.get_distribution(obs).distribution)
    return out


def auxiliary(policy: MultipolarActorCriticPolicy, obs: torch.Tensor) -> torch.Tensor:
    """``F_aux(s)``: SB3's own actor of the target (its features extractor, policy_net and action_net)."""
    features = policy.pi_features_extractor(obs.float())
    return policy.action_net(policy.mlp_extractor.forward_actor(features))


def build(env, zoo: list[str], algo=PPO, settings=PPO_SETTINGS, **options):
    policy, kwargs = multipolar_policy(algo, zoo=zoo, **options)
    assert policy is MultipolarActorCriticPolicy
    return algo(policy, env, policy_kwargs=kwargs, seed=0, **settings)


def test_continuous_mean_is_the_aggregate_plus_the_auxiliary_network(zoo):
    """Mean = (1/K) sum_k theta_k * clip(mu_k) + F_aux, from a zip and a compact folder of other architectures."""
    model = build(PENDULUM, [zoo["pend-relu"], zoo["pend-tanh-compact"]], source_activation=["relu", "tanh"],
                  net_arch=[16])
    policy = model.policy
    obs = observations(PENDULUM)
    means = torch.stack([d.mean for d in source_distributions([zoo["pend-relu"], zoo["pend-tanh"]], obs)], dim=1)
    clipped = means.clamp(-2.0, 2.0)
    assert (clipped != means).any() and (clipped == means).any()  # some means leave the bounds, some do not
    assert not torch.allclose(clipped[:, 0], clipped[:, 1])  # the two sources act differently
    with torch.no_grad():
        f_aux = auxiliary(policy, obs)
        assert f_aux.abs().max() < 0.05  # F_aux starts near zero (SB3's action_net gain 0.01)
        torch.testing.assert_close(policy.theta_agg, torch.ones(2, 1))
        distribution = policy.get_distribution(obs).distribution
        torch.testing.assert_close(distribution.mean, clipped.mean(dim=1) + f_aux, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(distribution.stddev, torch.exp(policy.log_std).expand_as(distribution.stddev))
        theta = torch.tensor([[0.3], [1.7]])
        policy.theta_agg.copy_(theta)
        torch.testing.assert_close(policy.get_distribution(obs).distribution.mean,
                                   (theta * clipped).mean(dim=1) + f_aux, rtol=1e-6, atol=1e-6)
        # forward and evaluate_actions (rollouts and updates) see the same distribution
        actions, _, log_prob = policy(obs, deterministic=True)
        torch.testing.assert_close(actions, (theta * clipped).mean(dim=1) + f_aux, rtol=1e-6, atol=1e-6)
        _, evaluated, _ = policy.evaluate_actions(obs, actions)
        torch.testing.assert_close(evaluated, log_prob)

    unclipped = build(PENDULUM, [zoo["pend-relu"], zoo["pend-tanh"]], source_activation=[nn.ReLU, nn.Tanh],
                      clip_source_actions=False, net_arch=[16]).policy
    with torch.no_grad():
        torch.testing.assert_close(unclipped.get_distribution(obs).distribution.mean,
                                   means.mean(dim=1) + auxiliary(unclipped, obs), rtol=1e-6, atol=1e-6)


def test_source_activation_defaults_to_the_one_the_source_records(zoo, tmp_path):
    """A compact folder whose meta.json says relu (as export_policy writes it) and an SB3 zip saved with ReLU run with
    ReLU by default; a compact folder that records nothing runs with SB3's tanh; an explicit argument still wins;
    the resolved names are what policy_kwargs keep for a saved model."""
    state = PPO.load(zoo["pend-relu"], device="cpu").policy.state_dict()
    folder = tmp_path / "pend-relu-meta"
    write_compact(folder, {}, state, {"name": "pend-relu-meta",
                                      "architecture": {"net_arch": [16, 16], "activation": "relu"}})
    obs = observations(PENDULUM)
    relu_means = source_distributions([zoo["pend-relu"]], obs)[0].mean
    for path in (str(folder), zoo["pend-relu"]):
        model = build(PENDULUM, [path], clip_source_actions=False)
        assert model.policy_kwargs["source_activation"] == "relu"
        assert model.policy.multipolar_sources[0].activation == "relu"
        torch.testing.assert_close(model.policy.source_actions(obs)[:, 0], relu_means, rtol=1e-6, atol=1e-6)
    unrecorded = build(PENDULUM, [zoo["pend-relu-compact"]], clip_source_actions=False)  # meta.json: a name only
    assert unrecorded.policy_kwargs["source_activation"] == "tanh"
    assert not torch.allclose(unrecorded.policy.source_actions(obs)[:, 0], relu_means, atol=1e-3)
    mixed = build(PENDULUM, [str(folder), str(folder)], source_activation=[None, "tanh"], clip_source_actions=False)
    assert mixed.policy_kwargs["source_activation"] == ["relu", "tanh"]
    write_compact(tmp_path / "swish", {}, state, {"architecture": {"activation": "swish"}})
    with pytest.raises(ValueError, match=r"Source 'swish' .* records the activation 'swish'"):
        multipolar_policy(PPO, zoo=[tmp_path / "swish"])


@pytest.mark.parametrize("discrete_source", DISCRETE_SOURCES)
def test_discrete_logits_are_the_aggregate_plus_the_auxiliary_network(zoo, discrete_source):
    zips = [zoo["cart-0"], zoo["cart-1"]]
    policy = build(CARTPOLE, zips, discrete_source=discrete_source).policy
    obs = observations(CARTPOLE)
    sources = source_distributions(zips, obs)
    mu = torch.stack([{"one-hot": torch.nn.functional.one_hot(d.probs.argmax(-1), 2).float(),
                       "probabilities": d.probs, "log-probabilities": d.logits}[discrete_source] for d in sources], 1)
    assert not torch.equal(mu[:, 0], mu[:, 1])  # the sources disagree somewhere
    with torch.no_grad():
        policy.theta_agg.copy_(torch.tensor([[0.5, 2.0], [1.5, -1.0]]))
        logits = (policy.theta_agg * mu).mean(dim=1) + auxiliary(policy, obs)
        torch.testing.assert_close(policy.source_actions(obs), mu, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(policy.get_distribution(obs).distribution.probs, torch.softmax(logits, -1),
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("algo, env, names", [(PPO, PENDULUM, ["pend-relu", "pend-tanh"]),
                                              (A2C, CARTPOLE, ["cart-0", "cart-1"]),
                                              (TRPO, PENDULUM, ["pend-relu", "pend-tanh"])])
def test_theta_and_auxiliary_train_while_sources_stay_frozen(zoo, algo, env, names):
    settings = {PPO: PPO_SETTINGS, A2C: dict(n_steps=8, device="cpu"),
                TRPO: dict(n_steps=64, batch_size=64, device="cpu")}[algo]
    activation = ["relu", "tanh"] if env == PENDULUM else "tanh"
    model = build(env, [zoo[n] for n in names], algo=algo, settings=settings, source_activation=activation)
    policy = model.policy
    stepped = {id(p) for group in policy.optimizer.param_groups for p in group["params"]}
    assert id(policy.theta_agg) in stepped and stepped == {id(p) for p in policy.parameters()}
    buffers = dict(policy.named_buffers())
    assert buffers and all(key.startswith("multipolar_sources.") for key in buffers)
    assert not any(id(b) in stepped or b.requires_grad for b in buffers.values())
    before = {key: b.clone() for key, b in buffers.items()}
    theta, aux = policy.theta_agg.detach().clone(), policy.action_net.weight.detach().clone()
    model.learn(128)
    assert not torch.equal(policy.theta_agg, theta)
    assert not torch.equal(policy.action_net.weight, aux)
    for key, b in policy.named_buffers():
        assert torch.equal(b, before[key]), key  # bit-identical
    weights, sources = policy.aggregation_weights()
    assert isinstance(weights, np.ndarray) and weights.shape == (2, 1 if env == PENDULUM else 2)
    assert sources == names
    np.testing.assert_array_equal(weights, policy.theta_agg.detach().numpy())


def test_save_and_load_without_the_source_files(zoo, tmp_path):
    paths = copy_zoo([zoo["pend-relu"], zoo["pend-tanh-compact"]], tmp_path / "zoo")
    model = build(PENDULUM, paths, source_activation=["relu", "tanh"])
    model.learn(64)
    obs = observations(PENDULUM).numpy()
    actions, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "target.zip")
    shutil.rmtree(tmp_path / "zoo")

    with pytest.warns(UserWarning, match="does not exist"):
        loaded = PPO.load(tmp_path / "target.zip", device="cpu")
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], actions)
    saved, restored = model.policy.state_dict(), loaded.policy.state_dict()
    assert list(saved) == list(restored)
    for key in saved:
        assert torch.equal(saved[key], restored[key]), key
    assert loaded.policy.aggregation_weights()[1] == ["pend-relu", "pend-tanh-compact"]
    loaded.set_env(make_vec_env(PENDULUM, n_envs=1, seed=0))
    loaded.learn(64)  # training goes on, the optimizer's state restored

    with pytest.warns(UserWarning, match="empty source tensors"):
        unloaded = PPO(MultipolarActorCriticPolicy, PENDULUM, policy_kwargs=model.policy_kwargs, device="cpu")
    with pytest.raises(FileNotFoundError, match="does not exist.*no saved weights were loaded"):
        unloaded.predict(obs)


def test_mismatched_observations_and_actions_name_source_layer_and_shapes(zoo):
    policy, kwargs = multipolar_policy(PPO, zoo=[zoo["cart-0"], zoo["cart-1"]])
    with pytest.raises(ValueError) as info:
        PPO(policy, "Acrobot-v1", policy_kwargs=kwargs, device="cpu")  # 6 observations and 3 actions, not 4 and 2
    message = str(info.value)
    assert f"Source 'cart-0' ({zoo['cart-0']})" in message
    assert "mlp_extractor.policy_net.0.weight: (16, 4) reads 4 values, and the observations" in message
    assert "flattened, give 6" in message
    assert "action_net.weight: (2, 16) gives 2 values per action, and the actions Discrete(3) need 3" in message

    class TwoActions(gym.Env):
        observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
        action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    policy, kwargs = multipolar_policy(PPO, zoo=[zoo["pend-tanh"]])
    with pytest.raises(ValueError, match=r"Source 'pend-tanh' .*\n  - action_net\.weight: \(1, 8\) gives 1 values per "
                                         r"action, and the actions Box\(-1\.0, 1\.0, \(2,\), float32\) need 2"):
        PPO(policy, TwoActions(), policy_kwargs=kwargs, device="cpu")
    with pytest.raises(ValueError, match=r"it is a continuous-action \(Gaussian, with a log_std\) policy, and the "
                                         r"target's actions are Discrete\(2\)"):
        PPO(policy, CARTPOLE, policy_kwargs=kwargs, device="cpu")


def test_sources_of_other_algorithms_and_unsupported_targets_are_refused(zoo, tmp_path):
    SAC("MlpPolicy", PENDULUM, policy_kwargs=dict(net_arch=[8]), device="cpu").save(tmp_path / "sac.zip")
    with pytest.raises(ValueError, match=r"Source 'sac' \(.*sac.zip\) is a SAC policy, but MULTIPOLAR takes "
                                         r"actor-critic sources"):
        multipolar_policy(PPO, zoo=[tmp_path / "sac.zip"])
    for algo in (SAC, MaskablePPO, RecurrentPPO):
        with pytest.raises(ValueError, match="ActorCriticPolicy"):
            multipolar_policy(algo, zoo=[zoo["cart-0"]])
    with pytest.raises(ValueError, match="Dict observations"):
        multipolar_policy(PPO, zoo=[zoo["cart-0"]], policy="MultiInputPolicy")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        multipolar_policy(PPO, zoo=[tmp_path / "gone.zip"])


@pytest.mark.parametrize("options, match", [
    (dict(zoo=[]), "non-empty list"),
    (dict(discrete_source="argmax"), "Unknown discrete_source"),
    (dict(source_activation="swish"), "Unknown source activation"),
    (dict(source_activation=["relu"]), "one per source"),
    (dict(vec_normalize=["a.pkl"]), "one vecnormalize.pkl"),
    (dict(zoo=None), "non-empty list"),
])
def test_bad_options(zoo, options, match):
    with pytest.raises(ValueError, match=match):
        multipolar_policy(PPO, **{"zoo": [zoo["cart-0"], zoo["cart-1"]], **options})


def test_vec_normalize_sources_read_raw_observations(tmp_path):
    """A source trained under VecNormalize, folded: on raw observations its action is its mean on normalised ones."""
    venv = VecNormalize(make_vec_env(PENDULUM, n_envs=1, seed=0), gamma=0.9)
    source = PPO("MlpPolicy", venv, policy_kwargs=dict(net_arch=[16]), gamma=0.9, **PPO_SETTINGS).learn(128)
    source.save(tmp_path / "src.zip")
    venv.save(tmp_path / "vecnormalize.pkl")
    policy = build(PENDULUM, [tmp_path / "src.zip"], vec_normalize=[tmp_path / "vecnormalize.pkl"],
                   clip_source_actions=False).policy
    raw = observations(PENDULUM)
    venv.training = False
    normalised = torch.as_tensor(venv.normalize_obs(raw.numpy()))
    assert np.abs((raw.numpy() - venv.obs_rms.mean) / np.sqrt(venv.obs_rms.var + venv.epsilon)).max() < venv.clip_obs
    with torch.no_grad():
        torch.testing.assert_close(policy.source_actions(raw)[:, 0],
                                   source.policy.get_distribution(normalised).distribution.mean, rtol=1e-4, atol=1e-4)


def test_cnn_sources_from_compact_folders(tmp_path):
    """CnnPolicy sources (a compact folder's NatureCNN and heads) for a CnnPolicy target."""
    zoo, heads = [], []
    for k in range(2):
        torch.manual_seed(k)
        head = {"action_net.weight": 0.05 * torch.randn(3, 512), "action_net.bias": torch.randn(3),
                "value_net.weight": torch.randn(1, 512), "value_net.bias": torch.randn(1)}
        write_compact(tmp_path / f"cnn{k}", random_nature_state(k), head, {"name": f"cnn{k}"})
        zoo.append(str(tmp_path / f"cnn{k}"))
        heads.append(head)
    env = make_vec_env(ImageEnv, n_envs=2, seed=0)
    model = build(env, zoo, policy="CnnPolicy", discrete_source="log-probabilities",
                  settings=dict(n_steps=16, batch_size=32, n_epochs=1, device="cpu"))
    policy = model.policy
    assert isinstance(policy.features_extractor, NatureCNN) and policy.net_arch == []
    obs = torch.randint(0, 256, (4, *OBS_SPACE_CHW.shape)).float()
    expected = []
    for k, head in enumerate(heads):
        cnn = NatureCNN(OBS_SPACE_CHW, features_dim=512)
        cnn.load_state_dict(random_nature_state(k))
        with torch.no_grad():
            logits = cnn(obs / 255.0) @ head["action_net.weight"].T + head["action_net.bias"]
        expected.append(torch.log_softmax(logits, -1))
    torch.testing.assert_close(policy.source_actions(obs), torch.stack(expected, 1), rtol=1e-5, atol=1e-5)
    model.learn(32)
