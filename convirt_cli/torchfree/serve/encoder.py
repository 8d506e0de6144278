"""Encoders over an export folder (image.onnx, text.onnx, tokenizer.json, preprocess.json, manifest.json).

Both backends (this one and convirt_cli.torch.encode.TorchEncoder) share `encode_images`, so pixels,
batching and the skipping of unreadable files are the same whichever runs the network.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.files import read_json
from convirt_cli.torchfree.progress import Advance

if TYPE_CHECKING:
    from convirt_cli.torchfree.imageio import ImageSource
# Image decoding (Pillow, the decode workers) is imported where images are met: a text query does not pay for it.

EXPORT_FILES = ("image.onnx", "preprocess.json", "manifest.json")
TEXT_FILES = ("text.onnx", "tokenizer.json")


def is_export_dir(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "manifest.json").is_file() and (Path(path) / "image.onnx").is_file()


def encode_images(paths: Sequence[ImageSource], pre: dict, run: Callable[[np.ndarray], np.ndarray], dim: int,
                  batch_size: int = 64, on_progress: Advance | None = None, workers: int | None = None):
    """Images (paths, (path, slice) of a volume, file bytes or pixels) -> ([n_ok, d] float32 L2-normalised, ok
    indices into `paths`, [(index, reason)] skipped). `workers` decode (serve/decode.py; None: one per core) while
    `run` has the model."""
    from convirt_cli.torchfree.processes import cpu_workers
    from convirt_cli.torchfree.serve.decode import PixelBatches

    out, ok, bad = [], [], []
    with PixelBatches(paths, pre, batch_size, workers or cpu_workers()) as batches:
        for start, x, good, skipped in batches:
            if len(good):
                out.append(np.asarray(run(x), dtype=np.float32))
            ok += [start + i for i in good]
            bad += [(start + i, r) for i, r in skipped]
            if on_progress:
                on_progress(len(good) + len(skipped))
    return (np.concatenate(out) if out else np.zeros((0, dim), np.float32)), ok, bad


def text_batches(texts: Sequence[str], batch_size: int, by_length: bool = True) -> list[np.ndarray]:
    """Index batches of texts; by_length: of similar length (by characters, a proxy for tokens), so a batch
    padded to its longest text carries little padding. The caller puts each batch's rows back at its indices."""
    n = len(texts)
    order = (np.argsort(np.fromiter((len(t) for t in texts), dtype=np.int64, count=n), kind="stable")
             if by_length else np.arange(n))
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def encode_text_batches(texts: Sequence[str], run: Callable[[list[str]], np.ndarray], dim: int, batch_size: int,
                        on_progress: Advance | None = None, by_length: bool = True) -> np.ndarray:
    """[n, d] float32 in the order of `texts`, computed batch by batch (text_batches)."""
    out = np.zeros((len(texts), dim), np.float32)
    for idx in text_batches(texts, batch_size, by_length):
        out[idx] = run([texts[i] for i in idx])
        if on_progress:
            on_progress(len(idx))
    return out


class Tokenizer:
    """The exported tokenizer.json with the torch tower's truncation and padding (pad to longest)."""

    def __init__(self, export_dir: Path, pre: dict):
        from tokenizers import Tokenizer as HFTokenizer

        self.tok = HFTokenizer.from_file(str(Path(export_dir) / "tokenizer.json"))
        self.tok.enable_truncation(max_length=pre["max_length"])
        self.tok.enable_padding(pad_id=pre["pad_id"], pad_token=pre["pad_token"])

    def __call__(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        enc = self.tok.encode_batch(list(texts))
        return {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64)}


class OnnxEncoder:
    """encode_images / encode_texts with onnxruntime; each session is created on first use (a text
    query never pays for loading the image tower).

    `bulk=False` (a few queries) builds sessions for a fast start (providers.session): a handful of queries do
    not need pre-packed weights or spinning worker threads. `workers`: image decoding workers (None: one per
    core; serve/decode.py)."""

    backend = "onnx"

    def __init__(self, export_dir: Path, device: str = "auto", threads: int | None = None, bulk: bool = True,
                 workers: int | None = None):
        export_dir = Path(export_dir)
        missing = [f for f in EXPORT_FILES if not (export_dir / f).is_file()]
        if missing:
            raise ConvirtError(f"{export_dir}: not a complete ONNX export ({', '.join(missing)} missing); "
                               "run `convirt export RUN --onnx`")
        self.path = export_dir
        self.manifest = read_json(export_dir / "manifest.json", "re-export it: `convirt export RUN --onnx`")
        self.has_text = "text" in self.manifest.get("towers", ["image", "text"])
        missing = [f for f in TEXT_FILES if self.has_text and not (export_dir / f).is_file()]
        if missing:
            raise ConvirtError(f"{export_dir}: not a complete ONNX export ({', '.join(missing)} missing); "
                               "run `convirt export RUN --onnx`")
        self.pre = read_json(export_dir / "preprocess.json")
        self.fingerprint: str = self.manifest["fingerprint"]
        self.dim: int = int(self.manifest["dim"])
        self.device, self.threads, self.bulk, self.workers = device, threads, bulk, workers
        self._sessions: dict = {}
        self._tokenizer: Tokenizer | None = None
        self._lock = threading.Lock()  # sessions and the tokenizer are made once, by one thread (run() is thread-safe)
        self.device_used = "cpu"

    def _create(self, name: str):
        from convirt_cli.torchfree.serve.providers import session

        return session(self.path / f"{name}.onnx", self.device, self.threads, bulk=self.bulk,
                       int8=self.manifest.get("precision", {}).get(name) == "int8")

    def _session(self, name: str):
        if name not in self._sessions:
            with self._lock:
                if name not in self._sessions:
                    self._sessions[name], self.device_used = self._create(name)
        return self._sessions[name]

    def image_forward(self, pixels: np.ndarray) -> np.ndarray:
        """float32 [B, C, S, S] normalised pixels -> [B, d]."""
        return self._session("image").run(None, {"pixels": pixels.astype(np.float32, copy=False)})[0]

    def dense_forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 [B, C, S, S] -> (embeds [B, d], cells [B, h, w, d]), both L2-normalised (image_dense.onnx)."""
        if not (self.path / "image_dense.onnx").is_file():
            raise ConvirtError(f"{self.path} has no dense image graph (image_dense.onnx: exported before `convirt "
                               "explain` existed); re-export the run: `convirt export RUN --onnx`")
        embeds, cells = self._session("image_dense").run(None, {"pixels": pixels.astype(np.float32, copy=False)})
        return embeds, cells

    def text_forward(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return self._session("text").run(None, {"input_ids": input_ids, "attention_mask": attention_mask})[0]

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        if not self.has_text:
            raise ConvirtError(f"{self.path} is the export of an image-only model (no text tower): text queries and "
                               "prompts need a ConVIRT run")
        if self._tokenizer is None:
            with self._lock:
                self._tokenizer = self._tokenizer or Tokenizer(self.path, self.pre)
        return self._tokenizer(texts)

    def encode_images(self, paths: Sequence[ImageSource], batch_size: int = 64, on_progress: Advance | None = None):
        return encode_images(paths, self.pre, self.image_forward, self.dim, batch_size, on_progress, self.workers)

    def encode_texts(self, texts: Sequence[str], batch_size: int = 128, on_progress: Advance | None = None,
                     by_length: bool = True) -> np.ndarray:
        """[n, d] in the order given; batched by length unless by_length=False (the parity check wants mixed)."""
        if texts and not self.has_text:
            self.tokenize(texts[:1])  # the one-line refusal
        return encode_text_batches(texts, lambda chunk: self.text_forward(**self.tokenize(chunk)), self.dim,
                                   batch_size, on_progress, by_length)
