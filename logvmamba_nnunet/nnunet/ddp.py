"""Deep supervision off under nnU-Net's DistributedDataParallel (``nnUNetv2_train -num_gpus N``).

nnU-Net wraps the network in ``DistributedDataParallel(network, device_ids=[rank])`` in
``nnUNetTrainer.initialize`` (``find_unused_parameters`` off, after ``SyncBatchNorm.convert_sync_batchnorm``).
DDP then needs a gradient for every parameter that requires one, in every iteration; when one gets none, the next
forward stops with "Expected to have finished reduction in the prior iteration before starting a new one".

- Deep supervision on (the default of every trainer here): every segmentation head produces an output, and under
  DDP nnU-Net weights the lowest output with 1e-6 instead of 0 (``nnUNetTrainer._build_loss``), so every parameter
  gets a gradient.
- Deep supervision off (``self.enable_deep_supervision = False``): the decoder runs only its full-resolution head.
  The other heads exist anyway, so that checkpoints do not depend on deep supervision, and get no gradient.
  nnU-Net's own U-Net decoders have the same property (``nnUNetTrainerNoDeepSupervision`` under DDP fails the same
  way). :func:`freeze_deep_supervision_heads` sets ``requires_grad=False`` on those heads; called on the network
  before the DDP wrap (i.e. in ``build_network_architecture`` when deep supervision is off) it makes DDP skip them.
  ``nnUNetTrainerLoGVMamba_NoDeepSupervision`` does exactly that.
- Frozen encoder (``nnUNetTrainerSwinUMambaLoG``): frozen tensors have ``requires_grad=False``, and the trainer
  wraps the network in a new DDP whenever the set of trainable tensors changes (:func:`set_trainable`).
"""

from __future__ import annotations

from collections.abc import Collection

from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.building_blocks.unet_residual_decoder import UNetResDecoder
from torch import nn
from torch._dynamo.eval_frame import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from logvmamba_nnunet.networks.log_vmamba_pooled_unet import PooledResidualDecoder
from logvmamba_nnunet.networks.vmamba_decoder_2d import LoGVMambaDecoder2D


def deep_supervision_head_names(network: nn.Module) -> list[str]:
    """Names (as in ``network.named_parameters()``) of the parameters of the segmentation heads that only the
    deep-supervision outputs use: every head of ``network.decoder`` except the full-resolution one.

    Supports decoders of dynamic-network-architectures (``UNetDecoder``, ``UNetResDecoder``: full resolution is
    the last of ``seg_layers``; the 3D LoG-VMamba U-Net and nnU-Net's U-Nets), ``LoGVMambaDecoder2D`` and the
    pooled LoG-VMamba U-Net's ``PooledResidualDecoder`` (full resolution is the first of ``heads``). Raises
    ValueError for a network without such a decoder.
    """
    decoder = getattr(network, "decoder", None)
    if isinstance(decoder, (UNetDecoder, UNetResDecoder)):
        prefix, heads = "decoder.seg_layers", dict(enumerate(decoder.seg_layers))
        heads.pop(len(decoder.seg_layers) - 1)
    elif isinstance(decoder, (LoGVMambaDecoder2D, PooledResidualDecoder)):
        prefix, heads = "decoder.heads", dict(enumerate(decoder.heads))
        heads.pop(0)
    else:
        raise ValueError(f"{type(network).__name__} has no decoder with deep-supervision heads this function knows "
                         "(UNetDecoder, UNetResDecoder, LoGVMambaDecoder2D, PooledResidualDecoder); pass the "
                         "unwrapped network (not the DDP or torch.compile wrapper).")
    return [f"{prefix}.{index}.{name}" for index, head in heads.items() for name, _ in head.named_parameters()]


def freeze_deep_supervision_heads(network: nn.Module) -> list[str]:
    """Set ``requires_grad=False`` on the heads that only deep supervision uses, so that DDP (which registers the
    parameters requiring a gradient when it is constructed) does not wait for their gradients. For a network whose
    ``decoder.deep_supervision`` is off, before it is wrapped in DDP; raises ValueError when deep supervision is on
    (then the heads are used and must train). Returns the names of the frozen parameters."""
    names = deep_supervision_head_names(network)
    if network.decoder.deep_supervision:
        raise ValueError("deep supervision is on, so every head is used and trained: freeze the heads only for a "
                         "network built with enable_deep_supervision=False.")
    parameters = dict(network.named_parameters())
    for name in names:
        parameters[name].requires_grad_(False)
    return names


def unwrap_network(network: nn.Module) -> nn.Module:
    """The plain network inside DDP and ``torch.compile`` wrappers."""
    if isinstance(network, DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


def set_trainable(network: nn.Module, parameter_names: Collection[str], trainable: bool) -> nn.Module:
    """Set ``requires_grad`` of the named parameters (names of the unwrapped network) and return the network to
    use from now on: a new DDP wrapper around the same module, with the same device settings, when ``network`` is a
    DDP wrapper (DDP registers the trainable parameters when it is constructed); ``network`` itself otherwise."""
    parameters = dict(unwrap_network(network).named_parameters())
    unknown = [name for name in parameter_names if name not in parameters]
    if unknown:
        raise ValueError(f"the network has no parameters named {unknown[:3]}; pass names of the unwrapped network.")
    for name in parameter_names:
        parameters[name].requires_grad_(trainable)
    if isinstance(network, DistributedDataParallel):
        return DistributedDataParallel(
            network.module, device_ids=network.device_ids, output_device=network.output_device,
            find_unused_parameters=network.find_unused_parameters)
    return network
