"""Losses as pure functions, one per file (DINOv2's layout): ConVIRT's InfoNCE, SimCLR's NT-Xent, DINO's [CLS] loss,
iBOT's masked-patch loss, KoLeo, the teacher's centring, and DINOv2's composition of the three."""

from convirt_cli.torch.losses.convirt import convirt_loss, convirt_loss_terms

__all__ = ["convirt_loss", "convirt_loss_terms"]
