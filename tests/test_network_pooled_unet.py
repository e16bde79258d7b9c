"""The LoG-VMamba U-Net with the authors' pooled 3D topology (``LoGVMambaPooledUNet``) and its trainer variant."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import logvmamba_nnunet_trainers as trainers
from logvmamba_nnunet.networks.log_vmamba_pooled_unet import (
    LoGVMambaPooledUNet,
    ProjectedResidualBlock,
    brats_reference_pooled_arch_kwargs,
    deep_supervision_scales,
    default_stem_pool,
)
from logvmamba_nnunet.networks.log_vmamba_unet import ChannelsFirstBlock, LoGVMambaUNet
from logvmamba_nnunet.networks.vmamba_unet_2d import LoGVMambaSwinUMamba2D
from logvmamba_nnunet.nnunet.ddp import deep_supervision_head_names, freeze_deep_supervision_heads
from logvmamba_nnunet.nnunet.plans import network_kwargs_from_configuration
from logvmamba_nnunet.ops.flops import count_scan_flops
from logvmamba_nnunet.profiling.profile import saved_activation_bytes
from tests.plans_factory import DATASET_JSON, plans
from tests.test_network_log_unet import he_std, plan_kwargs

ACDC_PATCH = [10, 64, 56]
ACDC_STRIDES = [[1, 1, 1], [2, 2, 2], [1, 2, 2], [1, 2, 2]]


def acdc_like_kwargs(features=(32, 64, 128, 256)) -> dict:
    """An nnU-Net-style anisotropic plan (thin first axis, first kernel 1x3x3)."""
    kwargs = plan_kwargs(3, 4, list(features), ACDC_PATCH, ACDC_STRIDES)
    kwargs["kernel_sizes"] = [[1, 3, 3]] + [[3, 3, 3]] * 3
    return kwargs


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def brats_network() -> LoGVMambaPooledUNet:
    with torch.device("meta"):
        return LoGVMambaPooledUNet(4, 3, True, **brats_reference_pooled_arch_kwargs())


def test_brats_reference_has_the_authors_trainable_parameter_count():
    """Authors' BraTS model: 20,553,828 parameters, of which 2,187 are the frozen identity weights of their unfold
    (no parameters here), so 20,551,641 trainable; deep-supervision heads (not in theirs) excluded."""
    net = brats_network()
    heads = net.deep_supervision_head_parameters()
    assert heads == (32 + 64 + 128 + 256) * 3 + 4 * 3
    assert n_parameters(net) - heads == 20_551_641


def test_brats_reference_follows_the_authors_layout():
    net = brats_network()
    assert net.stem_pool == (2, 2, 2)
    assert [c.planned_size for c in net.stage_configs] == [(64,) * 3, (32,) * 3, (16,) * 3, (8,) * 3, (4,) * 3]
    assert [c.kind for c in net.stage_configs] == ["local", "local_global", "local_global", "global", "global"]
    assert [c.gtx_stride for c in net.stage_configs] == [1, 4, 2, 1, 1]  # grids of 512, 512, 512, 64 positions
    assert [c.gtx_squeeze for c in net.stage_configs] == [1, 1, 1, 2, 8]
    assert [n_parameters(layer) for layer in net.encoder.stage_layers] == [8_926, 86_528, 214_480, 357_504, 367_400]
    assert len(net.encoder.stem) == 2  # U-Mamba's depth rule on n_conv_per_stage = 2
    assert [len(stage) for stage in net.encoder.stages] == [2, 2, 2, 1, 1]
    assert [len(stage) for stage in net.decoder.stages] == [2, 2, 2, 1]  # lowest resolution first
    first_blocks = [net.encoder.stem[0], *(s[0] for s in net.encoder.stages), *(s[0] for s in net.decoder.stages)]
    assert all(isinstance(block, ProjectedResidualBlock) for block in first_blocks)
    blocks = [layer.block for layer in net.encoder.stage_layers]
    assert {(b.norm.eps, b.drop_path.drop_prob, b.fp32) for b in blocks} == {(1e-6, 0.1, True)}


def test_he_init_over_the_whole_network():
    torch.manual_seed(0)
    net = LoGVMambaPooledUNet(4, 3, True, **{**brats_reference_pooled_arch_kwargs(), "patch_size": [32] * 3})
    squeeze = net.encoder.stage_layers[1].block.mixer.extractor.squeeze  # LTX at 64 channels: 16 in per group, k3
    for conv, fan_in in ((net.encoder.stages[3][0].conv1.conv, 128 * 27), (squeeze, 16 * 27)):
        assert torch.all(conv.bias == 0)
        assert abs(conv.weight.std().item() / he_std(fan_in) - 1) < 0.1


@pytest.mark.parametrize("patch, strides, expected", [
    ([128, 128, 128], [[1] * 3] + [[2] * 3] * 4, (2, 2, 2)),
    (ACDC_PATCH, ACDC_STRIDES, (1, 2, 1)),  # 10 and 56 are not divisible by 2 x (2, 8)
    ([20, 256, 224], [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]], (1, 2, 1)),
    ([40, 256, 256], [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]], (2, 2, 2)),
    ([20, 24], [[1, 1], [2, 2], [2, 2]], (1, 2)),
    ([16, 32, 32], [[1] * 3, [2] * 3, [2] * 3], (2, 2, 2)),
    ([8, 8, 16], [[1] * 3, [2] * 3, [2] * 3], (1, 1, 2)),  # 8 / (2 x 4) = 1: the bottleneck would be 1 voxel
])
def test_pooling_rule(patch, strides, expected):
    assert default_stem_pool(patch, strides) == expected
    for axis, pooled in enumerate(expected):
        total = math.prod(s[axis] for s in strides)
        assert (pooled == 2) == (patch[axis] % (2 * total) == 0 and patch[axis] // (2 * total) >= 2)


def test_anisotropic_plan_pools_only_the_allowed_axes():
    net = LoGVMambaPooledUNet(1, 4, True, **acdc_like_kwargs())
    assert net.stem_pool == (1, 2, 1)
    assert net.encoder.pool.kernel_size == (1, 2, 1)
    assert [c.planned_size for c in net.stage_configs] == [(10, 32, 56), (5, 16, 28), (5, 8, 14), (5, 4, 7)]
    assert net.deep_supervision_scales() == deep_supervision_scales(ACDC_PATCH, ACDC_STRIDES) == [
        [1.0, 1.0, 1.0], [1.0, 0.5, 1.0], [0.5, 0.25, 0.5], [0.5, 0.125, 0.25]]
    override = LoGVMambaPooledUNet(1, 4, True, stem_pool=[1, 2, 2], **acdc_like_kwargs())
    assert override.deep_supervision_scales()[-1] == [0.5, 0.125, 7 / 56]
    assert override.stage_configs[-1].planned_size == (5, 4, 4)  # 56 / 2 / 8 = 3.5, rounded up


def check_forward(net: nn.Module, input_shape: tuple[int, ...], backward: bool) -> list[torch.Tensor]:
    """Deep-supervision outputs: one per scale, each of the size nnU-Net's target downsampling gives."""
    x = torch.randn(input_shape)
    outputs = net(x)
    scales = net.deep_supervision_scales()
    assert len(outputs) == len(scales) == net.topology.n_stages
    assert [list(o.shape[2:]) for o in outputs] == [[round(p * s) for p, s in zip(input_shape[2:], scale)]
                                                    for scale in scales]
    assert all(o.shape[:2] == (input_shape[0], net.decoder.heads[0].out_channels) for o in outputs)
    if backward:
        sum(o.square().mean() for o in outputs).backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    return outputs


@pytest.mark.parametrize("dims, patch, strides, blocks_key, pool", [
    (3, [12, 16, 16], [[1, 1, 1], [1, 2, 2], [2, 2, 2]], "n_blocks_per_stage", (2, 2, 2)),
    (2, [20, 24], [[1, 1], [2, 2], [2, 2]], "n_blocks_per_stage", (1, 2)),
    (3, [16, 16, 16], [[1] * 3, [2] * 3, [2] * 3], "n_conv_per_stage", (2, 2, 2)),
    (2, [16, 16], [[1, 1], [2, 2]], "n_conv_per_stage", (2, 2)),
    (3, [8, 8, 8], [[1] * 3, [2] * 3, [2] * 3], "n_conv_per_stage", (1, 1, 1)),
])
def test_forward_and_backward_on_the_test_plans(dims, patch, strides, blocks_key, pool):
    torch.manual_seed(0)
    n_stages = len(strides)
    kwargs = plan_kwargs(dims, n_stages, [8, 16, 32][:n_stages], patch, strides, blocks_key=blocks_key)
    net = LoGVMambaPooledUNet(2, 3, True, drop_path_rate=0.0, **kwargs)
    assert net.stem_pool == pool
    max_pool = nn.MaxPool3d if dims == 3 else nn.MaxPool2d
    assert isinstance(net.encoder.pool, max_pool if max(pool) > 1 else nn.Identity)
    assert net.decoder.mode == ("trilinear" if dims == 3 else "bilinear")
    check_forward(net, (2, 2, *patch), backward=True)


@pytest.mark.parametrize("configuration, resenc", [("3d_fullres", False), ("2d", False), ("3d_fullres", True)])
def test_forward_on_the_factory_plans_through_the_plans_manager(configuration, resenc):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans(resenc))
    kwargs = network_kwargs_from_configuration(manager.get_configuration(configuration))
    torch.manual_seed(0)
    net = LoGVMambaPooledUNet(1, 3, True, **kwargs)
    check_forward(net, (1, 1, *kwargs["patch_size"]), backward=True)


def test_acdc_like_plan_forward_and_backward():
    torch.manual_seed(0)
    net = LoGVMambaPooledUNet(1, 4, True, **acdc_like_kwargs(features=(8, 16, 32, 64)))
    outputs = check_forward(net, (1, 1, *ACDC_PATCH), backward=True)
    assert [tuple(o.shape[2:]) for o in outputs] == [(10, 64, 56), (10, 32, 56), (5, 16, 28), (5, 8, 14)]


def test_six_stage_nnunet_plan_at_128_on_the_meta_device():
    kwargs = plan_kwargs(3, 6, [32, 64, 128, 256, 320, 320], [128] * 3, [[1] * 3] + [[2] * 3] * 5)
    x = torch.zeros(1, 4, 128, 128, 128, device="meta")
    with torch.device("meta"):
        net = LoGVMambaPooledUNet(4, 4, True, **kwargs)
    with count_scan_flops():  # the scans return zeros of the right shape (no kernel on the meta device)
        outputs = net(x)
    assert net.stem_pool == (2, 2, 2)  # 128 = 2 x 32 x 2: pooled, the bottleneck is 2^3
    assert [c.kind for c in net.stage_configs] == ["local", "local_global", "local_global", "local_global",
                                                    "global", "global"]
    assert [c.planned_size[0] for c in net.stage_configs] == [64, 32, 16, 8, 4, 2]
    assert [c.gtx_stride for c in net.stage_configs] == [1, 4, 2, 1, 1, 1]
    assert [tuple(o.shape[2:]) for o in outputs] == [(128,) * 3, (64,) * 3, (32,) * 3, (16,) * 3, (8,) * 3,
                                                     (4,) * 3]
    with torch.device("meta"):
        unpooled = LoGVMambaPooledUNet(4, 4, True, stem_pool=1, **kwargs)
    with count_scan_flops():
        outputs = unpooled(x)
    assert isinstance(unpooled.encoder.pool, nn.Identity)
    assert [tuple(o.shape[2:]) for o in outputs][1:] == [(128,) * 3, (64,) * 3, (32,) * 3, (16,) * 3, (8,) * 3]


def test_parameters_do_not_depend_on_deep_supervision():
    torch.manual_seed(0)
    kwargs = plan_kwargs(3, 3, [8, 16, 32], [16, 16, 16], [[1] * 3, [2] * 3, [2] * 3])
    with_ds = LoGVMambaPooledUNet(1, 3, True, drop_path_rate=0.0, **kwargs)
    without_ds = LoGVMambaPooledUNet(1, 3, False, drop_path_rate=0.0, **kwargs)
    assert [n for n, _ in with_ds.named_parameters()] == [n for n, _ in without_ds.named_parameters()]
    without_ds.load_state_dict(with_ds.state_dict(), strict=True)
    x = torch.randn(1, 1, 16, 16, 16)
    torch.testing.assert_close(without_ds(x), with_ds(x)[0])
    with_ds.decoder.deep_supervision = False  # what nnU-Net's set_deep_supervision_enabled does
    assert isinstance(with_ds(x), torch.Tensor)


@pytest.mark.parametrize("shape", [(1, 1, 24, 20, 16), (1, 1, 12, 12, 8), (2, 1, 15, 17, 9), (1, 1, 40, 32, 32)])
def test_inputs_of_other_sizes_than_the_patch(shape):
    torch.manual_seed(0)
    net = LoGVMambaPooledUNet(1, 2, False, **plan_kwargs(3, 3, [8, 16, 32], [16, 16, 16],
                                                        [[1] * 3, [2] * 3, [2] * 3])).eval()
    with torch.no_grad():
        out = net(torch.randn(shape))
    assert out.shape == (shape[0], 2, *shape[2:]) and torch.isfinite(out).all()


def test_upsampling_conv_first_equals_the_authors_order():
    """1x1 conv then trilinear upsampling equals the authors' upsampling then 1x1 conv (both linear, weights of the
    interpolation sum to one)."""
    torch.manual_seed(0)
    net = LoGVMambaPooledUNet(1, 2, False, **plan_kwargs(3, 3, [8, 16, 32], [16, 16, 16],
                                                        [[1] * 3, [2] * 3, [2] * 3])).double()
    conv = net.decoder.upsample_convs[0]
    nn.init.normal_(conv.bias)
    x, skip = torch.randn(2, 32, 4, 4, 4, dtype=torch.float64), torch.zeros(2, 16, 8, 8, 8, dtype=torch.float64)
    authors = conv(F.interpolate(x, scale_factor=2, mode="trilinear"))
    torch.testing.assert_close(net.decoder.upsample_to(conv(x), skip), authors)


def test_force_fp32_and_input_checks():
    kwargs = plan_kwargs(2, 2, [8, 16], [16, 16], [[1, 1], [2, 2]])
    net = LoGVMambaPooledUNet(1, 2, False, force_fp32=True, **kwargs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(torch.randn(1, 1, 16, 16)).dtype == torch.float32
    with pytest.raises(ValueError, match="built for 1 input channels"):
        net(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="patch_size is required"):
        LoGVMambaPooledUNet(1, 2, False, **{**kwargs, "patch_size": None})
    with pytest.raises(ValueError, match="has 3 axes"):
        LoGVMambaPooledUNet(1, 2, False, **{**kwargs, "patch_size": [16, 16, 16]})


def make_trainer(cls, configuration="3d_fullres"):
    return cls(plans(), configuration, 0, dict(DATASET_JSON), torch.device("cpu"))


def build(cls, configuration="3d_fullres", deep_supervision=True):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans())
    return cls.build_network_architecture(manager, manager.get_configuration(configuration), 1, 3, deep_supervision)


def test_trainer_variants_build_their_topology(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    pooled = build(trainers.nnUNetTrainerLoGVMamba_PooledTopology)
    assert type(pooled) is LoGVMambaPooledUNet and pooled.stem_pool == (2, 2, 2)
    assert type(build(trainers.nnUNetTrainerLoGVMamba_StageTopology)) is LoGVMambaUNet
    assert type(build(trainers.nnUNetTrainerLoGVMamba)) is LoGVMambaPooledUNet  # the default topology
    assert type(build(trainers.nnUNetTrainerLoGVMamba_PooledTopology, "2d")) is LoGVMambaSwinUMamba2D
    mixers = [layer.block.mixer for layer in pooled.encoder.stage_layers if isinstance(layer, ChannelsFirstBlock)]
    assert {m.layout.placement for m in mixers} == {"interleaved"} and len(mixers) == 3

    trainer = make_trainer(trainers.nnUNetTrainerLoGVMamba_PooledTopology)
    assert trainer._get_deep_supervision_scales() == pooled.deep_supervision_scales()
    assert trainer._get_deep_supervision_scales() == [[1.0] * 3, [0.5] * 3, [0.25] * 3]
    stage = make_trainer(trainers.nnUNetTrainerLoGVMamba_StageTopology)
    assert [list(s) for s in stage._get_deep_supervision_scales()] == [[1.0] * 3, [0.5] * 3]
    trainer.enable_deep_supervision = False
    assert trainer._get_deep_supervision_scales() is None


def test_plans_file_can_name_the_class():
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    configuration = PlansManager(plans()).get_configuration("3d_fullres")
    arch_kwargs = {**configuration.network_arch_init_kwargs, "patch_size": configuration.patch_size}
    net = get_network_from_plans("logvmamba_nnunet.networks.log_vmamba_pooled_unet.LoGVMambaPooledUNet",
                                 arch_kwargs, configuration.network_arch_init_kwargs_req_import, 1, 3,
                                 deep_supervision=True)
    assert isinstance(net, LoGVMambaPooledUNet) and net.encoder.stem[0].conv1.conv.in_channels == 1


def test_deep_supervision_heads_for_ddp():
    torch.manual_seed(0)
    net = build(trainers.nnUNetTrainerLoGVMamba_PooledTopology, deep_supervision=False)
    names = deep_supervision_head_names(net)
    assert names == [f"decoder.heads.{i}.{p}" for i in (1, 2) for p in ("weight", "bias")]
    x = torch.randn(1, 1, 16, 32, 32)
    net(x).square().mean().backward()
    assert {n for n, p in net.named_parameters() if p.grad is None} == set(names)
    assert freeze_deep_supervision_heads(net) == names


def test_full_resolution_recomputation_keeps_results_and_drops_the_tails_maps():
    torch.manual_seed(0)
    net = LoGVMambaPooledUNet(1, 3, True, **acdc_like_kwargs(features=(8, 16, 32, 64)))
    plain = copy.deepcopy(net)
    plain.decoder.recompute_full_resolution = False
    assert net.decoder.recompute_full_resolution  # the default
    x = torch.randn(2, 1, *ACDC_PATCH)
    weights = [torch.randn(o.shape) for o in plain(x)]
    results = []
    for network in (net, plain):
        torch.manual_seed(5)  # the blocks' DropPath draws
        loss = sum((o * w).sum() for o, w in zip(network(x), weights, strict=True))
        loss.backward()
        results.append((loss.detach(), {n: p.grad for n, p in network.named_parameters() if p.grad is not None}))
    (loss, grads), (plain_loss, plain_grads) = results
    assert torch.equal(loss, plain_loss) and grads.keys() == plain_grads.keys()
    assert all(torch.equal(grads[n], plain_grads[n]) for n in grads)

    saved, plain_saved = (saved_activation_bytes(n, x) for n in (net, plain))
    full_map = 4 * 2 * 8 * math.prod(ACDC_PATCH)  # one float32 map of the stem's 8 channels
    assert plain_saved - saved >= 4 * full_map  # the tail's block keeps at least 4 full-resolution maps
    net.eval()  # no recomputation outside training
    with torch.no_grad():
        assert torch.equal(net(x)[0], plain.eval()(x)[0])


def test_trainer_switch_for_full_resolution_recomputation(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    assert build(trainers.nnUNetTrainerLoGVMamba).decoder.recompute_full_resolution

    class NoTailRecomputation(trainers.nnUNetTrainerLoGVMamba):
        recompute_full_resolution = False

    assert not build(NoTailRecomputation).decoder.recompute_full_resolution
