"""A merge output dir holds, beside the weights, its resolved config, its report and the package versions;
a merge that fails while writing them leaves nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mashup.config import MergeConfig
from mashup.merging import merge_checkpoints
from mashup.provenance import version_info
from tests.merging.helpers import records


def test_a_lora_merge_dir_holds_the_package_versions(tiny_loras: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    merge_checkpoints(records(tiny_loras[:2]), MergeConfig(), out)
    assert {"merge_config.yaml", "merge_report.json", "version.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "version.json").read_text()) == version_info()


def test_a_full_merge_dir_holds_the_package_versions(tiny_base: Path, tiny_fulls: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    merge_checkpoints(records(tiny_fulls[:2], tiny_base), MergeConfig(), out, base_model_dir=tiny_base)
    assert json.loads((out / "version.json").read_text())["mashup"] == version_info()["mashup"]


def test_a_merge_failing_to_write_its_versions_leaves_nothing(tiny_loras: list[Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import mashup.merging.api as api

    def disk_full(out_dir: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(api, "write_version", disk_full)
    with pytest.raises(OSError, match="No space left"):
        merge_checkpoints(records(tiny_loras[:2]), MergeConfig(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
