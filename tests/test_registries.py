"""Every registry refuses an unknown name the same way: runtime.UnknownName (a ValueError and a
UsageError), `unknown <kind> '<name>'; valid: <the names>`."""

import re

import numpy as np
import pytest
import torch

import config
from backbone import BACKBONES, backbone_options, build_backbone, default_embedding_size
from backbone.iresnet import IResNet
from backbone.layers import PATH_CHOICES, forced_cpu_paths
from dataset.image_codec import check_size, check_size_policy
from dataset.synthetic import SyntheticFaces, plan_pairs
from dataset.synthetic_ijb import write_synthetic_ijb
from evaluation.feature_store import Embedder
from evaluation.ijb.meta import ijb_files
from evaluation.verification import PROTOCOLS, evaluate_verification
from interop.convert import layout_for
from interop.export import FORMATS, export_and_check
from margin import AUX_LOSSES, MARGINS, build_aux_loss, build_margin
from runtime import PRECISION_CHOICES, UnknownName, UsageError, resolve_device, resolve_precision
from training.components import OPTIMIZERS, build_optimizer
from margin.angular import MARGIN_GRADIENTS
from margin.base import HEAD_INITS, Split, initial_rows
from training.schedule import SCHEDULES, LearningRate

CPU = torch.device("cpu")

# (what is asked for, kind, name, the valid names in the message's order)
REFUSALS = [
    (lambda: build_backbone("ir51", 8), "backbone", "ir51", sorted(BACKBONES)),
    (lambda: backbone_options("ir51"), "backbone", "ir51", sorted(BACKBONES)),
    (lambda: default_embedding_size("ir51"), "backbone", "ir51", sorted(BACKBONES)),
    (lambda: build_backbone("mobilefacenet", 8, depth=3), "mobilefacenet option", "depth", []),
    (lambda: IResNet([1, 1, 1, 1], attention="se2"), "attention", "se2", ["cam", "cbam", "sam", "se", "None"]),
    (lambda: forced_cpu_paths(prelu="ops").__enter__(), "layer kind", "prelu", list(PATH_CHOICES)),
    (lambda: forced_cpu_paths(prelu_backward="jit").__enter__(), "prelu_backward path", "jit",
     list(PATH_CHOICES["prelu_backward"])),
    (lambda: build_margin("arcfase", 8, 4), "head", "arcfase", sorted(MARGINS)),
    (lambda: build_margin("arcface", 8, 4, margin=0.5), "arcface hyperparameter", "margin",
     list(MARGINS["arcface"].HYPERPARAMETERS)),
    (lambda: build_aux_loss("centre", 4, 8), "auxiliary loss", "centre", sorted(AUX_LOSSES)),
    (lambda: build_optimizer(torch.nn.Linear(2, 2), config.Config(optimizer="adam")), "optimizer", "adam",
     list(OPTIMIZERS)),
    (lambda: LearningRate(config.Config(schedule="linear"), 10, 100, 1000)(50), "schedule", "linear", list(SCHEDULES)),
    (lambda: build_margin("arcface", 8, 4, gradient="sign"), "margin gradient", "sign", list(MARGIN_GRADIENTS)),
    (lambda: initial_rows("orthogonal", 8, 4), "head init", "orthogonal", list(HEAD_INITS)),
    (lambda: Split("columns"), "head split", "columns", list(Split.KINDS)),
    (lambda: resolve_precision("half", CPU), "precision", "half", list(PRECISION_CHOICES)),
    (lambda: resolve_device("tpu"), "device", "tpu", ["cpu", "cuda", "cuda:N", "auto"]),
    (lambda: evaluate_verification(np.eye(4), [1, 0], protocol="lfw"), "protocol", "lfw", list(PROTOCOLS)),
    (lambda: Embedder(None, 4, CPU, layout="sum"), "feature layout", "sum", ["normalized_sum", "separate"]),
    (lambda: ijb_files("/nonexistent", "ijba"), "IJB set", "ijba", ["ijbc", "ijbb"]),
    (lambda: write_synthetic_ijb("/nonexistent", "ijba"), "IJB set", "ijba", ["ijbc", "ijbb"]),
    (lambda: export_and_check(torch.nn.Linear(2, 2), "x", 2, "tflite", "/nonexistent"), "export format", "tflite",
     list(FORMATS)),
    (lambda: layout_for("facebook", "ir50"), "weight source", "facebook", None),
    (lambda: layout_for("insightface", "ir51"), "insightface arch", "ir51", None),
    (lambda: SyntheticFaces().render_with_landmarks(0, 0, variant="ijb"), "variant", "ijb", None),
    (lambda: plan_pairs("ijb", 20, 0, 4), "pair kind", "ijb", None),
    (lambda: check_size_policy("crop"), "size policy (on_size_mismatch)", "crop", ["error", "resize"]),
    (lambda: check_size(np.zeros((5, 5, 3), np.uint8), "crop", "x", "y"), "size policy (on_size_mismatch)", "crop",
     ["error", "resize"]),
]


@pytest.mark.parametrize("refused, kind, name, valid", REFUSALS, ids=[f"{k} {n}" for _, k, n, _ in REFUSALS])
def test_an_unknown_name_is_refused_in_one_phrasing_with_the_valid_names(refused, kind, name, valid):
    with pytest.raises(UnknownName) as caught:
        refused()
    error = caught.value
    assert isinstance(error, ValueError) and isinstance(error, UsageError)
    assert (error.kind, error.name) == (kind, name)
    message = str(error)
    assert message.startswith(f"unknown {kind} {name!r}; valid: "), message
    if valid is not None:
        assert message.startswith(f"unknown {kind} {name!r}; valid: {', '.join(valid) or '(none)'}"), message
    assert "\n" not in message


def test_config_adds_where_the_name_came_from_and_the_closest_name(tmp_path):
    override = tmp_path / "override.py"
    override.write_text("name = 'x'\n\nhead = 'arcfase'\n")
    with pytest.raises(config.ConfigError) as caught:
        config.load_config([str(override)])
    assert isinstance(caught.value, UnknownName)
    assert str(caught.value) == (f"{override}, line 3: unknown head 'arcfase'; valid: {', '.join(sorted(MARGINS))} "
                                 "(did you mean 'arcface'?)")
    with pytest.raises(UnknownName, match=re.escape("--optimizer=adam: unknown optimizer 'adam'; valid: adamw, sgd")):
        config.load_config(["--optimizer=adam"])
    with pytest.raises(UnknownName, match=re.escape("--lr_rate=1: unknown config key 'lr_rate'; valid: aux_loss,")):
        config.load_config(["--lr_rate=1"])


def test_an_unknown_name_survives_pickling_as_it_was():
    import pickle
    error = UnknownName("backbone", "ir51", ["ir50", "ir100"], where="--backbone")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is UnknownName and str(copy) == str(error) == \
        "--backbone: unknown backbone 'ir51'; valid: ir50, ir100 (did you mean 'ir50'?)"


def test_the_default_embedding_size_is_what_the_constructor_builds():
    assert default_embedding_size("mobilefacenet") == 128 and default_embedding_size("vit_t") == 512
    for name in ("mobilefacenet", "ir18"):
        with torch.no_grad():
            features = BACKBONES[name]().eval()(torch.zeros(2, 3, 112, 112))
        assert features.shape == (2, default_embedding_size(name)), name
