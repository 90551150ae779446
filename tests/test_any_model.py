"""zoo_policy: every layer of any SB3 model built from small sources trained here, for every algorithm family.

The sources are MLP agents trained a few hundred steps on CartPole-v1 and Pendulum-v1 (a fixture
shared by the whole test run trains each kind once). Each test follows the documented call,
``policy, kwargs = zoo_policy(ALGO, zoo=paths, **arch); ALGO(policy, env, policy_kwargs=kwargs)``.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sb3_contrib import QRDQN, TQC, CrossQ, MaskablePPO, RecurrentPPO
from sb3_contrib.common.envs import InvalidActionEnvDiscrete
from stable_baselines3 import A2C, DDPG, DQN, PPO, SAC, TD3
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import SimpleMultiObsEnv
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

import zoo_rl.zoo_policies as zoo_policies
from conftest import ImageEnv, random_nature_state, random_play
from zoo_rl import GateLogger, ZooAdam, ZooLayer, export_lite, ranked_gates, zoo_layers, zoo_policy
from zoo_rl.optim import LR_MULTIPLIER
from zoo_rl.policy_sources import read_vec_normalize
from zoo_rl.zoo_policies import ZOO_OPTIONS
from zoo_rl.sources import read_policy_pth, write_compact

CARTPOLE, PENDULUM = "CartPole-v1", "Pendulum-v1"
OFF_POLICY = dict(learning_starts=32, batch_size=32, buffer_size=2_000)
#: name -> (algorithm, environment, architecture shared by sources and target, algorithm settings).
CASES = {
    "ppo-discrete": (PPO, CARTPOLE, dict(net_arch=[16, 16]), dict(n_steps=64, batch_size=64, n_epochs=1)),
    "ppo-continuous": (PPO, PENDULUM, dict(net_arch=[16, 16]), dict(n_steps=64, batch_size=64, n_epochs=1)),
    "a2c": (A2C, CARTPOLE, dict(net_arch=[16, 16]), dict(n_steps=8)),
    "sac": (SAC, PENDULUM, dict(net_arch=[16, 16]), OFF_POLICY),
    "td3": (TD3, PENDULUM, dict(net_arch=[16, 16]), OFF_POLICY),
    "ddpg": (DDPG, PENDULUM, dict(net_arch=[16, 16]), OFF_POLICY),
    "tqc": (TQC, PENDULUM, dict(net_arch=[16, 16], n_quantiles=5), dict(OFF_POLICY, top_quantiles_to_drop_per_net=1)),
    "dqn": (DQN, CARTPOLE, dict(net_arch=[16, 16]), dict(OFF_POLICY, target_update_interval=50)),
    "qrdqn": (QRDQN, CARTPOLE, dict(net_arch=[16, 16], n_quantiles=5), dict(OFF_POLICY, target_update_interval=50)),
}
SOURCE_STEPS = 256
N_SOURCES = 2


def train(name: str, seed: int, steps: int):
    algo, env_id, arch, settings = CASES[name]
    return algo("MlpPolicy", env_id, policy_kwargs=arch, seed=seed, device="cpu", **settings).learn(steps)


@pytest.fixture(scope="session")
def sources(tmp_path_factory):
    """``sources(name)``: paths of N_SOURCES SB3 zips of that case, trained once per test run."""
    root = tmp_path_factory.mktemp("sources")
    made: dict[str, list[str]] = {}

    def get(name: str) -> list[str]:
        if name not in made:
            made[name] = []
            for seed in range(N_SOURCES):
                path = root / f"{name}-{seed}.zip"
                train(name, seed, SOURCE_STEPS).save(path)
                made[name].append(str(path))
        return made[name]

    return get


def copy_sources(paths: list[str], folder: Path) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    return [shutil.copy(p, folder / Path(p).name) for p in paths]


def build(name: str, zoo: list[str], seed: int = 0, **options):
    algo, env_id, arch, settings = CASES[name]
    policy, policy_kwargs = zoo_policy(algo, zoo=zoo, **arch, **options)
    return algo(policy, env_id, policy_kwargs=policy_kwargs, seed=seed, device="cpu", **settings)


def plain_policy(name: str):
    """SB3's own policy with the case's architecture."""
    algo, env_id, arch, settings = CASES[name]
    return algo("MlpPolicy", env_id, policy_kwargs=arch, device="cpu", **settings).policy


def optimizers(policy) -> list[torch.optim.Optimizer]:
    return [m.optimizer for m in policy.modules() if isinstance(getattr(m, "optimizer", None), torch.optim.Optimizer)]


def observations(name: str, n: int = 16) -> np.ndarray:
    """``n`` observations of the case's environment under random actions."""
    return random_play(CASES[name][1], n)


@pytest.mark.parametrize("name", list(CASES))
def test_every_layer_aggregated_learns_saves_loads_exports(sources, tmp_path, name):
    zoo = copy_sources(sources(name), tmp_path / "zoo")
    model = build(name, zoo)
    policy, reference = model.policy, plain_policy(name)
    layers = zoo_layers(policy)
    # Every Linear of SB3's policy is a zoo layer of the K sources, and no plain layer is left.
    linears = {p for p, m in reference.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    assert {p for p, m in policy.named_modules() if isinstance(m, ZooLayer)} == linears
    assert not any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in policy.modules())
    states = [read_policy_pth(p) for p in zoo]
    for path, layer in layers.items():
        if "_target" in path:
            continue
        for k, state in enumerate(states):
            assert torch.equal(layer.weight[k], state[f"{path}.weight"]), (path, k)
            assert torch.equal(layer.bias[k], state[f"{path}.bias"]), (path, k)
    # SB3 built the optimizers over the zoo layers and copied the online networks into the targets.
    stepped = {id(p) for opt in optimizers(policy) for group in opt.param_groups for p in group["params"]}
    assert stepped <= {id(p) for p in policy.parameters()}
    online = [p for path, layer in layers.items() if "_target" not in path for p in layer.parameters()]
    assert all(id(p) in stepped for p in online)
    assert all(isinstance(opt, ZooAdam) or type(opt).__name__.startswith("Zoo") for opt in optimizers(policy))
    for online_name in ("actor", "critic", "q_net", "quantile_net"):
        target = getattr(policy, f"{online_name}_target", None)
        if target is not None:
            for (key, a), b in zip(getattr(policy, online_name).state_dict().items(), target.state_dict().values()):
                assert torch.equal(a, b), key

    before = {path: layer.weight.detach().clone() for path, layer in layers.items()}
    model.learn(160)
    assert any(not torch.equal(before[path], layer.weight) for path, layer in layers.items() if "_target" not in path)

    obs = observations(name)
    actions, _ = model.predict(obs, deterministic=True)
    model.save(tmp_path / "target.zip")
    shutil.rmtree(tmp_path / "zoo")
    zoo_policies._ZOO_CACHE.clear()
    with pytest.warns(UserWarning, match="does not exist"):
        loaded = type(model).load(tmp_path / "target.zip", device="cpu")
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], actions)
    for (key, a), b in zip(policy.state_dict().items(), loaded.policy.state_dict().values()):
        assert torch.equal(a, b), key

    plain = export_lite(model)
    assert type(plain) is type(model) and type(plain.policy) is type(reference)
    assert not zoo_layers(plain.policy)
    np.testing.assert_allclose(plain.predict(obs, deterministic=True)[0], actions, rtol=0, atol=1e-6)
    assert {k: v.shape for k, v in plain.policy.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
    plain.save(tmp_path / "plain.zip")
    np.testing.assert_allclose(type(model).load(tmp_path / "plain.zip", device="cpu").predict(obs, deterministic=True)[0],
                               actions, rtol=0, atol=1e-6)


def test_maskable_ppo(tmp_path):
    """MaskablePPO: PPO sources (one family: actor-critic) for a masked target; export keeps the masked actions."""
    env = InvalidActionEnvDiscrete(dim=8, n_invalid_actions=4)
    settings = dict(n_steps=64, batch_size=64, n_epochs=1, device="cpu")
    zoo = []
    for seed in range(2):
        MaskablePPO("MlpPolicy", env, policy_kwargs=dict(net_arch=[16]), seed=seed, **settings).learn(128).save(
            tmp_path / f"masked-{seed}.zip")
        zoo.append(tmp_path / f"masked-{seed}.zip")
    policy, kwargs = zoo_policy(MaskablePPO, zoo=zoo, net_arch=[16])
    model = MaskablePPO(policy, env, policy_kwargs=kwargs, seed=0, **settings)
    assert {p for p, m in model.policy.named_modules() if isinstance(m, ZooLayer)} == \
        {"mlp_extractor.policy_net.0", "mlp_extractor.value_net.0", "action_net", "value_net"}
    model.learn(64)
    obs = np.arange(8)
    masks = np.stack([env.action_masks() for _ in obs])
    actions, _ = model.predict(obs, action_masks=masks, deterministic=True)
    assert masks[np.arange(8), actions].all()
    np.testing.assert_array_equal(export_lite(model).predict(obs, action_masks=masks, deterministic=True)[0], actions)


@pytest.mark.parametrize("name, online, target", [("sac", "critic", "critic_target"), ("td3", "actor", "actor_target"),
                                                   ("dqn", "q_net", "q_net_target")])
def test_lite_averages_reach_the_target_networks(sources, name, online, target):
    model = build(name, sources(name))
    model.learn(200)
    online_layers = zoo_layers(getattr(model.policy, online))
    target_layers = zoo_layers(getattr(model.policy, target))
    assert online_layers.keys() == target_layers.keys()
    for path, layer in target_layers.items():
        # The targets never train: only SB3's copy of the online "running_" buffers moves their average.
        assert layer.running_updates.item() > 1, path
        # SB3's polyak_update writes through .data (no version counter moves): the target's output is the
        # aggregate of its current tensors, never a merge cached before the updates.
        x = torch.randn(4, layer.weight.shape[2])
        with torch.no_grad():
            served = layer(x)
        with torch.enable_grad():
            fresh = layer(x).detach()
        torch.testing.assert_close(served, fresh, rtol=1e-5, atol=1e-5)


def test_ranked_start_multipliers_and_log_std(sources, tmp_path):
    zoo = copy_sources(sources("ppo-continuous"), tmp_path / "zoo")
    start = ranked_gates(2, [1, 0], weight=0.9)
    model = build("ppo-continuous", zoo, init_gates=start, gate_lr=10.0, align_lr=3.0, optimizer_class=ZooAdam)
    json.dumps({k: model.policy_kwargs[k] for k in ZOO_OPTIONS})  # paths, names and numbers only
    for layer in zoo_layers(model.policy).values():
        torch.testing.assert_close(layer.running_gates, torch.tensor(start))
    groups = {group[LR_MULTIPLIER] for group in model.policy.optimizer.param_groups}
    assert groups == {1.0, 10.0, 3.0}
    log_stds = [read_policy_pth(p)["log_std"] for p in zoo]
    torch.testing.assert_close(model.policy.log_std.detach(), 0.1 * log_stds[0] + 0.9 * log_stds[1])
    # The same layout, groups included, on every construction (what SB3's load relies on).
    again = build("ppo-continuous", zoo, init_gates=start, gate_lr=10.0, align_lr=3.0, optimizer_class=ZooAdam)
    assert list(again.policy.state_dict()) == list(model.policy.state_dict())
    assert [len(g["params"]) for g in again.policy.optimizer.param_groups] == \
        [len(g["params"]) for g in model.policy.optimizer.param_groups]
    # ... and without the source files: SB3 loads the optimizer's state group by group.
    model.learn(64)
    model.save(tmp_path / "target.zip")
    shutil.rmtree(tmp_path / "zoo")
    zoo_policies._ZOO_CACHE.clear()
    with pytest.warns(UserWarning, match="empty banks"):
        loaded = PPO.load(tmp_path / "target.zip", device="cpu")
    assert [(g[LR_MULTIPLIER], len(g["params"])) for g in loaded.policy.optimizer.param_groups] == \
        [(g[LR_MULTIPLIER], len(g["params"])) for g in model.policy.optimizer.param_groups]
    assert loaded.policy.optimizer.state_dict()["state"].keys() == model.policy.optimizer.state_dict()["state"].keys()
    assert export_lite(loaded).policy_kwargs["optimizer_class"] is torch.optim.Adam  # loads without zoo_rl


def test_an_off_policy_model_reads_its_gates_every_so_many_steps_not_every_step(sources, tmp_path, monkeypatch):
    """SAC's rollout is one step: GateLogger reads the gates at most every ``every`` steps, and the CSV still gets
    its rows."""
    monkeypatch.setattr(GateLogger, "OFF_POLICY_LOG_EVERY", 50)
    reads = []
    logger = GateLogger(csv_path=tmp_path / "gates.csv", every=100)
    rows = logger.rows
    monkeypatch.setattr(logger, "rows", lambda: reads.append(logger.num_timesteps) or rows())
    build("sac", sources("sac")).learn(200, callback=logger)
    assert reads == [1, 51, 101, 151] and len(pd.read_csv(tmp_path / "gates.csv")["timesteps"].unique()) == 2


def test_lite_ppo_first_ratio_is_one_and_gates_are_logged(sources, tmp_path):
    """Rollouts (eval mode, no gradient: the merged layers) and updates (train mode: the aggregate) see one
    network, so PPO's first ratio is 1; GateLogger records every zoo layer of the policy."""
    model = build("ppo-discrete", sources("ppo-discrete"))
    model.learn(64, callback=GateLogger(csv_path=tmp_path / "gates.csv", every=1))
    with torch.no_grad():
        for layer in zoo_layers(model.policy).values():  # input-dependent gates, an average far from this batch
            layer.gate.weight2.normal_(std=3.0)
            layer.running_gates.copy_(torch.softmax(3 * torch.randn(2), 0))
    obs, actions = torch.as_tensor(observations("ppo-discrete")), torch.randint(0, 2, (16,))
    model.policy.set_training_mode(False)
    with torch.no_grad():
        _, logp_rollout, _ = model.policy.evaluate_actions(obs, actions)
    model.policy.set_training_mode(True)
    _, logp_train, _ = model.policy.evaluate_actions(obs, actions)
    torch.testing.assert_close(torch.exp(logp_train - logp_rollout), torch.ones(16), rtol=0, atol=1e-5)
    import pandas as pd

    table = pd.read_csv(tmp_path / "gates.csv")
    assert set(table["layer"]) == set(zoo_layers(model.policy))
    assert set(table["source"]) == {"ppo-discrete-0", "ppo-discrete-1"}


@pytest.mark.parametrize("gate", ["sample", "batch", "uniform"])
def test_other_gate_modes_learn(sources, gate):
    model = build("sac", sources("sac"), gate=gate, normalisation="softmax", align="conv")
    layers = zoo_layers(model.policy)
    assert all(layer.mode == gate and layer.align is None for layer in layers.values())
    model.learn(64)
    if gate != "uniform":
        with pytest.raises(ValueError, match="gate='lite'"):
            export_lite(model)
    else:
        obs = observations("sac")
        np.testing.assert_allclose(export_lite(model).predict(obs, deterministic=True)[0],
                                   model.predict(obs, deterministic=True)[0], rtol=0, atol=1e-6)


def test_mismatched_architecture_names_layer_shapes_and_sources(sources):
    zoo = sources("sac")
    policy, kwargs = zoo_policy(SAC, zoo=zoo, net_arch=[16])
    with pytest.raises(ValueError) as info:
        SAC(policy, PENDULUM, policy_kwargs=kwargs, device="cpu")
    message = str(info.value)
    assert "actor.latent_pi.2.weight: absent from this policy; 'sac-0' (16, 16), 'sac-1' (16, 16)" in message
    assert "'sac-0' (" in message and "sac-0.zip" in message  # each source named with its file
    assert "net_arch" in message


def test_sources_of_two_architectures_are_refused_before_any_policy(sources, tmp_path):
    other = tmp_path / "sac-wide.zip"
    SAC("MlpPolicy", PENDULUM, policy_kwargs=dict(net_arch=[8]), device="cpu").save(other)
    with pytest.raises(ValueError) as info:
        zoo_policy(SAC, zoo=[*sources("sac"), str(other)], net_arch=[16, 16])
    message = str(info.value)
    assert "do not share one architecture" in message and "sac-wide.zip" in message
    assert "actor.latent_pi.0.weight: 'sac-0' (16, 3), 'sac-1' (16, 3), 'sac-wide' (8, 3)" in message


def test_mismatched_spaces_name_layer_shapes_and_sources(sources):
    policy, kwargs = zoo_policy(DQN, zoo=sources("dqn"), net_arch=[16, 16])
    with pytest.raises(ValueError) as info:
        DQN(policy, "Acrobot-v1", policy_kwargs=kwargs, device="cpu")  # 6 observations and 3 actions, not 4 and 2
    message = str(info.value)
    assert "q_net.q_net.0.weight: (16, 6) in this policy; 'dqn-0' (16, 4), 'dqn-1' (16, 4)" in message
    assert "q_net.q_net.4.weight: (3, 16) in this policy; 'dqn-0' (2, 16)" in message


def test_mismatched_family_is_refused_with_the_source(sources):
    with pytest.raises(ValueError, match=r"Source 'td3-0' \(.*td3-0.zip\) is a TD3 or DDPG policy .* "
                                         r"ZooSACPolicy needs SAC sources"):
        zoo_policy(SAC, zoo=sources("td3"), net_arch=[16, 16])
    with pytest.raises(ValueError, match=r"critic\.qf1\.0\.weight: \(16, 4\) in this policy; 'ddpg-0' absent"):
        build("td3", sources("ddpg"))  # DDPG has one critic where TD3 has two


@pytest.mark.parametrize("algo, match", [(CrossQ, "batch renormalisation"), (RecurrentPPO, "LSTM")])
def test_unsupported_algorithms_say_why(algo, match):
    with pytest.raises(ValueError, match=match):
        zoo_policy(algo, zoo=["anything.zip"])


@pytest.mark.parametrize("kwargs, match", [
    (dict(zoo=[]), "non-empty list"),
    (dict(gate="mean"), "Unknown gate mode"),
    (dict(align="linear"), "align must be"),
    (dict(init_gates=[0.5]), "one per source"),
    (dict(gate_lr=0.0), "gate_lr must be a positive"),
    (dict(vec_normalize=["a.pkl"]), "one vecnormalize.pkl"),
])
def test_bad_options(sources, kwargs, match):
    with pytest.raises(ValueError, match=match):
        zoo_policy(SAC, **{"zoo": sources("sac"), **kwargs})


def test_missing_sources_fail_at_first_use(tmp_path):
    with pytest.warns(UserWarning, match="empty banks"):
        model = build("dqn", [str(tmp_path / "gone.zip"), str(tmp_path / "gone2.zip")])
    with pytest.raises(FileNotFoundError, match="gone.zip' does not exist"):
        model.predict(observations("dqn", 2))


@pytest.mark.parametrize("algo, share", [("ppo", True), ("ppo", False), ("dqn", True)])
def test_cnn_policy_from_compact_folders(tmp_path, algo, share):
    """CnnPolicy: NatureCNN and heads from compact zoo folders; the linear layer's gate pools the conv map."""
    head = "action_net" if algo == "ppo" else "q_net.q_net.0"
    zoo = []
    for k in range(2):
        heads = {f"{head}.weight": torch.randn(3, 512), f"{head}.bias": torch.randn(3)}
        if algo == "ppo":
            heads.update({"value_net.weight": torch.randn(1, 512), "value_net.bias": torch.randn(1)})
        folder = tmp_path / f"cnn{k}"
        write_compact(folder, random_nature_state(k), heads, {"name": f"cnn{k}"})
        zoo.append(str(folder))
    env = make_vec_env(ImageEnv, n_envs=2, seed=0)
    if algo == "ppo":
        policy, kwargs = zoo_policy(PPO, zoo=zoo, policy="CnnPolicy", share_features_extractor=share)
        model = PPO(policy, env, policy_kwargs=kwargs, n_steps=16, batch_size=32, n_epochs=1, device="cpu")
        extractors = ["features_extractor"] if share else ["pi_features_extractor", "vf_features_extractor"]
    else:
        policy, kwargs = zoo_policy(DQN, zoo=zoo, policy="CnnPolicy")
        model = DQN(policy, env, policy_kwargs=kwargs, buffer_size=100, learning_starts=16, batch_size=8,
                    device="cpu")
        extractors = ["q_net.features_extractor", "q_net_target.features_extractor"]
    layers = zoo_layers(model.policy)
    for extractor in extractors:
        for k in range(2):
            state = random_nature_state(k)
            for key in ("cnn.0", "cnn.2", "cnn.4", "linear.0"):
                assert torch.equal(layers[f"{extractor}.{key}"].weight[k], state[f"{key}.weight"])
        assert layers[f"{extractor}.linear.0"].gate.weight1.shape[1] == 64  # pooled channels, not 3136 values
    assert layers[head].weight.shape == (2, 3, 512)
    model.learn(32)
    obs = env.reset()
    np.testing.assert_array_equal(export_lite(model).predict(obs, deterministic=True)[0],
                                  model.predict(obs, deterministic=True)[0])


@pytest.mark.parametrize("name", ["ppo-continuous", "sac", "dqn"])
def test_vec_normalize_is_folded_exactly(tmp_path, name):
    """A source trained under VecNormalize, folded: on raw observations it acts and values as the source did on
    normalised ones, its values in raw-return units (a one-source uniform zoo is that source)."""
    algo, env_id, arch, settings = CASES[name]
    venv = VecNormalize(make_vec_env(env_id, n_envs=1, seed=0), gamma=0.9)
    source = algo("MlpPolicy", venv, policy_kwargs=arch, gamma=0.9, device="cpu", **settings).learn(128)
    source.save(tmp_path / "src.zip")
    venv.save(tmp_path / "vecnormalize.pkl")
    stats = read_vec_normalize(tmp_path / "vecnormalize.pkl")
    np.testing.assert_allclose(stats.obs_mean, venv.obs_rms.mean)
    assert stats.ret_var == pytest.approx(float(venv.ret_rms.var)) and stats.norm_reward
    policy, kwargs = zoo_policy(algo, zoo=[tmp_path / "src.zip"], gate="uniform",
                                vec_normalize=[tmp_path / "vecnormalize.pkl"], **arch)
    target = algo(policy, env_id, policy_kwargs=kwargs, device="cpu", **settings)
    raw = observations(name, 32)
    venv.training = False
    normalised = venv.normalize_obs(raw)
    assert np.abs((raw - venv.obs_rms.mean) / np.sqrt(venv.obs_rms.var + venv.epsilon)).max() < venv.clip_obs
    raw, normalised = torch.as_tensor(raw), torch.as_tensor(normalised)
    scale = float(np.sqrt(venv.ret_rms.var + venv.epsilon))
    target.policy.set_training_mode(False)
    source.policy.set_training_mode(False)
    with torch.no_grad():
        if name == "ppo-continuous":
            pairs = [(target.policy.get_distribution(raw).distribution.mean,
                      source.policy.get_distribution(normalised).distribution.mean),
                     (target.policy.predict_values(raw), source.policy.predict_values(normalised) * scale)]
        elif name == "sac":
            actions = torch.rand(32, 1) * 2 - 1
            pairs = [(target.actor.get_action_dist_params(raw)[0], source.actor.get_action_dist_params(normalised)[0])]
            pairs += [(a, b * scale) for a, b in zip(target.critic(raw, actions), source.critic(normalised, actions))]
        else:
            pairs = [(target.q_net(raw), source.q_net(normalised) * scale)]
    for got, want in pairs:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


class _Payload:
    def __reduce__(self):
        return os.system, ("touch /tmp/zoo-rl-should-not-exist",)


def test_vec_normalize_reader_runs_no_code(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"obs_rms": _Payload()}))
    marker = Path("/tmp/zoo-rl-should-not-exist")
    marker.unlink(missing_ok=True)
    with pytest.raises(ValueError, match="no VecNormalize statistics"):
        read_vec_normalize(path)
    assert not marker.exists()


@pytest.mark.parametrize("mode", ["batch", "uniform"])
def test_padded_strided_convolution_of_one_source_is_that_convolution(mode):
    """The Conv2d options a zoo layer takes over from the layer it replaces: stride and zero padding."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, kernel_size=3, stride=(2, 1), padding=(1, 2))
    layer = ZooLayer(conv.weight.detach()[None], conv.bias.detach()[None], mode=mode, normalisation="softmax",
                     stride=conv.stride, padding=conv.padding)
    x = torch.randn(4, 3, 9, 9)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)
    layer.eval()
    with torch.no_grad():  # the merged path
        torch.testing.assert_close(layer(x), conv(x), rtol=1e-5, atol=1e-5)


def test_multi_input_policy(tmp_path):
    """MultiInputPolicy: the NatureCNN of the image key and the MLPs, from PPO sources of the same policy."""
    env = SimpleMultiObsEnv(random_start=True)
    settings = dict(n_steps=32, batch_size=32, n_epochs=1, device="cpu")
    zoo = []
    for seed in range(2):
        PPO("MultiInputPolicy", env, seed=seed, **settings).learn(64).save(tmp_path / f"multi-{seed}.zip")
        zoo.append(tmp_path / f"multi-{seed}.zip")
    policy, kwargs = zoo_policy(PPO, zoo=zoo, policy="MultiInputPolicy")
    model = PPO(policy, env, policy_kwargs=kwargs, seed=0, **settings)
    layers = zoo_layers(model.policy)
    assert "features_extractor.extractors.img.linear.0" in layers and "action_net" in layers
    assert not any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in model.policy.modules())
    state = read_policy_pth(zoo[1])
    for path, layer in layers.items():
        assert torch.equal(layer.weight[1], state[f"{path}.weight"]), path
    model.learn(32)
    obs = {key: np.stack([value] * 4) for key, value in env.reset()[0].items()}
    np.testing.assert_array_equal(export_lite(model).predict(obs, deterministic=True)[0],
                                  model.predict(obs, deterministic=True)[0])
