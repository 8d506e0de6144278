"""explain: images through the dense graph, one map per (image, query). Torch-free; the encoder passed in (ONNX or
torch, serve/backends.open_encoder) decides what runs the network, and its `dense_forward` gives
(embeds [B, d], cells [B, h, w, d]): one forward pass serves every query of an image.

Queries: a phrase (its text embedding), `like` another image (that image's pooled embedding), `at` a point of each
image (the cell under it: a patch-similarity map) or none (the first three principal components of the cells as
colour, DINOv2's picture).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.explain import maps
from convirt_cli.torchfree.explain.views import Crop, fit_square, read_picture


@dataclass(frozen=True)
class Query:
    label: str  # what the picture and the outputs call it
    vector: np.ndarray | None = None  # a phrase's or an image's embedding [d]; None with `at` or for PCA
    at: tuple[float, float] | None = None  # (x, y) in each image's pixels: that cell against all cells


@dataclass
class Seen:
    """One image through the dense graph."""

    index: int  # position among the inputs
    item: dict  # {path, slice?, source}
    picture: np.ndarray  # windowed uint8 [H, W], full resolution
    crop: Crop
    embed: np.ndarray  # pooled embedding [d]
    cells: np.ndarray  # [h, w, d], L2-normalised


@dataclass
class Explained:
    """One query over one image: the smoothed cell grid and, on the model's square, the map and its peak."""

    query: Query
    grid: np.ndarray  # [h, w] smoothed cosines, or [h, w, 3] PCA colours
    heat: np.ndarray | None  # [S, S] (None for PCA)
    peak: tuple[float, float, float] | None  # (x, y) in the image's pixels, value
    score: float | None  # the pooled embedding's cosine with the query (None for `at` and PCA)
    mean_cell: float | None  # the mean of the unsmoothed cell cosines (how well it predicts `score`: README)


def look(encoder, items: Sequence[dict], batch_size: int = 16,
         on_skip: Callable[[dict, str], None] = lambda item, why: None) -> Iterator[Seen]:
    """Images ({path, slice?}) -> Seen, batch by batch; an unreadable image is a skip `on_skip` hears."""
    from convirt_cli.torchfree.imageio import normalize_array

    pre = encoder.pre
    size = int(pre["image_size"])
    for start in range(0, len(items), batch_size):
        batch = []
        for i, item in enumerate(items[start:start + batch_size], start):
            try:
                pic = read_picture(item["path"], pre.get("window", "auto"), item.get("slice"))
            except (OSError, ValueError) as e:
                on_skip(item, f"{type(e).__name__}: {e}".splitlines()[0][:200])
                continue
            batch.append((i, item, pic))
        if not batch:
            continue
        squares = np.stack([fit_square(pic, size) for _, _, pic in batch])
        embeds, cells = encoder.dense_forward(normalize_array(squares, pre["mean"], pre["std"], pre["channels"]))
        for (i, item, pic), e, c in zip(batch, embeds, cells):
            yield Seen(i, item, pic, Crop(pic.shape[1], pic.shape[0], size), np.asarray(e), np.asarray(c))


def cell_at(seen: Seen, x: float, y: float) -> np.ndarray:
    """The cell under (x, y), in the image's pixels; outside the square the model saw: one line saying so."""
    row, col = seen.crop.to_model(x, y)
    size = seen.crop.size
    if not (-0.5 <= row < size - 0.5 and -0.5 <= col < size - 0.5):
        raise ConvirtError(f"--at {x:g},{y:g}: outside the part of {seen.item['path']} the model sees (the centre "
                           f"square: x {seen.crop.left:g}..{seen.crop.left + seen.crop.side:g}, y "
                           f"{seen.crop.top:g}..{seen.crop.top + seen.crop.side:g})")
    h, w = seen.cells.shape[:2]
    r = min(h - 1, max(0, int((row + 0.5) * h / size)))
    c = min(w - 1, max(0, int((col + 0.5) * w / size)))
    return seen.cells[r, c]


def explain_one(seen: Seen, query: Query, sigma: float = maps.SIGMA) -> Explained:
    """The map of `query` over `seen` (PCA colours when the query has neither a vector nor a point)."""
    size = seen.crop.size
    if query.vector is None and query.at is None:
        return Explained(query, maps.pca_colours(seen.cells), None, None, None, None)
    vec = query.vector if query.vector is not None else cell_at(seen, *query.at)
    cos = maps.cell_scores(seen.cells, vec)
    grid = maps.smooth(cos, sigma)
    heat = maps.upsample(grid, size, size)
    row, col, value = maps.peak(heat)
    x, y = seen.crop.to_image(row, col)
    score = float(seen.embed @ vec) if query.vector is not None else None
    return Explained(query, grid, heat, (x, y, value), score, float(cos.mean()))


def text_queries(encoder, phrases: Sequence[str]) -> list[Query]:
    texts = list(phrases)
    if any(not t.strip() for t in texts):
        raise ConvirtError("--query '': an empty phrase has no map; give the words to look for")
    vecs = encoder.encode_texts(texts) if texts else []
    return [Query(t, np.asarray(v)) for t, v in zip(texts, vecs)]


def read_images(specs: Sequence[str], image_col: str = "image", slices: str = "middle") -> list[dict]:
    """IMAGE... (files, folders, tables, as embed reads them) -> image items, in order."""
    from convirt_cli.torchfree.serve.inputs import read_inputs

    items: list[dict] = []
    for spec in specs:
        _, found = read_inputs(spec, "image", image_col, slices=slices)
        items += found
    if not items:
        raise ConvirtError(f"{', '.join(specs)}: no images found")
    return items


def open_explain(cfg, note: Callable[[str], None] = lambda line: None):
    """An ExplainConfig -> (encoder, image items, queries): everything checked before the first map."""
    from convirt_cli.torchfree.serve.backends import open_encoder

    items = read_images(cfg.images, cfg.image_col, cfg.slices)
    encoder = open_encoder(cfg.model, cfg.backend, cfg.device, cfg.runs_dir, cfg.threads, note=note, bulk=False)
    queries = text_queries(encoder, cfg.query)
    if cfg.like is not None:
        other = list(look(encoder, read_images([str(cfg.like)]), on_skip=lambda item, why: _unreadable("--like", item, why)))
        queries.append(Query(f"like {Path(str(cfg.like)).name}", other[0].embed))
    if cfg.at is not None:
        x, y = (float(v) for v in cfg.at.split(","))
        queries.append(Query(f"like the patch at {x:g},{y:g}", at=(x, y)))
    return encoder, items, queries or [Query("principal components of the patches")]


def _unreadable(flag: str, item: dict, why: str) -> None:
    raise ConvirtError(f"{flag} {item['path']}: cannot read it ({why})")


def explain_images(encoder, items: Sequence[dict], queries: Sequence[Query], sigma: float = maps.SIGMA,
                   batch_size: int = 16, on_image: Callable[[int], None] = lambda n: None,
                   on_skip: Callable[[dict, str], None] = lambda item, why: None) -> Iterator[tuple[Seen, list[Explained]]]:
    """(image, its maps, one per query) for each readable image, in input order."""
    def skip(item: dict, why: str) -> None:
        on_skip(item, why)
        on_image(1)

    for seen in look(encoder, items, batch_size, skip):
        yield seen, [explain_one(seen, q, sigma) for q in queries]
        on_image(1)
