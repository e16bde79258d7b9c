"""The 2D model: VMamba-Tiny encoder + Swin-UMamba-dagger decoder with LoG-VMamba blocks (paper §3.4)."""

import math

import pytest
import torch
import torch.nn.functional as F
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

import logvmamba_nnunet_trainers as trainers
import tests.ext_trainers_for_tests.tiny_trainers as tiny_trainers
from logvmamba_nnunet.networks.log_vmamba_pooled_unet import LoGVMambaPooledUNet
from logvmamba_nnunet.networks.log_vmamba_unet import LoGVMambaUNet
from logvmamba_nnunet.networks.vmamba_decoder_2d import LoGVMambaDecoder2D, PatchExpand2D
from logvmamba_nnunet.networks.vmamba_encoder_2d import (
    PatchEmbedding2D,
    PatchMerging2D,
    VMambaEncoder2D,
    vmamba_dt_rank,
)
from logvmamba_nnunet.networks.vmamba_unet_2d import (
    LoGVMambaSwinUMamba2D,
    deep_supervision_scales_2d,
    init_vmamba_weights,
)
from tests.plans_factory import DATASET_JSON, plans

SMALL = {"widths": (16, 32, 64, 128), "depths": (1, 1, 1, 1), "decoder_blocks_per_level": 1}
N_STATE = 16


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def vss_block_parameters(c: int) -> int:
    """VMamba v0 VSS block of width c: E = 2, K = 4, dt rank ceil(c / 16), N = 16."""
    d, r, k = 2 * c, math.ceil(c / 16), 4
    return (2 * c + c * 2 * d + 9 * d + d + k * (r + 2 * N_STATE) * d + k * d * r + k * d + k * d * N_STATE + k * d
            + 2 * d + d * c)


def encoder_parameters(in_channels: int, widths, depths) -> int:
    embed = in_channels * widths[0] * 16 + widths[0] + 2 * widths[0]
    blocks = sum(depth * vss_block_parameters(c) for c, depth in zip(widths, depths))
    merges = sum(8 * c + 4 * c * 2 * c for c in widths[:-1])
    return embed + blocks + merges


def log_block_parameters(c: int, planned: tuple[int, int], ks: int, q: int) -> int:
    """LoG-VMamba block of width c in 2D: E = 2, LTX squeeze 8, K = 1, GTX stride ks and squeeze q; dt rank from the
    block width as the authors compute it, ceil(c / 8 * 9 / 16)."""
    d = 2 * c
    s = d // 8
    w = 9 * s
    r = math.ceil(c / 8 * 9 / 16)
    kernel = 2 * (ks // 2) + 1
    grid = math.prod(math.ceil(p / ks) for p in planned)
    ltx = 9 * d + s
    gtx = w * kernel**2 + w // q + grid * w + w
    ssm = (r + 2 * N_STATE) * w + w * r + w + w * N_STATE + w
    return 2 * c + c * 2 * d + ltx + gtx + ssm + w * d + 2 * d + d * c


def decoder_parameters(widths, patch, num_classes, blocks=2, strides=(2, 2, 4), squeezes=(2, 1, 1)) -> int:
    padded = [math.ceil(p / 32) * 32 for p in patch]
    total = 16 * widths[0] ** 2 + 2 * widths[0]
    total += sum(c * num_classes + num_classes for c in [widths[0], *widths[:-1]])
    for level, stage in enumerate(range(len(widths) - 2, -1, -1)):
        c = widths[stage]
        planned = tuple(p // (4 * 2**stage) for p in padded)
        total += 8 * c * c + 2 * c + 2 * c * c + c
        total += blocks * log_block_parameters(c, planned, strides[level], squeezes[level])
    return total


def test_vmamba_tiny_encoder_parameters_match_formula_and_vmamba_t():
    with torch.device("meta"):
        encoder = VMambaEncoder2D(3)
    n = count(encoder)
    assert n == encoder_parameters(3, (96, 192, 384, 768), (2, 2, 9, 2)) == 22_122_912
    # plus VMamba's classifier (LayerNorm(768), Linear(768 -> 1000)): VMamba-T v0's published 22.9 M
    assert round((n + 2 * 768 + 768 * 1000 + 1000) / 1e6, 1) == 22.9


@pytest.mark.parametrize("patch, expected", [((512, 512), 30_389_092), ((384, 640), 30_278_500),
                                             ((64, 64), 28_647_268)])
def test_parameter_count_3_in_1_out(patch, expected):
    """Recorded in docs/architecture.md. The GTX projections Linear(Ng -> Cg) depend on the planned patch. At 512^2
    the count is the authors' model's, 30,389,092 trainable parameters."""
    with torch.device("meta"):
        net = LoGVMambaSwinUMamba2D(3, 1, True, patch_size=patch)
    n = count(net)
    print(f"LoG-VMamba 2D (VMamba-Tiny encoder, LoG decoder), 3 in, 1 out, patch {patch}: {n:,} parameters")
    assert count(net.encoder) == encoder_parameters(3, (96, 192, 384, 768), (2, 2, 9, 2))
    assert count(net.decoder) == decoder_parameters((96, 192, 384, 768), patch, 1)
    assert n == sum(p.numel() for p in net.parameters() if p.requires_grad) == expected


def test_vmamba_tiny_64x64_deep_supervision_outputs():
    torch.manual_seed(0)
    net = LoGVMambaSwinUMamba2D(3, 2, True, patch_size=(64, 64)).eval()
    with torch.no_grad():
        outputs = net(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outputs] == [(1, 2, 64, 64), (1, 2, 16, 16), (1, 2, 8, 8), (1, 2, 4, 4)]
    assert all(torch.isfinite(o).all() for o in outputs)


def test_deep_supervision_toggle_keeps_parameters_and_full_output():
    torch.manual_seed(6)
    net = LoGVMambaSwinUMamba2D(3, 2, True, patch_size=(64, 64), **SMALL).eval()
    with torch.device("meta"):
        tiny_without = LoGVMambaSwinUMamba2D(3, 2, False, patch_size=(64, 64))
        tiny_with = LoGVMambaSwinUMamba2D(3, 2, True, patch_size=(64, 64))
    shapes = [(n, p.shape) for n, p in tiny_with.named_parameters()]
    assert shapes == [(n, p.shape) for n, p in tiny_without.named_parameters()]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outputs = net(x)
        net.decoder.deep_supervision = False
        single = net(x)
    assert isinstance(single, torch.Tensor) and len(outputs) == 4
    torch.testing.assert_close(single, outputs[0])


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (100, 130)])
def test_any_input_size_gives_outputs_of_nnunet_target_sizes(size):
    """Sizes that are not multiples of 32 are padded inside and cropped back; each deep-supervision output has the
    shape nnU-Net's DownsampleSegForDSTransform gives the target at the same scale."""
    torch.manual_seed(1)
    net = LoGVMambaSwinUMamba2D(3, 3, True, patch_size=(100, 130), **SMALL).eval()
    with torch.no_grad():
        outputs = net(torch.randn(1, 3, *size))
    targets = DownsampleSegForDSTransform(deep_supervision_scales_2d(4))(segmentation=torch.zeros(1, *size))
    assert [tuple(o.shape) for o in outputs] == [(1, 3, *t.shape[1:]) for t in targets["segmentation"]]
    assert tuple(outputs[0].shape[2:]) == size
    assert all(torch.isfinite(o).all() for o in outputs)


def test_gradients_reach_every_parameter():
    """In eval mode, so that drop path (0.2 at the last encoder block) does not drop a whole branch."""
    torch.manual_seed(7)
    net = LoGVMambaSwinUMamba2D(3, 3, True, patch_size=(64, 64), **SMALL).eval()
    outputs = net(torch.randn(1, 3, 36, 44))
    sum(o.square().mean() for o in outputs).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
               for p in net.parameters())


def test_deep_supervision_scales():
    assert deep_supervision_scales_2d() == [[1.0, 1.0], [0.25, 0.25], [0.125, 0.125], [0.0625, 0.0625]]
    assert deep_supervision_scales_2d(3) == [[1.0, 1.0], [0.25, 0.25], [0.125, 0.125]]


def test_patch_embedding_against_explicit_patches():
    torch.manual_seed(2)
    embed = PatchEmbedding2D(3, 8).double()
    torch.nn.init.normal_(embed.norm.weight)
    torch.nn.init.normal_(embed.norm.bias)
    x = torch.randn(2, 3, 8, 12, dtype=torch.float64)
    out = embed(x)
    assert out.shape == (2, 2, 3, 8)
    weight = embed.proj.weight.reshape(8, -1)
    for i in range(2):
        for j in range(3):
            patch = x[:, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4].reshape(2, -1)
            expected = F.layer_norm(patch @ weight.T + embed.proj.bias, (8,), embed.norm.weight, embed.norm.bias)
            torch.testing.assert_close(out[:, i, j], expected)


def test_patch_merging_uses_vmamba_phase_order():
    torch.manual_seed(3)
    merge = PatchMerging2D(4).double()
    torch.nn.init.normal_(merge.norm.weight)
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    out = merge(x)
    assert out.shape == (2, 3, 2, 8)
    for i in range(3):
        for j in range(2):
            window = [x[:, 2 * i, 2 * j], x[:, 2 * i + 1, 2 * j], x[:, 2 * i, 2 * j + 1], x[:, 2 * i + 1, 2 * j + 1]]
            normed = F.layer_norm(torch.cat(window, -1), (16,), merge.norm.weight, merge.norm.bias)
            torch.testing.assert_close(out[:, i, j], normed @ merge.reduction.weight.T)
    with pytest.raises(ValueError, match="even height and width"):
        merge(torch.randn(1, 5, 4, 4, dtype=torch.float64))


@pytest.mark.parametrize("scale, in_width, out_width", [(2, 8, 4), (4, 6, 6)])
def test_patch_expand_against_explicit_pixel_layout(scale, in_width, out_width):
    torch.manual_seed(4)
    expand = PatchExpand2D(in_width, out_width, scale).double()
    torch.nn.init.normal_(expand.norm.bias)
    x = torch.randn(2, 3, 2, in_width, dtype=torch.float64)
    out = expand(x)
    assert out.shape == (2, 3 * scale, 2 * scale, out_width)
    y = x @ expand.expand.weight.T
    for i in range(3):
        for j in range(2):
            for p in range(scale):
                for q in range(scale):
                    channels = [(p * scale + q) * out_width + c for c in range(out_width)]  # (p1 p2 c)
                    expected = F.layer_norm(y[:, i, j, channels], (out_width,), expand.norm.weight, expand.norm.bias)
                    torch.testing.assert_close(out[:, scale * i + p, scale * j + q], expected)


def test_encoder_is_vmamba_tiny_with_vss_blocks_and_rising_drop_path():
    with torch.device("meta"):
        encoder = VMambaEncoder2D(3)
    blocks = [block for stage in encoder.stages for block in stage]
    assert [len(stage) for stage in encoder.stages] == [2, 2, 9, 2]
    settings = {(b.mixer.kind, b.mixer.layout.directions, b.mixer.d_inner // b.mixer.dim) for b in blocks}
    assert settings == {("vss", 4, 2)}
    assert [b.mixer.ssm.dt_rank for b in (encoder.stages[0][0], encoder.stages[3][0])] == [6, 48]
    assert vmamba_dt_rank(96) == 6
    rates = [b.drop_path.drop_prob for b in blocks]
    assert rates[0] == 0.0 and math.isclose(rates[-1], 0.2)
    assert all(math.isclose(b - a, 0.2 / 14) for a, b in zip(rates, rates[1:]))


def test_decoder_uses_authors_gtx_settings_deepest_first():
    with torch.device("meta"):
        net = LoGVMambaSwinUMamba2D(3, 1, True, patch_size=(512, 512))
    mixers = [[block.mixer for block in level.blocks] for level in net.decoder.levels]
    assert [len(m) for m in mixers] == [2, 2, 2]
    assert [m[0].dim for m in mixers] == [384, 192, 96]
    assert {(x.kind, x.layout.directions, x.layout.placement) for m in mixers for x in m} == {
        ("local_global", 1, "interleaved")}
    gtx = [m[0].global_extractor for m in mixers]
    assert [g.compress.stride for g in gtx] == [(2, 2), (2, 2), (4, 4)]
    assert [g.compress.kernel_size for g in gtx] == [(3, 3), (3, 3), (5, 5)]
    assert [g.planned_grid for g in gtx] == [(16, 16), (32, 32), (32, 32)]
    ltx_width = [9 * (2 * c // 8) for c in (384, 192, 96)]
    assert [g.n_tokens for g in gtx] == [ltx_width[0] // 2, ltx_width[1], ltx_width[2]]
    rates = [block.drop_path.drop_prob for level in net.decoder.levels for block in level.blocks]
    assert math.isclose(rates[0], 0.2) and rates[-1] == 0.0


def test_vss_decoder_is_swin_umamba_dagger():
    with torch.device("meta"):
        net = LoGVMambaSwinUMamba2D(1, 2, True, patch_size=(384, 640), decoder_kind="vss", directions=4)
    mixers = [block.mixer for level in net.decoder.levels for block in level.blocks]
    assert {(m.kind, m.layout.directions, m.global_extractor) for m in mixers} == {("vss", 4, None)}
    assert net.encoder.patch_embed.proj.in_channels == 1


def he_std(fan_in: int) -> float:
    """Standard deviation of nnU-Net's He init (kaiming normal, negative slope 1e-2)."""
    return math.sqrt(2 / (1 + 1e-4)) / math.sqrt(fan_in)


def test_initialisation():
    """As the authors: VMamba's init (trunc-normal 0.02) for the encoder's Linear layers, PyTorch's default for the
    decoder's, He init for every conv."""
    torch.manual_seed(5)
    net = LoGVMambaSwinUMamba2D(3, 2, True, patch_size=(64, 64), **SMALL)
    assert 0.018 < net.encoder.merges[0].reduction.weight.std().item() < 0.022
    level = net.decoder.levels[0]
    assert torch.all(level.blocks[0].norm.weight == 1) and torch.any(level.merge.bias != 0)
    weight = net.decoder.final_expand.expand.weight  # PyTorch's default: U(+-1/sqrt(fan_in)), fan_in 16
    assert weight.abs().max().item() <= 0.25 and abs(weight.std().item() - 1 / math.sqrt(3 * 16)) < 0.01
    squeeze = level.blocks[0].mixer.extractor.squeeze  # grouped conv, 8 inputs per output, kernel 3x3
    assert torch.all(squeeze.bias == 0) and abs(squeeze.weight.std().item() - he_std(8 * 9)) < 0.02
    ssm = net.encoder.stages[0][0].mixer.ssm
    torch.testing.assert_close(ssm.A_log[0], torch.log(torch.arange(1.0, N_STATE + 1)))
    conv = torch.nn.Conv2d(64, 8, 3)
    init_vmamba_weights(conv)
    assert torch.all(conv.bias == 0)
    assert abs(conv.weight.std().item() - he_std(64 * 9)) < 0.01


def test_bad_arguments_and_inputs():
    net = LoGVMambaSwinUMamba2D(3, 2, True, patch_size=(32, 32), **SMALL)
    with pytest.raises(ValueError, match="3 input channels"):
        net(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="2D size"):
        LoGVMambaSwinUMamba2D(3, 2, patch_size=(16, 32, 32))
    with pytest.raises(ValueError, match="must double"):
        VMambaEncoder2D(3, widths=(16, 32, 48, 96), depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="one entry per stage"):
        VMambaEncoder2D(3, widths=(16, 32), depths=(1, 1, 1))
    with pytest.raises(ValueError, match="multiples of 32"):
        net.encoder(torch.randn(1, 3, 40, 32))
    with pytest.raises(ValueError, match="gtx_strides has 2 entries"):
        LoGVMambaDecoder2D((16, 32, 64, 128), 2, [(8, 8), (4, 4), (2, 2), (1, 1)], gtx_strides=(2, 2))
    with pytest.raises(ValueError, match="for 3 decoder levels"):
        LoGVMambaDecoder2D((16, 32, 64), 2, [(8, 8), (4, 4), (2, 2)])


def _trainer_network(cls, configuration: str):
    manager = PlansManager(plans())
    with torch.device("meta"):
        return cls.build_network_architecture(manager, manager.get_configuration(configuration), 3, 2, True)


@pytest.mark.parametrize("name, kind, placement, directions", [
    ("nnUNetTrainerLoGVMamba", "local_global", "interleaved", 1),
    ("nnUNetTrainerLVMamba", "local", "interleaved", 1),
    ("nnUNetTrainerGVMamba", "global", "interleaved", 1),
    ("nnUNetTrainerVSSMamba", "vss", "interleaved", 1),
    ("nnUNetTrainerLoGVMamba_Head", "local_global", "head", 1),
    ("nnUNetTrainerLoGVMamba_K4", "local_global", "interleaved", 4),
])
def test_trainers_build_the_vmamba_model_for_2d_with_their_decoder_mixer(name, kind, placement, directions):
    net = _trainer_network(getattr(trainers, name), "2d")
    assert isinstance(net, LoGVMambaSwinUMamba2D)
    mixers = [block.mixer for level in net.decoder.levels for block in level.blocks]
    assert {(m.kind, m.layout.placement, m.layout.directions) for m in mixers} == {(kind, placement, directions)}
    assert {b.mixer.kind for stage in net.encoder.stages for b in stage} == {"vss"}


def test_unet_trainer_keeps_the_unet_for_2d_and_3d_gets_the_pooled_topology_by_default():
    assert isinstance(_trainer_network(trainers.nnUNetTrainerLoGVMambaUNet, "2d"), LoGVMambaPooledUNet)
    assert isinstance(_trainer_network(trainers.nnUNetTrainerLoGVMamba, "3d_fullres"), LoGVMambaPooledUNet)
    assert isinstance(_trainer_network(trainers.nnUNetTrainerLoGVMamba_PooledTopology, "3d_fullres"),
                      LoGVMambaPooledUNet)
    assert isinstance(_trainer_network(trainers.nnUNetTrainerLoGVMamba_StageTopology, "3d_fullres"), LoGVMambaUNet)


def test_deep_supervision_scales_of_the_trainers(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))

    def scales(cls, configuration):
        trainer = cls(plans(), configuration, 0, dict(DATASET_JSON), torch.device("cpu"))
        return trainer._get_deep_supervision_scales()

    assert scales(trainers.nnUNetTrainerLoGVMamba, "2d") == deep_supervision_scales_2d(4)
    assert scales(tiny_trainers.nnUNetTrainerSwinUMambaLoG_Tiny, "2d") == deep_supervision_scales_2d(4)
    assert scales(trainers.nnUNetTrainerLoGVMambaUNet, "2d") == _trainer_network(
        trainers.nnUNetTrainerLoGVMambaUNet, "2d").deep_supervision_scales()
    assert scales(trainers.nnUNetTrainerLoGVMamba, "3d_fullres") == _trainer_network(
        trainers.nnUNetTrainerLoGVMamba, "3d_fullres").deep_supervision_scales()
    assert scales(trainers.nnUNetTrainerLoGVMamba_StageTopology, "3d_fullres") == [[1.0, 1.0, 1.0], [0.5, 0.5, 0.5]]
