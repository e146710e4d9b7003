"""The pipeline's own denoising as a critic.

- `DenoisingCritic`: the denoising error of the whole prompt (DiffusionITM, relative to the empty prompt by default).
- `LocatingCritic`: where the prompt's relation puts each phrase, checked by the denoising error of the phrase inside
  its planned box against outside it (`scoring.layout_score`); prompts without a relation go to another critic. The
  whole prompt's error averages location away (it is at chance on relation swaps); this reads it.

Example:
    >>> critic = DenoisingCritic(pipe, num_timesteps=10)
    >>> critic.score(images, prompts)  # (N,) minus the relative denoising error; higher is better
    >>> LocatingCritic(pipe, fallback=critic).score(images, ["a red circle to the left of a blue square"] * len(images))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...scorers import DenoisingScorer, Scorer, as_pixels
from ...scoring import _check_count, layout_score
from ...text import get_unet
from .base import LayoutCritic, check_pairs
from .layout import plan_layout

__all__ = ["DenoisingCritic", "LocatingCritic"]


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
        _check_count("num_timesteps", num_timesteps)
        _check_count("batch_size", batch_size, allow_none=True)
        self.scorer = DenoisingScorer(pipe, num_timesteps, unconditional, batch_size, name)
        self.name, self.layout = self.scorer.name, bool(layout)

    def score(self, images_or_latents, prompts: Sequence[str]) -> torch.Tensor:
        """`(N,)` float32 minus the (relative) denoising error."""
        return self.scorer.score(images_or_latents, check_pairs(images_or_latents, prompts))


class LocatingCritic(LayoutCritic):
    """The layout planned from each prompt's relation words (`layout.plan_layout`), checked on the image by the
    pipeline's own denoising (`scoring.layout_score`: each phrase explains its box better than the rest of the
    image); prompts without a relation are scored by `fallback`. Suggests the planned layouts (`LayoutCritic`).

    Scores of the two kinds are on different scales, so compare them only among images of one prompt (as the
    interaction loop does).

    Args:
        pipe: a diffusers pipeline (SD / SDXL).
        fallback (Scorer | None): the critic of prompts without a relation; None scores them 0 (no preference).
        num_timesteps (int): evenly spread timesteps. Default 10.
        batch_size (int | None): rows (image, phrase) per UNet call. Default all.
        layout (bool): suggest planned layouts. Default True.
        name (str): default "locating denoising" (+ " / " the fallback's name).
    """

    def __init__(self, pipe, fallback: Scorer | None = None, num_timesteps: int = 10, batch_size: int | None = None,
                 layout: bool = True, name: str = ""):  # fmt: skip
        get_unet(pipe)
        _check_count("num_timesteps", num_timesteps)
        _check_count("batch_size", batch_size, allow_none=True)
        if fallback is not None and not callable(getattr(fallback, "score", None)):
            raise ValueError(
                f"`fallback` is a {type(fallback).__name__}; pass a scorer (score(images, prompts)) or None."
            )
        self.pipe, self.fallback, self.num_timesteps, self.batch_size = pipe, fallback, num_timesteps, batch_size
        self.layout = bool(layout)
        self.name = name or "locating denoising" + ("" if fallback is None else f" / {fallback.name}")

    def score(self, images_or_latents, prompts: Sequence[str]) -> torch.Tensor:
        """`(N,)` float32: the layout score where the prompt has a relation, else the fallback's score (or 0)."""
        prompts = check_pairs(images_or_latents, prompts)
        images = as_pixels(images_or_latents)
        layouts = [plan_layout(p) for p in prompts]
        scores = layout_score(self.pipe, images, layouts, num_timesteps=self.num_timesteps, batch_size=self.batch_size)
        rest = [i for i, regions in enumerate(layouts) if not regions]
        if rest and self.fallback is not None:
            subset = images[rest] if isinstance(images, torch.Tensor) else [images[i] for i in rest]
            scores[rest] = self.fallback.score(subset, [prompts[i] for i in rest]).float().cpu()
        return scores
