"""A merge of records holding a legacy base identity (registered before the identity left out weight files
transformers does not load) registers with its lineage: its report records the base's current identity, and a
report written with the legacy one is the same base too."""

import json
import shutil
import sqlite3

import torch
from safetensors.torch import save_file

from mashup.config import MergeConfig
from mashup.library import Library
from mashup.library.identity import base_identity, legacy_base_identity
from mashup.verbs import merge
from tests.tiny import save_tiny_lora


def _legacy_library(tmp_path, tiny_base):
    base = shutil.copytree(tiny_base, tmp_path / "base")
    save_file({"layers.0.attention.wq.weight": torch.zeros(2, 2)}, str(base / "consolidated.safetensors"))
    library = Library(tmp_path / "lib")
    records = library.add([save_tiny_lora(base, tmp_path / f"lora{i}", seed=30 + i) for i in range(2)])
    with sqlite3.connect(library.db_path) as conn:  # as a library registered before holds it
        conn.execute("UPDATE checkpoints SET base_identity = ? WHERE id = ?", (legacy_base_identity(base),
                                                                              records[0].id))
    return base, library, [r.id for r in records]


def test_a_merge_of_legacy_records_registers_with_its_lineage(tmp_path, tiny_base):
    base, library, ids = _legacy_library(tmp_path, tiny_base)
    report = merge(ids, MergeConfig(method="average"), tmp_path / "merged", library.directory)
    assert report.base["identity"] == base_identity(base)
    (added,) = library.add([tmp_path / "merged"])
    assert added.lineage["merged_from"] == ids


def test_a_report_holding_the_legacy_identity_is_the_same_base(tmp_path, tiny_base):
    base, library, ids = _legacy_library(tmp_path, tiny_base)
    merge(ids, MergeConfig(method="average"), tmp_path / "merged", library.directory)
    path = tmp_path / "merged" / "merge_report.json"
    written = json.loads(path.read_text())
    path.write_text(json.dumps({**written, "base": {**written["base"], "identity": legacy_base_identity(base)}}))
    (added,) = library.add([tmp_path / "merged"])
    assert added.lineage["merged_from"] == ids
