"""The shape a unit record must have to be read: what the runner writes and what its readers use.

A record is written whole by the runner; one of another shape (valid JSON, but ``{}``, a list, a result
without its numbers) is a hand edit or a stray file, and counts as unreadable: a run redoes its unit and
``mashup report`` names its file, as for a file that is not JSON. The models list what the readers take:
later units' resolution, the analysis and the tables. Where a reader rebuilds a dataclass from a dict
(``EvalResult``, ``CurvePoint``, ``CheckpointScore``) the shape is exactly its fields; elsewhere more keys
are allowed. Numbers are strict: ``"0.5"`` is not a number.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mashup.errors import MashupError
from mashup.experiment.manifest import RESULT


class _Open(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class _Exact(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class _Evaluation(_Exact):  # mashup.evaluation.EvalResult: a merge's or the base's test figures become step 0
    accuracy: float
    loss: float
    n: int
    seconds: float
    precision: str = "fp32"


class _Score(_Open):
    accuracy: float
    loss: float


class _Point(_Exact):  # mashup.training.CurvePoint
    step: int
    accuracy: float
    loss: float
    train_loss: float | None
    seconds: float


class _Ranked(_Exact):  # mashup.scoring.CheckpointScore
    id: str
    task: str | None
    kind: str
    loss: float
    accuracy: float | None
    n: int
    seconds: float
    cached: bool = False


class _Lr(_Open):
    lr: float


class _Drop(_Open):
    drop: float


class _Eval(_Open):
    test: _Evaluation


class _Select(_Open):
    ranking: list[_Ranked]
    selection_uncached: float


class _Merge(_Open):
    test: _Evaluation
    merge_seconds: float


class _Train(_Open):
    curve: list[_Point] = Field(min_length=1)
    total_steps: int
    train_seconds: float
    eval_seconds: float
    test: _Score
    validation: _Score
    train_config: _Lr
    early_drop: _Drop


class _Source(_Open):
    checkpoint_id: str
    digest: str


class _Fields(_Exact):  # dataclasses.asdict(plan.Unit)
    phase: str
    kind: str
    task: str
    arm: str
    seed: int | None
    lr: float | None


class _FileEntry(_Exact):  # see manifest.py
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    sha256: str


class _Record(_Open):
    unit: str
    fields: _Fields
    key: str
    artifact: str
    outputs: dict[str, str]
    result: dict[str, Any]
    seconds: float
    estimate_seconds: float | None = None
    reused: bool = False
    config_digest: str | None = None
    manifest: dict[str, _FileEntry] | None = None  # records written before manifests have none


RESULTS: dict[str, type[BaseModel]] = {"eval": _Eval, "select": _Select, "merge": _Merge, "train": _Train,
                                       "source": _Source}


def record_problem(record: Any) -> str | None:
    """Why ``record`` (parsed JSON) is not a readable unit record; None when it is."""
    from mashup.experiment.plan import Unit  # here: plan brings the jobs' imports (torch), which the store need not

    if not isinstance(record, dict) or not isinstance(record.get("unit"), str):
        return "not a unit record"
    try:
        unit = Unit(**_Record.model_validate(record).fields.model_dump())
    except ValidationError as exc:
        return f"not a unit record: {_first_error(exc)}"
    if unit.id != record["unit"]:
        return f"not a unit record: its fields are those of unit {unit.id!r}"
    if unit.kind not in RESULTS:
        return f"not a unit record: no unit is of kind {unit.kind!r}"
    problem = result_problem(unit.kind, record["result"])
    return f"not a unit record: result.{problem}" if problem else None


def result_problem(kind: str, result: Any) -> str | None:
    """Why ``result`` (parsed JSON) is not what a job of ``kind`` returns, as its readers take it; None when it is."""
    if kind not in RESULTS:
        return f"no job is of kind {kind!r}"
    try:
        RESULTS[kind].model_validate(result)
    except ValidationError as exc:
        return _first_error(exc)
    return None


def artifact_result(directory: Path) -> tuple[dict[str, Any] | None, str | None]:
    """An artifact dir's result, or why it is not complete: its result file, written last, is gone or not a
    result of the artifact's kind (``<kind>-<key>``; a hand edit: the file is volatile, in no manifest)."""
    try:
        result = json.loads((directory / RESULT).read_text())
    except FileNotFoundError:
        return None, f"{RESULT} removed"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{RESULT} unreadable: {exc}"
    problem = result_problem(directory.name.rsplit("-", 1)[0], result)
    return (None, f"{RESULT} is not a unit result: {problem}") if problem else (result, None)


def finished_result(directory: Path) -> dict[str, Any] | None:
    """The result of a finished artifact; None when there is none. One there but incomplete is refused: the
    runner moves such an artifact aside, to compute it again, before any job sees it."""
    if not directory.exists():
        return None
    result, problem = artifact_result(directory)
    if problem:
        raise MashupError(f"incomplete artifact ({problem})", str(directory),
                          "rerun `mashup experiment`: it moves the artifact aside and computes it again")
    return result


def _first_error(exc: ValidationError) -> str:
    """``curve.0.step: field required``, from pydantic's first error."""
    first = exc.errors()[0]
    message = first["msg"][:1].lower() + first["msg"][1:]
    return f"{'.'.join(str(part) for part in first['loc'])}: {message}"
