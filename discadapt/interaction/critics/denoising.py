"""The pipeline's own denoising error as a critic (DiffusionITM, relative to the empty prompt by default).

Example:
    >>> critic = DenoisingCritic(pipe, num_timesteps=10)
    >>> critic.score(images, prompts)  # (N,) minus the relative denoising error; higher is better
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...scorers import DenoisingScorer
from ...text import get_unet
from .base import LayoutCritic, check_pairs

__all__ = ["DenoisingCritic"]


class DenoisingCritic(LayoutCritic):
    """Minus the pipeline's denoising error over `num_timesteps` timesteps (`scorers.DenoisingScorer`); suggests the
    layouts planned from the prompts (`LayoutCritic`).

    Args:
        pipe: a diffusers pipeline (SD / SDXL).
        num_timesteps (int): evenly spread timesteps. Default 10.
        unconditional (bool): subtract the empty prompt's error (DiffusionITM's relative score), which removes how
            easy an image is to denoise at all, so images of one prompt compare fairly. Default True.
        batch_size (int | None): pairs per UNet call. Default all.
        layout (bool): suggest planned layouts. Default True.
        name (str): default "relative denoising error" (or "denoising error").
    """

    def __init__(
        self,
        pipe,
        num_timesteps: int = 10,
        unconditional: bool = True,
        batch_size: int | None = None,
        layout: bool = True,
        name: str = "",
    ):
        get_unet(pipe)
        if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 1:
            raise ValueError(f"`num_timesteps` is {num_timesteps!r}; pass an int >= 1, e.g. 10.")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"`batch_size` is {batch_size!r}; pass an int >= 1 or None.")
        self.scorer = DenoisingScorer(pipe, num_timesteps, unconditional, batch_size, name)
        self.name, self.layout = self.scorer.name, bool(layout)

    def score(self, images_or_latents, prompts: Sequence[str]) -> torch.Tensor:
        """`(N,)` float32 minus the (relative) denoising error."""
        return self.scorer.score(images_or_latents, check_pairs(images_or_latents, prompts))
