"""The torch-free side: never imports torch, transformers or timm (tests/test_layout.py checks every module,
and runs the serving commands in an interpreter where those imports fail)."""
