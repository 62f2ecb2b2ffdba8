"""The target-data options, defined once for every CLI verb that reads target data.

A verb declares one parameter ``data: DataOptions`` and is decorated with :func:`with_data_options`;
the decorator puts ``--data``, ``--name``, ``--train``, ``--test``, ``--test-size``, ``--validation-size``,
``--scoring``, ``--max-length``, ``--max-train-examples`` and ``--max-test-examples`` in its signature (so typer
shows them in ``--help`` with their defaults) and hands the verb one :class:`DataOptions` holding what was given.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Optional, TypeVar

import typer

from mashup.config import DataConfig
from mashup.errors import MashupError

F = TypeVar("F", bound=Callable[..., Any])
_DEFAULTS = {name: field.default for name, field in DataConfig.model_fields.items()}
PANEL = "Target data"


def _option(flag: str, help_text: str, default_shown: str | None = None) -> typer.models.OptionInfo:
    shown = default_shown if default_shown is not None else _DEFAULTS.get(flag.lstrip("-").replace("-", "_"))
    return typer.Option(flag, help=help_text, show_default=str(shown) if shown is not None else False,
                        rich_help_panel=PANEL)


# Every option defaults to None so that a verb can tell what was given (e.g. to override a YAML config);
# the defaults shown are DataConfig's, which apply when the option is left out.
_OPTIONS: dict[str, tuple[type, typer.models.OptionInfo]] = {
    "data": (str, _option("--data", "named task (see `mashup tasks list`) or a data file/dir (JSONL, CSV, Parquet, "
                                    "saved HF dataset); not with --train, which names the data itself", "none")),
    "name": (str, _option("--name", "the target's name, recorded with results and library entries", "the task's "
                                    "name, or the file's (its directory's for files called train/test)")),
    "train": (str, _option("--train", "explicit train file (with --test: no carving)", "none")),
    "test": (str, _option("--test", "explicit test file (with --data FILE: train on all of FILE)",
                           "carved from the data with --test-size")),
    "test_size": (float, _option("--test-size", "fraction (<1) or count (>=1) of a single data file carved out as "
                                                "test")),
    "validation_size": (float, _option("--validation-size", "fraction (<1) or count (>=1) of the train split "
                                                            "carved out as validation (eval --split validation); "
                                                            "0: none")),
    "scoring": (str, _option("--scoring", "letter | cloze | auto (auto: cloze below 1B parameters, else letter)")),
    "max_length": (int, _option("--max-length", "max tokens per example (longer prompts are cut from the left)")),
    "max_train_examples": (int, _option("--max-train-examples", "cap on train examples (seeded sample)", "all")),
    "max_test_examples": (int, _option("--max-test-examples", "cap on test examples (seeded sample)", "all")),
}


@dataclass(frozen=True)
class DataOptions:
    """The data options as given on the command line (None: not given)."""

    data: str | None = None
    name: str | None = None
    train: str | None = None
    test: str | None = None
    test_size: float | None = None
    validation_size: float | None = None
    scoring: str | None = None
    max_length: int | None = None
    max_train_examples: int | None = None
    max_test_examples: int | None = None

    def given(self) -> dict[str, Any]:
        """The options that were given, as DataConfig fields (``--train`` alone stands for ``--data``); a
        one-line error for ``--data`` with ``--train`` (or a named task with ``--test``)."""
        from mashup.data.target import check_sources

        check_sources(self.data, self.train, self.test)
        values = {key: value for key, value in asdict(self).items() if value is not None}
        if "data" not in values and self.train:
            values["data"] = self.train
        return values

    def config(self) -> DataConfig:
        """The DataConfig these options describe; a one-line error when no data was given."""
        values = self.given()
        if "data" not in values:
            raise MashupError("no target data given", None, "pass --data TASK_OR_FILE, or --train FILE [--test FILE]")
        return DataConfig.model_validate(values)


def with_data_options(fn: F) -> F:
    """Replace ``fn``'s ``data: DataOptions`` parameter by the shared data options (see the module docstring)."""
    signature = inspect.signature(fn, eval_str=True)
    if "data" not in signature.parameters:
        raise TypeError(f"{fn.__name__} has no 'data' parameter to expand")
    injected = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                  annotation=Annotated[Optional[kind], option])  # noqa: UP007 (typer needs Optional)
                for name, (kind, option) in _OPTIONS.items()]
    parameters = []
    for parameter in signature.parameters.values():
        if parameter.name == "data":
            continue
        kind = inspect.Parameter.KEYWORD_ONLY if parameter.default is not inspect.Parameter.empty \
            else parameter.kind
        parameters.append(parameter.replace(kind=kind))
    required = [p for p in parameters if p.default is inspect.Parameter.empty]
    optional = [p for p in parameters if p.default is not inspect.Parameter.empty]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        options = DataOptions(**{name: kwargs.pop(name, None) for name in _OPTIONS})
        return fn(*args, data=options, **kwargs)

    new_signature = signature.replace(parameters=[*required, *injected, *optional])
    wrapper.__signature__ = new_signature  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in new_signature.parameters.values()}
    return wrapper  # type: ignore[return-value]
