"""Checks that need a GPU: zoo_rl on CUDA computes what it computes on the CPU.

CI has no GPU, so the test suite never runs these; run this script on a CUDA machine:

    python benchmarks/gpu_check.py            # exits non-zero on the first failed check

1. Every gate mode of :class:`ZooExtractor` gives the same features and parameter gradients
   on CUDA as on the CPU (float32, TF32 off), including the merged eval-mode cache of lite.
2. A PPO and a DQN model with a ZooExtractor train on CUDA with SB3 (buffers, gate EMA and the
   DQN target network stay on the device), save, load on the CPU and act the same there.
3. ``export_lite`` of a CUDA-trained model acts like the lite model, and ``FastCnnPolicy``
   (bf16 is CPU-only; on CUDA it runs float32) trains on CUDA.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from stable_baselines3 import DQN, PPO

from common import SPACE, random_zoo
from envs.atari import make_atari
from zoo_rl import ZooExtractor, export_lite
from zoo_rl.policies import FastCnnPolicy
from zoo_rl.layers import GATE_MODES

ATOL = 1e-4


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name} {detail}", flush=True)
    if not ok:
        raise SystemExit(1)


def features_and_grads(extractor: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    extractor.zero_grad(set_to_none=True)
    out = extractor(x)
    (out.square().mean()).backward()
    grads = {n: p.grad.detach().cpu() for n, p in extractor.named_parameters() if p.grad is not None}
    return out.detach().cpu(), grads


def check_extractor(zoo: list[str], cuda: torch.device) -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (32, *SPACE.shape)).float() / 255.0
    for mode in GATE_MODES:
        cpu_model = ZooExtractor(SPACE, zoo=zoo, gate=mode)
        with torch.no_grad():  # non-trivial alignment and gates
            for layer in cpu_model.layers.values():
                layer.align.add_(0.05 * torch.randn_like(layer.align))
            for p in cpu_model.parameters():
                if p.dim() == 2 and p.shape[0] == len(zoo):
                    p.add_(0.1 * torch.randn_like(p))
        gpu_model = copy.deepcopy(cpu_model).to(cuda)
        want, want_grads = features_and_grads(cpu_model.train(), x)
        got, got_grads = features_and_grads(gpu_model.train(), x.to(cuda))
        diff = (got - want).abs().max().item()
        gdiff = max((got_grads[n] - g).abs().max().item() / (g.abs().max().item() + 1e-12) for n, g in want_grads.items())
        check(f"extractor {mode}: train features", diff <= ATOL, f"max |diff| {diff:.2e}")
        check(f"extractor {mode}: gradients", set(got_grads) == set(want_grads) and gdiff <= 1e-3,
              f"max relative |diff| {gdiff:.2e} over {len(want_grads)} tensors")
        for model in (cpu_model, gpu_model):
            model.eval()
        with torch.no_grad():
            want_eval = cpu_model(x)
            got_eval = gpu_model(x.to(cuda)).cpu()
        diff = (got_eval - want_eval).abs().max().item()
        check(f"extractor {mode}: eval features", diff <= ATOL, f"max |diff| {diff:.2e}")
        buffers = {n: b.device.type for n, b in gpu_model.named_buffers()}
        check(f"extractor {mode}: buffers on the device", set(buffers.values()) <= {cuda.type}, str(sorted(set(buffers.values()))))


def check_sb3(zoo: list[str], cuda: torch.device, tmp: Path) -> None:
    env = make_atari("Pong", n_envs=4, seed=0)
    obs = env.reset()
    kwargs = dict(features_extractor_class=ZooExtractor, features_extractor_kwargs=dict(zoo=zoo, gate="lite"))
    ppo = PPO("CnnPolicy", env, n_steps=64, batch_size=64, n_epochs=2, learning_rate=1e-4, policy_kwargs=kwargs,
              device=cuda, seed=0)
    ppo.learn(512)
    ext = ppo.policy.features_extractor
    updates = [int(layer.running_updates) for layer in ext.layers.values()]
    check("ppo on cuda: lite EMA updated", all(u > 0 for u in updates), f"running_updates {updates}")
    ppo.save(tmp / "ppo.zip")
    cpu = PPO.load(tmp / "ppo.zip", device="cpu")
    a_gpu, _ = ppo.predict(obs, deterministic=True)
    a_cpu, _ = cpu.predict(obs, deterministic=True)
    check("ppo cuda -> save -> load on cpu acts the same", np.array_equal(a_gpu, a_cpu), f"{a_gpu} vs {a_cpu}")
    # Greedy actions on 4 observations can agree by luck: compare the action logits on 64 as well.
    many = np.stack([env.step(np.random.default_rng(i).integers(0, 6, 4))[0] for i in range(16)]).reshape(64, 84, 84, 4)
    batch = torch.as_tensor(many).permute(0, 3, 1, 2).contiguous()
    ppo.policy.set_training_mode(False)
    with torch.no_grad():
        logits_gpu = ppo.policy.get_distribution(batch.to(cuda)).distribution.logits.cpu()
        logits_cpu = cpu.policy.get_distribution(batch).distribution.logits
    diff = (logits_gpu - logits_cpu).abs().max().item()
    check("ppo cuda -> save -> load on cpu: same action logits on 64 observations", diff <= ATOL,
          f"max |diff| {diff:.2e}")
    plain = export_lite(ppo)
    ppo.policy.set_training_mode(False)
    t = torch.as_tensor(obs, device=cuda).permute(0, 3, 1, 2).contiguous()  # the VecTransposeImage SB3 adds
    with torch.no_grad():
        diff = (plain.policy.get_distribution(t).distribution.logits
                - ppo.policy.get_distribution(t).distribution.logits).abs().max().item()
    check("export_lite on cuda matches the lite model", diff <= 1e-4, f"max |logit diff| {diff:.2e}")

    dqn = DQN("CnnPolicy", env, buffer_size=2000, learning_starts=200, target_update_interval=100, train_freq=4,
              batch_size=32, policy_kwargs=kwargs, device=cuda, seed=0)
    dqn.learn(1000)
    target = dqn.q_net_target.features_extractor
    moved = [int(layer.running_updates) for layer in target.layers.values()]
    devices = {p.device.type for p in dqn.q_net_target.parameters()} | {b.device.type for b in target.buffers()}
    check("dqn on cuda: target synced the gate EMA, stays on cuda", all(m > 0 for m in moved) and devices == {cuda.type},
          f"target running_updates {moved}, devices {sorted(devices)}")

    fast = PPO(FastCnnPolicy, env, n_steps=64, batch_size=64, n_epochs=1, policy_kwargs=kwargs, device=cuda, seed=0)
    fast.learn(256)
    fast.policy.set_training_mode(False)
    with torch.no_grad():
        got = fast.policy.extract_features(t)
        want = fast.policy.features_extractor(t.float() / 255.0)
    diff = (got - want).abs().max().item()
    tol = 1e-5 if cuda.type == "cuda" else 0.05 * want.abs().max().item()  # the CPU dry run uses bf16
    check("FastCnnPolicy + ZooExtractor trains on cuda and runs float32 there",
          fast.num_timesteps >= 256 and got.dtype == torch.float32 and diff <= tol, f"max |diff| {diff:.2e}")
    env.close()


def main() -> None:
    device = sys.argv[1] if len(sys.argv) > 1 else "cuda"  # "cpu": a dry run of the script itself
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("No CUDA device: run this on a GPU machine (or `gpu_check.py cpu` for a dry run).")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cuda = torch.device(device)
    name = torch.cuda.get_device_name(cuda) if cuda.type == "cuda" else "cpu (dry run)"
    print(f"torch {torch.__version__}, {name}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        zoo = random_zoo(3, Path(tmp))
        check_extractor(zoo, cuda)
        check_sb3(zoo, cuda, Path(tmp))
    print("all GPU checks passed")


if __name__ == "__main__":
    main()
