"""Thin module that nnU-Net imports from ``nnUNet_extTrainer``; the classes live in logvmamba_nnunet.nnunet_trainers."""

from logvmamba_nnunet.nnunet_trainers import *  # noqa: F401,F403
