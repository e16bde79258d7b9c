"""U-Mamba-Enc / U-Mamba-Bot networks and trainers, and the MONAI transformer baselines."""

import copy
import math
import subprocess
import sys

import pytest
import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

import logvmamba_nnunet_trainers as trainers
import tests.ext_trainers_for_tests.tiny_trainers as tiny_trainers
from logvmamba_nnunet.modules.mamba1d import UMambaLayer
from logvmamba_nnunet.networks.monai_baselines import PaddedFloat32Network, round_up
from logvmamba_nnunet.networks.umamba import UMambaBotUNet, UMambaEncUNet, umamba_block_counts
from logvmamba_nnunet.nnunet.lr_scheduler import CosineDecayLRScheduler
from tests.plans_factory import DATASET_JSON, plans


def make_trainer(cls, configuration="3d_fullres", plan=None):
    return cls(plan or plans(), configuration, 0, dict(DATASET_JSON), torch.device("cpu"))


def build(cls, configuration="3d_fullres", deep_supervision=True, plan=None):
    manager = PlansManager(plan or plans())
    return cls.build_network_architecture(manager, manager.get_configuration(configuration), 1, 3, deep_supervision)


def plan_with_patch(configuration: str, patch: list[int]) -> dict:
    plan = plans()
    plan["configurations"][configuration]["patch_size"] = patch
    return plan


@pytest.mark.parametrize("n_stages", range(2, 10))
def test_block_counts_follow_umamba_rule(n_stages):
    """U-Mamba writes the decoder threshold as ceil((n - 1) / 2 + 0.5); both thresholds are ceil(n / 2)."""
    encoder, decoder = umamba_block_counts(list(range(2, n_stages + 2)), list(range(2, n_stages + 1)))
    assert encoder == [2 + s if s < math.ceil(n_stages / 2) else 1 for s in range(n_stages)]
    assert decoder == [2 + s if s < math.ceil((n_stages - 1) / 2 + 0.5) else 1 for s in range(n_stages - 1)]


def test_block_counts_need_one_decoder_entry_less():
    with pytest.raises(ValueError, match="needs 3"):
        umamba_block_counts([2] * 4, [2] * 4)


def arch_kwargs(dims=3, n_stages=5):
    return dict(n_stages=n_stages, features_per_stage=[4, 8, 8, 8, 8][:n_stages],
                conv_op=nn.Conv3d if dims == 3 else nn.Conv2d, kernel_sizes=3, strides=[1] + [2] * (n_stages - 1),
                n_conv_per_stage=2, n_conv_per_stage_decoder=2, conv_bias=True,
                norm_op=f"torch.nn.InstanceNorm{dims}d", norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU)


@pytest.mark.parametrize("cls, with_mamba", [(UMambaEncUNet, [True] * 5), (UMambaBotUNet, [False] * 4 + [True])])
def test_networks_place_mamba_layers_and_apply_depth_rule(cls, with_mamba):
    net = cls(1, 3, True, **arch_kwargs())
    layers = net.encoder.stage_layers
    assert [isinstance(layer, UMambaLayer) for layer in layers] == with_mamba
    assert all(isinstance(layer, nn.Identity) for layer, mamba in zip(layers, with_mamba) if not mamba)
    assert [layer.channels for layer, mamba in zip(layers, with_mamba) if mamba] == \
        [w for w, mamba in zip([4, 8, 8, 8, 8], with_mamba) if mamba]
    assert [len(s.blocks) for s in net.encoder.residual_encoder.stages] == [2, 2, 2, 1, 1]
    assert [len(s.blocks) for s in net.decoder.stages] == [2, 2, 2, 1]
    kept = cls(1, 3, True, umamba_depth_rule=False, **arch_kwargs())
    assert [len(s.blocks) for s in kept.encoder.residual_encoder.stages] == [2] * 5


@pytest.mark.parametrize("cls", [UMambaEncUNet, UMambaBotUNet])
@pytest.mark.parametrize("dims, size", [(3, (8, 16, 12)), (2, (20, 24))])
def test_networks_segment_any_input_size(cls, dims, size):
    torch.manual_seed(0)
    net = cls(2, 3, True, **arch_kwargs(dims, n_stages=3))
    outputs = net(torch.randn(2, 2, *size))
    assert [tuple(o.shape) for o in outputs] == [(2, 3, *[s // f for s in size]) for f in (1, 2)]
    net.decoder.deep_supervision = False
    single = net(torch.randn(1, 2, *size))
    assert single.shape == (1, 3, *size) and torch.isfinite(single).all()


def test_network_errors_name_the_problem():
    with pytest.raises(ValueError, match="Conv2d"):
        UMambaEncUNet(1, 2, **{**arch_kwargs(), "conv_op": nn.Conv1d})
    with pytest.raises(ValueError, match="n_conv_per_stage"):
        UMambaEncUNet(1, 2, **{k: v for k, v in arch_kwargs().items() if k != "n_conv_per_stage"})
    with pytest.raises(ValueError, match="2 input channels"):
        UMambaBotUNet(2, 3, **arch_kwargs(3, 3))(torch.randn(1, 1, 8, 8, 8))


@pytest.mark.parametrize("cls, network", [(trainers.nnUNetTrainerUMambaEnc, UMambaEncUNet),
                                          (trainers.nnUNetTrainerUMambaBot, UMambaBotUNet)])
def test_umamba_trainers_use_nnunet_default_recipe(tmp_path, monkeypatch, cls, network):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    trainer = make_trainer(cls)
    assert (trainer.initial_lr, trainer.weight_decay, trainer.num_epochs) == (1e-2, 3e-5, 1000)
    assert (trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (250, 50)
    assert trainer.enable_deep_supervision
    trainer.network = build(cls)
    assert type(trainer.network) is network
    optimizer, scheduler = trainer.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and isinstance(scheduler, PolyLRScheduler)
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.99, True, 3e-5)


@pytest.mark.parametrize("cls", [tiny_trainers.nnUNetTrainerUMambaEnc_Tiny, tiny_trainers.nnUNetTrainerUMambaBot_Tiny])
def test_tiny_variants(tmp_path, monkeypatch, cls):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    tiny = make_trainer(cls)
    assert (tiny.num_epochs, tiny.num_iterations_per_epoch, tiny.num_val_iterations_per_epoch) == (2, 2, 1)


@pytest.mark.parametrize("cls", [trainers.nnUNetTrainerUMambaEnc, trainers.nnUNetTrainerUMambaBot])
@pytest.mark.parametrize("configuration, resenc", [("3d_fullres", False), ("2d", False), ("3d_fullres", True)])
def test_parameters_do_not_depend_on_deep_supervision(cls, configuration, resenc):
    on = build(cls, configuration, True, plans(resenc))
    off = build(cls, configuration, False, plans(resenc))
    off.load_state_dict(on.state_dict(), strict=True)
    assert on.decoder.deep_supervision and not off.decoder.deep_supervision


@pytest.mark.parametrize("cls", [trainers.nnUNetTrainerUMambaEnc, trainers.nnUNetTrainerSwinUNETR])
def test_compile_only_when_asked(tmp_path, monkeypatch, cls):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    trainer = make_trainer(cls)
    trainer.device = torch.device("cuda", 0)  # nnU-Net compiles by default on CUDA; these trainers do not
    monkeypatch.delenv("nnUNet_compile", raising=False)
    assert trainer._do_i_compile() is False
    monkeypatch.setenv("nnUNet_compile", "1")
    assert trainer._do_i_compile() is True


def test_padding_wrapper_pads_centred_and_crops_back():
    seen = []

    class Record(nn.Module):
        def forward(self, x):
            seen.append(x)
            return 2 * x

    x = torch.randn(2, 3, 5, 33).bfloat16()
    out = PaddedFloat32Network(Record(), size_multiple=32)(x)
    padded = seen[-1]
    assert padded.shape == (2, 3, 32, 64) and padded.dtype == torch.float32
    assert torch.equal(padded[:, :, 13:18, 15:48], x.float())  # (32 - 5) // 2 = 13, (64 - 33) // 2 = 15
    border = torch.ones_like(padded, dtype=torch.bool)
    border[:, :, 13:18, 15:48] = False
    assert not padded[border].any()
    assert torch.equal(out, 2 * x.float())


def test_padding_wrapper_sizes_and_errors():
    assert round_up([1, 32, 33, 95], 32) == [32, 32, 64, 96]
    assert PaddedFloat32Network(nn.Identity(), size_multiple=32).padded_size([16, 32, 20]) == [32, 32, 64]
    assert PaddedFloat32Network(nn.Identity(), size_multiple=32).padded_size([40, 20]) == [64, 32]
    fixed = PaddedFloat32Network(nn.Identity(), fixed_size=[16, 32])
    assert fixed.padded_size([10, 32]) == [16, 32]
    with pytest.raises(ValueError, match="at most the planned patch size"):
        fixed(torch.randn(1, 1, 17, 32))
    with pytest.raises(ValueError, match="size_multiple"):
        PaddedFloat32Network(nn.Identity(), size_multiple=0)


@pytest.mark.parametrize("cls, lr, scheduler_type", [
    (trainers.nnUNetTrainerSwinUNETR, 8e-4, CosineDecayLRScheduler),
    (trainers.nnUNetTrainerUNETR, 1e-4, PolyLRScheduler)])
def test_monai_recipe(tmp_path, monkeypatch, cls, lr, scheduler_type):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    trainer = make_trainer(cls, "2d")
    assert not trainer.enable_deep_supervision and trainer.grad_scaler is None
    assert trainer._get_deep_supervision_scales() is None
    trainer.network = build(cls, "2d", deep_supervision=False)
    trainer.set_deep_supervision_enabled(True)  # a no-op: one output
    optimizer, scheduler = trainer.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW) and isinstance(scheduler, scheduler_type)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["eps"]) == (lr, 0.01, 1e-5)
    scheduler.step(250)  # of 1000 epochs
    cosine = 1e-6 + (lr - 1e-6) * (1 + math.cos(math.pi / 4)) / 2
    expected = lr * 0.75 if cls is trainers.nnUNetTrainerUNETR else cosine  # linear decay vs cosine
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("cls, network_name", [(trainers.nnUNetTrainerSwinUNETR, "SwinUNETR"),
                                               (trainers.nnUNetTrainerUNETR, "UNETR")])
def test_monai_networks_segment_the_planned_patch(cls, network_name):
    torch.manual_seed(0)
    net = build(cls, "2d", plan=plan_with_patch("2d", [24, 40]))
    assert type(net.network).__name__ == network_name
    with torch.no_grad():
        out = net(torch.randn(1, 1, 24, 40))
    assert out.shape == (1, 3, 24, 40) and out.dtype == torch.float32 and torch.isfinite(out).all()
    if cls is trainers.nnUNetTrainerUNETR:
        assert net.fixed_size == [32, 48]
        with pytest.raises(ValueError, match="does not fit"):
            net(torch.randn(1, 1, 24, 56))


def test_monai_3d_networks_have_the_published_sizes():
    """SwinUNETR (feature size 48) has 62.19 M parameters and UNETR (ViT-B) 92.6 M for 1 input, 3 outputs."""
    swin = build(trainers.nnUNetTrainerSwinUNETR, plan=plan_with_patch("3d_fullres", [40, 64, 64]))
    unetr = build(trainers.nnUNetTrainerUNETR, plan=plan_with_patch("3d_fullres", [40, 64, 64]))
    assert sum(p.numel() for p in swin.parameters()) == pytest.approx(62.19e6, rel=1e-3)
    assert sum(p.numel() for p in unetr.parameters()) == pytest.approx(92.6e6, rel=2e-3)
    assert unetr.fixed_size == [48, 64, 64] and swin.padded_size([40, 64, 64]) == [64, 64, 64]


def test_monai_is_imported_only_when_a_network_is_built(monkeypatch):
    code = ("import sys\nimport logvmamba_nnunet_trainers as t\n"
            "assert t.nnUNetTrainerSwinUNETR and 'monai' not in sys.modules, 'monai imported'\nprint('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
    monkeypatch.setitem(sys.modules, "monai.networks.nets", None)  # what a missing MONAI looks like
    with pytest.raises(RuntimeError, match="pip install monai"):
        build(trainers.nnUNetTrainerUNETR, "2d")


def test_four_dimensional_patch_is_refused():
    bad = plans()
    bad["configurations"]["3d_fullres"]["patch_size"] = [8, 8, 8, 8]
    for cls in (trainers.nnUNetTrainerUMambaEnc, trainers.nnUNetTrainerSwinUNETR):
        with pytest.raises(ValueError, match="2D and 3D"):
            build(cls, plan=copy.deepcopy(bad))
