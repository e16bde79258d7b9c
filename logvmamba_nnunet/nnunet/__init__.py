"""nnU-Net glue: plans translation, trainer discovery, DDP helpers and learning-rate schedules."""
