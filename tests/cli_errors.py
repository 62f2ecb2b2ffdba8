"""What a bad CLI input must give: one line on stderr, no traceback; and a library to point the CLI at."""

from pathlib import Path

from tests.test_cli import run_cli


def one_line_error(err: str) -> str:
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    return err


def library_of_one(directory: Path, adapter: Path, capsys, monkeypatch) -> Path:
    """A library at ``directory`` holding the LoRA ``adapter``."""
    run_cli(["library", "add", adapter, "--library", directory], capsys, monkeypatch)
    return directory
