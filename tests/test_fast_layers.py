"""backbone/layers.py's PReLU, DepthwiseConv2d and PointwiseConv2d against torch's stock layers, on
every path the CPU rule can choose; runtime/cpu.py's probe and the precision it implies; the CPU
allocator setting. Speed is the
benchmarks' business; these check that the fast paths compute what the stock layers compute (exactly
where the kernels allow it, else within bf16's rounding and no worse than torch's own bf16 layer),
and that they are the paths taken."""

import itertools
import os
import platform
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backbone import build_backbone
from backbone.layers import (PATH_CHOICES, DepthwiseConv2d, PointwiseConv2d, PReLU, _PReLUFunction, batchnorm_prelu,
                             choose_cpu_paths, cpu_paths, forced_cpu_paths)
from runtime import PRECISIONS, UsageError, autocast_context, check_precision, keep_freed_cpu_memory, resolve_precision
from runtime.cpu import CPUINFO, cpu_features, has_amx_bf16, has_onednn_bf16, inductor_cpp_compiler, parse_cpuinfo
from runtime.precision import choose_precision

SHAPES = [(4, 6, 5, 5), (5, 6), (3, 6, 7)]  # images, vectors (after a Linear), sequences


PRELU_PATHS = PATH_CHOICES["prelu_backward"]


@pytest.mark.parametrize("path", PRELU_PATHS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels", [6, 1])
def test_prelu_gradients_pass_gradcheck(shape, channels, path):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64, generator=generator)
    weight = torch.rand(channels, dtype=torch.float64, generator=generator) - 0.5
    with forced_cpu_paths(prelu_backward=path):
        assert torch.autograd.gradcheck(_PReLUFunction.apply, (x.requires_grad_(), weight.requires_grad_()))


@pytest.mark.parametrize("path", PRELU_PATHS)
def test_prelu_at_the_kink_takes_the_negative_slope_as_torch_does(path):
    x = torch.tensor([[-1.0, 0.0, 2.0, 0.0]], dtype=torch.float64).view(1, 1, 2, 2)
    weight = torch.tensor([0.25], dtype=torch.float64)
    with forced_cpu_paths(prelu_backward=path):
        ours = torch.autograd.grad(_PReLUFunction.apply(x.requires_grad_(), weight.requires_grad_()).sum(), (x, weight))
    stock = torch.autograd.grad(F.prelu(x, weight).sum(), (x, weight))
    assert torch.equal(ours[0], stock[0]) and torch.equal(ours[1], stock[1])
    assert ours[0].flatten().tolist() == [0.25, 0.25, 1.0, 0.25]


def stock_and_ours(channels, x, grad, autocast, path):
    """Outputs and gradients of nn.PReLU and ours (backward on `path`) from the same input, weights
    and upstream grad."""
    results = []
    for layer in (nn.PReLU(channels), PReLU(channels)):
        layer.weight.data = torch.linspace(-0.4, 0.6, channels)
        inputs = x.detach().clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), forced_cpu_paths(prelu_backward=path):
            out = layer(inputs)
            out.backward(grad.to(out.dtype))
        results.append((out, inputs.grad, layer.weight.grad))
    return results


@pytest.mark.parametrize("path", PRELU_PATHS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_prelu_matches_stock_in_fp32(channels_last, path):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(8, 16, 9, 9, generator=generator)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(8, 16, 9, 9, generator=generator)
    (out_s, gx_s, gw_s), (out_o, gx_o, gw_o) = stock_and_ours(16, x, grad, autocast=False, path=path)
    assert torch.equal(out_s, out_o) and torch.equal(gx_s, gx_o)
    torch.testing.assert_close(gw_o, gw_s, rtol=1e-5, atol=1e-5)
    assert gx_o.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("path", PRELU_PATHS)
def test_prelu_under_bf16_autocast_is_exact_in_x_and_more_accurate_in_the_weight(path):
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(8, 16, 9, 9, generator=generator).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(8, 16, 9, 9, generator=generator)
    (out_s, gx_s, gw_s), (out_o, gx_o, gw_o) = stock_and_ours(16, x, grad, autocast=True, path=path)
    assert out_o.dtype == gx_o.dtype == torch.bfloat16 and gw_o.dtype == torch.float32
    assert torch.equal(out_s, out_o) and torch.equal(gx_s, gx_o)
    # The exact weight gradient, from the same bf16 inputs in fp64:
    negative_part = x.double().clamp(max=0)
    exact = (grad.to(torch.bfloat16).double() * negative_part).sum((0, 2, 3))
    error_ours, error_stock = (gw_o.double() - exact).abs().max(), (gw_s.double() - exact).abs().max()
    assert error_ours <= error_stock and error_ours < 1e-4 * exact.abs().max()


# Runs in a fresh interpreter: the toolchain is probed once per process, from $CXX as Inductor reads it.
TOOLCHAIN_PROBE = """
import json, warnings, torch
from torch import nn
from backbone.layers import PReLU, batchnorm_prelu, cpu_paths
from runtime.cpu import inductor_cpp_compiler
before = cpu_paths()["prelu_backward"]
x = torch.randn(4, 6, 5, 5).contiguous(memory_format=torch.channels_last)
grad = torch.randn(4, 6, 5, 5)
results = []
for layer in (nn.PReLU(6), PReLU(6)):
    inputs = x.clone().requires_grad_()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer(inputs).backward(grad)
    results.append((inputs.grad, layer.weight.grad))
messages = [str(w.message) for w in caught if "PReLU" in str(w.message)]
# BatchNorm then PReLU: torch's two modules, then ours through batchnorm_prelu
batchnorm_before = cpu_paths()["batchnorm_prelu"]
batchnorm_grads = []
for layer in (nn.PReLU(6), PReLU(6)):
    inputs = x.clone().requires_grad_()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batchnorm_prelu(inputs, nn.BatchNorm2d(6), layer).backward(grad)
    messages += [str(w.message) for w in caught if "BatchNorm" in str(w.message)]
    batchnorm_grads.append(inputs.grad)
print(json.dumps({"compiler": inductor_cpp_compiler(), "before": before, "after": cpu_paths()["prelu_backward"],
                  "batchnorm_before": batchnorm_before, "batchnorm_after": cpu_paths()["batchnorm_prelu"],
                  "warnings": messages,
                  "same_grad_x": torch.equal(results[0][0], results[1][0]),
                  "grad_w_close": torch.allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-5),
                  "batchnorm_grad_close": torch.allclose(*batchnorm_grads, rtol=1e-4, atol=1e-5)}))
"""


def probe_with_compiler(compiler, tmp_path):
    import json
    import subprocess
    env = {**os.environ, "CXX": compiler, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
           "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    done = subprocess.run([sys.executable, "-c", TOOLCHAIN_PROBE], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_without_a_cpp_compiler_prelu_and_batchnorm_take_the_unfused_paths(tmp_path):
    result = probe_with_compiler("/nonexistent/c++", tmp_path)
    assert result["compiler"] == "" and result["before"] == result["after"] == "ops" and not result["warnings"]
    assert result["batchnorm_before"] == result["batchnorm_after"] == "stock"
    assert result["same_grad_x"] and result["grad_w_close"] and result["batchnorm_grad_close"]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/bin/true"), reason="needs /bin/true as a compiler that builds nothing")
def test_a_compiler_that_cannot_build_falls_back_to_the_stock_paths_with_one_warning_each(tmp_path):
    # /bin/true answers --version, so Inductor takes it, and then produces no kernel library.
    result = probe_with_compiler("/bin/true", tmp_path)
    assert result["compiler"] == "/bin/true" and result["before"] == "fused" and result["after"] == "ops"
    assert result["batchnorm_before"] == "fused" and result["batchnorm_after"] == "stock"
    assert len(result["warnings"]) == 2 and "failed on the fused PReLU backward" in result["warnings"][0]
    assert result["warnings"][1].startswith("backbone.layers: the fused BatchNorm+PReLU kernel is unavailable "
                                            "(building ") and "no library written" in result["warnings"][1]
    assert result["same_grad_x"] and result["grad_w_close"] and result["batchnorm_grad_close"]


def test_prelu_takes_the_stock_kernel_where_no_gradient_is_needed():
    layer = PReLU(4)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    assert layer(x).grad_fn.name() == "_PReLUFunctionBackward"
    with torch.no_grad():
        assert torch.equal(layer(x), F.prelu(x, layer.weight))
    traced = torch.jit.trace(layer, torch.randn(2, 4, 3, 3))
    assert "prelu" in str(traced.graph) and "PReLUFunction" not in str(traced.graph)


def batchnorm_prelu_run(x, grad, path, scalar_slope=False, momentum=0.1, steps=1, autocast=False):
    """Output, gradients and BatchNorm's buffers after `steps` training passes of BatchNorm2d then our
    PReLU on `path` (or, with path None, the same layers in float64 as the reference)."""
    channels = x.shape[1]
    bn, prelu = nn.BatchNorm2d(channels, momentum=momentum), PReLU(1 if scalar_slope else channels)
    bn.weight.data = torch.linspace(0.5, 1.5, channels)
    bn.bias.data = torch.linspace(-0.5, 0.5, channels)
    bn.running_var.fill_(2.0)
    prelu.weight.data = torch.linspace(0.1, 0.4, prelu.weight.numel())
    if path is None:  # the reference: torch's PReLU with the same slopes, everything in float64
        reference = nn.PReLU(prelu.weight.numel())
        reference.weight.data = prelu.weight.data.clone()
        bn, prelu, x, grad = bn.double(), reference.double(), x.double(), grad.double()
    for _ in range(steps):
        inputs = x.detach().clone().requires_grad_()
        bn.zero_grad()
        prelu.zero_grad()
        with forced_cpu_paths(batchnorm_prelu=path or "stock"), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast and path is not None):
            out = batchnorm_prelu(inputs, bn, prelu)
        out.backward(grad)
    return {"out": out, "grad_x": inputs.grad, "grad_gamma": bn.weight.grad, "grad_beta": bn.bias.grad,
            "grad_slope": prelu.weight.grad, "running_mean": bn.running_mean, "running_var": bn.running_var,
            "batches": bn.num_batches_tracked, "grad_fn": out.grad_fn.name()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,scalar_slope", [((4, 16, 9, 9), False), ((3, 8, 5, 5), True), ((2, 6, 1, 1), False)])
def test_fused_batchnorm_prelu_is_as_accurate_as_the_stock_kernels(dtype, shape, scalar_slope):
    generator = torch.Generator().manual_seed(6)
    # An offset mean, so that the statistics must not cancel their digits.
    x = (3 * torch.randn(shape, generator=generator) + 1.5).to(dtype).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(shape, generator=generator).to(dtype).contiguous(memory_format=torch.channels_last)
    autocast = dtype == torch.bfloat16
    exact = batchnorm_prelu_run(x, grad, None, scalar_slope, steps=2)
    stock = batchnorm_prelu_run(x, grad, "stock", scalar_slope, steps=2, autocast=autocast)
    fused = batchnorm_prelu_run(x, grad, "fused", scalar_slope, steps=2, autocast=autocast)
    assert fused["grad_fn"] == "_BatchNormPReLUFunctionBackward" and stock["grad_fn"] != fused["grad_fn"]
    assert fused["out"].dtype == stock["out"].dtype == dtype
    assert fused["out"].is_contiguous(memory_format=torch.channels_last)
    assert fused["grad_x"].dtype == dtype and fused["grad_x"].is_contiguous(memory_format=torch.channels_last)
    assert int(fused["batches"]) == int(stock["batches"]) == 2
    for key in ("out", "grad_x", "grad_gamma", "grad_beta", "grad_slope", "running_mean", "running_var"):
        assert fused[key].shape == exact[key].shape and fused[key].dtype != torch.float64, key
        scale = exact[key].abs().max()
        error_fused = ((fused[key].double() - exact[key]).abs().max() / scale).item()
        error_stock = ((stock[key].double() - exact[key]).abs().max() / scale).item()
        assert error_fused <= max(2 * error_stock, 2e-6), (key, error_fused, error_stock)


def test_fused_batchnorm_prelu_takes_the_cumulative_average_with_momentum_none():
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(4, 8, 6, 6, generator=generator).contiguous(memory_format=torch.channels_last)
    grad = torch.ones_like(x)
    stock = batchnorm_prelu_run(x, grad, "stock", momentum=None, steps=3)
    fused = batchnorm_prelu_run(x, grad, "fused", momentum=None, steps=3)
    assert fused["grad_fn"] == "_BatchNormPReLUFunctionBackward" and int(fused["batches"]) == 3
    assert torch.allclose(fused["running_mean"], stock["running_mean"], atol=1e-6)
    assert torch.allclose(fused["running_var"], stock["running_var"], rtol=1e-5)


def test_batchnorm_prelu_takes_the_stock_kernels_where_the_fused_one_does_not_apply():
    bn, prelu = nn.BatchNorm2d(6), PReLU(6)
    x = torch.randn(2, 6, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()

    def grad_fn(inputs, bn=bn, prelu=prelu, path="fused"):
        with forced_cpu_paths(batchnorm_prelu=path):
            return batchnorm_prelu(inputs, bn, prelu).grad_fn.name()

    assert grad_fn(x) == "_BatchNormPReLUFunctionBackward"
    assert grad_fn(x, path="stock") == "_PReLUFunctionBackward"
    assert grad_fn(x.detach().contiguous().requires_grad_()) == "_PReLUFunctionBackward"  # not channels_last
    assert grad_fn(x.detach().double().requires_grad_(), bn.double(), PReLU(6).double()) != \
        "_BatchNormPReLUFunctionBackward"
    bn.float()
    assert grad_fn(x, prelu=nn.PReLU(6)) == "PreluKernelBackward0"  # torch's PReLU: the old step's stock layer
    assert grad_fn(x, bn=nn.SyncBatchNorm(6)) == "_PReLUFunctionBackward"
    assert grad_fn(x, bn=nn.BatchNorm2d(6, affine=False)) == "_PReLUFunctionBackward"
    bn.eval()
    assert grad_fn(x) == "_PReLUFunctionBackward"  # evaluation: the running statistics
    bn.train()
    with torch.no_grad():
        with forced_cpu_paths(batchnorm_prelu="fused"):
            assert torch.equal(batchnorm_prelu(x, bn, prelu), prelu(bn(x)))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        grad_fn(torch.randn(1, 6, 1, 1, requires_grad=True))


def depthwise_pair(stride, size=12, kernel=3, padding=1, channels=8):
    generator = torch.Generator().manual_seed(3)
    options = {"stride": stride, "padding": padding, "groups": channels, "bias": False}
    ours = DepthwiseConv2d(channels, channels, kernel, **options)
    stock = nn.Conv2d(channels, channels, kernel, **options)
    stock.load_state_dict(ours.state_dict())
    x = torch.randn(4, channels, size, size, generator=generator).contiguous(memory_format=torch.channels_last)
    return ours, stock, x


def forward_backward(layer, x, paths=None, autocast=True, seed=4):
    """Output, input gradient and weight gradient of `layer` on x, under the forced `paths`."""
    layer.zero_grad()
    inputs = x.detach().clone().requires_grad_()
    with forced_cpu_paths(**(paths or {})), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = layer(inputs)
    # bf16 values whatever the output's dtype, so that every path gets the same upstream gradient.
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(torch.bfloat16)
    out.backward(grad.to(out.dtype))
    return out, inputs.grad, layer.weight.grad.clone()


def test_the_rule_fuses_prelu_where_it_can_build_and_takes_the_matmul_only_with_amx():
    depthwise = {"strided_depthwise_conv": "bf16_stride1_backward", "global_depthwise_conv": "fp32"}
    for compiler, prelu, batchnorm in ((False, "ops", "stock"), (True, "fused", "fused")):
        assert choose_cpu_paths(amx_bf16=False, cpp_compiler=compiler) == {
            "prelu_backward": prelu, "batchnorm_prelu": batchnorm, "pointwise_conv": "conv", **depthwise}
        assert choose_cpu_paths(amx_bf16=True, cpp_compiler=compiler) == {
            "prelu_backward": prelu, "batchnorm_prelu": batchnorm, "pointwise_conv": "matmul", **depthwise}
    for amx, compiler in itertools.product((False, True), repeat=2):
        paths = choose_cpu_paths(amx, compiler)
        assert list(paths) == list(PATH_CHOICES) and all(path in PATH_CHOICES[kind] for kind, path in paths.items())
    assert cpu_paths() == choose_cpu_paths(has_amx_bf16(), bool(inductor_cpp_compiler()))


def test_forced_paths_apply_inside_the_block_only_and_refuse_unknown_ones():
    before = cpu_paths()
    with forced_cpu_paths(pointwise_conv="matmul", global_depthwise_conv="bf16"):
        assert cpu_paths()["pointwise_conv"] == "matmul" and cpu_paths()["global_depthwise_conv"] == "bf16"
    assert cpu_paths() == before
    with pytest.raises(ValueError, match="unknown pointwise_conv path 'fast'; valid: conv, matmul"):
        with forced_cpu_paths(pointwise_conv="fast"):
            pass


def bf16_reference(stock, x, grad_seed=4):
    """Stock layer in fp64 from the bf16-rounded input, weight and upstream gradient (what every bf16
    path approximates): output, input gradient, weight gradient."""
    reference = type(stock)(stock.in_channels, stock.out_channels, stock.kernel_size, stride=stock.stride,
                            padding=stock.padding, groups=stock.groups, bias=False).double()
    reference.weight.data = stock.weight.data.to(torch.bfloat16).double()
    inputs = x.to(torch.bfloat16).double().requires_grad_()
    out = reference(inputs)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(torch.bfloat16)
    out.backward(grad.double())
    return out, inputs.grad, reference.weight.grad


def assert_bf16_accuracy(ours_value, stock_value, exact):
    """Where torch runs oneDNN's bf16 kernels (fp32 accumulation), within bf16's rounding of the fp64
    truth; on every CPU, no less accurate than torch's own bf16 layer, up to one bf16 rounding of the
    largest value. (Without those kernels, on an AVX2-only CPU, torch's bf16 convolutions are
    reference loops whose weight gradients here are up to 11% off, the stock layer's as much.)"""
    error = (ours_value.double() - exact).abs().max()
    if has_onednn_bf16():
        torch.testing.assert_close(ours_value.double(), exact, rtol=1e-2, atol=1e-2)
    slack = 2 ** -7 * exact.abs().max()
    assert error <= (stock_value.double() - exact).abs().max() + slack


@pytest.mark.parametrize("path", PATH_CHOICES["strided_depthwise_conv"])
@pytest.mark.parametrize("size, stride", [(12, 2), (13, 2), (11, 3)])
def test_every_strided_depthwise_path_matches_the_stock_layer_under_bf16_autocast(path, size, stride):
    ours, stock, x = depthwise_pair(stride, size)
    out, grad_x, grad_w = forward_backward(ours, x.to(torch.bfloat16), {"strided_depthwise_conv": path})
    stock_out, stock_grad_x, stock_grad_w = forward_backward(stock, x.to(torch.bfloat16))
    assert out.dtype == (torch.float32 if path == "fp32" else torch.bfloat16)
    assert grad_x.dtype == torch.bfloat16 and grad_w.dtype == torch.float32
    if path != "fp32":  # the same bf16 forward kernel; the backward sums the same products
        assert torch.equal(out, stock_out)
    reference = bf16_reference(stock, x)
    for ours_value, stock_value, exact in zip((out, grad_x, grad_w), (stock_out, stock_grad_x, stock_grad_w), reference):
        assert_bf16_accuracy(ours_value, stock_value, exact)


@pytest.mark.parametrize("path", PATH_CHOICES["global_depthwise_conv"])
def test_every_global_depthwise_path_matches_the_stock_layer_under_bf16_autocast(path):
    ours, stock, x = depthwise_pair(stride=1, size=7, kernel=7, padding=0)
    out, grad_x, grad_w = forward_backward(ours, x.to(torch.bfloat16), {"global_depthwise_conv": path})
    stock_out, stock_grad_x, stock_grad_w = forward_backward(stock, x.to(torch.bfloat16))
    assert out.shape == (4, 8, 1, 1) and out.dtype == (torch.float32 if path == "fp32" else torch.bfloat16)
    if path == "bf16":
        assert torch.equal(out, stock_out) and torch.equal(grad_x, stock_grad_x) and torch.equal(grad_w, stock_grad_w)
    for value, exact in zip((out, grad_x, grad_w), bf16_reference(stock, x)):
        torch.testing.assert_close(value.double(), exact, rtol=1e-2, atol=1e-2)


def test_strided_depthwise_in_fp32_agrees_with_stock_fp32_on_the_same_bf16_input():
    ours, stock, x = depthwise_pair(stride=2)
    out, grad_x, grad_w = forward_backward(ours, x.to(torch.bfloat16), {"strided_depthwise_conv": "fp32"})
    stock_out, stock_grad_x, stock_grad_w = forward_backward(stock, x.to(torch.bfloat16).float(), autocast=False)
    torch.testing.assert_close(out, stock_out)
    torch.testing.assert_close(grad_x.float(), stock_grad_x, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(grad_w, stock_grad_w)


def every_plan():
    """Every combination of the convolutions' paths (PReLU's backward applies in fp32 too, above)."""
    kinds = [kind for kind in PATH_CHOICES if kind.endswith("_conv")]
    return [dict(zip(kinds, paths)) for paths in itertools.product(*(PATH_CHOICES[kind] for kind in kinds))]


@pytest.mark.parametrize("paths", every_plan(), ids=lambda paths: "-".join(paths.values()))
def test_no_path_changes_anything_outside_cpu_bf16_autocast_training(paths):
    for stride, size, kernel, padding in ((2, 12, 3, 1), (1, 7, 7, 0), (1, 12, 3, 1)):
        ours, stock, x = depthwise_pair(stride, size, kernel, padding)
        for got, want in zip(forward_backward(ours, x, paths, autocast=False), forward_backward(stock, x, autocast=False)):
            assert torch.equal(got, want)
        with forced_cpu_paths(**paths), torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(ours(x), stock(x))
    ours, stock, x = pointwise_pair()
    for got, want in zip(forward_backward(ours, x, paths, autocast=False), forward_backward(stock, x, autocast=False)):
        assert torch.equal(got, want)


def test_depthwise_stays_in_bf16_when_not_strided_or_not_training():
    for stride, grad in ((1, True), (2, False)):
        ours, stock, x = depthwise_pair(stride)
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.set_grad_enabled(grad):
            assert ours(x).dtype == torch.bfloat16
            assert torch.equal(ours(x), stock(x))


def pointwise_pair(in_channels=24, out_channels=16, size=6):
    generator = torch.Generator().manual_seed(5)
    ours = PointwiseConv2d(in_channels, out_channels, 1, bias=False)
    stock = nn.Conv2d(in_channels, out_channels, 1, bias=False)
    stock.load_state_dict(ours.state_dict())
    x = torch.randn(4, in_channels, size, size, generator=generator).contiguous(memory_format=torch.channels_last)
    return ours, stock, x


@pytest.mark.parametrize("path", PATH_CHOICES["pointwise_conv"])
def test_every_pointwise_path_matches_the_stock_conv_under_bf16_autocast(path):
    ours, stock, x = pointwise_pair()
    out, grad_x, grad_w = forward_backward(ours, x, {"pointwise_conv": path})
    stock_out, stock_grad_x, stock_grad_w = forward_backward(stock, x)
    assert out.dtype == torch.bfloat16 and grad_x.dtype == torch.float32  # x is an fp32 input
    assert out.is_contiguous(memory_format=torch.channels_last) and out.shape == stock_out.shape
    assert grad_w.dtype == torch.float32 and grad_x.shape == x.shape
    reference = bf16_reference(stock, x)
    for ours_value, stock_value, exact in zip((out, grad_x, grad_w), (stock_out, stock_grad_x, stock_grad_w), reference):
        assert_bf16_accuracy(ours_value, stock_value, exact)
        if has_onednn_bf16():
            torch.testing.assert_close(ours_value.double(), stock_value.double(), rtol=1.6e-2, atol=1e-2)


def test_pointwise_takes_the_stock_conv_for_a_contiguous_input_and_without_gradients():
    ours, stock, x = pointwise_pair()
    with forced_cpu_paths(pointwise_conv="matmul"), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(ours(x.contiguous()), stock(x.contiguous()))
        assert ours(x).grad_fn.name() != "ConvolutionBackward0"  # the matmul path, for contrast
        with torch.no_grad():
            assert torch.equal(ours(x), stock(x))


def test_the_networks_use_the_fast_layers_and_keep_their_state_dict_keys():
    model = build_backbone("mobilefacenet", 128)
    strided = [m for m in model.modules() if isinstance(m, DepthwiseConv2d) and m.stride == (2, 2)]
    assert len(strided) == 3 and all(isinstance(m.prelu, PReLU) for m in model.bottlenecks[0].children()
                                     if hasattr(m, "prelu") and m.prelu is not None)
    assert "bottlenecks.0.conv_dw.conv.weight" in model.state_dict()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    pointwise = [m for m in convs if m.kernel_size == (1, 1) and m.stride == (1, 1)]
    assert len(pointwise) == 31 and all(isinstance(m, PointwiseConv2d) for m in pointwise)
    assert {type(m) for m in convs} == {nn.Conv2d, DepthwiseConv2d, PointwiseConv2d}  # the stem stays stock
    for name in ("ir18", "spherenet20"):
        net = build_backbone(name, 64)
        assert not any(type(m) is nn.PReLU for m in net.modules())
        assert any(isinstance(m, PReLU) for m in net.modules())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_cpu_allocator_setting_is_accepted_by_glibc():
    assert keep_freed_cpu_memory(torch.device("cpu")) is True
    assert keep_freed_cpu_memory(torch.device("cuda")) is False  # only a device string; nothing runs on it


CPUINFO_TEXT = """processor\t: 0
vendor_id\t: SomeVendor
model name\t: Example CPU 9000
flags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile

processor\t: 1
model name\t: Example CPU 9000
flags\t\t: fpu
"""


def test_cpuinfo_is_read_from_its_first_processor():
    model, flags = parse_cpuinfo(CPUINFO_TEXT)
    assert model == "Example CPU 9000" and {"avx512_bf16", "amx_bf16", "amx_tile"} <= flags and "fpu" in flags
    assert parse_cpuinfo("") == ("", frozenset())


def test_amx_is_not_counted_where_onednn_is_capped_below_it(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert has_amx_bf16() is False
    assert cpu_features()["onednn_max_cpu_isa"] == "AVX512_CORE_BF16"


def test_cpu_features_report_the_model_the_isa_and_torch_s_view():
    features = cpu_features()
    assert set(features) == {"cpu_model", "cpu_amx_bf16", "cpu_avx512_bf16", "cpu_onednn_bf16", "cpu_avx512f",
                             "torch_cpu_capability", "onednn", "onednn_max_cpu_isa", "threads", "cpp_compiler"}
    assert features["cpu_model"] and features["threads"] == torch.get_num_threads()
    assert features["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert all(isinstance(features[key], bool)
               for key in ("cpu_amx_bf16", "cpu_avx512_bf16", "cpu_onednn_bf16", "cpu_avx512f"))


@pytest.mark.skipif(platform.machine() != "x86_64" or not sys.platform.startswith("linux"), reason="x86 Linux flags")
def test_onednn_bf16_means_the_avx512_core_instructions_on_x86():
    # torch sends bf16 convolutions and matmuls to oneDNN's kernels only with AVX-512 BW, VL and DQ
    # (every AMX CPU has them); an AVX2-only CPU gets reference loops.
    with open(CPUINFO, encoding="utf-8") as handle:
        _, flags = parse_cpuinfo(handle.read())
    assert has_onednn_bf16() == ({"avx512bw", "avx512vl", "avx512dq"} <= flags)


def test_auto_precision_is_bf16_only_where_the_device_has_fast_bf16_kernels():
    assert [choose_precision(kind, fast) for kind in ("cpu", "cuda") for fast in (True, False)] == \
        ["bf16", "fp32", "bf16", "fp16"]
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if has_onednn_bf16() else "fp32")
    assert [resolve_precision(name, cpu) for name in PRECISIONS] == list(PRECISIONS)
    with pytest.raises(UsageError, match="unknown precision 'half'; valid: auto, fp32, bf16, fp16"):
        resolve_precision("half", cpu)
    with autocast_context(cpu, "auto"):
        assert torch.is_autocast_enabled("cpu") is has_onednn_bf16()


def test_bf16_is_refused_on_a_cpu_without_fast_bf16_kernels():
    cpu = torch.device("cpu")
    for name in ("auto", "fp32"):
        check_precision(name, cpu)
    if has_onednn_bf16():
        check_precision("bf16", cpu)
    else:
        with pytest.raises(UsageError, match=r"precision 'bf16' on this CPU \(\w+, no AVX-512 or AMX\).*auto or fp32"):
            check_precision("bf16", cpu)
