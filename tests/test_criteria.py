"""experiments/criteria.py: the success criteria read from published tables, met or not, with bad input refused."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import criteria


def study(folder, target, finals: dict[str, list[float]], steps=100_352):
    folder.mkdir(parents=True)
    rows = [{"target": target, "method": m, "seed": s, "steps": steps, "final_return": r}
            for m, returns in finals.items() for s, r in enumerate(returns)]
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    return folder


def test_related_target_best_zoo_method_against_best_finetune_and_scratch(tmp_path):
    folder = study(tmp_path / "pong", "Pong", {"scratch": [-20, -21, -20], "finetune:a": [-10, -11, -12],
                                               "finetune:b": [-19, -19, -20], "zoo-lite": [-15, -16, -15],
                                               "zoo-lite:ranked+gate-lr100": [-9, -10, -11], "kickstart": [0, 1, 2]})
    rows, met = criteria.related_rows(criteria.target_runs([folder]))
    # the best zoo method (ranked start) against the best fine-tune (a) and scratch; kickstart is no zoo method
    assert [(r["method"], r["against"]) for r in rows] == [("zoo-lite:ranked+gate-lr100", "finetune:a"),
                                                           ("zoo-lite:ranked+gate-lr100", "scratch")]
    assert rows[0]["difference"] == pytest.approx(1.0) and not rows[0]["shown_below"]
    assert rows[1]["shown_above"] and met


def test_a_zoo_method_shown_below_scratch_fails_leave_one_out(tmp_path):
    scratch = study(tmp_path / "old", "Breakout", {"scratch": [2, 2.5, 3], "finetune:x": [9, 9, 9]})
    new = study(tmp_path / "new", "Breakout", {"finetune:y": [1, 1, 1], "uniform": [0, 0.2, 0.1],
                                              "zoo-lite": [2, 3, 2.5], "kickstart": [0, 0, 0]})
    runs = criteria.target_runs([new, scratch])
    assert set(runs["method"]) == {"finetune:y", "uniform", "zoo-lite", "kickstart", "scratch"}  # no finetune:x
    rows, met = criteria.loo_rows(runs)
    by = {r["method"]: r for r in rows}
    assert by["uniform"]["shown_below"] and by["uniform"]["criterion"] == "loo" and not met
    assert by["kickstart"]["criterion"].startswith("loo (not counted")  # reported, not counted


def test_efficiency_and_ranking_verdicts(tmp_path):
    folder = study(tmp_path / "pong", "Pong", {"scratch": [-20], "zoo-lite": [-10]})
    pd.DataFrame([{"method": "zoo-lite", "level_name": "half-source", "ratio": 0.15, "ratio_low": 0.1,
                   "ratio_high": 0.3, "steps_median": 30_000, "scratch_steps": 200_000, "runs": 3},
                  {"method": "kickstart", "level_name": "half-source", "ratio": 0.05, "ratio_low": 0.01,
                   "ratio_high": 0.1, "steps_median": 10_000, "scratch_steps": 200_000, "runs": 3},
                  {"method": "zoo", "level_name": "scratch-final", "ratio": 0.01, "ratio_low": 0.01,
                   "ratio_high": 0.01, "steps_median": 2_000, "scratch_steps": 200_000, "runs": 3}]
                 ).to_csv(folder / "efficiency.csv", index=False)
    rows, point, shown = criteria.efficiency_rows(folder, "Pong")
    assert [r["method"] for r in rows] == ["zoo-lite"] and point and not shown  # 0.15 met, interval up to 0.3
    ranking = tmp_path / "ranking"
    ranking.mkdir()
    pd.DataFrame({"not_shown_worse": [True, True, False, True, True],
                  "tests_ranking": [True] * 5}).to_csv(ranking / "validation.csv", index=False)
    assert criteria.ranking_verdict(ranking, 4) == (4, 5, True)
    assert criteria.ranking_verdict(ranking, 5)[2] is False
    # a study that does not test the ranking (one fine-tune: passes by construction) is not counted
    pd.DataFrame({"not_shown_worse": [True, True, False, True, True],
                  "tests_ranking": [True, True, True, True, False]}).to_csv(ranking / "validation.csv", index=False)
    assert criteria.ranking_verdict(ranking, 4) == (3, 4, False)
    pd.DataFrame({"not_shown_worse": [True]}).to_csv(ranking / "validation.csv", index=False)  # an older table
    with pytest.raises(SystemExit, match="validate_ranking.py .* again"):
        criteria.ranking_verdict(ranking, 1)


def test_the_command_writes_its_tables_and_refuses_bad_input(tmp_path, capsys):
    a = study(tmp_path / "a", "Pong", {"scratch": [-20, -20], "finetune:s": [-15, -14], "zoo-lite": [-14, -13]})
    b = study(tmp_path / "b", "Breakout", {"scratch": [1, 2]}, steps=500_000)
    c = study(tmp_path / "c", "Breakout", {"finetune:s": [3, 4], "zoo": [1, 1]})
    criteria.main(["--related", str(a), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "criteria.md").read_text().startswith("| criterion | target | verdict |")
    printed = capsys.readouterr().out
    assert "related: Pong" in printed and "Efficiency not judged: no efficiency.csv in" in printed
    assert "efficiency (" not in (tmp_path / "out" / "criteria.md").read_text()  # no verdict without its tables
    with pytest.raises(SystemExit, match="differ in steps"):
        criteria.main(["--loo", str(c), str(b)])
    with pytest.raises(SystemExit, match="No scratch runs"):
        criteria.main(["--loo", str(c)])
    d = study(tmp_path / "d", "Breakout", {"scratch": [1, 1], "zoo": [2, 2]}, steps=500_000)
    with pytest.raises(SystemExit, match="its own scratch"):
        criteria.main(["--loo", str(d), str(b)])
    with pytest.raises(SystemExit, match="results.csv is missing"):
        criteria.main(["--loo", str(tmp_path / "nowhere")])


def test_a_whole_policy_target_judges_full_seed_methods_beside_multipolar(tmp_path, capsys):
    """Runs kept from earlier defaults (one seed) are not chosen as best; MULTIPOLAR is reported beside the best
    zoo method; a target with only scratch's level gets no efficiency verdict."""
    folder = study(tmp_path / "cheetah", "mujoco-halfcheetah+mass=1.5",
                   {"scratch": [100, 120, 110], "finetune:a": [900, 950, 1000], "finetune:b": [2000],
                    "zoo-lite:sigmoid-sum": [1000, 1100, 1050], "zoo": [5000], "multipolar": [800, 850, 900]})
    rows, met = criteria.related_rows(criteria.target_runs([folder]))
    assert [(r["criterion"], r["method"], r["against"]) for r in rows] == [
        ("related", "zoo-lite:sigmoid-sum", "finetune:a"), ("related", "zoo-lite:sigmoid-sum", "scratch"),
        ("related (beside multipolar: not counted)", "zoo-lite:sigmoid-sum", "multipolar")]
    assert met and rows[2]["shown_above"]
    pd.DataFrame([{"method": "zoo-lite:sigmoid-sum", "level_name": "scratch-final", "ratio": 0.1, "ratio_low": 0.1,
                   "ratio_high": 0.1, "steps_median": 10_000, "scratch_steps": 100_000, "runs": 3}]
                 ).to_csv(folder / "efficiency.csv", index=False)
    assert criteria.efficiency_rows(folder, "mujoco-halfcheetah+mass=1.5") is None
    criteria.main(["--related", str(folder), "--out", str(tmp_path / "out")])
    assert "Efficiency not judged: no related target has the level 'half-source'" in capsys.readouterr().out
    written = (tmp_path / "out" / "criteria.md").read_text()
    assert "efficiency (" not in written and "Efficiency rows" not in written  # no footer without its rows
    assert "Efficiency not judged: no related target has the level 'half-source'" in written  # says why


def test_a_study_tests_the_ranking_only_with_several_fine_tunes_the_top_one_among_them(tmp_path, monkeypatch):
    import shutil

    import validate_ranking

    root = Path(__file__).parents[1]
    monkeypatch.chdir(root)  # study.json names its zoo relative to the repository

    def folder(name, finals):
        d = study(tmp_path / name, "Pong", finals)
        for file in ("study.json", "ranking.csv"):  # the zoo and ranking of a published study: nothing is played
            shutil.copy(root / "results" / "pong-500k" / file, d)
        return validate_ranking.validate(d)

    several = folder("several", {"finetune:pong-m1": [-10, -11, -12], "finetune:breakout": [-20, -20, -19]})
    one = folder("one", {"finetune:pong-m1": [-10, -11, -12]})
    top_left_out = folder("left-out", {"finetune:breakout": [-20, -19, -20], "finetune:enduro": [-20, -20, -20]})
    assert several["tests_ranking"] and several["not_shown_worse"] and several["top_ranked"] == "pong-m1"
    assert one["not_shown_worse"] and not one["tests_ranking"]  # the only fine-tune is the best by construction
    assert not top_left_out["tests_ranking"]  # pong-m1, ranked first, has no fine-tune here
    table = pd.DataFrame([several, one, top_left_out])
    cells = validate_ranking.markdown(table)
    assert "untested: one fine-tune" in cells and "untested: the ranking's top source has no fine-tune" in cells


@pytest.mark.parametrize("out, args", [
    ("criteria-strong", ["--related", "pong-100k-strong", "--related", "breakout-m4-100k-strong", "breakout-m4-100k",
                         "--loo", "breakout-loo-100k-strong", "breakout-loo-100k",
                         "--loo", "roadrunner-loo-100k-strong", "roadrunner-loo-100k", "--ranking", "ranking-strong"]),
    ("criteria-continuous", ["--related", "halfcheetah-friction0.8-mass1.25-100k",
                             "--related", "halfcheetah-legs1.1-mass0.75-100k", "--related", "halfcheetah-mass3.5-100k",
                             "--related", "pendulum-g12-sac-10k"]),
])
def test_published_criteria_regenerate_exactly(tmp_path, out, args):
    """results/criteria-*/ is what the criteria stage of experiments/studies_strong.sh and studies_continuous.sh
    writes from the published studies today (the same arguments, folders under results/)."""
    results = Path(__file__).resolve().parents[1] / "results"
    criteria.main([a if a.startswith("--") else str(results / a) for a in args] + ["--out", str(tmp_path)])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "criteria.csv"), pd.read_csv(results / out / "criteria.csv"),
                                  check_dtype=False, atol=1e-9)
    assert (tmp_path / "criteria.md").read_text() == (results / out / "criteria.md").read_text()
