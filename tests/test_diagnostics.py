"""One level down: gates, alignment deviation, drift and movement read back from saved runs, by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from stable_baselines3 import PPO

from zoo_rl.diagnostics import effective_sources
from zoo_rl.study.diagnostics import diagnose_study, diagnostics_summary
from zoo_rl.extractor import ZooExtractor
from zoo_rl.sources import load_zoo


def save_run(model, folder, method, zoo, seed=0, **config):
    folder.mkdir(parents=True)
    model.save(folder / "final.zip")
    (folder / "config.json").write_text(json.dumps({"method": method, "seed": seed, "zoo": zoo, **config}))


def zoo_model(env, zoo, gate):
    kwargs = dict(net_arch=[], features_extractor_class=ZooExtractor, features_extractor_kwargs=dict(zoo=zoo, gate=gate))
    return PPO("CnnPolicy", env, seed=0, device="cpu", policy_kwargs=kwargs)


def test_gates_alignment_and_drift_by_hand(zoo_paths, image_env, tmp_path):
    zoo = zoo_paths[:2]
    lite = zoo_model(image_env, zoo, "lite")
    layers = lite.policy.features_extractor.layers
    with torch.no_grad():
        for layer in layers.values():
            layer.running_gates.copy_(torch.tensor([0.25, 0.75]))
        layers["cnn_0"].align[1] += 0.5 * torch.eye(32)  # ||0.5 I|| / ||I|| = 0.5
        layers["linear_0"].weight[0] *= 1.1  # drift 0.1
    save_run(lite, tmp_path / "zoo-lite" / "seed0", "zoo-lite", zoo, extractor_kwargs={"gate": "lite"})

    sample = zoo_model(image_env, zoo, "sample")
    save_run(sample, tmp_path / "zoo" / "seed0", "zoo", zoo, extractor_kwargs={"gate": "sample"})
    pd.DataFrame({"timesteps": [0, 0, 100, 100], "extractor": "features_extractor", "layer": "cnn_0",
                  "source": ["src0", "src1"] * 2, "gate": [0.5, 0.5, 0.9, 0.1]}).to_csv(
        tmp_path / "zoo" / "seed0" / "gates.csv", index=False)

    fine = PPO("CnnPolicy", image_env, seed=0, device="cpu", policy_kwargs=dict(net_arch=[]))
    source = load_zoo([zoo[1]])[0]
    state = {k: v.clone() for k, v in source.state.items()}
    state["cnn.0.weight"] *= 1.2  # drift 0.2 in the first layer, 0 elsewhere
    fine.policy.features_extractor.load_state_dict(state)
    save_run(fine, tmp_path / "finetune-src1" / "seed0", "finetune:src1", zoo)

    scratch = PPO("CnnPolicy", image_env, seed=0, device="cpu", policy_kwargs=dict(net_arch=[]))
    save_run(scratch, tmp_path / "scratch" / "seed0", "scratch", zoo)
    (tmp_path / "uniform" / "seed0").mkdir(parents=True)  # unfinished run: no final.zip

    table = diagnose_study(tmp_path).set_index(["method", "layer", "source"])
    assert set(table.index.get_level_values("method")) == {"zoo-lite", "zoo", "finetune:src1"}
    assert table.loc[("zoo-lite", "cnn.4", "src1"), "gate"] == pytest.approx(0.75)
    assert table.loc[("zoo-lite", "cnn.0", "src1"), "align_dev"] == pytest.approx(0.5, rel=1e-5)
    assert table.loc[("zoo-lite", "cnn.0", "src0"), "align_dev"] == pytest.approx(0.0, abs=1e-7)
    assert table.loc[("zoo-lite", "linear.0", "src0"), "drift"] == pytest.approx(0.1, rel=1e-4)
    assert table.loc[("zoo-lite", "linear.0", "src1"), "drift"] == pytest.approx(0.0, abs=1e-7)
    assert table.loc[("zoo", "cnn.0", "src0"), "gate"] == pytest.approx(0.9)  # last logged batch mean
    assert math.isnan(table.loc[("zoo", "cnn.2", "src0"), "gate"])  # never logged
    assert table.loc[("finetune:src1", "cnn.0", "src1"), "drift"] == pytest.approx(0.2, rel=1e-4)
    assert table.loc[("finetune:src1", "linear.0", "src1"), "drift"] == pytest.approx(0.0, abs=1e-7)

    # moved: the merged layer against its start (K = 2: both 0.5 whatever the normalisation), by hand.
    w = {layer: [s.state[f"{layer}.weight"] for s in load_zoo(zoo)] for layer in ("cnn.0", "cnn.2", "linear.0")}
    by_hand = {"cnn.0": -0.25 * w["cnn.0"][0] + (0.75 * 1.5 - 0.5) * w["cnn.0"][1],  # A_1 = 1.5 I
               "cnn.2": -0.25 * w["cnn.2"][0] + 0.25 * w["cnn.2"][1],
               "linear.0": (0.25 * 1.1 - 0.5) * w["linear.0"][0] + 0.25 * w["linear.0"][1]}  # W_0 x 1.1
    for layer, delta in by_hand.items():
        for source in ("src0", "src1"):  # one value per layer, on each source's row
            assert table.loc[("zoo-lite", layer, source), "moved"] == pytest.approx(float(delta.norm()), rel=1e-4)
    assert table.loc[("finetune:src1", "cnn.0", "src1"), "moved"] == pytest.approx(0.2 * float(w["cnn.0"][1].norm()), rel=1e-4)
    assert table.loc[("finetune:src1", "cnn.2", "src1"), "moved"] == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(table.loc[("zoo", "cnn.0", "src0"), "moved"])  # input-dependent gates: no one layer

    summary = diagnostics_summary(diagnose_study(tmp_path)).set_index(["method", "layer"])
    assert summary.loc[("zoo-lite", "cnn.2"), "moved"] == pytest.approx(float(by_hand["cnn.2"].norm()), rel=1e-4)
    assert summary.loc[("zoo-lite", "cnn.0"), "top_source"] == "src1"
    assert summary.loc[("zoo-lite", "cnn.0"), "effective_sources"] == pytest.approx(effective_sources([0.25, 0.75]))
    assert summary.loc[("zoo", "cnn.0"), "top_source"] == "src0"
    assert summary.loc[("zoo", "cnn.2"), "top_source"] is None and math.isnan(summary.loc[("zoo", "cnn.2"), "effective_sources"])


def test_moved_starts_from_the_gates_of_the_trained_normalisation(zoo_paths, image_env, tmp_path):
    """K = 3 untouched sources with every gate at 0.5: the start of sigmoid gates (moved 0), but 1/3 above
    the start of softmax gates (moved = ||(0.5 - 1/3) sum_k W_k||)."""
    zoo = zoo_paths
    lite = zoo_model(image_env, zoo, "lite")
    with torch.no_grad():
        for layer in lite.policy.features_extractor.layers.values():
            layer.running_gates.fill_(0.5)
    for normalisation in ("sigmoid", "softmax"):
        save_run(lite, tmp_path / normalisation / "zoo-lite" / "seed0", "zoo-lite", zoo,
                 extractor_kwargs={"gate": "lite", "normalisation": normalisation})
    total = sum(s.state["linear.0.weight"] for s in load_zoo(zoo))
    sigmoid = diagnose_study(tmp_path / "sigmoid").set_index(["layer", "source"])
    softmax = diagnose_study(tmp_path / "softmax").set_index(["layer", "source"])
    assert (sigmoid["moved"].abs() < 1e-5).all()
    assert softmax.loc[("linear.0", "src0"), "moved"] == pytest.approx(float(((0.5 - 1 / 3) * total).norm()), rel=1e-4)


def test_moved_of_a_ranked_start_starts_from_its_start_gates(zoo_paths, image_env, tmp_path):
    """A ranked start that never trained has moved 0 from the network it started as (its ``init_gates``), not
    from the equal-gate network of its normalisation; a run that records no extractor_kwargs is refused."""
    zoo = zoo_paths
    start = [0.98, 0.01, 0.01]
    lite = zoo_model(image_env, zoo, "lite")
    with torch.no_grad():
        for layer in lite.policy.features_extractor.layers.values():
            layer.running_gates.copy_(torch.tensor(start))
    save_run(lite, tmp_path / "zoo-lite-ranked" / "seed0", "zoo-lite:ranked", zoo,
             extractor_kwargs={"gate": "lite", "normalisation": "sigmoid", "init_gates": start})
    assert (diagnose_study(tmp_path)["moved"].abs() < 1e-4).all()
    save_run(lite, tmp_path / "old" / "zoo-lite" / "seed0", "zoo-lite", zoo)
    with pytest.raises(ValueError, match="records no extractor_kwargs.*delete"):
        diagnose_study(tmp_path / "old")


def test_effective_sources():
    assert effective_sources(np.full(5, 0.2)) == pytest.approx(5.0)
    assert effective_sources([0.0, 1.0, 0.0]) == pytest.approx(1.0)
    assert 1.0 < effective_sources([0.25, 0.75]) < 2.0
    assert math.isnan(effective_sources([0.5, float("nan")]))


def write_sources(root, states):
    from zoo_rl.sources import write_compact

    paths = []
    for i, state in enumerate(states):
        write_compact(root / f"s{i}", state, {}, {"name": f"s{i}"})
        paths.append(str(root / f"s{i}"))
    return paths


def test_feature_scale_of_equal_gates_by_hand(tmp_path):
    """Copies of one source: the softmax average is that source exactly, and the paper's sigmoid gates
    (0.5 each) sum two copies back to it too; four copies double every weight and bias."""
    from conftest import random_nature_state
    from zoo_rl.diagnostics import feature_scale

    state = random_nature_state(0)
    x = torch.rand(6, 4, 84, 84)
    two = feature_scale(write_sources(tmp_path / "two", [state, state]), x, ("softmax", "sigmoid"))
    rms = two.pivot(index="network", columns="layer", values="rms")
    for network in ("zoo softmax", "zoo sigmoid"):
        assert np.allclose(rms.loc[network], rms.loc["s0"], rtol=1e-5)
    four = feature_scale(write_sources(tmp_path / "four", [state] * 4), x, ("sigmoid",))
    rms4 = four.pivot(index="network", columns="layer", values="rms")
    # ReLU is positively homogeneous: layer 1 doubles exactly; later layers more than double.
    assert rms4.loc["zoo sigmoid", "cnn.0"] == pytest.approx(2 * rms4.loc["s0", "cnn.0"], rel=1e-5)
    assert (rms4.loc["zoo sigmoid"] > 2 * rms4.loc["s0"] * (1 - 1e-5)).all()


def test_averaging_unrelated_sources_shrinks_the_features(tmp_path):
    """Eight independent random networks: their average's last layer is about 0.15x the sources' mean
    (the first layer 0.3x, about 1/sqrt(8): uncorrelated weights add in quadrature); the default (the
    paper's sigmoid gates, weights 0.5 each) is about 3x: larger, but no collapse."""
    from conftest import random_nature_state
    from zoo_rl.diagnostics import feature_scale
    from zoo_rl.layers import DEFAULT_NORMALISATION

    paths = write_sources(tmp_path, [random_nature_state(seed) for seed in range(8)])
    table = feature_scale(paths, torch.rand(6, 4, 84, 84), ("softmax", DEFAULT_NORMALISATION))
    last = table[table["layer"] == "linear.0"].set_index("network")["rms"]
    sources = last[[f"s{k}" for k in range(8)]]
    assert last["zoo softmax"] < 0.25 * sources.mean()
    assert 0.5 * sources.mean() < last[f"zoo {DEFAULT_NORMALISATION}"] < 8 * sources.mean()


def test_a_sum_of_sources_below_zero_falls_silent(tmp_path):
    """Eight random sources whose first layer sits below zero (its pre-activation's mean at -0.7 of its spread,
    as trained sources' do): the sigmoid half-sum's first pre-activation is exactly half the sum of theirs, its
    mean adds in step while the spread adds in quadrature, so its mean-to-spread ratio is about sqrt(8) times
    theirs and far fewer of its units fire than any source's."""
    import torch.nn.functional as F

    from conftest import random_nature_state
    from zoo_rl.diagnostics import feature_scale

    x = torch.rand(6, 4, 84, 84)
    states = []
    for seed in range(8):
        state = random_nature_state(seed)
        pre = F.conv2d(x, state["cnn.0.weight"], state["cnn.0.bias"], stride=4)
        state["cnn.0.bias"] = state["cnn.0.bias"] - (pre.mean() + 0.7 * pre.std())
        states.append(state)
    table = feature_scale(write_sources(tmp_path, states), x, ("sigmoid",))
    first = table[table["layer"] == "cnn.0"].set_index("network")
    sources, merged = first.loc[[f"s{k}" for k in range(8)]], first.loc["zoo sigmoid"]
    assert merged["pre_mean"] == pytest.approx(0.5 * sources["pre_mean"].sum(), rel=1e-4)
    assert np.allclose(sources["pre_mean"] / sources["pre_std"], -0.7, atol=1e-3)
    # the spread adds in quadrature (in step it would be sqrt(8) times larger), so the ratio grows by sqrt(8)
    assert merged["pre_std"] == pytest.approx(0.5 * np.sqrt((sources["pre_std"] ** 2).sum()), rel=0.1)
    assert merged["pre_mean"] / merged["pre_std"] == pytest.approx(-0.7 * np.sqrt(8), rel=0.1)
    assert merged["active"] < 0.5 * sources["active"].min()
    assert ((table["active"] >= 0) & (table["active"] <= 1)).all()


def test_feature_scale_cli_rejects_unknown_normalisations(capsys, monkeypatch):
    import sys

    import feature_scale as cli

    monkeypatch.setattr(sys, "argv", ["feature_scale.py", "--target", "Pong", "--normalisations", "softmax,bogus"])
    with pytest.raises(SystemExit):
        cli.main()
    assert "unknown normalisations ['bogus']" in capsys.readouterr().err


def test_whole_policy_layers_by_hand(tmp_path):
    """A whole-policy study's zoo layers (every Linear of the policy), K = 3, read back without training: uniform gates
    start at 1/3 whatever normalisation the zoo policy records, lite gates at sigmoid(0) = 0.5; one bank scaled by
    1.1 drifts 0.1 and moves the merged layer by 0.05 of that source's weight; scratch and multipolar give no rows."""
    from dataclasses import asdict

    from envs.tasks import make_env, resolve
    from zoo_rl.sources import write_compact
    from zoo_rl.zoo_policies import zoo_layers, zoo_policy

    task = resolve("classic:pendulum+g=12")
    env = make_env(task, 1)
    zoo = []
    for k in range(3):
        source = PPO("MlpPolicy", env, seed=k, device="cpu", policy_kwargs=dict(net_arch=[8]))
        write_compact(tmp_path / "zoo" / f"src{k}", {}, source.policy.state_dict(), {"name": f"src{k}"})
        zoo.append(str(tmp_path / "zoo" / f"src{k}"))
    original = {k: torch.load(tmp_path / "zoo" / f"src{k}" / "weights.pt", weights_only=True) for k in range(3)}
    record = dict(task=asdict(task))
    for method, gate in (("uniform", "uniform"), ("zoo-lite", "lite")):
        policy, kwargs = zoo_policy(PPO, zoo=zoo, gate=gate, normalisation="sigmoid", net_arch=[8])
        model = PPO(policy, env, seed=0, device="cpu", policy_kwargs=kwargs)
        if method == "zoo-lite":
            with torch.no_grad():
                model.policy.action_net.weight[2] *= 1.1
        save_run(model, tmp_path / "study" / method / "seed0", method, zoo, **record,
                 extractor_kwargs={"gate": gate, "normalisation": "sigmoid", "init_gates": None})
        layers = list(zoo_layers(model.policy))
    scratch = PPO("MlpPolicy", env, seed=0, device="cpu", policy_kwargs=dict(net_arch=[8]))
    save_run(scratch, tmp_path / "study" / "scratch" / "seed0", "scratch", zoo, **record)
    env.close()

    table = diagnose_study(tmp_path / "study").set_index(["method", "layer", "source"])
    assert set(table.index.get_level_values("method")) == {"uniform", "zoo-lite"}
    assert sorted(layers) == ["action_net", "mlp_extractor.policy_net.0", "mlp_extractor.value_net.0", "value_net"]
    for method in ("uniform", "zoo-lite"):
        rows = table.loc[method]
        assert sorted(rows.index) == sorted((p, f"src{k}") for p in layers for k in range(3))
        assert np.allclose(rows["gate"], 1 / 3 if method == "uniform" else 0.5)
        assert (rows["align_dev"].abs() < 1e-7).all()
    untouched = table.drop(index=[("zoo-lite", "action_net", s) for s in ("src0", "src1", "src2")])
    assert (untouched["drift"].abs() < 1e-7).all() and (untouched["moved"].abs() < 1e-5).all()
    assert table.loc[("zoo-lite", "action_net", "src2"), "drift"] == pytest.approx(0.1, rel=1e-4)
    assert table.loc[("zoo-lite", "action_net", "src1"), "drift"] == pytest.approx(0.0, abs=1e-7)
    moved = float((0.5 * 0.1 * original[2]["head.action_net.weight"]).norm())
    assert table.loc[("zoo-lite", "action_net", "src0"), "moved"] == pytest.approx(moved, rel=1e-4)


def test_weight_agreement_of_copies_opposites_and_strangers(tmp_path):
    """A copy has cosine 1, a negated copy -1, and independent random networks are near 0 in every layer."""
    from conftest import random_nature_state
    from zoo_rl.diagnostics import weight_agreement

    state = random_nature_state(0)
    negated = {k: -v for k, v in state.items()}
    table = weight_agreement(write_sources(tmp_path / "a", [state, state, negated])).set_index("layer")
    assert (table["pairs"] == 3).all()
    assert np.allclose(table["cosine_max"], 1, atol=1e-5) and np.allclose(table["cosine_min"], -1, atol=1e-5)
    strangers = weight_agreement(write_sources(tmp_path / "b", [random_nature_state(s) for s in range(3)]))
    assert (strangers[["cosine_min", "cosine_max"]].abs() < 0.1).all().all()
