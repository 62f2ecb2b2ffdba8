"""The paper's protocol as one crash-safe command: `mashup experiment` and `mashup report`.

Leave-one-out over tasks, several seeds, a learning-rate sweep per arm chosen on a validation split,
the selection baselines, and Tables 3-6 / Figures 2-4::

    from mashup.experiment import load_profile, run_experiment
    run = run_experiment(load_profile("cpu-mini"))
    print(run.report)
"""

from mashup.experiment.config import ExperimentConfig, MergeGrid, TaskSpec, load_experiment_config, load_profile, \
    profile_names
from mashup.experiment.executor import Executor, LocalExecutor
from mashup.experiment.report import write_report
from mashup.experiment.runner import ExperimentRun, PlannedUnit, plan_experiment, run_experiment

__all__ = ["ExperimentConfig", "ExperimentRun", "Executor", "LocalExecutor", "MergeGrid", "PlannedUnit", "TaskSpec",
           "load_experiment_config", "load_profile", "plan_experiment", "profile_names", "run_experiment",
           "write_report"]
