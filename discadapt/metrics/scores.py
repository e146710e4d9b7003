"""Scores of generated images that keep every item: the score, its category and its group (e.g. its prompt).

- `ItemScore`: per-item float scores, reported as means per category; `items()` gives them for bootstrap intervals
  over prompts (`bench.bootstrap_ci`), gathered over processes like the accuracies of `items.py`.
- `PromptScore`: an `ItemScore` whose `update(images, prompts)` asks a `scorers.Scorer` (an evaluator of
  `discadapt.evaluators`: CLIP score, BLIP-VQA, detector checks, the aesthetic head, or the adapter's ITM score and
  the denoising score of `scorers`) and records which model it used (`model`).

Example:
    >>> import torch
    >>> from discadapt.scorers import FunctionScorer
    >>> metric = PromptScore(FunctionScorer("brightness", lambda images, prompts: images.mean(dim=(1, 2, 3))))
    >>> metric.update(torch.ones(2, 3, 4, 4) * torch.tensor([0.25, 0.75]).view(2, 1, 1, 1), ["a", "b"], ["x", "y"])
    >>> metric.compute(), metric.model
    ({'all': 0.5, 'x': 0.25, 'y': 0.75}, 'brightness')
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..scorers import Scorer
from .items import ItemValues

__all__ = ["ItemScore", "PromptScore"]


class ItemScore(ItemValues):
    """Mean score over items, keeping each item's score, category and group (see the module docstring).

    Args:
        categories (Sequence[str] | None): the categories `compute` reports, in order; None: every category met,
            sorted by name. Default None.
        **kwargs: torchmetrics `Metric` options (e.g. `process_group`).

    `update(scores, categories=None, groups=None)`: `scores` `(n,)` finite floats; `categories` n names (or None);
    `groups` n ints >= 0 (items of a group are resampled together by the bootstrap), None: each item alone.

    Example:
        >>> metric = ItemScore()
        >>> metric.update(torch.tensor([1.0, 3.0]), categories=["a", "a"])
        >>> metric.compute()
        {'all': 2.0, 'a': 2.0}
    """

    _VALUE = "score"

    @staticmethod
    def _cast(values: np.ndarray) -> np.ndarray:
        return values.astype(np.float64)

    def update(self, scores, categories: Sequence[str | None] | None = None, groups=None) -> None:
        """Add `(n,)` scores with their categories and groups (see the class docstring)."""
        x = torch.as_tensor(scores).detach().cpu()
        if x.ndim != 1 or not x.is_floating_point() or not torch.isfinite(x).all():
            raise ValueError(
                f"`scores` is {tuple(x.shape)} {x.dtype} with values {x.flatten()[:4].tolist()!r}; pass (n,) finite "
                "floats, one per item."
            )
        self._add(x.to(torch.float64), categories, groups)


class PromptScore(ItemScore):
    """The mean of a scorer's scores of (image, prompt) pairs, per category (see the module docstring).

    Args:
        scorer (Scorer): `name`, `score(images, prompts) -> (N,)` (higher is better), and optionally `model`, the
            model it used.
        categories (Sequence[str] | None): as `ItemScore`.
        **kwargs: torchmetrics `Metric` options.

    `update(images, prompts, categories=None, groups=None)`: N images (what the scorer reads: PIL images, a
    `(N, H, W, 3)` uint8 array or a `(N, 3, H, W)` float tensor in [0, 1]) and N prompts.

    Attributes:
        name (str): the scorer's name. model (str): the model it used (the scorer's `model`, else its name).
    """

    def __init__(self, scorer: Scorer, categories: Sequence[str] | None = None, **kwargs):
        if not isinstance(scorer, Scorer):
            raise ValueError(
                f"`scorer` is a {type(scorer).__name__}; pass a scorers.Scorer (name, score(images, prompts)), e.g. "
                "an evaluator of discadapt.evaluators or scorers.FunctionScorer(name, fn)."
            )
        super().__init__(categories, **kwargs)
        self.scorer, self.name = scorer, scorer.name
        self.model = str(getattr(scorer, "model", scorer.name))

    def update(self, images, prompts: Sequence[str], categories: Sequence[str | None] | None = None, groups=None):
        """Score N (image, prompt) pairs and add them (see the class docstring)."""
        scores = torch.as_tensor(self.scorer.score(images, list(prompts)), dtype=torch.float32).detach().cpu()
        if scores.shape != (len(prompts),):
            raise ValueError(
                f"scorer {self.name!r} returned shape {tuple(scores.shape)} for {len(prompts)} prompts; return (N,)."
            )
        super().update(scores, categories, groups)
