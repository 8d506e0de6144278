"""Batch encoding with the torch model (eval mode, no grad): texts / pixels -> L2-normalised numpy arrays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from convirt_cli.torch.model import ConVIRT


@torch.no_grad()
def encode_texts(model: ConVIRT, texts: Sequence[str], batch_size: int = 128,
                 device: str | torch.device = "cpu") -> np.ndarray:
    """Texts -> [n, d] embeddings (whole text, truncated to the tower's max_length)."""
    model.eval().to(device)
    out = []
    for i in range(0, len(texts), batch_size):
        tok = model.tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                              max_length=model.cfg.text.max_length, return_tensors="pt")
        out.append(model.encode_text(tok["input_ids"].to(device), tok["attention_mask"].to(device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.dim), np.float32)


class TorchEncoder:
    """The torch twin of fast.encoder.OnnxEncoder (same preprocessing and batching), for runs without an export."""

    backend = "torch"

    def __init__(self, run, device: str = "auto", threads: int | None = None, workers: int | None = None):
        from pathlib import Path

        from convirt_cli.torch.export import preprocess_spec
        from convirt_cli.torch.model import load_model
        from convirt_cli.torchfree.files import weights_fingerprint

        if threads:
            torch.set_num_threads(threads)
        self.path, self.workers = Path(run), workers
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        self.device_used = self.device.type
        self.model = load_model(self.path).eval().to(self.device)
        self.pre = preprocess_spec(self.model)
        self.dim = self.model.dim
        self.has_text = self.model.has_text
        self.fingerprint = weights_fingerprint(self.path)

    @torch.no_grad()
    def image_forward(self, pixels: np.ndarray) -> np.ndarray:
        return self.model.encode_image(torch.from_numpy(pixels).to(self.device)).float().cpu().numpy()

    @torch.no_grad()
    def dense_forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The torch twin of OnnxEncoder.dense_forward: (embeds [B, d], cells [B, h, w, d])."""
        embeds, cells = self.model.encode_dense(torch.from_numpy(pixels).to(self.device))
        return embeds.float().cpu().numpy(), cells.float().cpu().numpy()

    def encode_images(self, paths, batch_size: int = 64, on_progress=None):
        from convirt_cli.torchfree.serve.encoder import encode_images

        return encode_images(paths, self.pre, self.image_forward, self.dim, batch_size, on_progress, self.workers)

    def encode_texts(self, texts, batch_size: int = 128, on_progress=None) -> np.ndarray:
        from convirt_cli.torchfree.serve.encoder import encode_text_batches

        if texts and not self.model.has_text:
            self.model.encode_text(None, None)  # the one-line refusal (ConvirtError)
        return encode_text_batches(texts, lambda chunk: encode_texts(self.model, chunk, batch_size, self.device),
                                        self.dim, batch_size, on_progress)
