"""Model size and cost: parameter counts, multiply-accumulates (MACs) and fp32 storage.

MACs are counted by running one forward pass with hooks on the layers that multiply-accumulate:
- `nn.Conv2d`: every output element costs (in_channels / groups) * kernel_h * kernel_w MACs, so a
  depthwise conv costs kernel_h * kernel_w per output element;
- `nn.Linear`: every output element costs in_features MACs;
- the ViTs' `ScaledDotProductAttention`: q k^T costs tokens_q * tokens_k * head_dim per head and
  attention-weights x v costs tokens_q * tokens_k * value_dim, i.e. 2 * 144^2 * width per ViT block
  (insightface counts the same products as its ViTs' `extra_gflops`).
Other multiply-accumulating layers (Conv1d, ConvTranspose2d) are not hooked: none of the backbones
here has one.
A bias add is not counted (it is an addition, not a multiply-accumulate). Batch/layer norm,
PReLU/ReLU, softmax, pooling, upsampling, sigmoid gates, residual additions and the CNNs'
attention gates are elementwise, not MACs, and are left out. This is the MobileFaceNet paper's
"MAdds" convention. insightface's model table ("GFLOPs") quotes ptflops, which counts the same MACs
plus about one operation per BN/PReLU output element: 0.02 G on top of ir50's 6.31 G, so the
figures compare to within 1%.
"""

import torch
from torch import nn

from .vit import ScaledDotProductAttention

COUNTED = (nn.Conv2d, nn.Linear, ScaledDotProductAttention)


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or not (a frozen BN scale is still stored in the checkpoint)."""
    return sum(parameter.numel() for parameter in model.parameters())


def fp32_size_bytes(model: nn.Module) -> int:
    """Bytes the parameters and floating-point buffers (BN running statistics) take at fp32.

    Integer buffers (BN's `num_batches_tracked`) are left out: one scalar per BN layer."""
    floats = [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]
    return 4 * sum(tensor.numel() for tensor in floats)


def _layer_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kernel_h, kernel_w = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kernel_h * kernel_w
    if isinstance(module, ScaledDotProductAttention):
        q, k, v = inputs  # [..., tokens, dim]
        return q.shape[:-1].numel() * k.shape[-2] * (q.shape[-1] + v.shape[-1])
    return output.numel() * module.in_features


def count_macs(model: nn.Module, input_size=(1, 3, 112, 112)) -> int:
    """Multiply-accumulates of one forward pass on a zero input of `input_size` (the whole batch).

    The model runs in eval mode (BatchNorm1d cannot run a batch of one in train mode) under
    no_grad, on the device and in the dtype of its first parameter; every submodule's mode is
    restored after."""
    total = 0

    def add_macs(module, inputs, output):
        nonlocal total
        total += _layer_macs(module, inputs, output)

    hooks = [module.register_forward_hook(add_macs)
             for module in model.modules() if isinstance(module, COUNTED)]
    first_parameter = next(model.parameters())
    modes = {module: module.training for module in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(input_size, device=first_parameter.device, dtype=first_parameter.dtype))
    finally:
        for module, training in modes.items():
            module.training = training
        for hook in hooks:
            hook.remove()
    return total
