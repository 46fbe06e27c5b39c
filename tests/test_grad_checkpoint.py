"""grad_checkpoint=True (backbone/checkpointing.py) on the IR nets and the ViTs: every unit or block
is recomputed in the backward pass, and a training step gives the loss, the gradients, the
BatchNorm statistics and the RNG stream of the plain network, bit for bit on the CPU in fp32."""

import inspect
import json
import os
import subprocess
import sys

import pytest
import torch

from backbone import BACKBONES
from backbone.iresnet import IResNet
from backbone.vit import VisionTransformer
from tools.bench.benchmark import main as benchmark_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EMBEDDING_SIZE = 16


def faces(batch: int) -> torch.Tensor:
    return torch.rand(batch, 3, 112, 112, generator=torch.Generator().manual_seed(batch)) * 2 - 1


class NarrowIR(IResNet):
    """The IR net's code at an eighth of its widths, one unit per stage: a tenth of ir18's cost."""

    STAGE_CHANNELS = (8, 16, 32, 64)


def small_ir() -> IResNet:
    return NarrowIR((1, 1, 1, 1), None, embedding_size=EMBEDDING_SIZE)


def small_vit() -> VisionTransformer:
    # strong stochastic depth and masking, so that a recomputation that drew other numbers would show
    return VisionTransformer(64, 3, embedding_size=EMBEDDING_SIZE, drop_path_rate=0.5, mask_ratio=0.3)


def train_step(build, checkpointing: bool, seed: int = 3):
    """(model, loss) after one forward and backward in train mode from the same weights and seed."""
    torch.manual_seed(0)
    model = build().train()
    model.grad_checkpoint = checkpointing
    recomputed = []
    for unit in units(model):
        unit.register_forward_pre_hook(lambda module, _inputs: recomputed.append(module))
    projection = torch.randn(EMBEDDING_SIZE, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(seed)
    loss = (model(faces(3)) * projection).sum()
    loss.backward()
    return model, loss.detach(), len(recomputed)


def units(model) -> list[torch.nn.Module]:
    if isinstance(model, VisionTransformer):
        return list(model.blocks)
    return [unit for stage in (model.layer1, model.layer2, model.layer3, model.layer4) for unit in stage]


@pytest.mark.parametrize("build", [small_ir, small_vit], ids=["ir", "vit"])
def test_checkpointed_step_equals_the_plain_one(build):
    plain, plain_loss, plain_calls = train_step(build, False)
    rng_after_plain = torch.get_rng_state()
    checkpointed, checkpointed_loss, checkpointed_calls = train_step(build, True)
    assert torch.equal(torch.get_rng_state(), rng_after_plain), "the recomputation must not consume random numbers"
    count = len(units(plain))
    assert (plain_calls, checkpointed_calls) == (count, 2 * count), "every unit runs again in the backward pass"
    assert torch.equal(checkpointed_loss, plain_loss)
    for (name, ours), (_, theirs) in zip(checkpointed.named_parameters(), plain.named_parameters()):
        assert (ours.grad is None) == (theirs.grad is None), name
        if theirs.grad is not None:
            assert torch.equal(ours.grad, theirs.grad), name
    # BN running statistics and num_batches_tracked: updated once, not again by the recomputation
    plain_state, checkpointed_state = plain.state_dict(), checkpointed.state_dict()
    assert list(checkpointed_state) == list(plain_state)
    for key, value in plain_state.items():
        assert torch.equal(checkpointed_state[key], value), key


def test_ir_bn_statistics_move_once_per_step():
    model, _, _ = train_step(small_ir, True)
    unit = model.layer1[0]
    assert unit.bn1.num_batches_tracked.item() == 1
    fresh = torch.nn.BatchNorm2d(unit.bn1.num_features)
    assert not torch.equal(unit.bn1.running_mean, fresh.running_mean)


def test_the_vit_recomputation_replays_the_random_draws():
    # Another seed gives another loss: the equal losses above come from replayed draws, not from
    # a forward that draws nothing.
    _, first, _ = train_step(small_vit, True, seed=3)
    _, second, _ = train_step(small_vit, True, seed=4)
    assert not torch.equal(first, second)


@pytest.mark.parametrize("build", [small_ir, small_vit], ids=["ir", "vit"])
def test_no_recomputation_in_eval_mode_or_without_grad(build):
    torch.manual_seed(0)
    model = build()
    model.grad_checkpoint = True
    calls = []
    for unit in units(model):
        unit.register_forward_pre_hook(lambda module, _inputs: calls.append(module))
    model.eval()(faces(2)).sum().backward()
    with torch.no_grad():
        model.train()(faces(3))
    assert len(calls) == 2 * len(units(model))


def test_every_ir_net_and_vit_takes_the_option_with_the_same_state_dict():
    takes = [name for name, constructor in BACKBONES.items()
             if "grad_checkpoint" in inspect.signature(constructor).parameters]
    assert takes == [name for name in BACKBONES if name.startswith(("ir", "vit_"))]
    for name in ("ir18", "ir_cbam50", "vit_t"):
        with torch.device("meta"):
            plain = BACKBONES[name](embedding_size=EMBEDDING_SIZE)
            checkpointed = BACKBONES[name](embedding_size=EMBEDDING_SIZE, grad_checkpoint=True)
        assert checkpointed.grad_checkpoint and not plain.grad_checkpoint
        assert list(checkpointed.state_dict()) == list(plain.state_dict()), name


@pytest.mark.slow
def test_the_benchmark_runs_a_checkpointed_step_and_refuses_a_backbone_without_it(capsys):
    result = subprocess.run([sys.executable, "tools/bench/benchmark.py", "--backbone", "vit_t", "--batch-size", "2",
                             "--num-classes", "10", "--device", "cpu", "--steps", "1", "--warmup", "0",
                             "--grad-checkpoint", "--json"], cwd=REPO, capture_output=True, text=True,
                            timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["grad_checkpoint"] is True and measured["images_per_second"] > 0
    with pytest.raises(SystemExit):
        benchmark_main(["--backbone", "mobilefacenet", "--grad-checkpoint"])
    assert "--grad-checkpoint: backbone 'mobilefacenet' has none; valid: ir18," in capsys.readouterr().err
