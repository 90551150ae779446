"""ZooLayer and ZooExtractor invariants: one-hot gates, single-source zoos, uniform, lite."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from stable_baselines3.common.torch_layers import NatureCNN

from conftest import OBS_SPACE_CHW, obs_batch, random_nature_state
from zoo_rl.extractor import ZooExtractor
from zoo_rl.layers import GATE_MODES, SourceGate, ZooLayer, ranked_gates
from zoo_rl.sources import LAYERS, load_source


def nature(state) -> NatureCNN:
    net = NatureCNN(OBS_SPACE_CHW)
    net.load_state_dict(state)
    return net.eval()


def one_hot_extractor(zoo_paths, k):
    """An extractor whose every gate selects source k (sample mode, identity alignment)."""
    ext = ZooExtractor(OBS_SPACE_CHW, zoo=zoo_paths, gate="sample")
    with torch.no_grad():
        for layer in ext.layers.values():
            layer.gate.weight2.zero_()
            layer.gate.bias2.fill_(-1e4)
            layer.gate.bias2[k] = 1e4
    return ext.eval()


@pytest.mark.parametrize("k", [0, 2])
def test_one_hot_gate_reproduces_source_exactly(zoo_paths, k):
    x = obs_batch()
    expected = nature(random_nature_state(k))(x)
    got = one_hot_extractor(zoo_paths, k)(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", GATE_MODES)
@pytest.mark.parametrize("normalisation", ["softmax", "sigmoid-sum"])
def test_zoo_of_one_source_is_that_source(zoo_paths, mode, normalisation):
    ext = ZooExtractor(OBS_SPACE_CHW, zoo=zoo_paths[:1], gate=mode, normalisation=normalisation)
    x = obs_batch()
    expected = nature(random_nature_state(0))(x)
    for training in (True, False):
        ext.train(training)
        torch.testing.assert_close(ext(x), expected, rtol=1e-5, atol=1e-5)


def test_uniform_equals_averaged_weights(zoo_paths):
    ext = ZooExtractor(OBS_SPACE_CHW, zoo=zoo_paths, gate="uniform")
    states = [random_nature_state(k) for k in range(3)]
    averaged = {key: sum(s[key] for s in states) / 3 for key in states[0]}
    x = obs_batch()
    torch.testing.assert_close(ext(x), nature(averaged)(x), rtol=1e-5, atol=1e-5)


def test_sigmoid_gates_inflate_the_output_scale(zoo_paths):
    """What the default (sigmoid) gates cost for *correlated* sources: K copies of one network are
    scaled by K/2 in every layer (no batch norm); unrelated sources are not (test_diagnostics.py)."""
    x = obs_batch(32)
    first, final = {}, {}
    for norm in ("sigmoid", "softmax"):
        ext = ZooExtractor(OBS_SPACE_CHW, zoo=zoo_paths, gate="batch", normalisation=norm)
        first[norm] = ext.layers["cnn_0"](x)
        final[norm] = ext(x).norm().item()
    torch.testing.assert_close(first["sigmoid"], 1.5 * first["softmax"])  # K/2 = 1.5 with K = 3
    assert final["sigmoid"] > 1.5 * final["softmax"]  # and it compounds through the layers


def test_every_gate_starts_equal():
    gate = SourceGate(16, 4, "sigmoid-sum")
    values = gate(torch.randn(5, 16, 3, 3))
    torch.testing.assert_close(values, torch.full((5, 4), 0.25))


def lite_layer(seed=0, momentum=0.1):
    g = torch.Generator().manual_seed(seed)
    layer = ZooLayer(torch.randn(3, 6, 8, generator=g), torch.randn(3, 6, generator=g), mode="lite",
                     lite_momentum=momentum)
    with torch.no_grad():
        layer.gate.weight2.normal_(generator=g)
    return layer


def test_lite_moving_average_starts_from_first_batch_and_updates():
    layer = lite_layer()
    x1, x2 = torch.randn(4, 8), torch.randn(4, 8) + 3
    first = layer.gate(x1).mean(0).detach()
    layer.train()
    layer(x1)
    # started from the first batch mean, then one update towards it again: still that mean
    torch.testing.assert_close(layer.running_gates, first)
    second = layer.gate(x2).mean(0).detach()
    layer(x2)
    torch.testing.assert_close(layer.running_gates, 0.9 * first + 0.1 * second)


def test_lite_uses_the_same_gates_in_train_and_eval():
    """Rollouts (eval) and PPO updates (train) see one network: the first ratio is exactly 1."""
    layer = lite_layer()
    x = torch.randn(4, 8)
    layer.train()
    layer(torch.randn(4, 8))  # initialise the average
    layer.eval()
    out_eval = layer(x)
    layer.train()
    out_train = layer(x)
    torch.testing.assert_close(out_train, out_eval, rtol=0, atol=0)


def test_lite_gate_network_gets_gradients():
    layer = lite_layer()
    layer.train()
    layer(torch.randn(4, 8)).square().sum().backward()
    assert layer.gate.weight2.grad is not None and layer.gate.weight2.grad.abs().sum() > 0


def test_lite_eval_does_not_move_the_average():
    layer = lite_layer()
    layer.train()
    layer(torch.randn(4, 8))
    before = layer.running_gates.clone()
    layer.eval()
    layer(torch.randn(4, 8) + 5)
    torch.testing.assert_close(layer.running_gates, before)


@pytest.mark.parametrize("mode", ["lite", "uniform"])
def test_merged_layer_equals_layer_in_eval(mode):
    layer = lite_layer() if mode == "lite" else ZooLayer(torch.randn(3, 6, 8), torch.randn(3, 6), mode="uniform")
    with torch.no_grad():
        if layer.align is not None:
            layer.align.add_(0.1 * torch.randn_like(layer.align))
    layer.train()
    layer(torch.randn(4, 8))
    layer.eval()
    x = torch.randn(4, 8)
    w, b = layer.merged()
    torch.testing.assert_close(layer(x), x @ w.t() + b, rtol=1e-5, atol=1e-5)


def test_sample_mode_cannot_merge():
    layer = ZooLayer(torch.randn(3, 6, 8), torch.randn(3, 6), mode="sample")
    with pytest.raises(ValueError, match="mode='lite'"):
        layer.merged()


@pytest.mark.parametrize("kwargs, match", [
    (dict(gate="average"), "Unknown gate mode 'average'"),
    (dict(normalisation="relu"), "Unknown gate normalisation 'relu'"),
    (dict(zoo=[]), "non-empty list"),
    (dict(zoo="agents/zoo/pong"), "non-empty list"),
])
def test_bad_extractor_arguments(zoo_paths, kwargs, match):
    args = dict(zoo=zoo_paths) | kwargs
    with pytest.raises(ValueError, match=match):
        ZooExtractor(OBS_SPACE_CHW, **args)


def test_alignment_options(zoo_paths):
    def aligned(**kwargs):
        ext = ZooExtractor(OBS_SPACE_CHW, zoo=zoo_paths, **kwargs)
        return [name for name, layer in ext.layers.items() if layer.align is not None]

    assert aligned() == ["cnn_0", "cnn_2", "cnn_4", "linear_0"]
    assert aligned(align="conv") == ["cnn_0", "cnn_2", "cnn_4"]
    assert aligned(align=False) == []
    with pytest.raises(ValueError, match="align must be"):
        aligned(align="linear")


def test_bank_holds_every_source(zoo_paths):
    ext = ZooExtractor(OBS_SPACE_CHW, zoo=zoo_paths)
    for k, path in enumerate(zoo_paths):
        src = load_source(path)
        for name, key in zip(ext.layers, LAYERS):
            assert torch.equal(ext.layers[name].weight[k], src.state[f"{key}.weight"])
            assert torch.equal(ext.layers[name].bias[k], src.state[f"{key}.bias"])


OPTIMIZERS = {"sgd": lambda params: torch.optim.SGD(params, lr=0.1),
              "adam": lambda params: torch.optim.Adam(params, lr=1e-2, foreach=True),
              # fused steps bump no version counter (FastCnnPolicy's default Adam): the cache cannot key on them alone
              "fused adam": lambda params: torch.optim.Adam(params, lr=1e-2, fused=True)}


@pytest.mark.parametrize("optimizer_name", OPTIMIZERS)
@pytest.mark.parametrize("mode", ["lite", "uniform"])
def test_inference_uses_a_merged_layer_that_follows_updates(zoo_paths, mode, optimizer_name):
    ext = ZooExtractor(OBS_SPACE_CHW, zoo=zoo_paths, gate=mode)
    optimizer = OPTIMIZERS[optimizer_name](ext.parameters())
    x = obs_batch(4)
    ext.train()
    ext(x).square().mean().backward()
    optimizer.step()
    ext.eval()
    with torch.enable_grad():
        reference = ext(x).detach()  # gradient enabled: the aggregate path
    with torch.no_grad():
        merged = ext(x)
    torch.testing.assert_close(merged, reference, rtol=1e-5, atol=1e-5)
    layer = ext.layers["cnn_0"]
    assert layer._merged_cache is not None
    ext.train()
    ext(x).square().mean().backward()
    optimizer.step()  # in-place update: the cache must not serve stale weights
    ext.eval()
    with torch.no_grad():
        acting = ext(x)  # served before any forward with gradients could rebuild it
    with torch.enable_grad():
        reference = ext(x).detach()
    torch.testing.assert_close(acting, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["lite", "uniform"])
def test_a_target_network_updated_through_data_is_never_served_stale(mode):
    """SB3 updates target networks with polyak_update, in place through ``.data``, which bumps no version counter:
    a layer without gradients (no optimizer trains it) must aggregate at every call, not serve a cached merge."""
    torch.manual_seed(0)
    online = ZooLayer(torch.randn(3, 8, 5), torch.randn(3, 8), mode=mode)
    target = ZooLayer(torch.randn(3, 8, 5), torch.randn(3, 8), mode=mode)
    x = torch.randn(4, 5)
    online(x).square().mean().backward()  # the online layer's first batch (and its gradients)
    target.load_state_dict(online.state_dict())
    target.eval()
    with torch.no_grad():
        before = target(x)
        for p, q in zip(online.parameters(), target.parameters()):  # SB3's polyak_update, tau = 0.5
            q.data.mul_(0.5)
            torch.add(q.data, p.data * 2.0, alpha=0.5, out=q.data)
        after = target(x)
        weight, bias = target.merged()
    torch.testing.assert_close(after, F.linear(x, weight, bias))
    assert not torch.allclose(after, before) and target._merged_cache is None


def test_merged_cache_built_under_bf16_autocast_serves_float32_calls(zoo_paths):
    """FastCnnPolicy's rollouts merge under bf16 autocast; a later float32 call (e.g. an
    evaluation without FastCnnPolicy) must get the float32 merge, not a bf16 cache (found by
    benchmarks/gpu_check.py's CPU dry run: "Input type (float) and bias type (BFloat16)")."""
    ext = ZooExtractor(OBS_SPACE_CHW, zoo=zoo_paths, gate="uniform")
    x = obs_batch(4)
    ext(x).sum().backward()  # a network an optimizer trains (gradients on its banks): the cached kind
    ext.eval()
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = ext(x)
        high = ext(x)
    assert ext.layers["cnn_0"]._merged_cache[1].dtype == torch.float32
    assert high.dtype == torch.float32
    with torch.enable_grad():
        reference = ext(x).detach()
    torch.testing.assert_close(high, reference, rtol=1e-5, atol=1e-5)
    assert (low.float() - reference).abs().max() < 0.05 * reference.abs().max()


@pytest.mark.parametrize("normalisation, total", [("sigmoid", 5 * 0.5), ("softmax", 1.0)])
def test_adam_moves_the_merged_layer_by_the_gate_sum(normalisation, total):
    """Why zoo-lite with sigmoid gates learns faster than a fine-tune at the same Adam rate: each bank's
    gradient is g_k times the merged layer's, Adam's step ignores that scale, so every bank takes the step a
    plain layer would take, and the merged layer moves sum_k g_k times as far (2.5x for K = 5 sigmoid gates
    at 0.5; 1x for softmax). Exact on Adam's first step, whose size is the learning rate for every entry."""
    torch.manual_seed(0)
    k, o, i = 5, 6, 7
    layer = ZooLayer(torch.randn(k, o, i), torch.randn(k, o), mode="lite", normalisation=normalisation,
                     align=False)
    x, target = torch.randn(16, i), torch.randn(16, o)
    layer.train()
    layer(x)  # the first forward sets the moving average of the gates
    before, _ = layer.merged()
    plain = torch.nn.Linear(i, o)
    with torch.no_grad():
        plain.weight.copy_(before)
        plain.bias.copy_(layer.merged()[1])
    for module in (layer, plain):
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
        ((module(x) - target) ** 2).mean().backward()
        optimizer.step()
    after, _ = layer.merged()
    assert layer.running_gates.sum().item() == pytest.approx(total)
    torch.testing.assert_close(after - before, total * (plain.weight.detach() - before), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", GATE_MODES)
@pytest.mark.parametrize("align", [True, "conv", False])
def test_in_place_relu_gives_the_same_features_and_gradients(zoo_paths, mode, align):
    """ZooExtractor applies its ReLUs in place; each layer's output is fresh, so nothing else changes:
    the same features and gradients as out-of-place ReLUs over the same layers, in train and eval mode."""
    torch.manual_seed(0)
    ext = ZooExtractor(OBS_SPACE_CHW, zoo=zoo_paths, gate=mode, align=align)
    for layer in ext.layers.values():  # gates and alignments away from their start
        for name, p in layer.named_parameters():
            if name != "weight":
                p.data.add_(0.05 * torch.randn_like(p))
    x = obs_batch(6)

    def reference(ext, x):
        for layer in ext.layers.values():
            x = torch.relu(layer(x))
        return x

    start = {k: v.clone() for k, v in ext.state_dict().items()}  # lite moves its average at each forward
    grads = []
    for forward in (ext, lambda x: reference(ext, x)):
        ext.load_state_dict(start)
        ext.zero_grad()
        features = forward(x)
        features.square().sum().backward()
        grads.append((features.detach(), [p.grad.clone() for p in ext.parameters() if p.grad is not None]))
    (f1, g1), (f2, g2) = grads
    torch.testing.assert_close(f1, f2, rtol=0, atol=0)
    assert len(g1) == len(g2) > 0
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    ext.eval()
    with torch.no_grad():
        torch.testing.assert_close(ext(x), reference(ext, x), rtol=0, atol=0)


@pytest.mark.parametrize("normalisation", ["sigmoid", "softmax", "sigmoid-sum"])
def test_init_gates_are_the_start_gates_in_every_mode_and_in_the_merge(normalisation):
    torch.manual_seed(0)
    weights, biases = torch.randn(4, 6, 3, 3, 3), torch.randn(4, 6)
    start = ranked_gates(4, [2, 0, 1, 3], top=1, weight=0.97)
    assert start == pytest.approx([0.01, 0.01, 0.97, 0.01])
    x = torch.randn(5, 3, 8, 8)
    for mode in ("sample", "batch", "lite"):
        layer = ZooLayer(weights, biases, mode=mode, normalisation=normalisation, init_gates=start)
        torch.testing.assert_close(layer.gates(x).reshape(-1, 4), torch.tensor([start] * (5 if mode == "sample" else 1)))
    # Before any batch, the lite layer's merged network is already the start's (export_lite at step 0).
    lite = ZooLayer(weights, biases, mode="lite", normalisation=normalisation, init_gates=start)
    weight, _ = lite.merged()
    torch.testing.assert_close(weight, torch.einsum("k,koihw->oihw", torch.tensor(start), weights))


def test_ranked_gates_top_k_and_bad_start_values():
    assert ranked_gates(5, [3, 1, 0, 2, 4], top=2, weight=0.9) == pytest.approx([0.1 / 3, 0.45, 0.1 / 3, 0.45, 0.1 / 3])
    assert ranked_gates(3, [1, 0, 2], top=3) == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError, match="top"):
        ranked_gates(3, [0, 1, 2], top=4)
    with pytest.raises(ValueError, match="weight"):
        ranked_gates(3, [0, 1, 2], weight=1.0)
    weights, biases = torch.randn(3, 4, 5), torch.randn(3, 4)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        ZooLayer(weights, biases, init_gates=[1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="sum to 1"):
        ZooLayer(weights, biases, normalisation="softmax", init_gates=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="one value per source"):
        ZooLayer(weights, biases, init_gates=[0.5, 0.5])
    with pytest.raises(ValueError, match="uniform"):
        ZooLayer(weights, biases, mode="uniform", init_gates=[0.2, 0.3, 0.5])
