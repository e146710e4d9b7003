"""Training: one engine (a step loop under accelerate) and one run folder, which every trainer plugs into as an
objective: stage 1 probing (frozen UNet) and stage 2 tuning (LoRA) after DPT, and the shapes world's own trainers.

- `engine.py`: `run_training(objective, out_dir)`, the `Objective` a trainer implements, `LoopSettings`.
- `runs.py`: `RunDir`, the run folder: record and configuration check, atomic checkpoints, log, outputs.
- `schedule.py`: `lr_factor`, the one learning-rate schedule (warmup, then constant, linear or cosine).
- `config.py`: `ProbeConfig`, `TuneConfig` (dataclasses with checks).
- `data.py`: the training item format, the seeded sample stream and the `Batch` of (image, text) pairs.
- `objective.py`: `DiscriminativeLoss`, the losses of a batch (ITM, REC, denoising) as one module.
- `probe.py`: stage 1, `ProbeObjective` and `train_probe`; `tune.py`: stage 2, `TuneObjective`, `train_tune`,
  `add_lora`, `save_lora`.
- `evaluate.py`: ITM accuracy against hard negatives (text and image side), REC accuracy at IoU >= 0.5.
- `latent_cache.py`: `LatentCache`, VAE latents cached in safetensors shards, resumable.
- `commands.py`: the `discadapt probe` and `discadapt tune` subcommands (`add_commands`).

Example:
    >>> from discadapt.train import ProbeConfig, train_probe
    >>> result = train_probe(pipe, dataset, "runs/probe", ProbeConfig(steps=1000), eval_dataset=test_items)
"""

from .config import ProbeConfig, TrainConfig, TuneConfig
from .data import Batch, BatchBuilder, check_item
from .engine import LoopSettings, Objective, make_accelerator, run_training
from .evaluate import DiscriminationAccuracy, evaluate_adapter
from .latent_cache import LatentCache, vae_fingerprint
from .probe import ProbeObjective, train_probe
from .runs import Checkpoint, RunDir
from .schedule import lr_factor
from .tune import TuneObjective, add_lora, save_lora, train_tune

__all__ = [
    "Batch",
    "BatchBuilder",
    "Checkpoint",
    "DiscriminationAccuracy",
    "LatentCache",
    "LoopSettings",
    "Objective",
    "ProbeConfig",
    "ProbeObjective",
    "RunDir",
    "TrainConfig",
    "TuneConfig",
    "TuneObjective",
    "add_lora",
    "check_item",
    "evaluate_adapter",
    "lr_factor",
    "make_accelerator",
    "run_training",
    "save_lora",
    "train_probe",
    "train_tune",
    "vae_fingerprint",
]
