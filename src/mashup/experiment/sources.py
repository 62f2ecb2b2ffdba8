"""How many candidates each target's selection ranks: the number the plan is made of (oracle merges, estimates).

Leave-one-out, a target's candidates are the other tasks' sources. From a given library they are what
``mashup.candidates.find_mergeable_candidates`` keeps, as the selection job does: fresh, on the base, not
trained on the target, and mergeable under the arms' method and each grid method. The runner counts them
before anything runs, and ``mashup report`` reads the same number back from the recorded selections.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mashup.errors import MashupError
from mashup.experiment.analysis import Records
from mashup.experiment.config import ExperimentConfig
from mashup.experiment.plan import Unit, selection_merges

if TYPE_CHECKING:
    from mashup.candidates import Candidates
    from mashup.data.target import TargetData

logger = logging.getLogger(__name__)


def usable_candidates(config: ExperimentConfig, targets: dict[str, TargetData]) -> dict[str, Candidates]:
    """Per target, the given library's checkpoints its selection may rank, with those left out and why."""
    from mashup.candidates import find_mergeable_candidates, log_left_out
    from mashup.library import Library

    if config.library is None:
        raise ValueError("usable_candidates needs a config with a given library")
    library = Library(config.library)
    merges = selection_merges(config)
    base_id = selection_base_identity(config.base)
    usable = {name: find_mergeable_candidates(library, config.base, config.mode, target, merges,
                                              base_id=base_id, log_rejected=False)
              for name, target in targets.items()}
    log_left_out(usable.values())  # once, not once per target
    return usable


def selection_base_identity(base: str) -> str | None:
    """The base's content identity as the selection job will see it (``base_identity`` of its workspace's dir): a
    named model not converted yet is converted now (a dry run too: into the model cache, as its first unit would
    do). Without this the count compared records by spelling only, and refused a library registered under the
    converted dir's path."""
    from mashup.library.identity import base_identity, resolve_identity
    from mashup.named_models import NAMED_MODELS, materialize_named_model

    identity = resolve_identity(base)
    if identity is None and base in NAMED_MODELS:
        try:
            identity = base_identity(materialize_named_model(base))
        except MashupError as exc:  # its first unit will say so; until then, records are matched by spelling
            logger.warning("counting candidates by base name only: %s", exc.line())
    return identity


def candidate_counts(config: ExperimentConfig, *, usable: dict[str, Candidates] | None = None,
                     records: Records | None = None) -> dict[str, int]:
    """Candidates per target: the other tasks' leave-one-out; from a given library, the ``usable`` ones when
    counted (``usable_candidates``), else those the recorded selections ranked (0 before one ran)."""
    if config.library is None:
        return {task.name: len(config.tasks) - 1 for task in config.tasks}
    if usable is not None:
        return {name: len(found.records) for name, found in usable.items()}
    records = records or {}
    selections = {task.name: records.get(Unit("selection", "select", task.name, f"samples:{config.samples}").id)
                  for task in config.tasks}
    return {name: len(record["result"]["ranking"]) if record else 0 for name, record in selections.items()}
