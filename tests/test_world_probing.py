"""Hard-negative image-text matching on the shapes world (`discadapt.worlds.shapes.probing`)."""

from __future__ import annotations

import pytest
import torch

from discadapt.worlds.shapes import check
from discadapt.worlds.shapes.captions import CATEGORIES
from discadapt.worlds.shapes.probing import denoising_scorer, hard_negative_accuracy, hard_negative_table


def oracle(images, texts):
    return torch.tensor([float(check(image, text).ok) for image, text in zip(images, texts)])


def test_the_oracle_as_scorer_is_always_right_and_a_constant_never():
    right = hard_negative_accuracy(oracle, n=10)
    assert set(right) == set(CATEGORIES)
    assert all((i.estimate, i.low, i.high, i.n) == (1.0, 1.0, 1.0, 20) for i in right.values())
    ties = hard_negative_accuracy(lambda images, texts: torch.zeros(len(texts)), n=5, categories=["spatial"])
    assert ties["spatial"].estimate == 0.0  # a tie is not a win


def test_scorer_sees_each_caption_first_then_its_negatives():
    seen = []

    def record(images, texts):
        seen.append((images.shape, list(texts)))
        return -torch.arange(len(texts), dtype=torch.float)  # the first text of each example wins

    acc = hard_negative_accuracy(record, n=3, splits=["test_id"], categories=["counting"])
    assert acc["counting"].estimate == 1.0  # each caption outscores the negatives that follow it
    last = hard_negative_accuracy(lambda images, texts: torch.arange(len(texts), dtype=torch.float), n=3)
    assert all(i.estimate == 0.0 for i in last.values())
    ((shape, texts),) = seen
    assert shape[1:] == (32, 32, 3) and shape[0] == len(texts) and len(texts) > 3


def test_table_and_denoising_scorer(sd_pipe):
    table = hard_negative_table({"oracle": oracle}, n=2, categories=["single", "referring"])
    assert table.columns == ["scorer", "single", "referring"] and table.rows[0][0] == "oracle"
    assert table.rows[0][1].startswith("1.000 [1.000, 1.000]")
    scores = denoising_scorer(sd_pipe, num_timesteps=2)(
        torch.zeros(2, 32, 32, 3, dtype=torch.uint8).numpy(), ["a", "b"]
    )
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_bad_input():
    with pytest.raises(ValueError, match="`n` is 0; pass an int >= 1"):
        hard_negative_accuracy(oracle, n=0)
    with pytest.raises(ValueError, match="`category` is 'colour'; pick one of single"):
        hard_negative_accuracy(oracle, categories=["colour"])
