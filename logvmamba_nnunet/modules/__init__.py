"""Building blocks: token extractors, token placement, the selective SSM, mixers and blocks (2D and 3D)."""
