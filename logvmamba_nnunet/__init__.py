"""LoG-VMamba networks and trainers for nnU-Net v2.

Importing this package is cheap on purpose (no torch, no nnU-Net): it runs at interpreter start through the
trainer-discovery hook. Import the sub-packages for the real work:

- :mod:`logvmamba_nnunet.ops` — the selective scan (S6) and its backends.
- :mod:`logvmamba_nnunet.modules` — token extractors, token placement, mixers and blocks.
- :mod:`logvmamba_nnunet.networks` — the 3D/2D segmentation networks.
- :mod:`logvmamba_nnunet.nnunet` — nnU-Net glue (plans translation, trainer discovery, DDP helpers, schedules).
- :mod:`logvmamba_nnunet.cli` — the ``logvmamba-nnunet`` command.

The ``nnUNetTrainer`` subclasses are the package ``logvmamba_nnunet_trainers`` in the trainer folder that nnU-Net's
``nnUNet_extTrainer`` points at (``nnunet_trainers/`` in the repository; see
:mod:`logvmamba_nnunet.nnunet.discovery`).
"""

__version__ = "0.1.0"
