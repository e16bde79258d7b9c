"""The LoG-VMamba U-Net built from nnU-Net-style architecture kwargs."""

import math

import pytest
import torch
from torch import nn

from logvmamba_nnunet.modules.block import LoGVMambaBlock
from logvmamba_nnunet.networks.log_vmamba_unet import ChannelsFirstBlock, LoGVMambaUNet, brats_reference_arch_kwargs


def plan_kwargs(dims: int, n_stages: int, features: list[int], patch: list[int], strides: list[list[int]],
                blocks_key: str = "n_conv_per_stage") -> dict:
    conv, norm = (nn.Conv3d, nn.InstanceNorm3d) if dims == 3 else (nn.Conv2d, nn.InstanceNorm2d)
    return {"n_stages": n_stages, "features_per_stage": features, "conv_op": conv,
            "kernel_sizes": [[3] * dims] * n_stages, "strides": strides, blocks_key: [1] * n_stages,
            "n_conv_per_stage_decoder": [1] * (n_stages - 1), "conv_bias": True, "norm_op": norm,
            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "nonlin": nn.LeakyReLU,
            "nonlin_kwargs": {"inplace": True}, "patch_size": patch}


def test_real_sized_3d_plan_on_meta_device():
    """nnU-Net-like 6-stage plan at 128^3 with 4 input channels: per-stage kinds, GTX settings."""
    kwargs = plan_kwargs(3, 6, [32, 64, 128, 256, 320, 320], [128] * 3, [[1] * 3] + [[2] * 3] * 5)
    with torch.device("meta"):
        net = LoGVMambaUNet(4, 4, True, **kwargs)
    assert [c.kind for c in net.stage_configs] == ["local", "local_global", "local_global", "local_global",
                                                    "global", "global"]
    assert [c.gtx_stride for c in net.stage_configs] == [1, 4, 2, 1, 1, 1]
    assert [c.gtx_squeeze for c in net.stage_configs] == [1, 1, 1, 1, 2, 8]
    mixers = [layer.block.mixer for layer in net.encoder.stage_layers]
    assert [m.kind for m in mixers] == [c.kind for c in net.stage_configs]
    assert net.encoder.residual_encoder.stem.convs[0].conv.in_channels == 4


def test_brats_reference_parameter_count():
    """Authors' 5-stage BraTS model: 20.55 M reported; this topology gives 20.14 M (see docs/architecture.md)."""
    with torch.device("meta"):
        net = LoGVMambaUNet(4, 3, True, **brats_reference_arch_kwargs())
    count = sum(p.numel() for p in net.parameters())
    assert 19.5e6 < count < 21.0e6


@pytest.mark.parametrize("dims, patch, strides", [
    (3, [12, 16, 16], [[1, 1, 1], [1, 2, 2], [2, 2, 2]]),
    (2, [20, 24], [[1, 1], [2, 2], [2, 2]]),
])
def test_forward_shapes_with_and_without_deep_supervision(dims, patch, strides):
    torch.manual_seed(0)
    kwargs = plan_kwargs(dims, 3, [8, 16, 32], patch, strides, blocks_key="n_blocks_per_stage")
    kwargs["drop_path_rate"] = 0.0  # both forwards below run in training mode: no random branch drops
    with_ds, without_ds = LoGVMambaUNet(2, 3, True, **kwargs), LoGVMambaUNet(2, 3, False, **kwargs)
    assert [n for n, _ in with_ds.named_parameters()] == [n for n, _ in without_ds.named_parameters()]
    without_ds.load_state_dict(with_ds.state_dict(), strict=True)
    x = torch.randn(2, 2, *patch)
    outputs = with_ds(x)
    expected = [patch, [p // s for p, s in zip(patch, strides[1])]]  # one output per decoder level
    assert [list(o.shape[2:]) for o in outputs] == expected
    assert all(o.shape[:2] == (2, 3) for o in outputs)
    single = without_ds(x)
    torch.testing.assert_close(single, outputs[0])
    sum(o.sum() for o in outputs).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in with_ds.parameters())


def test_other_input_size_works():
    kwargs = plan_kwargs(3, 3, [8, 16, 32], [16, 16, 16], [[1] * 3, [2] * 3, [2] * 3])
    net = LoGVMambaUNet(1, 2, False, **kwargs).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 24, 20, 16)).shape == (1, 2, 24, 20, 16)


def test_force_fp32_ignores_autocast():
    kwargs = plan_kwargs(2, 2, [8, 16], [16, 16], [[1, 1], [2, 2]])
    net = LoGVMambaUNet(1, 2, False, force_fp32=True, **kwargs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(torch.randn(1, 1, 16, 16)).dtype == torch.float32


def test_dotted_names_from_plans_are_resolved():
    kwargs = plan_kwargs(2, 2, [8, 16], [16, 16], [[1, 1], [2, 2]])
    kwargs.update(conv_op="torch.nn.modules.conv.Conv2d", norm_op="torch.nn.modules.instancenorm.InstanceNorm2d",
                  nonlin="torch.nn.LeakyReLU")
    net = LoGVMambaUNet(1, 2, False, **kwargs)
    assert isinstance(net.encoder.stage_layers[0], ChannelsFirstBlock)


@pytest.mark.parametrize("change, message", [
    ({"stage_kinds": ["local", "mamba"]}, "unknown stage kind"),
    ({"placement": "tail"}, "placement"),
    ({"conv_op": nn.Conv1d}, "2D \\(Conv2d\\) or 3D"),
    ({"patch_size": [1, 16]}, "too small"),
    ({"patch_size": None}, "patch_size is required"),
    ({"patch_size": [16, 16, 16]}, "has 3 axes"),
])
def test_misuse_gives_clear_errors(change, message):
    kwargs = plan_kwargs(2, 2, [8, 16], [16, 16], [[1, 1], [2, 2]])
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        LoGVMambaUNet(1, 2, False, **kwargs)


def test_wrong_number_of_input_channels():
    net = LoGVMambaUNet(3, 2, False, **plan_kwargs(2, 2, [8, 16], [16, 16], [[1, 1], [2, 2]]))
    with pytest.raises(ValueError, match="built for 3 input channels"):
        net(torch.randn(1, 1, 16, 16))


def log_blocks(net: LoGVMambaUNet) -> list:
    return [layer.block for layer in net.encoder.stage_layers if isinstance(layer, ChannelsFirstBlock)]


def test_blocks_follow_the_authors_3d_settings():
    """As the authors' 3D network: LayerNorm eps 1e-6, DropPath 0.1 on every block, the whole block in float32."""
    with torch.device("meta"):
        net = LoGVMambaUNet(4, 3, True, **brats_reference_arch_kwargs())
    assert {(b.norm.eps, b.drop_path.drop_prob, b.fp32) for b in log_blocks(net)} == {(1e-6, 0.1, True)}


@pytest.mark.parametrize("fp32_blocks, inner_dtype", [(True, torch.float32), (False, torch.bfloat16)])
def test_blocks_run_in_float32_under_autocast(fp32_blocks, inner_dtype):
    torch.manual_seed(0)
    kwargs = plan_kwargs(3, 3, [8, 16, 32], [8, 8, 8], [[1] * 3, [2] * 3, [2] * 3])
    net = LoGVMambaUNet(1, 2, False, fp32_blocks=fp32_blocks, **kwargs)
    seen = []
    for block in log_blocks(net):
        block.mixer.extractor.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.randn(1, 1, 8, 8, 8))
    assert seen == [inner_dtype] * 3
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def he_std(fan_in: int) -> float:
    """Standard deviation of dynamic-network-architectures' ``InitWeights_He(1e-2)``."""
    return math.sqrt(2 / ((1 + 0.01**2) * fan_in))


def test_block_convolutions_get_he_init():
    """``InitWeights_He(1e-2)`` reaches the convolutions inside the blocks, as over the authors' whole model."""
    torch.manual_seed(0)
    net = LoGVMambaUNet(4, 3, True, **{**brats_reference_arch_kwargs(), "patch_size": [32, 32, 32]})
    blocks = log_blocks(net)
    squeeze = blocks[1].mixer.extractor.squeeze  # LTX of the LoG block at 64 channels: 16 inputs per output, k3
    depthwise = blocks[3].mixer.extractor.conv  # vanilla extractor of the G block at 256 channels: depthwise k3
    for conv, fan_in in ((squeeze, 16 * 27), (depthwise, 27)):
        assert conv.weight.numel() >= 1728 and torch.all(conv.bias == 0)
        assert abs(conv.weight.std().item() / he_std(fan_in) - 1) < 0.1


def test_block_parameters_match_the_authors_at_their_stage_sizes():
    """The authors' blocks run at half this topology's resolution (64^3 ... 4^3 for a 128^3 patch, GTX grids of
    512, 512, 512 and 64 positions); at those sizes and strides every block has the authors' parameter count."""
    with torch.device("meta"):
        net = LoGVMambaUNet(4, 3, True, gtx_strides=[1, 4, 2, 1, 1],
                            **{**brats_reference_arch_kwargs(), "patch_size": [64, 64, 64]})
    counts = [sum(p.numel() for p in layer.parameters()) for layer in net.encoder.stage_layers]
    assert counts == [8_926, 86_528, 214_480, 357_504, 367_400]


def run_training_step(net: LoGVMambaUNet, x: torch.Tensor, seed: int) -> list[torch.Tensor]:
    net.zero_grad()
    x.grad = None
    torch.manual_seed(seed)
    outputs = net(x)
    sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outputs).backward()
    return [o.detach() for o in outputs] + [x.grad.clone()] + [p.grad.clone() for p in net.parameters()]


def test_recompute_blocks_changes_memory_not_results():
    """recompute_blocks on (the default) and off: bit-identical outputs and gradients in training with DropPath
    dropping samples; the blocks then keep only their inputs, which the network holds anyway, so the saved
    activations of the whole network shrink by about the blocks' share."""
    torch.manual_seed(0)
    kwargs = plan_kwargs(3, 3, [8, 16, 32], [8, 12, 12], [[1, 1, 1], [1, 2, 2], [2, 2, 2]])
    net = LoGVMambaUNet(1, 2, True, drop_path_rate=0.5, **kwargs).train()
    assert all(block.recompute for block in log_blocks(net))
    x = torch.randn(4, 1, 8, 12, 12, requires_grad=True)
    results, saved = {}, {}
    for recompute in (True, False):
        for block in log_blocks(net):
            block.recompute = recompute
        storages = {}

        def pack(tensor, storages=storages):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            results[recompute] = run_training_step(net, x, seed=3)
        parameters = {p.untyped_storage().data_ptr() for p in net.parameters()}
        saved[recompute] = sum(n for pointer, n in storages.items() if pointer not in parameters)
    for with_recompute, without in zip(results[True], results[False], strict=True):
        assert torch.equal(with_recompute, without)
    assert saved[True] < 0.75 * saved[False]
    off = LoGVMambaUNet(1, 2, True, drop_path_rate=0.5, recompute_blocks=False, **kwargs)
    assert not any(block.recompute for block in log_blocks(off))


def test_channels_first_block_returns_a_contiguous_map_without_a_copy_back():
    torch.manual_seed(0)
    layer = ChannelsFirstBlock(LoGVMambaBlock(8, 3, "local", planned_size=(3, 4, 5), d_state=4))
    x = torch.randn(2, 8, 3, 4, 5, requires_grad=True)
    for train in (True, False):
        out = layer.train(train)(x)
        assert out.shape == x.shape and out.is_contiguous()
        torch.testing.assert_close(out, layer.block(x.movedim(1, -1).contiguous()).movedim(-1, 1))
