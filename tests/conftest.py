from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tiny import save_tiny_base, save_tiny_full, save_tiny_lora


@pytest.fixture(autouse=True)
def _fp32_for_oracle_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests marked ``fp32`` compare against fp32 oracles with fp32 tolerances, so they force fp32; the
    rest run in whatever ``$MASHUP_PRECISION`` (or auto) gives, and the bf16 path has its own tests."""
    if request.node.get_closest_marker("fp32"):
        monkeypatch.setenv("MASHUP_PRECISION", "fp32")


@pytest.fixture(autouse=True)
def _private_shapes_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own cache of built bases' shapes (beside its tmp_path, which some tests expect empty): a test
    counting model builds must not find another test's (or an earlier run's) entry."""
    from mashup.library import shapes_cache

    cache = tmp_path_factory.mktemp("shapes-cache") / shapes_cache.CACHE_NAME
    monkeypatch.setattr(shapes_cache, "cache_path", lambda: cache)


_USER_CACHE = os.environ.get("MASHUP_CACHE")


@pytest.fixture(autouse=True, scope="session")
def _private_mashup_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The tests, their module and session fixtures, and the CLI subprocesses they start (which inherit the
    environment) keep mashup's caches (base identities and shapes, converted models) in this run's temp dir, never in
    the user's ``~/.cache/mashup``. A test setting ``$MASHUP_CACHE`` itself overrides it."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MASHUP_CACHE", str(tmp_path_factory.getbasetemp() / "mashup-cache"))
        yield


@pytest.fixture(autouse=True)
def _user_cache_for_integration(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The integration tests use the user's cache, where the real models are converted once."""
    if request.node.get_closest_marker("integration") is None:
        return
    if _USER_CACHE is None:
        monkeypatch.delenv("MASHUP_CACHE")
    else:
        monkeypatch.setenv("MASHUP_CACHE", _USER_CACHE)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama-architecture model dir with its tokenizer."""
    return save_tiny_base(tmp_path_factory.mktemp("tiny-base"))


@pytest.fixture(scope="session")
def tiny_loras(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> list[Path]:
    root = tmp_path_factory.mktemp("tiny-loras")
    return [save_tiny_lora(tiny_base, root / f"lora{i}", seed=i) for i in range(3)]


@pytest.fixture(scope="session")
def tiny_fulls(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> list[Path]:
    root = tmp_path_factory.mktemp("tiny-fulls")
    return [save_tiny_full(tiny_base, root / f"full{i}", seed=10 + i) for i in range(3)]


def write_mc_jsonl(path: Path, n: int, seed: int = 0, n_choices: int = 4) -> Path:
    """A synthetic multiple-choice file in the common format."""
    rng = random.Random(seed)
    words = ["red", "blue", "cat", "dog", "sun", "ice", "water", "fish", "bird", "mat"]
    with open(path, "w") as handle:
        for i in range(n):
            choices = rng.sample(words, n_choices)
            answer = rng.randrange(n_choices)
            row = {"question": f"Which word is number {i}? It is {choices[answer]}.", "choices": choices,
                   "answer": answer}
            handle.write(json.dumps(row) + "\n")
    return path


@pytest.fixture()
def mc_file(tmp_path: Path) -> Path:
    return write_mc_jsonl(tmp_path / "target.jsonl", 40)


@pytest.fixture()
def lora_lib(tmp_path: Path, tiny_loras: list[Path], capsys: pytest.CaptureFixture,
                     monkeypatch: pytest.MonkeyPatch) -> Path:
    """A library holding one LoRA, registered through the CLI."""
    from tests.test_cli import run_cli

    directory = tmp_path / "lib"
    run_cli(["library", "add", tiny_loras[0], "--library", directory], capsys, monkeypatch)
    return directory
