"""WebDataset tar shards: `convirt shard` writes them once (validated, optionally downscaled, split decided and
recorded); `convirt pretrain SHARDS` streams them, shards split over ranks and workers.

A shard folder holds `train-000000.tar ...`, `val-000000.tar ...` and `shards.json` (counts per split, the
skips by reason, how images were stored). Each sample: `__key__` (its row number in the source table),
`png` / `jpg` / ... (the image file's bytes, or an 8-bit PNG when it was downscaled, windowed from DICOM or
high bit depth), `txt` (the report) and `json` ({"source": "file:row", "columns": {...}}).

Training draws shards with replacement each epoch (WebDataset's resampling, seeded by seed, epoch and rank), so
an epoch is a fixed number of samples rather than an exact pass; `--resume` restores model, optimiser and step,
and the data stream restarts its epoch from a new draw (the WebDataset authors advise resampling over exact
mid-epoch restore).
"""

from __future__ import annotations

import io
import json
import random
from contextlib import closing
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import IterableDataset, get_worker_info

from convirt_cli.torchfree.data.readers import Row
from convirt_cli.torchfree.data.shard_samples import encoded
from convirt_cli.torchfree.data.text import text_view
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.files import write_json
from convirt_cli.torchfree.processes import cpu_workers

META = "shards.json"


def is_shard_source(data: str | Path) -> bool:
    """A folder written by `convirt shard`, its shards.json, or a brace pattern of .tar files."""
    s = str(data)
    return (Path(s).is_dir() and (Path(s) / META).is_file()) or Path(s).name == META or \
        (s.endswith(".tar") and "{" in s)


def write_shards(splits: dict[str, list[Row]], out: Path, per_shard: int, max_side: int | None, window: str,
                 on_row=None, skipped: list[tuple[Row, str]] = (), workers: int | None = None,
                 sections: list[str] | tuple[str, ...] = (), where: list[str] | tuple[str, ...] = (),
                 join: list[str] | tuple[str, ...] = (), slices: str = "middle") -> dict:
    """Write each split's rows as shards under `out`; returns shards.json (written last: a folder without it is
    an unfinished write). `skipped`: rows validation already set aside, counted with those that fail here.
    `workers`: processes decoding and encoding (None: one per CPU core); the shards are the same for any number."""
    import webdataset as wds

    workers = workers or cpu_workers()

    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)
    meta: dict = {"format": "convirt-shards/1", "per_shard": per_shard, "max_side": max_side, "window": window,
                  "sections": list(sections), "where": list(where), "join": list(join), "slices": slices, "splits": {},
                  "skipped": {}, "skipped_examples": []}
    for row, reason in skipped:
        meta["skipped"][reason] = meta["skipped"].get(reason, 0) + 1
    meta["skipped_examples"] = [[row.source, reason] for row, reason in list(skipped)[:5]]
    key = 0
    for split, rows in splits.items():
        if not rows:
            continue
        for old in out.glob(f"{split}-*.tar"):
            old.unlink()
        count = 0
        jobs = [(row, key + 1 + i, max_side, window) for i, row in enumerate(rows)]
        key += len(rows)
        with wds.ShardWriter(str(out / f"{split}-%06d.tar"), maxcount=per_shard, verbose=0) as sink, \
                closing(encoded(jobs, workers)) as results:
            for (row, *_), (sample, reason) in zip(jobs, results):
                if reason is not None:
                    meta["skipped"][reason] = meta["skipped"].get(reason, 0) + 1
                    if len(meta["skipped_examples"]) < 5:
                        meta["skipped_examples"].append([row.source, reason])
                else:
                    sink.write(sample)
                    count += 1
                if on_row:
                    on_row()
        shards = sorted(p.name for p in out.glob(f"{split}-*.tar"))
        meta["splits"][split] = {"count": count, "shards": shards}
    write_json(out / META, meta)
    return meta


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
            with tarfile.open(url) as tar:
                for member in tar:
                    if member.name.endswith(".txt"):
                        out.append(tar.extractfile(member).read().decode("utf-8", errors="replace"))
                        if len(out) >= limit:
                            return out
        return out


def open_shards(data: str | Path) -> dict[str, ShardSet]:
    """split -> ShardSet from a shard folder (or its shards.json), or a brace pattern (all of it one train split;
    counts from a shards.json beside the files when there is one)."""
    import braceexpand

    s = str(data)
    if s.endswith(".tar"):
        urls = sorted(braceexpand.braceexpand(s))
        missing = [u for u in urls if not Path(u).is_file()]
        if missing:
            raise ConvirtError(f"{missing[0]}: no such shard ({len(missing)} of {len(urls)} in {s} missing)")
        meta_path = Path(urls[0]).parent / META
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        known = {name: split for split, v in meta.get("splits", {}).items() for name in v["shards"]}
        count = None
        if meta and all(Path(u).name in known for u in urls):
            per = meta.get("per_shard", 0)
            total = {sp: v["count"] for sp, v in meta["splits"].items()}
            count = sum(min(per, total[known[Path(u).name]]) for u in urls)  # an estimate for partial patterns
        return {"train": ShardSet(urls, count, meta), "val": ShardSet([], 0, meta)}
    folder = Path(s).parent if Path(s).name == META else Path(s)
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as e:
        raise ConvirtError(f"{folder / META}: unreadable ({type(e).__name__}); re-run `convirt shard`") from None
    out = {}
    for split in ("train", "val"):
        info = meta.get("splits", {}).get(split, {"count": 0, "shards": []})
        urls = [str(folder / n) for n in info["shards"]]
        for u in urls:
            if not Path(u).is_file():
                raise ConvirtError(f"{u}: listed in {folder / META} but missing; re-run `convirt shard`")
        out[split] = ShardSet(urls, info["count"], meta)
    if not out["train"].urls:
        raise ConvirtError(f"{folder}: no train shards; re-run `convirt shard`")
    return out


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
