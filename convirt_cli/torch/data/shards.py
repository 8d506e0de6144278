"""WebDataset tar shards for training: `convirt pretrain SHARDS` streams them, shards split over ranks and workers.
`convirt shard` writes them, torch-free (convirt_cli/torchfree/data/shard_writer.py, which describes the format).

Training draws shards with replacement each epoch (WebDataset's resampling, seeded by seed, epoch and rank), so
an epoch is a fixed number of samples rather than an exact pass; `--resume` restores model, optimiser and step,
and the data stream restarts its epoch from a new draw (the WebDataset authors advise resampling over exact
mid-epoch restore).
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import IterableDataset, get_worker_info

from convirt_cli.torchfree.data.shard_writer import META
from convirt_cli.torchfree.data.text import text_view
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.files import read_json


def is_shard_source(data: str | Path) -> bool:
    """A folder written by `convirt shard` (or one it left unfinished: shards without shards.json), its shards.json,
    or a brace pattern of .tar files."""
    s = str(data)
    return (Path(s).is_dir() and ((Path(s) / META).is_file() or any(Path(s).glob("train-*.tar")))) or \
        Path(s).name == META or (s.endswith(".tar") and "{" in s)


def shard_problem(path: str | Path) -> str | None:
    """Why a .tar file is no readable shard, from its first header and its end (a tar ends in two zero blocks):
    cheap enough for every shard at start, so a cut or overwritten shard is one line, not a stream of warnings
    (or, when every shard is bad, a loader that draws for ever)."""
    import tarfile

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            f.seek(max(0, size - 1024))
            tail = f.read(1024)
        if size == 0 or size % 512 or tail.strip(b"\0"):
            return f"cut short or damaged ({size} bytes, no end-of-archive blocks)"
        with tarfile.open(path) as tar:
            tar.next()
    except (OSError, tarfile.TarError) as e:
        return f"not a readable tar shard ({type(e).__name__}: {str(e)[:80]})"
    return None


class ShardSet:
    """The shards of one split and how many samples they hold."""

    def __init__(self, urls: list[str], count: int | None, meta: dict):
        self.urls, self.count, self.meta = urls, count, meta

    def __len__(self) -> int:
        return self.count or 0

    def texts(self, limit: int = 5000) -> list[str]:
        """Reports from the first shards (a from-scratch text tower builds its vocabulary from them)."""
        import tarfile

        out: list[str] = []
        for url in self.urls:
            try:
                with tarfile.open(url) as tar:
                    for member in tar:
                        if member.name.endswith(".txt"):
                            out.append(tar.extractfile(member).read().decode("utf-8", errors="replace"))
                            if len(out) >= limit:
                                return out
            except (OSError, tarfile.TarError) as e:
                raise ConvirtError(f"{url}: not a readable tar shard ({type(e).__name__}); re-run `convirt shard`") \
                    from None
        return out


def open_shards(data: str | Path) -> dict[str, ShardSet]:
    """split -> ShardSet from a shard folder (or its shards.json), or a brace pattern (all of it one train split;
    counts from a shards.json beside the files when there is one). A damaged shards.json, a listed shard that is
    missing, cut short or not a tar, a folder without shards.json: one ConvirtError each."""
    import braceexpand

    s = str(data)
    if s.endswith(".tar"):
        urls = sorted(braceexpand.braceexpand(s))
        missing = [u for u in urls if not Path(u).is_file()]
        if missing:
            raise ConvirtError(f"{missing[0]}: no such shard ({len(missing)} of {len(urls)} in {s} missing)")
        _check_shards(urls)
        meta_path = Path(urls[0]).parent / META
        meta = _read_meta(meta_path) if meta_path.is_file() else {}
        known = {name: split for split, v in meta.get("splits", {}).items() for name in v["shards"]}
        count = None
        if meta and all(Path(u).name in known for u in urls):
            per = meta.get("per_shard", 0)
            total = {sp: v["count"] for sp, v in meta["splits"].items()}
            count = sum(min(per, total[known[Path(u).name]]) for u in urls)  # an estimate for partial patterns
        return {"train": ShardSet(urls, count, meta), "val": ShardSet([], 0, meta)}
    folder = Path(s).parent if Path(s).name == META else Path(s)
    if not (folder / META).is_file():
        raise ConvirtError(f"{folder}: shards without {META}: an unfinished `convirt shard` (killed, or still "
                           "running?); run `convirt shard` again")
    meta = _read_meta(folder / META)
    out = {}
    for split in ("train", "val"):
        info = meta["splits"].get(split, {"count": 0, "shards": []})
        urls = [str(folder / n) for n in info["shards"]]
        for u in urls:
            if not Path(u).is_file():
                raise ConvirtError(f"{u}: listed in {folder / META} but missing; re-run `convirt shard`")
        _check_shards(urls)
        out[split] = ShardSet(urls, info["count"], meta)
    if not out["train"].urls:
        raise ConvirtError(f"{folder}: no train shards; re-run `convirt shard`")
    return out


def _read_meta(path: Path) -> dict:
    """shards.json, checked: a damaged one is one line, not a KeyError later."""
    meta = read_json(path, "re-run `convirt shard`")
    splits = meta.get("splits")
    ok = isinstance(splits, dict) and all(
        isinstance(v, dict) and isinstance(v.get("count"), int) and isinstance(v.get("shards"), list)
        and all(isinstance(n, str) and "/" not in n for n in v["shards"]) for v in splits.values())
    if not ok:
        raise ConvirtError(f"{path}: damaged (its splits are not {{count, shards}}); re-run `convirt shard`")
    return meta


def _check_shards(urls: list[str]) -> None:
    for u in urls:
        if (why := shard_problem(u)) is not None:
            raise ConvirtError(f"{u}: {why}; re-run `convirt shard` (or copy the shard again)")


class ShardDataset(IterableDataset):
    """Decoded samples like PairDataset's ({index, image uint8 [1, S, S] or None, text}), streamed from shards.
    train: shards drawn with replacement, `epoch_samples` per epoch over all ranks; else: one ordered pass."""

    def __init__(self, shards: ShardSet, image_size: int, text_view: str = "report", seed: int = 0,
                 with_text: bool = True, train: bool = True, rank: int = 0, world: int = 1):
        self.shards, self.size, self.view, self.seed = shards, image_size, text_view, seed
        self.with_text, self.train, self.rank, self.world = with_text, train, rank, world
        self.epoch, self.epoch_samples = 0, len(shards)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.shards) // max(1, self.world) if self.train else len(self.shards)

    def _decode(self, sample: dict) -> dict:
        key = int(sample["__key__"])
        text = sample.get("txt", b"").decode("utf-8", errors="replace")
        image = None
        for ext in ("png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp", "gif"):
            if ext in sample:
                try:
                    with Image.open(io.BytesIO(sample[ext])) as im:
                        im.draft("L", (self.size, self.size))
                        g = ImageOps.exif_transpose(im).convert("L")
                        arr = np.array(ImageOps.fit(g, (self.size, self.size), method=Image.Resampling.BILINEAR),
                                       dtype=np.uint8)
                    image = torch.from_numpy(arr)[None]
                except Exception:  # noqa: BLE001 - a corrupt member: skipped and counted, as a bad file is
                    image = None
                break
        rng = random.Random(f"{self.seed}:{self.epoch}:{key}")
        return {"index": key, "image": image, "text": text_view(text, self.view, rng) if self.with_text else ""}

    def __iter__(self):
        import webdataset as wds

        info = get_worker_info()
        workers, wid = (info.num_workers, info.id) if info else (1, 0)
        if self.train:
            seed = ((self.seed * 1_000_003 + self.epoch) * 1009 + self.rank) * 64 + wid
            rng = random.Random(seed)
            per = -(-self.epoch_samples // (self.world * workers))
            src = wds.WebDataset(self.shards.urls, resampled=True, shardshuffle=False, nodesplitter=None,
                                 workersplitter=None, handler=wds.warn_and_continue, empty_check=False, seed=seed)
            n = 0
            buf: list[dict] = []
            for sample in src:  # a small shuffle buffer mixes samples of the shards drawn
                buf.append(sample)
                if len(buf) >= 256:
                    yield self._decode(buf.pop(rng.randrange(len(buf))))
                    n += 1
                    if n >= per:
                        return
            return
        urls = self.shards.urls[wid::workers]
        if not urls:
            return
        for sample in wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=None,
                                     handler=wds.warn_and_continue, empty_check=False):
            yield self._decode(sample)
