"""benchmarks/block_overhead.py: its table's ratios (its saved-activation count is tested in test_profiling.py)."""

from argparse import Namespace

from tests.benchmark_scripts import load_benchmark


def load_script():
    return load_benchmark("block_overhead.py", "block_overhead")


def test_table_ratios_are_against_the_plain_network_and_the_backbone_of_the_same_topology():
    script = load_script()
    rows = [{"network": "(a) nnU-Net PlainConvUNet", "parameters": 1e6, "step_s": 1.0, "saved_GiB": 1.0,
             "peak_GiB": 1.0}]
    for topology, scale in (("stage", 2.0), ("pooled", 1.0)):
        rows.append({"network": f"(b) backbone, {topology}", "parameters": 2e6, "step_s": 2.0 * scale,
                     "saved_GiB": 1.0 * scale, "peak_GiB": 1.0})
        rows.append({"network": f"(c) nnUNetTrainerLoGVMamba, {topology}", "parameters": 3e6, "step_s": 3.0 * scale,
                     "saved_GiB": 1.25 * scale, "peak_GiB": 1.0})
    table = script.format_table(rows, Namespace(plan="acdc", batch=2, threads=1, repeats=5))
    lines = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
             for line in table.splitlines() if line.startswith("| (")}
    assert lines["(c) nnUNetTrainerLoGVMamba, stage"][2:5] == ["6.00x", "1.50x", "2.500"]
    assert lines["(c) nnUNetTrainerLoGVMamba, pooled"][2:6] == ["3.00x", "1.50x", "1.250", "1.25x"]
    assert lines["(b) backbone, pooled"][3] == "-" and lines["(a) nnU-Net PlainConvUNet"][2] == "1.00x"


def test_builders_switch_the_recomputations_they_name():
    script = load_script()
    builders = script.network_builders(script.plans_for("acdc"))
    default = builders["(c) nnUNetTrainerLoGVMamba, pooled"]()
    no_tail = builders["(c'') recompute_full_resolution off, pooled"]()
    no_blocks = builders["(c') recompute_blocks off, pooled"]()
    assert default.decoder.recompute_full_resolution and not no_tail.decoder.recompute_full_resolution

    def recompute(network):
        return {m.recompute for m in network.modules() if hasattr(m, "recompute") and hasattr(m, "mixer")}

    assert recompute(default) == recompute(no_tail) == {True} and recompute(no_blocks) == {False}
    assert not recompute(builders["(b) backbone, pooled"]())
