"""`convirt models`: the preset table."""

from __future__ import annotations


def models() -> None:
    """List model presets (models/*.json)."""
    from rich.console import Console
    from rich.table import Table

    from convirt_cli.torchfree.registry import get_model_config, list_models

    table = Table(title="convirt model presets")
    for col in ("name", "image tower", "text tower", "pool", "frozen", "d", "px", "tau", "lam", "recipe (pretrain)"):
        table.add_column(col)
    for name in list_models():
        c = get_model_config(name)
        frozen = ("emb+" if c.text.freeze_embeddings else "") + f"{c.text.freeze_layers}L" if c.text else "-"
        recipe = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in c.train.items()) or "defaults"
        table.add_row(name, f"{c.image.source}:{c.image.name}", f"{c.text.source}:{c.text.name}" if c.text else "-",
                      c.text.pooling if c.text else "-", frozen, str(c.projection.dim) if c.projection else "CLS",
                      str(c.train.get("image_size", c.image.image_size)),
                      str(c.loss.tau), str(c.loss.lam), recipe)
    console = Console()
    if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
        console.width = 200
    console.print(table)
