"""The nnUNetTrainer subclasses: recipe, network per variant, compile policy, plans translation."""

import pytest
import torch

import logvmamba_nnunet_trainers as trainers
import tests.ext_trainers_for_tests.tiny_trainers as tiny_trainers
from logvmamba_nnunet.nnunet.plans import network_kwargs_from_configuration
from tests.plans_factory import DATASET_JSON, plans


def make_trainer(cls, configuration="3d_fullres", resenc=False):
    return cls(plans(resenc), configuration, 0, dict(DATASET_JSON), torch.device("cpu"))


def build(cls, configuration="3d_fullres", deep_supervision=True, resenc=False):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans(resenc))
    return cls.build_network_architecture(manager, manager.get_configuration(configuration), 1, 3, deep_supervision)


def test_paper_recipe_and_weight_decay_groups(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    trainer = make_trainer(trainers.nnUNetTrainerLoGVMamba)
    assert (trainer.initial_lr, trainer.weight_decay, trainer.num_epochs) == (1e-4, 1e-4, 1000)
    trainer.network = build(trainers.nnUNetTrainerLoGVMamba)
    optimizer, scheduler = trainer.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    no_decay = [g for g in optimizer.param_groups if g["weight_decay"] == 0.0]
    names = {id(p): n for n, p in trainer.network.named_parameters()}
    excluded = {names[id(p)].rsplit(".", 1)[-1] for g in no_decay for p in g["params"]}
    assert excluded == {"A_log", "D"}
    assert all(g["lr"] == 1e-4 for g in optimizer.param_groups)


@pytest.mark.parametrize("cls, kinds, placement, directions", [
    (trainers.nnUNetTrainerLoGVMamba, ["local", "global", "global"], "interleaved", 1),
    (trainers.nnUNetTrainerLVMamba, ["local"] * 3, "interleaved", 1),
    (trainers.nnUNetTrainerGVMamba, ["global"] * 3, "interleaved", 1),
    (trainers.nnUNetTrainerVSSMamba, ["vss"] * 3, "interleaved", 1),
    (trainers.nnUNetTrainerLoGVMamba_Head, ["local", "global", "global"], "head", 1),
    (trainers.nnUNetTrainerLoGVMamba_Middle, ["local", "global", "global"], "middle", 1),
    (trainers.nnUNetTrainerLoGVMamba_Split, ["local", "global", "global"], "split", 1),
    (trainers.nnUNetTrainerLoGVMamba_K2, ["local", "global", "global"], "interleaved", 2),
    (trainers.nnUNetTrainerLoGVMamba_K4, ["local", "global", "global"], "interleaved", 4),
])
def test_variants_build_their_network(cls, kinds, placement, directions):
    net = build(cls)
    mixers = [layer.block.mixer for layer in net.encoder.stage_layers]
    assert [m.kind for m in mixers] == kinds
    assert {m.layout.placement for m in mixers} == {placement}
    assert {m.layout.directions for m in mixers} == {directions}


@pytest.mark.parametrize("configuration, resenc", [("3d_fullres", False), ("2d", False), ("3d_fullres", True)])
def test_parameters_do_not_depend_on_deep_supervision(configuration, resenc):
    cls = tiny_trainers.nnUNetTrainerLoGVMamba_Tiny
    on, off = build(cls, configuration, True, resenc), build(cls, configuration, False, resenc)
    assert on.state_dict().keys() == off.state_dict().keys()
    off.load_state_dict(on.state_dict(), strict=True)


def test_no_amp_variant_runs_fp32(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    trainer = make_trainer(trainers.nnUNetTrainerLoGVMamba_NoAMP)
    assert trainer.grad_scaler is None
    assert build(trainers.nnUNetTrainerLoGVMamba_NoAMP).force_fp32


def test_epoch_variants_and_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    assert make_trainer(trainers.nnUNetTrainerLoGVMamba_250epochs).num_epochs == 250
    tiny = make_trainer(tiny_trainers.nnUNetTrainerLoGVMamba_Tiny)
    assert (tiny.num_epochs, tiny.num_iterations_per_epoch, tiny.num_val_iterations_per_epoch) == (2, 4, 2)


@pytest.mark.parametrize("value, expected", [(None, False), ("false", False), ("0", False), ("true", False)])
def test_compile_is_off_unless_requested(tmp_path, monkeypatch, value, expected):
    """On CPU nnU-Net itself refuses compile, so even an explicit request gives False here."""
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    if value is None:
        monkeypatch.delenv("nnUNet_compile", raising=False)
    else:
        monkeypatch.setenv("nnUNet_compile", value)
    assert make_trainer(trainers.nnUNetTrainerLoGVMamba)._do_i_compile() is expected


def test_compile_on_cuda_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    trainer = make_trainer(trainers.nnUNetTrainerLoGVMamba)
    trainer.device = torch.device("cuda", 0)  # nnU-Net compiles by default on CUDA; this trainer does not
    monkeypatch.delenv("nnUNet_compile", raising=False)
    assert trainer._do_i_compile() is False
    monkeypatch.setenv("nnUNet_compile", "1")
    assert trainer._do_i_compile() is True


def test_plans_translation_adds_patch_size_and_resolves_imports():
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    kwargs = network_kwargs_from_configuration(PlansManager(plans()).get_configuration("2d"))
    assert kwargs["patch_size"] == [32, 32]
    assert kwargs["conv_op"] is torch.nn.Conv2d and kwargs["nonlin"] is torch.nn.LeakyReLU


def test_one_and_four_dimensional_configurations_are_refused():
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    bad = plans()
    bad["configurations"]["3d_fullres"]["patch_size"] = [8, 8, 8, 8]
    with pytest.raises(ValueError, match="only 2D and 3D"):
        network_kwargs_from_configuration(PlansManager(bad).get_configuration("3d_fullres"))


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_no_deep_supervision_trainer_freezes_the_unused_heads(tmp_path, monkeypatch, configuration):
    """Built as nnU-Net builds it (deep supervision off), only the heads that deep supervision alone uses stop
    requiring a gradient, so DDP does not wait for them; the loss gets the full-resolution output only."""
    from logvmamba_nnunet.nnunet.ddp import deep_supervision_head_names

    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    cls = trainers.nnUNetTrainerLoGVMamba_NoDeepSupervision
    trainer = make_trainer(cls, configuration)
    assert trainer.enable_deep_supervision is False
    network = build(cls, configuration, deep_supervision=False)
    frozen = {name for name, p in network.named_parameters() if not p.requires_grad}
    assert frozen and frozen == set(deep_supervision_head_names(network))
    sizes = (16, 32, 32) if configuration == "3d_fullres" else (32, 32)
    output = network(torch.randn(1, 1, *sizes))
    assert isinstance(output, torch.Tensor) and output.shape == (1, 3, *sizes)
    plain = build(trainers.nnUNetTrainerLoGVMamba, configuration, deep_supervision=False)
    assert network.state_dict().keys() == plain.state_dict().keys()


def _without_blocks(state: dict) -> dict:
    return {name: tensor for name, tensor in state.items() if ".blocks." not in name}


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_no_mamba_network_is_the_default_network_without_its_log_family_blocks(configuration):
    from logvmamba_nnunet.modules.block import LoGVMambaBlock

    default, backbone = build(trainers.nnUNetTrainerLoGVMamba, configuration), build(
        trainers.nnUNetTrainerLoGVMamba_NoMamba, configuration)
    log_blocks = [m for m in default.modules() if isinstance(m, LoGVMambaBlock) and m.mixer.kind != "vss"]
    assert log_blocks
    assert not [m for m in backbone.modules() if isinstance(m, LoGVMambaBlock) and m.mixer.kind != "vss"]
    if configuration == "3d_fullres":
        assert not [m for m in backbone.modules() if isinstance(m, LoGVMambaBlock)]
        kept = {n: p.shape for n, p in default.named_parameters() if "stage_layers" not in n}
    else:  # 2D: the VMamba encoder stays, the decoder loses its blocks
        assert not [m for m in backbone.decoder.modules() if isinstance(m, LoGVMambaBlock)]
        kept = {n: p.shape for n, p in default.named_parameters() if not n.startswith("decoder.levels") or
                ".blocks." not in n}
    assert {n: p.shape for n, p in backbone.named_parameters()} == kept
    block_parameters = sum(p.numel() for m in log_blocks for p in m.parameters())
    assert sum(p.numel() for p in backbone.parameters()) == sum(p.numel() for p in default.parameters()) - \
        block_parameters
    x = torch.randn(1, 1, *([16] * (3 if configuration == "3d_fullres" else 2)))
    assert backbone.eval()(x)[0].shape == default.eval()(x)[0].shape


def test_nnunet_recipe_trainer_builds_the_default_network_with_nnunets_optimizer(tmp_path, monkeypatch):
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    trainer = make_trainer(trainers.nnUNetTrainerLoGVMamba_nnUNetRecipe)
    assert (trainer.initial_lr, trainer.weight_decay) == (1e-2, 3e-5)
    trainer.network = build(trainers.nnUNetTrainerLoGVMamba_nnUNetRecipe)
    default = build(trainers.nnUNetTrainerLoGVMamba)
    assert type(trainer.network) is type(default)
    assert {n: p.shape for n, p in trainer.network.named_parameters()} == {
        n: p.shape for n, p in default.named_parameters()}
    optimizer, scheduler = trainer.configure_optimizers()
    assert type(optimizer) is torch.optim.SGD and isinstance(scheduler, PolyLRScheduler)
    (group,) = optimizer.param_groups
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (1e-2, 0.99, True, 3e-5)
    assert len(group["params"]) == len(list(trainer.network.parameters()))
    scheduler.step(500)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * (1 - 500 / 1000) ** 0.9)
