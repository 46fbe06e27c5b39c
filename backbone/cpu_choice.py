"""The CPU layer paths and the CPU precision, chosen by measuring them here (runtime.measured).

Two kinds of family:

- ``layer/<kind>``: each layer kind of backbone.layers.PATH_CHOICES, every path it can take timed
  forward + backward at MobileFaceNet's shapes of that kind (batch 16), in the dtype a step runs them in;
- ``precision/<network>-<embedding>/b<batch>``: one network's training pass (forward and backward, the
  layer paths as chosen) in fp32 and under bf16 autocast, at the batch of one process (at most 64).

The stock candidate is the stock kernel (layers) and fp32 (precision): a choice is never slower than
them. The fixed rules (``FACE_CPU_CHOICES=rule``, the tests' mode) are backbone.layers.choose_cpu_paths
and runtime.precision.choose_precision.
"""

from __future__ import annotations

import torch

from runtime import measured
from runtime.cpu import has_amx_bf16, has_onednn_bf16, inductor_cpp_compiler
from runtime.precision import choose_precision

from . import build_backbone
from .layers import (FP32_KINDS, PATH_CHOICES, DepthwiseConv2d, PointwiseConv2d, PReLU, batchnorm_prelu,
                     choose_cpu_paths, cpu_paths, forced_cpu_paths, measuring_paths)

MEASURED_BATCH = 16
# MobileFaceNet's shapes per layer kind, at the measured batch: PReLU and BatchNorm inputs; 1x1 convs
# (input shape, output channels); stride-2 depthwise inputs; the global depthwise input.
SHAPES = {
    "prelu_backward": [(MEASURED_BATCH, 64, 56, 56), (MEASURED_BATCH, 128, 28, 28), (MEASURED_BATCH, 256, 14, 14)],
    "batchnorm_prelu": [(MEASURED_BATCH, 64, 56, 56), (MEASURED_BATCH, 128, 28, 28), (MEASURED_BATCH, 256, 14, 14)],
    "pointwise_conv": [((MEASURED_BATCH, 64, 56, 56), 128), ((MEASURED_BATCH, 128, 28, 28), 64),
                       ((MEASURED_BATCH, 128, 14, 14), 256), ((MEASURED_BATCH, 256, 14, 14), 128)],
    "strided_depthwise_conv": [(MEASURED_BATCH, 128, 56, 56), (MEASURED_BATCH, 256, 28, 28),
                               (MEASURED_BATCH, 512, 14, 14)],
    "global_depthwise_conv": [(MEASURED_BATCH, 512, 7, 7)],
}


class BatchNormPReLU(torch.nn.Module):
    """BatchNorm2d then our PReLU, as MobileFaceNet's conv units chain them (backbone.layers.batchnorm_prelu)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(channels)
        self.prelu = PReLU(channels)

    def forward(self, x):
        return batchnorm_prelu(x, self.bn, self.prelu)


def layer_for(kind: str, spec) -> tuple[torch.nn.Module, tuple]:
    """(channels_last layer of `kind` as MobileFaceNet has it, its input shape) for one `spec` of
    SHAPES' form: an input shape, or for a 1x1 conv (input shape, output channels)."""
    shape = spec[0] if kind == "pointwise_conv" else spec
    channels = shape[1]
    if kind == "prelu_backward":
        layer = PReLU(channels)
    elif kind == "batchnorm_prelu":
        layer = BatchNormPReLU(channels)
    elif kind == "pointwise_conv":
        layer = PointwiseConv2d(channels, spec[1], 1, bias=False)
    elif kind == "strided_depthwise_conv":
        layer = DepthwiseConv2d(channels, channels, 3, stride=2, padding=1, groups=channels, bias=False)
    else:
        layer = DepthwiseConv2d(channels, channels, shape[2], groups=channels, bias=False)
    return layer.to(memory_format=torch.channels_last), shape


def _layer_and_input(kind: str, spec, dtype: torch.dtype):
    layer, shape = layer_for(kind, spec)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).to(dtype).contiguous(memory_format=torch.channels_last)
    return layer, x.requires_grad_()


def _layer_pass(kind: str, path: str, dtype: torch.dtype):
    """run(): forward + backward of every shape of `kind` on `path`, as a step runs them."""
    cases = [_layer_and_input(kind, spec, dtype) for spec in SHAPES[kind]]

    def run() -> None:
        with forced_cpu_paths(**{kind: path}), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            for layer, x in cases:
                out = layer(x)
                torch.autograd.grad(out, (x, *layer.parameters()), torch.ones_like(out))
    return run


def measured_cpu_paths() -> dict[str, str]:
    """Per layer kind, the path a CPU training step takes here (measured, cached, or by the rule)."""
    with measuring_paths():
        return _measure_paths()


def _measure_paths() -> dict[str, str]:
    rule = choose_cpu_paths(has_amx_bf16(), bool(inductor_cpp_compiler()))
    bf16 = has_onednn_bf16()
    paths = {}
    for kind, choices in PATH_CHOICES.items():
        if kind not in FP32_KINDS and not bf16:
            paths[kind] = rule[kind]  # the convolutions' paths apply only to bf16 steps, which this CPU does not run
            continue
        # The PReLU and BatchNorm paths apply in fp32 steps too: timed in the dtype the step here runs.
        dtype = torch.bfloat16 if bf16 else torch.float32
        usable = [path for path in choices if path != "fused" or inductor_cpp_compiler()]
        candidates = {path: _layer_pass(kind, path, dtype) for path in usable}
        paths[kind] = measured.choose(f"layer/{kind}", candidates, stock=choices[0], rule=rule[kind])["choice"]
    return paths


def layer_choice_lines() -> list[str]:
    """One line per layer family measured or read from the cache in this process: its choice and the
    times that chose it."""
    return [measured.describe(family, record) for family, record in measured.decided("layer/").items()]


def measured_precision(network: str, embedding_size: int, batch_size: int, options: dict | None = None) -> dict:
    """The record (runtime.measured.choose) of the precision `network`, built with `options` (as
    training.components.backbone_build_options gives them), trains fastest in here at a process batch
    of `batch_size`: fp32 or bf16 (a candidate only where oneDNN has bf16 kernels)."""
    batch = max(2, min(batch_size, 64))
    options = dict(options or {})
    # options such as grad_checkpoint change the pass's speed: each set of them is its own family
    family = f"precision/{network}-{embedding_size}/b{batch}" + "".join(
        f"/{key}={options[key]}" for key in sorted(options))
    rule = choose_precision("cpu", has_onednn_bf16())
    if not has_onednn_bf16():
        return {"choice": "fp32", "ms": {}, "how": "no bf16 kernels on this CPU", "date": "", "family": family}
    torch.manual_seed(0)
    model = build_backbone(network, embedding_size, **options).to(memory_format=torch.channels_last).train()
    images = torch.randn(batch, 3, 112, 112).contiguous(memory_format=torch.channels_last)

    def step(bf16: bool):
        def run() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(images).float().square().mean()
            loss.backward()
            model.zero_grad(set_to_none=True)
        return run
    cpu_paths()  # the layer paths are decided (measured) before the bf16 pass is timed with them
    record = measured.choose(family, {"fp32": step(False), "bf16": step(True)}, stock="fp32", rule=rule)
    return {**record, "family": family}
