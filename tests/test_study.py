"""Transfer studies: metrics by hand, tables, plots from CSV, errors before training, resume, Ray."""

from __future__ import annotations

import json
import math
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import zoo_rl.study as study_module
import zoo_rl.study.config as config_module
import zoo_rl.study.runs as runs_module
from conftest import random_nature_state
from envs.tasks import make_env, resolve
from zoo_rl.extractor import ZooExtractor
from zoo_rl.kickstart import KickstartPPO
from zoo_rl.qdagger import QDaggerDQN
from zoo_rl.layers import DEFAULT_NORMALISATION, NORMALISATIONS
from zoo_rl.metrics import (area_under_curve, difference_interval, human_normalised, iqm_with_interval,
                            steps_to_threshold)
from zoo_rl.sources import write_compact
from zoo_rl.study import RESULT_COLUMNS, StudyConfig, collect_results, cross_target, plan, run_study, summarise
from zoo_rl.study.diagnostics import diagnose_study

ROOT = Path(__file__).resolve().parents[1]

TINY = dict(steps=512, eval_every=256, eval_episodes=1, n_envs=2, seeds=1, rank_steps=16, final_episodes=2, workers=1)


@pytest.fixture(autouse=True)
def own_registry(tmp_path, monkeypatch):
    """Studies trained here register in a folder of the test's own (zoo_rl.study.cores), one torch thread a run."""
    monkeypatch.setenv("ZOO_RL_REGISTRY", str(tmp_path / "registry"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_metrics_by_hand():
    steps, returns = np.array([0, 10, 20]), np.array([0.0, 10.0, 4.0])
    # trapezoids: (0+10)/2*10 + (10+4)/2*10 = 50 + 70 = 120 over 20 steps
    assert area_under_curve(steps, returns) == pytest.approx(6.0)
    assert steps_to_threshold(steps, returns, 5.0) == 10
    assert math.isnan(steps_to_threshold(steps, returns, 11.0))
    scores = {"m": np.array([1, 2, 3, 4, 5, 6, 7, 100.0])[:, None]}
    np.random.seed(7)
    expected_draw = np.random.rand()
    np.random.seed(7)
    point, low, high = iqm_with_interval(scores, reps=50)["m"]
    assert point == pytest.approx(4.5) and low <= point <= high  # the mean of 3, 4, 5, 6
    assert np.random.rand() == expected_draw  # the caller's global generator is handed back as it was
    np.random.seed(8)  # and the interval does not depend on it
    assert iqm_with_interval(scores, reps=50)["m"] == (point, low, high)
    assert human_normalised(-20.7, "Pong") == pytest.approx(0.0)
    assert human_normalised(14.6, "Pong") == pytest.approx(1.0)
    assert math.isnan(human_normalised(3.0, "NoSuchGame"))


def test_difference_interval():
    a, b = np.array([-10.0, -12.0, -8.0]), np.array([-21.0, -20.0, -19.0])
    low, high = difference_interval(a, b, reps=2000)
    # Resampling 3 seeds cannot leave the range of the possible means: (-12 - -19) to (-8 - -21).
    assert 7.0 <= low < 10.0 < high <= 13.0
    assert difference_interval(a, b, reps=500, seed=1) == difference_interval(a, b, reps=500, seed=1)
    low, high = difference_interval(b, b, reps=2000)  # a method against itself: an interval around 0
    assert low < 0.0 < high and low == pytest.approx(-high, abs=0.35)
    assert difference_interval(np.full(3, 5.0), np.full(3, 2.0)) == (3.0, 3.0)  # no spread, no width
    assert all(math.isnan(v) for v in difference_interval(a, np.array([])))


def results_table(rows):
    table = pd.DataFrame(rows, columns=["method", "seed", "final_return"])
    table["target"], table["steps"] = "Pong", 100
    table["human_normalised"] = human_normalised(table["final_return"].to_numpy(), "Pong")
    table["auc"], table["steps_to_threshold"], table["timesteps_per_second"] = 0.0, np.nan, 100.0
    table["initial_return"] = table["final_return"] - 1.0
    return table


def test_summary_by_hand():
    rows = [("scratch", s, v) for s, v in enumerate([-21, -20, -19])]
    rows += [("finetune:a", s, v) for s, v in enumerate([-10, -12, -8])]
    rows += [("finetune:b", s, v) for s, v in enumerate([-15, -15, -15])]
    rows += [("zoo", s, v) for s, v in enumerate([-5, -7, -6])]
    table = results_table(rows)
    table.loc[table["method"] == "zoo", "auc"] = [1.0, 3.0, 5.0]
    summary = summarise(table, reps=200).set_index("method")
    assert summary.loc["scratch", "final_mean"] == pytest.approx(-20)
    assert summary.loc["scratch", "final_std"] == pytest.approx(1.0)
    assert summary.loc["finetune-best", "final_mean"] == pytest.approx(-10)  # finetune:a
    assert summary.loc["finetune-mean", "final_mean"] == pytest.approx(-12.5)
    assert summary.loc["finetune-mean", "runs"] == 6
    assert summary.loc["zoo", "initial_mean"] == pytest.approx(-7)  # the return before training
    assert summary.loc["zoo", "vs_scratch"] == pytest.approx(14)
    assert summary.loc["zoo", "vs_best_finetune"] == pytest.approx(4)
    # The intervals of the differences: zoo vs scratch excludes 0; finetune:b (no spread) vs scratch
    # spans scratch's own spread only (-15 - [-21, -19]).
    assert 0 < summary.loc["zoo", "vs_scratch_low"] < 14 < summary.loc["zoo", "vs_scratch_high"]
    assert summary.loc["finetune:b", "vs_scratch_low"] >= 4 and summary.loc["finetune:b", "vs_scratch_high"] <= 6
    assert summary.loc["zoo", "vs_best_finetune_low"] < 4 < summary.loc["zoo", "vs_best_finetune_high"]
    assert summary.loc["zoo", "auc_vs_scratch"] == pytest.approx(3.0)  # AUCs: zoo 1, 3, 5; scratch 0, 0, 0
    assert summary.loc["zoo", "auc_vs_scratch_low"] <= 3.0 <= summary.loc["zoo", "auc_vs_scratch_high"]
    assert summary.loc["zoo", "rank"] == 1 and summary.loc["scratch", "rank"] == 4
    assert summary.loc["zoo", "iqm_low"] <= summary.loc["zoo", "iqm"] <= summary.loc["zoo", "iqm_high"]
    assert math.isnan(summary.loc["finetune-best", "rank"])


def test_cross_target_table(tmp_path):
    for target, offset in (("Pong", 0), ("Breakout", 5)):
        table = results_table([("scratch", s, -20 + offset + s) for s in range(3)])
        table["target"] = target
        table["human_normalised"] = human_normalised(table["final_return"].to_numpy(), target)
        (tmp_path / target).mkdir()
        table.to_csv(tmp_path / target / "results.csv", index=False)
    for target, best in (("Pong", "finetune:a"), ("Breakout", "finetune:b")):  # a different best source each
        table = pd.read_csv(tmp_path / target / "results.csv")
        extra = results_table([("finetune:a", s, (-10 if best == "finetune:a" else -15) + s) for s in range(3)]
                              + [("finetune:b", s, (-10 if best == "finetune:b" else -15) + s) for s in range(3)])
        extra["target"] = target
        extra["human_normalised"] = human_normalised(extra["final_return"].to_numpy(), target)
        pd.concat([table, extra]).to_csv(tmp_path / target / "results.csv", index=False)
    out = cross_target([tmp_path / "Pong", tmp_path / "Breakout"], reps=200).set_index("method")
    assert out.loc["scratch", "return_Pong"] == pytest.approx(-19)
    assert out.loc["scratch", "return_Breakout"] == pytest.approx(-14)
    assert np.isfinite(out.loc["scratch", "hns_iqm"])
    assert out.loc["finetune-best", "return_Pong"] == pytest.approx(-9)  # finetune:a on Pong, b on Breakout
    assert out.loc["finetune-best", "return_Breakout"] == pytest.approx(-9)
    assert out.loc["finetune-each", "return_Pong"] == pytest.approx(-11.5)
    assert out.loc["finetune-best", "hns_iqm"] > out.loc["finetune-each", "hns_iqm"]


def test_human_normalised_scores_are_recomputed_from_the_final_return(tmp_path):
    """A run written before its game had reference scores (NaN) gets them when the tables are rebuilt."""
    from zoo_rl.study import collect_results

    run = tmp_path / "scratch" / "seed0"
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps(dict(
        target="RoadRunner", method="scratch", seed=0, steps=100, final_return=795.0, final_return_std=0.0,
        initial_return=0.0, auc=0.0, human_normalised=None, wall_seconds=1.0, timesteps_per_second=100.0)))
    table = collect_results(tmp_path)
    assert table.loc[0, "human_normalised"] == pytest.approx((795.0 - 11.5) / (7845.0 - 11.5))


def test_cross_target_names_the_normalisation_each_run_trained_with(tmp_path):
    """Pong's zoo-lite trained with softmax gates, Breakout's with sigmoid: two rows, and Pong's
    zoo-lite:sigmoid joins Breakout's zoo-lite; the same from published studies (tables and study.json only)."""
    from zoo_rl.study import canonical_method

    runs = {"Pong": [("zoo-lite", {"gate": "lite", "normalisation": "softmax"}),
                     ("zoo-lite:sigmoid", {"gate": "lite", "normalisation": "sigmoid"})],
            "Breakout": [("zoo-lite", {"gate": "lite", "normalisation": "sigmoid"})]}
    for target, methods in runs.items():
        rows = []
        for method, kwargs in methods:
            run = tmp_path / target / method.replace(":", "-") / "seed0"
            run.mkdir(parents=True)
            (run / "config.json").write_text(json.dumps({"method": method} | ({"extractor_kwargs": kwargs} if kwargs else {})))
            rows.append((method, 0, -20.0 if target == "Pong" else 5.0))
        table = results_table(rows)
        table["target"] = target
        table["human_normalised"] = human_normalised(table["final_return"].to_numpy(), target)
        table.to_csv(tmp_path / target / "results.csv", index=False)
    out = cross_target([tmp_path / "Pong", tmp_path / "Breakout"], reps=100).set_index("method")
    assert sorted(out.index) == ["zoo-lite:sigmoid", "zoo-lite:softmax"]
    assert np.isfinite(out.loc["zoo-lite:sigmoid", "hns_iqm"])  # present on both targets
    assert math.isnan(out.loc["zoo-lite:softmax", "return_Breakout"])
    for target, normalisation in (("Pong", "softmax"), ("Breakout", None)):  # published: no run folders
        (tmp_path / "published" / target).mkdir(parents=True)
        (tmp_path / "published" / target / "results.csv").write_bytes((tmp_path / target / "results.csv").read_bytes())
        (tmp_path / "published" / target / "study.json").write_text(json.dumps({"normalisation": normalisation}))
    published = cross_target([tmp_path / "published" / "Pong", tmp_path / "published" / "Breakout"], reps=100)
    pd.testing.assert_frame_equal(published.set_index("method"), out)
    assert canonical_method("zoo-lite:sigmoid+noalign", "sigmoid") == "zoo-lite:noalign+sigmoid"
    assert canonical_method("zoo:gate-lr30", "softmax") == "zoo:gate-lr30+softmax"
    assert canonical_method("uniform", None) == "uniform" and canonical_method("scratch", "sigmoid") == "scratch"


def test_plots_from_fixture_csv(tmp_path):
    from zoo_rl.plots import make_plots

    curves = pd.DataFrame([(m, s, st, r + s + (m == "zoo") * st / 1000)
                           for m in ("scratch", "zoo") for s in range(3) for st, r in ((0, -21), (1000, -19))],
                          columns=["method", "seed", "steps", "return"])
    curves.to_csv(tmp_path / "curves.csv", index=False)
    summarise(results_table([("scratch", s, -20 + s) for s in range(3)] + [("zoo", s, -18 + s) for s in range(3)]),
              reps=100).to_csv(tmp_path / "summary.csv", index=False)
    pd.DataFrame([("zoo", 0, t, "features_extractor", layer, src, g) for t in (0, 1000)
                  for layer in ("cnn_0", "linear_0") for src, g in (("a", 0.4), ("b", 0.6))],
                 columns=["method", "seed", "timesteps", "extractor", "layer", "source", "gate"]
                 ).to_csv(tmp_path / "gates.csv", index=False)
    written = {p.name for p in make_plots(tmp_path)}
    assert {"learning_curves.png", "learning_curves.svg", "summary.png", "summary.svg",
            "gates_zoo.png", "gates_zoo.svg"} <= written
    from zoo_rl.plots import method_styles

    methods = ["scratch", "uniform", "zoo", "zoo-lite", "ensemble"] + [f"finetune:s{i}" for i in range(4)]
    styles = method_styles(methods + ["zoo-lite:sigmoid", "zoo-lite:noalign"])  # 11 methods: past tab10
    assert len({s["color"] for s in styles.values()}) == 11
    assert styles["finetune:s0"]["linestyle"] == "--" and styles["scratch"]["linestyle"] == ":"
    labelled = method_styles(["scratch [a]", "finetune:s0 [b]", "zoo-lite [a]"])  # experiments/compare.py's labels
    assert labelled["scratch [a]"]["linestyle"] == ":" and labelled["finetune:s0 [b]"]["linestyle"] == "--"
    assert labelled["zoo-lite [a]"]["linestyle"] == "-"


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(target="Pongg"), ValueError, "Did you mean: Pong"),
    (dict(target="Pong", methods=["scratch", "distill"]), ValueError, "Unknown method 'distill'"),
    (dict(target="Pong", methods=["finetune:nobody"]), ValueError, "finetune:nobody names no source"),
    (dict(target="Pong", algo="trpo"), ValueError, "Unknown algorithm 'trpo'"),
    (dict(target="Pong", methods=["zoo-lite:sigmoid+nogates"]), ValueError, "Unknown option 'nogates'.*noalign"),
    (dict(target="Pong", first_seed=-1), ValueError, "--first-seed must be 0 or more"),
])
def test_errors_before_training(zoo_paths, tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        plan(StudyConfig(zoo=zoo_paths, out=tmp_path, **kwargs))
    assert not list(tmp_path.iterdir())


def test_more_seeds_of_a_study_start_at_the_first_seed(zoo_paths, tmp_path):
    jobs = plan(StudyConfig(target="Pong", zoo=zoo_paths, methods=["scratch", "zoo-lite"], seeds=2, first_seed=3,
                            out=tmp_path))
    assert [(j.method, j.seed) for j in jobs] == [("scratch", 3), ("zoo-lite", 3), ("scratch", 4), ("zoo-lite", 4)]
    assert jobs[-1].run_dir == tmp_path / "zoo-lite" / "seed4"


def test_missing_source_is_an_error_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plan(StudyConfig(target="Pong", zoo=[str(tmp_path / "nope")], out=tmp_path / "study"))


def test_zoo_that_does_not_fit_the_target(tmp_path):
    state = random_nature_state(0)
    state["cnn.0.weight"] = torch.zeros(32, 3, 8, 8)  # an RGB agent
    write_compact(tmp_path / "rgb", state, {}, {})
    with pytest.raises(ValueError, match="does not fit this environment"):
        plan(StudyConfig(target="Pong", zoo=[str(tmp_path / "rgb")], out=tmp_path / "study"))


def test_default_zoo_leaves_out_the_target_task(tmp_path):
    for name, meta in (("pong", {"game": "Pong"}), ("pong-m1", {"game": "Pong", "mode": 1}),
                       ("breakout", {"game": "Breakout"})):
        write_compact(tmp_path / name, random_nature_state(0), {}, meta)
    names = [p.split("/")[-1] for p in study_module.default_zoo(resolve("Pong"), tmp_path)]
    assert names == ["breakout", "pong-m1"]


def test_zoo_folders_expand_to_members_minus_the_target_task(tmp_path):
    atari, lab = tmp_path / "zoo", tmp_path / "zoo-lab2d"
    write_compact(atari / "breakout", random_nature_state(0), {}, {"game": "Breakout"})
    for level in ("chase_eat", "pushbox"):
        write_compact(lab / f"lab2d-{level}", random_nature_state(0), {}, {"game": f"lab2d:{level}"})
    single = str(atari / "breakout")
    task = resolve("lab2d:pushbox")
    zoo = study_module.expand_zoo([str(lab), str(atari), single], task)
    assert [p.split("/")[-1] for p in zoo] == ["lab2d-chase_eat", "breakout", "breakout"]
    assert study_module.default_zoo(task, lab) == [str(lab / "lab2d-chase_eat")]
    assert set(study_module.ZOO_DIRS) == {"atari", "lab2d", "mujoco", "classic"}
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "manifest.yml").write_text("sources: []\n")
    assert study_module.default_zoo(task, untrained) == []
    with pytest.raises(ValueError, match="neither a source.*agents/train.py --zoo --manifest"):
        study_module.expand_zoo([str(untrained)], task)


@pytest.mark.slow
def test_tiny_study_end_to_end_and_resume(zoo_paths, tmp_path, monkeypatch):
    out = tmp_path / "study"
    config = StudyConfig(target="Pong", zoo=zoo_paths[:2], methods=["scratch", "zoo-lite"], out=out, **TINY)

    class Killed(Exception):
        pass

    real_progress = runs_module.ProgressFile

    class KillAt300(real_progress):  # the zoo-lite run dies after its first checkpoint (256 steps)
        def _on_step(self) -> bool:
            if "zoo-lite" in str(self.path) and self.num_timesteps >= 300:
                raise Killed
            return super()._on_step()

    monkeypatch.setattr(runs_module, "ProgressFile", KillAt300)
    with pytest.raises(Killed):
        run_study(config, progress=False)
    results = pd.read_csv(out / "results.csv")
    assert list(results["method"]) == ["scratch"]  # only the finished run, no half row
    scratch_result = (out / "scratch" / "seed0" / "result.json").stat().st_mtime

    monkeypatch.setattr(runs_module, "ProgressFile", real_progress)
    results, summary = run_study(config, progress=False)
    assert (out / "scratch" / "seed0" / "result.json").stat().st_mtime == scratch_result  # skipped
    assert json.loads((out / "zoo-lite" / "seed0" / "status.json").read_text())["resumed_from"] == 256
    assert list(results.columns) == RESULT_COLUMNS
    assert sorted(results["method"]) == ["scratch", "zoo-lite"] and len(results) == 2
    assert {"method", "iqm", "iqm_low", "iqm_high", "vs_scratch", "rank"} <= set(summary.columns)
    for name in ("results.csv", "summary.csv", "curves.csv", "gates.csv", "study.json"):
        assert (out / name).is_file(), name
    run = out / "zoo-lite" / "seed0"
    for name in ("evaluations.npz", "config.json", "gates.csv", "final.zip", "final_evaluation.json", "tensorboard"):
        assert (run / name).exists(), name
    assert not (run / "checkpoint.zip").exists()  # a finished run keeps its final model only
    assert (out / "ranking.csv").is_file()
    from stable_baselines3.common.monitor import load_results

    # SB3 reads a run folder as it is (it raises when it finds no Monitor file; no Pong game ends in 512 steps)
    assert len(list(run.glob("*.monitor.csv"))) == 2 and {"r", "l", "t"} <= set(load_results(str(run)).columns)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (run / "tensorboard").glob("PPO_*")  # one folder: the resumed run continued it
    tags = EventAccumulator(str(events)).Reload().Tags()["scalars"]
    assert "eval/mean_reward" in tags and any(t.startswith("gates/features_extractor/cnn_0/") for t in tags)
    with np.load(run / "evaluations.npz") as ev:
        assert list(ev["timesteps"]) == [0, 256, 512]
    run_config = json.loads((run / "config.json").read_text())
    assert "command" in run_config
    assert run_config["extractor_kwargs"] == {"gate": "lite", "normalisation": DEFAULT_NORMALISATION}
    gates = pd.read_csv(out / "gates.csv")
    assert set(gates["source"]) == {"src0", "src1"}

    import publish

    written = {p.name for p in publish.publish(out, tmp_path / "published")}
    assert {"results.csv", "summary.csv", "learning_curves.png", "gates_zoo-lite.png", "tables.md"} <= written
    tables = (tmp_path / "published" / "tables.md").read_text()
    assert "| zoo-lite | 1 |" in tables and "| src0 |" in tables and "Command: `" in tables
    assert "| zoo-lite | linear.0 | 1 |" in tables  # one level down
    assert "bench_throughput.py" in tables  # the steps/s column says what it measures
    assert "Every run trained alone" in tables
    assert "| at step 0 |" in tables
    assert "| vs scratch [95% CI] |" in tables and "| AUC vs scratch [95% CI] |" in tables
    diagnostics = pd.read_csv(tmp_path / "published" / "diagnostics.csv")
    assert set(diagnostics["method"]) == {"zoo-lite"} and (diagnostics["drift"] > 0).all()

    # The final return comes from the new games each run played at its end (2 here), seeded so that
    # experiments/reevaluate.py, for runs without them, plays the same games.
    rows = collect_results(out)
    assert (rows["final_episodes"] == 2).all()
    import reevaluate

    first = json.loads((out / "scratch" / "seed0" / "final_evaluation.json").read_text())
    assert len(first["returns"]) == 2 and first["seeded"]
    (out / "scratch" / "seed0" / "final_evaluation.json").unlink()
    reevaluate.main([str(out), "--episodes", "2"])
    assert json.loads((out / "scratch" / "seed0" / "final_evaluation.json").read_text())["returns"] == first["returns"]
    rows = collect_results(out)
    assert rows.loc[rows["method"] == "scratch", "final_return"].item() == pytest.approx(np.mean(first["returns"]))


@pytest.mark.slow
def test_ray_launcher_with_local_ray(zoo_paths, tmp_path):
    pytest.importorskip("ray")
    import ray

    out = tmp_path / "study"
    config = StudyConfig(target="Pong", zoo=zoo_paths[:1], methods=["scratch"], out=out, launcher="ray",
                         **dict(TINY, steps=256, eval_every=256))
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        results, _ = run_study(config, progress=False)
    finally:
        ray.shutdown()
    assert len(results) == 1 and (out / "scratch" / "seed0" / "result.json").is_file()


@pytest.mark.slow
def test_local_process_pool_runs_seeds_in_parallel(tmp_path):
    out = tmp_path / "study"
    config = StudyConfig(target="Pong", zoo=[], methods=["scratch"], out=out,
                         **dict(TINY, workers=2, seeds=2, steps=256, eval_every=256))
    results, summary = run_study(config, progress=False)
    assert sorted(results["seed"]) == [0, 1]
    assert summary.loc[0, "runs"] == 2
    assert list(results["parallel_runs"]) == [2, 2]  # their steps/s is a share of the machine


def test_results_say_which_precision_and_cpu_each_run_trained_on(tmp_path, monkeypatch):
    """--precision bf16 computes float32 on a CPU without native bf16: results.csv must say which it was."""
    import zoo_rl.machine as machine
    import zoo_rl.policies as policies
    import zoo_rl.study.runs as runs_module

    monkeypatch.setattr(policies, "cpu_supports_bf16", lambda: False)  # an AVX2 CPU, whatever runs the test
    monkeypatch.setattr(runs_module, "machine_info", lambda: {"cpu": "test", "cores": 2, "cpu_capability": "AVX2",
                                                               "bf16_native": False})
    out = tmp_path / "study"
    config = StudyConfig(target="Pong", zoo=[], methods=["scratch"], out=out, **dict(TINY, steps=256, eval_every=256))
    assert config.precision == "bf16"
    results, _ = run_study(config, progress=False)
    assert list(results["extractor_precision"]) == ["fp32"] and list(results["cpu_capability"]) == ["AVX2"]
    run_config = json.loads((out / "scratch" / "seed0" / "config.json").read_text())
    assert run_config["machine"]["cpu_capability"] == "AVX2"
    assert run_config["malloc_reuse"] is machine.reuse_freed_memory()  # True on glibc unless ZOO_RL_MALLOC=0
    result_path = out / "scratch" / "seed0" / "result.json"
    row = json.loads(result_path.read_text())
    del row["extractor_precision"], row["cpu_capability"]  # a run from before the record: unknown, not guessed
    result_path.write_text(json.dumps(row))
    again = collect_results(out)
    assert list(again["extractor_precision"]) == [""] and list(again["cpu_capability"]) == [""]


def test_image_studies_pin_adams_eps_for_every_method_and_precision(zoo_paths, tmp_path):
    """The published image studies trained with torch's eps (1e-8); fp32 (CnnPolicy) and bf16 (FastCnnPolicy)
    runs, plain and zoo methods, all step with it."""
    env = None
    try:
        for precision in ("bf16", "fp32"):
            jobs = plan(StudyConfig(target="Pong", zoo=zoo_paths, methods=["scratch", "finetune", "zoo-lite"], seeds=1,
                                    precision=precision, out=tmp_path / precision))
            env = env or make_env(jobs[0].task, 1)
            for job in jobs:
                optimizer = study_module.build_model(job, env).policy.optimizer
                assert optimizer.defaults["eps"] == runs_module.IMAGE_STUDY_ADAM_EPS == 1e-8, (precision, job.method)
    finally:
        if env is not None:
            env.close()


def test_zoo_method_options_reach_the_extractor(zoo_paths, tmp_path):
    jobs = plan(StudyConfig(target="Pong", zoo=zoo_paths, methods=["zoo-lite:sigmoid+noalign", "zoo:align-conv"],
                            seeds=1, out=tmp_path))
    assert [j.method for j in jobs] == ["zoo-lite:sigmoid+noalign", "zoo:align-conv"]
    env = make_env(jobs[0].task, 1)
    try:
        lite = study_module.build_model(jobs[0], env).policy.features_extractor
        sample = study_module.build_model(jobs[1], env).policy.features_extractor
    finally:
        env.close()
    layer = lite.layers["cnn_0"]
    assert layer.mode == "lite" and layer.align is None and layer.gate.normalisation == "sigmoid"
    assert sample.layers["cnn_0"].align is not None and sample.layers["linear_0"].align is None
    assert study_module.zoo_options("zoo-lite:gate-lr30+noalign+ranked") == {"gate_lr": 30.0, "align": False}
    assert study_module.zoo_options("zoo:align-lr0.5+bank-lr2") == {"align_lr": 0.5, "bank_lr": 2.0}
    assert study_module.ranked_top("zoo-lite:gate-lr30+top2") == 2 and study_module.ranked_top("zoo-lite:ranked") == 1
    assert study_module.ranked_top("zoo-lite:gate-lr30") is None
    with pytest.raises(ValueError, match="gate-lr<N>"):
        study_module.zoo_options("zoo-lite:gate-lr0")
    with pytest.raises(ValueError, match="became gate-lr<N>"):
        study_module.zoo_options("zoo-lite:gate-x30")


@pytest.mark.parametrize("algo, env_id, params, steps", [
    ("ppo", "CartPole-v1", dict(n_steps=64, batch_size=48, n_epochs=3), 300),  # a last, smaller minibatch
    ("a2c", "CartPole-v1", dict(n_steps=7), 100),
    ("sac", "Pendulum-v1", dict(learning_starts=30, train_freq=4, gradient_steps=3, batch_size=16), 150),
    ("dqn", "CartPole-v1", dict(learning_starts=50, train_freq=(2, "step"), batch_size=16), 151),
])
def test_optimizer_updates_count_the_optimizer_steps_sb3_takes(algo, env_id, params, steps):
    from stable_baselines3.common.env_util import make_vec_env

    n_envs = 2 if algo in ("ppo", "a2c") else 1
    model = runs_module.algo_class(algo)("MlpPolicy", make_vec_env(env_id, n_envs=n_envs, seed=0), seed=0,
                                         policy_kwargs=dict(net_arch=[8]), **params)
    optimizer = model.critic.optimizer if algo == "sac" else model.policy.optimizer
    taken = []
    optimizer.register_step_post_hook(lambda *_: taken.append(1))
    model.learn(steps)
    assert runs_module.optimizer_updates(algo, params, n_envs, steps) == len(taken) > 0
    with pytest.raises(ValueError, match="counts episodes.*gate-lr<N>"):
        runs_module.optimizer_updates("sac", dict(train_freq=(1, "episode")), 1, steps)


def test_a_gate_span_sets_the_gates_rate_from_the_runs_budget(zoo_paths, tmp_path):
    jobs = plan(StudyConfig(target="Pong", zoo=zoo_paths, methods=["zoo-lite:gate-span16", "zoo-lite:gate-lr100"],
                            seeds=1, out=tmp_path, steps=100_000))
    span = runs_module.run_extractor_kwargs(jobs[0])["gate_lr"]
    # The zoo's Atari PPO (8 x 128 steps a rollout, 4 epochs of 4 minibatches) takes 98 x 16 updates in 100k steps:
    # a span of 16 at Adam 1e-4 is about the multiplier 100 of the default ranked start.
    assert span == pytest.approx(16 / (1e-4 * 98 * 16)) and runs_module.run_extractor_kwargs(jobs[1])["gate_lr"] == 100
    assert study_module.zoo_options("zoo-lite:ranked+gate-span16") == {}
    assert study_module.gate_span("zoo-lite:ranked+gate-span1.5") == 1.5 and study_module.gate_span("zoo") is None
    for bad, match in (("zoo-lite:gate-span0", "S > 0"), ("zoo-lite:gate-span2+gate-span3", "one gate-span"),
                       ("zoo-lite:gate-span2+gate-lr10", "keep one")):
        with pytest.raises(ValueError, match=match):
            study_module.zoo_options(bad)


def test_a_gated_run_continues_only_with_its_normalisation(zoo_paths, tmp_path):
    other = next(n for n in NORMALISATIONS if n != DEFAULT_NORMALISATION)
    study = dict(target="Pong", zoo=zoo_paths, seeds=1, out=tmp_path)
    (job,) = plan(StudyConfig(methods=["zoo-lite"], **study))
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "config.json").write_text(json.dumps({"method": "zoo-lite", "extractor_kwargs": {
        "gate": "lite", "normalisation": "softmax"}}))
    with pytest.raises(ValueError, match="trained with gate normalisation 'softmax'.*--gate-normalisation softmax"):
        plan(StudyConfig(methods=["zoo-lite"], normalisation="sigmoid", **study))
    plan(StudyConfig(methods=["zoo-lite"], normalisation="softmax", **study))
    (sigmoid_job,) = plan(StudyConfig(methods=["zoo-lite:sigmoid"], **study))  # its name says sigmoid
    sigmoid_job.run_dir.mkdir(parents=True)
    (sigmoid_job.run_dir / "config.json").write_text(json.dumps({"method": "zoo-lite:sigmoid", "extractor_kwargs": {
        "gate": "lite", "normalisation": "sigmoid"}}))
    plan(StudyConfig(methods=["zoo-lite:sigmoid"], normalisation="softmax", **study))
    plan(StudyConfig(methods=["zoo-lite:sigmoid", "uniform", "scratch"], normalisation="sigmoid", **study))
    (job.run_dir / "config.json").write_text(json.dumps({"extractor_kwargs": {"gate": "lite", "normalisation": other}}))
    with pytest.raises(ValueError, match=f"trained with gate normalisation {other!r}, this study asks for "
                                         f"{DEFAULT_NORMALISATION!r}"):
        plan(StudyConfig(methods=["zoo-lite"], **study))
    with pytest.raises(ValueError, match="Unknown gate normalisation 'relu'"):
        plan(StudyConfig(methods=["scratch"], normalisation="relu", **study))
    # The study's normalisation reaches the extractor; a method's own option wins over it.
    assert study_module.extractor_kwargs("zoo", "sigmoid") == {"gate": "sample", "normalisation": "sigmoid"}
    assert study_module.extractor_kwargs("zoo-lite:softmax", "sigmoid")["normalisation"] == "softmax"
    assert study_module.extractor_kwargs("uniform", "sigmoid") == {"gate": "uniform"}
    assert study_module.extractor_kwargs("finetune:src0", "sigmoid") == {}
    (job,) = plan(StudyConfig(methods=["zoo"], normalisation=other, **study))
    env = make_env(job.task, 1)
    try:
        gate = study_module.build_model(job, env).policy.features_extractor.layers["cnn_0"].gate
    finally:
        env.close()
    assert gate.normalisation == other


def test_a_study_continues_only_with_the_sources_it_was_trained_with(zoo_paths, tmp_path):
    study = dict(target="Pong", seeds=1, out=tmp_path / "study", methods=["scratch", "zoo-lite"])
    jobs = plan(StudyConfig(zoo=zoo_paths[:2], **study))
    record = study_module.zoo_record(jobs[-1].zoo)
    assert [r["sha256"] for r in record] == [json.loads((Path(p) / "meta.json").read_text())["sha256"]
                                             for p in zoo_paths[:2]]
    study_module.write_study_json(jobs[0].study, len(jobs), record)
    plan(StudyConfig(zoo=zoo_paths[:2], **study))  # the same sources continue
    plan(StudyConfig(zoo=zoo_paths, **dict(study, methods=["scratch"])))  # scratch reads no source
    with pytest.raises(ValueError, match=r"trained with the sources .*src0 .*src1; this call resolves the zoo to "
                                         r".*src2.*continue it with --zoo .*src0 .*src1, or write this study to "
                                         r"another --out"):
        plan(StudyConfig(zoo=zoo_paths, **study))
    # The same paths with other weights: a zoo retrained in place.
    stale = json.loads((tmp_path / "study" / "study.json").read_text())
    stale["sources"][0]["sha256"] = "0" * 64
    (tmp_path / "study" / "study.json").write_text(json.dumps(stale))
    with pytest.raises(ValueError, match="same paths now hold other weights.*commit that trained it"):
        plan(StudyConfig(zoo=zoo_paths[:2], **study))
    # A later call that reads no source keeps the record.
    study_module.write_study_json(StudyConfig(**dict(study, methods=["scratch"])), 1)
    assert json.loads((tmp_path / "study" / "study.json").read_text())["sources"] == stale["sources"]


def test_published_studies_name_their_zoo_and_its_weights():
    for path in sorted((ROOT / "results").glob("*/study.json")):
        study = json.loads(path.read_text())
        assert study["zoo"], f"{path} names no zoo"
        for source in study["sources"]:
            meta = json.loads((ROOT / source["path"] / "meta.json").read_text())
            assert meta["sha256"] == source["sha256"], f"{path}: {source['path']} holds other weights now"


def test_dry_run_lists_the_runs_and_trains_nothing(zoo_paths, tmp_path, capsys):
    import transfer

    out = tmp_path / "study"
    transfer.main(["--target", "Pong", "--zoo", *zoo_paths, "--methods", "scratch,finetune,zoo-lite",
                   "--seeds", "2", "--out", str(out), "--dry-run"])
    printed = capsys.readouterr().out
    assert "zoo: 3 sources: src0, src1, src2" in printed and "100,000 agent steps per run" in printed
    assert "5 methods x 2 seeds = 10 runs" in printed  # (scratch + 3 fine-tunes + zoo-lite) x 2 seeds
    assert "done 0, partial 0, to do 10" in printed and "estimate: about" in printed and "GB on disk" in printed
    assert printed.count("to run") == 10 and "finetune:src2" in printed
    assert printed.count(f"({DEFAULT_NORMALISATION} gates)") == 2  # zoo-lite, both seeds
    assert not out.exists()


def test_a_run_resumes_only_on_the_backend_it_started_with(tmp_path):
    from zoo_rl.training import check_resume_backend

    (tmp_path / "config.json").write_text(json.dumps({"method": "scratch"}))  # no record: refused, with the fix
    with pytest.raises(ValueError, match="records no env_backend.*delete the run folder"):
        check_resume_backend(tmp_path, "gym", resumed=True)
    check_resume_backend(tmp_path, "ale", resumed=False)  # nothing to resume: any backend
    (tmp_path / "config.json").write_text(json.dumps({"env_backend": "gym"}))
    check_resume_backend(tmp_path, "gym", resumed=True)
    with pytest.raises(ValueError, match="--env-backend gym"):
        check_resume_backend(tmp_path, "ale", resumed=True)
    (tmp_path / "config.json").write_text(json.dumps({"env_backend": "ale"}))
    with pytest.raises(ValueError, match="started with env_backend='ale'"):
        check_resume_backend(tmp_path, "gym", resumed=True)
    assert StudyConfig(target="Pong").env_backend == "auto"


def test_cost_note_says_which_runs_shared_the_machine():
    import publish

    alone = pd.DataFrame({"method": ["scratch", "zoo-lite"], "parallel_runs": [1, 1]})
    assert "trained alone" in publish.cost_note(alone)
    mixed = pd.DataFrame({"method": ["scratch", "zoo-lite", "zoo-lite"], "parallel_runs": [1, 2, 2]})
    note = publish.cost_note(mixed)
    assert "2 of 3 runs trained 2 at a time" in note and "parallel_runs" in note
    assert "trained alone" in publish.cost_note(pd.DataFrame())  # no results yet
    assert "extractor" not in note  # older results.csv: no precision columns, nothing claimed
    recorded = mixed.assign(extractor_precision=["bf16", "fp32", ""], cpu_capability=["AVX512", "AVX2", ""])
    assert publish.cost_note(recorded).endswith(
        " Runs: 1 with a bf16 extractor on an AVX512 CPU; 1 with a fp32 extractor on an AVX2 CPU, 1 not recorded "
        "(columns `extractor_precision`, `cpu_capability`: bf16 is used only where the CPU has it natively, so the "
        "same study trains at different speeds on different machines).")


def test_differences_are_printed_with_their_interval():
    import publish

    row = pd.Series({"vs_scratch": 2.26, "vs_scratch_low": 1.7, "vs_scratch_high": 3.12, "auc_vs_scratch": math.nan})
    assert publish.difference_markdown(row, "vs_scratch") == "+2.3 [+1.7, +3.1]"
    assert publish.difference_markdown(row, "auc_vs_scratch") == "n/a"
    assert publish.difference_markdown(pd.Series({"vs_scratch": -0.5}), "vs_scratch") == "-0.5"  # older summaries
    assert publish.difference_markdown(pd.Series({"vs_scratch": -0.5}), "auc_vs_scratch") == "n/a"


def test_study_json_keeps_every_method_and_command(tmp_path, monkeypatch):
    """Ablations added to a study later with their own --methods must not erase the record of the first
    command (study.json, and the commands at the top of tables.md)."""
    from zoo_rl.study import write_study_json

    out = tmp_path / "study"
    monkeypatch.setattr(config_module, "command_line", lambda: "python transfer.py --methods scratch,zoo-lite")
    write_study_json(StudyConfig(target="Pong", methods=["scratch", "zoo-lite"], out=out), 6)
    write_study_json(StudyConfig(target="Pong", methods=["scratch", "zoo-lite"], out=out), 6)  # a rerun
    monkeypatch.setattr(config_module, "command_line", lambda: "python transfer.py --methods zoo-lite:noalign")
    write_study_json(StudyConfig(target="Pong", methods=["zoo-lite:noalign"], out=out), 3)
    record = json.loads((out / "study.json").read_text())
    assert record["methods"] == ["scratch", "zoo-lite", "zoo-lite:noalign"]
    assert record["commands"] == ["python transfer.py --methods scratch,zoo-lite",
                                  "python transfer.py --methods zoo-lite:noalign"]
    assert record["command"] == "python transfer.py --methods zoo-lite:noalign" and record["runs"] == 3
    assert record["out"] == str(out)
    import publish

    text = publish.commands_markdown(record)
    assert text.index("--methods scratch,zoo-lite") < text.index("--methods zoo-lite:noalign")
    assert publish.commands_markdown({"command": "python x.py"}) == "Command: `python x.py`\n\n"  # older study.json


def test_the_final_games_give_the_final_return(tmp_path):
    """A run's final games (final_evaluation.json) replace the last evaluation's return, which stays beside them."""
    from zoo_rl.study import collect_results, summarise

    for seed, reevaluated in ((0, [2.0, 4.0]), (1, None)):
        run = tmp_path / "scratch" / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "result.json").write_text(json.dumps(dict(
            target="Breakout", method="scratch", seed=seed, steps=100, final_return=9.0, final_return_std=0.0,
            initial_return=0.0, auc=0.0, human_normalised=None, wall_seconds=1.0, timesteps_per_second=100.0)))
        if reevaluated:
            (run / "final_evaluation.json").write_text(json.dumps({"returns": reevaluated, "mean": 3.0}))
    table = collect_results(tmp_path)
    assert table["final_return"].tolist() == [3.0, 9.0]
    assert table["final_return_std"].tolist() == [1.0, 0.0]
    assert table["last_evaluation_return"].tolist() == [9.0, 9.0]
    assert table.loc[0, "final_episodes"] == 2 and np.isnan(table.loc[1, "final_episodes"])
    assert table.loc[0, "human_normalised"] == pytest.approx((3.0 - 1.7) / (30.5 - 1.7))
    row = summarise(table).iloc[0]
    assert row["final_mean"] == 6.0 and row["last_evaluation_mean"] == 9.0 and row["final_episodes"] == 2


def test_tables_say_where_the_final_returns_come_from():
    import publish

    plain = pd.DataFrame({"final_episodes": [np.nan, np.nan], "last_evaluation_return": [1.0, 2.0]})
    assert publish.final_return_note(plain) == "Final return: the last evaluation of each run."
    mixed = plain.assign(final_episodes=[20.0, np.nan])
    note = publish.final_return_note(mixed)
    assert note.startswith("Final return: 20 new games per run") and "for 1 of 2 runs" in note
    assert "for every run" in publish.final_return_note(plain.assign(final_episodes=[20.0, 20.0]))


def test_the_study_cost_sums_the_runs_wall_times():
    import publish

    results = pd.DataFrame({"method": ["scratch", "scratch", "zoo"], "wall_seconds": [600.0, 1200.0, 5400.0]})
    assert publish.study_cost(results) == (
        "Cost: 3 runs, 2.00 hours of run time (the runs' `wall_seconds` summed: CPU-hours where each run had a core "
        "to itself); minutes a run: scratch 15.0, zoo 90.0.")
    assert publish.study_cost(pd.DataFrame()) == ""


def test_a_ranked_method_starts_from_the_studys_top_ranked_source(zoo_paths, tmp_path):
    out = tmp_path / "study"
    jobs = plan(StudyConfig(target="Pong", zoo=zoo_paths, methods=["zoo-lite:ranked+gate-lr30", "zoo:top2"], out=out,
                            **TINY))
    out.mkdir()
    names = [Path(z).name for z in zoo_paths]
    pd.DataFrame({"rank": [1, 2, 3], "source": [names[2], names[0], names[1]]}).to_csv(out / "ranking.csv",
                                                                                        index=False)
    kwargs = runs_module.run_extractor_kwargs(jobs[0])
    assert kwargs["init_gates"] == pytest.approx([0.005, 0.005, 0.99]) and kwargs["gate_lr"] == 30.0
    assert runs_module.run_extractor_kwargs(jobs[1])["init_gates"] == pytest.approx([0.495, 0.01, 0.495])
    env = make_env(jobs[0].task, 1, seed=0)
    try:
        model = study_module.build_model(jobs[0], env)
    finally:
        env.close()
    assert {g["lr_multiplier"] for g in model.policy.optimizer.param_groups} == {1.0, 30.0}
    layer = model.policy.features_extractor.layers["linear_0"]
    torch.testing.assert_close(layer.running_gates, torch.tensor([0.005, 0.005, 0.99]))
    with pytest.raises(ValueError, match="uniform gates are fixed"):
        plan(StudyConfig(target="Pong", zoo=zoo_paths, methods=["uniform:ranked"], out=out, **TINY))
    with pytest.raises(ValueError, match="top 4 sources"):
        plan(StudyConfig(target="Pong", zoo=zoo_paths, methods=["zoo-lite:top4"], out=out, **TINY))


@pytest.mark.slow
def test_rl_zoo_plot_scripts_read_a_study(tmp_path):
    """The RL Baselines3 Zoo's own scripts read the layout experiments/rlzoo_logs.py writes."""
    import subprocess

    import rlzoo_logs

    out = tmp_path / "study"
    config = StudyConfig(target="Pong", zoo=[], methods=["scratch"], out=out,
                         **dict(TINY, seeds=2, steps=512, eval_every=128, final_episodes=0))
    run_study(config, progress=False)
    for seed in (0, 1):  # a finished game in every Monitor file, as after a real run
        for monitor in (out / "scratch" / f"seed{seed}").glob("*.monitor.csv"):
            monitor.write_text(monitor.read_text() + "-21.0,800,1.0\n")
    logs = tmp_path / "logs"
    made = rlzoo_logs.export(out, logs)
    assert [p.name for p in made["scratch"]] == ["PongNoFrameskip-v4_1", "PongNoFrameskip-v4_2"]
    env = dict(os.environ, MPLBACKEND="Agg")
    result = subprocess.run([sys.executable, "-m", "rl_zoo3.plots.all_plots", "-a", "ppo", "-e", "Pong", "-f",
                             str(logs / "scratch"), "--no-display", "-o", str(tmp_path / "all"), "-print"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Pong-PPO-" in result.stdout and ": 2" in result.stdout  # two trials found
    import pickle

    with open(tmp_path / "all.pkl", "rb") as fh:
        table = pickle.load(fh)["Pong"]
    assert list(table.values())[0]["timesteps"].tolist() == [0, 128, 256, 384, 512]
    result = subprocess.run([sys.executable, "-m", "rl_zoo3.plots.plot_train", "-a", "ppo", "-e", "Pong", "-f",
                             str(logs / "scratch"), "-w", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    from stable_baselines3.common.monitor import load_results

    assert len(load_results(str(made["scratch"][0]))) == 2  # one game in each of the 2 Monitor files


def test_a_locked_run_is_left_to_the_process_that_holds_it(tmp_path):
    job = plan(StudyConfig(target="Pong", zoo=[], methods=["scratch"], out=tmp_path / "study", **TINY))[0]
    with study_module.run_lock(job.run_dir) as mine:
        assert mine
        assert study_module.run_job(job) is None  # another holder: this call trains nothing
        with study_module.run_lock(job.run_dir) as again:
            assert not again
    assert not (job.run_dir / "checkpoint.zip").exists()


def test_a_corrupt_checkpoint_names_its_run_and_how_to_restart_it(tmp_path):
    job = plan(StudyConfig(target="Pong", zoo=[], methods=["scratch"], out=tmp_path / "study", **TINY))[0]
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "checkpoint.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match=r"run scratch seed 0 .* is corrupt.*delete the folder"):
        study_module.run_job(job)


def test_the_plan_shows_done_and_partial_runs_and_estimates(tmp_path):
    out = tmp_path / "study"
    jobs = plan(StudyConfig(target="Pong", zoo=[], methods=["scratch"], out=out, **dict(TINY, seeds=3)))
    done, partial = jobs[0].run_dir, jobs[1].run_dir
    for run in (done, partial):
        run.mkdir(parents=True)
    (done / "result.json").write_text(json.dumps({"timesteps_per_second": 100.0}))
    (done / "config.json").write_text(json.dumps({"study": {"workers": 1}}))
    (partial / "checkpoint.zip").write_bytes(b"")
    (partial / "status.json").write_text(json.dumps({"num_timesteps": 256}))
    text = study_module.describe_plan(jobs[0].study, jobs)
    assert "1 methods x 3 seeds = 3 runs" in text and "done 1, partial 1, to do 1" in text
    assert "resumes scratch seed 1 from step 256" in text and "this study's finished runs" in text
    # 256 + 512 steps to train at the measured 100 steps/s, plus a minute of final games for each of 2 runs
    assert "about 2 min of training" in text
    progress = study_module.StudyProgress(jobs[0].study, jobs, enabled=False)
    assert progress.work(progress.steps) == pytest.approx((512 + 256) / 100.0)
    progress.started -= 100  # 100 s ago; the partial run has since trained 128 steps past its checkpoint
    progress.update(jobs[1], 384)
    assert progress.eta() == pytest.approx((3 * 512 - 512 - 384) / 128 * 100, rel=1e-3)
    assert progress.describe().startswith("Pong: 1/3 runs | scratch seed 1 at 384 |")
    # trained to the end but its final games not played: not finished yet, and the line says what it does
    progress.update(jobs[1], 512)
    assert progress.describe().startswith("Pong: 1/3 runs | scratch seed 1 playing its final games |")
    progress.finished(jobs[1])
    assert progress.describe().startswith("Pong: 2/3 runs | ETA")
    # a run another process on the same study finished meanwhile counts at this process's next finish
    progress.update(jobs[2], 128)
    jobs[2].run_dir.mkdir(parents=True)
    (jobs[2].run_dir / "result.json").write_text(json.dumps({"timesteps_per_second": 100.0}))
    progress.finished(jobs[1])
    assert progress.describe().startswith("Pong: 3/3 runs | ETA") and progress.work(progress.steps) == progress.total


def test_the_plan_reads_a_run_that_shared_the_machine_as_its_speed_alone(tmp_path, monkeypatch):
    """A run's steps/s beside others is a share of the machine: alone it makes that share times the runs,
    over the speed-up they made together; a method not measured yet is scaled by its relative cost."""
    from zoo_rl.study.progress import (KICKSTART_EXTRA_COST, method_seconds_per_step, parallel_speedup,
                                       relative_cost)

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    jobs = plan(StudyConfig(target="Pong", zoo=[], methods=["scratch"], out=tmp_path / "study", **TINY))
    jobs[0].run_dir.mkdir(parents=True)
    (jobs[0].run_dir / "result.json").write_text(json.dumps({"timesteps_per_second": 100.0}))
    (jobs[0].run_dir / "config.json").write_text(json.dumps({"parallel_runs": 3, "study": {"workers": 2}}))
    assert parallel_speedup(2) == parallel_speedup(3) == pytest.approx(1.35)
    # three registered on two cores: one stood by
    assert method_seconds_per_step(jobs)["scratch"] == pytest.approx(1.35 / 200.0)
    assert relative_cost("zoo-lite:ranked+gate-lr100+kickstart") == pytest.approx(
        relative_cost("zoo-lite") + KICKSTART_EXTRA_COST)
    assert relative_cost("zoo-lite:kickstart-all") == relative_cost("zoo-lite:ranked+gate-lr100+kickstart")
    assert relative_cost("kickstart:all") == relative_cost("kickstart") > relative_cost("finetune:pong-m1") == 1.0


def test_an_interrupted_study_says_where_it_stopped_and_resumes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    config = StudyConfig(target="Pong", zoo=[], methods=["scratch"], out=out, **dict(TINY, final_episodes=0))
    real_progress = runs_module.ProgressFile

    class CtrlC(real_progress):
        def _on_step(self) -> bool:
            if self.num_timesteps >= 300:
                raise KeyboardInterrupt
            return super()._on_step()

    monkeypatch.setattr(runs_module, "ProgressFile", CtrlC)
    with pytest.raises(KeyboardInterrupt):
        run_study(config, progress=True)
    printed = capsys.readouterr().out
    assert "Stopped: 0/1 runs finished; scratch seed 0 at its checkpoint of step 256" in printed
    assert "Run the same command to resume" in printed
    monkeypatch.setattr(runs_module, "ProgressFile", real_progress)
    run_study(config, progress=True)
    printed = capsys.readouterr().out
    assert "partial 1" in printed and "resumes scratch seed 0 from step 256" in printed


def scratch_study(out: Path, seeds: int, steps: int, eval_every: int):
    """``experiments/transfer.py`` training a tiny scratch study into ``out``, as a child process."""
    import subprocess

    command = [sys.executable, str(Path(__file__).resolve().parents[1] / "experiments" / "transfer.py"),
               "--target", "Pong", "--methods", "scratch", "--seeds", str(seeds), "--steps", str(steps),
               "--eval-every", str(eval_every), "--eval-episodes", "1", "--n-envs", "2", "--final-episodes", "0",
               "--workers", "1", "--out", str(out)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.slow
def test_two_processes_share_a_study_folder(tmp_path):
    """Two processes on one study: each run is trained once, by one of them; no duplicated rows or files."""

    out = tmp_path / "study"
    first, second = (scratch_study(out, seeds=3, steps=256, eval_every=128) for _ in range(2))
    outputs = [p.communicate(timeout=600)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    results = pd.read_csv(out / "results.csv")
    assert sorted(results["seed"]) == [0, 1, 2]
    for seed in range(3):
        run = out / "scratch" / f"seed{seed}"
        with np.load(run / "evaluations.npz") as ev:
            assert list(ev["timesteps"]) == [0, 128, 256]  # trained once: no repeated evaluation
        assert json.loads((run / "status.json").read_text())["resumed_from"] == 0
        assert len(list(run.glob("*.monitor.csv"))) == 2


@pytest.mark.slow
def test_sigterm_stops_the_study_with_its_resume_line(tmp_path):
    import signal
    import time

    out = tmp_path / "study"
    process = scratch_study(out, seeds=1, steps=100_000, eval_every=256)
    status = out / "scratch" / "seed0" / "status.json"
    deadline = time.time() + 300
    while not status.is_file() and time.time() < deadline:  # its first checkpoint
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    printed = process.communicate(timeout=120)[0]
    assert process.returncode == 130, printed
    assert "Stopped: 0/1 runs finished; scratch seed 0 at its checkpoint of step" in printed
    assert "Run the same command to resume" in printed


def test_published_tables_regenerate_exactly():
    """Every published summary.csv is what the study runner computes from its results.csv today, and
    results/cross_target.csv (and -uniform.csv) what --aggregate computes from the published studies: the tables
    in results/ stay reproducible by the code that ships with them."""
    results = ROOT / "results"
    for path in sorted(results.glob("*/results.csv")):
        published = pd.read_csv(path.parent / "summary.csv")
        pd.testing.assert_frame_equal(summarise(pd.read_csv(path)), published, check_dtype=False, atol=1e-9)
    for suffix, table in (("", "cross_target.csv"), ("-uniform", "cross_target-uniform.csv")):
        studies = [results / f"{name}{suffix}" for name in ("pong-100k", "breakout-loo-100k", "roadrunner-loo-100k")]
        regenerated = cross_target(studies).sort_values("method").reset_index(drop=True)
        committed = pd.read_csv(results / table).sort_values("method").reset_index(drop=True)
        pd.testing.assert_frame_equal(regenerated, committed, check_dtype=False, atol=1e-9)


def test_figure_names_keep_the_dots_of_method_names(tmp_path):
    from zoo_rl.plots import plt, save

    fig, _ = plt.subplots()
    assert [p.name for p in save(fig, tmp_path / "gates_zoo-lite-align-lr0.1")] == [
        "gates_zoo-lite-align-lr0.1.png", "gates_zoo-lite-align-lr0.1.svg"]
    assert (tmp_path / "gates_zoo-lite-align-lr0.1.png").is_file()


def test_a_study_that_names_no_method_runs_every_method_and_the_ranked_start(zoo_paths, tmp_path):
    jobs = plan(StudyConfig(target="Pong", zoo=zoo_paths, seeds=1, out=tmp_path))
    methods = [j.method for j in jobs]
    assert {"scratch", "uniform", "zoo", "zoo-lite", "ensemble", "zoo-lite:ranked+gate-lr100"} <= set(methods)
    assert sum(m.startswith("finetune:") for m in methods) == len(zoo_paths)


def test_the_library_never_imports_the_study_machinery():
    """The layers, extractor, export, sources, callbacks, baselines, policies, optimizers, ranking and the
    measures of a network load without the study runner or the training machinery."""
    import subprocess
    import sys

    library = ["aggregate", "baselines", "callbacks", "diagnostics", "export", "extractor", "files", "layers",
               "machine", "metrics", "optim", "policies", "ranking", "sources"]
    code = ("import sys, zoo_rl\n" + "".join(f"import zoo_rl.{m}\n" for m in library)
            + "print(sorted(m for m in sys.modules if m.startswith(('zoo_rl.study', 'zoo_rl.training', "
              "'zoo_rl.zoo_training'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_kickstarted_methods_get_their_teachers_from_the_ranking(tmp_path):
    zoo = [str(ROOT / "agents" / "zoo" / "pong-m1"), str(ROOT / "agents" / "zoo" / "breakout")]
    out = tmp_path / "study"
    methods = ["kickstart", "kickstart:all", "zoo-lite:ranked+kickstart"]
    jobs = plan(StudyConfig(target="Pong", zoo=zoo, methods=methods, out=out, **TINY))
    out.mkdir(exist_ok=True)
    pd.DataFrame({"rank": [1, 2], "source": ["breakout", "pong-m1"], "basis": ["zero-shot", "probe"],
                  "zero_shot_z": [3.0, 1.0]}).to_csv(out / "ranking.csv", index=False)
    env = make_env(jobs[0].task, 1, seed=0)
    try:
        for job in jobs:
            spec = runs_module.run_spec(job)
            model = study_module.build_model(job, env, spec)
            assert isinstance(model, KickstartPPO)
            spec.prepare(model)
            names = [t.name for t in model.teachers]
            if job.method == "kickstart:all":
                assert names == ["pong-m1", "breakout"] and model.teacher_weights == [0.25, 0.75]
                # what publish.py --teachers reports is what the run was given
                import publish
                reported = publish.teacher_weights(publish.ranking_csv(out)).set_index("source")["weight"]
                assert dict(reported) == dict(zip(names, model.teacher_weights))
            else:
                assert names == ["breakout"] and model.teacher_weights == [1.0]
    finally:
        env.close()
    assert isinstance(model.policy.features_extractor, ZooExtractor)  # the combination is a zoo method too
    with pytest.raises(ValueError, match="--algo sac cannot train them"):
        plan(StudyConfig(target="classic:pendulum+g=12", zoo=[str(ROOT / "agents" / "zoo-pendulum")],
                         methods=["kickstart"], algo="sac", out=tmp_path / "sac", **TINY))
    with pytest.raises(ValueError, match="kickstart:all"):
        plan(StudyConfig(target="Pong", zoo=zoo, methods=["kickstart:some"], out=out, **TINY))
    # Kickstarting is in every table a study makes by default; a DQN study's distils QDagger-style
    kicked = {"kickstart", "kickstart:all", "zoo-lite:ranked+gate-lr100+kickstart"}
    assert kicked <= set(study_module.DEFAULT_METHODS)
    dqn = plan(StudyConfig(target="Pong", zoo=zoo, algo="dqn", out=tmp_path / "dqn-defaults", **TINY))
    by_method = {job.method: job for job in dqn}
    assert kicked <= set(by_method) and "multipolar" not in by_method
    spec = runs_module.run_spec(by_method["kickstart"])
    assert spec.algo_cls is QDaggerDQN and spec.hyperparams["kickstart_coef"] == 1.0  # QDagger's weight
    env = make_env(by_method["kickstart"].task, 1, seed=0)
    try:
        (tmp_path / "dqn-defaults").mkdir(exist_ok=True)
        (tmp_path / "dqn-defaults" / "ranking.csv").write_text((out / "ranking.csv").read_text())
        model = study_module.build_model(by_method["kickstart"], env, spec)
        spec.prepare(model)
        assert [t.name for t in model.teachers] == ["breakout"]
        model.learn(96)  # trains from step 51 (learning_starts scaled to the budget), distilling
        assert model.logger.name_to_value["train/kickstart_kl"] > 0
    finally:
        env.close()


def test_kickstart_schedule_options_reach_the_algorithm(tmp_path):
    zoo = [str(ROOT / "agents" / "zoo" / "pong-m1"), str(ROOT / "agents" / "zoo" / "breakout")]
    out = tmp_path / "study"
    methods = ["kickstart", "kickstart:all+kcoef3+kdecay1", "kickstart:kdecay0.25", "zoo-lite:ranked+kickstart+kcoef0.3"]
    jobs = plan(StudyConfig(target="Pong", zoo=zoo, methods=methods, out=out, **TINY))
    steps = jobs[0].study.steps
    expected = {"kickstart": (30.0, steps), "kickstart:all+kcoef3+kdecay1": (3.0, steps),
                "kickstart:kdecay0.25": (30.0, round(steps / 4)), "zoo-lite:ranked+kickstart+kcoef0.3": (0.3, steps)}
    env = make_env(jobs[0].task, 1, seed=0)
    try:
        for job in jobs:
            spec = runs_module.run_spec(job)
            model = study_module.build_model(job, env, spec)
            assert (model.kickstart_coef, model.kickstart_steps) == expected[job.method], job.method
    finally:
        env.close()
    assert study_module.kickstart_teachers("kickstart:all+kcoef3") == "all"
    assert study_module.kickstart_schedule("zoo-lite:ranked") is None
    for bad, message in [("kickstart:kcoef0", "kcoef must be > 0"), ("kickstart:kdecay1.5", "0 < kdecay <= 1"),
                         ("kickstart:all+all", "kickstart:all"), ("kickstart:coef3", "kcoef<X>"),
                         ("zoo-lite:ranked+kcoef3", "add kickstart")]:
        with pytest.raises(ValueError, match=message):
            plan(StudyConfig(target="Pong", zoo=zoo, methods=[bad], out=tmp_path / "bad", **TINY))


@pytest.mark.slow
def test_a_kickstarted_run_trains_and_resumes_with_its_teachers(tmp_path):
    zoo = [str(ROOT / "agents" / "zoo" / "pong-m1"), str(ROOT / "agents" / "zoo" / "breakout")]
    out = tmp_path / "study"
    config = StudyConfig(target="Pong", zoo=zoo, methods=["kickstart"], out=out, **dict(TINY, final_episodes=0))
    run_study(config, progress=False)
    run = out / "kickstart" / "seed0"
    model = KickstartPPO.load(run / "final.zip", device="cpu")
    assert model.num_timesteps >= 512 and model.teachers == [] and model.kickstart_steps == 512
    assert json.loads((run / "result.json").read_text())["method"] == "kickstart"


def test_a_parked_study_is_taken_up_on_another_machine_without_training_again(zoo_paths, tmp_path, monkeypatch):
    import zoo_rl.study.park as park

    monkeypatch.setattr(park, "PARKED_DIR", tmp_path / "parked")
    here, there = tmp_path / "here" / "study", tmp_path / "there" / "study"
    config = dict(target="Pong", zoo=zoo_paths[:2], methods=["scratch", "zoo-lite"], **dict(TINY, steps=256, eval_every=256))
    results, _ = run_study(StudyConfig(out=here, **config), progress=False)
    diagnostics = diagnose_study(here)
    assert not diagnostics.empty
    # scratch stops short of finishing: it is in training when the study is parked
    (here / "scratch" / "seed0" / "result.json").unlink()
    archive, runs, unfinished = park.park_study(here)
    assert archive == tmp_path / "parked" / "study.tar.gz" and runs == 1
    assert unfinished == [here / "scratch" / "seed0"]
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert "study.json" in names and "zoo-lite/seed0/diagnostics.csv" in names
    assert not any(n.endswith(("final.zip", "checkpoint.zip")) or "tensorboard" in n or n.startswith("scratch") for n in names)

    again, _ = run_study(StudyConfig(out=there, **config), progress=False)  # another machine, the same command
    zoo_lite = there / "zoo-lite" / "seed0"
    assert not (zoo_lite / "final.zip").is_file()  # taken up, not trained again
    assert (there / "scratch" / "seed0" / "final.zip").is_file()  # the unfinished run trained there
    row = lambda table: table[table["method"] == "zoo-lite"].iloc[0]  # noqa: E731
    assert row(again)["final_return"] == row(results)["final_return"]
    pd.testing.assert_frame_equal(diagnose_study(there), diagnostics, check_dtype=False)
    assert park.unpark_study(there, "Pong") == 0  # every parked run is there, finished: nothing is replaced
    with pytest.raises(ValueError, match="parks a study of target 'Pong', not 'Breakout'"):
        park.unpark_study(tmp_path / "elsewhere" / "study", "Breakout")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "study.json").write_text("{}")
    with pytest.raises(ValueError, match="no finished run to park"):
        park.park_study(empty)
    with pytest.raises(ValueError, match="holds no study"):
        park.park_study(tmp_path / "nothing")


def test_gate_ranges_span_every_layer_and_seed_at_each_seeds_last_step():
    import publish

    rows = []
    for seed, last in ((0, 200), (1, 300)):
        for step in (100, last):
            for layer, (ga, gb) in enumerate(((0.9, 0.1), (0.7, 0.3))):
                late = step == last
                rows += [dict(method="zoo-lite", seed=seed, timesteps=step, layer=f"l{layer}", source="b",
                              gate=gb if late else 0.5),
                         dict(method="zoo-lite", seed=seed, timesteps=step, layer=f"l{layer}", source="a",
                              gate=ga - 0.1 * seed if late else 0.5)]
    table = publish.gate_ranges(pd.DataFrame(rows))
    assert list(table["source"]) == ["b", "a"]  # gates.csv's order, not sorted
    a = table.set_index("source").loc["a"]
    assert (a["min"], a["max"], a["layers"], a["seeds"]) == pytest.approx((0.6, 0.9, 2, 2))
    assert a["mean"] == pytest.approx((0.9 + 0.7 + 0.8 + 0.6) / 4)  # the step-100 gates (0.5) left out
    assert "| zoo-lite | b | 0.100 | 0.200 | 0.300 | 2 × 2 |" in publish.gate_ranges_markdown(pd.DataFrame(rows))
    assert publish.gate_ranges_markdown(pd.DataFrame()) == ""


def test_teacher_weights_are_the_ones_the_population_runs_were_given():
    """``publish.py --teachers``: the evidence normalised, a source below random at 0 (that these are the weights
    a ``kickstart:all`` run is given: test_kickstarted_methods_get_their_teachers_from_the_ranking); a study
    without a population method reports nothing."""
    import publish

    ranking = pd.DataFrame(dict(rank=[1, 2, 3], source=["a", "b", "c"], basis=["zero-shot", "zero-shot", "probe"],
                                zero_shot_z=[6.0, 2.0, -1.0]))
    assert list(publish.teacher_weights(ranking)["weight"]) == [0.75, 0.25, 0.0]
    text = publish.teacher_weights_markdown(ranking, ["scratch", "kickstart:all", "zoo-lite:ranked+kickstart-all"])
    assert "kickstart:all, zoo-lite:ranked+kickstart-all" in text and "| a | 1 | zero-shot | 6.00 | 0.750 |" in text
    assert publish.teacher_weights_markdown(ranking, ["kickstart", "zoo-lite:ranked+kickstart"]) == ""
    assert publish.teacher_weights_markdown(pd.DataFrame(), ["kickstart:all"]) == ""


def test_whole_policy_families_plan_with_their_own_costs(tmp_path):
    """A MuJoCo or Pendulum study's estimates use its family's reference speed and zoo-layer costs (every layer of
    a small MLP merged), not NatureCNN's; methods the family does not list cost as on Atari."""
    from zoo_rl.study.progress import (FAMILY_COSTS, RELATIVE_COST, method_seconds_per_step, reference_steps_per_second,
                                       relative_cost)

    assert relative_cost("zoo-lite:ranked+sigmoid-sum", "mujoco") == FAMILY_COSTS["mujoco"][1]["zoo-lite"]
    assert relative_cost("zoo-lite", "mujoco") > relative_cost("zoo-lite", "classic") > relative_cost("zoo-lite")
    assert relative_cost("kickstart", "mujoco") == RELATIVE_COST["kickstart"]
    assert reference_steps_per_second("atari") == reference_steps_per_second("lab2d")
    jobs = plan(StudyConfig(target="mujoco:halfcheetah+mass=1.5", zoo=[], methods=["scratch"], out=tmp_path, **TINY))
    assert method_seconds_per_step(jobs)["scratch"] == pytest.approx(1 / FAMILY_COSTS["mujoco"][0])
