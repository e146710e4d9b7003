"""Training the world CLIP from its seed, as an objective of the training engine (`discadapt.train.engine`).

`train_world_clip(out_dir, ...)`:

1. Data: every step draws a fresh batch of "train" examples (`make_example`), categories drawn with
   `category_weights`, seeded by `(seed, 201, step, i)` (`examples_of_step`), so a resumed run sees exactly the batches
   of an uninterrupted one. Each example brings its caption and up to `negatives` of its hard negatives.
2. Loss (`loss.world_clip_loss`): CLIP's symmetric in-batch InfoNCE plus `hard_negative_weight` times a hard-negative
   term; in-batch captions that may be true of an image (`loss.valid_pairs`) are left out of its softmaxes instead of
   being pushed away.
3. AdamW, linear warmup then cosine decay to 0 (`discadapt.train.schedule`), gradient clipping at `GRAD_CLIP`; the
   learned logit scale is clamped to [0, log 100] after each step, as in CLIP. No weight decay on biases, norms and
   the logit scale; the text token embedding has its own group without weight decay, so rows of tokens no caption
   uses keep their seeded initial values exactly (zero gradient, zero Adam update): bundles store only the used rows.
4. The engine's run folder (`discadapt.train.runs`): checkpoints every `checkpoint_every` steps, at a stop
   (`stop_after`) and at the end, the newest `KEEP_CHECKPOINTS` kept. Calling `train_world_clip` again on the same
   `out_dir` resumes from the newest checkpoint and ends with the same weights as an uninterrupted run; another
   configuration raises a ValueError naming the fields and writes nothing.
5. The end: `out_dir/model`, a `CLIPModel` saved with `save_pretrained` (safetensors); `load_world_clip(out_dir)`.

Example:
    >>> result = train_world_clip("/tmp/clip", steps=3, batch_size=4, sizes=WorldClipSizes.tiny(), progress=False)
    >>> result["done"], load_world_clip("/tmp/clip").training  # doctest: +SKIP
    (True, False)
"""

from __future__ import annotations

import os
from dataclasses import fields

import numpy as np
import torch
from transformers import CLIPModel

from ....train.engine import LoopSettings, Objective, make_accelerator, run_training
from ....train.runs import RunDir
from ..dataset import draw_categories, make_example
from ..models import count_parameters
from ..render import render
from .config import (
    BATCH_SIZE,
    GRAD_CLIP,
    KEEP_CHECKPOINTS,
    LR,
    MAX_LOGIT_SCALE,
    STEPS,
    WorldClipConfig,
    WorldClipSizes,
    _check_int,
)
from .inputs import encode_images, encode_texts, preprocess
from .loss import valid_pairs, world_clip_loss
from .model import logit_scale, make_world_clip, token_embedding

__all__ = ["WorldClipObjective", "examples_of_step", "load_world_clip", "train_world_clip"]

_PHASE_SEED = 201  # data stream of this trainer (the pipeline trainer uses 101-103)


def examples_of_step(config: WorldClipConfig, step: int):
    """The examples of `step` and, per example, the indices of the hard negatives it brings."""
    rng = np.random.default_rng((config.seed, _PHASE_SEED, step))
    cats = draw_categories(rng, config.category_weights, config.batch_size)
    examples = [
        make_example((config.seed, _PHASE_SEED, step, i), c, "train", image_size=config.sizes.image_size)
        for i, c in enumerate(cats)
    ]
    chosen = []
    for e in examples:
        k = len(e.negatives)
        chosen.append(sorted(rng.permutation(k)[: config.negatives].tolist()) if k > config.negatives else range(k))
    return examples, chosen


class WorldClipObjective(Objective):
    """The world CLIP as an engine objective (see the module docstring); one process.

    Args:
        config (WorldClipConfig): what to train.
    """

    name = "world_clip"
    resumable = ("checkpoint_every",)  # not `steps`: it sets the cosine schedule
    outputs = ("model",)

    def __init__(self, config: WorldClipConfig):
        self.config = config
        self.settings = LoopSettings(
            steps=config.steps,
            seed=config.seed,
            max_grad_norm=GRAD_CLIP,
            weight_decay=config.weight_decay,
            lr_warmup_steps=config.warmup_steps,
            lr_schedule="cosine",
            checkpoint_every=config.checkpoint_every,
            keep_checkpoints=KEEP_CHECKPOINTS,
            samples_per_step=config.batch_size,
        )
        self.model: CLIPModel | None = None

    def record(self) -> dict:
        return {"config": self.config.to_dict(), "run": {}}

    def setup(self, accelerator) -> CLIPModel:
        self.model = make_world_clip(self.config, self.config.seed).to(accelerator.device)
        return self.model

    def param_groups(self, model: CLIPModel) -> list[dict]:
        embedding = token_embedding(model)
        decay, no_decay = [], []
        for p in model.parameters():
            if p is not embedding:
                (decay if p.ndim >= 2 else no_decay).append(p)
        lr = self.config.lr
        return [
            {"params": decay, "lr": lr, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "lr": lr, "weight_decay": 0.0},
            {"params": [embedding], "lr": lr, "weight_decay": 0.0},
        ]

    def clip_parameters(self, optimizer) -> list[torch.nn.Parameter]:
        return list(self.model.parameters())  # the model's order, in which the norm is summed

    def micro_batches(self, first: int, count: int, accelerator):
        return (examples_of_step(self.config, step) for step in range(first, first + count))

    def loss(self, model, batch, step: int, accelerator) -> dict[str, torch.Tensor]:
        examples, chosen = batch
        pixels = preprocess(np.stack([render(e.scene) for e in examples]))  # (B, 3, S, S)
        negatives = [e.negatives[k].caption.text for e, ks in zip(examples, chosen) for k in ks]
        owner = torch.tensor([i for i, ks in enumerate(chosen) for _ in ks], dtype=torch.long)  # (M,)
        captions = [e.caption.text for e in examples]
        model.train()
        image = encode_images(model, pixels)  # (B, P)
        text = encode_texts(model, captions + negatives)  # (B + M, P)
        b = len(examples)
        return world_clip_loss(
            image,
            text[:b],
            text[b:],
            owner,
            logit_scale(model),
            valid_pairs(examples),
            self.config.hard_negative_weight,
        )

    def after_step(self, step: int) -> None:
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def finish(self, run: RunDir, step: int, accelerator) -> dict:
        if accelerator.is_main_process and run.output_step("model") != step:
            save = lambda folder: self.model.save_pretrained(folder, safe_serialization=True)  # noqa: E731
            run.write_output("model", save, {"step": step})
        return {"model": str(run.path / "model")}


def train_world_clip(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    steps: int = STEPS,
    batch_size: int = BATCH_SIZE,
    lr: float = LR,
    sizes: WorldClipSizes | None = None,
    device: str = "cpu",
    progress: bool = True,
    stop_after: int | None = None,
    **options,
) -> dict:
    """Train (or resume training) the world CLIP in `out_dir` (see the module docstring).

    Args:
        out_dir (str | PathLike): run folder: `train_config.json`, `log.jsonl`, `checkpoints/`, `model/`.
        seed, steps, batch_size, lr, sizes: `WorldClipConfig` fields (sizes None means `WorldClipSizes()`).
        device (str): "cpu", or the accelerator's device (e.g. "cuda"). Default "cpu".
        progress (bool): show a tqdm bar with the loss. Default True.
        stop_after (int | None): stop (with a checkpoint) once this many steps are done, to run in slices; None
            trains to the end. Default None.
        **options: other `WorldClipConfig` fields (weight_decay, warmup_steps, negatives, temperature,
            hard_negative_weight, checkpoint_every, category_weights).

    Returns:
        dict: `step` (steps done), `done`, `model` (path of the saved model, or None), `loss`, `contrastive`,
        `hard` (last values of this call, None if it made no step), `steps_per_s` (this call),
        `parameters` (of the model).

    Raises:
        ValueError: a bad argument, or `out_dir` holding a run with a different configuration (naming the fields).
    """
    unknown = sorted(set(options) - {f.name for f in fields(WorldClipConfig)})
    if unknown:
        raise ValueError(f"unknown options {unknown}; pass fields of WorldClipConfig.")
    sizes = WorldClipSizes() if sizes is None else sizes
    config = WorldClipConfig(seed=seed, steps=steps, batch_size=batch_size, lr=lr, sizes=sizes, **options)
    if stop_after is not None:
        _check_int("stop_after", stop_after, 1)
    objective = WorldClipObjective(config)
    accelerator = make_accelerator(cpu=torch.device(device).type == "cpu")
    result = run_training(
        objective, out_dir, resume=True, stop_after=stop_after, progress=progress, accelerator=accelerator
    )
    phase = result["phases"].get(objective.name)
    return {
        "step": result["step"],
        "done": result["done"],
        "model": result["model"],
        **{k: result["losses"].get(k) for k in ("loss", "contrastive", "hard")},
        "steps_per_s": phase["steps"] / phase["seconds"] if phase else None,
        "parameters": count_parameters(objective.model),
    }


def load_world_clip(out_dir: str | os.PathLike, device: str = "cpu") -> CLIPModel:
    """The world CLIP of a run folder, in eval mode: `out_dir/model` when the run is finished, else the weights of
    its newest checkpoint.

    Raises:
        FileNotFoundError: `out_dir` holds neither a model nor a checkpoint.
    """
    run = RunDir(out_dir)
    if (run.path / "model" / "config.json").exists():
        return CLIPModel.from_pretrained(run.path / "model", local_files_only=True).to(device).eval()
    checkpoint = run.load_checkpoint()  # FileNotFoundError when there is none
    config = WorldClipConfig.from_dict(run.record()["config"])
    model = make_world_clip(config, config.seed)
    model.load_state_dict(checkpoint.trainable)
    return model.to(device).eval()
