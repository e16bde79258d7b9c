"""Per-stage mixer rule of the 3D network (networks.stage_rules)."""

import pytest

from logvmamba_nnunet.networks.stage_rules import (
    default_gtx_stride,
    default_stage_kinds,
    resolve_stage_configs,
    stage_spatial_sizes,
)

BRATS_STRIDES = [[1, 1, 1]] + [[2, 2, 2]] * 4


def test_reproduces_authors_brats_table():
    configs = resolve_stage_configs([128] * 3, BRATS_STRIDES, [32, 64, 128, 256, 320])
    assert [c.kind for c in configs] == ["local", "local_global", "local_global", "global", "global"]
    assert [c.gtx_stride for c in configs[1:]] == [4, 2, 1, 1]
    assert [c.gtx_squeeze for c in configs[1:]] == [1, 1, 2, 8]
    assert [c.planned_size for c in configs] == [(128,) * 3, (64,) * 3, (32,) * 3, (16,) * 3, (8,) * 3]


def test_stage_sizes_anisotropic_and_odd():
    assert stage_spatial_sizes([40, 45, 33], [[1, 1, 1], [1, 2, 2], [2, 2, 2]]) == [(40, 45, 33), (40, 23, 17),
                                                                                    (20, 12, 9)]


def test_patch_too_small_is_a_clear_error():
    with pytest.raises(ValueError, match="too small"):
        stage_spatial_sizes([8, 64, 64], [[1, 1, 1]] + [[2, 2, 2]] * 4)


@pytest.mark.parametrize("n, expected", [(1, ["local"]), (2, ["local", "global"]),
                                         (3, ["local", "global", "global"]),
                                         (6, ["local"] + ["local_global"] * 3 + ["global"] * 2)])
def test_default_kinds(n, expected):
    assert default_stage_kinds(n) == expected


def test_gtx_stride_keeps_grid_bounded():
    assert default_gtx_stride((64, 64, 64)) == 4  # 16^3 = 4096 positions
    assert default_gtx_stride((32, 32, 32)) == 2
    assert default_gtx_stride((16, 16, 16)) == 1
    assert default_gtx_stride((256, 256)) == 4  # 64^2 = 4096
    assert default_gtx_stride((512, 512, 512)) == 4  # capped at the largest candidate


def test_squeeze_respects_divisibility():
    configs = resolve_stage_configs([64] * 3, [[1] * 3, [2] * 3, [2] * 3], [24, 36, 12])
    assert [c.kind for c in configs] == ["local", "global", "global"]
    assert configs[1].gtx_squeeze == 2 and 36 % configs[1].gtx_squeeze == 0
    assert configs[2].gtx_squeeze == 4 and 12 % configs[2].gtx_squeeze == 0  # 8 does not divide 12


def test_overrides_and_their_errors():
    configs = resolve_stage_configs([32] * 3, [[1] * 3, [2] * 3], [8, 16], stage_kinds=["vss", "none"],
                                    gtx_strides=[2, 1], gtx_squeezes=[1, 4])
    assert [(c.kind, c.gtx_stride, c.gtx_squeeze) for c in configs] == [("vss", 2, 1), ("none", 1, 4)]
    with pytest.raises(ValueError, match="one value per stage"):
        resolve_stage_configs([32] * 3, [[1] * 3, [2] * 3], [8, 16], stage_kinds=["vss"])
    with pytest.raises(ValueError, match="unknown stage kind 'mamba'"):
        resolve_stage_configs([32] * 3, [[1] * 3, [2] * 3], [8, 16], stage_kinds=["vss", "mamba"])
