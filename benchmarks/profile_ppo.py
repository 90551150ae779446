"""Where one PPO iteration's time goes: collecting the rollout vs the update, and each minibatch's pieces.

Builds the project pipeline (ale-py's vector env through ``envs.make_atari`` + ``FastCnnPolicy`` +
channels-last rollout buffer, RL Zoo Atari PPO settings) or SB3's plain ``CnnPolicy`` (``--plain``; add
``--backend gym`` for SB3's own environment pipeline), warms up one iteration, then times
``collect_rollouts`` and ``train`` over ``--iterations`` iterations (1024 agent steps each), counts the
floating-point operations of one more iteration (torch's FLOP counter: matmuls and convolutions, forward and
backward) to report the rates achieved in the timed ones next to the machine's best matmul, and finally
replays two epochs of minibatches by hand, timing the forward pass (``evaluate_actions`` and a PPO-shaped
loss: policy-gradient, value and entropy terms without the ratio clipping, whose cost is negligible), the
backward pass, gradient clipping and the optimizer step separately.

    python benchmarks/profile_ppo.py            # FastCnnPolicy, Pong
    python benchmarks/profile_ppo.py --plain --backend gym   # plain SB3, for comparison
    python benchmarks/profile_ppo.py --variant zoo-lite --ops  # a Zoo-Tuning extractor (K=5 random sources),
                                                                 # plus the top operators of its minibatches
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.flop_counter import conv_backward_flop as torch_conv_backward_flop

from common import PPO_ATARI


def conv_backward_flop(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
                       output_padding, groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of a convolution's backward pass, grouped convolutions included (torch's own formula ignores
    ``groups`` and counts zoo-sample's per-sample convolutions thousands of times over): each gradient asked
    for (input, weight) costs one forward, 2 x output elements x weight elements per output channel."""
    if transposed:
        return torch_conv_backward_flop(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation,
                                        transposed, output_padding, groups, output_mask, out_shape)
    forward = 2 * math.prod(grad_out_shape) * math.prod(w_shape[1:])
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def best_matmul_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """The fastest this machine multiplies two ``size`` x ``size`` matrices, in GFLOP/s (best of ``repeats``):
    a practical ceiling for any network's arithmetic at that precision."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--game", default="Pong")
    parser.add_argument("--plain", action="store_true", help="SB3's CnnPolicy in float32 instead of FastCnnPolicy")
    parser.add_argument("--iterations", type=int, default=4, help="timed PPO iterations of 1024 steps")
    parser.add_argument("--backend", choices=["ale", "gym"], default="ale",
                        help="Atari environments: ale-py's vector env (default, the project's) or the gym wrappers")
    parser.add_argument("--variant", default=None,
                        help="a bench_throughput.py variant instead (e.g. zoo-lite, zoo-sample, zoo-lite:align-conv, ensemble)")
    parser.add_argument("--sources", type=int, default=5, help="K for --variant zoo-*/ensemble")
    parser.add_argument("--ops", action="store_true", help="also print the top operators of the replayed minibatches")
    args = parser.parse_args()

    from stable_baselines3 import PPO

    from envs import make_atari
    from zoo_rl.policies import FastCnnPolicy, algo_kwargs
    from zoo_rl.machine import reuse_freed_memory

    if not args.plain:  # as the project's training runs do (ZOO_RL_MALLOC=0: glibc's default settings)
        reuse_freed_memory()

    if args.variant:
        import tempfile

        import bench_throughput
        from common import random_zoo

        if not bench_throughput.known_variant(args.variant) or args.variant == "sb3":
            parser.error(f"--variant {args.variant!r}: use a bench_throughput.py variant other than sb3 "
                         f"({', '.join(bench_throughput.VARIANTS[1:])}, or zoo-<mode>:<options>)")
        zoo = random_zoo(args.sources, Path(tempfile.mkdtemp()))
        model = bench_throughput.build(args.variant, args.game, zoo)
        label = args.variant
    else:
        env = make_atari(args.game, n_envs=8, seed=0, backend=args.backend)
        policy = "CnnPolicy" if args.plain else FastCnnPolicy
        model = PPO(policy, env, seed=0, policy_kwargs=dict(net_arch=[]), **PPO_ATARI, **algo_kwargs(policy))
        label = "CnnPolicy fp32" if args.plain else "FastCnnPolicy"
    model.learn(1024)  # warm-up
    from zoo_rl.machine import extractor_precision, machine_line

    print(machine_line(model))

    spent = {"collect": 0.0, "train": 0.0}
    collect, train = model.collect_rollouts, model.train

    def timed(name, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            out = fn(*a, **k)
            spent[name] += time.perf_counter() - start
            return out
        return wrapper

    model.collect_rollouts, model.train = timed("collect", collect), timed("train", train)
    start = time.perf_counter()
    model.learn(1024 * args.iterations, reset_num_timesteps=False)
    total = time.perf_counter() - start
    n = args.iterations
    print(f"{label} on {args.game}, per 1024 steps: "
          f"{total / n:.3f} s = collect {spent['collect'] / n:.3f} s + update {spent['train'] / n:.3f} s "
          f"-> {1024 * n / total:.0f} steps/s")

    # The arithmetic behind those seconds: one more iteration under torch's FLOP counter (matmuls and
    # convolutions, forward and backward; elementwise work is not counted), over the times measured above.
    flops: dict[str, int] = {}

    mapping = {torch.ops.aten.convolution_backward: conv_backward_flop}

    def counted(name, fn):
        def wrapper(*a, **k):
            with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
                out = fn(*a, **k)
            flops[name] = counter.get_total_flops()
            return out
        return wrapper

    model.collect_rollouts, model.train = counted("collect", collect), counted("train", train)
    model.learn(1024, reset_num_timesteps=False)
    model.collect_rollouts, model.train = collect, train
    print("GFLOP per 1024 steps (matmuls and convolutions): "
          f"collect {flops['collect'] / 1e9:.1f} + update {flops['train'] / 1e9:.1f}; "
          f"achieved GFLOP/s: collect {flops['collect'] * n / spent['collect'] / 1e9:.1f}, "
          f"update {flops['train'] * n / spent['train'] / 1e9:.1f}")
    precision = extractor_precision(model)
    peak = best_matmul_gflops(torch.bfloat16 if precision == "bf16" else torch.float32)
    print(f"best matmul here (2048^3, {precision}): {peak:.1f} GFLOP/s; at that rate this arithmetic alone would "
          f"take collect {flops['collect'] / peak / 1e9:.3f} s + update {flops['train'] / peak / 1e9:.3f} s")

    pieces = dict.fromkeys(("sample", "forward", "backward", "clip", "adam"), 0.0)
    policy_net, optimizer, count = model.policy, model.policy.optimizer, 0
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if args.ops else None
    if profiler:
        profiler.__enter__()
    for _ in range(2):
        tick = time.perf_counter()
        for batch in model.rollout_buffer.get(PPO_ATARI["batch_size"]):
            t1 = time.perf_counter()
            values, log_prob, entropy = policy_net.evaluate_actions(batch.observations, batch.actions.long().flatten())
            loss = (-(log_prob * batch.advantages).mean() + 0.5 * ((batch.returns - values.flatten()) ** 2).mean()
                    - 0.01 * entropy.mean())
            t2 = time.perf_counter()
            optimizer.zero_grad()
            loss.backward()
            t3 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(policy_net.parameters(), 0.5)
            t4 = time.perf_counter()
            optimizer.step()
            t5 = time.perf_counter()
            for key, seconds in zip(pieces, (t1 - tick, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                pieces[key] += seconds
            count += 1
            tick = time.perf_counter()
    print(f"per minibatch of {PPO_ATARI['batch_size']} (ms): "
          + ", ".join(f"{k} {1000 * v / count:.1f}" for k, v in pieces.items())
          + (" (under the profiler)" if profiler else ""))
    if profiler:
        profiler.__exit__(None, None, None)
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
