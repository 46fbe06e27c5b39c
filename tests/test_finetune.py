"""Fine-tuning: init_backbone starts a new run from a backbone file (strict, the head fresh, the origin
recorded), freeze_backbone_steps trains only the head, backbone_lr_scale slows the backbone."""

import json
import os

import pytest
import torch

import train
from config import Config
from dataset import write_record_pack
from dataset.synthetic import SyntheticFaces
from runtime.artifacts import backbone_file
from runtime import UserError
from training.components import build_train_state
from training.distributed import DistributedContext
from training.step import TrainStep


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    """Two packs of disjoint identities: the first trains the source model, the second is fine-tuned on."""
    folder = tmp_path_factory.mktemp("finetune")
    faces = SyntheticFaces(seed=8)
    write_record_pack(folder / "a", ((faces.render(i // 8, i % 8), i // 8) for i in range(48)), num_classes=6)
    write_record_pack(folder / "b", ((faces.render(100 + i // 8, i % 8), i // 8) for i in range(32)), num_classes=4)
    return folder


def args(data, out, name, *extra):
    return [f"--train_data={data}", "--val_sets=", "--batch_size=16", "--workers=0", f"--output_dir={out}",
            f"--name={name}", "--visdom=false", "--progress=false", "--precision=fp32", "--lr=0.01", "--log_freq=1",
            "--test_freq=0", "--save_freq=0", *extra]


def events(run_dir, kind):
    with open(os.path.join(run_dir, "metrics.jsonl")) as handle:
        return [record for record in map(json.loads, handle) if record["event"] == kind]


@pytest.mark.slow
def test_a_frozen_fine_tune_keeps_the_source_backbone_exactly_and_records_its_origin(packs, tmp_path):
    train.main(args(packs / "a", tmp_path, "source", "--max_steps=2"))
    source = torch.load(tmp_path / "source" / "backbone.pt", weights_only=True)
    for file in ("backbone.pt", "checkpoint.pt"):  # either file of a run starts a new one
        name = f"tuned_{file[:-3]}"
        summary = train.main(args(packs / "b", tmp_path, name, "--max_steps=2", "--freeze_backbone_steps=2",
                                  f"--init_backbone={tmp_path / 'source' / file}"))
        assert summary["steps"] == 2
        tuned = torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)
        for key, value in source["state_dict"].items():  # BatchNorm statistics included: eval mode while frozen
            assert torch.equal(value, tuned["backbone"][key]), key
        assert tuned["head"]["weight"].shape == (4, 128)  # a fresh head for the new identities
        assert str(tmp_path / "source" / file) in events(tmp_path / name, "init_backbone")[0]["source"]
        assert json.loads((tmp_path / name / "config.json").read_text())["init_backbone"].endswith(file)
    # after the frozen steps the backbone learns too
    train.main(args(packs / "b", tmp_path, "tuned_backbone", "--max_steps=3", "--freeze_backbone_steps=2",
                    f"--init_backbone={tmp_path / 'source' / 'backbone.pt'}"))
    moved = torch.load(tmp_path / "tuned_backbone" / "checkpoint.pt", weights_only=True)["backbone"]
    assert any(not torch.equal(value, moved[key]) for key, value in source["state_dict"].items()
               if value.is_floating_point())


def test_a_backbone_file_that_does_not_fit_is_refused_naming_the_keys(packs, tmp_path):
    with torch.device("cpu"):
        other = Config(backbone="ir18", embedding_size=512)
        state = build_train_state(other, DistributedContext(), 4)
    torch.save(backbone_file("ir18", 512, state.backbone.state_dict()), tmp_path / "ir18.pt")
    with pytest.raises(UserError, match="holds backbone 'ir18', but the config says 'mobilefacenet'"):
        train.main(args(packs / "b", tmp_path, "bad", f"--init_backbone={tmp_path / 'ir18.pt'}"))
    plain = build_train_state(Config(), DistributedContext(), 4).backbone.state_dict()
    del plain["conv1.conv.weight"]
    torch.save(plain, tmp_path / "plain.pt")  # a plain state_dict names no network: only the keys can judge
    with pytest.raises(UserError, match=r"init_backbone: .*plain.pt: does not fit backbone mobilefacenet .*"
                                        r"missing keys conv1.conv.weight"):
        train.main(args(packs / "b", tmp_path, "bad", f"--init_backbone={tmp_path / 'plain.pt'}"))
    assert not (tmp_path / "bad").exists()


def test_backbone_lr_scale_and_a_frozen_step(packs):
    cfg = Config(backbone_lr_scale=0.1, precision="fp32", batch_size=4)
    context = DistributedContext()
    state = build_train_state(cfg, context, 3)
    step = TrainStep(cfg, context, state)
    step.set_lr(0.5)
    assert {g["lr"] for g in state.optimizers["backbone"].param_groups} == {0.05}
    assert {g["lr"] for g in state.optimizers["head"].param_groups} == {0.5}
    batch = (torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8), torch.tensor([0, 1, 2, 0]))
    before = {k: v.clone() for k, v in state.backbone.state_dict().items()}
    head_before = state.classifier.head.weight.detach().clone()
    result = step(iter([batch]), frozen_backbone=True)
    assert not bool(result.skipped)
    assert all(torch.equal(before[k], v) for k, v in state.backbone.state_dict().items())
    assert all(p.grad is None for p in state.backbone.parameters())
    assert not torch.equal(head_before, state.classifier.head.weight)
    step(iter([batch]))
    assert any(not torch.equal(before[k], v) for k, v in state.backbone.state_dict().items())
