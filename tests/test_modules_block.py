"""The residual pre-norm block, its DropPath (dynamic-network-architectures' stochastic depth) and its recomputation
of activations in backward."""

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch.utils import checkpoint

from logvmamba_nnunet.modules.block import DropPath, LoGVMambaBlock
from tests.test_modules_mixer import assert_same_outputs_and_gradients, straightforward_mixer


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
    """With ``fp32`` the convolutions and projections run in float32 under bf16 autocast (the SSM always does); the
    output keeps the input dtype either way."""
    torch.manual_seed(0)
    block = LoGVMambaBlock(8, 3, "local_global", planned_size=(2, 3, 3), d_state=4, fp32=fp32)
    seen = []
    block.mixer.extractor.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
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


class SavedActivations:
    """Bytes of the distinct storages autograd keeps for backward while a forward runs (parameters excluded): what
    ``saved_tensors_hooks`` packs, plus the inputs a non-reentrant checkpoint holds (saved-tensor hooks outside a
    checkpoint do not see inside it)."""

    def __init__(self, module, monkeypatch):
        self.parameters = {p.untyped_storage().data_ptr() for p in module.parameters()}
        self.storages = {}
        real = checkpoint.checkpoint

        def recording_checkpoint(function, *args, **kwargs):
            for arg in args:
                self.add(arg)
            return real(function, *args, **kwargs)

        monkeypatch.setattr(checkpoint, "checkpoint", recording_checkpoint)

    def add(self, tensor):
        if isinstance(tensor, torch.Tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in self.parameters:
                self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def __call__(self, function):
        with torch.autograd.graph.saved_tensors_hooks(self.add, lambda tensor: tensor):
            out = function()
        return sum(self.storages.values()), out


CASES = [(2, (6, 5), "local_global", {"gtx_stride": 2}), (3, (3, 4, 5), "local_global", {"gtx_stride": 2}),
         (3, (3, 4, 4), "global", {"directions": 2}), (2, (5, 4), "vss", {"directions": 4})]


def stored_and_recomputed(block: LoGVMambaBlock, x: torch.Tensor, loss, forward_context=contextlib.nullcontext
                          ) -> list[list[torch.Tensor]]:
    """[output, input gradient, parameter gradients] of one training step without and with recomputation, the
    random state reset before each; the forward runs inside ``forward_context()``."""
    results = []
    for recompute in (False, True):
        block.recompute = recompute
        block.zero_grad()
        x.grad = None
        torch.manual_seed(1)
        with forward_context():
            out = block(x)
        loss(out).backward()
        results.append([out.detach(), x.grad.clone(), *(p.grad.clone() for p in block.parameters())])
    return results


@pytest.mark.parametrize(("spatial_dims", "size", "kind", "kwargs"), CASES)
@pytest.mark.parametrize("fp32", [True, False])
def test_recompute_gives_the_same_outputs_and_gradients(spatial_dims, size, kind, kwargs, fp32):
    """With DropPath dropping some samples, recomputation restores the RNG state: the recomputed forward draws the
    same samples, so outputs and every gradient are bit-identical to those of the stored activations."""
    torch.manual_seed(0)
    block = LoGVMambaBlock(8, spatial_dims, kind, 0.5, planned_size=size, d_state=4, fp32=fp32, **kwargs).train()
    x = torch.randn(8, *size, 8, requires_grad=True)
    weights = torch.randn_like(x)
    results = stored_and_recomputed(block, x, lambda out: (out * weights).sum())
    dropped = (results[0][0] == x.detach()).flatten(1).all(dim=1)
    assert 0 < dropped.sum() < 8
    for stored, recomputed in zip(*results, strict=True):
        assert torch.equal(stored, recomputed)


def test_recompute_under_bf16_autocast_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    block = LoGVMambaBlock(8, 3, "local_global", 0.3, planned_size=(3, 4, 4), d_state=4, gtx_stride=2).train()
    x = torch.randn(4, 3, 4, 4, 8, requires_grad=True)
    results = stored_and_recomputed(block, x, lambda out: out.float().square().sum(),
                                    lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    for stored, recomputed in zip(*results, strict=True):
        assert torch.equal(stored, recomputed)


@pytest.mark.parametrize(("spatial_dims", "size", "kind", "kwargs"), CASES[:3])
def test_recompute_keeps_at_most_a_third_of_the_activations(spatial_dims, size, kind, kwargs, monkeypatch):
    """Saved activations of one block's forward: with recomputation only the input (which the previous layer holds
    anyway), at most a third of the stored activations (about a tenth in these settings)."""
    torch.manual_seed(0)
    block = LoGVMambaBlock(16, spatial_dims, kind, 0.1, planned_size=size, d_state=4, fp32=True, **kwargs).train()
    x = torch.randn(2, *size, 16, requires_grad=True)
    saved = {}
    for recompute in (False, True):
        block.recompute = recompute
        saved[recompute], out = SavedActivations(block, monkeypatch)(lambda: block(x))
        out.sum().backward()
    assert saved[True] == x.numel() * x.element_size()
    assert saved[True] * 3 <= saved[False]


def test_recompute_is_inactive_in_eval_and_without_gradients(monkeypatch):
    calls = []
    real = checkpoint.checkpoint
    monkeypatch.setattr(checkpoint, "checkpoint", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    block = LoGVMambaBlock(8, 2, "local_global", 0.1, planned_size=(4, 4), d_state=4)
    assert block.recompute
    x = torch.randn(2, 4, 4, 8, requires_grad=True)
    with torch.no_grad():
        block.train()(x)
        block.eval()(x)
    with torch.inference_mode():
        block.train()(x)
    block.eval()(x)
    assert calls == [] and not block.recomputes
    block.train()(x)
    assert calls == [1]
    block.recompute = False
    block(x)
    assert calls == [1]


def test_block_outputs_and_gradients_match_the_straightforward_formulation():
    """x + DropPath(mixer(LayerNorm(x))) written plainly (timm's DropPath, the plain mixer) against the block with
    its fused residual, in training with some samples dropped and with recomputation."""
    torch.manual_seed(0)
    block = LoGVMambaBlock(8, 3, "local_global", 0.5, planned_size=(3, 4, 4), d_state=4, gtx_stride=2).train()
    x = torch.randn(6, 3, 4, 4, 8, requires_grad=True)

    def run():
        torch.manual_seed(3)
        return block(x)

    def reference():
        y = straightforward_mixer(block.mixer, F.layer_norm(x, (8,), block.norm.weight, block.norm.bias))
        torch.manual_seed(3)
        return x + DropPath(0.5).train()(y)

    assert_same_outputs_and_gradients(run, reference, [x], list(block.named_parameters()))


def test_channels_first_view_gives_a_channels_first_output():
    """A channels-last view of a channels-first map in, a channels-last view of a contiguous channels-first map out:
    the residual sum writes the layout of its input, so no copy is needed to go back."""
    block = LoGVMambaBlock(8, 3, "local", planned_size=(3, 4, 5), d_state=4).train()
    x = torch.randn(2, 8, 3, 4, 5, requires_grad=True)
    out = block(x.movedim(1, -1)).movedim(-1, 1)
    assert out.is_contiguous()
    out.sum().backward()
    assert x.grad.is_contiguous()


def block_recompute_settings(network: torch.nn.Module) -> set[bool]:
    blocks = [m for m in network.modules() if isinstance(m, LoGVMambaBlock)]
    assert blocks
    return {b.recompute for b in blocks}


def test_networks_pass_recompute_blocks_to_every_block():
    from logvmamba_nnunet.networks.log_vmamba_pooled_unet import (
        LoGVMambaPooledUNet,
        brats_reference_pooled_arch_kwargs,
    )
    from logvmamba_nnunet.networks.log_vmamba_unet import LoGVMambaUNet, brats_reference_arch_kwargs
    from logvmamba_nnunet.networks.vmamba_unet_2d import LoGVMambaSwinUMamba2D

    with torch.device("meta"):
        for recompute in (True, False):
            networks = [LoGVMambaUNet(4, 3, True, recompute_blocks=recompute, **brats_reference_arch_kwargs()),
                        LoGVMambaPooledUNet(4, 3, True, recompute_blocks=recompute,
                                            **brats_reference_pooled_arch_kwargs()),
                        LoGVMambaSwinUMamba2D(3, 2, patch_size=(64, 64), recompute_blocks=recompute)]
            for network in networks:
                assert block_recompute_settings(network) == {recompute}
        assert block_recompute_settings(LoGVMambaUNet(4, 3, True, **brats_reference_arch_kwargs())) == {True}
        assert block_recompute_settings(LoGVMambaPooledUNet(4, 3, True, **brats_reference_pooled_arch_kwargs())) == {
            True}


@pytest.mark.parametrize("topology", ["pooled", "stage"])
@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_trainer_attribute_switches_recomputation(topology, configuration):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    import logvmamba_nnunet_trainers as trainers
    from tests.plans_factory import plans

    manager = PlansManager(plans())
    for recompute in (True, False):
        trainer = type("RecomputeTrainer", (trainers.nnUNetTrainerLoGVMamba,),
                       {"topology": topology, "recompute_blocks": recompute})
        network = trainer.build_network_architecture(manager, manager.get_configuration(configuration), 1, 3, True)
        assert block_recompute_settings(network) == {recompute}
    assert trainers.nnUNetTrainerLoGVMamba.recompute_blocks is True
