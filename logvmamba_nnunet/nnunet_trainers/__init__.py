"""The ``nnUNetTrainer`` subclasses of this package (found by nnU-Net through ``nnUNet_extTrainer``)."""

from logvmamba_nnunet.nnunet_trainers.epochs import (
    nnUNetTrainerLoGVMamba_50epochs,
    nnUNetTrainerLoGVMamba_100epochs,
    nnUNetTrainerLoGVMamba_250epochs,
    nnUNetTrainerLoGVMamba_500epochs,
)
from logvmamba_nnunet.nnunet_trainers.logvmamba import (
    nnUNetTrainerGVMamba,
    nnUNetTrainerLoGVMamba,
    nnUNetTrainerLoGVMamba_Demo,
    nnUNetTrainerLoGVMamba_Head,
    nnUNetTrainerLoGVMamba_K2,
    nnUNetTrainerLoGVMamba_K4,
    nnUNetTrainerLoGVMamba_Middle,
    nnUNetTrainerLoGVMamba_NoAMP,
    nnUNetTrainerLoGVMamba_Split,
    nnUNetTrainerLoGVMamba_Tiny,
    nnUNetTrainerLoGVMambaUNet,
    nnUNetTrainerLVMamba,
    nnUNetTrainerVSSMamba,
)
from logvmamba_nnunet.nnunet_trainers.swin_umamba import (
    nnUNetTrainerSwinUMambaDagger,
    nnUNetTrainerSwinUMambaLoG,
    nnUNetTrainerSwinUMambaLoG_ImageNet,
    nnUNetTrainerSwinUMambaLoG_Tiny,
)

__all__ = [
    "nnUNetTrainerLoGVMamba",
    "nnUNetTrainerLVMamba",
    "nnUNetTrainerGVMamba",
    "nnUNetTrainerVSSMamba",
    "nnUNetTrainerLoGVMamba_Head",
    "nnUNetTrainerLoGVMamba_Middle",
    "nnUNetTrainerLoGVMamba_Split",
    "nnUNetTrainerLoGVMamba_K2",
    "nnUNetTrainerLoGVMamba_K4",
    "nnUNetTrainerLoGVMamba_NoAMP",
    "nnUNetTrainerLoGVMamba_Tiny",
    "nnUNetTrainerLoGVMamba_Demo",
    "nnUNetTrainerLoGVMamba_50epochs",
    "nnUNetTrainerLoGVMamba_100epochs",
    "nnUNetTrainerLoGVMamba_250epochs",
    "nnUNetTrainerLoGVMamba_500epochs",
    "nnUNetTrainerLoGVMambaUNet",
    "nnUNetTrainerSwinUMambaLoG",
    "nnUNetTrainerSwinUMambaLoG_ImageNet",
    "nnUNetTrainerSwinUMambaDagger",
    "nnUNetTrainerSwinUMambaLoG_Tiny",
]

# U-Mamba and MONAI baselines (issue 10)
from logvmamba_nnunet.nnunet_trainers.monai_baselines import nnUNetTrainerSwinUNETR, nnUNetTrainerUNETR  # noqa: E402
from logvmamba_nnunet.nnunet_trainers.umamba import (  # noqa: E402
    nnUNetTrainerUMambaBot,
    nnUNetTrainerUMambaBot_Tiny,
    nnUNetTrainerUMambaEnc,
    nnUNetTrainerUMambaEnc_Tiny,
)

__all__ += [
    "nnUNetTrainerUMambaEnc",
    "nnUNetTrainerUMambaBot",
    "nnUNetTrainerUMambaEnc_Tiny",
    "nnUNetTrainerUMambaBot_Tiny",
    "nnUNetTrainerSwinUNETR",
    "nnUNetTrainerUNETR",
]
