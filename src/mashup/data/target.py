"""Resolve a target data set (named task or user file) into train/test examples and a template."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from mashup.config import DataConfig, Scoring
from mashup.data.prompts import Formulation, PromptTemplate
from mashup.data.schema import MCExample, carve_split, examples_fingerprint, load_examples, sample
from mashup.errors import DataError
from mashup.io.files import local_absolute

# Below about 1B parameters, models stay at chance on letter answers (see issue 3 measurements),
# so `auto` picks the lm-eval style cloze formulation for them.
LETTER_MIN_PARAMETERS = 1_000_000_000


@dataclass(frozen=True)
class TargetData:
    """A target's splits, prompt template and identity.

    ``fingerprint`` digests the whole task (train and test, before any cap), independent of row order and
    of how the splits were carved: a checkpoint trained on any part of it is recorded with the same value.
    ``validation`` is carved from the train split (``DataConfig.validation_size``) for model selection, so
    choices such as the learning rate never look at the reported test split; it is empty unless asked for.
    """

    name: str
    train: list[MCExample]
    test: list[MCExample]
    template: PromptTemplate
    source: str
    fingerprint: str = ""
    validation: list[MCExample] = field(default_factory=list)


def load_target(config: DataConfig) -> TargetData:
    """Train/test examples for a named task or a data file, with the configured caps applied."""
    from mashup.data.tasks import get_task, is_task_name

    if is_task_name(config.data) and not (config.train or config.test):
        task = get_task(config.data)
        train, test = task.load()
        name, template, source = task.name, task.template, task.source_name()
    else:
        train, test = _file_splits(config)
        name, template, source = file_target_name(config), PromptTemplate(), str(config.data)
    fingerprint = examples_fingerprint([*train, *test])
    if config.name:
        name = config.name
    validation: list[MCExample] = []
    if config.validation_size:  # carved before any cap, so the cap never changes which rows validate
        train, validation = _carve_validation(train, config.validation_size, config.split_seed)
    if config.max_train_examples is not None:
        train = sample(train, config.max_train_examples, config.split_seed)
    if config.max_test_examples is not None:
        test = sample(test, config.max_test_examples, config.split_seed)
    return TargetData(name=name, train=train, test=test, template=template, source=source, fingerprint=fingerprint,
                      validation=validation)


def check_sources(data: str | None, train: str | None, test: str | None) -> None:
    """Refuse a target named two ways, one of which would go unread: ``data`` beside another ``train`` file (one
    file spelled two ways is one file), or a named task beside a ``test`` file. ``data`` FILE with ``test`` means:
    train on all of FILE. Worded for the command line's options and a config's fields alike."""
    from mashup.data.tasks import is_task_name

    usage = ("give data (a task or file; test carved with test_size) or train (and test), not both (--data, --train, "
             "--test on the command line)")
    if data and train and not _same_file(data, train):
        raise DataError(f"data {data} and train {train} both name the train data (data would go unread)", None,
                        usage)
    if data and test and not train and is_task_name(data):
        raise DataError(f"test {test} given with the named task {data}, which has its own test split", None, usage)


def _same_file(a: str, b: str) -> bool:
    return a == b or Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def recorded_data_config(config: DataConfig) -> DataConfig:
    """``config`` as an output dir records it: local files and dirs absolute and the target's name written out (it
    is derived from the paths as given), so that the record (a run's ``run_config.yaml`` is a valid ``--config``)
    names the same target from any working dir; a named task as given."""
    from mashup.data.tasks import is_task_name

    if is_task_name(config.data) and not (config.train or config.test):
        return config
    return config.model_copy(update={"data": local_absolute(config.data), "train": local_absolute(config.train),
                                     "test": local_absolute(config.test),
                                     "name": config.name or file_target_name(config)})


def file_target_name(config: DataConfig) -> str:
    """A file target's name: the file's stem, or its directory's name for files called train/test/data."""
    path = Path(config.train or config.data)
    if path.name in ("", ".", ".."):  # "." or ".." (a saved dataset dir, from inside or below it): that dir's name
        path = Path(os.path.normpath(path.expanduser().absolute()))
    generic = {"train", "test", "validation", "val", "dev", "data", "all"}
    return path.parent.name if path.stem.lower() in generic and path.parent.name else path.stem


def _carve_validation(train: list[MCExample], size: float, seed: int) -> tuple[list[MCExample], list[MCExample]]:
    try:
        return carve_split(train, size, seed)
    except DataError:
        raise DataError(f"validation size {size:g} leaves an empty split of {len(train)} train examples", None,
                        "choose a validation size between 0 and the number of train examples") from None


def _file_splits(config: DataConfig) -> tuple[list[MCExample], list[MCExample]]:
    if config.train and config.test:
        return load_examples(config.train), load_examples(config.test)
    examples = load_examples(config.train or config.data)
    if config.test:
        return examples, load_examples(config.test)
    return carve_split(examples, config.test_size, config.split_seed)


def resolve_formulation(scoring: Scoring, parameter_count: int) -> Formulation:
    if scoring != "auto":
        return scoring
    return "letter" if parameter_count >= LETTER_MIN_PARAMETERS else "cloze"
