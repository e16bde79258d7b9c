"""The residual pre-norm block and its DropPath (dynamic-network-architectures' stochastic depth)."""

import pytest
import torch
import torch.nn.functional as F

from logvmamba_nnunet.modules.block import DropPath, LoGVMambaBlock


def test_drop_path_is_identity_in_eval_and_at_zero():
    x = torch.randn(8, 3, 4)
    assert torch.equal(DropPath(0.3).eval()(x), x)
    assert torch.equal(DropPath(0.0).train()(x), x)


def test_drop_path_drops_whole_samples_and_rescales_the_rest():
    torch.manual_seed(0)
    x = torch.rand(4000, 2, 3) + 0.5
    out = DropPath(0.25).train()(x)
    kept = (out != 0).all(dim=(1, 2))
    assert torch.all((out == 0).all(dim=(1, 2)) | kept)
    torch.testing.assert_close(out[kept], x[kept] / 0.75)
    assert abs(kept.float().mean().item() - 0.75) < 0.03


@pytest.mark.parametrize("probability", [-0.1, 1.0])
def test_drop_path_rejects_bad_probability(probability):
    with pytest.raises(ValueError, match=r"drop_path=.* must be in \[0, 1\)"):
        LoGVMambaBlock(8, 2, "vss", drop_path=probability)


@pytest.mark.parametrize(
    ("spatial_dims", "size", "kind"), [(2, (4, 3), "local_global"), (3, (2, 3, 3), "global")]
)
def test_block_is_prenorm_residual_around_the_mixer(spatial_dims, size, kind):
    torch.manual_seed(0)
    block = LoGVMambaBlock(8, spatial_dims, kind, planned_size=size, d_state=4).eval()
    with torch.no_grad():
        block.norm.weight.add_(torch.randn(8))
        block.norm.bias.add_(torch.randn(8))
    x = torch.randn(2, *size, 8)
    normalised = F.layer_norm(x, (8,), block.norm.weight, block.norm.bias)
    torch.testing.assert_close(block(x), x + block.mixer(normalised))


def test_block_drop_path_in_training_passes_dropped_samples_through():
    torch.manual_seed(0)
    block = LoGVMambaBlock(8, 2, "vss", d_state=4, drop_path=0.5).train()
    x = torch.randn(32, 3, 3, 8)
    out = block(x)
    unchanged = (out == x).flatten(1).all(dim=1)
    assert 0 < unchanged.sum() < 32


def test_block_keeps_float64_and_forwards_arguments():
    block = LoGVMambaBlock(8, 3, "local_global", planned_size=(3, 3, 3), expand=2, directions=2,
                           placement="head", ltx_squeeze=4, gtx_stride=2, gtx_squeeze=3, dt_rank=2).double()
    assert block.mixer.d_inner == 16 and block.mixer.ssm.directions == 2 and block.mixer.ssm.dt_rank == 2
    assert block.mixer.layout.placement == "head" and block.mixer.n_global_tokens == 4 * 27 // 3
    x = torch.randn(1, 3, 3, 3, 8, dtype=torch.float64)
    assert block(x).dtype == torch.float64


def test_block_rejects_bad_dim():
    with pytest.raises(ValueError, match="dim=0 must be a positive integer"):
        LoGVMambaBlock(0, 2, "vss")


@pytest.mark.parametrize("fp32, inner_dtype", [(True, torch.float32), (False, torch.bfloat16)])
def test_fp32_block_runs_every_layer_in_float32_under_autocast(fp32, inner_dtype):
    """With ``fp32`` the projections run in float32 under bf16 autocast (the SSM always does); the output keeps the
    input dtype either way."""
    torch.manual_seed(0)
    block = LoGVMambaBlock(8, 3, "local_global", planned_size=(2, 3, 3), d_state=4, fp32=fp32)
    seen = []
    block.mixer.in_proj.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    block.mixer.out_proj.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    x = torch.randn(2, 2, 3, 3, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    assert seen == [inner_dtype, inner_dtype]
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_norm_eps_and_drop_path_are_set():
    block = LoGVMambaBlock(8, 2, "vss", 0.1, norm_eps=1e-6)
    assert block.norm.eps == 1e-6 and block.drop_path.drop_prob == 0.1
    assert LoGVMambaBlock(8, 2, "vss").norm.eps == 1e-5
