"""Moved to ranking.py. Kept only while convirt_cli/torch/objectives/convirt.py imports pair_recall_at_k from here:
delete this file once that import names convirt_cli.torchfree.evaluate.ranking."""

from convirt_cli.torchfree.evaluate.ranking import pair_recall_at_k, precision_at_k, topk_indices

__all__ = ["pair_recall_at_k", "precision_at_k", "topk_indices"]
