import math

import pytest
import torch

from convirt_cli.torch.pooling import masked_max, masked_mean
from convirt_cli.torch.train.schedule import Plateau, warmup_cosine


def test_masked_max_ignores_padding():
    hidden = torch.tensor([[[1.0, -2.0], [3.0, -1.0], [100.0, 100.0]]])  # last token is padding
    mask = torch.tensor([[1, 1, 0]])
    assert masked_max(hidden, mask).tolist() == [[3.0, -1.0]]
    assert masked_mean(hidden, mask).tolist() == [[2.0, -1.5]]


def test_warmup_cosine_values():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)  # halfway through the cosine
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(55, 100, 10, min_ratio=0.2) == pytest.approx(0.6)


def test_plateau_halves_after_patience():
    p = Plateau().update(1.0)
    assert p.scale == 1.0 and p.best == 1.0
    p = p.update(1.0).update(1.0)
    assert p.scale == 1.0
    p = p.update(1.2)  # third epoch without improvement
    assert p.scale == 0.5 and p.bad_epochs == 0
    assert p.update(0.5).best == 0.5
    assert math.isinf(Plateau().best)
