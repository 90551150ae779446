"""The stage scripts' shared helpers (experiments/stage_helpers.sh): a published study is not trained again on a
fresh clone, while one with runs here or parked runs is taken up."""

import shutil
import subprocess
from pathlib import Path

import pytest

HELPERS = Path(__file__).resolve().parents[1] / "experiments" / "stage_helpers.sh"


def bash(folder: Path, script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"set -euo pipefail; . experiments/stage_helpers.sh; {script}"],
                          cwd=folder, capture_output=True, text=True)


@pytest.fixture
def clone(tmp_path):
    (tmp_path / "experiments").mkdir()
    shutil.copy(HELPERS, tmp_path / "experiments")
    (tmp_path / "results" / "done").mkdir(parents=True)
    (tmp_path / "results" / "done" / "study.json").write_text("{}")
    (tmp_path / "results" / "done" / "ranking.csv").write_text("source,score\n")
    return tmp_path


def test_published_study_is_skipped_on_a_fresh_clone(clone):
    out = bash(clone, "published done && echo skipped")
    assert out.stdout.strip() == "skipped"
    assert "results/done is published" in out.stderr
    assert bash(clone, "published never || echo trains").stdout.strip() == "trains"


@pytest.mark.parametrize("held", ["runs", "parked"])
def test_study_with_runs_here_or_parked_is_taken_up(clone, held):
    if held == "runs":
        (clone / "runs" / "transfer" / "done").mkdir(parents=True)
    else:
        (clone / "results" / "_inprogress").mkdir()
        (clone / "results" / "_inprogress" / "done.tar.gz").write_bytes(b"")
    assert bash(clone, "published done || echo trains").stdout.strip() == "trains"


def test_same_ranking_leaves_a_published_study_skipped(clone):
    """Copying a ranking into an empty study folder would make the stage train a published study again."""
    out = bash(clone, "same_ranking done done; published done && echo skipped")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "skipped"
    assert not (clone / "runs").exists()
    bash(clone, "same_ranking fresh done")
    assert (clone / "runs" / "transfer" / "fresh" / "ranking.csv").read_text() == "source,score\n"
