"""The four mixer kinds in 2D and 3D: composition against an explicit reference, forward/backward for
every kind and K, what GTX is for, fp32 SSM under bf16 autocast, parameter counts, argument errors."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import logvmamba_nnunet.modules.ssm as ssm_module
from logvmamba_nnunet.modules.block import LoGVMambaBlock
from logvmamba_nnunet.modules.mixer import MIXER_KINDS, LoGVMambaMixer

SIZES = {2: (4, 5), 3: (3, 3, 4)}
OTHER_SIZES = {2: [(6, 3), (1, 1)], 3: [(4, 2, 5), (1, 1, 1)]}


def recurrent_s6(u, delta, A, B, C, D):
    """float64 loop: h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t, y_t = <C_t, h_t> + D u_t.
    u, delta: (B, W, T); A: (W, N); B, C: (B, N, T); D: (W,)."""
    state = torch.zeros(*u.shape[:2], A.shape[1], dtype=u.dtype)
    outputs = []
    for t in range(u.shape[-1]):
        step = delta[..., t, None]
        state = torch.exp(step * A) * state + step * u[..., t, None] * B[:, None, :, t]
        outputs.append((state * C[:, None, :, t]).sum(-1) + D * u[..., t])
    return torch.stack(outputs, dim=-1)


def explicit_orders(spatial_size, directions):
    """Scan orders written out with itertools: raster, transposed (last two axes swapped), reversed."""
    positions = list(itertools.product(*(range(n) for n in spatial_size)))
    raster_index = {pos: i for i, pos in enumerate(positions)}
    swapped = sorted(positions, key=lambda pos: (*pos[:-2], pos[-1], pos[-2]))
    raster, transposed = list(range(len(positions))), [raster_index[pos] for pos in swapped]
    return {1: [raster], 2: [raster, raster[::-1]],
            4: [raster, transposed, raster[::-1], transposed[::-1]]}[directions]


def explicit_interleaved(n_local, n_global):
    """[('g', j) | ('l', i)] following the documented interleaved layout: with r = ceil(L / G), the first
    G - (number of grid slots) slots and the grid slots s0, s0 + r + 1, ... < L + G, with
    s0 = ceil((G - floor(L / r)) / (r + 1)) * (r + 1), hold the globals in order; the locals fill the rest."""
    interval = math.ceil(n_local / n_global)
    length = n_local + n_global
    start = math.ceil((n_global - n_local // interval) / (interval + 1)) * (interval + 1)
    grid = range(start, length, interval + 1)
    front = n_global - len(grid)
    sequence, next_global, next_local = [], 0, 0
    for slot in range(length):
        if slot < front or slot in grid:
            sequence.append(("g", next_global))
            next_global += 1
        else:
            sequence.append(("l", next_local))
            next_local += 1
    return sequence


def reference_mixer(mixer, x):
    """The mixer recomputed in float64 from its parameters, with explicit orders, layout and S6 loop."""
    p = {name: value.detach().double() for name, value in mixer.named_parameters()}
    x = x.double()
    x_in, z = (x @ p["in_proj.weight"].T).chunk(2, dim=-1)
    features = mixer.extractor.double()(x_in.movedim(-1, 1))
    local = features.flatten(2)
    global_tokens = mixer.global_extractor.double()(features) if mixer.global_extractor else local[..., :0]
    n_local, n_global = local.shape[-1], global_tokens.shape[-1]
    layout = explicit_interleaved(n_local, n_global) if n_global else [("l", i) for i in range(n_local)]
    ssm, width = mixer.ssm, local.shape[1]
    y = torch.zeros_like(local)
    for k, order in enumerate(explicit_orders(x.shape[1:-1], ssm.directions)):
        u = torch.stack([local[:, :, order[i]] if kind == "l" else global_tokens[:, :, i]
                         for kind, i in layout], dim=-1)
        projected = torch.einsum("cw,bwt->bct", p["ssm.x_proj_weight"][k], u)
        dt, B, C = projected.split([ssm.dt_rank, ssm.d_state, ssm.d_state], dim=1)
        delta = F.softplus(torch.einsum("wr,brt->bwt", p["ssm.dt_proj_weight"][k], dt)
                           + p["ssm.dt_proj_bias"][k][:, None])
        channels = slice(k * width, (k + 1) * width)
        out = recurrent_s6(u, delta, -torch.exp(p["ssm.A_log"][channels]), B, C, p["ssm.D"][channels])
        for slot, (kind, i) in enumerate(layout):
            if kind == "l":
                y[:, :, order[i]] += out[:, :, slot]
    y = y.transpose(1, 2)
    if mixer.fold is not None:
        y = y @ p["fold.weight"].T
    y = F.layer_norm(y, y.shape[-1:], p["out_norm.weight"], p["out_norm.bias"])
    return (y.view(z.shape) * F.silu(z)) @ p["out_proj.weight"].T


@pytest.mark.parametrize(
    ("kind", "spatial_dims", "directions", "gtx"),
    [
        ("vss", 2, 4, {}),
        ("local", 3, 2, {}),
        ("global", 2, 2, {"gtx_stride": 2, "gtx_squeeze": 2}),
        ("local_global", 3, 4, {"gtx_stride": 2, "ltx_squeeze": 4}),
        ("local_global", 2, 1, {"gtx_stride": 4}),
    ],
)
def test_mixer_matches_explicit_reference(kind, spatial_dims, directions, gtx):
    torch.manual_seed(0)
    size = SIZES[spatial_dims]
    mixer = LoGVMambaMixer(8, spatial_dims, kind, planned_size=size, d_state=4, directions=directions, **gtx)
    with torch.no_grad():
        for parameter in (mixer.out_norm.weight, mixer.out_norm.bias, mixer.ssm.D):
            parameter.add_(0.5 * torch.randn_like(parameter))
    x = torch.randn(2, *size, 8)
    expected = reference_mixer(mixer, x)
    out = mixer.float()(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-5)


def straightforward_mixer(mixer, x):
    """The mixer written plainly and differentiably from its own modules: one in_proj split by ``chunk``, the
    extractor on a channels-first copy, globals concatenated, each direction's sequence gathered slot by slot
    (explicit orders and interleaved layout), einsum projections and the scan, each direction read back with an
    index and the directions summed, fold, LayerNorm, ``* silu(z)``, out_proj."""
    x_in, z = F.linear(x, mixer.in_proj.weight).chunk(2, dim=-1)
    features = mixer.extractor(x_in.movedim(-1, 1).contiguous())
    tokens = features.flatten(2)
    n_local = tokens.shape[-1]
    if mixer.global_extractor is not None:
        tokens = torch.cat([tokens, mixer.global_extractor(features)], dim=-1)
    n_global = tokens.shape[-1] - n_local
    layout = explicit_interleaved(n_local, n_global) if n_global else [("l", i) for i in range(n_local)]
    orders = explicit_orders(x.shape[1:-1], mixer.ssm.directions)
    sources = [[order[i] if kind == "l" else n_local + i for kind, i in layout] for order in orders]
    sequences = torch.stack([tokens[..., source] for source in sources], dim=1)
    ssm = mixer.ssm
    batch, directions, width, length = sequences.shape
    projected = torch.einsum("bkwt,kcw->bkct", sequences, ssm.x_proj_weight)
    dt, B, C = projected.split([ssm.dt_rank, ssm.d_state, ssm.d_state], dim=2)
    delta = torch.einsum("bkrt,kwr->bkwt", dt, ssm.dt_proj_weight)
    outputs = ssm_module.selective_scan(
        sequences.reshape(batch, -1, length), delta.reshape(batch, -1, length), -torch.exp(ssm.A_log),
        B.contiguous(), C.contiguous(), D=ssm.D, delta_bias=ssm.dt_proj_bias.flatten(), delta_softplus=True,
        backend="torch").view(batch, directions, width, length)
    y = 0
    for k, source in enumerate(sources):
        slot_of = {index: slot for slot, index in enumerate(source)}
        y = y + outputs[:, k][..., [slot_of[p] for p in range(n_local)]]
    y = y.transpose(1, 2)
    if mixer.fold is not None:
        y = mixer.fold(y)
    y = mixer.out_norm(y).view(z.shape) * F.silu(z)
    return mixer.out_proj(y)


def assert_same_outputs_and_gradients(run, reference, inputs, parameters, rtol=1e-4, atol=1e-5):
    """``run()`` and ``reference()`` give the same output and the same gradients of a random projection of it with
    respect to ``inputs`` and ``parameters`` (named), to float32 tolerance relative to each tensor's scale."""
    def outputs_and_gradients(function):
        for tensor in [*inputs, *(p for _, p in parameters)]:
            tensor.grad = None
        out = function()
        (out * weights).sum().backward()
        return out.detach(), [t.grad.clone() for t in inputs], [p.grad.clone() for _, p in parameters]

    torch.manual_seed(7)
    weights = torch.randn_like(reference().detach())
    expected = outputs_and_gradients(reference)
    actual = outputs_and_gradients(run)
    names = [f"input {i}" for i in range(len(inputs))] + [name for name, _ in parameters]
    for name, got, want in zip(["output", *names], [actual[0], *actual[1], *actual[2]],
                               [expected[0], *expected[1], *expected[2]], strict=True):
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol * max(want.abs().max().item(), 1.0),
                                   msg=lambda message, name=name: f"{name}: {message}")


@pytest.mark.parametrize(
    ("kind", "spatial_dims", "directions", "gtx"),
    [
        ("vss", 2, 4, {}),
        ("vss", 3, 1, {}),
        ("local", 3, 1, {}),
        ("local", 2, 2, {}),
        ("global", 2, 2, {"gtx_stride": 2, "gtx_squeeze": 2}),
        ("global", 3, 1, {"gtx_stride": 2}),
        ("local_global", 3, 1, {"gtx_stride": 2, "ltx_squeeze": 4}),
        ("local_global", 3, 4, {"gtx_stride": 2, "ltx_squeeze": 4}),
        ("local_global", 2, 1, {"gtx_stride": 4}),
    ],
)
def test_mixer_outputs_and_gradients_match_the_straightforward_formulation(kind, spatial_dims, directions, gtx):
    """The mixer avoids copies (split in_proj, strided placement, fused gate): values and gradients with respect
    to the input and every parameter are those of the plain formulation."""
    torch.manual_seed(0)
    size = SIZES[spatial_dims]
    mixer = LoGVMambaMixer(8, spatial_dims, kind, planned_size=size, d_state=4, directions=directions, **gtx)
    with torch.no_grad():
        for parameter in (mixer.out_norm.weight, mixer.out_norm.bias, mixer.ssm.D, mixer.ssm.dt_proj_bias):
            parameter.add_(0.5 * torch.randn_like(parameter))
    x = torch.randn(2, *size, 8, requires_grad=True)
    assert_same_outputs_and_gradients(lambda: mixer(x), lambda: straightforward_mixer(mixer, x), [x],
                                      list(mixer.named_parameters()))


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("directions", [1, 2, 4])
@pytest.mark.parametrize("kind", MIXER_KINDS)
def test_forward_backward_every_kind(kind, directions, spatial_dims):
    torch.manual_seed(0)
    size = SIZES[spatial_dims]
    block = LoGVMambaBlock(8, spatial_dims, kind, planned_size=size, d_state=4, directions=directions,
                           gtx_stride=2)
    for shape in [size, *OTHER_SIZES[spatial_dims]]:
        block.zero_grad()
        x = torch.randn(2, *shape, 8, requires_grad=True)
        out = block(x)
        assert out.shape == x.shape
        (out * torch.randn_like(out)).sum().backward()
        assert torch.isfinite(x.grad).all()
        for name, parameter in block.named_parameters():
            assert parameter.grad is not None, name
            assert torch.isfinite(parameter.grad).all(), name
            if shape == size:
                assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    ("kind", "placement", "reaches"),
    [
        ("vss", "interleaved", False),
        ("local", "interleaved", False),
        ("global", "interleaved", True),
        ("local_global", "interleaved", True),
        ("local_global", "head", True),
        ("local_global", "split", True),
        ("local_global", "middle", False),
    ],
)
def test_global_tokens_bring_the_far_end_to_the_first_token(kind, placement, reaches):
    """K=1 scans causally: without GTX (or with the globals placed after it) the first local token cannot
    see the far corner of the volume: its output is bit-identical and its gradient there exactly zero.
    With GTX it sees it. (At Mamba's init, dt ~ 0.01 makes that path ~1e-7, close to float32 rounding;
    a step of ~1 and a 5x larger GTX projection lift it to >1e-5, far above rounding.)"""
    torch.manual_seed(0)
    size = (4, 4, 4)
    mixer = LoGVMambaMixer(8, 3, kind, planned_size=size, d_state=4, directions=1, placement=placement,
                           gtx_stride=2)
    with torch.no_grad():
        mixer.ssm.dt_proj_bias.fill_(0.5)
        if mixer.global_extractor is not None:
            mixer.global_extractor.project.weight.mul_(5.0)
    x = torch.randn(1, *size, 8, requires_grad=True)
    first = mixer(x)[0, 0, 0, 0]
    (gradient,) = torch.autograd.grad(first.sum(), x)
    far_gradient = gradient[0, -1, -1, -1].abs().max().item()
    changed = x.detach().clone()
    changed[0, -1, -1, -1] += 5.0
    with torch.no_grad():
        difference = (first - mixer(changed)[0, 0, 0, 0]).abs().max().item()
    if reaches:
        assert difference > 1e-6 and far_gradient > 1e-6
    else:
        assert difference == 0.0 and far_gradient == 0.0


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("kind", MIXER_KINDS)
def test_bf16_autocast_keeps_the_ssm_in_fp32(kind, spatial_dims, monkeypatch):
    seen = []
    real_scan = ssm_module.selective_scan

    def spy(*args, **kwargs):
        tensors = [*args, kwargs["D"], kwargs["delta_bias"]]
        seen.append(({t.dtype for t in tensors}, torch.is_autocast_enabled("cpu")))
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(ssm_module, "selective_scan", spy)
    torch.manual_seed(0)
    size = SIZES[spatial_dims]
    block = LoGVMambaBlock(8, spatial_dims, kind, planned_size=size, d_state=4, gtx_stride=2)
    x = torch.randn(2, *size, 8, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    out.float().square().sum().backward()
    assert seen == [({torch.float32}, False)] * 2  # the forward, and its recomputation in backward (same state)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert torch.isfinite(out.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in block.parameters())


def test_fp32_input_under_autocast_returns_fp32():
    block = LoGVMambaBlock(8, 2, "local_global", planned_size=(4, 4), d_state=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert block(torch.randn(1, 4, 4, 8)).dtype == torch.float32


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_count_vss_2d():
    mixer = LoGVMambaMixer(8, 2, "vss", directions=1)
    c, d_inner, n, rank = 8, 16, 16, 1            # E = 2 in 2D; R = ceil(16 / 16)
    in_proj = c * 2 * d_inner                       # 256
    conv = d_inner * 3 * 3 + d_inner                # 160
    ssm = d_inner * (rank + 2 * n) + (rank * d_inner + d_inner) + d_inner * n + d_inner   # 832
    out = 2 * d_inner + d_inner * c                 # LayerNorm + out_proj: 160
    assert count(mixer) == in_proj + conv + ssm + out == 1408
    assert count(LoGVMambaBlock(8, 2, "vss")) == 1408 + 2 * c


def test_parameter_count_local_3d():
    mixer = LoGVMambaMixer(16, 3, "local", directions=2)
    c, d_inner, n = 16, 16, 16                      # E = 1 in 3D; default LTX squeeze 16
    squeezed = d_inner // 16                        # 1 channel after the squeeze
    width = squeezed * 27                           # C' = 27
    rank = math.ceil(width / 16)                    # 2
    in_proj = c * 2 * d_inner                       # 512
    ltx = squeezed * 16 * 27 + squeezed             # grouped conv weight (1, 16, 3, 3, 3) + bias: 433
    ssm_one = width * (rank + 2 * n) + (rank * width + width) + width * n + width          # 1458
    fold = width * d_inner                          # 432
    out = 2 * d_inner + d_inner * c                 # 288
    assert count(mixer) == in_proj + ltx + 2 * ssm_one + fold + out == 4581


def test_parameter_count_global_2d():
    mixer = LoGVMambaMixer(8, 2, "global", planned_size=(8, 6), directions=4, gtx_stride=2, gtx_squeeze=2)
    c, d_inner, n, rank = 8, 16, 16, 1
    in_proj = c * 2 * d_inner                       # 256
    conv = d_inner * 9 + d_inner                    # 160
    n_tokens = d_inner // 2                         # 8 global tokens
    gtx_conv = n_tokens * 2 * 3 * 3 + n_tokens      # kernel 3 for stride 2: 152
    grid = math.ceil(8 / 2) * math.ceil(6 / 2)      # Ng = 12
    gtx_linear = grid * d_inner + d_inner           # 208
    ssm_one = d_inner * (rank + 2 * n) + (rank * d_inner + d_inner) + d_inner * n + d_inner   # 832
    out = 2 * d_inner + d_inner * c                 # 160
    assert count(mixer) == in_proj + conv + gtx_conv + gtx_linear + 4 * ssm_one + out == 4264


def test_parameter_count_local_global_3d():
    mixer = LoGVMambaMixer(16, 3, "local_global", planned_size=(5, 4, 4), ltx_squeeze=8, gtx_stride=4)
    c, d_inner, n = 16, 16, 16
    squeezed = d_inner // 8                         # 2
    width = squeezed * 27                           # C' = 54
    rank = math.ceil(width / 16)                    # 4
    in_proj = c * 2 * d_inner                       # 512
    ltx = squeezed * 8 * 27 + squeezed              # 434
    gtx_conv = width * 27 + width                   # depthwise k3 (dilation 2) over C': 1512
    grid = math.ceil(5 / 4) * math.ceil(4 / 4) ** 2  # Ng = 2
    gtx_linear = grid * width + width               # 162
    ssm = width * (rank + 2 * n) + (rank * width + width) + width * n + width              # 3132
    fold = width * d_inner                          # 864
    out = 2 * d_inner + d_inner * c                 # 288
    assert count(mixer) == in_proj + ltx + gtx_conv + gtx_linear + ssm + fold + out == 6904


def test_parameter_shapes_are_deterministic():
    def shapes():
        mixer = LoGVMambaMixer(16, 3, "local_global", planned_size=(6, 5, 4), directions=2, gtx_stride=2)
        return {name: tuple(t.shape) for name, t in mixer.state_dict().items()}

    assert shapes() == shapes()


@pytest.mark.parametrize(
    ("d_inner_dim", "spatial_dims", "expected"),
    [(8, 2, 8), (48, 3, 16), (24, 3, 12), (4, 3, 4), (6, 2, 6)],
)
def test_default_ltx_squeeze_is_clamped_to_a_divisor(d_inner_dim, spatial_dims, expected):
    mixer = LoGVMambaMixer(d_inner_dim, spatial_dims, "local", expand=1)
    assert mixer.extractor.squeeze.out_channels == d_inner_dim // expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "log"}, r"kind='log' is not supported; choose one of \('vss', 'local', 'global', "),
        ({"placement": "tail"}, r"placement='tail' .*'interleaved'"),
        ({"directions": 3}, r"directions=3 .*\(1, 2, 4\)"),
        ({"spatial_dims": 1}, r"spatial_dims=1 .*choose 2 .* or 3"),
        ({"planned_size": None}, r"kind='local_global' needs planned_size"),
        ({"planned_size": (4, 4)}, r"planned_size=\(4, 4\) has 2 entries but spatial_dims=3"),
        ({"ltx_squeeze": 3}, r"ltx_squeeze=3 does not divide d_inner .*=16; use one of its divisors"),
        ({"gtx_squeeze": 5}, r"gtx_squeeze=5 does not divide the GTX input width .*=54"),
        ({"gtx_stride": (1, 2)}, r"gtx_stride=\(1, 2\) has 2 entries"),
        ({"expand": 0.3}, r"expand=0.3 times dim=16 must be a positive integer"),
        ({"dim": 0}, r"dim=0 must be a positive integer"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    arguments = {"dim": 16, "spatial_dims": 3, "planned_size": (4, 4, 4), "ltx_squeeze": 8} | kwargs
    with pytest.raises(ValueError, match=message):
        LoGVMambaMixer(**arguments)


def test_wrong_input_shape_raises():
    mixer = LoGVMambaMixer(8, 2, "vss")
    with pytest.raises(ValueError, match=r"channels-last input \(B, \*S, 8\) with 2 spatial axes"):
        mixer(torch.randn(1, 8, 4, 4, 1))
    with pytest.raises(ValueError, match="got shape"):
        mixer(torch.randn(1, 4, 4, 6))


@pytest.mark.parametrize(
    ("dim", "spatial_dims", "kind", "expected"),
    [
        (384, 2, "local_global", 27),  # the authors' deepest 2D decoder level: ceil(384 / 8 * 9 / 16)
        (192, 2, "local", 14),
        (96, 2, "vss", 6),  # VMamba's ceil(C / 16)
        (96, 2, "global", 6),
        (64, 3, "local_global", 7),  # E = 1 in 3D: equal to ceil(W / 16) with W = 64 / 16 * 27 = 108
        (256, 3, "global", 16),
    ],
)
def test_default_dt_rank_is_computed_from_the_block_width(dim, spatial_dims, kind, expected):
    """The authors compute the dt rank from the block width C, not from the SSM width W (2x larger in 2D)."""
    with torch.device("meta"):
        mixer = LoGVMambaMixer(dim, spatial_dims, kind, planned_size=(8,) * spatial_dims)
    assert mixer.ssm.dt_rank == expected
    if spatial_dims == 3:
        assert expected == math.ceil(mixer.ssm.width / 16)
