"""The benchmark scripts' argument handling (the benchmarks themselves are run by hand, not in CI)."""

from __future__ import annotations

import sys

import pytest

import bench_throughput


@pytest.mark.parametrize("variant", ["sb3", "project", "zoo-lite", "zoo-sample", "ensemble",
                                     "zoo-lite:align-conv", "zoo-lite:noalign+gate-lr30", "zoo-uniform:align-conv"])
def test_known_variants(variant):
    assert bench_throughput.known_variant(variant)


@pytest.mark.parametrize("variant", ["zoo-fast", "project:align-conv", "zoo-lite:bogus", "sb3-fast", ""])
def test_unknown_variants(variant):
    assert not bench_throughput.known_variant(variant)


def test_unknown_variant_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench_throughput.py", "--variants", "sb3,zoo-lite:bogus"])
    with pytest.raises(SystemExit):
        bench_throughput.main()
    err = capsys.readouterr().err
    assert "zoo-lite:bogus" in err and "align-conv" in err


@pytest.mark.parametrize("variant", ["sb3", "zoo-bogus"])
def test_profile_rejects_a_variant_it_cannot_build(capsys, monkeypatch, variant):
    import profile_ppo

    monkeypatch.setattr(sys, "argv", ["profile_ppo.py", "--variant", variant])
    with pytest.raises(SystemExit):
        profile_ppo.main()
    assert "bench_throughput.py variant other than sb3" in capsys.readouterr().err


def test_parallel_children_are_timed_together(monkeypatch):
    """--parallel: the copies' steps over the slowest copy's seconds (fake children, no training)."""
    import json
    import subprocess

    class FakeChild:
        def __init__(self, cmd, **kwargs):
            assert cmd[cmd.index("--threads") + 1] == str(max(1, (bench_throughput.os.cpu_count() or 1) // 2))
            assert cmd[cmd.index("--parties") + 1] == "2"
            FakeChild.count = getattr(FakeChild, "count", 0) + 1
            seconds = 10.0 if FakeChild.count == 1 else 20.0
            self.out = json.dumps({"variant": "project", "fps": 1000 / seconds, "seconds": seconds, "peak_mb": 5.0})
            self.returncode = 0

        def communicate(self):
            return self.out + "\n", None

    monkeypatch.setattr(subprocess, "Popen", FakeChild)
    result = bench_throughput.measure(["python", "bench_throughput.py", "--child", "project"], 2)
    assert result["fps"] == pytest.approx(2000 / 20.0)  # 2 x 1000 steps over the slower child's 20 s
    assert result["peak_mb"] == 5.0


def test_parity_workers_must_be_positive(capsys, monkeypatch):
    import parity

    monkeypatch.setattr(sys, "argv", ["parity.py", "--workers", "0"])
    with pytest.raises(SystemExit):
        parity.main()
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_parity_runs_are_interleaved_and_finished_ones_skipped(tmp_path):
    import argparse
    import json

    import parity

    args = argparse.Namespace(game="Pong", steps=1000, seeds=2, eval_every=500, eval_episodes=1, runs=tmp_path)
    jobs = parity.pending_jobs(args)
    assert [(j.study.precision, j.seed) for j in jobs] == [("fp32", 0), ("bf16", 0), ("fp32", 1), ("bf16", 1)]
    assert jobs[0].study.env_backend == "gym" and jobs[1].study.env_backend == "auto"
    jobs[1].run_dir.mkdir(parents=True)
    (jobs[1].run_dir / "result.json").write_text(json.dumps({"target": "Pong", "method": "scratch", "seed": 0,
                                                          "final_return": -21.0}))
    assert [(j.study.precision, j.seed) for j in parity.pending_jobs(args)] == [("fp32", 0), ("fp32", 1), ("bf16", 1)]
    assert (tmp_path / "Pong-bf16" / "study.json").is_file()


def test_parity_workers_take_the_next_run_when_theirs_ends(monkeypatch, tmp_path):
    """Two workers, one slow run: the three fast ones all finish on the other worker meanwhile."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    import parity

    order, release = [], threading.Event()

    def fake_run_job(job, threads=None):
        if job.name == "slow":
            release.wait(5)  # released once the three others are done, else after 5 s
        order.append(job.name)
        if len(order) == 3:
            release.set()
        return {}

    monkeypatch.setattr(parity, "run_job", fake_run_job)
    monkeypatch.setattr(parity, "write_tables", lambda out: None)
    monkeypatch.setattr(parity, "ProcessPoolExecutor", ThreadPoolExecutor)
    jobs = [SimpleNamespace(name=name, study=SimpleNamespace(out=tmp_path)) for name in ("slow", "a", "b", "c")]
    start = time.monotonic()
    parity.train(jobs, workers=2)
    assert order == ["a", "b", "c", "slow"] and time.monotonic() - start < 5


@pytest.mark.parametrize("stride", [1, 2, 4])
def test_flop_count_of_grouped_convolutions_is_per_group(stride):
    """profile_ppo's backward formula: torch's own on ordinary convolutions; a per-sample (grouped)
    convolution costs what its B ordinary ones cost, forward and backward (torch's formula ignores groups)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    import profile_ppo

    def flops(batch, groups, mapping):
        x = torch.randn(batch, 32 * groups, 20, 20, requires_grad=True)
        w = torch.randn(64 * groups, 32, 4, 4, requires_grad=True)
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            F.conv2d(x, w, None, stride, groups=groups).sum().backward()
        return counter.get_total_flops()

    ours = {torch.ops.aten.convolution_backward: profile_ppo.conv_backward_flop}
    assert flops(8, 1, ours) == flops(8, 1, {})
    assert flops(1, 8, ours) == flops(8, 1, {})
    assert flops(1, 8, {}) > 2 * flops(8, 1, {})  # what the custom formula is for
