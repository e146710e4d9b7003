"""The data of the world pipeline's training: every step a fresh batch of "train" examples, a pure function of
(seed, phase, step), so a resumed run sees exactly the batches of an uninterrupted one.

Each phase has its own stream (`PHASE_SEEDS`): the VAE's steps, the scenes that measure the latent scale, the UNet's
steps. Categories are drawn with the config's `category_weights`; the example i of step s of phase p is
`make_example((seed, PHASE_SEEDS[p], s, i), ...)`. All noise of a step comes from `step_generator`.

Example:
    >>> images, captions = world_batch(WorldTrainConfig(), "unet", step=0, n=2)
    >>> images.shape, images.min() >= -1
    (torch.Size([2, 3, 32, 32]), tensor(True))
"""

from __future__ import annotations

import numpy as np
import torch

from ..dataset import draw_categories, make_example
from ..render import render
from .config import WorldTrainConfig

__all__ = ["PHASE_SEEDS", "step_generator", "world_batch"]

PHASE_SEEDS = {"vae": 101, "scale": 102, "unet": 103}  # separate data streams per phase (the world CLIP uses 201)


def world_batch(config: WorldTrainConfig, phase: str, step: int, n: int) -> tuple[torch.Tensor, list[str]]:
    """The `n` examples of `phase` at `step`: images `(n, 3, S, S)` in [-1, 1] and caption texts."""
    rng = np.random.default_rng((config.seed, PHASE_SEEDS[phase], step))
    cats = draw_categories(rng, config.category_weights, n)
    size = config.sizes.image_size
    examples = [
        make_example((config.seed, PHASE_SEEDS[phase], step, i), c, "train", image_size=size)
        for i, c in enumerate(cats)
    ]
    images = np.stack([render(e.scene) for e in examples])  # (n, S, S, 3) uint8
    images = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # (n, 3, S, S)
    return images, [e.caption.text for e in examples]


def step_generator(config: WorldTrainConfig, phase: str, step: int) -> torch.Generator:
    """The CPU generator of all noise drawn at `step` of `phase`."""
    seed = int(np.random.SeedSequence((config.seed, PHASE_SEEDS[phase], step, 7)).generate_state(1)[0])
    return torch.Generator().manual_seed(seed)
