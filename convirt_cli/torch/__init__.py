"""The torch side: towers, the two-tower model, losses, training loops, export to ONNX, quantisation.

Modules here may import torch, transformers and timm, and anything in convirt_cli.torchfree; nothing in
convirt_cli.torchfree imports from here at module level.
"""
