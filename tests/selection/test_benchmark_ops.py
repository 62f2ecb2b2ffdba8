"""The operation-count benchmark: slots launch fewer kernels for G adapters than PEFT's layers for one."""

from pathlib import Path


def test_slots_dispatch_fewer_kernels_than_peft_and_no_weight_casts_under_autocast(tiny_base, mc_file, tmp_path,
                                                                                     monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from scoring_ops import main  # benchmarks/scoring_ops.py

    result = main(["--base", str(tiny_base), "--target", str(mc_file), "--questions", "6", "--slots", "3",
                   "--dir", str(tmp_path / "bench")])
    for precision in ("fp32", "bf16"):
        base, peft, slots = (result[precision][label] for label in ("base", "peft, 1 adapter", "slots, 3 adapters"))
        assert base["kernels"] < slots["kernels"] < peft["kernels"]
        assert slots["by_name"]["aten.baddbmm"] == slots["by_name"]["aten.bmm"] > 0  # one fused update per module
    casts = {label: got["by_name"].get("aten._to_copy", 0) for label, got in result["bf16"].items()}
    assert casts["slots, 3 adapters"] < casts["base"] < casts["peft, 1 adapter"]  # weights cast once, not per run
