"""nnU-Net glue: plans translation, trainer discovery and pretrained weights. Light to import."""
