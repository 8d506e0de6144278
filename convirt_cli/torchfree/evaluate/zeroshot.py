"""Zero-shot evaluation with any encoder (ONNX or torch): ConVIRT's retrieval protocol (sec. 4.2) and
classification by text prompts. Pure numpy on top of encoder.encode_images / encode_texts.

Retrieval: per class, `per_class` labelled images are held out as query images (their reports, or the
prompts given, are the text queries); every other labelled image is a candidate. A retrieved candidate
is correct when its label equals the query's. Precision@k is averaged over a class's queries, and the
mean is over classes (each class counts once, as in the paper's balanced query set).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.evaluate.metrics import roc_auc
from convirt_cli.torchfree.evaluate.ranking import precision_at_k


def split_queries(labels: Sequence[str], per_class: int, seed: int = 0) -> tuple[list[int], list[int], list[str]]:
    """-> (query indices, candidate indices, classes). A class needs 2 x per_class items to get queries;
    smaller classes stay in the candidate pool only (they still count as wrong answers)."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        by_class[lab].append(i)
    queries, classes = [], []
    for lab in sorted(by_class):
        idx = by_class[lab]
        if len(idx) >= 2 * per_class:
            queries += sorted(rng.choice(idx, size=per_class, replace=False).tolist())
            classes.append(lab)
    if not classes:
        raise ConvirtError(f"no class has {2 * per_class} labelled images; lower --queries-per-class")
    qset = set(queries)
    return queries, [i for i in range(len(labels)) if i not in qset], classes


def precision_report(sim: np.ndarray, q_labels: Sequence[str], c_labels: Sequence[str], ks: Sequence[int]) -> dict:
    """sim [Q, N] -> {"per_class": {label: {"P@k": ...}}, "mean": {"P@k": ...}, "queries": {label: n}}."""
    q = np.asarray(q_labels)
    classes = sorted(set(q_labels))
    per_class: dict[str, dict[str, float]] = {c: {} for c in classes}
    for k in ks:
        p = precision_at_k(sim, q, c_labels, k)
        for c in classes:
            per_class[c][f"P@{k}"] = float(p[q == c].mean())
    mean = {f"P@{k}": float(np.mean([per_class[c][f"P@{k}"] for c in classes])) for k in ks}
    return {"per_class": per_class, "mean": mean, "queries": {c: int((q == c).sum()) for c in classes}}


def evaluate_retrieval(encoder, paths: Sequence[str], labels: Sequence[str], texts: Sequence[str] | None = None,
                       prompts: dict[str, list[str]] | None = None, per_class: int = 5,
                       ks: Sequence[int] = (5, 10, 50), seed: int = 0, batch_size: int = 64, on_progress=None) -> dict:
    """Image->image and text->image Precision@k. Text queries: `prompts` per class, else the query rows' texts."""
    emb, ok, bad = encoder.encode_images(list(paths), batch_size=batch_size, on_progress=on_progress)
    labels_ok = [labels[i] for i in ok]
    q_idx, c_idx, classes = split_queries(labels_ok, per_class, seed)
    cand, c_labels = emb[c_idx], [labels_ok[i] for i in c_idx]
    out = {"candidates": len(c_idx), "classes": classes, "skipped_images": len(bad), "ks": list(ks),
           "query_images": [str(paths[ok[i]]) for i in q_idx],
           "image_to_image": precision_report(emb[q_idx] @ cand.T, [labels_ok[i] for i in q_idx], c_labels, ks)}
    if prompts:
        tq = [(t, c) for c in classes for t in prompts.get(c, [])]
    elif texts is not None:
        tq = [(texts[ok[i]], labels_ok[i]) for i in q_idx if texts[ok[i]].strip()]
    else:
        tq = []
    if tq and not getattr(encoder, "has_text", True):  # an image-only model: image->image only
        out["text_to_image_skipped"] = "image-only model (no text tower)"
        tq = []
    if tq:
        temb = encoder.encode_texts([t for t, _ in tq])
        out["text_queries"] = [{"text": t, "label": c} for t, c in tq]
        out["text_to_image"] = precision_report(temb @ cand.T, [c for _, c in tq], c_labels, ks)
    return out


def classify(encoder, paths: Sequence[str], labels: Sequence[str], prompts: dict[str, list[str]],
             batch_size: int = 64, on_progress=None) -> dict:
    """Zero-shot: an image's class is the prompt (mean of a class's prompt embeddings) it is closest to."""
    classes = sorted(prompts)
    emb, ok, bad = encoder.encode_images(list(paths), batch_size=batch_size, on_progress=on_progress)
    y = np.array([labels[i] for i in ok])
    unknown = sorted(set(y) - set(classes))
    if unknown:
        raise ConvirtError(f"labels without a prompt: {unknown[:5]}; add them to --prompts or --ignore-label them")
    centroids = []
    for c in classes:
        t = encoder.encode_texts(prompts[c]).mean(0)
        centroids.append(t / (np.linalg.norm(t) + 1e-12))
    scores = emb @ np.stack(centroids).T  # [N, C]
    pred = np.array(classes)[scores.argmax(1)]
    per_class = {c: {"auc": roc_auc(y == c, scores[:, j]), "n": int((y == c).sum()),
                     "recall": float((pred[y == c] == c).mean()) if (y == c).any() else float("nan")}
                 for j, c in enumerate(classes)}
    aucs = [v["auc"] for v in per_class.values() if not np.isnan(v["auc"])]
    return {"accuracy": float((pred == y).mean()) if len(y) else float("nan"),
            "macro_auc": float(np.mean(aucs)) if aucs else float("nan"), "per_class": per_class,
            "images": len(y), "skipped_images": len(bad), "prompts": prompts}
