from __future__ import annotations

from pathlib import Path

import pytest

from mashup.switch.candidates import Candidate
from tests.switch.helpers import candidate, save_other_base
from tests.tiny import save_tiny_lora


@pytest.fixture(scope="session")
def other_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with a different tokenizer (and a chat template)."""
    return save_other_base(tmp_path_factory.mktemp("other-base"))


@pytest.fixture(scope="session")
def expert_lora(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> Path:
    return save_tiny_lora(tiny_base, tmp_path_factory.mktemp("expert") / "lora", seed=1)


@pytest.fixture(scope="session")
def trio(tiny_base: Path, other_base: Path, expert_lora: Path) -> list[Candidate]:
    """aligned (tests' tokenizer), other (own tokenizer, chat template), expert (aligned's base + LoRA)."""
    return [candidate(tiny_base, "aligned", "aligned"), candidate(other_base, "pretrained", "other"),
            candidate(tiny_base, "expert", "expert", adapter=expert_lora)]
