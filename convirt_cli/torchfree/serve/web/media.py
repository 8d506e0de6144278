"""An indexed item's image as the page shows it: read through the format table (formats/: DICOM, NIfTI slices,
16-bit PNG/TIFF, the decompression-bomb cap) under the model's window policy, so a reader sees the grey levels the
model saw; scaled down to a thumbnail (JPEG) or a view (PNG, lossless); kept in a bounded LRU cache.

Only an item's own path (from items.jsonl) is ever opened: no route names a file. A cached render is keyed by
the file's identity (path, slice, size, mtime), so an image replaced on disk or an index rewritten in place is
rendered again, never served stale.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

THUMB_PX = 256  # the grid shows ~160 CSS px: sharp on a 1.5x screen
VIEW_PX = 1024
KINDS = {"thumbnail": (THUMB_PX, "JPEG", "image/jpeg"), "image": (VIEW_PX, "PNG", "image/png")}


class Unreadable(Exception):
    """The item's file cannot be rendered now (moved, changed, damaged); str() is safe to show (no path)."""


@dataclass(frozen=True)
class Rendered:
    body: bytes
    media_type: str
    etag: str


class Media:
    def __init__(self, window: str = "auto", cache_bytes: int = 64 << 20):
        self.window, self.cache_bytes = window, cache_bytes
        self._cache: OrderedDict[tuple, Rendered] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def render(self, item: dict, kind: str) -> Rendered:
        """item: an image item of an index ({id, path, slice?}); kind: 'thumbnail' or 'image'."""
        size, fmt, media_type = KINDS[kind]
        path, slice_ = item["path"], item.get("slice")
        try:
            st = os.stat(path)
        except OSError:
            raise Unreadable("its image file is gone (moved or deleted since it was indexed)") from None
        key = (path, slice_, st.st_size, st.st_mtime_ns, kind)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        body = self._encode(path, slice_, size, fmt)
        out = Rendered(body, media_type, '"' + hashlib.sha256(repr(key).encode()).hexdigest()[:32] + '"')
        with self._lock:
            if key not in self._cache:
                self._cache[key] = out
                self._held += len(body)
            while self._held > self.cache_bytes and self._cache:
                _, old = self._cache.popitem(last=False)
                self._held -= len(old.body)
        return out

    def _encode(self, path: str, slice_: int | None, size: int, fmt: str) -> bytes:
        from PIL import Image

        from convirt_cli.torchfree.imageio import open_gray

        try:
            im = open_gray(path, self.window, draft=size, slice=slice_)
        except Exception as e:  # noqa: BLE001 - any reader failure: one reason, never the path
            raise Unreadable(f"its image cannot be read ({type(e).__name__})") from None
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format=fmt, **({"quality": 85, "optimize": True} if fmt == "JPEG" else {"optimize": False}))
        return buf.getvalue()
