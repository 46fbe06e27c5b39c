"""Moving networks in and out of this repository: export to ONNX / TorchScript for deployment
(`interop.export`) and import of published face-recognition checkpoints (`interop.convert`, with
the key layouts in `interop.published_layouts`).
"""
