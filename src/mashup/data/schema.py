"""The common multiple-choice format and generic loaders for user data files."""

from __future__ import annotations

import hashlib
import json
import math
import random
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mashup.errors import DataError, clipped

LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class MCExample:
    """One multiple-choice question: ``answer`` is the 0-based index into ``choices``."""

    question: str
    choices: tuple[str, ...]
    answer: int
    context: str | None = None


def parse_answer(value: Any, n_choices: int, where: str) -> int:
    """Accept a 0-based index (also as text, or as an integral float such as 3.0, which pandas writes for an
    integer column with a missing value) or a label letter (A, b, ...) and return the index."""
    if isinstance(value, bool):
        raise DataError(f"field 'answer' must be an index or a letter, got {value!r}", where,
                        "use 0-based index or A, B, ...")
    text = value.strip() if isinstance(value, str) else None
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        index = int(value)
    elif text is not None and (number := _integral(text)) is not None:
        index = number
    elif text is not None and len(text) == 1 and text.upper() in LETTERS:
        index = LETTERS.index(text.upper())
    else:
        raise DataError(f"field 'answer' must be an index or a letter, got {value!r}", where,
                        "use 0-based index or A, B, ...")
    if not 0 <= index < n_choices:
        raise DataError(f"field 'answer' is {value!r} but there are {n_choices} choices", where, "fix the answer")
    return index


def _integral(text: str) -> int | None:
    """``text`` as an integer when it reads as one ("3", "3.0"), else None."""
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _missing(value: Any) -> bool:
    """None, or NaN (a missing value as pandas writes it)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _blank(value: Any) -> bool:
    return isinstance(value, str) and not value.strip()


def example_from_row(row: dict[str, Any], where: str) -> MCExample:
    """Validate one raw row (question, choices, answer, optional context)."""
    if not isinstance(row, dict):
        raise DataError("row is not an object", where, "each row needs question, choices, answer")
    for field in ("question", "choices", "answer"):
        # an empty answer cell (CSV) is a missing answer too, not a malformed one
        if field not in row or _missing(row[field]) or (field == "answer" and _blank(row[field])):
            raise DataError(f"missing field '{field}'", where, "each row needs question, choices, answer")
    question, choices = row["question"], row["choices"]
    if isinstance(choices, str):
        try:
            choices = json.loads(choices)
        except json.JSONDecodeError:
            raise DataError("field 'choices' is a string, not a list", where, "give a JSON list of strings") from None
        if isinstance(choices, str):  # '"ab"' decodes to a string, which would split into characters
            raise DataError(f"field 'choices' is a JSON string ({clipped(repr(choices), 40)}), not a list", where,
                            'give a JSON list of strings, e.g. ["a", "b"]')
    if not isinstance(question, str):
        raise DataError("field 'question' must be a string", where, "fix the row")
    if not isinstance(choices, (list, tuple)) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise DataError("field 'choices' must be a list of at least 2 strings", where, "fix the row")
    if len(choices) > len(LETTERS):
        raise DataError(f"too many choices ({len(choices)})", where, f"at most {len(LETTERS)}")
    context = row.get("context")
    if context is not None and not isinstance(context, str):
        raise DataError("field 'context' must be a string", where, "fix the row")
    answer = parse_answer(row["answer"], len(choices), where)
    return MCExample(question=question, choices=tuple(choices), answer=answer, context=context or None)


def check_file_example(example: MCExample, where: str) -> MCExample:
    """The checks a row of a user's data file gets on top of :func:`example_from_row`: a non-blank question and
    choices, and distinct choices. Named tasks skip them: their rows are scored as published (docs/tasks.md).

    Choices are compared after stripping surrounding whitespace: "b" and "b " read the same in a letter prompt
    and differ in a cloze score only by a whitespace token, and with tied scores argmax picks the first copy,
    so a gold answer repeating an earlier choice could never be scored correct.
    """
    if _blank(example.question):
        raise DataError("field 'question' is empty", where, "give the question's text")
    first: dict[str, int] = {}
    for index, choice in enumerate(example.choices):
        if _blank(choice):
            raise DataError(f"field 'choices' item {index} is empty", where,
                            "give every choice a text, or drop it (and renumber the answer)")
        if (earlier := first.setdefault(choice.strip(), index)) != index:
            raise DataError(f"field 'choices' holds {clipped(repr(choice.strip()), 60)} twice (items {earlier} and "
                            f"{index})", where, "make the choices distinct")
    return example


# "utf-8-sig" reads plain UTF-8 too, and drops the byte-order mark Excel and some editors put first.
ENCODING = "utf-8-sig"
JSONL_FIX = "fix the line: each line holds one whole JSON object (JSONL)"
JSON_FIX = f"{JSONL_FIX}, or the file holds one JSON array of row objects"


def read_rows(path: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    """``(where, row)`` for each row of a JSONL/JSON/CSV/Parquet file or saved HF dataset dir; a file that cannot
    be read is a DataError naming it (and the line, where there is one)."""
    try:
        yield from _rows_by_format(path)
    except UnicodeDecodeError:
        raise _not_text_error(path) from None


def _rows_by_format(path: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if path.is_dir():
        yield from _read_hf_dir(path)
    elif suffix == ".json" and _first_char(path) == "[":
        yield from _read_json_array(path)
    elif suffix in {".jsonl", ".json"}:
        yield from _read_jsonl(path, JSON_FIX if suffix == ".json" else JSONL_FIX)
    elif suffix == ".csv":
        yield from _read_csv(path)
    elif suffix == ".parquet":
        yield from _read_parquet(path)
    else:
        raise DataError(f"unsupported data format '{suffix}'", str(path),
                        "use .jsonl, .csv, .parquet or a saved HF dataset dir")


def _not_text_error(path: Path) -> DataError:
    with open(path, "rb") as handle:
        head = handle.read(2)
    if head == b"\x1f\x8b":
        return DataError("gzip-compressed, not UTF-8 text", str(path), "decompress it (gunzip) first")
    kind = " (UTF-16?)" if head in (b"\xff\xfe", b"\xfe\xff") else ""
    return DataError(f"not UTF-8 text{kind}", str(path), "save it as UTF-8 JSONL or CSV")


def _first_char(path: Path) -> str:
    """The first non-whitespace character of a text file ('' if there is none)."""
    with open(path, encoding=ENCODING) as handle:
        while chunk := handle.read(4096):
            if stripped := chunk.lstrip():
                return stripped[0]
    return ""


def _read_json_array(path: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    """A .json file holding one JSON array of rows, as ``load_dataset("json")`` also accepts."""
    with open(path, encoding=ENCODING) as handle:
        try:
            rows = json.load(handle)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON ({exc.msg})", f"{path}:{exc.lineno}", "fix the JSON array") from None
    for number, row in enumerate(rows, start=1):
        yield f"{path} row {number}", row


def _read_jsonl(path: Path, fix: str) -> Iterable[tuple[str, dict[str, Any]]]:
    with open(path, encoding=ENCODING) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{number}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON ({exc.msg})", f"{path}:{number}", fix) from None


def _read_csv(path: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    import csv

    with open(path, newline="", encoding=ENCODING) as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            yield f"{path}:{number}", dict(row)


def _read_parquet(path: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except pa.ArrowException as exc:
        reason = " ".join(str(exc).split())  # one line, whatever Arrow says
        raise DataError(f"not a readable Parquet file ({reason})", str(path),
                        "write it again (e.g. pandas DataFrame.to_parquet) or use JSONL/CSV") from None
    for number, row in enumerate(table.to_pylist(), start=1):
        yield f"{path} row {number}", row


def _read_hf_dir(path: Path) -> Iterable[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(f"not a saved HF dataset ({exc})", str(path), "save it with Dataset.save_to_disk") from None
    if isinstance(dataset, datasets.DatasetDict):
        raise DataError("a DatasetDict, not one split", str(path), "point at one split's directory")
    for number, row in enumerate(dataset, start=1):
        yield f"{path} row {number}", row


DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")  # what read_rows reads, besides a saved dataset dir


def data_not_found(name: str, task_names: Iterable[str], tasks_hint: str) -> DataError:
    """The error for ``name`` that is neither a known task nor an existing file: a name close to a task's is
    taken for a misspelt task (with the suggestion), anything else for a missing file."""
    import difflib

    looks_like_path = Path(name).suffix.lower() in DATA_SUFFIXES or "/" in name or "\\" in name
    close = [] if looks_like_path else difflib.get_close_matches(name, list(task_names), n=1)
    if close:
        return DataError(f"unknown task '{name}'", None, f"did you mean {close[0]}? (or use {tasks_hint})")
    return DataError("data file not found", name, f"check the path, or use {tasks_hint}")


def load_examples(path: str | Path) -> list[MCExample]:
    """Load and validate a JSONL / CSV / Parquet file or a saved HF dataset dir."""
    from mashup.data.tasks import TASKS

    path = Path(path)
    if not path.exists():
        raise data_not_found(str(path), TASKS, "a task name from `mashup tasks list`")
    examples = [check_file_example(example_from_row(row, where), where) for where, row in read_rows(path)]
    if not examples:
        raise DataError("no examples", str(path), "the file is empty")
    return examples


def carve_split(
    examples: Sequence[MCExample], test_size: float, seed: int
) -> tuple[list[MCExample], list[MCExample]]:
    """Deterministically split into (train, test); ``test_size`` < 1 is a fraction, else a count."""
    count = round(len(examples) * test_size) if test_size < 1 else int(test_size)
    if not 0 < count < len(examples):
        raise DataError(f"test size {test_size} leaves an empty split of {len(examples)} examples", None,
                        "choose a --test-size between 0 and the number of examples")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    test_ids = set(order[:count])
    train = [ex for i, ex in enumerate(examples) if i not in test_ids]
    test = [ex for i, ex in enumerate(examples) if i in test_ids]
    return train, test


def sample(examples: Sequence[MCExample], n: int, seed: int) -> list[MCExample]:
    """``n`` examples drawn without replacement with a fixed seed (all when n >= len)."""
    if n >= len(examples):
        return list(examples)
    return random.Random(seed).sample(list(examples), n)


def fingerprint_row(example: MCExample) -> list:
    """What a fingerprint digests of an example (its JSON): context, question, choices and answer."""
    return [example.context, example.question, list(example.choices), example.answer]


def examples_fingerprint(examples: Iterable[MCExample]) -> str:
    """A digest of a set of examples: the same for any order and any split of the same rows."""
    rows = sorted(hashlib.sha256(json.dumps(fingerprint_row(ex)).encode()).digest() for ex in examples)
    return hashlib.sha256(b"".join(rows)).hexdigest()
