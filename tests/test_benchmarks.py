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
