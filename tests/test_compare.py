"""experiments/compare.py: methods from different studies, compared with the studies' own statistics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from compare import compare

ROOT = Path(__file__).resolve().parents[1]


def write_study(folder: Path, rows: list[tuple[str, int, float, float]], steps: int = 1000) -> Path:
    """A study folder with results.csv (method, seed, final return, AUC) and a two-point curves.csv."""
    folder.mkdir(parents=True)
    pd.DataFrame([dict(target="Pong", method=m, seed=s, steps=steps, final_return=f, auc=a) for m, s, f, a in rows]
                 ).to_csv(folder / "results.csv", index=False)
    pd.DataFrame([dict(method=m, seed=s, steps=x, **{"return": a if x else -21.0}) for m, s, _, a in rows
                  for x in (0, steps)]).to_csv(folder / "curves.csv", index=False)
    return folder


def test_differences_are_against_the_first_row(tmp_path):
    a = write_study(tmp_path / "a", [("zoo-lite", 0, 5.0, -10.0), ("zoo-lite", 1, 7.0, -8.0)])
    b = write_study(tmp_path / "b", [("finetune:pong-m1", 0, -11.0, -15.0), ("finetune:pong-m1", 1, -9.0, -13.0),
                                     ("finetune:pong-m1", 2, -10.0, -14.0)])
    table = compare([(a, "zoo-lite"), (b, "finetune:pong-m1")], reps=500).set_index("label")
    assert list(table.index) == ["zoo-lite [a]", "finetune:pong-m1 [b]"]  # two studies: labels name them
    ref, other = table.loc["zoo-lite [a]"], table.loc["finetune:pong-m1 [b]"]
    assert ref["vs_reference"] == 0 and ref["auc_vs_reference"] == 0
    assert other["final_mean"] == pytest.approx(-10.0) and other["runs"] == 3
    assert other["vs_reference"] == pytest.approx(-10.0 - 6.0)
    assert other["auc_vs_reference"] == pytest.approx(-14.0 - (-9.0))
    # (resampled means: fine-tune in [-11, -9], zoo-lite in [5, 7], so the difference lies in [-18, -14])
    assert -18.0 - 1e-9 <= other["vs_reference_low"] <= other["vs_reference"] <= other["vs_reference_high"] <= -14.0 + 1e-9


def test_agrees_with_a_published_summary():
    """Within one study, the difference to scratch is summary.csv's vs_scratch, interval included."""
    study = ROOT / "results" / "pong-500k"
    summary = pd.read_csv(study / "summary.csv").set_index("method")
    table = compare([(study, "scratch"), (study, "zoo-lite"), (study, "finetune:pong-m1")]).set_index("label")
    for method in ("zoo-lite", "finetune:pong-m1"):
        for ours, theirs in (("vs_reference", "vs_scratch"), ("vs_reference_low", "vs_scratch_low"),
                             ("vs_reference_high", "vs_scratch_high"), ("auc_vs_reference", "auc_vs_scratch")):
            assert table.loc[method, ours] == pytest.approx(summary.loc[method, theirs]), (method, ours)


def test_bad_input_says_what_to_do(tmp_path):
    a = write_study(tmp_path / "a", [("scratch", 0, -20.0, -20.0)])
    b = write_study(tmp_path / "b", [("scratch", 0, -19.0, -20.0)], steps=5000)
    with pytest.raises(SystemExit, match="differ in steps"):
        compare([(a, "scratch"), (b, "scratch")])
    with pytest.raises(SystemExit, match="no runs of method 'zoo'; it has: scratch"):
        compare([(a, "scratch"), (a, "zoo")])
    with pytest.raises(SystemExit, match="no results.csv"):
        compare([(a, "scratch"), (tmp_path / "missing", "scratch")])
    with pytest.raises(SystemExit, match="at least two"):
        compare([(a, "scratch")])


def test_command_writes_the_table_and_the_plot(tmp_path):
    a = write_study(tmp_path / "a", [("scratch", 0, -20.0, -20.0), ("scratch", 1, -19.0, -19.5),
                                     ("zoo-lite", 0, 3.0, -12.0), ("zoo-lite", 1, 5.0, -11.0)])
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "compare.py"), "--run", str(a), "scratch",
                           "--run", str(a), "zoo-lite", "--out", str(out), "--plot", "--reps", "200"],
                          capture_output=True, text=True, check=True)
    assert "zoo-lite" in done.stdout
    table = pd.read_csv(out / "comparison.csv")
    assert list(table["label"]) == ["scratch", "zoo-lite"]  # one study: plain method names
    assert table.loc[1, "vs_reference"] == pytest.approx(4.0 - (-19.5))
    assert (out / "learning_curves.png").stat().st_size > 0 and (out / "learning_curves.svg").is_file()


def test_pooled_folders_count_as_one_group_of_all_their_seeds(tmp_path):
    first = write_study(tmp_path / "s", [("scratch", 0, -20.0, -20.0), ("scratch", 1, -19.0, -19.0),
                                         ("zoo-lite", 0, 3.0, -12.0), ("zoo-lite", 1, 5.0, -11.0)])
    more = write_study(tmp_path / "s-more", [("zoo-lite", 2, 10.0, -6.0), ("zoo-lite", 3, 6.0, -9.0)])
    pooled = f"{first},{more}"
    table = compare([(first, "scratch"), (Path(pooled), "zoo-lite")], reps=200).set_index("label")
    row = table.loc["zoo-lite [s+s-more]"]
    assert row["runs"] == 4 and row["final_mean"] == pytest.approx(6.0)
    assert row["vs_reference"] == pytest.approx(6.0 - (-19.5))
    with pytest.raises(SystemExit, match=r"seed\(s\) \[0, 1\] in more than one folder"):
        compare([(first, "scratch"), (Path(f"{first},{first}"), "zoo-lite")])
