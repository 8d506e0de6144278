"""`convirt shard`'s writer: rows -> WebDataset tar shards, torch-free (the standard library's tarfile; the
webdataset package imports torch). convirt_cli/torch/data/shards.py streams them back for training.

A shard folder holds `train-000000.tar ...`, `val-000000.tar ...` and `shards.json` (counts per split, the skips
by reason, how images were stored), written last: a folder without it is an unfinished write. Each sample is
one tar member per field, named `<key>.<field>` in sorted field order as WebDataset writes them: `<key>.png` /
`.jpg` / ... (the image bytes, or an 8-bit PNG when downscaled or windowed), `<key>.txt` (the report) and
`<key>.json` ({"source": "file:row", "columns": {...}}); the key is the row's number in the source table.
The folder is built beside its place and swapped in whole (outputs.owned_dir), so a reader sees the old shards or
the new ones, and `--out` replaces only a shard folder.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from contextlib import closing
from pathlib import Path

from convirt_cli.torchfree.data.readers import Row
from convirt_cli.torchfree.data.shard_samples import encoded
from convirt_cli.torchfree.files import write_json
from convirt_cli.torchfree.outputs import owned_dir
from convirt_cli.torchfree.processes import cpu_workers

META = "shards.json"
MAX_SHARD_BYTES = 3_000_000_000  # a shard closes at this size even before `per_shard` samples (WebDataset's default)


class TarShards:
    """Samples into `pattern % n` tars of at most `per_shard` samples (or MAX_SHARD_BYTES) each."""

    def __init__(self, pattern: str, per_shard: int, max_bytes: int = MAX_SHARD_BYTES):
        self.pattern, self.per_shard, self.max_bytes = pattern, per_shard, max_bytes
        self.written: list[Path] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._count = self._bytes = 0

    def _next(self) -> None:
        self._finish()
        final = Path(self.pattern % len(self.written))
        self._tmp = final.with_name(f".{final.name}.tmp")
        self._tar = tarfile.open(self._tmp, "w")  # noqa: SIM115 - open across write() calls, closed by _finish
        self.written.append(final)
        self._count = self._bytes = 0

    def _finish(self) -> None:
        if self._tar is not None:
            self._tar.close()
            os.replace(self._tmp, self.written[-1])
            self._tar = None

    def write(self, sample: dict) -> None:
        if self._tar is None or self._count >= self.per_shard or self._bytes >= self.max_bytes:
            self._next()
        key, now = sample["__key__"], time.time()
        for field in sorted(k for k in sample if not k.startswith("_")):
            data = sample[field]
            info = tarfile.TarInfo(f"{key}.{field}")
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), now, 0o444, "bigdata", "bigdata"
            self._tar.addfile(info, io.BytesIO(data))
            self._bytes += len(data)
        self._count += 1

    def close(self, ok: bool = True) -> None:
        if ok:
            self._finish()
        elif self._tar is not None:  # interrupted: the unfinished tar goes, never a half one under its name
            self._tar.close()
            self._tmp.unlink(missing_ok=True)
            self.written.pop()
            self._tar = None


def _count_skip(meta: dict, source: str, reason: str) -> None:
    meta["skipped"][reason] = meta["skipped"].get(reason, 0) + 1
    if len(meta["skipped_examples"]) < 5:
        meta["skipped_examples"].append([source, reason])


def _write_split(rows: list[Row], first_key: int, sink: TarShards, options: tuple, workers: int, meta: dict,
                 on_row) -> int:
    """One split's rows through the encoding workers into `sink`; returns the samples written."""
    count = 0
    jobs = [(row, first_key + i, *options) for i, row in enumerate(rows)]
    ok = False
    try:
        with closing(encoded(jobs, workers)) as results:
            for (row, *_), (sample, reason) in zip(jobs, results):
                if reason is not None:
                    _count_skip(meta, row.source, reason)
                else:
                    sink.write(sample)
                    count += 1
                if on_row:
                    on_row()
        ok = True
    finally:
        sink.close(ok)
    return count


def write_shards(splits: dict[str, list[Row]], out: Path, per_shard: int, max_side: int | None, window: str,
                 on_row=None, skipped: list[tuple[Row, str]] = (), workers: int | None = None,
                 sections: list[str] | tuple[str, ...] = (), where: list[str] | tuple[str, ...] = (),
                 join: list[str] | tuple[str, ...] = (), slices: str = "middle", wait: bool = False,
                 inputs: list | tuple = ()) -> dict:
    """Write each split's rows as shards under `out` (absent, empty or a shard folder, and no input; `wait`: for
    another writer of it); returns shards.json. `skipped`: rows validation already set aside, counted with those
    that fail here. `workers`: processes decoding and encoding (None: one per CPU core); the shards are the same
    for any number."""
    meta: dict = {"format": "convirt-shards/1", "per_shard": per_shard, "max_side": max_side, "window": window,
                  "sections": list(sections), "where": list(where), "join": list(join), "slices": slices, "splits": {},
                  "skipped": {}, "skipped_examples": []}
    for row, reason in skipped:
        _count_skip(meta, row.source, reason)
    key = 0
    with owned_dir(out, "shards", wait, inputs=inputs) as tmp:
        for split, rows in splits.items():
            if not rows:
                continue
            sink = TarShards(str(tmp / f"{split}-%06d.tar"), per_shard)
            count = _write_split(rows, key + 1, sink, (max_side, window), workers or cpu_workers(), meta, on_row)
            key += len(rows)
            meta["splits"][split] = {"count": count, "shards": [p.name for p in sink.written]}
        write_json(tmp / META, meta)
    return meta
