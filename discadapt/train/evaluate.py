"""Evaluation of a discriminative adapter: ITM accuracy against hard negatives and REC accuracy at IoU >= 0.5.

For each item of an evaluation dataset (format in `discadapt.train.data`), with the UNet conditioned on each text:

- ITM, text side: the caption scores strictly higher than every hard-negative caption of the item, on the item's
  image: `s(x, y) > max_j s(x, y'_j)` (items without `neg_captions` are not counted);
- ITM, image side: the image scores strictly higher than every hard-negative image, with the caption:
  `s(x, y) > max_j s(x'_j, y)` (items without `neg_images` are not counted);
- REC: the box of the most confident query (highest p(object) over queries and timesteps) has IoU >= 0.5 with one
  of the item's boxes (items without `boxes` are not counted).

Scores are averaged over `timesteps`, each with one seeded noise draw per item shared by all its pairs. Counts are
kept overall and per category (`DiscriminationAccuracy`, a torchmetrics `Metric` summed over processes).

Example:
    >>> result = evaluate_adapter(pipe, adapter, ShapeWorldItems(200, split="test_id"), timesteps=[500])
    >>> result["all"]["itm_text"], result["spatial"]["itm_image"], result["all"]["rec"]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric
from tqdm.auto import tqdm

from ..adapter import DiscriminativeAdapter
from ..losses import box_cxcywh_to_xyxy, box_iou, multiple_choice_accuracy
from ..probe import FeatureProbe
from ..scoring import encode_images
from ..text import encode_text, get_unet
from .data import BatchBuilder
from .objective import gather_table, pair_outputs

__all__ = ["DiscriminationAccuracy", "evaluate_adapter", "REC_IOU"]

REC_IOU = 0.5
_KINDS = ("itm_text", "itm_image", "rec")


class DiscriminationAccuracy(Metric):
    """Counts of right answers for ITM (text side, image side) and REC, overall and per category.

    Args:
        categories (`Sequence[str]`, defaults to `()`): the categories reported separately; samples of other
            categories (or none) count only in `"all"`.

    `update(kind, correct, categories)` adds a bool tensor `(n,)` of answers of kind `"itm_text"`, `"itm_image"` or
    `"rec"`; `compute()` returns `{"all": {kind: accuracy, f"n_{kind}": count}, category: {...}}` with accuracy
    None where nothing was counted.

    Example:
        >>> metric = DiscriminationAccuracy(["single"])
        >>> metric.update("itm_text", torch.tensor([True, False]), ["single", None])
        >>> metric.compute()["all"]["itm_text"], metric.compute()["single"]["itm_text"]
        (0.5, 1.0)
    """

    full_state_update = False

    def __init__(self, categories: Sequence[str] = (), **kwargs):
        super().__init__(**kwargs)
        self.categories = tuple(categories)
        shape = (len(self.categories) + 1, len(_KINDS))  # row 0: all
        self.add_state("correct", torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(shape, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, kind: str, correct: torch.Tensor, categories: Sequence[str | None]) -> None:
        if kind not in _KINDS:
            raise ValueError(f"`kind` is {kind!r}; pass one of {_KINDS}.")
        if len(correct) != len(categories):
            raise ValueError(f"`correct` has {len(correct)} answers but `categories` {len(categories)}; pass one each.")
        k = _KINDS.index(kind)
        for ok, category in zip(correct.tolist(), categories):
            rows = [0] + ([1 + self.categories.index(category)] if category in self.categories else [])
            for row in rows:
                self.correct[row, k] += int(ok)
                self.total[row, k] += 1

    def compute(self) -> dict:
        result = {}
        for row, name in enumerate(("all", *self.categories)):
            entry = {}
            for k, kind in enumerate(_KINDS):
                n = int(self.total[row, k])
                entry[kind] = int(self.correct[row, k]) / n if n else None
                entry[f"n_{kind}"] = n
            result[name] = entry
        return result


def _default_timesteps(pipe) -> list[int]:
    return [pipe.scheduler.config.num_train_timesteps // 2]


@torch.no_grad()
def evaluate_adapter(
    pipe,
    adapter: DiscriminativeAdapter,
    dataset,
    *,
    timesteps: Sequence[int] | None = None,
    batch_size: int = 8,
    seed: int = 0,
    categories: Sequence[str] | None = None,
    resolution: int | None = None,
    pair_batch_size: int | None = None,
    accelerator=None,
    progress: bool = False,
) -> dict:
    """ITM and REC accuracies of `adapter` on `dataset` (see the module docstring).

    Args:
        pipe: the diffusers pipeline the adapter reads (its UNet may carry a LoRA).
        adapter (`DiscriminativeAdapter`): built for `pipe`.
        dataset: map-style dataset of items (format in `discadapt.train.data`), e.g. `ShapeWorldItems`.
        timesteps (`Sequence[int]`, *optional*): timesteps whose scores are averaged; defaults to T // 2.
        batch_size (`int`, defaults to 8): items per UNet call (each with all its pairs).
        seed (`int`, defaults to 0): seed of the noise (item i uses `(seed, 3, i, k)` for timestep k).
        categories (`Sequence[str]`, *optional*): categories reported separately; defaults to
            `dataset.categories` when the dataset has that attribute, else to the items' categories.
        resolution (`int`, *optional*): image side; defaults to the UNet's sample size times the VAE factor.
        pair_batch_size (`int`, *optional*): pairs per UNet call.
        accelerator (`accelerate.Accelerator`, *optional*): shard the items over its processes and sum the counts.
        progress (`bool`, defaults to False): show a progress bar.

    Returns:
        `dict`: `{"all": {"itm_text", "itm_image", "rec", "n_itm_text", ...}, category: {...}}`.
    """
    if len(dataset) == 0:
        raise ValueError("`dataset` is empty; pass at least one evaluation item.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` is {batch_size!r}; pass an int >= 1.")
    unet = get_unet(pipe)
    adapter.check_pipeline(pipe)
    num_train = pipe.scheduler.config.num_train_timesteps
    timesteps = _default_timesteps(pipe) if timesteps is None else [int(t) for t in timesteps]
    if not timesteps or not all(0 <= t < num_train for t in timesteps):
        raise ValueError(f"`timesteps` is {timesteps!r}; pass timesteps in [0, {num_train - 1}].")
    resolution = resolution or unet.config.sample_size * pipe.vae_scale_factor
    latent_shape = (unet.config.in_channels, resolution // pipe.vae_scale_factor, resolution // pipe.vae_scale_factor)
    builder = BatchBuilder(
        dataset, pipe.tokenizer, latent_shape, resolution, num_train, seed, None, None, random_negatives=False, stream=3
    )
    answers: list[tuple[str, torch.Tensor, list]] = []  # (kind, correct (n,), categories)
    if accelerator is not None and accelerator.num_processes > 1:
        mine = list(range(accelerator.process_index, len(dataset), accelerator.num_processes))
    else:
        mine = list(range(len(dataset)))
    probe = FeatureProbe(unet, adapter.config.layers, detach=True, early_exit=True)
    was_training = adapter.training
    adapter.eval()
    try:
        for start in tqdm(range(0, len(mine), batch_size), disable=not progress, desc="evaluate"):
            indices = mine[start : start + batch_size]
            batch = builder.build([(i, i) for i in indices]).to(unet.device)
            latents = encode_images(pipe, batch.images)
            text = encode_text(pipe, batch.texts)
            logits, best = 0, None
            for k, t in enumerate(timesteps):
                noise = torch.stack([_noise(seed, i, k, latent_shape) for i in indices]).to(unet.device)
                ts = torch.full((len(indices),), t, dtype=torch.long, device=unet.device)
                step_logits, out = pair_outputs(
                    pipe, adapter, probe, latents, text, batch.pairs, ts, noise, pair_batch_size
                )
                logits = logits + step_logits / len(timesteps)
                if len(batch.rec_pairs):
                    prob = out.rec_logits[batch.rec_pairs].float().softmax(-1)[..., 0]  # (R, Q) p(object)
                    conf, q = prob.max(dim=1)  # (R,)
                    boxes = out.boxes[batch.rec_pairs, q].float()  # (R, 4)
                    if best is None:
                        best = (conf, boxes)
                    else:
                        better = conf > best[0]
                        best = (torch.where(better, conf, best[0]), torch.where(better[:, None], boxes, best[1]))
            cats = batch.categories
            if len(batch.text_rows):
                ok = multiple_choice_accuracy(gather_table(logits, batch.text_table))
                answers.append(("itm_text", ok, [cats[r] for r in batch.text_rows.tolist()]))
            if len(batch.image_rows):
                ok = multiple_choice_accuracy(gather_table(logits, batch.image_table))
                answers.append(("itm_image", ok, [cats[r] for r in batch.image_rows.tolist()]))
            if best is not None:
                ok = torch.stack(
                    [
                        box_iou(box_cxcywh_to_xyxy(box[None]), box_cxcywh_to_xyxy(target.to(box))).max() >= REC_IOU
                        for box, target in zip(best[1], batch.rec_boxes)
                    ]
                )
                answers.append(("rec", ok, [cats[r] for r in batch.rec_rows.tolist()]))
    finally:
        adapter.train(was_training)
    if categories is None:
        categories = getattr(dataset, "categories", None)
    if categories is None:  # the categories met, on every process
        found = {c for _, _, cats in answers for c in cats if c is not None}
        if accelerator is not None and accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            found = set().union(*gather_object([found]))
        categories = sorted(found)
    metric = DiscriminationAccuracy(categories).to(unet.device)
    for kind, ok, cats in answers:
        metric.update(kind, ok, cats)
    return metric.compute()


def _noise(seed: int, index: int, k: int, shape) -> torch.Tensor:
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence((seed, 3, index, k)).generate_state(1)[0]))
    return torch.randn(shape, generator=generator)
