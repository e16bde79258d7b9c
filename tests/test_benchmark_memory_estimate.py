"""benchmarks/memory_estimate.py: nnU-Net's topology for its plans, and estimate against measured peak on a tiny
plan."""

from tests.benchmark_scripts import load_benchmark


def load_script():
    return load_benchmark("memory_estimate.py", "memory_estimate_benchmark")


def test_plans_follow_nnunets_topology_rules():
    script = load_script()
    anisotropic = next(p for p in script.PLANS if p.label == "3D anisotropic, pooled")
    arch = script.plans_for(anisotropic)["configurations"]["synthetic"]["architecture"]["arch_kwargs"]
    assert [list(s) for s in arch["strides"]] == [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2]]
    assert [list(k) for k in arch["kernel_sizes"][:2]] == [[1, 3, 3], [1, 3, 3]]
    assert {len(p.patch) for p in script.PLANS} == {2, 3}
    assert {p.trainer for p in script.PLANS} >= {"nnUNetTrainerLoGVMamba", "nnUNetTrainerLoGVMamba_StageTopology"}


def test_measure_a_tiny_plan(monkeypatch):
    script = load_script()
    monkeypatch.setattr(script, "PLANS", [script.Plan("tiny", "nnUNetTrainerLoGVMamba", (8, 16, 16), (1.0,) * 3, 1)])
    row = script.measure(0)
    assert row["patch"] == [8, 16, 16] and row["estimate"] > 0 and row["measured"] > 0
    assert 0.5 < row["estimate"] / row["measured"] < 2
