"""What a discriminative adapter gets right: ITM against hard negatives (text side, image side) and REC at an IoU.

One item per answer, kept with its kind, category and group (an `ItemAccuracy`), so an interval over items can be
drawn afterwards. The kinds:

- "itm_text": the caption outscores every hard-negative caption on the item's image, `s(x, y) > max_j s(x, y'_j)`;
- "itm_image": the image outscores every hard-negative image with the caption, `s(x, y) > max_j s(x'_j, y)`;
- "rec": the most confident box has IoU >= `REC_IOU` (0.5) with one of the item's boxes.

The two ITM kinds take a `(B, 1 + k)` score table (positive in column 0, -inf pads) and apply the one multiple-choice
rule (`losses.multiple_choice_accuracy`, as `MultipleChoiceAccuracy`); every kind also takes `(B,)` booleans.

Example:
    >>> import torch
    >>> metric = DiscriminationAccuracy(["single"])
    >>> metric.update("itm_text", torch.tensor([[2.0, 1.0], [0.0, 1.0]]), ["single", None])
    >>> metric.update("rec", torch.tensor([True]), ["single"])
    >>> result = metric.compute()
    >>> result["all"]["itm_text"], result["single"]["itm_text"], result["single"]["n_rec"]
    (0.5, 1.0, 1)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..losses import multiple_choice_accuracy
from .items import ItemAccuracy, _bools

__all__ = ["KINDS", "REC_IOU", "DiscriminationAccuracy"]

KINDS = ("itm_text", "itm_image", "rec")
REC_IOU = 0.5


class DiscriminationAccuracy(ItemAccuracy):
    """Accuracies of ITM (text side, image side) and REC, overall and per category (see the module docstring).

    Args:
        categories (Sequence[str] | None): categories reported separately, in order; items of other categories (or
            none) count only in "all". None: every category met, sorted. Default `()`: none.
        **kwargs: torchmetrics `Metric` options.

    `update(kind, answers, categories, groups=None)`: `kind` one of `KINDS`; `answers` a `(B, 1 + k)` float score
    table (ITM kinds) or `(B,)` booleans; `categories` B names or None. `compute()` returns
    `{"all": {kind: accuracy, f"n_{kind}": count, ...}, category: {...}}`, accuracy None where nothing was counted.

    Example:
        >>> metric = DiscriminationAccuracy(["single"])
        >>> metric.update("itm_text", torch.tensor([True, False]), ["single", None])
        >>> metric.compute()["all"]["itm_text"], metric.compute()["single"]["itm_text"]
        (0.5, 1.0)
    """

    def __init__(self, categories: Sequence[str] | None = (), **kwargs):
        super().__init__(categories, **kwargs)
        self.add_state("kind", default=[], dist_reduce_fx="cat")

    def update(self, kind: str, answers: torch.Tensor, categories: Sequence[str | None], groups=None) -> None:
        """Add B answers of `kind` (see the class docstring)."""
        if kind not in KINDS:
            raise ValueError(f"`kind` is {kind!r}; pass one of {KINDS}.")
        answers = torch.as_tensor(answers)
        if answers.ndim == 2 and answers.is_floating_point():
            if kind == "rec":
                raise ValueError("`answers` of kind 'rec' is a score table; pass (B,) booleans (IoU >= REC_IOU).")
            correct = multiple_choice_accuracy(answers).cpu().to(torch.long)
        else:
            correct = _bools("answers", answers)
        if categories is None or isinstance(categories, str) or len(categories) != len(correct):
            raise ValueError(
                f"`answers` has {len(correct)} answers but `categories` is {categories!r}; pass one category (or "
                "None) per answer."
            )
        self._add(correct, categories, groups)
        self.kind.append(torch.full((len(correct),), KINDS.index(kind), dtype=torch.long, device=self.device))

    def compute(self) -> dict[str, dict]:
        """`{"all": {kind: accuracy or None, f"n_{kind}": count}, category: {...}}`."""
        correct, kinds = self._state("correct").astype(bool), self._state("kind")
        names = self._names_of(self._state("category"))
        result = {}
        for row in ("all", *self._reported(names)):
            in_row = np.ones(correct.shape, bool) if row == "all" else names == row
            entry = {}
            for k, kind in enumerate(KINDS):
                counted = correct[in_row & (kinds == k)]
                entry[kind] = self._mean(counted)
                entry[f"n_{kind}"] = int(counted.size)
            result[row] = entry
        return result
