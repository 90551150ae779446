"""Cost of a Zoo-Tuning extractor against a plain NatureCNN, measured in the same run.

One training step = forward + backward + Adam on a batch of 84x84x4 observations, through
the extractor and a 6-way linear head. Variants are timed round-robin (A, B, C, A, B, C...)
so that load on a shared machine hits them alike; the table gives medians and the ratio to
NatureCNN.

    python benchmarks/bench_extractor.py                 # K=5, batch 256, float32
    python benchmarks/bench_extractor.py --bf16          # under bfloat16 autocast
    python benchmarks/bench_extractor.py --device cuda   # on a GPU (steps timed to completion)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from stable_baselines3.common.torch_layers import NatureCNN

from common import SPACE, random_zoo
from zoo_rl.extractor import ZooExtractor
from zoo_rl.layers import GATE_MODES


def make_step(extractor: torch.nn.Module, batch: int, bf16: bool, channels_last: bool, fused: bool,
              device: torch.device):
    extractor.to(device)
    head = torch.nn.Linear(512, 6).to(device)
    params = list(extractor.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-4, fused=fused or None)
    x = torch.rand(batch, 4, 84, 84, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        extractor.to(memory_format=torch.channels_last) if isinstance(extractor, NatureCNN) else None
    target = torch.randint(0, 6, (batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = head(extractor(x)).float()
        loss = torch.nn.functional.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, default=5, help="K, sources in the zoo")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="run under bfloat16 autocast")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--align", choices=["all", "conv", "none"], default="all",
                        help="which zoo layers learn an alignment (default: all)")
    parser.add_argument("--fused-adam", action="store_true", help="torch's fused Adam (one kernel for all tensors)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        zoo = random_zoo(args.sources, Path(tmp))
        variants = {"NatureCNN": NatureCNN(SPACE)}
        for mode in GATE_MODES:
            align = {"all": True, "conv": "conv", "none": False}[args.align]
            variants[f"zoo-{mode}"] = ZooExtractor(SPACE, zoo=zoo, gate=mode, align=align)
    device = torch.device(args.device)
    steps = {name: make_step(module.train(), args.batch, args.bf16, args.channels_last, args.fused_adam, device)
             for name, module in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.warmup + args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["NatureCNN"])
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, threads={torch.get_num_threads()}"
    print(f"device={where} K={args.sources} batch={args.batch} bf16={args.bf16} channels_last={args.channels_last} "
          f"align={args.align} fused_adam={args.fused_adam} repeats={args.repeats}")
    print(f"{'variant':<14} {'median ms':>10} {'ratio':>7} {'params':>11}")
    for name, ts in times.items():
        n_params = sum(p.numel() for p in variants[name].parameters())
        print(f"{name:<14} {statistics.median(ts) * 1e3:>10.1f} {statistics.median(ts) / base:>7.2f} {n_params:>11,}")


if __name__ == "__main__":
    main()
