"""Token placement (paper §3.3): the four layouts against slot-by-slot constructions written out here, the
layouts the package's networks use in the paper's settings, and the exact inverse."""

import functools
import math

import pytest
import torch

import logvmamba_nnunet.modules.scan_directions as scan_directions
from logvmamba_nnunet.modules.ssm import SelectiveSSM
from logvmamba_nnunet.modules.token_placement import PLACEMENTS, TokenPlacement
from logvmamba_nnunet.networks.log_vmamba_unet import build_benchmark_network_3d
from logvmamba_nnunet.networks.vmamba_unet_2d import LoGVMambaSwinUMamba2D

# The package's 3D reference network (patch 128^3, no pooling after the stem): stages 1-4 at 64^3, 32^3,
# 16^3, 8^3. L = prod(size); widths 64, 128, 256, 320, E = 1 so d_inner = width. LoG stages 1-2:
# Cg = C' = d_inner / 16 * 27 = 108, 216 with q = 1; G stages 3-4: Cg = d_inner = 256, 320 with q = 2, 8.
PACKAGE_3D = [(64**3, 108), (32**3, 216), (16**3, 128), (8**3, 40)]
# The authors' network max-pools after the stem, so its stages 1-4 run at 32^3, 16^3, 8^3, 4^3 (GTX grids
# Ng = 512, 512, 512, 64) with the same widths and squeezes, hence the same CC = Cg / q.
AUTHORS_3D = [(32**3, 108), (16**3, 216), (8**3, 128), (4**3, 40)]
# 2D decoder levels, deepest first, at 1/16, 1/8, 1/4 of the input: widths 384, 192, 96, E = 2, LTX squeeze
# 8, so Cg = C' = 2 * width / 8 * 9 = 864, 432, 216, and q = 2, 1, 1: CC = 432, 432, 216.
DECODER_2D_512 = [(32 * 32, 432), (64 * 64, 432), (128 * 128, 216)]
DECODER_2D_384_640 = [(24 * 40, 432), (48 * 80, 432), (96 * 160, 216)]
PAPER_SETTINGS = PACKAGE_3D + AUTHORS_3D + DECODER_2D_512 + DECODER_2D_384_640

ROUND_TRIP_COUNTS = [(1, 0), (6, 0), (1, 1), (1, 6), (2, 1), (3, 7), (5, 5), (7, 3), (64, 40), (101, 100),
                     (512, 40), (1024, 432), (4096, 27)]


def explicit_slots(mode: str, n_local: int, n_global: int) -> tuple[list[int], list[int]]:
    """(local slots, global slots), built slot by slot from the documented rule of ``mode``."""
    length = n_local + n_global
    is_global = [False] * length
    if mode == "head":
        for slot in range(n_global):
            is_global[slot] = True
    elif mode == "middle":
        for slot in range(n_local // 2, n_local // 2 + n_global):
            is_global[slot] = True
    elif mode == "split":
        first = n_global // 2
        for slot in range(first):
            is_global[slot] = True
        for slot in range(first + n_local // 2, n_global + n_local // 2):
            is_global[slot] = True
    elif n_global > 0:
        interval = math.ceil(n_local / n_global)
        period = interval + 1
        before_grid = n_global - math.floor(n_local / interval)
        start = math.ceil(before_grid / period) * period
        grid = set()
        slot = start
        while slot < length:
            grid.add(slot)
            slot += period
        front = n_global - len(grid)
        for slot in range(length):
            if slot < front or slot in grid:
                is_global[slot] = True
    local_slots = [slot for slot in range(length) if not is_global[slot]]
    global_slots = [slot for slot in range(length) if is_global[slot]]
    return local_slots, global_slots


def layout(mode: str, n_local: int, n_global: int) -> str:
    """The package's sequence as a string, 'l' for a local slot and 'g' for a global slot."""
    local_slots, global_slots = TokenPlacement(mode).slots(n_local, n_global)
    chars = ["?"] * (n_local + n_global)
    for slot in local_slots.tolist():
        chars[slot] = "l"
    for slot in global_slots.tolist():
        chars[slot] = "g"
    return "".join(chars)


@pytest.mark.parametrize("mode", PLACEMENTS)
def test_every_small_pair_matches_the_explicit_construction(mode):
    """All 1 <= L <= 300, 1 <= G <= 64: same local and global slots as the slot-by-slot construction."""
    placement = TokenPlacement(mode)
    mismatches = []
    for n_local in range(1, 301):
        for n_global in range(1, 65):
            local_slots, global_slots = placement.slots(n_local, n_global)
            if (local_slots.tolist(), global_slots.tolist()) != explicit_slots(mode, n_local, n_global):
                mismatches.append((n_local, n_global))
    assert mismatches == []


def test_interleaved_construction_is_consistent_for_every_small_pair():
    """The authors' rule never puts a grid slot below the front block and always leaves exactly L local
    slots; slot 0 is a global, and at most r locals follow a global before the next one (or the end)."""
    for n_local in range(1, 301):
        for n_global in range(1, 65):
            local_slots, global_slots = explicit_slots("interleaved", n_local, n_global)
            assert len(local_slots) == n_local and len(global_slots) == n_global
            assert global_slots[0] == 0
            gaps = [b - a - 1 for a, b in zip(global_slots, [*global_slots[1:], n_local + n_global])]
            assert max(gaps) <= math.ceil(n_local / n_global), (n_local, n_global)


@pytest.mark.parametrize("mode", PLACEMENTS)
@pytest.mark.parametrize(("n_local", "n_global"), PAPER_SETTINGS)
def test_paper_settings_match_the_explicit_construction(mode, n_local, n_global):
    local_slots, global_slots = TokenPlacement(mode).slots(n_local, n_global)
    assert (local_slots.tolist(), global_slots.tolist()) == explicit_slots(mode, n_local, n_global)


@pytest.fixture
def placement_calls(monkeypatch):
    """(mode, L, G) of every slot map the scan layouts ask for while a network runs (on the meta device,
    with the SSM replaced by the identity: only the shapes matter)."""
    calls = []
    slots = TokenPlacement.slots

    def recording_slots(self, n_local, n_global):
        calls.append((self.mode, n_local, n_global))
        return slots(self, n_local, n_global)

    monkeypatch.setattr(TokenPlacement, "slots", recording_slots)
    monkeypatch.setattr(SelectiveSSM, "forward", lambda self, sequences: sequences.float())
    fresh_cache = functools.lru_cache(maxsize=128)(scan_directions._sequence_indices.__wrapped__)
    monkeypatch.setattr(scan_directions, "_sequence_indices", fresh_cache)
    return calls


def run_on_meta(build, input_shape) -> None:
    with torch.device("meta"):
        network = build()
    network.eval()
    with torch.no_grad():
        network(torch.empty(input_shape, device="meta"))


def test_the_3d_reference_network_uses_the_pinned_counts(placement_calls):
    run_on_meta(build_benchmark_network_3d, (1, 4, 128, 128, 128))
    with_globals = [(n_local, n_global) for _, n_local, n_global in placement_calls if n_global]
    assert list(dict.fromkeys(with_globals)) == PACKAGE_3D
    assert {mode for mode, _, _ in placement_calls} == {"interleaved"}


@pytest.mark.parametrize(("patch_size", "expected"), [((512, 512), DECODER_2D_512),
                                                       ((384, 640), DECODER_2D_384_640)])
def test_the_2d_decoder_uses_the_pinned_counts(placement_calls, patch_size, expected):
    run_on_meta(lambda: LoGVMambaSwinUMamba2D(3, 2, patch_size=patch_size), (1, 3, *patch_size))
    with_globals = [(n_local, n_global) for _, n_local, n_global in placement_calls if n_global]
    assert list(dict.fromkeys(with_globals)) == expected
    assert {mode for mode, _, _ in placement_calls} == {"interleaved"}


@pytest.mark.parametrize(
    ("n_local", "n_global", "expected"),
    [
        # BraTS stage 4 of the authors' network: r = 2, 8 front globals, then the partial block of one
        # local, 31 blocks 'g ll', a last block 'g l'. (Before: 'g' * 9 + 'll' + 'gll' * 31.)
        (4**3, 40, "g" * 8 + "l" + "gll" * 31 + "gl"),
        # Stage 4 of the package's network (8^3): r = 13, unchanged by the authors' rule.
        (8**3, 40, ("g" + "l" * 13) * 39 + "g" + "l" * 5),
        # Deepest 2D level at 512^2: r = 3, 91 front globals, one local, then 341 blocks 'g lll'.
        # (Before: 'g' * 91 + 'lll', then 340 blocks 'g lll' and a last 'g l'.)
        (32 * 32, 432, "g" * 91 + "l" + "glll" * 341),
        # 1/8 level at 384 x 640: r = 9, 5 front globals, 5 locals, 426 blocks 'g' + 9 locals, 'g l'.
        # (Before: 'g' * 6 + 9 locals, 425 blocks 'g' + 9 locals, 'g' + 6 locals.)
        (48 * 80, 432, "g" * 5 + "l" * 5 + ("g" + "l" * 9) * 426 + "gl"),
    ],
)
def test_interleaved_paper_settings_hand_checked(n_local, n_global, expected):
    assert layout("interleaved", n_local, n_global) == expected


@pytest.mark.parametrize(
    ("n_local", "n_global", "expected"),
    [
        (10, 4, "glll" "glll" "glll" "gl"),
        (10, 3, "gllll" "gllll" "gll"),
        (3, 5, "gg" "gl" "gl" "gl"),
        (5, 1, "glllll"),
        (1, 3, "gg" "gl"),
        (5, 4, "gg" "l" "gll" "gll"),
        (11, 5, "gg" "ll" "glll" "glll" "glll"),
        (6, 4, "g" "ll" "gll" "gll" "g"),
        (2, 3, "g" "l" "g" "l" "g"),
        (6, 0, "llllll"),
    ],
)
def test_interleaved_layout_examples(n_local, n_global, expected):
    assert layout("interleaved", n_local, n_global) == expected


@pytest.mark.parametrize(
    ("mode", "n_local", "n_global", "expected"),
    [
        ("head", 4, 3, "ggg" "llll"),
        ("middle", 5, 2, "ll" "gg" "lll"),
        ("middle", 1, 2, "gg" "l"),
        ("split", 5, 3, "g" "ll" "gg" "lll"),
        ("split", 7, 5, "gg" "lll" "ggg" "llll"),
        ("split", 4, 1, "ll" "g" "ll"),
        ("split", 1, 4, "gg" "gg" "l"),
        ("split", 6, 4, "gg" "lll" "gg" "lll"),
    ],
)
def test_head_middle_split_layouts(mode, n_local, n_global, expected):
    assert layout(mode, n_local, n_global) == expected


@pytest.mark.parametrize("n_global", [1, 3, 5, 27, 431])
@pytest.mark.parametrize("n_local", [7, 64])
def test_split_puts_the_smaller_half_first_and_keeps_every_local(n_local, n_global):
    sequence = layout("split", n_local, n_global)
    front = n_global // 2
    assert sequence[:front] == "g" * front
    assert sequence[front : front + n_local // 2] == "l" * (n_local // 2)
    assert sequence.count("l") == n_local and sequence.count("g") == n_global


@pytest.mark.parametrize("mode", PLACEMENTS)
@pytest.mark.parametrize(("n_local", "n_global"), ROUND_TRIP_COUNTS)
@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)])
def test_round_trip_returns_exactly_the_local_tokens(mode, n_local, n_global, batch_shape):
    generator = torch.Generator().manual_seed(n_local * 1000 + n_global)
    local = torch.randn(*batch_shape, n_local, generator=generator)
    global_tokens = torch.randn(*batch_shape, n_global, generator=generator)
    placement = TokenPlacement(mode)
    sequence = placement.place(local, global_tokens)
    assert sequence.shape == (*batch_shape, n_local + n_global)
    assert torch.equal(placement.remove(sequence, n_global), local)
    local_slots, global_slots = placement.slots(n_local, n_global)
    assert torch.equal(sequence[..., global_slots], global_tokens)
    assert torch.equal(torch.cat([local_slots, global_slots]).sort().values, torch.arange(n_local + n_global))


def test_round_trip_keeps_integer_tokens():
    local = torch.arange(2 * 9).view(2, 9)
    global_tokens = -torch.arange(1, 2 * 4 + 1).view(2, 4)
    placement = TokenPlacement()
    sequence = placement.place(local, global_tokens)
    assert sequence[0].tolist() == [-1, 0, 1, 2, -2, 3, 4, 5, -3, 6, 7, 8, -4]
    assert torch.equal(placement.remove(sequence, 4), local)


def test_slot_maps_are_cached_per_shape():
    placement = TokenPlacement("interleaved")
    first = placement.slots(300, 17)
    assert placement.slots(300, 17)[0] is first[0]
    assert TokenPlacement("interleaved").slots(300, 17)[1] is first[1]


def test_unknown_mode_and_bad_counts_raise():
    with pytest.raises(ValueError, match=r"placement='tail'.*\('head', 'middle', 'split', 'interleaved'\)"):
        TokenPlacement("tail")
    with pytest.raises(ValueError, match="n_local >= 1"):
        TokenPlacement("head").slots(0, 3)
    with pytest.raises(ValueError, match="n_global >= 0"):
        TokenPlacement("interleaved").slots(4, -1)
