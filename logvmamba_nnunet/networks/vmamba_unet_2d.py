"""The paper's 2D model (§3.4): Swin-UMamba-dagger -- a VMamba-Tiny encoder and a decoder of patch
expanding and Mamba blocks -- with LoG-VMamba blocks in the decoder.

Any input size works: height and width are zero-padded at the bottom/right to a multiple of 32 (4 * 2^(stages - 1))
inside ``forward`` and every output is cropped back. The full-size output is cropped to the input size; a
deep-supervision output at scale s (1/4, 1/8, 1/16) is cropped to ``round(size * s)`` per axis, the size nnU-Net
gives its down-sampled targets (``DownsampleSegForDSTransform``), so the loss always sees matching shapes.

The class can be named in a plans file (``network_class_name``
``"logvmamba_nnunet.networks.vmamba_unet_2d.LoGVMambaSwinUMamba2D"`` with ``patch_size`` in ``arch_kwargs``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import Tensor, nn

from logvmamba_nnunet.modules.block import LoGVMambaBlock
from logvmamba_nnunet.modules.precision import autocast_disabled
from logvmamba_nnunet.modules.validation import check_positive_int
from logvmamba_nnunet.networks.vmamba_decoder_2d import LoGVMambaDecoder2D
from logvmamba_nnunet.networks.vmamba_encoder_2d import (
    VMAMBA_PATCH_SIZE,
    VMAMBA_TINY_DEPTHS,
    VMAMBA_TINY_WIDTHS,
    VMambaEncoder2D,
)


def deep_supervision_scales_2d(n_stages: int = len(VMAMBA_TINY_WIDTHS)) -> list[list[float]]:
    """Scales of the outputs with deep supervision, largest first: [1, 1/4, 1/8, ..., 1/(4 * 2^(n_stages - 2))]
    per axis (full, 1/4, 1/8, 1/16 for VMamba's four stages), as nnU-Net's ``_get_deep_supervision_scales``
    returns them."""
    check_positive_int("n_stages", n_stages)
    factors = [1] + [VMAMBA_PATCH_SIZE * 2**s for s in range(n_stages - 1)]
    return [[1.0 / f, 1.0 / f] for f in factors]


def init_vmamba_weights(module: nn.Module) -> None:
    """VMamba / Swin initialisation of the encoder for ``module.apply``: Linear weights truncated normal (std 0.02),
    biases 0; LayerNorm weight 1, bias 0; Conv2d He (kaiming normal, negative slope 1e-2, nnU-Net's), biases 0. The
    SSM parameters (not Linear modules) keep Mamba's initialisation."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
    elif isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, a=1e-2)
    else:
        return
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class LoGVMambaSwinUMamba2D(nn.Module):
    """Swin-UMamba-dagger with a LoG-VMamba decoder.

    Args:
        input_channels, num_classes, deep_supervision: as nnU-Net passes them.
        patch_size: the planned (H, W) patch size; fixes the decoder's GTX grids.
        widths, depths: encoder widths and depths (default VMamba-Tiny: (96, 192, 384, 768), (2, 2, 9, 2)).
        encoder_drop_path_rate: drop path of the last encoder block (rises linearly from 0).
        decoder_kind: mixer kind of the decoder blocks (``local_global``; ``vss`` gives Swin-UMamba-dagger).
        decoder_gtx_strides, decoder_gtx_squeezes: per decoder level, deepest first (None: (2, 2, 4), (2, 1, 1)).
        decoder_blocks_per_level: blocks per decoder level (2).
        decoder_drop_path_rate: drop path of the deepest decoder block (falls linearly to 0).
        directions, placement, ltx_squeeze, expand: decoder block settings (the encoder is fixed to VMamba's).
        d_state, scan_backend: for all blocks.
        force_fp32: run the whole network with autocast disabled (the no-AMP trainers).
        recompute_blocks: in training, every VMamba/LoG-VMamba block (encoder and decoder) keeps only its input and
            recomputes its activations in backward (``LoGVMambaBlock``'s ``recompute``): same results, far less
            activation memory, one more forward of the blocks per step.

    Forward: x (B, input_channels, H, W), any H, W -> logits (B, num_classes, H, W), or with deep supervision the
    list of logits at ``deep_supervision_scales_2d(len(widths))``, largest first.
    """

    def __init__(self, input_channels: int, num_classes: int, deep_supervision: bool = True, *,
                 patch_size: Sequence[int], widths: Sequence[int] = VMAMBA_TINY_WIDTHS,
                 depths: Sequence[int] = VMAMBA_TINY_DEPTHS, encoder_drop_path_rate: float = 0.2,
                 decoder_kind: str = "local_global", decoder_gtx_strides: Sequence[int] | None = None,
                 decoder_gtx_squeezes: Sequence[int] | None = None, decoder_blocks_per_level: int = 2,
                 decoder_drop_path_rate: float = 0.2, directions: int = 1, placement: str = "interleaved",
                 ltx_squeeze: int | None = None, expand: float = 2.0, d_state: int = 16,
                 scan_backend: str = "auto", force_fp32: bool = False, recompute_blocks: bool = True) -> None:
        super().__init__()
        patch_size = [int(p) for p in patch_size]
        if len(patch_size) != 2 or min(patch_size) < 1:
            raise ValueError(f"patch_size {patch_size} must be a 2D size (height, width) of positive ints; this "
                             "network is for 2d configurations (use LoGVMambaUNet for 3D).")
        self.input_channels = input_channels
        self.force_fp32 = force_fp32
        self.encoder = VMambaEncoder2D(input_channels, widths, depths, encoder_drop_path_rate, d_state, scan_backend)
        multiple = self.encoder.size_multiple
        padded = [math.ceil(p / multiple) * multiple for p in patch_size]
        level_sizes = [tuple(p // (VMAMBA_PATCH_SIZE * 2**s) for p in padded) for s in range(len(self.encoder.widths))]
        self.decoder = LoGVMambaDecoder2D(
            self.encoder.widths, num_classes, level_sizes, deep_supervision, kind=decoder_kind,
            gtx_strides=decoder_gtx_strides, gtx_squeezes=decoder_gtx_squeezes,
            blocks_per_level=decoder_blocks_per_level, directions=directions, placement=placement,
            ltx_squeeze=ltx_squeeze, expand=expand, d_state=d_state, drop_path_rate=decoder_drop_path_rate,
            scan_backend=scan_backend)
        self.output_scales = [s[0] for s in deep_supervision_scales_2d(len(self.encoder.widths))]
        # as the authors: VMamba's init in the encoder; He init of every conv; the decoder's Linear layers keep
        # PyTorch's default
        self.encoder.apply(init_vmamba_weights)
        self.decoder.apply(InitWeights_He(1e-2))
        for module in self.modules():
            if isinstance(module, LoGVMambaBlock):
                module.recompute = recompute_blocks

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """x: (B, input_channels, H, W) -> (B, num_classes, H, W) or the deep-supervision list (largest first)."""
        if x.dim() != 4 or x.shape[1] != self.input_channels:
            raise ValueError(f"expected a 2D input (B, {self.input_channels}, H, W), got {tuple(x.shape)}: the network "
                             f"was built for {self.input_channels} input channels (check the dataset's channel_names).")
        if self.force_fp32:
            with autocast_disabled(x.device):
                return self._padded_forward(x.float())
        return self._padded_forward(x)

    def _padded_forward(self, x: Tensor) -> Tensor | list[Tensor]:
        height, width = x.shape[2:]
        multiple = self.encoder.size_multiple
        pad_h, pad_w = -height % multiple, -width % multiple
        outputs = self.decoder(self.encoder(F.pad(x, (0, pad_w, 0, pad_h))))
        if not isinstance(outputs, list):
            return outputs[:, :, :height, :width]
        return [y[:, :, :round(height * s), :round(width * s)] for y, s in zip(outputs, self.output_scales)]
