"""Token placement (paper §3.3): layouts of the four modes and their exact inverse."""

import math

import pytest
import torch

from logvmamba_nnunet.modules.token_placement import PLACEMENTS, TokenPlacement

SWEEP = [
    (1, 1), (1, 6), (2, 1), (3, 7), (5, 5), (7, 3), (13, 5), (17, 16), (97, 13), (101, 100),
    (64, 8), (4096, 27), (20000, 54), (6, 0),
]


def layout(mode: str, n_local: int, n_global: int) -> str:
    """The sequence as a string, 'l' for a local slot and 'g' for a global slot."""
    local_slots, global_slots = TokenPlacement(mode).slots(n_local, n_global)
    chars = [""] * (n_local + n_global)
    for slot in local_slots.tolist():
        chars[slot] = "l"
    for slot in global_slots.tolist():
        chars[slot] = "g"
    return "".join(chars)


@pytest.mark.parametrize("mode", PLACEMENTS)
@pytest.mark.parametrize(("n_local", "n_global"), SWEEP)
def test_round_trip_returns_exactly_the_local_tokens(mode, n_local, n_global):
    generator = torch.Generator().manual_seed(n_local * 1000 + n_global)
    local = torch.randn(2, 3, n_local, generator=generator)
    global_tokens = torch.randn(2, 3, n_global, generator=generator)
    placement = TokenPlacement(mode)
    sequence = placement.place(local, global_tokens)
    assert sequence.shape == (2, 3, n_local + n_global)
    assert torch.equal(placement.remove(sequence, n_global), local)
    local_slots, global_slots = placement.slots(n_local, n_global)
    assert torch.equal(sequence[..., global_slots], global_tokens)
    assert torch.equal(torch.cat([local_slots, global_slots]).sort().values, torch.arange(n_local + n_global))
    assert torch.all(local_slots.diff() > 0) and torch.all(global_slots.diff() > 0)


@pytest.mark.parametrize("mode", PLACEMENTS)
@pytest.mark.parametrize(("n_local", "n_global"), [(n, g) for n, g in SWEEP if g > 0])
def test_every_global_token_comes_before_the_last_local_token(mode, n_local, n_global):
    local_slots, global_slots = TokenPlacement(mode).slots(n_local, n_global)
    assert global_slots.max() < local_slots.max()


@pytest.mark.parametrize(
    ("n_local", "n_global", "expected"),
    [
        (10, 4, "glll" "glll" "glll" "gl"),
        (10, 3, "gllll" "gllll" "gll"),
        (3, 5, "gg" "gl" "gl" "gl"),
        (7, 2, "gllll" "glll"),
        (5, 1, "glllll"),
        (1, 3, "gg" "gl"),
    ],
)
def test_interleaved_layout_examples(n_local, n_global, expected):
    assert layout("interleaved", n_local, n_global) == expected


@pytest.mark.parametrize(("n_local", "n_global"), [(n, g) for n, g in SWEEP if g > 0])
def test_interleaved_follows_the_papers_sentence(n_local, n_global):
    """Globals at a fixed interval r + 1 (r = ceil(L / G)), the excess ones at the very front."""
    sequence = layout("interleaved", n_local, n_global)
    interval = math.ceil(n_local / n_global)
    on_grid = math.ceil(n_local / interval)
    excess = n_global - on_grid
    assert sequence[:excess] == "g" * excess
    grid = sequence[excess:]
    assert grid[:: interval + 1] == "g" * on_grid
    blocks = [grid[i : i + interval + 1] for i in range(0, len(grid), interval + 1)]
    assert all(block[1:] == "l" * interval for block in blocks[:-1])
    assert set(blocks[-1][1:]) == {"l"}


@pytest.mark.parametrize(
    ("mode", "n_local", "n_global", "expected"),
    [
        ("head", 4, 3, "ggg" "llll"),
        ("middle", 5, 2, "ll" "gg" "lll"),
        ("split", 5, 3, "gg" "ll" "g" "lll"),
        ("split", 4, 1, "g" "llll"),
        ("middle", 1, 2, "gg" "l"),
    ],
)
def test_head_middle_split_layouts(mode, n_local, n_global, expected):
    assert layout(mode, n_local, n_global) == expected


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
