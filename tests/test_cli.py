"""Each CLI verb end to end, through the same entry point users run."""

import json
import sys

import pytest

from mashup.cli import main


def run_cli(args, capsys, monkeypatch, expect=0):
    monkeypatch.setattr(sys, "argv", ["mashup", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    assert code == expect, f"exit {code}, stderr: {err}"
    return out, err


@pytest.fixture()
def lib(tmp_path):
    return tmp_path / "lib"


def test_library_verbs(tmp_path, lib, tiny_loras, capsys, monkeypatch):
    out, _ = run_cli(["library", "add", *tiny_loras[:2], "--task", "sciq", "--library", lib, "--json"], capsys,
                     monkeypatch)
    ids = json.loads(out)
    assert len(ids) == 2
    out, _ = run_cli(["library", "list", "--library", lib, "--json"], capsys, monkeypatch)
    assert [r["id"] for r in json.loads(out)] == ids
    out, _ = run_cli(["library", "show", ids[0], "--library", lib, "--json"], capsys, monkeypatch)
    assert json.loads(out)["task"] == "sciq"
    run_cli(["library", "remove", ids[0], "--library", lib], capsys, monkeypatch)
    out, _ = run_cli(["library", "list", "--library", lib, "--json"], capsys, monkeypatch)
    assert [r["id"] for r in json.loads(out)] == ids[1:]


def test_user_errors_are_one_line_and_change_nothing(tmp_path, lib, tiny_loras, capsys, monkeypatch):
    run_cli(["library", "add", tiny_loras[0], "--library", lib], capsys, monkeypatch)
    before = (lib / "catalog.sqlite").read_bytes()
    _, err = run_cli(["library", "add", tiny_loras[1], tmp_path / "missing", "--library", lib], capsys, monkeypatch,
                     expect=1)
    assert err.strip().count("\n") == 0 and "checkpoint directory not found" in err and "Traceback" not in err
    _, err = run_cli(["library", "show", "nope", "--library", lib], capsys, monkeypatch, expect=1)
    assert "no checkpoint with id 'nope'" in err
    assert (lib / "catalog.sqlite").read_bytes() == before


@pytest.mark.fp32
def test_select_merge_train_eval(tmp_path, lib, tiny_base, tiny_loras, mc_file, capsys, monkeypatch):
    run_cli(["library", "add", *tiny_loras, "--library", lib], capsys, monkeypatch)
    common = ["--base", tiny_base, "--data", mc_file, "--scoring", "letter"]
    out, _ = run_cli(["select", *common, "--library", lib, "--samples", "8", "--k", "2", "--json"], capsys, monkeypatch)
    selection = json.loads(out)
    assert len(selection["ranking"]) == 3 and len(selection["selected"]) == 2
    merged = tmp_path / "merged"
    ids = [x for i in selection["selected"] for x in ("--checkpoints", i)]
    run_cli(["merge", *ids, "--out", merged, "--library", lib], capsys, monkeypatch)
    assert (merged / "adapter_model.safetensors").exists()
    out, _ = run_cli(["train", *common, "--init", merged, "--out", tmp_path / "trained", "--batch-size", "8",
                      "--max-steps", "2", "--eval-every", "1", "--json"], capsys, monkeypatch)
    curve = json.loads(out)["curve"]
    assert [p["step"] for p in curve] == [0, 1, 2]
    out, _ = run_cli(["eval", *common, "--adapter", merged, "--json"], capsys, monkeypatch)
    assert json.loads(out)["accuracy"] == curve[0]["accuracy"]


def test_run_with_baseline_registers_the_result(tmp_path, lib, tiny_base, tiny_loras, mc_file, capsys, monkeypatch):
    run_cli(["library", "add", *tiny_loras, "--library", lib], capsys, monkeypatch)
    out_dir = tmp_path / "run"
    out, _ = run_cli(["run", "--base", tiny_base, "--data", mc_file, "--scoring", "letter", "--library", lib,
                      "--out", out_dir, "--baseline", "--samples", "8", "--batch-size", "8", "--max-steps", "2",
                      "--eval-every", "1", "--json"], capsys, monkeypatch)
    summary = json.loads(out)
    for name in ("run_config.yaml", "version.json", "scores.json", "summary.json", "merged/adapter_config.json",
                 "mashup/adapter/adapter_model.safetensors", "scratch/curve.csv"):
        assert (out_dir / name).exists(), name
    assert set(summary["parity"]) == {"p99", "p100"}
    assert summary["mashup"]["curve"][0]["step"] == 0
    listed = json.loads(run_cli(["library", "list", "--library", lib, "--json"], capsys, monkeypatch)[0])
    assert summary["registered"] in [r["id"] for r in listed] and len(listed) == 4
    import sqlite3  # the registered adapter's Arrow prototypes were cached with it, beside the 3 added before
    with sqlite3.connect(lib / "selection.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM prototype_rows").fetchone()[0] == 4


def test_failed_run_leaves_no_run_dir_and_no_library_change(tmp_path, lib, tiny_base, tiny_loras, mc_file, capsys,
                                                             monkeypatch):
    run_cli(["library", "add", *tiny_loras[:1], "--library", lib], capsys, monkeypatch)
    before = (lib / "catalog.sqlite").read_bytes()
    _, err = run_cli(["run", "--base", tiny_base, "--data", mc_file, "--library", lib, "--out", tmp_path / "run",
                      "--k", "3", "--max-steps", "1"], capsys, monkeypatch, expect=1)
    assert "error:" in err
    assert not (tmp_path / "run").exists()
    assert (lib / "catalog.sqlite").read_bytes() == before


def test_merge_methods_and_modes_from_the_cli(tmp_path, lib, tiny_base, tiny_loras, mc_file, capsys, monkeypatch):
    ids = json.loads(run_cli(["library", "add", *tiny_loras, "--library", lib, "--json"], capsys, monkeypatch)[0])
    flags = [x for i in ids for x in ("--checkpoints", i)]
    out, _ = run_cli(["merge", *flags, "--method", "ties", "--density", "0.5", "--lora-mode", "delta", "--out",
                      tmp_path / "ties", "--library", lib, "--json"], capsys, monkeypatch)
    report = json.loads(out)
    assert report["method"] == "ties" and report["lora_mode"] == "delta" and report["svd_relative_error"] > 0
    out, _ = run_cli(["merge", *flags, "--method", "fisher", "--data", mc_file, "--out", tmp_path / "fisher",
                      "--library", lib, "--json"], capsys, monkeypatch)
    assert json.loads(out)["method"] == "fisher"
    _, err = run_cli(["merge", *flags, "--method", "ties", "--density", "0", "--out", tmp_path / "bad",
                      "--library", lib], capsys, monkeypatch, expect=2)
    assert "density" in err and not (tmp_path / "bad").exists()
    _, err = run_cli(["merge", *flags, "--method", "nope", "--out", tmp_path / "bad", "--library", lib], capsys,
                     monkeypatch, expect=1)
    assert "average" in err and not (tmp_path / "bad").exists()


def test_run_with_dare_ties_merge(tmp_path, lib, tiny_base, tiny_loras, mc_file, capsys, monkeypatch):
    run_cli(["library", "add", *tiny_loras, "--library", lib], capsys, monkeypatch)
    out, _ = run_cli(["run", "--base", tiny_base, "--data", mc_file, "--scoring", "letter", "--library", lib,
                      "--out", tmp_path / "run", "--merge-method", "dare_ties", "--density", "0.5", "--k", "3",
                      "--lora-mode", "delta", "--samples", "8", "--batch-size", "8", "--max-steps", "1",
                      "--no-register", "--json"], capsys, monkeypatch)
    summary = json.loads(out)
    assert summary["merge_method"] == "dare_ties" and len(summary["selected"]) == 3 and "registered" not in summary


def test_full_fine_tune_run(tmp_path, lib, tiny_base, tiny_fulls, mc_file, capsys, monkeypatch):
    run_cli(["library", "add", *tiny_fulls, "--base", tiny_base, "--library", lib], capsys, monkeypatch)
    out, _ = run_cli(["run", "--base", tiny_base, "--data", mc_file, "--scoring", "letter", "--library", lib,
                      "--out", tmp_path / "run", "--mode", "full", "--baseline", "--samples", "8", "--batch-size", "8",
                      "--max-steps", "2", "--lr", "1e-4", "--json"], capsys, monkeypatch)
    summary = json.loads(out)
    assert summary["mode"] == "full" and (tmp_path / "run" / "merged" / "config.json").exists()
    assert (tmp_path / "run" / "mashup" / "model" / "model.safetensors").exists()
    listed = json.loads(run_cli(["library", "list", "--library", lib, "--json"], capsys, monkeypatch)[0])
    assert [r["kind"] for r in listed] == ["full"] * 4 and summary["registered"] == listed[-1]["id"]


def test_export_mergekit_yaml(tmp_path, lib, tiny_base, tiny_fulls, capsys, monkeypatch):
    ids = json.loads(run_cli(["library", "add", *tiny_fulls[:2], "--base", tiny_base, "--library", lib, "--json"],
                             capsys, monkeypatch)[0])
    flags = [x for i in ids for x in ("--checkpoints", i)]
    run_cli(["merge", *flags, "--method", "ties", "--density", "0.5", "--out", tmp_path / "merged",
             "--export-mergekit", tmp_path / "mergekit.yaml", "--library", lib], capsys, monkeypatch)
    import yaml

    exported = yaml.safe_load((tmp_path / "mergekit.yaml").read_text())
    assert exported["merge_method"] == "ties" and exported["base_model"] == str(tiny_base)
    assert len(exported["models"]) == 2 and (tmp_path / "merged" / "config.json").exists()
    (tmp_path / "mine.txt").write_text("keep me")
    for export, problem in ((tmp_path / "mine.txt", "already exists"), (tmp_path / "merged", "already exists"),
                            (tmp_path / "no" / "x.yaml", "no such dir")):
        _, err = run_cli(["merge", *flags, "--method", "ties", "--out", tmp_path / "again", "--export-mergekit",
                          export, "--library", lib], capsys, monkeypatch, expect=1)
        assert f"error: {'the --export-mergekit file ' if 'exists' in problem else ''}{problem}" in err, err
        assert not (tmp_path / "again").exists()  # refused before the merge, which would be left behind
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_file_system_errors_are_one_line(tmp_path, tiny_base, mc_file, capsys, monkeypatch):
    import mashup.verbs as verbs

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "weights.safetensors"))

    monkeypatch.setattr(verbs, "evaluate_model", denied)
    _, err = run_cli(["eval", "--base", tiny_base, "--data", mc_file], capsys, monkeypatch, expect=1)
    assert err.strip().splitlines() == [f"error: Permission denied in {tmp_path / 'weights.safetensors'}; check the "
                                        "path, its permissions and the free disk space"]


def test_select_takes_the_merge_its_candidates_must_join(tmp_path, lib, tiny_base, tiny_loras, mc_file, capsys,
                                                         monkeypatch):
    from tests.tiny import save_tiny_lora

    run_cli(["library", "add", *tiny_loras[:2], save_tiny_lora(tiny_base, tmp_path / "rank2", seed=9, r=2),
             "--library", lib], capsys, monkeypatch)
    common = ["select", "--base", tiny_base, "--data", mc_file, "--scoring", "letter", "--library", lib,
              "--samples", "4", "--json"]
    ab = json.loads(run_cli(common, capsys, monkeypatch)[0])  # average merges in ab mode: rank 2 left out
    assert len(ab["ranking"]) == 2 and "LoRA rank" in ab["rejected"][0]["reason"]
    delta = json.loads(run_cli([*common, "--lora-mode", "delta", "--k", "3"], capsys, monkeypatch)[0])
    assert len(delta["ranking"]) == 3 and delta["rejected"] == []
    ties = json.loads(run_cli([*common, "--merge-method", "ties", "--k", "3"], capsys, monkeypatch)[0])
    assert len(ties["ranking"]) == 3  # ties merges in delta mode by default
    _, err = run_cli([*common, "--merge-method", "bogus"], capsys, monkeypatch, expect=1)
    assert "unknown merge method 'bogus'" in err and err.strip().count("\n") == 0


def test_select_on_a_library_of_the_other_kind_names_the_kind_option(tmp_path, lib, tiny_base, tiny_fulls, mc_file,
                                                                     capsys, monkeypatch):
    run_cli(["library", "add", *tiny_fulls, "--base", tiny_base, "--library", lib], capsys, monkeypatch)
    _, err = run_cli(["select", "--base", tiny_base, "--data", mc_file, "--scoring", "letter", "--library", lib],
                     capsys, monkeypatch, expect=1)
    assert "--kind full" in err.splitlines()[-1] and "run uses" not in err


def test_run_summary_says_when_parity_is_not_reached():
    from rich.console import Console

    from mashup.cli_run import _summary_table

    arm = {"init_accuracy": 0.25, "final_accuracy": 0.5, "train_seconds": 1.0}
    summary = {"target": "t", "mashup": arm, "scratch": arm, "parity": {"p99": {"step": None}, "p100": {"step": 4}}}
    console = Console(width=200, record=True)
    console.print(_summary_table(summary))
    text = console.export_text()
    assert "99% not reached" in text and "100% 4" in text and "None" not in text
