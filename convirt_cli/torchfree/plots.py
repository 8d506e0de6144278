"""Pictures a person would rather look at than numbers (matplotlib, Agg, written atomically)."""

from __future__ import annotations

import os
from pathlib import Path

from convirt_cli.torchfree.files import writing


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    try:
        with writing(path):
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _legend(ax, **kw) -> None:
    """A legend only when something is labelled (a run with no finished cell draws empty axes, without a warning)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def loss_curve(records: list[dict], path: Path, ylabel: str = "loss", title: str = "") -> None:
    """Train loss per logged step and validation loss per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _legend(ax)
    _save(fig, path)
    plt.close(fig)


def data_efficiency(table: dict, path: Path, title: str = "") -> None:
    """The paper's data-efficiency figure: metric vs label fraction (log x), one line per init, +- sd."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for row in table["rows"]:
        pts = [(float(f), c["mean"], c["sd"]) for f, c in row["cells"].items()]
        if not pts:
            continue
        pts.sort()
        xs, ms, sds = zip(*pts)
        ax.errorbar(xs, ms, yerr=sds, marker="o", capsize=3, label=row["init"])
    ax.set_xscale("log")
    fr = table["fractions"]
    ax.set_xticks(fr, [f"{f * 100:g}%" for f in fr])
    ax.minorticks_off()
    ax.set_xlabel("label fraction")
    ax.set_ylabel(f"{table['split']} {table['metric']}")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    _legend(ax, fontsize=8)
    _save(fig, path)
    plt.close(fig)
