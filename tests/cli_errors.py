"""What a bad CLI input must give: one line on stderr, no traceback; and a library to point the CLI at."""

from pathlib import Path

import pytest

from tests.test_cli import run_cli


def one_line_error(err: str) -> str:
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    return err


@pytest.fixture()
def lib(tmp_path: Path, tiny_loras: list[Path], capsys, monkeypatch) -> Path:
    """A library holding one LoRA."""
    directory = tmp_path / "lib"
    run_cli(["library", "add", tiny_loras[0], "--library", directory], capsys, monkeypatch)
    return directory
