"""Drop-in layers that keep nn.PReLU's and nn.Conv2d's parameters and state-dict keys but avoid two
slow CPU kernels of torch 2.x that dominated the MobileFaceNet training step (tools/benchmark.py):

- PReLU's backward (`aten::_prelu_kernel_backward`) took 38% of a bf16 channels_last step: 48 ms
  for a [64, 64, 56, 56] tensor, against 11 ms for the same gradients written as three vectorised
  elementwise kernels and one per-channel reduction (below).
- oneDNN's bf16 backward-data of a *strided depthwise* convolution is a slow reference path: forward
  and backward of MobileFaceNet's three stride-2 depthwise convs (batch 64) took 95-148 ms each in
  bf16 against 11-36 ms in fp32. (Both: tools/benchmark_layers.py.)

Neither changes the mathematics: the PReLU gradients are exactly PReLU's, and the depthwise conv
only runs in higher precision. On CUDA and when no gradient is needed (export, evaluation) both
layers call the stock kernels; under torch.compile PReLU does too (Inductor fuses its backward:
93 images/s against 81 with this Function compiled).
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


def _stock_path(x: torch.Tensor) -> bool:
    return (x.device.type != "cpu" or not torch.is_grad_enabled() or torch.compiler.is_compiling()
            or torch.jit.is_scripting() or torch.jit.is_tracing())


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
        grad = grad.to(x.dtype)
        positive = torch.ops.aten.threshold_backward(grad, x, 0)  # grad where x > 0, else 0
        negative = grad - positive
        slope = weight.to(x.dtype).view((1, -1) + (1,) * (x.dim() - 2)) if weight.numel() > 1 \
            else weight.to(x.dtype)
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
        if weight.numel() == 1:
            grad_weight = grad_weight.sum()
        return grad_x, grad_weight.to(weight.dtype).reshape(weight.shape)


class PReLU(nn.PReLU):
    """nn.PReLU with a fast CPU backward (see the module docstring); same parameter and outputs."""

    def forward(self, x):
        if _stock_path(x) or x.dim() < 2:
            return F.prelu(x, self.weight)
        return _PReLUFunction.apply(x, self.weight)


class DepthwiseConv2d(nn.Conv2d):
    """nn.Conv2d(groups=in_channels) whose strided form runs in fp32 under CPU autocast (see above);
    the output then stays fp32 until the next convolution casts it back to bf16."""

    def forward(self, x):
        if (self.stride != (1, 1) and x.device.type == "cpu" and torch.is_grad_enabled()
                and torch.is_autocast_enabled("cpu")):
            with torch.autocast("cpu", enabled=False):
                return super().forward(x.float())
        return super().forward(x)
