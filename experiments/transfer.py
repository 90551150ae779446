"""Run a transfer study: every method x seed on one target, then CSV tables.

    python experiments/transfer.py --target Pong
    python experiments/transfer.py --target Breakout --methods scratch,zoo-lite --seeds 5
    python experiments/transfer.py --target lab2d:commons_harvest --zoo agents/zoo-lab2d agents/zoo
    python experiments/transfer.py --target Pong --methods zoo-lite,zoo-lite:sigmoid,zoo-lite:noalign
    python experiments/transfer.py --aggregate runs/transfer/Pong-ppo runs/transfer/Breakout-ppo

Rerunning the same command skips finished runs and resumes interrupted ones; Ctrl-C stops it at any moment
with a line that says where it stopped. A study longer than one machine's life: the same command with --park
packs its finished runs into results/_inprogress/ (commit that file), and the command without --park takes them
up on another machine.
"""

from __future__ import annotations

import os
import signal
import sys


def _stopped_while_starting(signum, frame):  # until the study machinery is imported (a few seconds)
    os.write(2, b"\nStopped while starting, before anything was written: run the same command to start.\n")
    os._exit(130)


if __name__ == "__main__":
    for _signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signal, _stopped_while_starting)

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

from zoo_rl.files import RANKING, RESULT, RESULTS, SUMMARY, write_csv_atomic  # noqa: E402
from zoo_rl.study import (METHODS, ZOO_OPTIONS, StudyConfig, WorkersLost, compact_summary, cross_target,  # noqa: E402
                          describe_plan, extractor_kwargs, plan, run_study)
from zoo_rl.study.config import ROOT, add_study_arguments, study_from_args  # noqa: E402
from zoo_rl.study.launch import DISK_FULL  # noqa: E402
from zoo_rl.study.park import park_study  # noqa: E402
from zoo_rl.study.signals import second_signal_exits  # noqa: E402

if __name__ == "__main__":  # run_study handles both in every phase
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

METHODS_HELP = ("methods: " + "; ".join(f"{k}: {v}" for k, v in METHODS.items())
                + ". Options of zoo, zoo-lite and uniform: <method>:<option>[+<option>] with options "
                + ", ".join(ZOO_OPTIONS) + ", gate-lr<N>, align-lr<N>, bank-lr<N> (that group's learning rate x N), "
                "ranked or top<k> (start from the best-ranked source(s)), e.g. zoo-lite:sigmoid, "
                "zoo-lite:ranked+gate-lr100.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, epilog=METHODS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_arguments(p, required=False)
    p.add_argument("--dry-run", action="store_true",
                   help="check the study and list its runs (zoo, method, seed, done or not), train nothing")
    p.add_argument("--park", action="store_true",
                   help="instead of training: pack the study's finished runs into results/_inprogress/<study folder "
                        "name>.tar.gz, to commit; the same command without --park takes them up on any machine")
    p.add_argument("--aggregate", nargs="+", type=Path, default=None, metavar="STUDY_DIR",
                   help="instead of training: one table across finished studies, written to --out")
    args = p.parse_args(argv)
    if args.aggregate is None and not args.target:
        p.error("--target is required (or --aggregate STUDY_DIR ...)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.aggregate is not None:
        out = args.out or ROOT / "results" / "cross_target.csv"
        table = cross_target(args.aggregate)
        write_csv_atomic(table, out)
        print(table.to_string(index=False))
        print(f"\nwrote {out}")
        return
    study = study_from_args(args)
    try:
        if args.dry_run:
            print_plan(study)
            return
        if args.park:
            park(study)
            return
        results, summary = run_study(study)
    except (ValueError, FileNotFoundError) as exc:
        sys.exit(f"error: {exc}")
    except KeyboardInterrupt:
        second_signal_exits()
        sys.exit(130)  # run_study has said where it stopped and how to resume
    except WorkersLost:
        sys.exit(1)  # run_study has named the runs and said how to resume
    except OSError as exc:
        if exc.errno in DISK_FULL:
            sys.exit(1)  # run_study has said so, and how to resume
        raise
    if summary.empty:
        return
    print("\n" + compact_summary(summary).to_string(index=False))
    out = Path(study.out)
    print(f"\ntables: {out / RESULTS}, {out / SUMMARY} (every column), {out / RANKING}")
    print(f"plots:  python experiments/plot.py {out}")
    print(f"live:   tensorboard --logdir {out}")


def park(study: StudyConfig) -> None:
    """Pack the finished runs of ``study`` for the repository (:mod:`zoo_rl.study.park`) and say what is left."""
    plan(study)  # resolves the study folder
    archive, runs, unfinished = park_study(study.out)
    print(f"Parked {runs} finished run(s) of {study.out} in {archive} ({archive.stat().st_size / 1e6:.1f} MB): "
          "commit it; the same command without --park takes them up.")
    if unfinished:
        print(f"Not parked ({len(unfinished)}, they train again from their start): "
              + ", ".join(str(p.relative_to(study.out)) for p in unfinished))


def print_plan(study: StudyConfig) -> None:
    """The plan, then the runs ``study`` would train, in order, and which are finished already."""
    jobs = plan(study)
    print(describe_plan(study, jobs))
    for job in jobs:
        state = "done" if (job.run_dir / RESULT).is_file() else "to run"
        gates = extractor_kwargs(job.method, study.normalisation).get("normalisation")
        print(f"  {job.method:<40} seed {job.seed}  {state}" + (f"  ({gates} gates)" if gates else ""))


if __name__ == "__main__":
    main()
