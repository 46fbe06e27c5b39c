"""tools/model/export.py: every backbone family exports to ONNX and TorchScript from a checkpoint file, and
the written files compute what PyTorch computes at two batch sizes (interop/export.py). The
AOTInductor format's compile is tested in tests/test_cpp.py (once per module: it takes a minute);
here, every family's torch.export trace and the requests refused before any work."""

import json
import os

import onnx
import pytest
import torch

from backbone import build_backbone
from interop.export import (INPUT_NAME, OUTPUT_NAME, check_export, example_input, export_onnx,
                            model_metadata, onnx_runner, within_tolerance)
from tools.model.export import main as export_main
from runtime.artifacts import backbone_file
from runtime import UsageError

# One thread: on the test machines' two shared cores a second one costs more than it gains
# (a contended OpenMP team spins).
pytestmark = pytest.mark.usefixtures("one_thread")

EMBEDDING_SIZE = 16
# One network of every family; the smallest of each that the registry has.
FAMILIES = ["mobilefacenet", "ir18", "ir_se18", "ir_cbam50", "resnet50", "attention56", "spherenet20",
            "vit_t"]
# The fast tier exports MobileFaceNet; every other family runs in the full tier.
SLOW_FAMILIES = {"ir18", "ir_se18", "ir_cbam50", "resnet50", "attention56", "spherenet20", "vit_t"}


def random_backbone(name: str) -> torch.nn.Module:
    """Random weights with a trained network's scales.

    The BN2d statistics are measured on random inputs like those of the tool's check (fresh ones of
    0 and 1 let activations shrink towards 0 with depth). The third BN of each residual unit (`bn3`:
    the branch's last in the IR and ResNet units, its last before the final conv in the attention
    nets' pre-activation units) gets a small scale, as training leaves it (the reason its weight is
    often zero-initialised): with unit-scale branches a random ResNet-50 amplifies float32 rounding
    about 1.4-fold per unit, to ~1e-4 at the embedding, which no trained network does. The final BN1d
    keeps 0 and 1: its statistics over a couple of noise images would be degenerate.
    """
    torch.manual_seed(0)
    model = build_backbone(name, EMBEDDING_SIZE)
    norms = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    with torch.no_grad():
        for layer_name, norm in norms.items():
            norm.momentum = None  # running statistics = those of the one batch below
            if layer_name.endswith("bn3"):
                norm.weight.uniform_(0.1, 0.3)
        model.train()(example_input(2, seed=100))
    for norm in norms.values():
        norm.momentum = 0.1
    return model.eval()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_FAMILIES else name
                                  for name in FAMILIES])
def test_every_family_exports_to_both_formats(name, tmp_path, capsys):
    model = random_backbone(name)
    checkpoint = tmp_path / "backbone.pt"
    if name == "mobilefacenet":  # the training checkpoint.pt layout, which the tool reads too
        torch.save({"backbone": model.state_dict(), "head": {},
                    "config": {"backbone": name, "embedding_size": EMBEDDING_SIZE}}, checkpoint)
    else:
        torch.save(backbone_file(name, EMBEDDING_SIZE, model.state_dict()), checkpoint)
    for format_name, out in (("onnx", tmp_path / "model.onnx"), ("torchscript", tmp_path / "model.ts")):
        status = export_main(["--checkpoint", str(checkpoint), "--format", format_name,
                              "--batch-check", "2", str(out)])
        printed = capsys.readouterr().out
        assert status == 0, printed
        assert "batch 1:" in printed and "batch 2:" in printed and printed.rstrip().endswith("OK")

    # The files carry the input contract and the dynamic batch axis.
    exported = onnx.load(str(tmp_path / "model.onnx"))
    properties = {p.key: p.value for p in exported.metadata_props}
    assert properties["backbone"] == name and properties["embedding_size"] == str(EMBEDDING_SIZE)
    assert "(x/255 - 0.5)/0.5" in exported.doc_string and "RGB" in properties[INPUT_NAME]
    for value, expected_shape in ((exported.graph.input[0], ["batch", 3, 112, 112]),
                                  (exported.graph.output[0], ["batch", EMBEDDING_SIZE])):
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in dims] == expected_shape
    assert [exported.graph.input[0].name, exported.graph.output[0].name] == [INPUT_NAME, OUTPUT_NAME]
    extra = {"metadata.json": ""}
    torch.jit.load(str(tmp_path / "model.ts"), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["backbone"] == name


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_an_output_folder_that_does_not_exist_yet_is_created(tmp_path, capsys, one_thread):
    checkpoint = tmp_path / "backbone.pt"
    torch.save(backbone_file("mobilefacenet", EMBEDDING_SIZE, random_backbone("mobilefacenet").state_dict()),
               checkpoint)
    out = tmp_path / "exports" / "v1" / "model.ts"
    assert export_main(["--checkpoint", str(checkpoint), "--format", "torchscript", "--batch-check", "2",
                        str(out)]) == 0
    assert out.is_file() and capsys.readouterr().out.rstrip().endswith("OK")


def test_the_check_catches_an_export_of_other_weights(tmp_path):
    exported, other = random_backbone("spherenet20"), build_backbone("spherenet20", EMBEDDING_SIZE).eval()
    export_onnx(exported, tmp_path / "m.onnx", model_metadata("spherenet20", EMBEDDING_SIZE))
    differences = check_export(other, onnx_runner(tmp_path / "m.onnx"), batch_sizes=(1,))
    assert not within_tolerance(*differences[1])


def test_bad_options_are_refused(tmp_path, capsys):
    torch.save(backbone_file("mobilefacenet", EMBEDDING_SIZE, random_backbone("mobilefacenet").state_dict()),
               tmp_path / "b.pt")
    with pytest.raises(SystemExit) as stopped:  # a usage error (one line), before the checkpoint loads
        export_main(["--checkpoint", str(tmp_path / "b.pt"), "--format", "onnx", "--opset", "9",
                     str(tmp_path / "m.onnx")])
    assert stopped.value.code == 2 and capsys.readouterr().err.strip().endswith("error: --opset 9: valid: 11..20")
    with pytest.raises(SystemExit):
        export_main(["--checkpoint", str(tmp_path / "b.pt"), "--format", "tflite", str(tmp_path / "m")])


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_traces_for_aotinductor_with_a_dynamic_batch(name):
    """The first step of --format aoti (torch.export, non-strict, batch dimension dynamic) on every
    family; the compile after it is tested on MobileFaceNet and IR-50 in tests/test_cpp.py."""
    model = random_backbone(name)
    program = torch.export.export(model, (example_input(2),), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                                  strict=False)
    with torch.no_grad():
        for batch in (1, 3):
            images = example_input(batch, seed=batch)
            assert torch.allclose(program.module()(images), model(images), atol=1e-5)


def test_aoti_requests_that_cannot_succeed_are_refused_before_any_work(tmp_path):
    torch.save(backbone_file("mobilefacenet", EMBEDDING_SIZE, random_backbone("mobilefacenet").state_dict()),
               tmp_path / "b.pt")
    checkpoint = ["--checkpoint", str(tmp_path / "b.pt")]
    with pytest.raises(UsageError, match="m.pt: an AOTInductor package's name must end in .pt2"):
        export_main([*checkpoint, "--format", "aoti", str(tmp_path / "m.pt")])
    with pytest.raises(SystemExit):  # argparse: --device cuda is for the compiled format only
        export_main([*checkpoint, "--format", "onnx", "--device", "cuda", str(tmp_path / "m.onnx")])
    with pytest.raises(SystemExit):
        export_main([*checkpoint, "--format", "aoti", "--threshold", "1.5", str(tmp_path / "m.pt2")])
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="--device cuda: no CUDA GPU is usable here"):
            export_main([*checkpoint, "--format", "aoti", "--device", "cuda", str(tmp_path / "m.pt2")])
    assert sorted(os.listdir(tmp_path)) == ["b.pt"]
