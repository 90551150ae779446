"""The README's Python examples run as written (each in a fresh process, in a folder of its own)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_the_readme_has_its_examples():
    assert len(EXAMPLES) >= 3  # ZooExtractor with PPO on Pong; zoo_policy with SAC, and with PPO on an MLP


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(EXAMPLES)), ids=[f"example{i + 1}" for i in range(len(EXAMPLES))])
def test_readme_example_runs_as_written(tmp_path, index):
    (tmp_path / "agents").symlink_to(ROOT / "agents")  # the committed zoo, where the examples name it
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", EXAMPLES[index]], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
