"""A LAION-style aesthetic critic: the aesthetic evaluator (`evaluators.aesthetic`, a linear head on a CLIP's
L2-normalised image embedding; prompts are ignored) with the planned-layout suggestions of `base.LayoutCritic`.

Example:
    >>> critic = AestheticCritic("/models/clip-vit-large-patch14", "/models/aesthetic.safetensors")
    >>> critic.score(images, prompts)  # (N,) predicted ratings, about 1-10 with LAION's head
"""

from __future__ import annotations

import torch

from ...evaluators.aesthetic import AestheticHead, AestheticScorer
from .base import LayoutCritic

__all__ = ["AestheticCritic", "AestheticHead"]


class AestheticCritic(LayoutCritic, AestheticScorer):
    """LAION-style aesthetic ratings of images (`evaluators.AestheticScorer`); suggests planned layouts.

    Args:
        clip_path (str | PathLike): a transformers CLIP folder (openai/clip-vit-large-patch14 for LAION's head).
        head_path (str | PathLike): the head's safetensors file.
        device (str | torch.device): default the CPU.
        batch_size (int): images per forward pass. Default 32.
        layout (bool): suggest planned layouts. Default True.
        name (str): default "aesthetic".
        dtype (torch.dtype): the precision of the CLIP and the head. Default float32.

    Raises:
        FileNotFoundError: no CLIP folder or head file (names the path and where such weights come from).
        ValueError: a head whose parameters do not fit (names the mismatch).
    """

    def __init__(
        self,
        clip_path,
        head_path,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
        layout: bool = True,
        name: str = "aesthetic",
        dtype: torch.dtype = torch.float32,
    ):
        AestheticScorer.__init__(
            self, clip_path, head_path, device=device, batch_size=batch_size, name=name, dtype=dtype
        )
        self.layout = bool(layout)
