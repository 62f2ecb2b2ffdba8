"""User-facing errors: one line saying what went wrong, where, and how to fix it."""

from __future__ import annotations

from collections.abc import Sequence


class MashupError(Exception):
    """An error caused by user input; the CLI prints it as one line and exits non-zero."""

    def __init__(self, what: str, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        parts = [self.what]
        if self.where:
            parts.append(f"in {self.where}")
        text = " ".join(parts)
        if self.fix:
            text += f"; {self.fix}"
        return text


def short_reason(text: str, limit: int = 200) -> str:
    """A third-party error's text for one of our lines: whitespace collapsed, ``clipped`` to ``limit`` characters
    (transformers' and huggingface_hub's messages may run to a paragraph)."""
    return clipped(" ".join(text.split()), limit)


def clipped(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, a cut one ending in "..."."""
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


class DataError(MashupError):
    """Malformed or missing target data."""


class CheckpointError(MashupError):
    """A checkpoint that cannot be read, is corrupt, or is incompatible."""


class LibraryError(MashupError):
    """A catalog problem: unknown id, duplicate, unreadable database."""


class AlreadyRegistered(LibraryError):
    """Weights added that the catalog holds already, under ``checkpoint_id``."""

    def __init__(self, what: str, where: str | None = None, fix: str | None = None, checkpoint_id: str = "") -> None:
        super().__init__(what, where, fix)
        self.checkpoint_id = checkpoint_id


class MergeError(MashupError):
    """A merge that cannot be carried out with the given inputs or settings."""


class TrainingError(MashupError):
    """Training that cannot go on: its gradients stopped being finite."""


class LibraryBusyError(LibraryError):
    """Another process holds the library's write lock longer than the busy timeout."""


def listed(names: Sequence[str], shown: int = 5) -> str:
    """Names for one line of a message: the first ``shown``, then how many more ("a, b, c and 12 more")."""
    head = ", ".join(names[:shown])
    return head if len(names) <= shown else f"{head} and {len(names) - shown} more"
