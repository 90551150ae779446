"""Transfer studies: every method x seed on one target task, resumable, with CSV tables.

``python experiments/transfer.py`` is the command line; :func:`run_study` the same from Python::

    from zoo_rl.study import StudyConfig, run_study
    results, summary = run_study(StudyConfig(target="Pong", methods=["scratch", "zoo-lite"], seeds=3))

The package, by concern: :mod:`~zoo_rl.study.methods` (the method names and their options),
:mod:`~zoo_rl.study.config` (:class:`StudyConfig`, the zoo, the plan), :mod:`~zoo_rl.study.runs` (one run:
model, training, final evaluation), :mod:`~zoo_rl.study.tables` (tables and statistics),
:mod:`~zoo_rl.study.progress` (plan, progress lines, stop message), :mod:`~zoo_rl.study.launch` (the
launchers), :mod:`~zoo_rl.study.signals` (stopping on a signal in any phase, worker processes that end with
their parent) and :mod:`~zoo_rl.study.cores` (how study processes on one machine share its cores). The library
itself (layers, extractor, export, sources, callbacks, baselines, policies) never imports this package.

Layout of a study folder (``--out``; file names in :mod:`zoo_rl.files`)::

    study.json                      the resolved StudyConfig and every command that trained the folder
    ranking.csv                     the sources ranked for the target, before training (zoo_rl.ranking)
    ranking.partial.csv             the sources scored so far, while the ranking is not finished
    <method>/seed<k>/               one resumable run (see zoo_rl.training): checkpoint.zip,
                                    evaluations.npz, Monitor CSVs, tensorboard/, config.json, gates.csv
                                    (zoo methods), final.zip, final_evaluation.json, result.json (last)
    results.csv                     one row per finished run
    summary.csv                     one row per method (plus finetune-best / finetune-mean)
    curves.csv                      every evaluation: method, seed, steps, return
    gates.csv                       gate values over training of the zoo methods

``results.csv`` and ``summary.csv`` are rebuilt from the ``result.json`` files each time a
run finishes, and written atomically: a killed study never leaves a duplicate or a half row,
and a rerun skips finished runs and resumes interrupted ones from their last checkpoint (and a ranking
stopped part-way from the sources it scored). ``tests/test_faults.py`` stops a study in every phase with
SIGINT, SIGTERM and SIGKILL, and checks what the rerun gives.
"""

from zoo_rl.study.config import (DEFAULT_ZOO_DIR, FINAL_EPISODES, HYPERPARAMS_DIR, ZOO_DIRS, RunJob, StudyConfig,
                                 check_run_files, committed_zoo, default_zoo, expand_zoo, plan, run_path,
                                 check_zoo, trained_normalisation, write_study_json, zoo_record)
from zoo_rl.study.cores import default_workers, run_threads
from zoo_rl.study.launch import WorkersLost, run_study
from zoo_rl.study.methods import (DEFAULT_METHODS, KICKSTART_DEFAULTS, METHODS, POLICY_DEFAULT_METHODS, POLICY_RANKED,
                                  RANKED_WEIGHT, ZOO_GATES, ZOO_OPTIONS, canonical_method, expand_methods, extractor_kwargs,
                                  gate_span, kickstart_schedule, kickstart_teachers, ranked_top, zoo_options)
from zoo_rl.study.progress import (RELATIVE_COST, RankingProgress, StudyProgress, describe_plan, format_duration,
                                   stop_message)
from zoo_rl.study.runs import (build_model, evaluate_final, read_ranking, resumable_ranking, run_job, run_lock,
                               run_spec, study_ranking)
from zoo_rl.study.tables import (RESULT_COLUMNS, best_finetune, collect_results, compact_summary, cross_target,
                                 gate_history, learning_curves, summarise, write_tables)

__all__ = [
    "DEFAULT_METHODS", "POLICY_DEFAULT_METHODS", "DEFAULT_ZOO_DIR", "FINAL_EPISODES", "HYPERPARAMS_DIR", "KICKSTART_DEFAULTS",
    "METHODS", "POLICY_RANKED", "RANKED_WEIGHT", "RELATIVE_COST",
    "RESULT_COLUMNS", "ZOO_DIRS", "ZOO_GATES", "ZOO_OPTIONS", "RankingProgress", "RunJob", "StudyConfig",
    "StudyProgress", "WorkersLost", "best_finetune", "build_model", "canonical_method", "check_run_files",
    "collect_results", "committed_zoo", "compact_summary", "cross_target", "default_workers", "default_zoo",
    "describe_plan", "evaluate_final", "expand_methods", "expand_zoo", "extractor_kwargs", "format_duration",
    "gate_history", "gate_span", "kickstart_schedule", "kickstart_teachers", "learning_curves", "plan", "ranked_top", "read_ranking", "resumable_ranking", "run_job",
    "run_lock", "run_path", "run_spec", "run_study", "run_threads", "stop_message", "study_ranking", "summarise",
    "trained_normalisation", "write_study_json", "check_zoo", "zoo_record", "write_tables", "zoo_options",
]
