"""convirt: learn medical image encoders from images and reports (ConVIRT, RAD-DINO), export and serve them.

The package has three parts, and imports only flow down this list:
  cli/        the `convirt` command: thin typer commands that fill a config and call the library
  torch/      everything that needs torch: towers, model, losses, training, export, quantisation
  torchfree/  everything that must not: readers, image decoding, presets, runs, configs, metrics,
              and the serving path (onnxruntime encoders, index files, search, output formats)
`embed`, `retrieve`, `index`, `classify` and `evaluate` run from an ONNX export on torchfree/ alone;
tests/test_layout.py enforces it.
"""
