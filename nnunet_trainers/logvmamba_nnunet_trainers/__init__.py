"""The ``nnUNetTrainer`` subclasses of logvmamba-nnunet, found by nnU-Net through ``nnUNet_extTrainer``.

Modules by concern: ``base`` (shared base trainers), ``logvmamba`` (the paper's trainer and its one-setting
variants), ``epochs`` (schedule lengths), ``swin_umamba`` (the 2D model with Swin-UMamba-dagger's recipe, and that
baseline), ``umamba`` and ``monai_baselines`` (the other baselines). How nnU-Net finds them, and why every class
exists once per process however it is reached: ``logvmamba_nnunet.nnunet.discovery`` and docs/architecture.md.
"""

import sys

from logvmamba_nnunet.nnunet.discovery import remember_trainer_modules, restore_trainer_modules

restore_trainer_modules(sys.modules[__name__])

from logvmamba_nnunet_trainers.demo import nnUNetTrainer_Demo, nnUNetTrainerLoGVMamba_Demo  # noqa: E402
from logvmamba_nnunet_trainers.epochs import (  # noqa: E402
    nnUNetTrainerLoGVMamba_50epochs,
    nnUNetTrainerLoGVMamba_100epochs,
    nnUNetTrainerLoGVMamba_250epochs,
    nnUNetTrainerLoGVMamba_500epochs,
)
from logvmamba_nnunet_trainers.logvmamba import (  # noqa: E402
    nnUNetTrainerGVMamba,
    nnUNetTrainerLoGVMamba,
    nnUNetTrainerLoGVMamba_Head,
    nnUNetTrainerLoGVMamba_K2,
    nnUNetTrainerLoGVMamba_K4,
    nnUNetTrainerLoGVMamba_Middle,
    nnUNetTrainerLoGVMamba_nnUNetRecipe,
    nnUNetTrainerLoGVMamba_NoAMP,
    nnUNetTrainerLoGVMamba_NoDeepSupervision,
    nnUNetTrainerLoGVMamba_NoMamba,
    nnUNetTrainerLoGVMamba_PooledTopology,
    nnUNetTrainerLoGVMamba_Split,
    nnUNetTrainerLoGVMamba_StageTopology,
    nnUNetTrainerLoGVMambaUNet,
    nnUNetTrainerLVMamba,
    nnUNetTrainerVSSMamba,
)
from logvmamba_nnunet_trainers.monai_baselines import nnUNetTrainerSwinUNETR, nnUNetTrainerUNETR  # noqa: E402
from logvmamba_nnunet_trainers.swin_umamba import (  # noqa: E402
    nnUNetTrainerSwinUMambaDagger,
    nnUNetTrainerSwinUMambaLoG,
    nnUNetTrainerSwinUMambaLoG_ImageNet,
)
from logvmamba_nnunet_trainers.umamba import nnUNetTrainerUMambaBot, nnUNetTrainerUMambaEnc  # noqa: E402

remember_trainer_modules(__name__)

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
    "nnUNetTrainerLoGVMamba_NoDeepSupervision",
    "nnUNetTrainerLoGVMamba_NoMamba",
    "nnUNetTrainerLoGVMamba_nnUNetRecipe",
    "nnUNetTrainerLoGVMamba_StageTopology",
    "nnUNetTrainerLoGVMamba_PooledTopology",
    "nnUNetTrainerLoGVMamba_Demo",
    "nnUNetTrainer_Demo",
    "nnUNetTrainerLoGVMamba_50epochs",
    "nnUNetTrainerLoGVMamba_100epochs",
    "nnUNetTrainerLoGVMamba_250epochs",
    "nnUNetTrainerLoGVMamba_500epochs",
    "nnUNetTrainerLoGVMambaUNet",
    "nnUNetTrainerSwinUMambaLoG",
    "nnUNetTrainerSwinUMambaLoG_ImageNet",
    "nnUNetTrainerSwinUMambaDagger",
    "nnUNetTrainerUMambaEnc",
    "nnUNetTrainerUMambaBot",
    "nnUNetTrainerSwinUNETR",
    "nnUNetTrainerUNETR",
]
