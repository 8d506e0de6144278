"""Dataset, sampler and collate for image-text pairs.

Workers only decode (uint8, fixed size) and pick the text view; augmentation runs batched on the
training device (data/transforms.py). A file that fails to decode mid-training is dropped from its
batch and counted, never a crash.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from convirt_cli.torchfree.data.readers import Row
from convirt_cli.torchfree.data.text import text_view
from convirt_cli.torchfree.imageio import load_gray


class PairDataset(Dataset):
    def __init__(self, rows: list[Row], image_size: int, text_view: str = "report", seed: int = 0,
                 with_text: bool = True, cache_bytes: int = 1 << 30, window: str = "auto"):
        self.rows, self.size, self.seed, self.window = rows, image_size, seed, window
        self.text_view, self.with_text = text_view, with_text
        self.epoch = 0
        # decoded images are small (uint8, one channel): keep them when they fit, so epochs 2+ skip PNG decode
        self.cache: dict[int, np.ndarray] | None = {} if len(rows) * image_size**2 <= cache_bytes else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def image(self, i: int) -> np.ndarray | None:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        try:
            arr = load_gray(self.rows[i].image, self.size, self.window, self.rows[i].slice)
        except Exception:  # noqa: BLE001 - any decoder failure means: skip and count this file
            return None
        if self.cache is not None:
            self.cache[i] = arr
        return arr

    def text(self, i: int) -> str:
        return text_view(self.rows[i].text, self.text_view, random.Random(f"{self.seed}:{self.epoch}:{i}"))

    def __getitem__(self, i: int) -> dict:
        arr = self.image(i)
        return {"index": i, "image": None if arr is None else torch.from_numpy(arr)[None],
                "text": self.text(i) if self.with_text else ""}


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, sharded over ranks, that can start mid-epoch (for --resume)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1):
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        per_rank = self.n // self.world if self.shuffle else -(-self.n // self.world)
        return order[self.rank::self.world][:per_rank]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return max(0, len(self.indices()) - self.start)


def make_dataset(source, image_size: int, text_view: str = "report", seed: int = 0, with_text: bool = True,
                 window: str = "auto", train: bool = True, rank: int = 0, world: int = 1):
    """Rows (a table or folder) -> PairDataset; a ShardSet (`convirt shard` output) -> the streaming ShardDataset."""
    from convirt_cli.torch.data.shards import ShardDataset, ShardSet

    if isinstance(source, ShardSet):
        return ShardDataset(source, image_size, text_view, seed, with_text, train, rank, world)
    return PairDataset(source, image_size, text_view=text_view, seed=seed, with_text=with_text, window=window)


class Collate:
    """Stack decoded images, tokenize texts; unreadable images leave the batch and are counted."""

    def __init__(self, tokenizer=None, max_length: int = 128):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, items: list[dict]) -> dict:
        good = [it for it in items if it["image"] is not None]
        out = {"index": torch.tensor([it["index"] for it in good], dtype=torch.long),
               "bad": [it["index"] for it in items if it["image"] is None], "texts": [it["text"] for it in good]}
        out["images"] = torch.stack([it["image"] for it in good]) if good else torch.empty(0, 1, 1, 1, dtype=torch.uint8)
        if self.tokenizer is not None:
            tok = self.tokenizer([it["text"] for it in good] or [""], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            out["input_ids"], out["attention_mask"] = tok["input_ids"], tok["attention_mask"]
        return out
