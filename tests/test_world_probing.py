"""Hard-negative image-text matching on the shapes world (`discadapt.worlds.shapes.probing`), with `scorers.Scorer`s."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from discadapt.scorers import DenoisingScorer, FunctionScorer, JudgeScorer
from discadapt.worlds.shapes.captions import CATEGORIES
from discadapt.worlds.shapes.probing import hard_negative_accuracy, hard_negative_table
from discadapt.worlds.shapes.suite import OracleJudge

ORACLE = JudgeScorer(OracleJudge())


def test_the_oracle_as_scorer_is_always_right_and_a_constant_never():
    right = hard_negative_accuracy(ORACLE, n=10)
    assert set(right) == set(CATEGORIES)
    assert all((i.estimate, i.low, i.high, i.n) == (1.0, 1.0, 1.0, 20) for i in right.values())
    constant = FunctionScorer("constant", lambda images, texts: torch.zeros(len(texts)))
    ties = hard_negative_accuracy(constant, n=5, categories=["spatial"])
    assert ties["spatial"].estimate == 0.0  # a tie is not a win


def test_scorer_sees_each_caption_first_then_its_negatives():
    seen = []

    def record(images, texts):
        seen.append((images.shape, list(texts)))
        return -torch.arange(len(texts), dtype=torch.float)  # the first text of each example wins

    acc = hard_negative_accuracy(FunctionScorer("first", record), n=3, splits=["test_id"], categories=["counting"])
    assert acc["counting"].estimate == 1.0  # each caption outscores the negatives that follow it
    last = FunctionScorer("last", lambda images, texts: torch.arange(len(texts), dtype=torch.float))
    assert all(i.estimate == 0.0 for i in hard_negative_accuracy(last, n=3).values())
    ((shape, texts),) = seen
    assert shape[1:] == (32, 32, 3) and shape[0] == len(texts) and len(texts) > 3


def test_accuracy_equals_a_direct_count():
    """Per example: the caption's score strictly above every negative's, counted by hand."""
    rng = np.random.default_rng(0)
    scores = {}

    def noisy(images, texts):  # a fixed random score per (image, text) pair
        keys = [(hash(image.tobytes()), text) for image, text in zip(images, texts)]
        return torch.tensor([scores.setdefault(k, float(rng.integers(0, 3))) for k in keys])

    from discadapt.worlds.shapes import make_dataset, render

    acc = hard_negative_accuracy(FunctionScorer("noisy", noisy), n=6, categories=["two_objects"])
    right = []
    for split in ("test_id", "test_ood"):
        for e in make_dataset(6, split=split, seed=0, categories=["two_objects"], image_size=32):
            key = hash(render(e.scene).tobytes())
            negatives = [scores[key, n.caption.text] for n in e.negatives]
            right.append(scores[key, e.caption.text] > max(negatives))
    assert acc["two_objects"].estimate == sum(right) / 12 and acc["two_objects"].n == 12


def test_table_and_denoising_scorer(sd_pipe):
    table = hard_negative_table({"oracle": ORACLE}, n=2, categories=["single", "referring"])
    assert table.columns == ["scorer", "single", "referring"] and table.rows[0][0] == "oracle"
    assert table.rows[0][1].startswith("1.000 [1.000, 1.000]")
    scores = DenoisingScorer(sd_pipe, num_timesteps=2).score(np.zeros((2, 32, 32, 3), np.uint8), ["a", "b"])
    assert scores.shape == (2,) and torch.isfinite(scores).all()


def test_bad_input():
    with pytest.raises(ValueError, match="`n` is 0; pass an int >= 1"):
        hard_negative_accuracy(ORACLE, n=0)
    with pytest.raises(ValueError, match="`category` is 'colour'; pick one of single"):
        hard_negative_accuracy(ORACLE, categories=["colour"])
    with pytest.raises(ValueError, match="`scorer` is a function; pass a scorers.Scorer"):
        hard_negative_accuracy(lambda images, texts: torch.zeros(len(texts)), n=1)
