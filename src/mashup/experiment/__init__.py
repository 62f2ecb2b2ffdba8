"""The paper's protocol as one crash-safe command: `mashup experiment` and `mashup report`.

Leave-one-out over tasks, several seeds, a learning-rate sweep per arm chosen on a validation split,
the selection baselines, and Tables 3-6 / Figures 2-4::

    from mashup.experiment import load_profile, run_experiment
    run = run_experiment(load_profile("cpu-mini"))
    print(run.report)

Names are imported on first use (see mashup.lazy), so the CLI registers `mashup experiment` cheaply.
"""

from mashup.lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["ExperimentConfig", "MergeGrid", "TaskSpec", "load_experiment_config", "load_profile",
                     "profile_names"], "mashup.experiment.config"),
    **dict.fromkeys(["Executor", "LocalExecutor"], "mashup.experiment.executor"),
    "write_report": "mashup.experiment.report",
    **dict.fromkeys(["ExperimentRun", "PlannedUnit", "plan_experiment", "run_experiment"], "mashup.experiment.runner"),
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
