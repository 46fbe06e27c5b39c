"""Every recipe in configs/seed/ and configs/arcface_torch/ trains as its reference does.

From the same initial weights and the same batches, our training step (TrainStep with the recipe's
config) and the reference's loop re-stated in tests/reference_training.py give the same loss at every
step and the same weights after it (1e-4 relative), and train.py runs every step of a whole tiny run at
the lr the reference's scheduler gives it. The recipes' network is swapped for a small one (the loop,
not the network, is under test here), in float64 on the CPU at a small lr, so that what differs is the
loop and not rounding; everything else is the recipe's own."""

import copy
import glob
import json
import os
import re
import warnings

import pytest
import torch

import reference_training as ref
from config import load_config
from dataset import normalize_images, write_record_pack
from dataset.synthetic import SyntheticFaces
from training.components import build_backbone_for, build_optimizers, build_train_state
from training.distributed import DistributedContext
from training.schedule import LearningRate
from training.step import TrainStep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(REPO, "configs", "seed", "*.py")) +
                 glob.glob(os.path.join(REPO, "configs", "arcface_torch", "*.py")))
NUM_CLASSES = 96  # enough for the sampling recipes (0.1, 0.3) to draw negatives beside a batch's positives


def recipe_id(path: str) -> str:
    return os.path.relpath(path, os.path.join(REPO, "configs"))


def small(recipe: str, *extra: str):
    """The recipe on the CPU in fp32 with MobileFaceNet, 2 images per micro-batch x grad_accum (4 at least)."""
    accum = load_config([recipe, "--device=cpu", "--precision=fp32"]).grad_accum
    return load_config([recipe, "--device=cpu", "--precision=fp32", "--backbone=mobilefacenet", "--backbone_options={}",
                        "--grad_checkpoint=false", "--dropout=0", "--workers=0", "--val_sets=", "--visdom=false",
                        "--progress=false", f"--batch_size={max(4, 2 * accum)}", *extra], world_size=1)


def make_batches(cfg, steps: int, seed: int = 0):
    """steps x grad_accum micro-batches of (uint8 NHWC images, labels)."""
    generator = torch.Generator().manual_seed(seed)
    micro = cfg.batch_size // cfg.grad_accum
    return [[(torch.randint(0, 256, (micro, 112, 112, 3), dtype=torch.uint8, generator=generator),
              torch.randint(0, NUM_CLASSES, (micro,), generator=generator)) for _ in range(cfg.grad_accum)]
            for _ in range(steps)]


def train_ours(cfg, batches, steps_per_epoch: int):
    """Our step over `batches`, as train.py's loop drives it; (initial backbone, initial head weight,
    step losses, step lrs, state)."""
    torch.manual_seed(0)
    context = DistributedContext()
    state = build_train_state(cfg, context, NUM_CLASSES)
    state.backbone.double(), state.classifier.double()  # float64: the comparison sees the loop, not rounding
    state.optimizers, state.scaler = build_optimizers(cfg, state.backbone, state.classifier, state.aux_loss)
    initial = copy.deepcopy(state.backbone.state_dict()), state.classifier.head.weight.detach().clone()
    train_step = TrainStep(cfg, context, state)
    learning_rate = LearningRate(cfg, steps_per_epoch, steps_per_epoch * cfg.epochs, steps_per_epoch * cfg.batch_size)
    losses, lrs, norms = [], [], []
    for step, micro_batches in enumerate(batches):
        lrs.append(learning_rate(step))
        train_step.set_lr(lrs[-1])
        state.classifier.set_step(step)
        result = train_step(iter(micro_batches))
        losses.append(result.loss)
        norms.append(result.grad_norm)
    return initial, losses, lrs, norms, state


def reference_backbone(cfg, weights):
    backbone = build_backbone_for(cfg).double()
    backbone.load_state_dict(weights)
    return backbone.train()


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_recipe_step_equals_its_reference(recipe, one_thread):
    # A small lr: AdamW turns the float64 rounding in gradients that are zero in exact arithmetic (a BN
    # shift that the next BN cancels) into updates of size lr, which grow ~100x per step at 1e-3.
    optimizer = load_config([recipe, "--device=cpu", "--precision=fp32"]).optimizer
    cfg = small(recipe, "--lr=0.001" if optimizer == "sgd" else "--lr=0.00001")
    arcface_torch = "arcface_torch" in recipe
    # 8 steps (2 per epoch for arcface_torch's per-iteration schedule); 4 where grad_accum makes each
    # step many micro-batches (12 for the ViT recipe)
    steps_per_epoch, steps = (2, 8 if cfg.grad_accum == 1 else 4) if arcface_torch else (1, 8)
    batches = make_batches(cfg, steps)
    (backbone_weights, head_weight), losses, lrs, norms, state = train_ours(cfg, batches, steps_per_epoch)
    net = reference_backbone(cfg, backbone_weights)
    micro_batches = [(normalize_images(images, torch.float64), labels) for step in batches for images, labels in step]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note that the old loop steps its scheduler before the optimizer
        if arcface_torch:
            assert cfg.clip_grad_scope == "backbone" and cfg.clip_grad_norm == 5.0 and cfg.head_init == "normal"
            iterations_per_epoch = steps_per_epoch * cfg.batch_size // (cfg.batch_size // cfg.grad_accum)
            margin_list = (1.0, cfg.m, 0.0) if cfg.head == "arcface" else (1.0, 0.0, cfg.m)
            scores = (lambda i: state.classifier.sampling_scores(i // cfg.grad_accum, i % cfg.grad_accum)) \
                if cfg.sample_rate < 1 else None
            micro_losses, their_lrs, head = ref.arcface_torch_train(
                net, head_weight, micro_batches, lr=cfg.lr, weight_decay=cfg.weight_decay, optimizer=cfg.optimizer,
                margin_list=margin_list, sample_rate=cfg.sample_rate,
                interclass_filtering_threshold=cfg.interclass_filtering_threshold, gradient_acc=cfg.grad_accum,
                warmup_iters=iterations_per_epoch * cfg.warmup_epochs, total_iters=iterations_per_epoch * cfg.epochs,
                scores=scores, s=cfg.s)
            their_losses = [sum(micro_losses[i:i + cfg.grad_accum]) / cfg.grad_accum
                            for i in range(0, len(micro_losses), cfg.grad_accum)]
        else:
            assert cfg.multistep_epoch_start and cfg.nesterov and cfg.head_init == "xavier_uniform"
            their_losses, their_lrs, head = ref.seed_train(
                net, head_weight, [[batch] for batch in micro_batches], lr=cfg.lr, milestones=cfg.milestones,
                s=cfg.s, m=cfg.m)
    assert lrs == their_lrs
    if arcface_torch:
        assert max(norms) > 5  # the clip at 5 acts, on the backbone alone
    for step, (ours, theirs) in enumerate(zip(losses, their_losses)):
        assert abs(ours - theirs) <= 1e-9 * abs(theirs), f"step {step}: loss {ours} against {theirs}"
    ours = dict(state.backbone.named_parameters())
    ours["head"], theirs = state.classifier.head.weight, {**dict(net.named_parameters()), "head": head.weight}
    for name, parameter in theirs.items():
        # 1e-4 relative; the floor is for the BN shifts that a following BN cancels (no gradient in
        # exact arithmetic), whose values are float64 rounding of order 1e-10
        difference = float((ours[name].detach() - parameter.detach()).norm())
        assert difference <= 1e-4 * float(parameter.detach().norm()) + 1e-9, f"{name}: {difference:.2e} apart"


def test_the_recipes_name_their_reference_and_batch_arithmetic():
    assert len(RECIPES) == 9
    for recipe in RECIPES:
        with open(recipe, encoding="utf-8") as handle:
            header = handle.read().split("\nname = ")[0]
        assert "Reference: " in header and "global batch" in header, recipe
        cfg = load_config([recipe, "--precision=fp32", "--device=cpu"])
        assert cfg.name == os.path.splitext(os.path.basename(recipe))[0]
        stated = re.search(r"([\d,]+) global batch", header)
        assert stated and int(stated.group(1).replace(",", "")) == cfg.batch_size, recipe


@pytest.fixture(scope="module")
def tiny_packs(tmp_path_factory):
    """Packs of 8 and of 24 images, each image its own identity: two steps per epoch at batch 4, one at batch 24
    (2 images per micro-batch for the recipe that accumulates 12)."""
    faces = SyntheticFaces(seed=4)
    packs = {}
    for images in (8, 24):
        packs[images] = tmp_path_factory.mktemp(f"recipe_pack_{images}")
        write_record_pack(packs[images], ((faces.render(i, 0), i) for i in range(images)), num_classes=images)
    return packs


def reference_lrs(cfg, steps_per_epoch: int, images: int) -> list[float]:
    """The lr of every optimizer step of a whole run, from the reference's own scheduler object."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if cfg.schedule == "poly":
            iterations_per_epoch = images // (cfg.batch_size // cfg.grad_accum)
            scheduler = ref.PolynomialLRWarmup(optimizer, iterations_per_epoch * cfg.warmup_epochs,
                                               iterations_per_epoch * cfg.epochs)
            for iteration in range(1, steps_per_epoch * cfg.epochs * cfg.grad_accum + 1):
                if iteration % cfg.grad_accum == 0:
                    lrs.append(optimizer.param_groups[0]["lr"])
                scheduler.step()
        else:
            scheduler = ref.MultiStepLR(optimizer, milestones=cfg.milestones, gamma=cfg.lr_gamma)
            for _ in range(cfg.epochs):
                scheduler.step()
                lrs += [optimizer.param_groups[0]["lr"]] * steps_per_epoch
    return lrs


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_train_py_runs_every_step_at_the_reference_lr(recipe, tiny_packs, tmp_path, one_thread):
    import train
    accum = load_config([recipe, "--precision=fp32", "--device=cpu"]).grad_accum
    images, batch = (24, 24) if accum > 1 else (8, 4)
    args = ["--", recipe, f"--train_data={tiny_packs[images]}", f"--output_dir={tmp_path}", "--device=cpu",
            "--precision=fp32", "--backbone=mobilefacenet", "--embedding_size=32", "--backbone_options={}",
            "--grad_checkpoint=false", "--dropout=0", "--workers=0", "--val_sets=", "--visdom=false",
            "--progress=false", f"--batch_size={batch}", "--log_freq=1", "--test_freq=0", "--save_freq=0",
            "--lr=0.001"]
    summary = train.main(args)
    cfg = load_config(args[1:], world_size=1)
    steps_per_epoch = images // batch
    with open(os.path.join(summary["run_dir"], "metrics.jsonl"), encoding="utf-8") as handle:
        logged = [record["lr"] for record in map(json.loads, handle) if record.get("event") == "train"]
    assert summary["steps"] == steps_per_epoch * cfg.epochs
    assert logged == reference_lrs(cfg, steps_per_epoch, images)


def _compressed_step(rank, world, init_file, out_dir):
    """Worker: one step of the ms1mv3_r50 recipe's step (small network) on two gloo ranks, with and
    without DDP's fp16 gradient compression; the backbone's weights after it to out_dir."""
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    recipe = os.path.join(REPO, "configs", "arcface_torch", "ms1mv3_r50.py")
    for compress in (False, True):
        cfg = load_config([recipe, "--device=cpu", "--precision=fp32", "--backbone=mobilefacenet", "--workers=0",
                           "--val_sets=", "--batch_size=16", f"--ddp_fp16_compress={compress}"], world_size=world)
        torch.manual_seed(0)
        context = DistributedContext(rank, world)
        state = build_train_state(cfg, context, NUM_CLASSES)
        torch.save(state.backbone.state_dict(), os.path.join(out_dir, f"initial_rank{rank}.pt"))
        train_step = TrainStep(cfg, context, state)
        images, labels = make_batches(cfg, 1, seed=1)[0][0]
        train_step.set_lr(0.1)
        train_step(iter([(images[rank * 8:(rank + 1) * 8], labels[rank * 8:(rank + 1) * 8])]))
        torch.save(state.backbone.state_dict(), os.path.join(out_dir, f"compress{compress}_rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_fp16_compression_rounds_the_backbone_gradients_to_fp16(tmp_path):
    torch.multiprocessing.spawn(_compressed_step, nprocs=2, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)))
    plain, compressed = ({rank: torch.load(tmp_path / f"compress{flag}_rank{rank}.pt", weights_only=True)
                          for rank in range(2)} for flag in (False, True))
    weights = [key for key, value in plain[0].items() if value.is_floating_point() and "running" not in key]
    for key in weights:
        for run in (plain, compressed):  # DDP keeps the replicas' weights equal (BN statistics are each rank's own)
            assert torch.equal(run[0][key], run[1][key]), key
    initial = torch.load(tmp_path / "initial_rank0.pt", weights_only=True)
    step = torch.cat([(plain[0][key] - initial[key]).flatten() for key in weights])
    difference = torch.cat([(compressed[0][key] - plain[0][key]).flatten() for key in weights])
    # fp16 keeps 11 significant bits: the averaged gradients, hence the step, move by ~1e-4 of themselves
    assert 0 < difference.norm() < 1e-3 * step.norm()


@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_every_recipe_schedule_equals_its_reference_scheduler(recipe):
    """LearningRate at every step of a whole tiny run, against the reference's own scheduler object
    (train.py's run of every recipe above checks the same through metrics.jsonl)."""
    cfg = small(recipe)
    for steps_per_epoch in (1, 3):
        images = steps_per_epoch * cfg.batch_size
        learning_rate = LearningRate(cfg, steps_per_epoch, steps_per_epoch * cfg.epochs, images)
        ours = [learning_rate(step) for step in range(steps_per_epoch * cfg.epochs)]
        assert ours == reference_lrs(cfg, steps_per_epoch, images)
