"""Gradient checkpointing of one submodule (a residual unit, a transformer block): its activations
are not kept for the backward pass but recomputed from its input when the backward needs them.

`torch.utils.checkpoint.checkpoint(use_reentrant=False)` with its default `preserve_rng_state`
replays the forward's random draws (dropout, stochastic depth) in the recomputation and leaves the
global generators as they were, so the gradients and the RNG stream are those of the plain forward.
What it does not undo is the recomputation's side effect on buffers: a train-mode BatchNorm would
update its running statistics (and `num_batches_tracked`) a second time. The recomputation here
runs inside a context that puts every buffer of the module back as it was before, so the module's
state after a step is the one the plain forward leaves.
"""

import contextlib

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def _buffers_restored(module: nn.Module):
    saved = [(buffer, buffer.clone()) for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def checkpointed(module: nn.Module, *inputs):
    """module(*inputs), its activations recomputed in the backward pass.

    Under torch.compile the recomputation is part of the compiled backward graph, which recomputes
    values, not the forward's buffer updates, and Dynamo cannot trace a context_fn: there the plain
    checkpoint is the same computation."""
    if torch.compiler.is_compiling():
        return checkpoint(module, *inputs, use_reentrant=False)
    return checkpoint(module, *inputs, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _buffers_restored(module)))
