"""The serving path: onnxruntime encoders, index folders, blockwise search, result formats, HTML gallery."""
