"""Metrics as torchmetrics `Metric`s that keep every item's outcome (cat states), so bootstrap intervals over items
or their groups (prompts) can be drawn from them (`bench.bootstrap_ci`), also after gathering several processes.

- `items.py`: `ItemAccuracy` (per-item booleans), `MultipleChoiceAccuracy` (a positive against its hard negatives:
  right when it scores strictly higher than every negative; the one implementation of that rule is
  `losses.multiple_choice_accuracy`), `JudgeAccuracy` (a judge's verdicts: accuracy and marginal fraction).
- `discrimination.py`: `DiscriminationAccuracy`, a discriminative adapter's ITM (text side, image side) and REC.

Example:
    >>> import torch
    >>> from discadapt.metrics import MultipleChoiceAccuracy
    >>> metric = MultipleChoiceAccuracy()
    >>> metric.update(torch.tensor([[3.0, 1.0, 2.0]]), categories=["spatial"])
    >>> metric.compute()
    {'all': 1.0, 'spatial': 1.0}
"""

from .discrimination import KINDS, REC_IOU, DiscriminationAccuracy
from .items import ItemAccuracy, JudgeAccuracy, MultipleChoiceAccuracy, category_code

__all__ = [
    "KINDS",
    "REC_IOU",
    "DiscriminationAccuracy",
    "ItemAccuracy",
    "JudgeAccuracy",
    "MultipleChoiceAccuracy",
    "category_code",
]
