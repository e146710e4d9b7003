"""How well image-text scorers tell a held-out caption from its hard negatives, on the world's rendered scenes:
the probing rows of `discadapt demo`.

For each example of a held-out split, the rendered scene is scored against its caption and each of its hard
negatives (swapped attributes or relation, wrong count, color, shape or size; `negatives.py`); the example counts
as right when the caption scores strictly above every negative (text-side multiple choice, as DPT's ITM
evaluation; chance is 1 / (1 + number of negatives), 20-50% here). Any scorer `(images, texts) -> (N,)` scores of
pairs plugs in: the world CLIP (`clip_scorer`), the diffusion model's own denoising error (`denoising_scorer`,
DiffusionITM), and the discriminative adapter (`adapter_scorer`).

Example:
    >>> from discadapt.worlds.shapes import load_pipeline
    >>> from discadapt.worlds.shapes.probing import denoising_scorer, hard_negative_table
    >>> table = hard_negative_table({"denoising": denoising_scorer(load_pipeline())}, n=20)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from ...bench import Interval, Table, bootstrap_ci
from .captions import CATEGORIES
from .dataset import make_dataset
from .palette import check_choice
from .render import render

__all__ = [
    "Scorer",
    "adapter_scorer",
    "clip_scorer",
    "denoising_scorer",
    "hard_negative_accuracy",
    "hard_negative_table",
]

Scorer = Callable[[np.ndarray, list[str]], torch.Tensor]
"""`(images (N, S, S, 3) uint8, N texts) -> (N,)` scores of the pairs (image i, text i); higher means a better match."""

SPLITS = ("test_id", "test_ood")


def _pixels(images: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float in [0, 1], as `discadapt.scoring` takes images."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255


def clip_scorer(model) -> Scorer:
    """The world CLIP's scaled cosine (`clip.clip_scores`)."""
    from .clip import clip_scores

    return lambda images, texts: clip_scores(model, images, texts)


def denoising_scorer(pipe, num_timesteps: int = 10, batch_size: int = 256) -> Scorer:
    """Minus the pipeline's noise-prediction error (`discadapt.denoising_score`, `num_timesteps` timesteps)."""
    from ...scoring import denoising_score

    def score(images, texts):
        return denoising_score(pipe, _pixels(images), texts, num_timesteps=num_timesteps, batch_size=batch_size)

    return score


def adapter_scorer(pipe, adapter, t: int | Sequence[int] | None = None, batch_size: int = 256) -> Scorer:
    """The discriminative adapter's ITM logit (`discadapt.itm_score`, at timestep(s) `t`)."""
    from ...scoring import itm_score

    def score(images, texts):
        return itm_score(pipe, adapter, _pixels(images), texts, t=t, batch_size=batch_size)

    return score


@torch.no_grad()
def hard_negative_accuracy(
    scorer: Scorer,
    n: int = 100,
    splits: Sequence[str] = SPLITS,
    categories: Sequence[str] = CATEGORIES,
    seed: int = 0,
    image_size: int = 32,
) -> dict[str, Interval]:
    """Per category, the fraction of held-out examples whose caption outscores all its hard negatives.

    Args:
        scorer (Scorer): `(images, texts) -> (N,)` pair scores.
        n (int): examples per category and split, >= 1. Default 100.
        splits (Sequence[str]): held-out splits. Default ("test_id", "test_ood").
        categories (Sequence[str]): caption categories. Default all.
        seed (int): dataset seed. Default 0.
        image_size (int): scene side in pixels (the pipeline's image size). Default 32.

    Returns:
        dict[str, Interval]: category -> accuracy with its 95% bootstrap interval over examples.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` is {n!r}; pass an int >= 1.")
    categories = [categories] if isinstance(categories, str) else list(categories)
    for category in categories:
        check_choice("category", category, CATEGORIES)
    result = {}
    for category in categories:
        right = []
        for split in splits:
            examples = make_dataset(n, split=split, seed=seed, categories=[category], image_size=image_size)
            images, texts, owner = [], [], []
            for i, e in enumerate(examples):
                candidates = [e.caption.text] + [neg.caption.text for neg in e.negatives]
                image = render(e.scene)
                images += [image] * len(candidates)
                texts += candidates
                owner += [i] * len(candidates)
            scores = scorer(np.stack(images), texts).float().cpu()  # (pairs,)
            owner = torch.tensor(owner)
            for i in range(len(examples)):
                mine = scores[owner == i]  # caption first, then its negatives
                right.append(bool(mine[0] > mine[1:].max()) if len(mine) > 1 else True)
        result[category] = bootstrap_ci(right, seed=seed)
    return result


def hard_negative_table(scorers: Mapping[str, Scorer], **options) -> Table:
    """A `bench.Table` of `hard_negative_accuracy` for each scorer (rows) and category (columns).

    Args:
        scorers (Mapping[str, Scorer]): row name -> scorer.
        **options: arguments of `hard_negative_accuracy` (n, splits, categories, seed, image_size).
    """
    categories = list(options.get("categories", CATEGORIES))
    rows = []
    for name, scorer in scorers.items():
        acc = hard_negative_accuracy(scorer, **options)
        rows.append([name, *[str(acc[c]) for c in categories]])
    n, splits = options.get("n", 100), options.get("splits", SPLITS)
    return Table(
        "image-text matching against hard negatives, rendered held-out scenes [95% CI]",
        ["scorer", *categories],
        rows,
        note=f"{n} examples per category and split ({', '.join(splits)}); right when the caption outscores every "
        "hard negative; chance 20-50%",
    )
