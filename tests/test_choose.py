"""experiments/choose.py: a default chosen among candidates by the mean rank of their AUC over targets."""

from __future__ import annotations

import sys

import pandas as pd
import pytest

import choose


def write_study(folder, target, aucs):
    """A published study's results.csv: ``aucs`` maps method -> AUC per seed."""
    folder.mkdir()
    rows = [{"target": target, "method": m, "seed": s, "auc": a, "final_return": a + 1}
            for m, seeds in aucs.items() for s, a in enumerate(seeds)]
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    return folder


def test_the_best_mean_rank_wins_and_ties_go_to_the_first_named(tmp_path, capsys, monkeypatch):
    a = write_study(tmp_path / "a", "Pendulum", {"lite:sigmoid": [-900, -1500], "lite:softmax": [-150, -170],
                                                 "lite:sum": [-160, -150], "scratch": [0, 0]})
    b = write_study(tmp_path / "b", "Cheetah", {"lite:sigmoid": [900.0], "lite:softmax": [700.0],
                                                "lite:sum": [800.0]})
    candidates = ["lite:sigmoid", "lite:softmax", "lite:sum"]
    table = choose.candidate_table([a, b], candidates)
    assert "scratch" not in set(table["method"])
    pendulum = table[table["target"] == "Pendulum"].set_index("method")
    assert pendulum["auc"].to_dict() == {"lite:sigmoid": -1200, "lite:softmax": -160, "lite:sum": -155}
    assert pendulum["seeds"].tolist() == [2, 2, 2]
    # sigmoid 3 and 1, softmax 2 and 3, sum 1 and 2: sum first; sigmoid and softmax tie at 2.5, sigmoid named first.
    ranking = choose.choose(table)
    assert list(zip(ranking["method"], ranking["mean_rank"])) == [("lite:sum", 1.5), ("lite:sigmoid", 2.0),
                                                                  ("lite:softmax", 2.5)]
    tied = choose.choose(choose.candidate_table([a], ["lite:softmax", "lite:sum"]).assign(auc=1.0, rank=1.0))
    assert list(tied["method"]) == ["lite:softmax", "lite:sum"]

    monkeypatch.setattr(sys, "argv", ["choose.py", str(a), str(b), "--candidates", ",".join(candidates), "--out",
                                      str(tmp_path / "out"), "--chosen"])
    choose.main()
    assert capsys.readouterr().out == "lite:sum\n"
    assert (tmp_path / "out" / "choice.md").read_text().splitlines()[-1].startswith("chosen: lite:sum (mean rank 1.5")
    assert len(pd.read_csv(tmp_path / "out" / "choice.csv")) == 6


def test_a_candidate_missing_on_a_target_comes_last_and_bad_input_is_refused(tmp_path):
    a = write_study(tmp_path / "a", "Pendulum", {"x": [1.0], "y": [2.0]})
    b = write_study(tmp_path / "b", "Cheetah", {"x": [1.0]})
    ranking = choose.choose(choose.candidate_table([a, b], ["x", "y"]))
    assert list(ranking["method"]) == ["x", "y"] and list(ranking["targets"]) == [2, 1]
    with pytest.raises(SystemExit, match="No study ran z"):
        choose.candidate_table([a, b], ["x", "z"])
    with pytest.raises(SystemExit, match="more than one study"):
        choose.candidate_table([a, a], ["x"])
    with pytest.raises(SystemExit, match="publish the study first"):
        choose.candidate_table([tmp_path / "missing"], ["x"])
