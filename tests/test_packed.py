"""The pad-free BERT used for export equals transformers' BertModel on real tokens, and padding costs it nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from convirt_cli.torch.packed import PackedText, packable
from convirt_cli.torch.pooling import pool_tokens
from convirt_cli.torchfree.serve.encoder import OnnxEncoder


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=40)
    model = BertModel(cfg, add_pooling_layer=False).eval()
    for p in model.parameters():  # away from init, so LayerNorm and biases matter
        p.data.add_(0.2 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("pooling", ["max", "mean", "cls"])
def test_matches_bertmodel_on_a_padded_batch(pooling):
    bert = tiny_bert()
    lengths = [1, 7, 12, 3]  # one sequence of a single token, one as long as the batch
    ids = torch.randint(5, 50, (4, 12))
    mask = (torch.arange(12)[None] < torch.tensor(lengths)[:, None]).long()
    ids = ids * mask
    with torch.no_grad():
        ref = pool_tokens(bert(input_ids=ids, attention_mask=mask).last_hidden_state, mask, pooling)
        got = PackedText(bert, pooling)(ids, mask)
    assert got.shape == (4, 32)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_only_plain_bert_is_packed():
    assert packable(tiny_bert())
    assert not packable(torch.nn.Linear(2, 2))
    cfg = tiny_bert().config
    cfg.position_embedding_type = "relative_key"
    assert not packable(BertModel(cfg, add_pooling_layer=False))


def test_exported_text_graph_is_pad_free_and_padding_does_not_change_an_embedding(tiny_export):
    """A short report alone and beside a report 20x longer: same embedding from the ONNX graph."""
    import json

    assert "pad-free" in json.loads((tiny_export / "manifest.json").read_text())["text_graph"]
    enc = OnnxEncoder(tiny_export, device="cpu")
    short = "small left pleural effusion"
    long = " ".join(["heart size normal lungs clear no pneumothorax"] * 20)
    n_long, n_short = enc.tokenize([long, short])["attention_mask"].sum(1)
    assert n_short * 10 < n_long  # the short one is mostly padding in the batch
    alone = enc.encode_texts([short])
    batch = enc.encode_texts([long, short, "x"], by_length=False)
    np.testing.assert_allclose(batch[1], alone[0], atol=1e-5)


def test_text_batches_group_similar_lengths_and_cover_every_text():
    from convirt_cli.torchfree.serve.encoder import text_batches

    texts = ["a" * n for n in (9, 1, 5, 3, 8, 2, 7)]
    assert [b.tolist() for b in text_batches(texts, 3, by_length=False)] == [[0, 1, 2], [3, 4, 5], [6]]
    batches = text_batches(texts, 3)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert sorted(np.concatenate(batches).tolist()) == list(range(7))
    assert [[len(texts[i]) for i in b] for b in batches] == [[1, 2, 3], [5, 7, 8], [9]]


def test_length_batched_embeddings_come_back_in_input_order(tiny_export):
    enc = OnnxEncoder(tiny_export, device="cpu")
    texts = ["effusion", " ".join(["heart size normal lungs clear"] * 6), "no acute disease", "small pneumothorax",
             "x", "the cardiomediastinal silhouette is within normal limits for size and contour"]
    np.testing.assert_allclose(enc.encode_texts(texts, batch_size=2),
                               np.concatenate([enc.encode_texts([t]) for t in texts]), atol=1e-5)
