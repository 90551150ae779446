"""experiments/one_update.py: one update of several methods from the same state."""

from __future__ import annotations

import pandas as pd
import pytest

from one_update import LAYERS, one_update
from zoo_rl.files import RANKING
from zoo_rl.study import StudyConfig


def config(tmp_path, zoo, methods, target="Pong"):
    pd.DataFrame({"rank": [1, 2, 3], "source": ["src1", "src0", "src2"], "zero_shot_z": [5.0, 1.0, 0.5]}).to_csv(
        tmp_path / RANKING, index=False)
    return StudyConfig(target=target, zoo=zoo, methods=methods, seeds=1, n_envs=2, workers=1, out=tmp_path)


def test_a_ranked_start_without_alignment_or_gate_motion_steps_as_its_top_sources_fine_tune(zoo_paths, tmp_path):
    """The same rollout, heads and minibatch order: the ranked start (0.99 on src1, no alignment, gates at the
    study's rate) moves its merged layers as the fine-tune of src1 moves its own; with alignments it does not."""
    methods = ["finetune:src1", "zoo-lite:ranked+noalign+gate-lr1", "zoo-lite:ranked"]
    table = one_update(config(tmp_path, zoo_paths, methods)).set_index(["method", "layer"])
    assert list(table.index.get_level_values("layer")[:4]) == list(LAYERS)
    reference = table.loc["finetune:src1"]
    assert (reference["update_ratio"] == 1).all() and list(reference["cosine"]) == pytest.approx([1.0] * 4, abs=1e-4)
    assert (reference["update_norm"] > 0).all()
    ranked = table.loc["zoo-lite:ranked+noalign+gate-lr1"]
    assert ranked["start_difference"].between(0.001, 0.05).all()  # 0.99 of src1, 0.005 of each other source
    assert ranked["update_ratio"].between(0.9, 1.1).all() and (ranked["cosine"] > 0.95).all()
    aligned = table.loc["zoo-lite:ranked"]
    assert (aligned["update_ratio"] > 1.05).any() and (aligned["cosine"] < 0.95).any()


def test_methods_without_one_merged_network_are_refused(zoo_paths, tmp_path):
    with pytest.raises(ValueError, match="do not act with one merged network"):
        one_update(config(tmp_path, zoo_paths, ["finetune:src1", "zoo"]))
