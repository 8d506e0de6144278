"""Tower adapters: an image tower (timm or transformers vision) and a text tower (transformers + pooler).

Weights come from the hub only when asked (`pretrained=True`); a local folder is always loaded.
Offline, a missing download becomes one ConvirtError naming the weights and the local-folder way out.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from convirt_cli.torch.pooling import pool_tokens
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.registry import ImageTowerConfig, TextTowerConfig

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _offline_error(what: str, name: str, flag: str, err: Exception) -> ConvirtError:
    return ConvirtError(
        f"cannot load {what} '{name}' ({type(err).__name__}): it is neither a local folder nor in the "
        f"Hugging Face cache and the hub is unreachable; download it once where there is network, "
        f"or point {flag} at a local folder holding it"
    )


def set_grad_checkpointing(model: nn.Module, enable: bool = True) -> None:
    """Recompute activations in the backward pass instead of storing them (timm's and transformers' own switches)."""
    if hasattr(model, "set_grad_checkpointing"):  # timm
        model.set_grad_checkpointing(enable)
    elif hasattr(model, "gradient_checkpointing_enable"):  # transformers (activation_* in the newest releases)
        if enable and hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif enable:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            getattr(model, "activation_checkpointing_disable", model.gradient_checkpointing_disable)()
    else:
        from convirt_cli.torchfree.errors import ConvirtError

        raise ConvirtError(f"--grad-checkpointing: {type(model).__name__} has no gradient checkpointing switch")


class ImageTower(nn.Module):
    """images [B, C, H, W] -> features [B, F] (timm global pool, or the ViT CLS token)."""

    def __init__(self, cfg: ImageTowerConfig, pretrained: bool = False, local_dir: Path | None = None):
        super().__init__()
        self.cfg = cfg
        if cfg.source == "timm":
            import timm

            if local_dir is not None:
                self.model = timm.create_model(f"local-dir:{local_dir}", pretrained=True, num_classes=0)
            else:
                try:
                    self.model = timm.create_model(cfg.name, pretrained=pretrained, num_classes=0,
                                                   in_chans=cfg.in_chans, **cfg.kwargs)
                except RuntimeError as e:
                    if "timm" in str(e).lower() and "unknown model" in str(e).lower():
                        raise ConvirtError(f"timm has no model '{cfg.name}'") from None
                    raise
                except OSError as e:
                    raise _offline_error("image weights", cfg.name, "--image-weights", e) from None
            self.num_features = self.model.num_features
        else:
            from transformers import AutoConfig, AutoModel

            src = local_dir or (Path(cfg.name) if Path(cfg.name).is_dir() else None)
            try:
                if src is not None:
                    self.model = AutoModel.from_pretrained(src)
                elif pretrained:
                    self.model = AutoModel.from_pretrained(cfg.name)
                elif cfg.hf_config is not None:
                    kw = dict(cfg.hf_config)
                    self.model = AutoModel.from_config(AutoConfig.for_model(kw.pop("model_type"), **kw))
                else:
                    self.model = AutoModel.from_config(AutoConfig.from_pretrained(cfg.name))
            except OSError as e:
                raise _offline_error("image weights", cfg.name, "--image-weights", e) from None
            self.num_features = self.model.config.hidden_size

    @property
    def convolutional(self) -> bool:
        """A CNN: its convolutions run faster channels-last on GPUs. A ViT has one, its patch embedding."""
        return sum(isinstance(m, nn.Conv2d) for m in self.model.modules()) > 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.cfg.source == "timm":
            return self.model(images)
        return self.model(pixel_values=images).pooler_output

    def dense(self, images: torch.Tensor) -> torch.Tensor:
        """Patch-level features [B, D, h, w]: a ViT's patch tokens on their grid, or a CNN's last feature map (what
        RAD-DINO's segmentation probe reads)."""
        return self.features(images)[1]

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass -> (pooled [B, F]: what forward gives, grid [B, F, h, w]: a CNN's last feature map, or a ViT's
        patch tokens without CLS and register tokens, after the final norm). explain maps the grid."""
        m = self.model
        if self.cfg.source == "timm":
            x = m.forward_features(images)
            pooled = m.forward_head(x, pre_logits=True)
            if x.ndim == 4:  # a CNN: [B, C, h, w] already
                return pooled, x
            patches = x[:, getattr(m, "num_prefix_tokens", 1):]
        else:
            out = m(pixel_values=images)
            pooled = out.pooler_output
            patches = out.last_hidden_state[:, 1 + int(getattr(m.config, "num_register_tokens", 0) or 0):]
        side = round(patches.shape[1] ** 0.5)
        h, w = side, patches.shape[1] // side
        return pooled, patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], h, w)

    def save(self, path: Path) -> None:
        """timm form (config.json + model.safetensors, loads with `local-dir:`) or HF save_pretrained."""
        if self.cfg.source == "timm":
            from timm.models import save_for_hf

            args = dict(self.cfg.kwargs, num_classes=0, in_chans=self.cfg.in_chans)
            save_for_hf(self.model, str(path), model_args=args, safe_serialization=True)
        else:
            self.model.save_pretrained(path)


def train_wordpiece(texts: Iterable[str], vocab_size: int):
    """A BERT tokenizer with a WordPiece vocabulary learnt from `texts` (no download).

    Deterministic by construction (the tokenizers trainer breaks frequency ties in hash order): every
    character and its '##' continuation, then the most frequent words, ties broken alphabetically.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    norm, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts = Counter(w for t in texts for w, _ in pre.pre_tokenize_str(norm.normalize_str(t)))
    chars = sorted({c for w in counts for c in w})
    base = SPECIALS + chars + [f"##{c}" for c in chars]
    taken = set(base)
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if w not in taken]
    vocab = base + words[: max(0, vocab_size - len(base))]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = norm, pre, decoders.WordPiece()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    )


def _from_pretrained_without_pooler(src: Path):
    """The encoder without BERT's pooler (ConVIRT pools tokens itself). A checkpoint that carries pooler weights
    (ClinicalBERT, MiniLM) is loaded whole and the pooler dropped, so transformers does not print a report of
    'unexpected' keys that are expected; any other mismatch is still reported."""
    from transformers import AutoModel

    has_pooler = False
    weights = Path(src) / "model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:  # reads the header only
            has_pooler = any("pooler" in k.split(".") for k in f.keys())  # noqa: SIM118 - safe_open is not a dict
    if not has_pooler:
        return AutoModel.from_pretrained(src, add_pooling_layer=False)
    model = AutoModel.from_pretrained(src)
    model.pooler = None
    return model


class TextTower(nn.Module):
    """(input_ids, attention_mask) [B, T] -> pooled token features [B, H]."""

    def __init__(self, cfg: TextTowerConfig, pretrained: bool = False, local_dir: Path | None = None,
                 texts: Iterable[str] | None = None):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.cfg = cfg
        src = local_dir or (Path(cfg.name) if Path(cfg.name).is_dir() else None)
        try:
            if src is not None:
                self.tokenizer = AutoTokenizer.from_pretrained(src)
                self.model = _from_pretrained_without_pooler(src)
            elif cfg.source == "scratch":
                if texts is None:
                    raise ConvirtError(f"text tower '{cfg.name}' learns its vocabulary from training texts; none given")
                self.tokenizer = train_wordpiece(texts, cfg.vocab_size)
                kw = dict(cfg.hf_config or {})
                mcfg = AutoConfig.for_model(kw.pop("model_type", "bert"), vocab_size=len(self.tokenizer),
                                            pad_token_id=self.tokenizer.pad_token_id, **kw)
                self.model = AutoModel.from_config(mcfg, add_pooling_layer=False)
            else:
                self.tokenizer = AutoTokenizer.from_pretrained(cfg.name)
                if pretrained:
                    self.model = AutoModel.from_pretrained(cfg.name, add_pooling_layer=False)
                else:
                    self.model = AutoModel.from_config(AutoConfig.from_pretrained(cfg.name), add_pooling_layer=False)
        except OSError as e:
            raise _offline_error("text tower", cfg.name, "--text-weights", e) from None
        self.num_features = self.model.config.hidden_size
        self.freeze()

    def freeze(self) -> None:
        """ConVIRT freezes the embeddings and the first k transformer layers."""
        if self.cfg.freeze_embeddings:
            self.model.embeddings.requires_grad_(False)
        layers = self.model.encoder.layer
        if self.cfg.freeze_layers > len(layers):
            raise ConvirtError(f"freeze_layers={self.cfg.freeze_layers} but the text tower has {len(layers)} layers")
        for layer in layers[: self.cfg.freeze_layers]:
            layer.requires_grad_(False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool_tokens(hidden, attention_mask, self.cfg.pooling)

    def save(self, path: Path) -> None:
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
