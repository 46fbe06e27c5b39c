"""One way into every head: replicated, sharded (Partial FC) and sampled calls all go through
`head(embeddings, labels, classes, split)`, which updates the running statistics and shares what the
head needs across ranks.

In float64, on one process and on two (gloo), for every head: the loss, the gradients and the running
statistics of a sampled call equal those of one unsharded head over the global batch, restricted to
the sampled classes."""

import os

import pytest
import torch
import torch.nn.functional as F

from margin import MARGINS, build_margin
from training.distributed import DistributedContext, ShardedClassifier

NUM_CLASSES, EMBEDDING_SIZE, BATCH = 12, 16, 8
SAMPLE_RATE = 0.5
HEADS = sorted(MARGINS)


def make_head(name):
    return lambda classes: build_margin(name, EMBEDDING_SIZE, classes).double()


def inputs():
    """A global batch whose labels cover 5 of the 12 classes, so that the sample adds random negatives."""
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(BATCH, EMBEDDING_SIZE, dtype=torch.float64, generator=generator) * 3
    labels = torch.tensor([0, 3, 3, 7, 1, 0, 7, 10])
    return embeddings, labels


def whole_head_restricted(name, embeddings, labels, classes):
    """The reference: one unsharded head (its initial weights seeded per class, as every split's are)
    over the global batch; the cross-entropy of its logits restricted to `classes`."""
    classifier = ShardedClassifier(make_head(name), NUM_CLASSES, DistributedContext(), seed=5)
    head = classifier.head.train()
    leaf = embeddings.clone().requires_grad_()
    logits = head(leaf, labels)[:, classes]
    remap = torch.full((NUM_CLASSES,), -1)
    remap[classes] = torch.arange(len(classes))
    loss = F.cross_entropy(logits, remap[labels])
    loss.backward()
    return logits.detach(), loss.detach(), leaf.grad, head.weight.grad, head.state_dict()


@pytest.mark.parametrize("name", HEADS)
def test_a_sampled_head_on_one_process_is_the_whole_head_restricted(name):
    embeddings, labels = inputs()
    classifier = ShardedClassifier(make_head(name), NUM_CLASSES, DistributedContext(), sample_rate=SAMPLE_RATE, seed=5)
    classes, sampled_labels = classifier.sample(labels, labels)  # what its forward draws (step 0, first call)
    assert len(classes) == int(SAMPLE_RATE * NUM_CLASSES) and set(labels.tolist()) <= set(classes.tolist())
    logits = classifier.head(embeddings, sampled_labels, classes)
    leaf = embeddings.clone().requires_grad_()
    classifier.head.load_state_dict(ShardedClassifier(make_head(name), NUM_CLASSES, DistributedContext(),
                                                      seed=5).head.state_dict())  # statistics as they started
    loss, _ = classifier(leaf, labels)
    loss.backward()
    ref_logits, ref_loss, ref_grad, ref_weight_grad, ref_state = whole_head_restricted(name, embeddings, labels, classes)
    torch.testing.assert_close(logits.detach(), ref_logits, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-13, atol=0)
    torch.testing.assert_close(leaf.grad, ref_grad, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(classifier.head.weight.grad, ref_weight_grad, rtol=1e-12, atol=1e-15)
    for key, value in ref_state.items():  # weights, and AdaFace's / CurricularFace's running statistics
        torch.testing.assert_close(classifier.head.state_dict()[key], value, rtol=1e-13, atol=1e-15)


def _two_ranks(rank, world, init_file, out_dir):
    """Worker: each head, sharded and replicated, sampled; this rank's results to out_dir."""
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    embeddings, labels = inputs()
    rows = BATCH // world
    for sharded in (True, False):
        for name in HEADS:
            classifier = ShardedClassifier(make_head(name), NUM_CLASSES, DistributedContext(rank, world),
                                           sharded=sharded, sample_rate=SAMPLE_RATE, seed=5)
            local = embeddings[rank * rows:(rank + 1) * rows].clone().requires_grad_()
            on_shard = (labels >= classifier.start) & (labels < classifier.end)
            classes, _ = classifier.sample(torch.where(on_shard, labels - classifier.start, -1), labels)
            loss, _ = classifier(local, labels[rank * rows:(rank + 1) * rows])
            loss.backward()
            state = {key: classifier.gather_rows(value) for key, value in classifier.head.state_dict().items()}
            torch.save({"loss": loss.detach(), "classes": classes + classifier.start, "embedding_grad": local.grad,
                        "weight_grad": classifier.gather_rows(classifier.head.weight.grad), "state": state},
                       os.path.join(out_dir, f"{name}_{'sharded' if sharded else 'replicated'}_{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("head_contract")
    torch.multiprocessing.spawn(_two_ranks, nprocs=2, args=(2, str(folder / "rendezvous"), str(folder)))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sharded", "replicated"])
@pytest.mark.parametrize("name", HEADS)
def test_a_sampled_head_on_two_processes_is_the_whole_head_restricted(two_ranks, name, mode):
    """Sharded: each rank samples among its own classes, the union is the sample. Replicated (DDP): both
    ranks draw the same sample from the global batch's labels, each over its own rows; the loss is the
    ranks' mean and DDP averages the head's gradients."""
    world, rows = 2, BATCH // 2
    embeddings, labels = inputs()
    ranks = [torch.load(two_ranks / f"{name}_{mode}_{rank}.pt", weights_only=True) for rank in range(world)]
    if mode == "sharded":
        classes = torch.cat([r["classes"] for r in ranks])
        loss, weight_grad = ranks[0]["loss"], ranks[0]["weight_grad"]
        for r in ranks:
            torch.testing.assert_close(r["loss"], loss, rtol=0, atol=0)
    else:
        classes = ranks[0]["classes"]
        assert torch.equal(ranks[1]["classes"], classes)
        loss = sum(r["loss"] for r in ranks) / world
        weight_grad = sum(r["weight_grad"] for r in ranks) / world
    assert set(labels.tolist()) <= set(classes.tolist())
    _, ref_loss, ref_grad, ref_weight_grad, ref_state = whole_head_restricted(name, embeddings, labels, classes)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-13, atol=0)
    torch.testing.assert_close(weight_grad, ref_weight_grad, rtol=1e-12, atol=1e-15)
    for rank, r in enumerate(ranks):
        # the gather's backward (sharded) and DDP's average (replicated) both leave world x this rank's share
        torch.testing.assert_close(r["embedding_grad"] / world, ref_grad[rank * rows:(rank + 1) * rows],
                                   rtol=1e-12, atol=1e-15)
        if mode == "sharded" and rank > 0:  # a sharded head's rows are assembled on rank 0 alone
            assert r["weight_grad"] is None and r["state"]["weight"] is None
            continue
        for key, value in ref_state.items():
            torch.testing.assert_close(r["state"][key], value, rtol=1e-13, atol=1e-15)
