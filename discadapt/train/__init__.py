"""Training the discriminative adapter: stage 1 probing (frozen UNet) and stage 2 tuning (LoRA), after DPT.

- `config.py`: `ProbeConfig`, `TuneConfig` (dataclasses with checks).
- `data.py`: the training item format, the seeded sample stream and the `Batch` of (image, text) pairs.
- `objective.py`: the losses of a batch (ITM, REC, denoising) as one module.
- `evaluate.py`: ITM accuracy against hard negatives (text and image side), REC accuracy at IoU >= 0.5.
- `checkpoint.py`: run records and atomic checkpoints; `loop.py`: the loop under accelerate.
- `probe.py`: `train_probe`; `tune.py`: `train_tune`, `add_lora`, `save_lora`.
- `commands.py`: the `discadapt probe` and `discadapt tune` subcommands (`add_commands`).

Example:
    >>> from discadapt.train import ProbeConfig, train_probe
    >>> result = train_probe(pipe, dataset, "runs/probe", ProbeConfig(steps=1000), eval_dataset=test_items)
"""

from .config import ProbeConfig, TrainConfig, TuneConfig
from .data import Batch, BatchBuilder, check_item
from .evaluate import DiscriminationAccuracy, evaluate_adapter
from .probe import train_probe
from .tune import add_lora, save_lora, train_tune

__all__ = [
    "Batch",
    "BatchBuilder",
    "DiscriminationAccuracy",
    "ProbeConfig",
    "TrainConfig",
    "TuneConfig",
    "add_lora",
    "check_item",
    "evaluate_adapter",
    "save_lora",
    "train_probe",
    "train_tune",
]
