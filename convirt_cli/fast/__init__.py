"""The torch-free serving path: onnxruntime encoders, index files, blockwise search, HTML gallery.

Nothing in this package may import torch or transformers (a test checks `convirt retrieve` in a fresh
process): a cold `convirt retrieve` must start in well under a second.
"""
