"""The 1D Mamba layer and U-Mamba's layer against direct float64 computations of the same block."""

import pytest
import torch
import torch.nn.functional as F

from logvmamba_nnunet.modules import mamba1d
from logvmamba_nnunet.modules.mamba1d import Mamba1d, UMambaLayer, causal_depthwise_conv1d_silu
from logvmamba_nnunet.modules.ssm import inverse_softplus
from logvmamba_nnunet.modules.weight_decay import parameter_groups_for_weight_decay
from logvmamba_nnunet.ops.backends import OptionalImport
from logvmamba_nnunet.ops.flops import count_scan_flops
from logvmamba_nnunet.ops.reference import selective_scan_reference


def causal_conv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (B, D, L), weight (D, W), bias (D,): out[t] = bias + sum_k weight[k] * x[t - (W - 1) + k], in float64."""
    x, weight, bias = x.double(), weight.double(), bias.double()
    width, length = weight.shape[1], x.shape[-1]
    out = bias[None, :, None].expand_as(x).clone()
    for k in range(width):
        shift = width - 1 - k
        shifted = torch.zeros_like(x)
        shifted[..., shift:] = x[..., :length - shift]
        out = out + weight[None, :, k, None] * shifted
    return out


def mamba_reference(layer: Mamba1d, tokens: torch.Tensor) -> torch.Tensor:
    """The Mamba block written out in float64: (B, L, d_model) -> (B, L, d_model). Differentiable w.r.t. the
    layer's parameters and ``tokens``."""
    p = {name: value.double() for name, value in layer.named_parameters()}
    inner, rank, state = layer.d_inner, layer.dt_rank, layer.d_state
    xz = tokens.double() @ p["in_proj.weight"].T
    x, z = xz[..., :inner].transpose(1, 2), xz[..., inner:].transpose(1, 2)  # (B, E, L)
    conv = causal_conv_reference(x, p["conv1d.weight"][:, 0], p["conv1d.bias"])
    x = conv * torch.sigmoid(conv)
    projected = x.transpose(1, 2) @ p["x_proj.weight"].T  # (B, L, R + 2N)
    dt = projected[..., :rank]
    B = projected[..., rank:rank + state].transpose(1, 2)
    C = projected[..., rank + state:].transpose(1, 2)
    delta = (dt @ p["dt_proj.weight"].T).transpose(1, 2)
    y = selective_scan_reference(x, delta, -torch.exp(p["A_log"]), B, C, D=p["D"], z=z,
                                 delta_bias=p["dt_proj.bias"], delta_softplus=True)
    return y.transpose(1, 2) @ p["out_proj.weight"].T


@torch.no_grad()
def randomise(layer: Mamba1d, generator: torch.Generator) -> Mamba1d:
    """Fresh non-default values for every parameter (A in -1..-16, positive steps)."""
    for name, parameter in layer.named_parameters():
        if name == "A_log":
            parameter.copy_(torch.log(1 + 15 * torch.rand(parameter.shape, generator=generator)))
        elif name == "dt_proj.bias":
            parameter.copy_(inverse_softplus(0.01 + 0.3 * torch.rand(parameter.shape, generator=generator)))
        else:
            parameter.copy_(0.4 * torch.randn(parameter.shape, generator=generator))
    return layer


def test_causal_conv_matches_explicit_taps():
    generator = torch.Generator().manual_seed(1)
    x, weight, bias = torch.randn(2, 5, 9, generator=generator), torch.randn(5, 1, 4, generator=generator), \
        torch.randn(5, generator=generator)
    expected = F.silu(causal_conv_reference(x, weight[:, 0], bias))
    torch.testing.assert_close(causal_depthwise_conv1d_silu(x, weight, bias).double(), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("d_model, length, d_state", [(8, 13, 16), (12, 5, 4)])
def test_mamba_layer_matches_float64_block(d_model, length, d_state):
    generator = torch.Generator().manual_seed(d_model + length)
    layer = randomise(Mamba1d(d_model, d_state=d_state), generator)
    tokens = torch.randn(2, length, d_model, generator=generator, requires_grad=True)
    out = layer(tokens)
    expected = mamba_reference(layer, tokens)
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-5)

    upstream = torch.randn(out.shape, generator=generator)
    wrt = [tokens, layer.A_log, layer.dt_proj.bias, layer.conv1d.weight, layer.in_proj.weight]
    grads = torch.autograd.grad((out * upstream).sum(), wrt)
    expected_grads = torch.autograd.grad((expected * upstream.double()).sum(), wrt)
    for name, got, want in zip(["tokens", "A_log", "dt_bias", "conv", "in_proj"], grads, expected_grads):
        torch.testing.assert_close(got, want, atol=5e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_mamba_layer_is_causal():
    generator = torch.Generator().manual_seed(3)
    layer = randomise(Mamba1d(8), generator)
    tokens = torch.randn(1, 20, 8, generator=generator)
    changed = tokens.clone()
    changed[:, 12:] += torch.randn(1, 8, 8, generator=generator)
    with torch.no_grad():
        before, after = layer(tokens), layer(changed)
    torch.testing.assert_close(after[:, :12], before[:, :12], atol=1e-6, rtol=0)
    assert (after[:, 12:] - before[:, 12:]).abs().max() > 1e-3


def test_mamba_initialisation_and_sizes():
    layer = Mamba1d(40, dt_min=1e-3, dt_max=0.1)
    assert (layer.d_inner, layer.dt_rank, layer.d_state, layer.d_conv) == (80, 3, 16, 4)  # rank ceil(40 / 16)
    torch.testing.assert_close(layer.A_log, torch.log(torch.arange(1.0, 17.0)).expand(80, 16))
    assert torch.equal(layer.D, torch.ones(80))
    dt = F.softplus(layer.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    assert layer.dt_proj.weight.abs().max() <= 3**-0.5
    d, e, r, n, w = 40, 80, 3, 16, 4
    expected = d * 2 * e + e * w + e + e * (r + 2 * n) + r * e + e + e * n + e + e * d
    assert sum(p.numel() for p in layer.parameters()) == expected


def test_a_log_and_d_get_no_weight_decay():
    layer = UMambaLayer(8)
    groups = parameter_groups_for_weight_decay(layer, 0.1)
    names = {id(p): n for n, p in layer.named_parameters()}
    excluded = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert excluded == {"mamba.A_log", "mamba.D"}


@pytest.mark.parametrize("shape", [(2, 6, 5, 7), (1, 6, 3, 4, 5)])
def test_umamba_layer_matches_float64_block(shape):
    generator = torch.Generator().manual_seed(len(shape))
    layer = UMambaLayer(shape[1])
    randomise(layer.mamba, generator)
    with torch.no_grad():
        layer.norm.weight.copy_(1 + 0.3 * torch.randn(shape[1], generator=generator))
        layer.norm.bias.copy_(0.3 * torch.randn(shape[1], generator=generator))
    x = 2 + 3 * torch.randn(shape, generator=generator)
    tokens = x.double().flatten(2).transpose(1, 2)  # (B, L, C), raster order
    mean = tokens.mean(-1, keepdim=True)
    variance = ((tokens - mean) ** 2).mean(-1, keepdim=True)
    normalised = (tokens - mean) / torch.sqrt(variance + 1e-5) * layer.norm.weight.double() \
        + layer.norm.bias.double()
    with torch.no_grad():
        expected = mamba_reference(layer.mamba, normalised).transpose(1, 2).reshape(shape)
        out = layer(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=1e-5)


def test_umamba_layer_runs_in_float32_under_autocast():
    generator = torch.Generator().manual_seed(5)
    layer = UMambaLayer(8)
    randomise(layer.mamba, generator)
    x = torch.randn(2, 8, 6, 6, generator=generator)
    with torch.no_grad():
        plain = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = layer(x)
        low_precision = layer(x.bfloat16())
        upcast_first = layer(x.bfloat16().float())
    assert torch.equal(autocast, plain)  # autocast is disabled inside: bit-identical to the fp32 run
    assert low_precision.dtype == torch.bfloat16
    assert torch.equal(low_precision, upcast_first.bfloat16())  # computed in fp32, cast back at the end


def test_causal_conv1d_package_is_not_imported_for_cpu_tensors(monkeypatch):
    loader = OptionalImport("causal_conv1d", "causal_conv1d_fn")
    monkeypatch.setattr(mamba1d, "_CAUSAL_CONV1D", loader)
    Mamba1d(8)(torch.randn(1, 5, 8))
    assert not loader.attempted


@pytest.mark.parametrize("kwargs, match", [
    (dict(d_model=0), "d_model"), (dict(d_model=8, expand=1.5), "expand"), (dict(d_model=8, d_conv=0), "d_conv"),
    (dict(d_model=8, dt_min=0.2, dt_max=0.1), "dt_min"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Mamba1d(**kwargs)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match=r"\(B, L, 8\)"):
        Mamba1d(8)(torch.randn(1, 5, 6))
    with pytest.raises(ValueError, match=r"\(B, 8, \*spatial\)"):
        UMambaLayer(8)(torch.randn(1, 6, 4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    """On CUDA the conv runs through causal-conv1d's kernel when that package imports, else F.conv1d."""
    generator = torch.Generator().manual_seed(7)
    layer = randomise(Mamba1d(16), generator)
    tokens = torch.randn(2, 64, 16, generator=generator)
    with torch.no_grad():
        expected = layer(tokens)
        got = layer.cuda()(tokens.cuda()).cpu()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_umamba_layer_runs_on_the_meta_device_while_counting_scan_flops():
    """Profiling runs networks on the meta device (which has no autocast) inside ``count_scan_flops``: one scan
    over d_inner = 16 channels and L = 20 tokens, with the skip D and the gate z."""
    with torch.device("meta"), count_scan_flops() as counter:
        out = UMambaLayer(8)(torch.randn(1, 8, 4, 5))
    assert out.is_meta and out.shape == (1, 8, 4, 5)
    assert counter.flops == 1 * 16 * 20 * (1 + 7 * 16 + 2 + 3)
