"""Plots of a transfer study, from its CSV files only (no model is loaded).

    python experiments/plot.py runs/transfer/Pong-ppo            # writes PNG and SVG beside the CSVs
    python experiments/plot.py runs/transfer/Pong-ppo --out results/pong

Figures: learning curves (mean over seeds with a 95% bootstrap band, x in agent steps), the
gates over training per layer and source, and the summary: each method's IQM final return with
its 95% stratified-bootstrap interval, beside its difference to scratch with its interval
(:mod:`zoo_rl.plots`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zoo_rl.plots import make_plots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="folder for the figures (default: the study folder)")
    args = parser.parse_args()
    try:
        written = make_plots(args.study_dir, args.out)
    except FileNotFoundError as exc:
        sys.exit(f"error: {exc}")
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
