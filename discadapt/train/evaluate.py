"""Evaluation of a discriminative adapter: ITM accuracy against hard negatives and REC accuracy at IoU >= 0.5.

For each item of an evaluation dataset (format in `discadapt.train.data`), with the UNet conditioned on each text:

- ITM, text side: the caption scores strictly higher than every hard-negative caption of the item, on the item's
  image: `s(x, y) > max_j s(x, y'_j)` (items without `neg_captions` are not counted);
- ITM, image side: the image scores strictly higher than every hard-negative image, with the caption:
  `s(x, y) > max_j s(x'_j, y)` (items without `neg_images` are not counted);
- REC: the box of the most confident query (highest p(object) over queries and timesteps) has IoU >= 0.5 with one
  of the item's boxes (items without `boxes` are not counted).

Scores are averaged over `timesteps`, each with one seeded noise draw per item shared by all its pairs. Every answer
goes into a `metrics.DiscriminationAccuracy` as its batch is scored (per item, with its category; gathered over
processes), whose `compute()` is the result.

Example:
    >>> result = evaluate_adapter(pipe, adapter, ShapeWorldItems(200, split="test_id"), timesteps=[500])
    >>> result["all"]["itm_text"], result["spatial"]["itm_image"], result["all"]["rec"]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..adapter import DiscriminativeAdapter
from ..losses import box_cxcywh_to_xyxy, box_iou
from ..metrics import REC_IOU, DiscriminationAccuracy
from ..probe import FeatureProbe
from ..scoring import encode_images
from ..text import encode_text, get_unet
from .data import Batch, BatchBuilder
from .objective import gather_table, pair_outputs

__all__ = ["DiscriminationAccuracy", "evaluate_adapter", "REC_IOU"]


def _default_timesteps(pipe) -> list[int]:
    return [pipe.scheduler.config.num_train_timesteps // 2]


def _noise(seed: int, index: int, k: int, shape) -> torch.Tensor:
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence((seed, 3, index, k)).generate_state(1)[0]))
    return torch.randn(shape, generator=generator)


def _check(pipe, adapter, dataset, timesteps, batch_size) -> list[int]:
    """The timesteps to average over (default T // 2), after checking the arguments."""
    if len(dataset) == 0:
        raise ValueError("`dataset` is empty; pass at least one evaluation item.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` is {batch_size!r}; pass an int >= 1.")
    adapter.check_pipeline(pipe)
    num_train = pipe.scheduler.config.num_train_timesteps
    timesteps = _default_timesteps(pipe) if timesteps is None else [int(t) for t in timesteps]
    if not timesteps or not all(0 <= t < num_train for t in timesteps):
        raise ValueError(f"`timesteps` is {timesteps!r}; pass timesteps in [0, {num_train - 1}].")
    return timesteps


def _score(pipe, adapter, probe, batch: Batch, indices, timesteps, seed: int, latent_shape, pair_batch_size):
    """`(logits, best)` of a batch: ITM logits `(P,)` averaged over `timesteps`, and per REC pair the most
    confident box over queries and timesteps, `(confidence (R,), boxes (R, 4) cxcywh)` (None without REC pairs)."""
    device = get_unet(pipe).device
    latents = encode_images(pipe, batch.images)
    text = encode_text(pipe, batch.texts)
    logits, best = 0, None
    for k, t in enumerate(timesteps):
        noise = torch.stack([_noise(seed, i, k, latent_shape) for i in indices]).to(device)
        ts = torch.full((len(indices),), t, dtype=torch.long, device=device)
        step_logits, out = pair_outputs(pipe, adapter, probe, latents, text, batch.pairs, ts, noise, pair_batch_size)
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
    return logits, best


def _update(metric: DiscriminationAccuracy, batch: Batch, logits: torch.Tensor, best) -> None:
    """Add a scored batch's answers: both ITM sides (multiple choice on the score tables) and REC (IoU)."""
    cats = batch.categories
    if len(batch.text_rows):
        metric.update("itm_text", gather_table(logits, batch.text_table), [cats[r] for r in batch.text_rows.tolist()])
    if len(batch.image_rows):
        rows = [cats[r] for r in batch.image_rows.tolist()]
        metric.update("itm_image", gather_table(logits, batch.image_table), rows)
    if best is not None:
        hits = [
            box_iou(box_cxcywh_to_xyxy(box[None]), box_cxcywh_to_xyxy(target.to(box))).max() >= REC_IOU
            for box, target in zip(best[1], batch.rec_boxes)
        ]
        metric.update("rec", torch.stack(hits), [cats[r] for r in batch.rec_rows.tolist()])


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
        accelerator (`accelerate.Accelerator`, *optional*): shard the items over its processes and gather the answers.
        progress (`bool`, defaults to False): show a progress bar.

    Returns:
        `dict`: `{"all": {"itm_text", "itm_image", "rec", "n_itm_text", ...}, category: {...}}`.
    """
    # 1. check the arguments; the batches of evaluation items (no random negatives) and this process's share
    timesteps = _check(pipe, adapter, dataset, timesteps, batch_size)
    unet = get_unet(pipe)
    resolution = resolution or unet.config.sample_size * pipe.vae_scale_factor
    latent_shape = (unet.config.in_channels, resolution // pipe.vae_scale_factor, resolution // pipe.vae_scale_factor)
    num_train = pipe.scheduler.config.num_train_timesteps
    builder = BatchBuilder(
        dataset, pipe.tokenizer, latent_shape, resolution, num_train, seed, None, None, random_negatives=False, stream=3
    )
    several = accelerator is not None and accelerator.num_processes > 1
    mine = range(accelerator.process_index, len(dataset), accelerator.num_processes) if several else range(len(dataset))
    mine = list(mine)
    if categories is None:
        categories = getattr(dataset, "categories", None)
    metric = DiscriminationAccuracy(categories).to(unet.device)  # None: the categories met
    # 2. score batch by batch, each batch's answers into the metric
    probe = FeatureProbe(unet, adapter.config.layers, detach=True, early_exit=True)
    was_training = adapter.training
    adapter.eval()
    try:
        for start in tqdm(range(0, len(mine), batch_size), disable=not progress, desc="evaluate"):
            indices = mine[start : start + batch_size]
            batch = builder.build([(i, i) for i in indices]).to(unet.device)
            logits, best = _score(pipe, adapter, probe, batch, indices, timesteps, seed, latent_shape, pair_batch_size)
            _update(metric, batch, logits, best)
    finally:
        adapter.train(was_training)
    # 3. without given categories, report those met on any process
    if categories is None and several:
        from accelerate.utils import gather_object

        metric.set_categories(sorted(set().union(*gather_object([set(metric.categories_met())]))))
    return metric.compute()
