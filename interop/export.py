"""Export a backbone for deployment and prove that the export computes what PyTorch computes.

- ONNX (https://onnx.ai, default operator set 17): one input `images` float32 [N,3,112,112] and one
  output `embeddings` float32 [N,D], N dynamic. What the input must be is written into the model's
  `doc_string` and `metadata_props`, where ONNX tools show it.
- TorchScript (`torch.jit.trace`, saved with `torch.jit.save`): the same function, loadable from
  C++ (`torch::jit::load`) or Python without this repository; the same description travels as the
  archive's extra file `metadata.json`.
- AOTInductor (`torch.export.export` with a dynamic batch dimension, compiled by
  `torch._inductor.aoti_compile_and_package` into a `.pt2` package): the same function as native
  code for the CPU (or a CUDA GPU), loaded from C++ by `torch::inductor::AOTIModelPackageLoader`
  (deploy/cpp) or from Python by `torch._inductor.aoti_load_package`. The package's metadata holds
  the same description and the `torch_version` that wrote it: a package loads only into that
  version of torch, which the C++ tools check before loading it.

The input contract is this repository's: RGB, 112x112 aligned faces, (x/255 - 0.5)/0.5 per channel;
the embedding is not L2-normalised (compare embeddings by cosine similarity). The ONNX and
TorchScript exporters used here are deprecated upstream in favour of torch.export but are the ones
that export every backbone of the registry with a dynamic batch and no extra package; see
`export_onnx`.
"""

import json
import logging
import os
import warnings

import torch

from runtime import UnknownName, UsageError
from runtime.cpu import inductor_cpp_compiler

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


def model_metadata(backbone_name: str, embedding_size: int, threshold: float | None = None) -> dict[str, str]:
    """The description stored with an export: string keys and values, as ONNX metadata needs.
    `threshold`: a verification threshold (a cosine) to store beside the network, for a deployment
    that compares faces with it (deploy/cpp's face_compare reads it)."""
    metadata = {"backbone": backbone_name, "embedding_size": str(embedding_size),
                INPUT_NAME: INPUT_DESCRIPTION, OUTPUT_NAME: OUTPUT_DESCRIPTION,
                "producer": "face-recognition repository, tools/model/export.py"}
    if threshold is not None:
        metadata["threshold"] = repr(float(threshold))
    return metadata


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


def _quiet_cuda_search() -> None:
    """Inductor imports torch's C++ extension builder, which warns on every machine without CUDA that
    it found no CUDA runtime: noise for a CPU package."""
    if not torch.cuda.is_available():
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def check_aoti_request(path, device: str) -> None:
    """Refuse, before any work, an AOTInductor export that cannot succeed here."""
    if not str(path).endswith(".pt2"):
        raise UsageError(f"{path}: an AOTInductor package's name must end in .pt2")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device {device}: valid: cpu, cuda")
    if not inductor_cpp_compiler():
        raise UsageError("--format aoti compiles C++ and found no C++ compiler (install g++, or set CXX to one)")
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is usable here; a CUDA package is compiled on a machine "
                         "with the GPU")


def export_aoti(model: torch.nn.Module, path, metadata: dict[str, str], device: str = "cpu") -> None:
    """Compile `model` (eval mode, fp32) with AOTInductor into the .pt2 package `path`, for `device`
    (cpu or cuda), with a dynamic batch axis and `metadata` plus the writing torch's version."""
    check_aoti_request(path, device)
    _quiet_cuda_search()
    model = model.to(device)
    # min=1: the package runs any batch size, 1 included; the trace batch is TRACE_BATCH (not 1),
    # so nothing can specialise to size 1. Non-strict tracing runs the Python forward as it is
    # (tests/test_export.py traces every family of the registry this way).
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(model, (example_input(TRACE_BATCH).to(device),),
                                      dynamic_shapes=({0: batch},), strict=False)
    metadata = {**metadata, "torch_version": torch.__version__, "description": doc_string(metadata)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch._inductor.aoti_compile_and_package(program, package_path=str(path),
                                             inductor_configs={"aot_inductor.metadata": metadata})


def onnx_runner(path, threads: int | None = None):
    """A function float32 tensor [N,3,112,112] -> tensor [N,D] that runs the file in onnxruntime on
    the CPU (with `threads` intra-op threads; default: onnxruntime's, one per core)."""
    import onnxruntime  # here, so that a TorchScript export needs no ONNX package

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise ValueError(f"{path}: inputs/outputs {names}, expected ([{INPUT_NAME!r}], [{OUTPUT_NAME!r}])")
    return lambda images: torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0])


def torchscript_runner(path, device: str = "cpu"):
    """A function float32 tensor [N,3,112,112] -> tensor [N,D] on the CPU that runs the saved
    TorchScript on `device`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location=device)

    def run(images):
        # The graph as saved, without the profiling executor: it re-optimises the graph for every new
        # input shape (seconds per shape on the 50-unit nets), and on the CPU it fuses nothing
        # (torch._C._jit_can_fuse_on_cpu() is False), so the arithmetic is the same.
        with torch.jit.optimized_execution(False), torch.no_grad():
            return loaded(images.to(device)).cpu()

    return run


def aoti_runner(path, device: str = "cpu"):
    """A function float32 tensor [N,3,112,112] -> tensor [N,D] on the CPU that runs the .pt2 package
    on `device` (the one it was compiled for)."""
    _quiet_cuda_search()
    compiled = torch._inductor.aoti_load_package(str(path))

    def run(images):
        # The compiled code takes the input's memory as laid out at export: contiguous NCHW.
        with torch.no_grad():
            return compiled(images.to(device).contiguous()).cpu()

    return run


RUNNERS = {"onnx": onnx_runner, "torchscript": torchscript_runner, "aoti": aoti_runner}
FORMATS = tuple(RUNNERS)
DEVICE_FORMATS = ("aoti",)  # the formats that can be compiled for a CUDA GPU (--device cuda)


def within_tolerance(difference: float, scale: float) -> bool:
    """Whether a max |export - PyTorch| of `difference` passes on embeddings whose largest |value|
    is `scale`."""
    return difference <= TOLERANCE * max(1.0, scale)


@torch.no_grad()
def check_export(model: torch.nn.Module, runner, batch_sizes=(1, 7)) -> dict[int, tuple[float, float]]:
    """{batch size: (max |export - model|, max |model output|)} on random inputs; also checks the
    output's shape. `model` runs on its own device; `runner` takes and returns CPU tensors."""
    device = next(model.parameters()).device
    differences = {}
    for batch_size in batch_sizes:
        images = example_input(batch_size, seed=batch_size)
        with _full_fp32(device):
            expected = model(images.to(device)).cpu()
            actual = runner(images)
        if tuple(actual.shape) != tuple(expected.shape):
            raise ValueError(f"export returned shape {tuple(actual.shape)} for batch {batch_size}, "
                             f"PyTorch {tuple(expected.shape)}")
        differences[batch_size] = ((actual - expected).abs().max().item(), expected.abs().max().item())
    return differences


class _full_fp32:
    """On a CUDA GPU, float32 convolutions and matrix products in full precision while checking
    (PyTorch lets cuDNN use TF32 by default, which no tolerance of 1e-4 survives); a no-op on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        if self.cuda:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.saved


def export_and_check(model: torch.nn.Module, backbone_name: str, embedding_size: int, format_name: str,
                     path, opset: int = DEFAULT_OPSET, batch_sizes=(1, 7), device: str = "cpu",
                     threshold: float | None = None) -> dict[int, tuple[float, float]]:
    """Export `model` to `path` in `format_name` (a key of FORMATS) for `device` (cuda only for the
    DEVICE_FORMATS) and return check_export's differences, measured on the written file."""
    if format_name not in FORMATS:
        raise UnknownName("export format", format_name, FORMATS)
    if device != "cpu" and format_name not in DEVICE_FORMATS:
        raise UsageError(f"--device {device}: {format_name} exports run on any device; only "
                         f"{', '.join(DEVICE_FORMATS)} compiles for one (use --device cpu)")
    model = model.float().eval()
    metadata = model_metadata(backbone_name, embedding_size, threshold)
    if format_name == "onnx":
        export_onnx(model, path, metadata, opset)
        runner = onnx_runner(path)
    elif format_name == "torchscript":
        export_torchscript(model, path, metadata)
        runner = torchscript_runner(path)
    else:
        export_aoti(model, path, metadata, device)
        model = model.to(device)
        runner = aoti_runner(path, device)
    return check_export(model, runner, batch_sizes)
