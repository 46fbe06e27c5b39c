"""Export a backbone for deployment and prove that the export computes what PyTorch computes.

- ONNX (https://onnx.ai, default operator set 17): one input `images` float32 [N,3,112,112] and one
  output `embeddings` float32 [N,D], N dynamic. What the input must be is written into the model's
  `doc_string` and `metadata_props`, where ONNX tools show it.
- TorchScript (`torch.jit.trace`, saved with `torch.jit.save`): the same function, loadable from
  C++ (`torch::jit::load`) or Python without this repository; the same description travels as the
  archive's extra file `metadata.json`.

The input contract is this repository's: RGB, 112x112 aligned faces, (x/255 - 0.5)/0.5 per channel;
the embedding is not L2-normalised (compare embeddings by cosine similarity). Both exporters used
here are deprecated upstream in favour of torch.export but are the ones that still export every
backbone of the registry with a dynamic batch; see `export_onnx`.
"""

import json
import warnings

import torch

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
IMAGE_SIZE = 112
DEFAULT_OPSET = 17  # from 2022: current runtimes read it, and newer sets add nothing these nets use
MAX_OPSET = 20  # the highest the TorchScript-based ONNX exporter writes
MIN_OPSET = 11  # Resize with align_corners (the attention networks' upsampling) needs 11
# max |export - PyTorch| on fp32 embeddings, per unit of embedding scale: fp32 rounding grows with
# the values, and random-input embeddings of a deep net can reach ~100 (the check uses noise, not
# faces), where 1e-4 is a few float32 ulps. For embeddings within [-1, 1] it is 1e-4 absolute.
TOLERANCE = 1e-4
TRACE_BATCH = 2  # not 1, so that nothing batch-1-specific can be baked into the export
INPUT_DESCRIPTION = ("float32 [N,3,112,112]: RGB face crops aligned to 112x112, pixel values x in "
                     "0..255 mapped to (x/255 - 0.5)/0.5 (so in [-1, 1]), channels first")
OUTPUT_DESCRIPTION = ("float32 [N,D] face embeddings, not L2-normalised: L2-normalise them and "
                      "compare by cosine similarity")


def model_metadata(backbone_name: str, embedding_size: int) -> dict[str, str]:
    """The description stored with an export: string keys and values, as ONNX metadata needs."""
    return {"backbone": backbone_name, "embedding_size": str(embedding_size),
            INPUT_NAME: INPUT_DESCRIPTION, OUTPUT_NAME: OUTPUT_DESCRIPTION,
            "producer": "face-recognition repository, tools/export.py"}


def doc_string(metadata: dict[str, str]) -> str:
    return (f"{metadata['backbone']} face embedding network ({metadata['embedding_size']}-d). "
            f"Input '{INPUT_NAME}': {metadata[INPUT_NAME]}. Output '{OUTPUT_NAME}': "
            f"{metadata[OUTPUT_NAME]}.")


def example_input(batch_size: int, seed: int = 0) -> torch.Tensor:
    """Uniform in [-1, 1], the range normalised pixels cover."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 2 - 1


def export_onnx(model: torch.nn.Module, path, metadata: dict[str, str], opset: int = DEFAULT_OPSET) -> None:
    """Write `model` (eval mode, fp32) to ONNX with a dynamic batch axis and `metadata`."""
    import onnx  # here, so that a TorchScript export needs no ONNX package

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset={opset}; valid: {MIN_OPSET}..{MAX_OPSET}")
    # dynamo=False picks the TorchScript-based exporter. torch 2.14 defaults to the torch.export
    # one, which needs the extra package onnxscript and a torch.export trace of every network; the
    # TorchScript-based exporter needs only `onnx`, exports every family of the registry (checked
    # by tests/test_export.py) and takes `dynamic_axes` for the batch. It warns that it is deprecated;
    # the warning is silenced because the tool's output is the check, not the exporter's notes.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        torch.onnx.export(model, (example_input(TRACE_BATCH),), str(path), dynamo=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=opset, do_constant_folding=True)
    exported = onnx.load(str(path))
    exported.doc_string = doc_string(metadata)
    onnx.helper.set_model_props(exported, metadata)
    onnx.checker.check_model(exported)
    onnx.save(exported, str(path))


def export_torchscript(model: torch.nn.Module, path, metadata: dict[str, str]) -> None:
    """Trace `model` (eval mode, fp32) and save it with `metadata` as the extra file metadata.json."""
    metadata = {**metadata, "description": doc_string(metadata)}
    # Tracing, not scripting: the backbones' forwards are plain tensor code, and tracing needs no
    # TorchScript annotations in backbone/. check_trace is off because check_export below compares
    # more thoroughly (other batch sizes, from the saved file).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        traced = torch.jit.trace(model, example_input(TRACE_BATCH), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"metadata.json": json.dumps(metadata)})


def onnx_runner(path):
    """A function float32 tensor [N,3,112,112] -> tensor [N,D] that runs the file in onnxruntime."""
    import onnxruntime  # here, so that a TorchScript export needs no ONNX package

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise ValueError(f"{path}: inputs/outputs {names}, expected ([{INPUT_NAME!r}], [{OUTPUT_NAME!r}])")
    return lambda images: torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0])


def torchscript_runner(path):
    """A function float32 tensor [N,3,112,112] -> tensor [N,D] that runs the saved TorchScript."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(images):
        # The graph as saved, without the profiling executor: it re-optimises the graph for every new
        # input shape (seconds per shape on the 50-unit nets), and on the CPU it fuses nothing
        # (torch._C._jit_can_fuse_on_cpu() is False), so the arithmetic is the same.
        with torch.jit.optimized_execution(False):
            return loaded(images)

    return run


RUNNERS = {"onnx": onnx_runner, "torchscript": torchscript_runner}
FORMATS = tuple(RUNNERS)


def within_tolerance(difference: float, scale: float) -> bool:
    """Whether a max |export - PyTorch| of `difference` passes on embeddings whose largest |value|
    is `scale`."""
    return difference <= TOLERANCE * max(1.0, scale)


@torch.no_grad()
def check_export(model: torch.nn.Module, runner, batch_sizes=(1, 4)) -> dict[int, tuple[float, float]]:
    """{batch size: (max |export - model|, max |model output|)} on random inputs; also checks the
    output's shape."""
    differences = {}
    for batch_size in batch_sizes:
        images = example_input(batch_size, seed=batch_size)
        expected = model(images)
        actual = runner(images)
        if tuple(actual.shape) != tuple(expected.shape):
            raise ValueError(f"export returned shape {tuple(actual.shape)} for batch {batch_size}, "
                             f"PyTorch {tuple(expected.shape)}")
        differences[batch_size] = ((actual - expected).abs().max().item(), expected.abs().max().item())
    return differences


def export_and_check(model: torch.nn.Module, backbone_name: str, embedding_size: int, format_name: str,
                     path, opset: int = DEFAULT_OPSET, batch_sizes=(1, 4)) -> dict[int, tuple[float, float]]:
    """Export `model` to `path` in `format_name` (a key of FORMATS) and return check_export's
    differences, measured on the written file."""
    if format_name not in FORMATS:
        raise ValueError(f"format={format_name!r}; valid: {', '.join(FORMATS)}")
    model = model.float().eval()
    metadata = model_metadata(backbone_name, embedding_size)
    if format_name == "onnx":
        export_onnx(model, path, metadata, opset)
    else:
        export_torchscript(model, path, metadata)
    return check_export(model, RUNNERS[format_name](path), batch_sizes)
