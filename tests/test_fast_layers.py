"""backbone/layers.py's PReLU and DepthwiseConv2d against torch's stock layers, and the CPU
allocator setting of training/step.py. Speed is the benchmarks' business; these check that the
fast paths compute exactly what the stock layers compute, and that they are the paths taken."""

import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backbone import build_backbone
from backbone.layers import DepthwiseConv2d, PReLU, _PReLUFunction
from runtime import keep_freed_cpu_memory

SHAPES = [(4, 6, 5, 5), (5, 6), (3, 6, 7)]  # images, vectors (after a Linear), sequences


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels", [6, 1])
def test_prelu_gradients_pass_gradcheck(shape, channels):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, generator=generator)
    weight = torch.rand(channels, dtype=torch.float64, generator=generator) - 0.5
    assert torch.autograd.gradcheck(_PReLUFunction.apply, (x.requires_grad_(), weight.requires_grad_()))


def test_prelu_at_the_kink_takes_the_negative_slope_as_torch_does():
    x = torch.tensor([[-1.0, 0.0, 2.0, 0.0]], dtype=torch.float64).view(1, 1, 2, 2)
    weight = torch.tensor([0.25], dtype=torch.float64)
    ours = torch.autograd.grad(_PReLUFunction.apply(x.requires_grad_(), weight.requires_grad_()).sum(), (x, weight))
    stock = torch.autograd.grad(F.prelu(x, weight).sum(), (x, weight))
    assert torch.equal(ours[0], stock[0]) and torch.equal(ours[1], stock[1])
    assert ours[0].flatten().tolist() == [0.25, 0.25, 1.0, 0.25]


def stock_and_ours(channels, x, grad, autocast):
    """Outputs and gradients of nn.PReLU and ours from the same input, weights and upstream grad."""
    results = []
    for layer in (nn.PReLU(channels), PReLU(channels)):
        layer.weight.data = torch.linspace(-0.4, 0.6, channels)
        inputs = x.detach().clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = layer(inputs)
        out.backward(grad.to(out.dtype))
        results.append((out, inputs.grad, layer.weight.grad))
    return results


@pytest.mark.parametrize("channels_last", [False, True])
def test_prelu_matches_stock_in_fp32(channels_last):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(8, 16, 9, 9, generator=generator)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(8, 16, 9, 9, generator=generator)
    (out_s, gx_s, gw_s), (out_o, gx_o, gw_o) = stock_and_ours(16, x, grad, autocast=False)
    assert torch.equal(out_s, out_o) and torch.equal(gx_s, gx_o)
    torch.testing.assert_close(gw_o, gw_s, rtol=1e-5, atol=1e-5)
    assert gx_o.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_prelu_under_bf16_autocast_is_exact_in_x_and_more_accurate_in_the_weight():
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(8, 16, 9, 9, generator=generator).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(8, 16, 9, 9, generator=generator)
    (out_s, gx_s, gw_s), (out_o, gx_o, gw_o) = stock_and_ours(16, x, grad, autocast=True)
    assert out_o.dtype == gx_o.dtype == torch.bfloat16 and gw_o.dtype == torch.float32
    assert torch.equal(out_s, out_o) and torch.equal(gx_s, gx_o)
    # The exact weight gradient, from the same bf16 inputs in fp64:
    negative_part = x.double().clamp(max=0)
    exact = (grad.to(torch.bfloat16).double() * negative_part).sum((0, 2, 3))
    error_ours, error_stock = (gw_o.double() - exact).abs().max(), (gw_s.double() - exact).abs().max()
    assert error_ours <= error_stock and error_ours < 1e-4 * exact.abs().max()


def test_prelu_takes_the_stock_kernel_where_no_gradient_is_needed():
    layer = PReLU(4)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    assert layer(x).grad_fn.name() == "_PReLUFunctionBackward"
    with torch.no_grad():
        assert torch.equal(layer(x), F.prelu(x, layer.weight))
    traced = torch.jit.trace(layer, torch.randn(2, 4, 3, 3))
    assert "prelu" in str(traced.graph) and "PReLUFunction" not in str(traced.graph)


def depthwise_pair(stride):
    generator = torch.Generator().manual_seed(3)
    ours = DepthwiseConv2d(8, 8, 3, stride=stride, padding=1, groups=8, bias=False)
    stock = nn.Conv2d(8, 8, 3, stride=stride, padding=1, groups=8, bias=False)
    stock.load_state_dict(ours.state_dict())
    x = torch.randn(4, 8, 12, 12, generator=generator).contiguous(memory_format=torch.channels_last)
    return ours, stock, x


def test_strided_depthwise_runs_in_fp32_under_cpu_autocast():
    ours, stock, x = depthwise_pair(stride=2)
    inputs = x.to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours(inputs)
    assert out.dtype == torch.float32
    out.sum().backward()
    reference_input = x.to(torch.bfloat16).float().requires_grad_()
    stock(reference_input).sum().backward()
    torch.testing.assert_close(out, stock(reference_input))
    torch.testing.assert_close(inputs.grad.float(), reference_input.grad, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(ours.weight.grad, stock.weight.grad)


def test_depthwise_stays_in_bf16_when_not_strided_or_not_training():
    for stride, grad in ((1, True), (2, False)):
        ours, stock, x = depthwise_pair(stride)
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.set_grad_enabled(grad):
            assert ours(x).dtype == torch.bfloat16
            assert torch.equal(ours(x), stock(x))


def test_the_networks_use_the_fast_layers_and_keep_their_state_dict_keys():
    model = build_backbone("mobilefacenet", 128)
    strided = [m for m in model.modules() if isinstance(m, DepthwiseConv2d) and m.stride == (2, 2)]
    assert len(strided) == 3 and all(isinstance(m.prelu, PReLU) for m in model.bottlenecks[0].children()
                                     if hasattr(m, "prelu") and m.prelu is not None)
    assert "bottlenecks.0.conv_dw.conv.weight" in model.state_dict()
    for name in ("ir18", "spherenet20"):
        net = build_backbone(name, 64)
        assert not any(type(m) is nn.PReLU for m in net.modules())
        assert any(isinstance(m, PReLU) for m in net.modules())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_cpu_allocator_setting_is_accepted_by_glibc():
    assert keep_freed_cpu_memory(torch.device("cpu")) is True
    assert keep_freed_cpu_memory(torch.device("cuda")) is False  # only a device string; nothing runs on it
