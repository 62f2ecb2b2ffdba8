"""`mashup experiment`: run every unit of the protocol phase by phase, resumably, then write the report."""

from __future__ import annotations

import hashlib
import itertools
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

from mashup.config import save_config
from mashup.experiment.config import ExperimentConfig
from mashup.experiment.estimate import CostModel, Sizes, cost_model, provably_shared, unit_seconds
from mashup.experiment.executor import Executor, LocalExecutor
from mashup.experiment.jobs import AnyJob, execute_job
from mashup.experiment.own_library import repoint_library
from mashup.experiment.plan import PHASES, Context, Unit, plan_units, planned_sources, resolve
from mashup.experiment.preflight import given_library, preflight
from mashup.experiment.report import CONFIG_NAME, config_digest, drop_report, write_report
from mashup.experiment.sources import candidate_counts
from mashup.experiment.store import ResultStore, unit_file_name
from mashup.experiment.upstream import upstream_changed
from mashup.provenance import write_version

logger = logging.getLogger(__name__)
# What a run will find of a planned unit; see _record_statuses
RecordStatus = Literal["recorded", "stale", "changed", "waiting", "new"]
Pending = tuple[AnyJob, list[Unit]]  # a job still to record, with the units it serves


class ProgressSink(Protocol):
    """Told about every unit as it finishes (the CLI shows units done / total, elapsed and ETA)."""

    def start(self, total: int, estimate_seconds: float) -> None: ...

    def advance(self, unit_id: str, estimate_seconds: float, status: str, seconds: float | None = None) -> None: ...


@dataclass
class PlannedUnit:
    unit: Unit
    estimate_seconds: float
    status: RecordStatus
    shared: bool = False  # its job certainly equals another unit's: it will cost nothing

    @property
    def recorded(self) -> bool:
        """A run will skip it: its record is for the job the config resolves to, outputs unchanged."""
        return self.status == "recorded"


@dataclass
class ExperimentRun:
    """What a run did: units computed now, found already done, or served by an equal job's artifact."""

    out: Path
    computed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    report: Path | None = None


def _library_digest(library_dir: str, ids: list[str] | None) -> str:
    """The digest of the checkpoints selection may rank: ``ids`` (all of the library when None)."""
    from mashup.library import Library

    rows = sorted(f"{r.id}:{r.sha256}:{r.task}:{r.base_model}" for r in Library(library_dir).list()
                  if ids is None or r.id in ids)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


@dataclass
class _Session:
    """Run-wide state: the config, the store, the records so far, and the cost model for estimates."""

    config: ExperimentConfig
    store: ResultStore
    ctx: Context
    sizes: dict[str, Sizes]
    candidates: dict[str, int]
    model: CostModel
    digest: str

    def estimate(self, unit: Unit) -> float:
        return unit_seconds(unit, self.config, self.sizes[unit.task], self.model, self.candidates[unit.task])


def _open_session(config: ExperimentConfig, store: ResultStore) -> _Session:
    from mashup.models import default_device, resolve_precision

    targets = preflight(config, store)
    # the experiment's own library is named relative to its dir, so moving the dir keeps every job key
    library = str(Path(config.library).resolve()) if config.library else store.library_dir.name
    candidates, shape = (candidate_counts(config), None) if config.library is None else given_library(config, targets)
    ctx = Context(config=config, root=str(store.root), precision=resolve_precision(config.precision,
                                                                                   default_device()),
                  library=library, lora_shape=shape)
    sizes = {name: Sizes(len(t.train), len(t.validation), len(t.test)) for name, t in targets.items()}
    return _Session(config, store, ctx, sizes, candidates, cost_model(config), config_digest(config))


def plan_experiment(config: ExperimentConfig) -> list[PlannedUnit]:
    """Every planned unit with its estimated seconds, and what a run will find of it (for --dry-run)."""
    store = ResultStore(config.out)
    session = _open_session(config, store)
    plan = plan_units(config, session.candidates)
    statuses = _record_statuses(plan, session)
    shared = provably_shared(plan, config, session.candidates)
    scale = measured_scale(store)
    return [PlannedUnit(unit, scale * session.estimate(unit), statuses[unit.id], unit.id in shared)
            for phase in PHASES for unit in plan[phase]]


def _record_statuses(plan: dict[str, list[Unit]], session: _Session) -> dict[str, RecordStatus]:
    """Per unit, by the run's own test (``_done_record``): "recorded" (the run skips it), "stale" (a record of
    another job, or of this job whose artifact was edited or removed since: computed again), "changed" (a record
    of this job whose artifact was remade since for an equal unit, as that unit's record lists it: recorded again
    from it), "new", or "waiting": recorded, but keyed on earlier units still to do, so known only once they are.
    A phase's jobs are built from every earlier phase's records, so they are resolved here only while all of
    those are done; nothing is written."""
    statuses: dict[str, RecordStatus] = {}
    ready = True
    for phase in PHASES:
        if ready:
            _enter_phase(phase, session)
        for unit in plan[phase]:
            job, record = _done_record(unit, session) if ready else (None, None)
            if record is not None:
                session.ctx.records[unit.id] = record
                statuses[unit.id] = "recorded"
            elif not (session.store.units_dir / unit_file_name(unit.id)).exists():
                statuses[unit.id] = "new"
            elif job is None:
                statuses[unit.id] = "waiting"
            else:
                same_job = (session.store.record(unit.id) or {}).get("key") == job.key()
                vouched = same_job and session.store.vouched(job.artifact) and not upstream_changed(job)
                statuses[unit.id] = "changed" if vouched else "stale"
        ready = ready and all(statuses[unit.id] == "recorded" for unit in plan[phase])
    return statuses


def measured_scale(store: ResultStore) -> float:
    """Measured / estimated seconds of the units this dir computed so far (1.0 before any): on hardware
    unlike the cost model's, the first finished units recalibrate the estimate of the rest."""
    pairs = [(r["seconds"], r["estimate_seconds"]) for r in store.records().values()
             if not r.get("reused") and r.get("estimate_seconds")] if store.units_dir.is_dir() else []
    estimated = sum(e for _, e in pairs)
    return sum(s for s, _ in pairs) / estimated if estimated > 0 else 1.0


def run_experiment(config: ExperimentConfig, *, executor: Executor | None = None,
                   progress: ProgressSink | None = None) -> ExperimentRun:
    """Run (or resume) the whole protocol into ``config.out`` and write the report there."""
    executor = executor or LocalExecutor()
    store = ResultStore(config.out)
    outcome = ExperimentRun(out=store.root)
    session = _open_session(config, store)  # every check before anything is written
    with store.open():
        drop_report(store.root)  # rewritten at the end: an unfinished rerun must not leave the old one looking current
        save_config(config, store.root / CONFIG_NAME)
        write_version(store.root)
        plan = plan_units(config, session.candidates)
        if progress:
            shared = provably_shared(plan, config, session.candidates)
            progress.start(sum(len(units) for units in plan.values()),
                           sum(session.estimate(u) for units in plan.values() for u in units if u.id not in shared))
        for phase in PHASES:
            if phase == "selection" and config.library is None:  # the phases reading the library's paths: the dir
                repoint_library(store.root, store.library_dir)  # may be moved or copied since sources were registered
            _enter_phase(phase, session)
            _run_phase(plan[phase], session, executor, progress, outcome)
    outcome.report = write_report(store.root, config, candidates=session.candidates)
    note = store.replaced_note()
    if note:
        logger.warning(note)
    return outcome


def _enter_phase(phase: str, session: _Session) -> None:
    """Set what the phase's jobs are keyed on besides the records: selection, the library's digest."""
    if phase == "selection":
        session.ctx.library_digest = _library_digest(str(session.store.root / session.ctx.library),
                                                     planned_sources(session.ctx))


def _done_record(unit: Unit, session: _Session) -> tuple[AnyJob, dict[str, Any] | None]:
    """The unit's job, and its record when a run skips it: a record of this exact job, its artifact holding
    the files it lists and still following from its upstream artifact (upstream.py). The one test of "done"
    for both a run and its --dry-run."""
    job = resolve(unit, session.ctx)
    record = session.store.valid_record(unit.id, job.key())
    return job, None if record is None or upstream_changed(job, record["result"]) else record


def _run_phase(units: list[Unit], session: _Session, executor: Executor, progress: ProgressSink | None,
               outcome: ExperimentRun) -> None:
    """Resolve the phase's units; record those already done; run each distinct remaining job once."""
    pending: dict[str, Pending] = {}
    for unit in units:
        job, record = _done_record(unit, session)
        if record is None:
            pending.setdefault(job.key(), (job, []))[1].append(unit)
            continue
        session.ctx.records[unit.id] = _confirm(unit, record, session)
        outcome.already_done.append(unit.id)
        if progress:
            progress.advance(unit.id, session.estimate(unit), "done")
    finished, work = _claim(list(pending.values()), session.store)
    claimed = [Claimed(job, tuple(session.store.naming(job.artifact))) for job, _ in work]
    results = itertools.chain((execute_job(job) for job, _ in finished), executor.map(compute_job, claimed))
    for (job, group), result in zip(finished + work, results):
        for unit in group:
            status = "reused" if result["reused"] or unit is not group[0] else "computed"
            record = _unit_record(unit, job, result, status == "reused", session)
            session.store.write(unit.id, record)
            session.ctx.records[unit.id] = record
            (outcome.reused if status == "reused" else outcome.computed).append(unit.id)
            if progress:
                progress.advance(unit.id, session.estimate(unit), status, record["seconds"])


def _claim(pending: list[Pending], store: ResultStore) -> tuple[list[Pending], list[Pending]]:
    """The phase's remaining jobs split into those with a finished artifact (an equal unit's, or a killed run's:
    read here, not sent out) and those to compute. An artifact edited since it was recorded, or no longer following
    from its upstream, is moved aside first (its records are retired as it is computed: ``compute_job``)."""
    for job, _ in pending:
        why = store.to_replace(job.artifact) or upstream_changed(job)
        if why:
            store.discard_artifact(job.artifact, why)
    complete = [store.has_artifact(job.artifact) for job, _ in pending]
    finished = [entry for entry, done in zip(pending, complete) if done]
    work = [entry for entry, done in zip(pending, complete) if not done]
    return finished, work


class Claimed(NamedTuple):
    """A job to compute, with the units whose records name its artifact as the runner claimed it (also those a run
    killed after a discard left): ``compute_job`` retires them without reading every record again."""

    job: AnyJob
    naming: tuple[str, ...]


def compute_job(claimed: Claimed) -> dict[str, Any]:
    """``execute_job`` right after retiring the records that name its artifact: a run killed after the new
    artifact's rename, before its units' records, leaves it named by no record, reused next time rather than
    replaced again; and a job never started keeps its records."""
    ResultStore(claimed.job.root).retire_records(claimed.job.artifact, claimed.naming)
    return execute_job(claimed.job)


def _confirm(unit: Unit, record: dict[str, Any], session: _Session) -> dict[str, Any]:
    """A done unit's record as this run keeps it: under this config's digest (the same work under a changed
    config), with its manifest as verified now (one added to an older record, stats of a copied dir); written
    only when that changes it."""
    confirmed = {**record, "config_digest": session.digest}
    if confirmed != session.store.record(unit.id):
        session.store.write(unit.id, confirmed)
    return confirmed


def _unit_record(unit: Unit, job: AnyJob, result: dict[str, Any], reused: bool, session: _Session
                 ) -> dict[str, Any]:
    """What a finished unit records: its job (key and resolved spec), outputs' hashes and the artifact's
    manifest, result and timing."""
    return {"unit": unit.id, "fields": asdict(unit), "key": job.key(), "artifact": job.artifact,
            "outputs": result["outputs"], "manifest": result["manifest"], "result": result["result"],
            "reused": reused, "seconds": result["seconds"], "estimate_seconds": session.estimate(unit),
            "config_digest": session.digest, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "job": job.resolved_spec()}
