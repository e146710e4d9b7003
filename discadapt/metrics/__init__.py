"""Metrics as torchmetrics `Metric`s that keep every item's outcome (cat states), so bootstrap intervals over items
or their groups (prompts) can be drawn from them (`bench.bootstrap_ci`), also after gathering several processes.

- `items.py`: `ItemAccuracy` (per-item booleans), `MultipleChoiceAccuracy` (a positive against its hard negatives:
  right when it scores strictly higher than every negative; the one implementation of that rule is
  `losses.multiple_choice_accuracy`), `JudgeAccuracy` (a judge's verdicts: accuracy and marginal fraction).
- `scores.py`: `ItemScore` (per-item floats, means per category), `PromptScore` (a `scorers.Scorer`'s scores of
  generated images: CLIP score, BLIP-VQA, detector checks, aesthetic, adapter ITM, denoising; names its model).
- `fid.py`: `FID`, torchmetrics' Fréchet inception distance on the user's Inception weights file (torch-fidelity)
  or any feature module.
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
from .fid import FID
from .items import ItemAccuracy, ItemValues, JudgeAccuracy, MultipleChoiceAccuracy, category_code
from .scores import ItemScore, PromptScore

__all__ = [
    "KINDS",
    "REC_IOU",
    "FID",
    "DiscriminationAccuracy",
    "ItemAccuracy",
    "ItemScore",
    "ItemValues",
    "JudgeAccuracy",
    "MultipleChoiceAccuracy",
    "PromptScore",
    "category_code",
]
