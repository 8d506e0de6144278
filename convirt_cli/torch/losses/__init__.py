from convirt_cli.torch.losses.convirt import convirt_loss, convirt_loss_terms

__all__ = ["convirt_loss", "convirt_loss_terms"]
