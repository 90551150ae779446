"""The benchmark scripts' argument handling (the benchmarks themselves are run by hand, not in CI)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_throughput  # noqa: E402


@pytest.mark.parametrize("variant", ["sb3", "project", "zoo-lite", "zoo-sample", "ensemble",
                                     "zoo-lite:align-conv", "zoo-lite:noalign+gate-x30", "zoo-uniform:align-conv"])
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


def test_parity_workers_are_one_or_two(capsys, monkeypatch):
    import parity

    monkeypatch.setattr(sys, "argv", ["parity.py", "--workers", "3"])
    with pytest.raises(SystemExit):
        parity.main()
    assert "--workers takes 1 or 2" in capsys.readouterr().err
