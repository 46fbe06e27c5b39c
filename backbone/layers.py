"""Drop-in layers that keep nn.PReLU's and nn.Conv2d's parameters and state-dict keys but route the
CPU training step around kernels of torch 2.x / oneDNN that are slow for MobileFaceNet's shapes.

- PReLU: torch's `_prelu_kernel_backward` reduces the weight gradient slowly over a channels_last
  tensor; here the same gradients are three vectorised elementwise kernels and one per-channel
  reduction (the `ops` path), or, where torch.compile's CPU backend can build (a C++ compiler is
  found), the same expression compiled into one fused pass and one reduction (the `fused` path: the
  step is memory-bound, and the ops path reads and writes full-size tensors four times). Both apply
  to any CPU training step, in fp32 too.
- BatchNorm followed by PReLU (MobileFaceNet's and IR-ResNet's conv units), in training over a
  channels_last input: both as one hand-written kernel (backbone/kernels/batchnorm_prelu.cpp, built
  at first use by runtime.native), forward in two reads of the input and one write, backward in two
  reads of the input and its output gradient and one write, where the two stock kernels take
  about twice as many passes and store BatchNorm's output for PReLU's backward (the `fused` path of
  `batchnorm_prelu`). It applies to fp32 and bf16 steps alike.
- Depthwise convolutions under CPU bf16 autocast. oneDNN's bf16 backward-data of a *strided*
  depthwise conv is a slow reference path, and its bf16 weight gradient of the *global* depthwise
  conv (kernel as large as the input) is slow too. Two ways round the strided one: run the layer in
  fp32, or keep it in bf16 and compute its input gradient as the backward-data of the same conv at
  stride 1 over the zero-interleaved output gradient (an exact identity: the strided conv's output
  is the stride-1 conv's output sampled every `stride` positions), which oneDNN runs fast.
- 1x1 convolutions under CPU bf16 autocast, channels_last: the conv is a matmul of the [B·H·W, C]
  pixel matrix with the [O, C] weight; with AMX, oneDNN's matmul beats its 1x1-conv kernels
  (forward, backward-data, backward-weights), so the layer can run as `F.linear` over the NHWC view.

Which of these paths each layer takes is `cpu_paths()`: measured per layer kind on the machine at
first use and cached (backbone.cpu_choice, runtime.measured), never slower than the stock kernel; with
FACE_CPU_CHOICES=rule, the fixed rule choose_cpu_paths on the CPU's capability and toolchain
(`tools/bench/benchmark_layers.py` times every path at batch 64). None of them changes the
mathematics, only the kernels and rounding: the tests hold every path to the stock layer. On CUDA,
without gradients (export, evaluation) and under torch.compile / TorchScript the layers call the
stock kernels; in an fp32 CPU step only PReLU's backward and the BatchNorm+PReLU kernel are ours.
"""

import contextlib
import ctypes
import functools
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from runtime.cpu import has_amx_bf16, inductor_cpp_compiler
from runtime.errors import UnknownName
from runtime.native import load_library

# Layer kind -> the paths it can take; the first is the stock kernel of that layer (for PReLU's
# backward, the four elementwise/reduction kernels below; torch's own is slower than both).
PATH_CHOICES = {
    "prelu_backward": ("ops", "fused"),
    "batchnorm_prelu": ("stock", "fused"),
    "pointwise_conv": ("conv", "matmul"),
    "strided_depthwise_conv": ("bf16", "fp32", "bf16_stride1_backward"),
    "global_depthwise_conv": ("bf16", "fp32"),
}
# The kinds whose paths apply to fp32 CPU steps as well; the convolutions' paths apply to bf16 ones only.
FP32_KINDS = ("prelu_backward", "batchnorm_prelu")


def choose_cpu_paths(amx_bf16: bool, cpp_compiler: bool) -> dict[str, str]:
    """The rule: PReLU's backward, and BatchNorm with PReLU, fused wherever a C++ compiler can build
    them; depthwise paths that were fastest per layer with and without AMX alike; the 1x1 convolution
    as a matmul only where oneDNN runs AMX tiles (without them its conv kernel wins)."""
    return {"prelu_backward": "fused" if cpp_compiler else "ops",
            "batchnorm_prelu": "fused" if cpp_compiler else "stock",
            "pointwise_conv": "matmul" if amx_bf16 else "conv",
            "strided_depthwise_conv": "bf16_stride1_backward", "global_depthwise_conv": "fp32"}


_forced: dict[str, str] = {}
_failed: dict[str, str] = {}  # kind -> the path taken instead, after the chosen one failed to build
_measuring = False  # while the paths are being measured (their measurement runs these layers)


@functools.lru_cache(maxsize=None)
def _probed_paths() -> tuple[tuple[str, str], ...]:
    from .cpu_choice import measured_cpu_paths  # here: it builds these layers to time them
    return tuple(measured_cpu_paths().items())


@contextlib.contextmanager
def measuring_paths():
    """Within the block the layers take the rule's paths (or forced ones) without measuring: the block
    is the measurement, which runs them."""
    global _measuring
    outer, _measuring = _measuring, True
    try:
        yield
    finally:
        _measuring = outer


def cpu_paths() -> dict[str, str]:
    """Per layer kind, the path taken in a CPU bf16-autocast training step in this process (PReLU's
    backward: in any CPU training step): measured at first use, or read from the cache of earlier
    measurements, or by the rule choose_cpu_paths (backbone.cpu_choice, runtime.measured)."""
    base = choose_cpu_paths(has_amx_bf16(), bool(inductor_cpp_compiler())) if _measuring else dict(_probed_paths())
    return {**base, **_failed, **_forced}


def cpu_step_report(features: dict, paths: dict[str, str], precision: str) -> str:
    """Two lines for a CPU benchmark's head: the CPU's features (runtime.cpu.cpu_features), then the
    precision the fixed rule gives (runtime.precision.choose_precision; `auto` is measured per network,
    on the `cpu choice:` lines) and the paths a bf16 step takes (cpu_paths); the caller passes the
    ones its JSON report holds."""
    return ("  ".join(f"{key}={value}" for key, value in features.items())
            + f"\nprecision by the rule: {precision} (auto measures it per network); bf16 cpu_paths: "
            + ", ".join(f"{kind}={path}" for kind, path in paths.items()))


@contextlib.contextmanager
def forced_cpu_paths(**paths: str):
    """Within the block, the given layer kinds take the given paths (tests, tools/bench/benchmark_layers.py)."""
    for kind, path in paths.items():
        if kind not in PATH_CHOICES:
            raise UnknownName("layer kind", kind, PATH_CHOICES)
        if path not in PATH_CHOICES[kind]:
            raise UnknownName(f"{kind} path", path, PATH_CHOICES[kind])
    saved = dict(_forced)
    _forced.update(paths)
    try:
        yield
    finally:
        _forced.clear()
        _forced.update(saved)


def _stock_path(x: torch.Tensor) -> bool:
    return (x.device.type != "cpu" or not torch.is_grad_enabled() or torch.compiler.is_compiling()
            or torch.jit.is_scripting() or torch.jit.is_tracing())


def _cpu_bf16_autocast(x: torch.Tensor) -> bool:
    """A CPU training forward under bf16 autocast: where the paths of `cpu_paths()` apply."""
    return (x.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16)


def _channel_view(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """PReLU's weight in x's dtype, shaped to broadcast over the channel dim 1 (or a scalar)."""
    weight = weight.detach().to(x.dtype)
    return weight.view((1, -1) + (1,) * (x.dim() - 2)) if weight.numel() > 1 else weight


def _prelu_backward_ops(grad, x, slope):
    positive = torch.ops.aten.threshold_backward(grad, x, 0)  # grad where x > 0, else 0
    negative = grad - positive
    grad_x = torch.addcmul(positive, negative, slope)
    # dL/dw_c = sum over every position of channel c of grad * x where x <= 0. BatchNorm's backward
    # with mean 0 and inverse std 1 computes exactly that per-channel sum of products, in one
    # vectorised pass with fp32 accumulation for bf16 inputs (its "grad_weight" output).
    channels = x.shape[1]
    stat_dtype = torch.promote_types(x.dtype, torch.float32)
    zeros = torch.zeros(channels, dtype=stat_dtype, device=x.device)
    ones = torch.ones(channels, dtype=stat_dtype, device=x.device)
    grad_weight = torch.ops.aten.native_batch_norm_backward(
        negative, x, ones, None, None, zeros, ones, True, 0.0, [False, True, False])[1]
    return grad_x, grad_weight


def _prelu_backward_math(grad, x, slope):
    """The same gradients as one expression, which Inductor fuses into a pass over grad and x and a
    per-channel reduction. `slope` comes in x's dtype already: Inductor may drop a cast inside."""
    negative = x <= 0
    grad_x = torch.where(negative, grad * slope, grad)
    stat_dtype = torch.promote_types(x.dtype, torch.float32)
    products = torch.where(negative, grad.to(stat_dtype) * x.to(stat_dtype), 0)
    return grad_x, products.sum([0] + list(range(2, x.dim())))


@functools.lru_cache(maxsize=None)
def _fused_prelu_backward():
    # dynamic=True: one build serves every shape (two, in fact: Inductor splits small reductions).
    return torch.compile(_prelu_backward_math, dynamic=True, fullgraph=True)


def _prelu_backward(grad, x, slope):
    if cpu_paths()["prelu_backward"] == "fused":
        try:
            # Each dtype, rank and weight shape is its own build; a process that meets many of them
            # (the tests) would pass dynamo's default limit of 8 builds per function.
            with torch._dynamo.config.patch(recompile_limit=64):
                return _fused_prelu_backward()(grad, x, slope)
        except Exception as error:  # a compiler that answers --version but cannot build: keep training
            _failed["prelu_backward"] = "ops"
            message = str(error).strip().splitlines()
            warnings.warn(f"backbone.layers: torch.compile failed on the fused PReLU backward "
                          f"({type(error).__name__}: {message[0] if message else ''}); using the ops path")
    return _prelu_backward_ops(grad, x, slope)


class _PReLUFunction(torch.autograd.Function):
    """y = x for x > 0, w_c x otherwise (w broadcast over the channel dim 1 of an input of at least
    2 dims), as torch.prelu."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return torch.prelu(x, weight.to(x.dtype))

    @staticmethod
    @once_differentiable  # a second derivative through this backward would be wrong, so it is refused
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x, grad_weight = _prelu_backward(grad.to(x.dtype), x, _channel_view(weight, x))
        if weight.numel() == 1:
            grad_weight = grad_weight.sum()
        return grad_x, grad_weight.to(weight.dtype).reshape(weight.shape)


class PReLU(nn.PReLU):
    """nn.PReLU with a fast CPU backward (see the module docstring); same parameter and outputs."""

    def forward(self, x):
        if _stock_path(x) or x.dim() < 2:
            return F.prelu(x, self.weight)
        return _PReLUFunction.apply(x, self.weight)


BATCHNORM_PRELU_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels", "batchnorm_prelu.cpp")
_KERNEL_TYPES = (torch.float32, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def _batchnorm_prelu_kernels() -> ctypes.CDLL:
    library = load_library(BATCHNORM_PRELU_SOURCE)
    pointer, count, real, flag = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    library.batchnorm_prelu_forward.argtypes = [pointer, pointer, count, count] + [pointer] * 3 + [real, real] + \
        [pointer] * 4 + [flag, flag]
    library.batchnorm_prelu_backward.argtypes = [pointer, pointer, pointer, count, count] + [pointer] * 8 + [flag, flag]
    library.batchnorm_prelu_forward.restype = library.batchnorm_prelu_backward.restype = None
    return library


class _BatchNormPReLUFunction(torch.autograd.Function):
    """prelu(batch_norm(x)) in training for a channels_last [N, C, H, W] input (fp32 or bf16, the
    output in x's dtype), updating `bn`'s running statistics as BatchNorm does with `momentum`."""

    @staticmethod
    def forward(ctx, x, gamma, beta, slope, bn, momentum):
        rows, channels = x.numel() // x.shape[1], x.shape[1]
        gamma, beta = gamma.detach().contiguous(), beta.detach().contiguous()
        slopes = slope.detach().expand(channels).contiguous()  # a single slope serves every channel
        out = torch.empty_like(x)
        mean, invstd = torch.empty(channels), torch.empty(channels)
        _batchnorm_prelu_kernels().batchnorm_prelu_forward(
            x.data_ptr(), out.data_ptr(), rows, channels, gamma.data_ptr(), beta.data_ptr(), slopes.data_ptr(),
            bn.eps, momentum, bn.running_mean.data_ptr(), bn.running_var.data_ptr(), mean.data_ptr(),
            invstd.data_ptr(), x.dtype == torch.bfloat16, torch.get_num_threads())
        ctx.save_for_backward(x, mean, invstd, gamma, beta, slopes)
        ctx.slope_shape = slope.shape
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, mean, invstd, gamma, beta, slopes = ctx.saved_tensors
        grad = grad.to(x.dtype).contiguous(memory_format=torch.channels_last)
        rows, channels = x.numel() // x.shape[1], x.shape[1]
        grad_x = torch.empty_like(x)
        grad_gamma, grad_beta, grad_slope = torch.empty(channels), torch.empty(channels), torch.empty(channels)
        _batchnorm_prelu_kernels().batchnorm_prelu_backward(
            grad.data_ptr(), x.data_ptr(), grad_x.data_ptr(), rows, channels, mean.data_ptr(), invstd.data_ptr(),
            gamma.data_ptr(), beta.data_ptr(), slopes.data_ptr(), grad_gamma.data_ptr(), grad_beta.data_ptr(),
            grad_slope.data_ptr(), x.dtype == torch.bfloat16, torch.get_num_threads())
        if grad_slope.numel() != ctx.slope_shape.numel():
            grad_slope = grad_slope.sum()
        return grad_x, grad_gamma, grad_beta, grad_slope.reshape(ctx.slope_shape), None, None


def _fusable(x: torch.Tensor, bn: nn.Module, prelu: nn.Module) -> bool:
    """Whether the fused kernel computes what prelu(bn(x)) would (up to rounding): a training step with
    gradients, our PReLU (the old step of tools/bench swaps it for torch's, and so the stock kernels)
    after a plain affine BatchNorm2d tracking its statistics, fp32 parameters, and a channels_last fp32
    or bf16 input with more than one value per channel (BatchNorm itself refuses one)."""
    return (isinstance(prelu, PReLU) and type(bn) is nn.BatchNorm2d and bn.training and bn.affine
            and bn.track_running_stats and x.dim() == 4 and x.dtype in _KERNEL_TYPES and not _stock_path(x)
            and x.shape[1] == bn.num_features and prelu.weight.numel() in (1, x.shape[1])
            and x.numel() > x.shape[1] and x.is_contiguous(memory_format=torch.channels_last)
            and all(tensor.dtype == torch.float32
                    for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var, prelu.weight)))


def _batchnorm_prelu_buildable() -> bool:
    try:
        _batchnorm_prelu_kernels()
        return True
    except Exception as error:  # NativeBuildError, or a library without the functions: keep training
        _failed["batchnorm_prelu"] = "stock"
        warnings.warn(f"backbone.layers: the fused BatchNorm+PReLU kernel is unavailable ({error}); "
                      "using the stock kernels")
        return False


def batchnorm_prelu(x: torch.Tensor, bn: nn.BatchNorm2d, prelu: nn.PReLU) -> torch.Tensor:
    """prelu(bn(x)): as one kernel on the `fused` path of `cpu_paths()` where `_fusable` holds, else
    the two modules."""
    if not (_fusable(x, bn, prelu) and cpu_paths()["batchnorm_prelu"] == "fused" and _batchnorm_prelu_buildable()):
        return prelu(bn(x))
    # As nn.BatchNorm2d.forward: count the batch, and with momentum None take the cumulative average.
    bn.num_batches_tracked.add_(1)
    momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    return _BatchNormPReLUFunction.apply(x, bn.weight, bn.bias, prelu.weight, bn, momentum)


class _StridedDepthwiseFunction(torch.autograd.Function):
    """A bias-free strided depthwise conv2d (zero padding) whose input gradient is computed as the
    backward-data of the stride-1 conv over the output gradient interleaved with zeros: the strided
    output at o is the stride-1 output at stride * o, so both give the same sums of the same products."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.geometry = stride, padding, dilation
        return F.conv2d(x, weight, None, stride, padding, dilation, x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        groups = x.shape[1]
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) \
            else torch.contiguous_format
        grad = grad.contiguous(memory_format=layout)
        backward = torch.ops.aten.convolution_backward
        grad_x = grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = backward(grad, x, weight, None, list(stride), list(padding), list(dilation), False,
                                   [0, 0], groups, [False, True, False])[1]
        if ctx.needs_input_grad[0]:
            # The stride-1 output's size: input + 2 padding - the dilated kernel's extent + 1.
            size = [x.shape[2 + i] + 2 * padding[i] - dilation[i] * (weight.shape[2 + i] - 1) for i in range(2)]
            spread = torch.empty((grad.shape[0], groups, *size), dtype=grad.dtype, device=grad.device,
                                 memory_format=layout).zero_()
            spread[:, :, ::stride[0], ::stride[1]] = grad
            grad_x = backward(spread, x, weight, None, [1, 1], list(padding), list(dilation), False, [0, 0],
                              groups, [True, False, False])[0]
        return grad_x, grad_weight, None, None, None


class DepthwiseConv2d(nn.Conv2d):
    """nn.Conv2d(groups=in_channels) whose strided and global forms take the path `cpu_paths()` names
    under CPU bf16 autocast in training; its stride-1 form always runs the stock bf16 kernels."""

    def kind(self, x: torch.Tensor) -> str | None:
        """'strided_depthwise_conv', 'global_depthwise_conv' or None (the stock path for any CPU)."""
        if self.stride != (1, 1):
            return "strided_depthwise_conv"
        if self.padding == (0, 0) and tuple(x.shape[-2:]) == tuple(self.kernel_size):
            return "global_depthwise_conv"
        return None

    def forward(self, x):
        # torch.compile keeps these paths too (Inductor calls the same oneDNN kernels), except the
        # custom backward, for which it takes the fp32 path.
        kind = self.kind(x) if _cpu_bf16_autocast(x) else None
        path = cpu_paths()[kind] if kind else "bf16"
        if path == "bf16_stride1_backward" and not (
                self.bias is None and self.padding_mode == "zeros" and isinstance(self.padding, tuple)
                and x.dim() == 4 and not _stock_path(x)):
            path = "fp32"
        if path == "fp32":
            # The output then stays fp32 until the next convolution casts it back to bf16.
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        if path == "bf16_stride1_backward":
            with torch.autocast("cpu", enabled=False):
                return _StridedDepthwiseFunction.apply(x.to(torch.bfloat16), self.weight.to(torch.bfloat16),
                                                       self.stride, self.padding, self.dilation)
        return super().forward(x)


class PointwiseConv2d(nn.Conv2d):
    """A bias-free 1x1, stride-1 nn.Conv2d that, on the `matmul` path of `cpu_paths()` (CPU bf16
    autocast, training, a channels_last input), runs as F.linear over the NHWC view of its input;
    the output is the same channels_last tensor the conv gives."""

    def forward(self, x):
        if (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and self.bias is None
                and self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)
                and self.groups == 1 and _cpu_bf16_autocast(x) and not _stock_path(x)
                and cpu_paths()["pointwise_conv"] == "matmul"):
            # permute() views: NHWC is the channels_last tensor's own memory order, so nothing is copied.
            weight = self.weight.view(self.out_channels, self.in_channels)
            return F.linear(x.permute(0, 2, 3, 1), weight).permute(0, 3, 1, 2)
        return super().forward(x)
