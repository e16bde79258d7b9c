"""Building blocks: token extractors, token placement, the selective SSM, mixers and blocks (2D and 3D)."""

from logvmamba_nnunet.modules.block import DropPath, LoGVMambaBlock
from logvmamba_nnunet.modules.mixer import MIXER_KINDS, LoGVMambaMixer
from logvmamba_nnunet.modules.scan_directions import DIRECTIONS, ScanLayout, direction_orders
from logvmamba_nnunet.modules.ssm import SelectiveSSM
from logvmamba_nnunet.modules.token_extractors import (
    GlobalTokenExtractor,
    LocalTokenExtractor,
    VanillaTokenExtractor,
    gtx_conv_geometry,
    unfold_neighbourhood,
)
from logvmamba_nnunet.modules.token_placement import PLACEMENTS, TokenPlacement
from logvmamba_nnunet.modules.weight_decay import parameter_groups_for_weight_decay, tag_no_weight_decay

__all__ = [
    "DIRECTIONS",
    "MIXER_KINDS",
    "PLACEMENTS",
    "DropPath",
    "GlobalTokenExtractor",
    "LoGVMambaBlock",
    "LoGVMambaMixer",
    "LocalTokenExtractor",
    "ScanLayout",
    "SelectiveSSM",
    "TokenPlacement",
    "VanillaTokenExtractor",
    "direction_orders",
    "gtx_conv_geometry",
    "parameter_groups_for_weight_decay",
    "tag_no_weight_decay",
    "unfold_neighbourhood",
]
