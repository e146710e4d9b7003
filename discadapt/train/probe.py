"""Stage 1 of DPT, probing: how much does a frozen text-to-image UNet already understand?

The UNet, VAE and text encoder(s) stay frozen; only a `DiscriminativeAdapter` trains, reading the features of the
probed blocks (the UNet stops there: early exit) and learning image-text matching against hard and random
negatives (text side and image side, optionally in-batch) and referring-expression boxes. The loop, its
checkpoints and resumption are in `loop.py`; the item format in `data.py`.

Example:
    >>> from discadapt.train import ProbeConfig, train_probe
    >>> config = ProbeConfig(steps=2000, batch_size=16, layers=("mid_block", "up_blocks.0"))
    >>> result = train_probe(pipe, dataset, "runs/probe", config, eval_dataset=test_items)
    >>> adapter = DiscriminativeAdapter.from_pretrained(result["adapter"])
"""

from __future__ import annotations

import os

from ..adapter import DiscriminativeAdapter
from .config import ProbeConfig
from .loop import run

__all__ = ["train_probe"]


def train_probe(
    pipe,
    dataset,
    out_dir: str | os.PathLike,
    config: ProbeConfig | None = None,
    *,
    adapter: DiscriminativeAdapter | None = None,
    eval_dataset=None,
    eval_timesteps=None,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    accelerator=None,
) -> dict:
    """Train a discriminative adapter on a frozen pipeline (stage 1), or resume that training.

    Args:
        pipe: a diffusers pipeline built on a `UNet2DConditionModel` (SD 1.x/2.x, SDXL). Its modules are frozen,
            moved to the accelerator's device and, under mixed precision, cast to the half type.
        dataset: map-style dataset of training items (format in `discadapt.train.data`).
        out_dir (`str` or `os.PathLike`): run folder (layout in `discadapt.train.checkpoint`).
        config (`ProbeConfig`, *optional*): settings; defaults to `ProbeConfig()`.
        adapter (`DiscriminativeAdapter`, *optional*): start from this adapter instead of a new one.
        eval_dataset (*optional*): items to evaluate at the end (`evaluate_adapter`), written to `eval.json`.
        eval_timesteps (`Sequence[int]`, *optional*): timesteps of the evaluation; defaults to T // 2.
        resume (`bool`, defaults to False): continue the run in `out_dir` from its newest checkpoint (an existing
            run is never overwritten without it).
        stop_after (`int`, *optional*): stop after this optimizer step (with a checkpoint), to run in slices.
        progress (`bool`, defaults to True): show a progress bar.
        accelerator (`accelerate.Accelerator`, *optional*): one built by the caller; by default one is built with
            `config.mixed_precision`.

    Returns:
        `dict`: `step`, `done`, `losses` (of the last step), `seconds_per_step` and `samples_per_second` (this
        call), `adapter` (path of the saved adapter when done), `eval` (the evaluation, when done and given).
    """
    return run(
        "probe",
        pipe,
        dataset,
        out_dir,
        ProbeConfig() if config is None else config,
        adapter=adapter,
        eval_dataset=eval_dataset,
        eval_timesteps=eval_timesteps,
        resume=resume,
        stop_after=stop_after,
        progress=progress,
        accelerator=accelerator,
    )
